//! An address bus: non-overlapping ranges `[base, base + len)`, each owned
//! by one device slot. The VM has one for port I/O and one for MMIO; a VM
//! exit's address is looked up here to find the device and the offset
//! inside its range.

/// Which of the VM's two buses a device sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BusKind {
    /// Port I/O (`in`/`out`), 16-bit addresses.
    Pio,
    /// Memory-mapped I/O: guest-physical addresses with no RAM behind them.
    Mmio,
}

/// A device's range on a bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BusRange {
    pub base: u64,
    pub len: u64,
}

impl BusRange {
    fn end(&self) -> u64 {
        self.base + self.len
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("device range {base:#x}+{len:#x} is empty or wraps around the address space; give it a length of at least 1 that ends below 2^64")]
    BadRange { base: u64, len: u64 },
    #[error("device range {new:#x}..{new_end:#x} overlaps the range {old:#x}..{old_end:#x} of device {old_slot}; move one of them")]
    Overlap {
        new: u64,
        new_end: u64,
        old: u64,
        old_end: u64,
        old_slot: usize,
    },
}

/// Ranges sorted by base; a lookup is a binary search (a few entries:
/// nothing next to the ~25 µs of the exit itself).
#[derive(Clone, Debug, Default)]
pub struct Bus {
    ranges: Vec<(BusRange, usize)>,
}

impl Bus {
    pub fn new() -> Bus {
        Bus::default()
    }

    /// Gives `range` to device `slot`; refuses an empty, wrapping or
    /// overlapping range.
    pub fn insert(&mut self, range: BusRange, slot: usize) -> Result<(), BusError> {
        if range.len == 0 || range.base.checked_add(range.len).is_none() {
            return Err(BusError::BadRange {
                base: range.base,
                len: range.len,
            });
        }
        let at = self.ranges.partition_point(|(r, _)| r.base < range.base);
        let neighbours = [at.checked_sub(1), Some(at)];
        for (old, old_slot) in neighbours
            .into_iter()
            .flatten()
            .filter_map(|i| self.ranges.get(i))
        {
            if old.base < range.end() && range.base < old.end() {
                return Err(BusError::Overlap {
                    new: range.base,
                    new_end: range.end(),
                    old: old.base,
                    old_end: old.end(),
                    old_slot: *old_slot,
                });
            }
        }
        self.ranges.insert(at, (range, slot));
        Ok(())
    }

    /// The device slot owning `addr` and the offset of `addr` in its range.
    pub fn lookup(&self, addr: u64) -> Option<(usize, u64)> {
        let at = self.ranges.partition_point(|(r, _)| r.base <= addr);
        let (r, slot) = self.ranges.get(at.checked_sub(1)?)?;
        (addr < r.end()).then(|| (*slot, addr - r.base))
    }

    /// Every range and its slot, by address.
    pub fn iter(&self) -> impl Iterator<Item = (BusRange, usize)> + '_ {
        self.ranges.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(base: u64, len: u64) -> BusRange {
        BusRange { base, len }
    }

    #[test]
    fn lookup_finds_the_device_and_offset() {
        let mut b = Bus::new();
        b.insert(r(0x3f8, 8), 0).unwrap();
        b.insert(r(0xf4, 1), 1).unwrap();
        b.insert(r(0x510, 1), 2).unwrap();
        assert_eq!(b.lookup(0x3f8), Some((0, 0)));
        assert_eq!(b.lookup(0x3ff), Some((0, 7)));
        assert_eq!(b.lookup(0x400), None);
        assert_eq!(b.lookup(0x3f7), None);
        assert_eq!(b.lookup(0xf4), Some((1, 0)));
        assert_eq!(b.lookup(0xf5), None);
        assert_eq!(b.lookup(0x510), Some((2, 0)));
        assert_eq!(b.lookup(0), None);
        assert_eq!(b.lookup(u64::MAX), None);
    }

    #[test]
    fn overlaps_are_refused_and_named() {
        let mut b = Bus::new();
        b.insert(r(0x1000, 0x1000), 0).unwrap();
        for (base, len) in [(0x1000, 1), (0xfff, 2), (0x1fff, 1), (0x800, 0x2000)] {
            let e = b.insert(r(base, len), 1).unwrap_err();
            assert!(
                matches!(
                    e,
                    BusError::Overlap {
                        old: 0x1000,
                        old_end: 0x2000,
                        old_slot: 0,
                        ..
                    }
                ),
                "{base:#x}+{len:#x}: {e}"
            );
        }
        // Touching ends are not overlaps.
        b.insert(r(0x2000, 0x1000), 1).unwrap();
        b.insert(r(0xfff, 1), 2).unwrap();
        assert_eq!(b.lookup(0x1fff), Some((0, 0xfff)));
        assert_eq!(b.lookup(0x2000), Some((1, 0)));
        assert_eq!(b.lookup(0xfff), Some((2, 0)));
    }

    #[test]
    fn empty_and_wrapping_ranges_are_refused() {
        let mut b = Bus::new();
        assert!(matches!(
            b.insert(r(5, 0), 0),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            b.insert(r(u64::MAX, 2), 0),
            Err(BusError::BadRange { .. })
        ));
        assert!(b.insert(r(u64::MAX - 1, 1), 0).is_ok());
        assert_eq!(b.lookup(u64::MAX - 1), Some((0, 0)));
    }
}
