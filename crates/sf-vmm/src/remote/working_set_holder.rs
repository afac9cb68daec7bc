//! The memory holder's side of the recorded working set
//! ([`super::working_set`]): records the pages its clones ask for when it
//! is the recording holder, or tells its page server which pages to push
//! ahead of a clone's faults and notices when the set stopped matching.

use super::bitmap::PageBitmap;
use super::working_set::{is_stale, Role, WorkingSet};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

enum Mode {
    /// Pages recorded so far (each once).
    Record {
        seen: Mutex<PageBitmap>,
        region_pages: u64,
    },
    /// The set to push, in order, and the same as a bitmap.
    Push {
        pages: Vec<u32>,
        member: PageBitmap,
        /// Whether the set was found stale (dropped once).
        dropped: AtomicBool,
    },
}

/// One memory holder's use of the parent's record.
pub struct HolderSet {
    set: Arc<WorkingSet>,
    pid: u32,
    mode: Mode,
    /// Whether a push of the set began.
    started: AtomicBool,
}

impl HolderSet {
    /// Takes the holder's role from the record: `region_pages` bounds every
    /// index, `free` says which pages the clones were told are free (never
    /// pushed).
    pub fn new(
        set: Arc<WorkingSet>,
        pid: u32,
        region_pages: u64,
        free: impl Fn(u64) -> bool,
    ) -> HolderSet {
        let mode = match set.role(pid, region_pages, free) {
            Role::Record => Mode::Record {
                seen: Mutex::new(PageBitmap::new(region_pages)),
                region_pages,
            },
            Role::Push(pages) => {
                let mut member = PageBitmap::new(region_pages);
                for &p in &pages {
                    member.set(u64::from(p));
                }
                Mode::Push {
                    pages,
                    member,
                    dropped: AtomicBool::new(false),
                }
            }
        };
        HolderSet {
            set,
            pid,
            mode,
            started: AtomicBool::new(false),
        }
    }

    /// Whether a push of the set began before (marks it begun).
    pub fn started(&self) -> bool {
        self.started.swap(true, Relaxed)
    }

    /// Whether this holder records (its family is the first, or the last
    /// record went stale).
    pub fn recording(&self) -> bool {
        matches!(self.mode, Mode::Record { .. })
    }

    /// The pages to push ahead of a clone's faults, in order (empty when
    /// recording).
    pub fn to_push(&self) -> &[u32] {
        match &self.mode {
            Mode::Push { pages, .. } => pages,
            Mode::Record { .. } => &[],
        }
    }

    /// A checked request for `pages` pages from `first` by one connection,
    /// whose count of pages asked for outside the set is `outside`.
    pub fn on_request(&self, first: u64, pages: u32, outside: &mut u64) {
        let range = first..first.saturating_add(u64::from(pages));
        match &self.mode {
            Mode::Record { seen, region_pages } => {
                let mut seen = seen.lock().expect("working set lock");
                for p in range.take_while(|&p| p < *region_pages) {
                    if !seen.get(p) {
                        seen.set(p);
                        let Ok(p32) = u32::try_from(p) else { return };
                        if !self.set.record(self.pid, p32) {
                            return;
                        }
                    }
                }
            }
            Mode::Push {
                pages: set,
                member,
                dropped,
            } => {
                *outside += range.filter(|&p| !member.get(p)).count() as u64;
                if is_stale(set.len() as u64, *outside) && !dropped.swap(true, Relaxed) {
                    tracing::info!(
                        outside = *outside,
                        set = set.len(),
                        "working set stale: the next family records afresh"
                    );
                    self.set.drop_stale();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(cap: u32) -> Arc<WorkingSet> {
        Arc::new(WorkingSet::new(cap).unwrap())
    }

    #[test]
    fn the_first_holder_records_in_order_and_the_next_pushes_it() {
        let ws = shared(64);
        let first = HolderSet::new(ws.clone(), 1, 32, |_| false);
        assert!(first.recording());
        let mut outside = 0;
        first.on_request(8, 4, &mut outside);
        first.on_request(2, 1, &mut outside);
        first.on_request(9, 2, &mut outside);
        first.on_request(31, 4, &mut outside);
        let next = HolderSet::new(ws, 2, 32, |p| p == 10);
        assert!(!next.recording());
        assert_eq!(next.to_push(), &[8, 9, 11, 2, 31]);
    }

    #[test]
    fn a_clone_that_diverges_drops_the_set_once() {
        let ws = shared(64);
        let rec = HolderSet::new(ws.clone(), 1, 4096, |_| false);
        rec.on_request(0, 4, &mut 0);
        let push = HolderSet::new(ws.clone(), 2, 4096, |_| false);
        let mut outside = 0;
        push.on_request(0, 4, &mut outside);
        assert_eq!(outside, 0);
        for i in 0..6 {
            push.on_request(100 + i * 64, 64, &mut outside);
        }
        assert_eq!(outside, 384);
        assert_eq!(ws.drops(), 1);
        assert!(HolderSet::new(ws, 3, 4096, |_| false).recording());
    }
}
