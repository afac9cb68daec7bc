//! The memory a page server serves: a read-only view of a host mapping that
//! connection threads may share.

use super::PAGE_SIZE;

/// A read-only byte range that stays mapped and unchanged while it is
/// served. In production it is the guest RAM of a frozen, forked copy of
/// the parent VMM: nothing in that process writes it any more.
#[derive(Clone, Copy, Debug)]
pub struct ServedRegion {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the region is only ever read, and `ServedRegion::new`'s contract
// says nobody writes it or unmaps it while it is served, so reads from any
// thread are reads of immutable memory.
unsafe impl Send for ServedRegion {}
// SAFETY: as for Send: shared access is read-only access to immutable bytes.
unsafe impl Sync for ServedRegion {}

impl ServedRegion {
    /// # Safety
    ///
    /// `ptr..ptr + len` must be readable memory (a mapping; untouched
    /// anonymous pages read as zeros and cost nothing) that stays mapped and
    /// is not written, by this or any thread, until every
    /// [`crate::remote::PageServer`] serving it has returned from `serve`
    /// (or was dropped without serving).
    pub unsafe fn new(ptr: *const u8, len: usize) -> ServedRegion {
        ServedRegion { ptr, len }
    }

    /// Safe for memory that lives forever and is never written (immutable
    /// `'static` data).
    pub fn from_static(bytes: &'static [u8]) -> ServedRegion {
        ServedRegion {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn pages(&self) -> u64 {
        (self.len / PAGE_SIZE) as u64
    }

    pub fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `new`'s contract (or `'static` immutability) makes these
        // bytes readable and unchanging for as long as they are served,
        // which outlasts every borrow the server hands to its threads.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}
