//! One remote clone group's run, as `bench remote` reports it: each
//! clone's work time (from the parent's `join` lines) and counters, what
//! the origin sent, and the share of touched pages that arrived first.

use sf_vmm::clone::CloneSummary;
use sf_vmm::remote::multicast::DATAGRAM_LEN;

/// Ethernet + IPv4 header bytes per frame, and the IPv4 payload per frame
/// at the test network's 1500-byte MTU.
const FRAME_OVERHEAD: f64 = 14.0 + 20.0;
const IP_PAYLOAD: f64 = 1480.0;
/// TCP segments (1448 bytes of payload with timestamps) cost 66 bytes of
/// headers each on the wire.
const TCP_OVERHEAD: f64 = 66.0 / 1448.0;

#[derive(Clone, Debug)]
pub struct PerClone {
    pub id: u32,
    pub m: sf_api::FetchStats,
    /// The clone's read pass, from its first instruction.
    pub work_ms: f64,
}

pub struct GroupRun {
    pub clones: Vec<PerClone>,
    pub work_ms_last: f64,
    /// The origin's interface counter over the run.
    pub origin_tx_bytes: f64,
    /// The same estimated from the clones' counters: TCP bytes received
    /// (plus headers) and the group's datagrams on the wire.
    pub from_clones_bytes: f64,
    pub multicast_bytes: f64,
    /// Clones 2..N (clone 1 in a group of one).
    pub arrived_before_touch_pct: f64,
    pub lost_datagrams: f64,
    /// The memory holder's own counters (set by the caller).
    pub holder: sf_vmm::remote::ServerStats,
    /// Pushed pages already there when they came.
    pub stale_drops: f64,
    /// Processes that received the group's datagrams: one per clone host
    /// (its page receiver), or one per clone where a clone received itself.
    pub receivers: f64,
    /// Datagrams those processes read, all together.
    pub datagrams_received: f64,
}

/// The group's receiving processes' counters `(datagrams, lost, stale)`: a
/// host's page receiver once (every clone there shows the same counters,
/// read at different times: the largest is the latest), a clone that
/// received itself on its own. Receivers are told apart by their pid: the
/// bench's hosts are network namespaces of one machine, one pid space.
fn receiving(per: &[PerClone]) -> Vec<(u64, u64, u64)> {
    let mut hosts = std::collections::BTreeMap::<u64, (u64, u64, u64)>::new();
    let mut own = Vec::new();
    for c in per {
        let m = &c.m;
        if m.multicast_receiver_pid == 0 {
            own.push((
                m.multicast_datagrams_received,
                m.multicast_lost,
                m.multicast_stale_drops,
            ));
            continue;
        }
        let e = hosts.entry(m.multicast_receiver_pid).or_default();
        *e = (
            e.0.max(m.multicast_host_datagrams),
            e.1.max(m.multicast_lost),
            e.2.max(m.multicast_stale_drops),
        );
    }
    own.extend(hosts.into_values());
    own.retain(|&(d, _, _)| d > 0);
    own
}

/// Bytes on the wire of `n` multicast datagrams (each a UDP datagram
/// fragmented to the MTU).
pub fn multicast_wire_bytes(n: u64) -> f64 {
    let udp = (DATAGRAM_LEN + 8) as f64;
    n as f64 * (udp + (udp / IP_PAYLOAD).ceil() * FRAME_OVERHEAD)
}

impl GroupRun {
    /// What the memory holder handed to the kernel for the group: bytes it
    /// wrote to its connections (plus headers) and the datagrams it sent.
    /// The interface counter lies between this and `from_clones_bytes`:
    /// datagrams a full queue dropped before the wire count here, and
    /// datagrams the clone hosts read after their clones' last look count
    /// only here (measured on a loaded 2-core machine, no lockstep: the
    /// holder sent 3,299 datagrams, the clones saw 462, the wire ~1,900).
    pub fn holder_sent_bytes(&self) -> f64 {
        self.holder.bytes_sent as f64 * (1.0 + TCP_OVERHEAD)
            + multicast_wire_bytes(self.holder.multicast_datagrams)
    }

    pub fn new(
        clones: &[CloneSummary],
        console: &str,
        origin_tx_bytes: u64,
        touched: f64,
    ) -> anyhow::Result<GroupRun> {
        let mut per = Vec::new();
        for c in clones {
            let work_ns = clone_work_ns(console, c.id).ok_or_else(|| {
                anyhow::anyhow!("the parent printed no work time for clone {}", c.id)
            })?;
            per.push(PerClone {
                id: c.id,
                m: c.memory.clone().unwrap_or_default(),
                work_ms: work_ns as f64 / 1e6,
            });
        }
        let datagrams = per.iter().map(|c| c.m.multicast_seen).max().unwrap_or(0);
        let multicast_bytes = multicast_wire_bytes(datagrams);
        let tcp: f64 = per.iter().map(|c| c.m.bytes_received as f64).sum();
        let later: Vec<&PerClone> = per.iter().filter(|c| c.id >= 2 || per.len() == 1).collect();
        let misses: f64 = later.iter().map(|c| c.m.misses as f64).sum();
        let pct = 100.0 * (1.0 - misses / (touched * later.len() as f64)).clamp(0.0, 1.0);
        let rx = receiving(&per);
        Ok(GroupRun {
            work_ms_last: per.iter().map(|c| c.work_ms).fold(0.0, f64::max),
            origin_tx_bytes: origin_tx_bytes as f64,
            from_clones_bytes: tcp * (1.0 + TCP_OVERHEAD) + multicast_bytes,
            multicast_bytes,
            arrived_before_touch_pct: pct,
            lost_datagrams: rx.iter().map(|r| r.1 as f64).sum(),
            stale_drops: rx.iter().map(|r| r.2 as f64).sum(),
            receivers: rx.len() as f64,
            datagrams_received: rx.iter().map(|r| r.0 as f64).sum(),
            holder: Default::default(),
            clones: per,
        })
    }
}

/// A clone's own work time from the parent's `join` line, `clone ID ->
/// Exited code 0 result [ID, SUM, NS] ...`.
pub(super) fn clone_work_ns(console: &str, id: u32) -> Option<u64> {
    let head = format!("clone {id} -> ");
    console.lines().find_map(|l| {
        let words = l.strip_prefix(&head)?.split("result [").nth(1)?;
        let words = words.split(']').next()?;
        words.split(',').nth(2)?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hosts_receiver_counts_once_for_all_its_clones() {
        let clone = |pid, host, own, lost| PerClone {
            id: 1,
            m: sf_api::FetchStats {
                multicast_receiver_pid: pid,
                multicast_host_datagrams: host,
                multicast_datagrams_received: own,
                multicast_lost: lost,
                ..Default::default()
            },
            work_ms: 0.0,
        };
        let per = [
            clone(7, 100, 0, 2),
            clone(7, 90, 0, 1),
            clone(8, 100, 0, 0),
            clone(0, 0, 100, 5),
            clone(0, 0, 0, 0),
        ];
        let mut rx = receiving(&per);
        rx.sort_unstable();
        assert_eq!(rx, vec![(100, 0, 0), (100, 2, 0), (100, 5, 0)]);
    }

    #[test]
    fn the_work_time_is_read_from_the_join_line() {
        let text = "avoid parent_work_ns=5\nclone 1 -> Exited code 0 result [1, 99, 123456] detail \"\"\nclone 2 -> Exited code 0 result [2, 99, 7] detail \"\"\n";
        assert_eq!(super::clone_work_ns(text, 1), Some(123456));
        assert_eq!(super::clone_work_ns(text, 2), Some(7));
        assert_eq!(super::clone_work_ns(text, 3), None);
    }
}
