//! The guest's free-page hints as the VMM holds them: [`FreePages`], a
//! sorted, disjoint, merged set of page ranges inside guest RAM whose old
//! contents nothing will read before writing them. A clone may get a zero
//! page for any of them instead of the parent's bytes.
//!
//! Everything here comes from the guest (or, on a clone host, from the
//! network), so [`FreePages::from_ranges`] accepts any input: ranges that
//! wrap, overlap or lie beyond RAM are clamped and merged, and never cause a
//! panic. The set is bounded ([`MAX_FREE_RANGES`]); dropping a hint is always
//! safe, it only costs a fetch.

/// Most ranges a [`FreePages`] keeps (a clone request carries them, and the
/// daemon refuses more).
pub const MAX_FREE_RANGES: usize = 16384;

/// `(first_page, count)` ranges: sorted, disjoint, merged (no two touch),
/// each non-empty and inside guest RAM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FreePages(Vec<(u64, u64)>);

impl FreePages {
    /// Clamps untrusted `(first_page, count)` pairs to `mem_pages`, drops
    /// empty ones, sorts and merges them; keeps the `MAX_FREE_RANGES`
    /// largest when there are more.
    pub fn from_ranges(raw: Vec<[u64; 2]>, mem_pages: u64) -> FreePages {
        let mut v: Vec<(u64, u64)> = raw
            .into_iter()
            .filter_map(|[first, count]| {
                if first >= mem_pages {
                    return None;
                }
                let end = first.saturating_add(count).min(mem_pages);
                (end > first).then_some((first, end))
            })
            .collect();
        v.sort_unstable();
        // Merge as [start, end) pairs, then turn them into (first, count).
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (start, end) in v {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        let mut ranges: Vec<(u64, u64)> = merged.into_iter().map(|(s, e)| (s, e - s)).collect();
        if ranges.len() > MAX_FREE_RANGES {
            // Keep the largest (ties: the lowest), then restore the order.
            ranges.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            ranges.truncate(MAX_FREE_RANGES);
            ranges.sort_unstable();
        }
        FreePages(ranges)
    }

    /// Whether `page` is hinted free.
    pub fn contains(&self, page: u64) -> bool {
        let i = self.0.partition_point(|&(first, _)| first <= page);
        i.checked_sub(1)
            .and_then(|i| self.0.get(i))
            .is_some_and(|&(first, count)| page - first < count)
    }

    /// The `(first_page, count)` ranges, sorted.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// Pages covered.
    pub fn pages(&self) -> u64 {
        self.0.iter().map(|r| r.1).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn clamps_merges_and_drops_the_wild() {
        let f = FreePages::from_ranges(
            vec![
                [10, 5],
                [12, 10],
                [22, 3],
                [u64::MAX, 2],
                [90, u64::MAX],
                [50, 0],
                [100, 1],
            ],
            100,
        );
        assert_eq!(f.ranges(), &[(10, 15), (90, 10)]);
        assert_eq!(f.pages(), 25);
        assert!(f.contains(10) && f.contains(24) && !f.contains(25) && f.contains(99));
        assert!(!f.contains(9) && !f.contains(100) && !f.contains(u64::MAX));
    }

    #[test]
    fn too_many_ranges_keep_the_largest() {
        let mut raw: Vec<[u64; 2]> = (0..MAX_FREE_RANGES as u64 + 10)
            .map(|i| [i * 4, 1])
            .collect();
        raw.push([1_000_000, 100]);
        let f = FreePages::from_ranges(raw, 2_000_000);
        assert_eq!(f.ranges().len(), MAX_FREE_RANGES);
        assert!(f.contains(1_000_050));
        assert!(f.ranges().windows(2).all(|w| w[0].0 + w[0].1 < w[1].0));
    }

    proptest! {
        /// Whatever a guest or a peer sends: the result is sorted, disjoint,
        /// merged, inside RAM, bounded, and covers exactly the clamped input.
        #[test]
        fn hostile_ranges_are_tamed(
            raw in proptest::collection::vec(
                (prop_oneof![0u64..300, any::<u64>()], prop_oneof![0u64..40, any::<u64>()]),
                0..60),
            mem_pages in prop_oneof![0u64..300, any::<u64>()],
            probes in proptest::collection::vec(0u64..320, 20),
        ) {
            let pairs: Vec<[u64; 2]> = raw.iter().map(|&(a, b)| [a, b]).collect();
            let f = FreePages::from_ranges(pairs.clone(), mem_pages);
            prop_assert!(f.ranges().len() <= MAX_FREE_RANGES);
            for &(first, count) in f.ranges() {
                prop_assert!(count > 0);
                prop_assert!(first.checked_add(count).is_some_and(|e| e <= mem_pages));
            }
            for w in f.ranges().windows(2) {
                prop_assert!(w[0].0 + w[0].1 < w[1].0);
            }
            for p in probes {
                let want = p < mem_pages
                    && pairs.iter().any(|&[a, c]| p >= a && p - a < c);
                prop_assert_eq!(f.contains(p), want);
            }
        }
    }
}
