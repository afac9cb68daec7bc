//! The prefetch window, like the page cache's readahead: a fault that
//! continues the previous one suggests a scan, so the next fetch doubles
//! (up to a limit); a fault anywhere else suggests random access, so the
//! window falls back to the minimum and nothing is fetched in vain.

use super::protocol::MAX_BATCH_PAGES;

#[derive(Clone, Debug)]
pub struct Readahead {
    min: u32,
    max: u32,
    window: u32,
    /// The page right after the last fetch, where a scan faults next.
    next: Option<u64>,
    /// The last faulting page (a scan may also fault on the very next page
    /// when the last fetch was cut short by a present page).
    last_fault: Option<u64>,
}

impl Readahead {
    /// `min` and `max` are clamped to `1..=MAX_BATCH_PAGES`, `max >= min`.
    pub fn new(min: u32, max: u32) -> Readahead {
        let min = min.clamp(1, MAX_BATCH_PAGES);
        let max = max.clamp(min, MAX_BATCH_PAGES);
        Readahead {
            min,
            max,
            window: min,
            next: None,
            last_fault: None,
        }
    }

    /// How many pages to fetch from a fault at `page` on (the caller trims
    /// the window at present pages and the region's end).
    pub fn on_fault(&mut self, page: u64) -> u32 {
        let sequential =
            self.next == Some(page) || self.last_fault.and_then(|p| p.checked_add(1)) == Some(page);
        self.window = if sequential {
            self.window.saturating_mul(2).min(self.max)
        } else {
            self.min
        };
        self.last_fault = Some(page);
        self.window
    }

    /// Records what was fetched for the last fault.
    pub fn fetched(&mut self, first: u64, pages: u64) {
        self.next = Some(first + pages);
    }

    pub fn window(&self) -> u32 {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scan faults where the last fetch ended; its windows double.
    fn scan(ra: &mut Readahead, from: u64, faults: usize) -> Vec<u32> {
        let mut page = from;
        (0..faults)
            .map(|_| {
                let w = ra.on_fault(page);
                ra.fetched(page, u64::from(w));
                page += u64::from(w);
                w
            })
            .collect()
    }

    #[test]
    fn a_scan_doubles_up_to_the_limit() {
        let mut ra = Readahead::new(1, 64);
        assert_eq!(scan(&mut ra, 100, 9), [1, 2, 4, 8, 16, 32, 64, 64, 64]);
    }

    #[test]
    fn a_jump_shrinks_back_to_the_minimum() {
        let mut ra = Readahead::new(1, 64);
        scan(&mut ra, 0, 6);
        assert_eq!(ra.on_fault(10_000), 1);
        ra.fetched(10_000, 1);
        assert_eq!(ra.on_fault(10_001), 2);
        ra.fetched(10_001, 2);
        // Backwards is not a scan this policy follows.
        assert_eq!(ra.on_fault(10_000 - 1), 1);
    }

    #[test]
    fn the_next_page_after_a_short_fetch_is_sequential() {
        let mut ra = Readahead::new(2, 16);
        assert_eq!(ra.on_fault(0), 2);
        ra.fetched(0, 1); // page 1 was present already
        assert_eq!(ra.on_fault(1), 4);
        ra.fetched(1, 4);
        assert_eq!(ra.on_fault(2), 8); // last fault + 1 counts too
    }

    #[test]
    fn limits_are_sane() {
        let ra = Readahead::new(0, 100_000);
        assert_eq!((ra.min, ra.max), (1, MAX_BATCH_PAGES));
        let ra = Readahead::new(32, 4);
        assert_eq!((ra.min, ra.max, ra.window()), (32, 32, 32));
        let mut ra = Readahead::new(1, 1);
        assert_eq!(scan(&mut ra, 0, 4), [1, 1, 1, 1]);
    }
}
