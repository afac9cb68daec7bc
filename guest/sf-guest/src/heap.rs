//! The global allocator: a first-fit heap over the RAM between the image
//! and the stack, which keeps the guest's free-page hints (see
//! `sf_abi::hints` and [`crate::mem`]) up to date, page-granular: a bit is
//! set for heap never handed out (everything above the high-water mark)
//! and for whole pages inside freed blocks, and cleared before a page is
//! handed out. A remote clone gets zero pages for set bits, without a
//! network round trip.
//!
//! The heap's own bookkeeping lives in its free blocks: a 16-byte node at
//! the start of each. No page holding a node ever has its bit set (a clone
//! would see a zeroed free list), so `dealloc` hints only pages past the
//! node it writes at the block's start, and `alloc` clears the pages up to
//! the node it may write after the block it returns.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use linked_list_allocator::Heap;
use sf_abi::hints::{self, HintsHeader, HINTS_MAGIC, HINTS_VERSION, HINT_PAGE};

/// The allocator's free-list node (`size`, `next`).
const NODE: u64 = 16;
/// Most `will_overwrite` ranges kept until the next clone call; more are
/// dropped (a dropped hint only costs a fetch).
const MAX_EXPLICIT: usize = 32;

pub(crate) struct Hints {
    /// Registered with the VMM; lives in this image's data, so its address
    /// is its GPA (the guest is identity mapped).
    header: HintsHeader,
    words: *mut u64,
    nwords: usize,
    /// Nothing at or above this address was ever written by the heap or
    /// handed out: it is zero in this VM and in its clones.
    high_water: u64,
    explicit: [(u64, u64); MAX_EXPLICIT],
    n_explicit: usize,
}

struct HintedHeap {
    heap: UnsafeCell<Heap>,
    hints: UnsafeCell<Hints>,
}

// SAFETY: the guest runs one thread on one vCPU and no interrupt handler
// allocates, so the cells are never accessed concurrently.
unsafe impl Sync for HintedHeap {}

#[global_allocator]
static HEAP: HintedHeap = HintedHeap {
    heap: UnsafeCell::new(Heap::empty()),
    hints: UnsafeCell::new(Hints {
        header: HintsHeader {
            magic: 0,
            version: 0,
            _reserved: 0,
            bitmap_gpa: 0,
            bitmap_bits: 0,
        },
        words: core::ptr::null_mut(),
        nwords: 0,
        high_water: 0,
        explicit: [(0, 0); MAX_EXPLICIT],
        n_explicit: 0,
    }),
};

/// Bytes the heap takes for a block of `size` (its `align_layout`).
fn block_size(size: usize) -> u64 {
    (size.max(NODE as usize) as u64).next_multiple_of(8)
}

impl Hints {
    fn words(&mut self) -> &mut [u64] {
        if self.words.is_null() {
            return &mut [];
        }
        // SAFETY: `init` carved `nwords` words for the bitmap out of the
        // heap region; only this module touches them.
        unsafe { core::slice::from_raw_parts_mut(self.words, self.nwords) }
    }

    fn clear_bytes(&mut self, start: u64, end: u64) {
        let (f, e) = hints::touched_pages(start, end);
        hints::clear_bits(self.words(), f, e);
    }

    fn set_whole_pages(&mut self, start: u64, end: u64) {
        let (f, e) = hints::whole_pages(start, end);
        hints::set_bits(self.words(), f, e);
    }
}

/// The hint state (single-threaded guest: see `HintedHeap`'s `Sync`).
pub(crate) fn with_hints<R>(f: impl FnOnce(&mut Hints) -> R) -> R {
    // SAFETY: one thread, and no caller re-enters the allocator while `f`
    // runs (the closures here never allocate).
    f(unsafe { &mut *HEAP.hints.get() })
}

// SAFETY: blocks come from `linked_list_allocator::Heap`, which hands out
// disjoint, aligned blocks; the hint bookkeeping around it never touches a
// block it returned.
unsafe impl GlobalAlloc for HintedHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: single-threaded (see `Sync` above).
        let heap = unsafe { &mut *self.heap.get() };
        let Ok(p) = heap.allocate_first_fit(layout) else {
            return core::ptr::null_mut();
        };
        let start = p.as_ptr() as u64;
        // The block, and the node the heap may have written right after it.
        let end = start + block_size(layout.size()) + NODE;
        with_hints(|h| {
            h.clear_bytes(start, end);
            h.high_water = h.high_water.max(end);
        });
        p.as_ptr()
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let known_zero_from = with_hints(|h| h.high_water);
        // SAFETY: as for `alloc`.
        let p = unsafe { self.alloc(layout) };
        if !p.is_null() {
            // Bytes at or above the old high-water mark were never written:
            // zero here and, for hinted pages, zero pages in a clone. Writing
            // them would only fault in (or fetch) pages for nothing.
            let start = p as u64;
            let dirty = known_zero_from
                .saturating_sub(start)
                .min(layout.size() as u64);
            // SAFETY: `p` is a fresh block of `layout.size()` bytes.
            unsafe { core::ptr::write_bytes(p, 0, dirty as usize) };
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: single-threaded (see `Sync` above).
        let heap = unsafe { &mut *self.heap.get() };
        // SAFETY: the caller passes a block `alloc` returned for `layout`.
        unsafe { heap.deallocate(NonNull::new_unchecked(ptr), layout) };
        let start = ptr as u64;
        // The heap writes its node at the block's start (or grows the
        // previous free block, whose node is before this one): hint only
        // the whole pages after it.
        with_hints(|h| h.set_whole_pages(start + NODE, start + block_size(layout.size())));
    }
}

/// Sets up the heap on `[start, end)`, the hint bitmap at its bottom (one
/// bit per guest page below `end`: 32 KiB for a 1 GiB guest), and registers
/// the hints with the VMM.
pub(crate) fn init(start: u64, end: u64) {
    let pages = end / HINT_PAGE;
    let nwords = pages.div_ceil(64) as usize;
    let bitmap = start.next_multiple_of(8);
    let heap_start = (bitmap + nwords as u64 * 8).next_multiple_of(16);
    // SAFETY: [start, end) is guest RAM the boot layout reserves for the
    // heap; nothing else uses it, and init runs once before any allocation.
    unsafe {
        core::ptr::write_bytes(bitmap as *mut u64, 0, nwords);
        (*HEAP.heap.get()).init(heap_start as *mut u8, (end - heap_start) as usize);
    }
    let header_gpa = with_hints(|h| {
        h.words = bitmap as *mut u64;
        h.nwords = nwords;
        // The heap's first node sits at its start; all above is free.
        h.high_water = heap_start + NODE;
        h.set_whole_pages(h.high_water, end);
        h.header = HintsHeader {
            magic: HINTS_MAGIC,
            version: HINTS_VERSION,
            _reserved: 0,
            bitmap_gpa: bitmap,
            bitmap_bits: pages,
        };
        &h.header as *const HintsHeader as u64
    });
    register(header_gpa);
}

fn register(header_gpa: u64) {
    if crate::rt::has_hypercalls() {
        // SAFETY: the host only records the address.
        unsafe {
            crate::hypercall::raw(
                sf_abi::hypercall::Call::RegisterHints as u32,
                header_gpa,
                0,
                0,
                0,
            )
        };
    }
}

/// Hints whole pages of `[start, end)` until the next clone call returns.
/// False if too many are pending (the hint is dropped).
pub(crate) fn will_overwrite(start: u64, end: u64) -> bool {
    with_hints(|h| {
        if h.n_explicit == MAX_EXPLICIT {
            return false;
        }
        h.explicit[h.n_explicit] = (start, end);
        h.n_explicit += 1;
        h.set_whole_pages(start, end);
        true
    })
}

/// Right after a clone call returns (in the parent and in each clone): the
/// explicit hints applied to that call only. Registers the hints again: a
/// clone on another host starts with a VMM that has not seen them.
pub(crate) fn after_clone() {
    let gpa = with_hints(|h| {
        for i in 0..h.n_explicit {
            let (s, e) = h.explicit[i];
            let (f, e) = hints::whole_pages(s, e);
            hints::clear_bits(h.words(), f, e);
        }
        h.n_explicit = 0;
        &h.header as *const HintsHeader as u64
    });
    register(gpa);
}

pub(crate) fn header_ptr() -> *mut HintsHeader {
    with_hints(|h| &mut h.header as *mut HintsHeader)
}

pub(crate) fn page_hinted(addr: u64) -> bool {
    with_hints(|h| hints::bit(h.words(), addr / HINT_PAGE))
}
