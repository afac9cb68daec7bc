//! Guest RAM: one anonymous private mapping at guest physical 0, on
//! transparent huge pages, plus the bounds checks every guest-supplied
//! pointer goes through.

use crate::Error;
use sf_abi::hypercall::Error as HcError;
use sf_abi::tables::GuestWords;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

pub struct GuestRam {
    mem: GuestMemoryMmap<()>,
    size: u64,
}

impl GuestRam {
    /// Maps `size` bytes (a multiple of 2 MiB, see
    /// [`sf_abi::tables::check_mem_size`]) and asks for huge pages.
    pub fn new(size: u64) -> Result<GuestRam, Error> {
        sf_abi::tables::check_mem_size(size).map_err(|e| Error::MemorySize {
            size,
            why: match e {
                sf_abi::tables::LayoutError::TooSmall => "below the 4 MiB minimum",
                sf_abi::tables::LayoutError::TooLarge => "above the 64 GiB maximum",
                sf_abi::tables::LayoutError::NotLargePageAligned => "not a multiple of 2 MiB",
                // Not a size check; check_mem_size never returns it.
                sf_abi::tables::LayoutError::Ring0Text | sf_abi::tables::LayoutError::Inputs => {
                    "not usable"
                }
            },
        })?;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)]).map_err(
            |e| Error::MemoryAlloc {
                size,
                why: e.to_string(),
            },
        )?;
        for region in mem.iter() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .expect("region start is mapped");
            // SAFETY: the range is exactly one mapping owned by `mem`;
            // MADV_HUGEPAGE only changes how the kernel backs it.
            let rc = unsafe {
                libc::madvise(
                    host as *mut libc::c_void,
                    region.len() as usize,
                    libc::MADV_HUGEPAGE,
                )
            };
            if rc != 0 {
                tracing::debug!(
                    "madvise(MADV_HUGEPAGE) failed: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        Ok(GuestRam { mem, size })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The hinted ranges that lie inside guest RAM, as host addresses and
    /// lengths in bytes.
    fn hinted_ranges<'a>(
        &'a self,
        free: &'a crate::hints::FreePages,
    ) -> impl Iterator<Item = (*mut libc::c_void, usize)> + 'a {
        free.ranges().iter().filter_map(|&(first, count)| {
            let (gpa, len) = (first.checked_mul(4096)?, count.checked_mul(4096)?);
            let slice = self.mem.get_slice(GuestAddress(gpa), len as usize).ok()?;
            Some((slice.ptr_guard_mut().as_ptr().cast(), len as usize))
        })
    }

    /// Drops this process's copy of the hinted pages: the next touch gets a
    /// fresh zero page (a whole zero huge page where a 2 MiB range is
    /// hinted) instead of a copy of the parent's. Only for a local clone
    /// right after the fork, on its private copy-on-write mapping.
    pub fn discard(&self, free: &crate::hints::FreePages) {
        for (at, len) in self.hinted_ranges(free) {
            // SAFETY: the range is inside this process's private mapping of
            // guest RAM, which no vCPU runs on yet; MADV_DONTNEED only makes
            // its next read return zeros, which a hinted page allows.
            if unsafe { libc::madvise(at, len, libc::MADV_DONTNEED) } != 0 {
                tracing::debug!(
                    "madvise(MADV_DONTNEED) failed: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }

    /// [`GuestRam::discard`] where the RAM is a private mapping of a file
    /// other processes share (a remote clone's RAM over its host's page
    /// cache): a page dropped there would read the file back, not zeros,
    /// and one the file lacks would be added to it, as zeros, for all of
    /// them. The hinted ranges get fresh anonymous memory mapped over them
    /// instead; a range that cannot (the process's mapping count) is
    /// written with zeros, a private copy each.
    pub fn discard_over_shared_file(&self, free: &crate::hints::FreePages) {
        for (at, len) in self.hinted_ranges(free) {
            // SAFETY: the range is inside this process's mapping of guest
            // RAM, which no vCPU runs on yet and no Rust reference points
            // into; MAP_FIXED replaces exactly these pages with zeros, which
            // a hinted page allows.
            let p = unsafe {
                libc::mmap(
                    at,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                tracing::debug!(
                    "hinted pages at {at:?} ({len} bytes) zeroed in place: {}",
                    std::io::Error::last_os_error()
                );
                // SAFETY: as above; the bytes are guest RAM, written only
                // here.
                unsafe { std::ptr::write_bytes(at.cast::<u8>(), 0, len) };
            }
        }
    }

    pub fn mmap(&self) -> &GuestMemoryMmap<()> {
        &self.mem
    }

    /// Host address of guest physical 0.
    pub fn host_base(&self) -> u64 {
        self.mem
            .get_host_address(GuestAddress(0))
            .expect("guest RAM starts at 0") as u64
    }

    /// Checks that `[gpa, gpa + len)` lies inside guest RAM and `len <= max`.
    /// An empty range names no memory, so any address will do.
    pub fn check_range(&self, gpa: u64, len: u64, max: u64) -> Result<(), HcError> {
        if len > max {
            return Err(HcError::TooBig);
        }
        if len == 0 {
            return Ok(());
        }
        match gpa.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(HcError::Fault),
        }
    }

    /// Reads guest bytes after [`Self::check_range`].
    pub fn read_checked(&self, gpa: u64, len: u64, max: u64) -> Result<Vec<u8>, HcError> {
        self.check_range(gpa, len, max)?;
        let mut buf = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut buf, GuestAddress(gpa))
            .map_err(|_| HcError::Fault)?;
        Ok(buf)
    }

    /// Writes host-built data (never guest-controlled addresses).
    pub fn write(&self, gpa: u64, bytes: &[u8]) {
        self.mem
            .write_slice(bytes, GuestAddress(gpa))
            .expect("VMM writes only inside the fixed layout");
    }

    /// Writes host data to a guest-supplied address after checking it.
    pub fn write_checked(&self, gpa: u64, bytes: &[u8]) -> Result<(), HcError> {
        self.check_range(gpa, bytes.len() as u64, u64::MAX)?;
        self.mem
            .write_slice(bytes, GuestAddress(gpa))
            .map_err(|_| HcError::Fault)
    }

    pub fn read_u8(&self, gpa: u64) -> Option<u8> {
        self.mem.read_obj(GuestAddress(gpa)).ok()
    }

    pub fn read_u64(&self, gpa: u64) -> Option<u64> {
        self.mem.read_obj(GuestAddress(gpa)).ok()
    }
}

impl GuestWords for &GuestRam {
    fn write_u64(&mut self, gpa: u64, value: u64) {
        self.write(gpa, &value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_against_ram_and_limits() {
        let ram = GuestRam::new(8 << 20).unwrap();
        assert_eq!(ram.check_range(0, 16, 64), Ok(()));
        assert_eq!(ram.check_range((8 << 20) - 16, 16, 64), Ok(()));
        assert_eq!(ram.check_range((8 << 20) - 15, 16, 64), Err(HcError::Fault));
        assert_eq!(ram.check_range(u64::MAX - 3, 16, 64), Err(HcError::Fault));
        assert_eq!(ram.check_range(0, 65, 64), Err(HcError::TooBig));
        assert_eq!(ram.read_checked(8 << 20, 1, 64), Err(HcError::Fault));
        assert_eq!(ram.read_checked(u64::MAX, 0, 64), Ok(vec![]));
    }

    #[test]
    fn sizes_are_refused_with_a_reason() {
        assert!(
            matches!(GuestRam::new(1 << 20), Err(Error::MemorySize { why, .. }) if why.contains("minimum"))
        );
        assert!(
            matches!(GuestRam::new((8 << 20) + 4096), Err(Error::MemorySize { why, .. }) if why.contains("2 MiB"))
        );
    }
}
