//! What a clone's VMM process tells its parent when the clone ends, over a
//! pipe the parent owns. The parent reads at most [`report_max`] bytes for
//! the ticket's result cap and decodes with that limit, so a broken clone
//! cannot make it allocate or believe more than one bounded report.

use crate::outcome::Outcome;
use serde::{Deserialize, Serialize};
use sf_abi::clone::{CloneStatus, DETAIL_MAX, RESULT_FLOOR};

/// Bytes of a report besides its result: the outcome (its messages are
/// bounded by the panic and detail limits) and the counters.
const REPORT_OVERHEAD: usize = DETAIL_MAX + (16 << 10);
/// The largest report with a result within the floor (the report frame
/// of a remote clone, whose larger results travel in pieces).
pub const REPORT_MAX: usize = RESULT_FLOOR + REPORT_OVERHEAD;

/// The largest report a clone with this result cap may send.
pub fn report_max(result_cap: u64) -> usize {
    (result_cap as usize).saturating_add(REPORT_OVERHEAD)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CloneReport {
    pub id: u32,
    pub outcome: Outcome,
    pub result: Vec<u8>,
    /// From the clone request to this clone's first vCPU entry.
    pub first_entry_us: u64,
    /// This clone process's resident and private memory at its end.
    pub rss_bytes: u64,
    pub private_bytes: u64,
    /// Memory fetched on demand, for a clone on another host.
    pub memory: Option<sf_api::FetchStats>,
}

impl CloneReport {
    pub fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).expect("reports always serialize")
    }

    /// Decodes a report of at most `limit` bytes ([`report_max`]).
    pub fn decode(bytes: &[u8], limit: usize) -> Option<CloneReport> {
        use bincode::Options;
        bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .with_limit(limit as u64)
            .deserialize(bytes)
            .ok()
    }
}

/// The join-record view of an outcome: status, code, description.
pub fn classify(o: &Outcome) -> (CloneStatus, i32, String) {
    match o {
        Outcome::Exited { status } => (CloneStatus::Exited, *status, String::new()),
        Outcome::Panicked { message } => (
            CloneStatus::Panicked,
            crate::outcome::exit_code::PANIC,
            message.clone(),
        ),
        Outcome::Exception { vector, .. } => (CloneStatus::Crashed, *vector as i32, o.to_string()),
        Outcome::TimedOut { .. } => (
            CloneStatus::TimedOut,
            crate::outcome::exit_code::TIMEOUT,
            o.to_string(),
        ),
        // The clone's VMM (not its guest) failed, e.g. its memory became
        // unreachable: the clone is lost, for a reason worth reading.
        Outcome::HostError { message } => (CloneStatus::Lost, -1, message.clone()),
        other => {
            let first_line = other
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            (CloneStatus::Crashed, -1, first_line)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_garbage_is_refused() {
        let r = CloneReport {
            id: 3,
            outcome: Outcome::Panicked {
                message: "boom".into(),
            },
            result: vec![1, 2, 3],
            first_entry_us: 1500,
            rss_bytes: 1 << 20,
            private_bytes: 4096,
            memory: None,
        };
        let d = CloneReport::decode(&r.encode(), REPORT_MAX).unwrap();
        assert_eq!(
            (d.id, d.result, d.outcome),
            (
                3,
                vec![1, 2, 3],
                Outcome::Panicked {
                    message: "boom".into()
                }
            )
        );
        assert!(CloneReport::decode(b"\xff\xff\xff\xff garbage", REPORT_MAX).is_none());
        assert!(CloneReport::decode(&[], REPORT_MAX).is_none());
    }

    #[test]
    fn crash_outcomes_keep_the_vector_and_description() {
        let o = Outcome::Exception {
            vector: 0,
            error_code: 0,
            rip: 0x1234,
            rsp: 0,
            cr2: 0,
            ring: 3,
        };
        let (s, code, detail) = classify(&o);
        assert_eq!((s, code), (CloneStatus::Crashed, 0));
        assert!(
            detail.contains("divide error") && detail.contains("0x1234"),
            "{detail}"
        );
    }
}

#[cfg(test)]
mod hostile_input {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_reports_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = CloneReport::decode(&bytes, REPORT_MAX);
        }
    }
}
