//! Whole 2 MiB blocks of remote memory installed as one huge page.
//!
//! UFFDIO_COPY installs 4 KiB PTEs, and under the project's nested
//! hypervisor the guest's first touch of each such page costs one more exit
//! (~7 µs, ENVIRONMENT.md). When all 512 pages of an aligned block are at
//! hand at once and this clone has none of them yet, the block is written
//! into a staging huge page ([`HugeStage`], MADV_HUGEPAGE) and moved into
//! guest RAM with UFFDIO_MOVE (Linux 6.8), which moves the huge PMD as is:
//! the guest then maps the block with one fault. A C probe here (64 blocks,
//! busy machine): copy into the stage and move, 0.19-0.42 ms per block of
//! CPU/wall, and the destination holds 128 MiB of AnonHugePages.
//!
//! Off by default (a clone host turns it on with `SNOWFLOCK_HUGE_BLOCKS=1`
//! in its daemon's environment): on this machine it has not paid yet.
//! `bench remote --mem-mib 1024 --clones 1,32 --rate 1gbit --mechanisms
//! all --transport mtls`, same build with the knob on and off, five
//! alternating pairs, load average 9-23: the slowest of 32 clones took a
//! median 2,990 ms on against 2,985 ms off, with 0-16 of each clone's 32
//! blocks huge; one clone 553 ms either way (its pages come as faults'
//! 64-page windows, never a whole block). On an idle machine it made
//! `align` on two remote clones slower, where an announced range arrives
//! in whole blocks: warm-up penalty 1.59-1.62 on against 1.20-1.23 off
//! (`bench apps --apps align --modes single,remote --clones 2`).
//!
//! Tried first and dropped: MADV_COLLAPSE of a block once its pages were
//! all installed. It copies the block a second time and waits for every
//! CPU's page lists to drain: 1.1-1.3 ms per block on a quiet machine, 265
//! ms per block with 32 clones on 2 cores in the fault handler, and on a
//! thread of its own only 6 of a clone's 32 blocks were collapsed before
//! the clone ended (`bench remote` at 32 clones: 3,153 against 3,177 ms).

use super::uffd::Userfaultfd;
use super::PAGE_SIZE;

/// Pages in one 2 MiB block.
pub const BLOCK_PAGES: u64 = 512;
pub const BLOCK_BYTES: usize = BLOCK_PAGES as usize * PAGE_SIZE;

/// Whether blocks counted from `base` are the kernel's huge page frames.
pub fn aligned(base: u64) -> bool {
    base.is_multiple_of(BLOCK_BYTES as u64)
}

/// The blocks `first..first + count` touches, each with the part of the
/// range inside it: `(block, from, to)`.
pub fn blocks_of(first: u64, count: u64) -> impl Iterator<Item = (u64, u64, u64)> {
    let end = first.saturating_add(count);
    let mut p = first;
    std::iter::from_fn(move || {
        if p >= end {
            return None;
        }
        let block = p / BLOCK_PAGES;
        let to = ((block + 1) * BLOCK_PAGES).min(end);
        let item = (block, p, to);
        p = to;
        Some(item)
    })
}

/// A 2 MiB aligned private anonymous block asking for a huge page: the
/// source of each move. A move leaves it empty (its next write faults a
/// new huge page in).
pub struct HugeStage {
    map: *mut libc::c_void,
    map_len: usize,
    at: *mut u8,
}

// SAFETY: the stage is this process's own mapping, reached only through
// `&mut self` (one thread at a time); the pointers are addresses, not
// shared state.
unsafe impl Send for HugeStage {}

impl HugeStage {
    pub fn new() -> std::io::Result<HugeStage> {
        let map_len = 2 * BLOCK_BYTES;
        // SAFETY: a new anonymous private mapping; no Rust object lives
        // there.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let at = (map as usize).next_multiple_of(BLOCK_BYTES) as *mut u8;
        // SAFETY: `at..at + 2 MiB` lies inside the 4 MiB just mapped;
        // MADV_HUGEPAGE only changes how the kernel backs it.
        let rc = unsafe { libc::madvise(at.cast(), BLOCK_BYTES, libc::MADV_HUGEPAGE) };
        let stage = HugeStage { map, map_len, at };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stage)
    }

    /// The stage's address (2 MiB aligned).
    pub fn addr(&self) -> u64 {
        self.at as u64
    }

    /// Installs `bytes` (one whole block) at `dst`, a block of `uffd`'s
    /// range with none of its pages present: one huge page where the
    /// kernel gave the stage one, else its 512 small pages, moved either
    /// way. On an error nothing or part of the block was installed; the
    /// caller then installs the block page by page (present pages are
    /// skipped).
    pub fn install(&mut self, uffd: &Userfaultfd, dst: u64, bytes: &[u8]) -> std::io::Result<()> {
        assert_eq!(bytes.len(), BLOCK_BYTES, "one whole block");
        // SAFETY: the stage is BLOCK_BYTES of writable memory owned by
        // `self` (borrowed mutably), and `bytes` is another object.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.at, BLOCK_BYTES) };
        uffd.move_pages(dst, self.addr(), BLOCK_BYTES as u64)
    }
}

impl Drop for HugeStage {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; nothing refers
        // into it any more.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_splits_at_block_edges() {
        let parts: Vec<_> = blocks_of(500, 600).collect();
        assert_eq!(parts, [(0, 500, 512), (1, 512, 1024), (2, 1024, 1100)]);
        assert_eq!(blocks_of(1024, 512).collect::<Vec<_>>(), [(2, 1024, 1536)]);
        assert_eq!(blocks_of(7, 0).count(), 0);
    }

    /// Real kernel: a block moved into a userfaultfd range reads back
    /// whole, lands as a huge page, and a second move onto it is refused.
    #[test]
    fn a_whole_block_moves_in_as_one_huge_page() {
        let uffd = Userfaultfd::new().unwrap();
        assert!(
            uffd.can_move(),
            "this kernel (6.8 or later) has UFFDIO_MOVE"
        );
        let dst = HugeStage::new().unwrap();
        uffd.register_missing(dst.addr(), BLOCK_BYTES as u64)
            .unwrap();
        let bytes: Vec<u8> = (0..BLOCK_BYTES)
            .map(|i| (i / PAGE_SIZE + i) as u8)
            .collect();
        let mut stage = HugeStage::new().unwrap();
        stage.install(&uffd, dst.addr(), &bytes).unwrap();
        // SAFETY: every page of the block is present now (no fault to
        // wait for), and the mapping lives as long as `dst`.
        let got = unsafe { std::slice::from_raw_parts(dst.addr() as *const u8, BLOCK_BYTES) };
        assert!(got == &bytes[..], "the moved block reads back whole");
        let huge = anon_huge_kib_at(dst.addr());
        assert_eq!(huge, 2048, "the block is one huge page");
        let again = stage.install(&uffd, dst.addr(), &bytes).unwrap_err();
        assert_eq!(again.raw_os_error(), Some(libc::EEXIST), "{again}");
    }

    /// AnonHugePages of the mapping holding `addr`, from /proc/self/smaps.
    fn anon_huge_kib_at(addr: u64) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((lo, hi)) = range.split_once('-') {
                    if let (Ok(lo), Ok(hi)) =
                        (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
                    {
                        inside = (lo..hi).contains(&addr);
                        continue;
                    }
                }
            }
            if let Some(kib) = line.strip_prefix("AnonHugePages:") {
                if inside {
                    return kib.trim().trim_end_matches(" kB").parse().unwrap();
                }
            }
        }
        panic!("no mapping holds {addr:#x}")
    }
}
