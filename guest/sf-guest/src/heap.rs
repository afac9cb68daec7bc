//! The global allocator: a first-fit heap over the RAM between the image
//! and the stack.

use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

pub(crate) fn init(start: u64, end: u64) {
    // SAFETY: [start, end) is guest RAM the boot layout reserves for the
    // heap; nothing else uses it, and init runs once before any allocation.
    unsafe { HEAP.lock().init(start as *mut u8, (end - start) as usize) }
}
