//! How the clone host's page paths ask the guest's free-page hints
//! ([`FreePages`]): how long a hinted run is (zero-filled locally, never
//! requested) and how far an unhinted run goes (what a readahead batch may
//! ask the server for).

use crate::hints::FreePages;

impl FreePages {
    /// Index of the first range starting after `page`.
    fn after(&self, page: u64) -> usize {
        self.ranges().partition_point(|&(first, _)| first <= page)
    }

    /// How many hinted pages follow from `page` on, `page` included (0 when
    /// `page` is not hinted).
    pub fn free_run(&self, page: u64) -> u64 {
        let r = self.ranges();
        match self.after(page).checked_sub(1).map(|i| r[i]) {
            Some((first, count)) if page - first < count => first + count - page,
            _ => 0,
        }
    }

    /// How many pages from `page` on are not hinted, up to `max`.
    pub fn unhinted_run(&self, page: u64, max: u64) -> u64 {
        if self.free_run(page) > 0 {
            return 0;
        }
        match self.ranges().get(self.after(page)) {
            Some(&(next, _)) => (next - page).min(max),
            None => max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_stop_at_the_other_kind() {
        let f = FreePages::from_ranges(vec![[10, 15], [90, 10]], 100);
        assert_eq!(f.free_run(10), 15);
        assert_eq!(f.free_run(20), 5);
        assert_eq!(f.free_run(25), 0);
        assert_eq!(f.free_run(9), 0);
        assert_eq!(f.free_run(99), 1);
        assert_eq!(f.unhinted_run(0, 64), 10);
        assert_eq!(f.unhinted_run(0, 4), 4);
        assert_eq!(f.unhinted_run(12, 4), 0);
        assert_eq!(f.unhinted_run(30, 1000), 60);
        assert_eq!(f.unhinted_run(100, 7), 7);
        assert_eq!(FreePages::default().unhinted_run(7, 3), 3);
        assert_eq!(FreePages::default().free_run(7), 0);
    }
}
