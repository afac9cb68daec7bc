//! Which pages of the attached region are present: the fetcher's memory of
//! what it installed, so it never asks the server for a page twice.

/// One bit per page.
#[derive(Clone, Debug)]
pub struct PageBitmap {
    words: Vec<u64>,
    pages: u64,
    set: u64,
}

impl PageBitmap {
    pub fn new(pages: u64) -> PageBitmap {
        PageBitmap {
            words: vec![0; pages.div_ceil(64) as usize],
            pages,
            set: 0,
        }
    }

    /// Pages the bitmap covers.
    pub fn len(&self) -> u64 {
        self.pages
    }

    /// Pages marked present.
    pub fn count(&self) -> u64 {
        self.set
    }

    pub fn get(&self, page: u64) -> bool {
        page < self.pages && self.words[(page / 64) as usize] & (1 << (page % 64)) != 0
    }

    pub fn set(&mut self, page: u64) {
        assert!(page < self.pages, "page {page} of {}", self.pages);
        let w = &mut self.words[(page / 64) as usize];
        let bit = 1 << (page % 64);
        if *w & bit == 0 {
            *w |= bit;
            self.set += 1;
        }
    }

    pub fn set_range(&mut self, first: u64, count: u64) {
        (first..first + count).for_each(|p| self.set(p));
    }

    /// Whether no page of `first..first + count` is set.
    pub fn none_set(&self, first: u64, count: u64) -> bool {
        self.absent_run(first, count) == count
    }

    /// How many pages from `first` on are absent, up to `max`: the longest
    /// request that fetches nothing twice.
    pub fn absent_run(&self, first: u64, max: u64) -> u64 {
        let end = first.saturating_add(max).min(self.pages);
        (first..end).take_while(|&p| !self.get(p)).count() as u64
    }

    /// The first absent page at or after `from`.
    pub fn next_absent(&self, from: u64) -> Option<u64> {
        let mut page = from;
        while page < self.pages {
            let word = self.words[(page / 64) as usize] | ((1u64 << (page % 64)) - 1);
            if word != u64::MAX {
                let found = (page / 64) * 64 + u64::from(word.trailing_ones());
                return (found < self.pages).then_some(found);
            }
            page = (page / 64 + 1) * 64;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_scans() {
        let mut b = PageBitmap::new(200);
        assert_eq!(b.absent_run(0, 64), 64);
        assert_eq!(b.absent_run(190, 64), 10);
        b.set_range(10, 60);
        b.set(10);
        assert_eq!(b.count(), 60);
        assert_eq!(b.absent_run(0, 64), 10);
        assert_eq!(b.absent_run(10, 64), 0);
        assert_eq!(b.next_absent(0), Some(0));
        assert_eq!(b.next_absent(10), Some(70));
        b.set_range(70, 130);
        assert_eq!(b.next_absent(10), None);
        assert_eq!(b.next_absent(5), Some(5));
        assert!(b.get(199) && !b.get(200));
        assert_eq!(b.absent_run(200, 5), 0);
        assert!(b.none_set(0, 10) && !b.none_set(0, 11) && !b.none_set(199, 2));
    }
}
