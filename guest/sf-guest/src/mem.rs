//! Memory hints for clones. The runtime tells the VMM, at every clone call,
//! which pages hold nothing the guest will read before writing: heap never
//! handed out, whole pages of freed blocks, and buffers the program names
//! with [`will_overwrite`]. A clone on another host gets those pages as
//! local zero pages instead of fetching the parent's bytes.
//!
//! A hinted page's old contents are undefined in a clone: zeros or the
//! parent's bytes.

/// Promises that the whole pages inside `[ptr, ptr + len)` will be fully
/// written before they are read, in the clones of the next clone call (and
/// in this VM after it). Their contents after that call are undefined
/// (zeros or the old bytes); partial pages at either end keep theirs. The
/// hint lasts for one clone call. Returns false if the hint was dropped
/// (too many pending: 32), which only costs the clones a fetch.
pub fn will_overwrite(ptr: *const u8, len: usize) -> bool {
    let start = ptr as u64;
    crate::heap::will_overwrite(start, start.saturating_add(len as u64))
}

/// The registered hint header, for test guests that corrupt it on purpose.
#[doc(hidden)]
pub fn hints_header() -> *mut sf_abi::hints::HintsHeader {
    crate::heap::header_ptr()
}

/// Whether the page holding `addr` is hinted now, for test guests.
#[doc(hidden)]
pub fn page_hinted(addr: *const u8) -> bool {
    crate::heap::page_hinted(addr as u64)
}
