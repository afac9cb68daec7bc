//! A bounded latency histogram: fixed log-linear buckets (8 per power of
//! two, so a percentile is within 12.5%), however many samples arrive.

const SUB: u64 = 8;
const BUCKETS: usize = 8 + 61 * SUB as usize;

#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            total: 0,
        }
    }
}

fn bucket(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - u64::from(v.leading_zeros()); // >= 3
    let mantissa = (v >> (e - 3)) & (SUB - 1);
    (SUB + (e - 3) * SUB + mantissa) as usize
}

/// The largest value that falls in bucket `i`.
fn bucket_max(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let e = (i - SUB) / SUB + 3;
    let mantissa = (i - SUB) % SUB;
    let low = (SUB + mantissa) << (e - 3);
    low.saturating_add((1 << (e - 3)) - 1)
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[bucket(v)] += 1;
        self.total += 1;
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1), as its bucket's upper bound; 0
    /// when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_max(i);
            }
        }
        bucket_max(BUCKETS - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_everything_in_order() {
        let mut last = 0;
        for v in (0..5000).chain([u64::MAX / 3, u64::MAX]) {
            let b = bucket(v);
            assert!(b < BUCKETS && b >= last, "{v}");
            assert!(bucket_max(b) >= v, "{v}");
            assert!(bucket_max(b) - v <= v / 8, "{v} -> {}", bucket_max(b));
            last = b;
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), 0);
        for v in 1..=1000 {
            h.record(v);
        }
        let p50 = h.quantile(0.5);
        let p99 = h.quantile(0.99);
        assert!((500..=560).contains(&p50), "{p50}");
        assert!((990..=1100).contains(&p99), "{p99}");
        assert_eq!(h.count(), 1000);
    }
}
