//! A recorded working set (the Kaleidoscope/REAP idea): the pages a clone
//! family asked its memory holder for, in the order it first asked, kept
//! with the parent VM and pushed to the clones of the next families cloned
//! from it before they fault.
//!
//! The record lives in a bounded `MAP_SHARED` anonymous region the parent
//! VM maps once, before it forks its first memory holder: every holder is
//! a fork of the parent, so each one sees the same region (a clone's VM
//! starts without one: its own clones record their own). The holder of the
//! first family records into it; holders of later families read it and
//! push the pages, in order, to their group's multicast as soon as a clone
//! asks for its first page. Only page *indices* are shared: the content
//! always comes from the pushing holder's own frozen snapshot, so a stale
//! or corrupt record costs at most useless pushes and ordinary faults,
//! never wrong memory (every index is checked against the served region).
//!
//! A record that stops matching is dropped: when a clone of a pushed family
//! asks for more pages outside the set than the set holds, the set covers
//! under half of what that clone touches, and the next family records
//! afresh ([`WorkingSet::drops`] counts it).

use std::sync::atomic::{AtomicU32, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};

/// Pages a record holds at most: 256 MiB of guest memory pushed, 256 KiB
/// of indices shared. A family touching more is served by faults past it.
pub const MAX_PAGES: u32 = 65_536;
/// Bytes pushed per record at most (the same bound, in bytes).
pub const MAX_BYTES: u64 = MAX_PAGES as u64 * super::PAGE_SIZE as u64;
/// Pages outside the set a pushed clone may ask for, beyond the set's own
/// size, before the set counts as stale (a floor, so a tiny set is not
/// dropped over a handful of faults).
const STALE_SLACK: u64 = 256;

/// The header at the start of the shared region (then `cap` page indices).
#[repr(C)]
struct Header {
    /// Pid of the holder recording (0: none yet).
    owner: AtomicU32,
    /// Indices recorded so far (published with `Release`).
    count: AtomicU32,
    /// Set when a pushed family found the record stale: the next holder
    /// records afresh.
    stale: AtomicU32,
    /// Records dropped as stale.
    drops: AtomicU32,
}

/// The shared record (see the module comment).
pub struct WorkingSet {
    header: *const Header,
    entries: *const AtomicU32,
    cap: u32,
    /// Bytes mapped.
    len: usize,
}

// SAFETY: every field of the shared region is an atomic; the pointers are
// to a mapping that lives as long as this value.
unsafe impl Send for WorkingSet {}
// SAFETY: as above: shared access only through atomics.
unsafe impl Sync for WorkingSet {}

/// What a memory holder does with the record.
#[derive(Debug, PartialEq, Eq)]
pub enum Role {
    /// Nothing usable recorded: this holder records its family's requests.
    Record,
    /// Push these pages, in this order (already checked and filtered).
    Push(Vec<u32>),
}

impl WorkingSet {
    /// A new, empty record of at most `cap` pages (clamped to
    /// [`MAX_PAGES`]), in a shared mapping that forked children inherit.
    pub fn new(cap: u32) -> std::io::Result<WorkingSet> {
        let cap = cap.clamp(1, MAX_PAGES);
        let len = std::mem::size_of::<Header>() + cap as usize * 4;
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let header = p as *const Header;
        // SAFETY: the mapping is page-aligned and `len` covers the header
        // and `cap` u32s right after it (Header is 4 u32s, so aligned).
        let entries = unsafe { (p as *const u8).add(std::mem::size_of::<Header>()) } as *const _;
        Ok(WorkingSet {
            header,
            entries,
            cap,
            len,
        })
    }

    fn header(&self) -> &Header {
        // SAFETY: points into this value's live mapping, which starts
        // zeroed: a valid Header of atomics.
        unsafe { &*self.header }
    }

    fn entry(&self, i: u32) -> &AtomicU32 {
        debug_assert!(i < self.cap);
        // SAFETY: i < cap, inside the mapping; zeroed memory is a valid
        // AtomicU32.
        unsafe { &*self.entries.add(i as usize) }
    }

    /// Pages recorded so far.
    pub fn len(&self) -> u32 {
        self.header().count.load(Acquire).min(self.cap)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records dropped as stale.
    pub fn drops(&self) -> u32 {
        self.header().drops.load(Relaxed)
    }

    /// Decides a holder's role at its start: record if nothing usable is
    /// recorded (taking the record over as `pid`), else push what is
    /// recorded: indices inside `region_pages`, each once, none `free`.
    pub fn role(&self, pid: u32, region_pages: u64, free: impl Fn(u64) -> bool) -> Role {
        let h = self.header();
        if h.stale.swap(0, Relaxed) != 0 || self.is_empty() {
            h.owner.store(pid, Relaxed);
            h.count.store(0, Release);
            return Role::Record;
        }
        let mut seen = super::bitmap::PageBitmap::new(region_pages);
        let mut pages = Vec::new();
        for i in 0..self.len() {
            let p = u64::from(self.entry(i).load(Relaxed));
            if p < region_pages && !seen.get(p) && !free(p) {
                seen.set(p);
                pages.push(p as u32);
            }
        }
        Role::Push(pages)
    }

    /// Appends `page` for the recording holder `pid`; false once full or
    /// once another holder took the record over.
    pub fn record(&self, pid: u32, page: u32) -> bool {
        let h = self.header();
        if h.owner.load(Relaxed) != pid {
            return false;
        }
        let i = h.count.load(Relaxed);
        if i >= self.cap {
            return false;
        }
        self.entry(i).store(page, Relaxed);
        h.count.store(i + 1, Release);
        true
    }

    /// Marks the record stale (the next holder records afresh); counted.
    pub fn drop_stale(&self) {
        let h = self.header();
        if h.stale.swap(1, Relaxed) == 0 {
            h.drops.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for WorkingSet {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of `len` bytes; no reference
        // into it outlives `self`. Other processes keep their own mapping.
        unsafe { libc::munmap(self.header as *mut libc::c_void, self.len) };
    }
}

/// Whether a pushed clone's requests show the set no longer matches: it
/// asked for more pages outside the set than the set holds (plus a floor).
pub fn is_stale(set_len: u64, outside: u64) -> bool {
    outside > set_len.saturating_add(STALE_SLACK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_bounded_and_owned_by_one_holder() {
        let ws = WorkingSet::new(4).unwrap();
        assert_eq!(ws.role(7, 100, |_| false), Role::Record);
        for p in [5, 9, 5, 200] {
            assert!(ws.record(7, p));
        }
        assert!(!ws.record(7, 1), "full at 4 pages");
        assert!(!ws.record(8, 1), "not the recording holder");
        assert_eq!(ws.len(), 4);
        // Out-of-range (200 >= 100) and repeated (5) indices never reach a
        // push, nor do hinted-free pages (9).
        assert_eq!(ws.role(8, 100, |p| p == 9), Role::Push(vec![5]));
    }

    #[test]
    fn clamps_capacity_and_survives_garbage() {
        let ws = WorkingSet::new(u32::MAX).unwrap();
        assert_eq!(ws.cap, MAX_PAGES);
        assert_eq!(MAX_BYTES, 256 << 20);
        assert_eq!(ws.role(1, 10, |_| false), Role::Record);
        for p in [u32::MAX, 10, 11, 0] {
            ws.record(1, p);
        }
        assert_eq!(ws.role(2, 10, |_| false), Role::Push(vec![0]));
    }

    #[test]
    fn a_stale_record_is_dropped_once_and_rerecorded() {
        let ws = WorkingSet::new(16).unwrap();
        assert_eq!(ws.role(1, 64, |_| false), Role::Record);
        ws.record(1, 3);
        assert!(!is_stale(1, 257));
        assert!(is_stale(1, 258));
        ws.drop_stale();
        ws.drop_stale();
        assert_eq!(ws.drops(), 1);
        assert_eq!(ws.role(2, 64, |_| false), Role::Record, "stale: afresh");
        assert!(!ws.record(1, 4), "the old recorder lost it");
        assert!(ws.record(2, 4));
        assert_eq!(ws.role(3, 64, |_| false), Role::Push(vec![4]));
    }

    #[test]
    fn forked_children_share_the_record() {
        let ws = WorkingSet::new(8).unwrap();
        assert_eq!(ws.role(1, 64, |_| false), Role::Record);
        // SAFETY: the child only touches the shared mapping and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = ws.role(2, 64, |_| false) == Role::Record && ws.record(2, 42);
            // SAFETY: _exit in the forked child, no destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(status, 0);
        assert_eq!(ws.role(3, 64, |_| false), Role::Push(vec![42]));
    }
}
