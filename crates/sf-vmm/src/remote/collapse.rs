//! Which 2 MiB blocks of remote memory are complete, and their collapse
//! into huge pages off the fault path.
//!
//! The fault handler installs pages with UFFDIO_COPY, one 4 KiB PTE each,
//! and under the project's nested hypervisor each of them costs the guest
//! one more exit on its first touch. Once all 512 pages of an aligned block
//! are installed (by one batch, by pushes over time, by a stream),
//! `madvise(MADV_COLLAPSE)` (Linux 6.1) copies them into one huge page,
//! and the guest's next touch maps the whole block at once. The collapses
//! run on a thread of their own: each one waits for the kernel's per-CPU
//! page lists to drain, which took 4-11 ms of wall time for 0.55 ms of CPU
//! per block with the machine busy, and up to 265 ms per block with 32
//! clones on 2 cores when the fault handler did it between faults. The kernel
//! refuses a block of a userfaultfd range while any of its PTEs is none
//! or the shared zero page, so blocks holding a shared zero page are never
//! tried. Measured here (a C probe, 64 blocks, uffd range with
//! MADV_HUGEPAGE): UFFDIO_COPY of a whole block 0.5-0.6 ms, its collapse
//! 1.1-1.3 ms; a block with one page missing or one shared zero page is
//! refused (EBUSY/EINVAL) in 0.03-0.3 ms.

use super::bitmap::PageBitmap;
use super::handler::Shared;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;

/// Pages in one 2 MiB block.
pub const BLOCK_PAGES: u64 = 512;
const BLOCK_BYTES: u64 = BLOCK_PAGES * super::PAGE_SIZE as u64;

/// Tracks the blocks that became complete and are waiting for a collapse.
pub struct FullBlocks {
    /// Blocks already queued (or collapsed, or tried): never queued twice.
    seen: PageBitmap,
    /// Blocks holding a shared zero page or left to the kernel: a collapse
    /// would be refused or is not needed.
    excluded: PageBitmap,
    pending: VecDeque<u64>,
}

impl FullBlocks {
    /// For a region of `pages` pages; its whole blocks only (a partial last
    /// block can never be a huge page).
    pub fn new(pages: u64) -> FullBlocks {
        let blocks = pages / BLOCK_PAGES;
        FullBlocks {
            seen: PageBitmap::new(blocks),
            excluded: PageBitmap::new(blocks),
            pending: VecDeque::new(),
        }
    }

    /// `first..first + count` were just marked in `present`: queues each
    /// block of that range that is now complete.
    pub fn note_present(&mut self, present: &PageBitmap, first: u64, count: u64) {
        if count == 0 {
            return;
        }
        for block in first / BLOCK_PAGES..=(first + count - 1) / BLOCK_PAGES {
            if block >= self.seen.len() || self.seen.get(block) || self.excluded.get(block) {
                continue;
            }
            if present.all_set(block * BLOCK_PAGES, BLOCK_PAGES) {
                self.seen.set(block);
                self.pending.push_back(block);
            }
        }
    }

    /// The blocks touching `first..first + count` will never be collapsed
    /// (a shared zero page in them, or left to the kernel).
    pub fn exclude(&mut self, first: u64, count: u64) {
        if count == 0 {
            return;
        }
        let last = ((first + count - 1) / BLOCK_PAGES).min(self.excluded.len().saturating_sub(1));
        for block in first / BLOCK_PAGES..=last {
            if block < self.excluded.len() {
                self.excluded.set(block);
            }
        }
    }

    /// The oldest complete block still worth a collapse.
    pub fn next(&mut self) -> Option<u64> {
        while let Some(block) = self.pending.pop_front() {
            if !self.excluded.get(block) {
                return Some(block);
            }
        }
        None
    }
}

/// The thread that collapses the blocks the fault handler hands it, in
/// order; it ends once the handler drops it (after its last block).
pub struct Collapser {
    blocks: Option<mpsc::Sender<u64>>,
    thread: Option<JoinHandle<()>>,
}

impl Collapser {
    /// `base`: the region's start, 2 MiB aligned ([`aligned`]).
    pub fn start(base: u64, shared: Arc<Shared>) -> std::io::Result<Collapser> {
        let (tx, rx) = mpsc::channel::<u64>();
        let thread = std::thread::Builder::new()
            .name("collapse".into())
            .spawn(move || {
                // Fork safety: a fork of this VMM parks this thread in its
                // wait for the next block (see `clone::park`).
                let helper = crate::clone::park::register("huge page collapse");
                while let Ok(block) = helper.idle(|| rx.recv()) {
                    let start = Instant::now();
                    let result = collapse(base, block);
                    let c = &shared.counters;
                    c.collapse_us
                        .fetch_add(start.elapsed().as_micros() as u64, Relaxed);
                    match result {
                        Ok(()) => c.collapsed_blocks.fetch_add(1, Relaxed),
                        Err(e) => {
                            tracing::debug!("block {block} stays on 4 KiB pages: {e}");
                            c.collapse_failures.fetch_add(1, Relaxed)
                        }
                    };
                }
            })?;
        Ok(Collapser {
            blocks: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a complete block (all its pages installed) for collapse.
    pub fn send(&self, block: u64) {
        if let Some(tx) = &self.blocks {
            // Fails only once the thread is gone; the block then stays on
            // 4 KiB pages, which is always correct.
            let _ = tx.send(block);
        }
    }
}

impl Drop for Collapser {
    /// Waits for the collapse in progress: the region must stay mapped
    /// until no madvise can reach it.
    fn drop(&mut self) {
        self.blocks.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Collapses block `block` of the region at `base` (2 MiB aligned) into one
/// huge page. The region stays registered: nothing faults on these pages
/// again, since every one of them is present.
pub fn collapse(base: u64, block: u64) -> std::io::Result<()> {
    let addr = base + block * BLOCK_BYTES;
    // SAFETY: the block lies inside guest RAM, a mapping this process owns
    // for the handler's whole life; MADV_COLLAPSE changes how its pages
    // are backed (one huge page with the same bytes), never their content.
    let rc = unsafe {
        libc::madvise(
            addr as *mut libc::c_void,
            BLOCK_BYTES as usize,
            libc::MADV_COLLAPSE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether blocks counted from `base` are the kernel's huge page frames.
pub fn aligned(base: u64) -> bool {
    base.is_multiple_of(BLOCK_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_queued_once_when_its_last_page_arrives() {
        let mut present = PageBitmap::new(3 * BLOCK_PAGES + 7);
        let mut full = FullBlocks::new(present.len());
        // Block 1 in three pieces, out of order; block 0 all but one page.
        for (first, count) in [(700, 320), (512, 188), (0, 511)] {
            present.set_range(first, count);
            full.note_present(&present, first, count);
        }
        assert_eq!(full.pending.len(), 0, "no block complete yet");
        present.set_range(1020, 4);
        full.note_present(&present, 1020, 4);
        assert_eq!(full.next(), Some(1));
        assert_eq!(full.next(), None);
        // Noting pages of a queued block again does not queue it twice.
        full.note_present(&present, 600, 1);
        assert_eq!(full.next(), None);
        // The last partial block (7 pages) is never a huge page.
        present.set_range(3 * BLOCK_PAGES, 7);
        full.note_present(&present, 3 * BLOCK_PAGES, 7);
        assert_eq!(full.next(), None);
        // One batch spanning two blocks completes both.
        present.set_range(511, 1);
        present.set_range(2 * BLOCK_PAGES, BLOCK_PAGES);
        full.note_present(&present, 511, 1);
        full.note_present(&present, 2 * BLOCK_PAGES, BLOCK_PAGES);
        assert_eq!(
            (full.next(), full.next(), full.next()),
            (Some(0), Some(2), None)
        );
    }

    #[test]
    fn excluded_blocks_are_never_returned() {
        let mut present = PageBitmap::new(2 * BLOCK_PAGES);
        let mut full = FullBlocks::new(present.len());
        full.exclude(10, 1);
        present.set_range(0, 2 * BLOCK_PAGES);
        full.note_present(&present, 0, 2 * BLOCK_PAGES);
        assert_eq!(full.next(), Some(1));
        assert_eq!(full.next(), None);
        // Excluded after it was queued: dropped from the queue too.
        let mut full = FullBlocks::new(present.len());
        full.note_present(&present, 0, 2 * BLOCK_PAGES);
        full.exclude(BLOCK_PAGES + 5, 3);
        assert_eq!((full.next(), full.next()), (Some(0), None));
        // A range past the end is ignored, not a panic.
        full.exclude(2 * BLOCK_PAGES, 1000);
    }
}
