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
    /// The other predictor, to compare: the pages of the parent's RAM
    /// resident at the fork (what the parent touched since boot).
    resident: Option<PageBitmap>,
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
            resident: None,
        }
    }

    /// Keeps the parent's resident pages (see [`resident_pages`]) to
    /// compare with what the clones ask for.
    pub fn with_resident(mut self, resident: Option<PageBitmap>) -> HolderSet {
        self.resident = resident;
        self
    }

    /// How well the parent's touched pages predict what clones asked for
    /// (recorded so far here, or recorded by an earlier family): recall
    /// and precision, printed for the operator.
    pub fn compare_predictors(&self) -> Option<String> {
        let resident = self.resident.as_ref()?;
        let guard;
        let seen = match &self.mode {
            Mode::Record { seen, .. } => {
                guard = seen.lock().expect("working set lock");
                &*guard
            }
            Mode::Push { member, .. } => member,
        };
        let asked = seen.count();
        let both = (0..resident.len())
            .filter(|&p| seen.get(p) && resident.get(p))
            .count();
        Some(format!(
            "clones asked for {asked} pages; the {} pages resident in the parent at the fork \
             held {both} of them (recall {:.1}%, precision {:.1}%)",
            resident.count(),
            pct(both as u64, asked),
            pct(both as u64, resident.count()),
        ))
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

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

/// The pages of `[base, base + len)` resident in this process (mincore),
/// which in a freshly forked holder are the ones the parent touched since
/// its boot. `None` if the kernel refuses.
pub fn resident_pages(base: *const u8, len: usize) -> Option<PageBitmap> {
    let pages = len / super::PAGE_SIZE;
    let mut vec = vec![0u8; pages];
    // SAFETY: mincore only reads the page tables of the mapping at `base`
    // (page-aligned guest RAM of `len` bytes, alive for the call) and
    // writes one byte per page into `vec`, which has `pages` bytes.
    let rc = unsafe { libc::mincore(base as *mut libc::c_void, len, vec.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    let mut b = PageBitmap::new(pages as u64);
    for (p, v) in vec.iter().enumerate() {
        if v & 1 != 0 {
            b.set(p as u64);
        }
    }
    Some(b)
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

    #[test]
    fn resident_pages_are_the_touched_ones_and_predictors_compare() {
        let map = crate::remote::tests::AnonMap::new(16 * 4096);
        for p in [1usize, 3, 4] {
            // SAFETY: inside the 16-page mapping.
            unsafe { *map.ptr().add(p * 4096) = 1 };
        }
        let resident = resident_pages(map.ptr(), map.len()).unwrap();
        assert_eq!(
            (0..16).filter(|&p| resident.get(p)).collect::<Vec<_>>(),
            [1, 3, 4]
        );
        let rec = HolderSet::new(shared(16), 1, 16, |_| false).with_resident(Some(resident));
        rec.on_request(3 * 4096 / 4096, 3, &mut 0);
        let line = rec.compare_predictors().unwrap();
        assert!(
            line.contains("asked for 3 pages") && line.contains("held 2"),
            "{line}"
        );
        assert!(line.contains("recall 66.7%, precision 66.7%"), "{line}");
    }
}
