//! The page cache one clone host's clones of a group share: the group's
//! receiver ([`super::host_receiver`]) writes each pushed page into it once,
//! and every clone VMM of the group on the host installs the pages from it
//! (one UFFDIO_COPY per run, straight from the shared mapping: no receive,
//! no decryption per clone), or, with `SNOWFLOCK_MAP_HOST_CACHE=1`, maps it
//! as its guest RAM (see [`CacheView::map_private_at`]: no copy at all).
//!
//! Two memfds, both written only by the receiver and handed to the clones
//! read-only (a descriptor opened `O_RDONLY`, so a clone can neither map
//! them writable nor resize them):
//! - **pages**: the size of guest RAM, sparse (a page costs memory only once
//!   pushed), page `i` at byte `i * 4 KiB`;
//! - **control**: a header of counters, the presence bitmap (one bit per
//!   page, set after the page's bytes are written: the truth about what the
//!   cache holds) and the arrival ring (runs of pages in the order they
//!   came, a head counter published after each entry).
//!
//! A reader keeps its own tail in the ring. The ring is only a hint of
//! where to look: a reader that fell more than the ring's length behind (or
//! reads a torn entry) rescans the bitmap instead, and a page is only ever
//! installed when its bit is set, so no reader can install a page the
//! receiver has not finished writing. A page is written once and never
//! changed afterwards.
//!
//! A clone that maps the pages memfd and reads a page it does not hold
//! adds a page of zeros there (the kernel fills a hole of a shared memory
//! file on a read fault). Installed clones never do (a page is read only
//! once its bit is set, and a guest RAM mapped over the cache stays
//! registered with userfaultfd), and a clone VMM that did would gain
//! nothing it does not have already: every clone of the group holds the
//! token the group's pushes are sealed with.

use super::PAGE_SIZE;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};

const PAGE: u64 = PAGE_SIZE as u64;
const MAGIC: u64 = u64::from_le_bytes(*b"SFCACHE1");
/// Entries of the arrival ring (one run of up to 512 pages each): 128 KiB.
/// At 1 Gbit/s a run of 64 pushed pages takes 2 ms, so a clone that does
/// not look for 16,384 runs (over 30 s) rescans the bitmap instead.
pub const RING_ENTRIES: u64 = 16_384;
/// The header: one page of u64 words.
const HEADER_BYTES: u64 = PAGE;

/// The header's words.
#[derive(Clone, Copy, Debug)]
#[repr(usize)]
pub enum Word {
    Magic = 0,
    Pages = 1,
    /// Ring entries written so far.
    Head = 2,
    /// Datagrams the receiver read from its socket.
    Received = 3,
    /// Of those, datagrams that opened (the group's, new sequence number).
    Opened = 4,
    /// Datagrams dropped: forged, of another group, replayed.
    Forged = 5,
    /// Datagrams of pages the cache held already.
    Stale = 6,
    /// The group's datagrams that never came (sequence gaps).
    Lost = 7,
    /// The newest sequence number taken, plus one.
    Seen = 8,
    /// Bytes waiting in the receiver's socket at its last look.
    Backlog = 9,
    /// The receiver's process id.
    ReceiverPid = 10,
    /// Which client (its serial) reports the host's losses and backlog to
    /// the holder, so one host's loss is counted once, not once per clone.
    Reporter = 11,
    /// Clients connected now.
    Clients = 12,
}

fn bitmap_words(pages: u64) -> u64 {
    pages.div_ceil(64)
}

fn control_len(pages: u64) -> u64 {
    HEADER_BYTES + (bitmap_words(pages) + RING_ENTRIES) * 8
}

/// An entry of the ring: first page in the high 48 bits, count (1..=65535)
/// in the low 16.
fn entry(first: u64, count: u64) -> u64 {
    (first << 16) | count
}

/// A mapping of a whole memfd, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory: the cache's bytes are written
// by one thread of the receiver, everything else is atomics.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(fd: &OwnedFd, len: u64, writable: bool) -> io::Result<Mapping> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a new shared mapping of `len` bytes of `fd`, not aliasing
        // any Rust object; the kernel checks the descriptor's access mode.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len: len as usize,
        })
    }

    /// The `i`th u64 word (8-byte aligned: the mapping is page-aligned).
    fn word(&self, i: u64) -> &AtomicU64 {
        assert!((i + 1) * 8 <= self.len as u64, "word {i} past the mapping");
        // SAFETY: in bounds (checked), aligned, and only ever accessed
        // atomically by every process that maps it.
        unsafe { &*(self.ptr.add(i as usize * 8) as *const AtomicU64) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; no reference into it
        // outlives `self` (they all borrow it).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn memfd(name: &std::ffi::CStr, len: u64) -> io::Result<OwnedFd> {
    // SAFETY: memfd_create takes a valid C string and flags.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: plain calls on our own descriptor.
    let sealed = unsafe {
        libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) == 0
            && libc::fcntl(
                fd.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
            ) == 0
    };
    if !sealed {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// A read-only descriptor of the same memfd (what clients get).
fn read_only(fd: &OwnedFd) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}\0", fd.as_raw_fd());
    // SAFETY: a NUL-terminated path; open returns a new descriptor or -1.
    let ro = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if ro < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ro) })
}

fn size_of_fd(fd: &OwnedFd) -> io::Result<u64> {
    Ok(std::fs::File::from(fd.try_clone()?).metadata()?.len())
}

/// The receiver's side: writes pages and publishes them.
pub struct CacheWriter {
    /// Read-only descriptors of the two memfds, made at creation (a
    /// sandboxed receiver opens no files), sent to every client.
    pages_ro: OwnedFd,
    control_ro: OwnedFd,
    /// The pages memfd, written with pwrite (see [`CacheWriter::put`]).
    pages_file: std::fs::File,
    control: Mapping,
    pages: u64,
}

impl CacheWriter {
    /// An empty cache for a guest RAM of `mem_size` bytes (whole pages).
    pub fn create(mem_size: u64) -> io::Result<CacheWriter> {
        if mem_size == 0 || !mem_size.is_multiple_of(PAGE) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a page cache of {mem_size} bytes: must be whole pages"),
            ));
        }
        let pages = mem_size / PAGE;
        let pages_fd = memfd(c"snowflock-page-cache", mem_size)?;
        let control_fd = memfd(c"snowflock-page-cache-control", control_len(pages))?;
        let control = Mapping::new(&control_fd, control_len(pages), true)?;
        control.word(Word::Pages as u64).store(pages, Relaxed);
        control.word(Word::Magic as u64).store(MAGIC, Release);
        Ok(CacheWriter {
            pages_ro: read_only(&pages_fd)?,
            control_ro: read_only(&control_fd)?,
            pages_file: pages_fd.into(),
            control,
            pages,
        })
    }

    /// Read-only descriptors of the pages and the control area, for a
    /// client.
    pub fn client_fds(&self) -> (BorrowedFd<'_>, BorrowedFd<'_>) {
        use std::os::fd::AsFd;
        (self.pages_ro.as_fd(), self.control_ro.as_fd())
    }

    pub fn pages(&self) -> u64 {
        self.pages
    }

    pub fn has(&self, page: u64) -> bool {
        page < self.pages && bit(&self.control, page)
    }

    /// Writes page `page` (4 KiB of `bytes`) unless it is outside the RAM
    /// or there already; true if written. Not visible to readers before
    /// [`CacheWriter::publish`].
    ///
    /// Written with pwrite, not through a mapping: the page is locked while
    /// its bytes go in, so a clone whose guest RAM maps this memfd (see
    /// [`CacheView::map_private_at`]) and touches the page meanwhile waits
    /// for all 4 KiB instead of mapping a half-written page.
    pub fn put(&mut self, page: u64, bytes: &[u8]) -> io::Result<bool> {
        if page >= self.pages || bytes.len() != PAGE_SIZE || self.has(page) {
            return Ok(false);
        }
        std::os::unix::fs::FileExt::write_all_at(&self.pages_file, bytes, page * PAGE)?;
        let w = self.control.word(HEADER_BYTES / 8 + page / 64);
        w.fetch_or(1 << (page % 64), Release);
        Ok(true)
    }

    /// Appends the run `first..first + count` (pages just [`put`]) to the
    /// arrival ring.
    ///
    /// [`put`]: CacheWriter::put
    pub fn publish(&mut self, first: u64, count: u64) {
        debug_assert!(count > 0 && count <= u64::from(u16::MAX));
        let head = self.control.word(Word::Head as u64);
        let h = head.load(Relaxed);
        self.control
            .word(ring_base(self.pages) + h % RING_ENTRIES)
            .store(entry(first, count), Relaxed);
        head.store(h + 1, Release);
    }

    pub fn set(&self, w: Word, value: u64) {
        self.control.word(w as u64).store(value, Relaxed);
    }

    /// Publishes [`Word::Seen`] after the runs it covers: a clone that
    /// reads it ([`CacheView::seen`]) then finds those runs in the ring.
    pub fn set_seen(&self, value: u64) {
        self.control.word(Word::Seen as u64).store(value, Release);
    }

    pub fn get(&self, w: Word) -> u64 {
        self.control.word(w as u64).load(Relaxed)
    }
}

fn ring_base(pages: u64) -> u64 {
    HEADER_BYTES / 8 + bitmap_words(pages)
}

fn bit(control: &Mapping, page: u64) -> bool {
    control.word(HEADER_BYTES / 8 + page / 64).load(Acquire) & (1 << (page % 64)) != 0
}

/// What arrived since a reader's last look.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrivals {
    /// Runs `(first, count)`, in arrival order.
    Runs(Vec<(u64, u64)>),
    /// The reader fell behind the ring: look at the whole bitmap.
    Rescan,
}

/// A clone's read-only view of its host's cache.
pub struct CacheView {
    /// The pages memfd (read-only), for [`CacheView::map_private_at`].
    pages_fd: OwnedFd,
    data: Mapping,
    control: Mapping,
    pages: u64,
    tail: u64,
}

impl CacheView {
    /// Maps the cache of a guest RAM of `mem_size` bytes from the
    /// descriptors the receiver handed over; checks their sizes and the
    /// header, so a wrong descriptor is an error, not a bad read.
    pub fn map(pages_fd: OwnedFd, control_fd: OwnedFd, mem_size: u64) -> io::Result<CacheView> {
        let pages = mem_size / PAGE;
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        if size_of_fd(&pages_fd)? != mem_size || size_of_fd(&control_fd)? != control_len(pages) {
            return Err(bad(format!(
                "the host's page cache does not match a guest RAM of {mem_size} bytes"
            )));
        }
        let data = Mapping::new(&pages_fd, mem_size, false)?;
        let control = Mapping::new(&control_fd, control_len(pages), false)?;
        if control.word(Word::Magic as u64).load(Acquire) != MAGIC
            || control.word(Word::Pages as u64).load(Relaxed) != pages
        {
            return Err(bad("the host's page cache has a wrong header".into()));
        }
        // Pages that came before this clone attached are found by a first
        // rescan: start at the ring's beginning so it is due at once.
        Ok(CacheView {
            pages_fd,
            data,
            control,
            pages,
            tail: 0,
        })
    }

    pub fn has(&self, page: u64) -> bool {
        page < self.pages && bit(&self.control, page)
    }

    /// Maps the cache's pages over `[addr, addr + len)`, a clone's guest
    /// RAM of the cache's size, privately: a page the cache holds is read
    /// straight from it (shared by every clone of the host, no copy), a
    /// write makes the clone its own copy, and a page the cache lacks
    /// faults (the caller registers the range with userfaultfd after
    /// this, and must never leave it unregistered: an unregistered fault
    /// would put a page of zeros into the shared cache).
    ///
    /// # Safety
    /// `[addr, addr + len)` must be a mapping of the caller's that nothing
    /// references as Rust memory: it is replaced.
    pub unsafe fn map_private_at(&self, addr: u64, len: u64) -> io::Result<()> {
        if len != self.pages * PAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "guest RAM of {len} bytes over a page cache of {} bytes",
                    self.pages * PAGE
                ),
            ));
        }
        // SAFETY: MAP_FIXED replaces the caller's mapping at `addr` (the
        // caller's promise above); the descriptor is read-only, which a
        // private mapping allows even when writable.
        let ptr = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                self.pages_fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// How many pages from `first` on the cache holds, up to `max`.
    pub fn present_run(&self, first: u64, max: u64) -> u64 {
        (first..first.saturating_add(max).min(self.pages))
            .take_while(|&p| self.has(p))
            .count() as u64
    }

    /// The bytes of pages `first..first + count`, all of them present
    /// ([`CacheView::has`]) and so never written again.
    pub fn bytes(&self, first: u64, count: u64) -> &[u8] {
        assert!(first + count <= self.pages, "pages past the cache");
        // SAFETY: in bounds (checked above) of a read-only mapping that
        // lives as long as `self`; the receiver wrote these pages before
        // setting their bits and never writes them again.
        unsafe {
            std::slice::from_raw_parts(
                self.data.ptr.add((first * PAGE) as usize),
                (count * PAGE) as usize,
            )
        }
    }

    pub fn get(&self, w: Word) -> u64 {
        self.control.word(w as u64).load(Relaxed)
    }

    /// [`Word::Seen`]: the receiver has read every datagram of the group
    /// numbered below it (or lost it), and published their pages.
    pub fn seen(&self) -> u64 {
        self.control.word(Word::Seen as u64).load(Acquire)
    }

    /// The runs published since the last call.
    pub fn arrivals(&mut self) -> Arrivals {
        let head = self.control.word(Word::Head as u64).load(Acquire);
        if head == self.tail {
            return Arrivals::Runs(Vec::new());
        }
        if head < self.tail || head - self.tail > RING_ENTRIES || self.tail == 0 {
            self.tail = head;
            return Arrivals::Rescan;
        }
        let base = ring_base(self.pages);
        let runs: Vec<(u64, u64)> = (self.tail..head)
            .map(|i| self.control.word(base + i % RING_ENTRIES).load(Relaxed))
            .map(|e| (e >> 16, e & 0xffff))
            .collect();
        // Entries overwritten while being read (the writer lapped this
        // reader meanwhile) may be torn: then rescan.
        let now = self.control.word(Word::Head as u64).load(Acquire);
        let torn = now - self.tail > RING_ENTRIES;
        self.tail = head;
        let valid = runs
            .iter()
            .all(|&(first, count)| count > 0 && first + count <= self.pages);
        if torn || !valid {
            return Arrivals::Rescan;
        }
        Arrivals::Runs(runs)
    }

    /// The runs of pages the cache holds, up to `max_run` pages each (a
    /// rescan).
    pub fn held_runs(&self, max_run: u64) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        let mut p = 0;
        while p < self.pages {
            if p % 64 == 0 && self.control.word(HEADER_BYTES / 8 + p / 64).load(Acquire) == 0 {
                p += 64;
                continue;
            }
            let n = self.present_run(p, max_run);
            if n > 0 {
                runs.push((p, n));
                p += n;
            } else {
                p += 1;
            }
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::tests::AnonMap;

    fn page(v: u8) -> Vec<u8> {
        vec![v; PAGE_SIZE]
    }

    fn fds(w: &CacheWriter) -> (OwnedFd, OwnedFd) {
        let (p, c) = w.client_fds();
        (
            p.try_clone_to_owned().unwrap(),
            c.try_clone_to_owned().unwrap(),
        )
    }

    fn view(w: &CacheWriter, mem: u64) -> CacheView {
        let (p, c) = fds(w);
        CacheView::map(p, c, mem).unwrap()
    }

    /// A guest RAM mapped over the cache reads what the cache holds, keeps
    /// its own writes, and never changes the cache (nor another clone's
    /// RAM over it); a RAM of another size is refused.
    #[test]
    fn ram_over_the_cache_reads_it_and_writes_only_its_own_copy() {
        let mem = 64 * PAGE;
        let mut w = CacheWriter::create(mem).unwrap();
        assert!(w.put(3, &page(7)).unwrap());
        let v = view(&w, mem);
        let rams = [AnonMap::new(mem as usize), AnonMap::new(mem as usize)];
        let (a, b) = (rams[0].addr(), rams[1].addr());
        // SAFETY: the two mappings above, which nothing else refers to.
        unsafe {
            v.map_private_at(a, mem).unwrap();
            v.map_private_at(b, mem).unwrap();
            assert!(v.map_private_at(a, mem - PAGE).is_err());
        }
        let at = |base: u64, page: u64| (base + page * PAGE) as *mut u8;
        // SAFETY: reads and writes inside the two mappings.
        unsafe {
            assert_eq!(*at(a, 3), 7);
            *at(a, 3) = 9;
            assert_eq!(*at(a, 3), 9);
            assert_eq!(*at(b, 3), 7, "another RAM over the cache");
            // A page written after the mapping shows through where the RAM
            // has no copy of its own.
            assert!(w.put(4, &page(5)).unwrap());
            assert_eq!(*at(b, 4).add(PAGE_SIZE - 1), 5);
        }
        assert_eq!(v.bytes(3, 1)[0], 7, "the cache is unchanged");
    }

    #[test]
    fn pages_are_written_once_and_read_through_the_view() {
        let mem = 256 * PAGE;
        let mut w = CacheWriter::create(mem).unwrap();
        let mut v = view(&w, mem);
        assert_eq!(v.arrivals(), Arrivals::Runs(vec![]));
        assert!(w.put(10, &page(1)).unwrap() && w.put(11, &page(2)).unwrap());
        assert!(!w.put(10, &page(9)).unwrap(), "a page is written once");
        assert!(!w.put(256, &page(9)).unwrap(), "past the RAM");
        w.publish(10, 2);
        // A view's first look rescans (pages may predate it).
        assert_eq!(v.arrivals(), Arrivals::Rescan);
        assert_eq!(v.held_runs(512), vec![(10, 2)]);
        assert!(w.put(12, &page(3)).unwrap());
        w.publish(12, 1);
        assert_eq!(v.arrivals(), Arrivals::Runs(vec![(12, 1)]));
        assert_eq!(v.present_run(10, 8), 3);
        assert_eq!(v.bytes(10, 3)[0], 1);
        assert_eq!(v.bytes(10, 3)[PAGE_SIZE], 2);
        assert_eq!(v.bytes(12, 1)[PAGE_SIZE - 1], 3);
        assert!(!v.has(9) && !v.has(13) && !v.has(1 << 40));
        w.set(Word::Stale, 7);
        assert_eq!(v.get(Word::Stale), 7);
    }

    #[test]
    fn a_reader_that_falls_behind_the_ring_rescans() {
        let mem = 1024 * PAGE;
        let mut w = CacheWriter::create(mem).unwrap();
        let mut v = view(&w, mem);
        w.put(0, &page(1)).unwrap();
        w.publish(0, 1);
        assert_eq!(v.arrivals(), Arrivals::Rescan);
        for i in 0..RING_ENTRIES + 1 {
            w.publish(i % 1024, 1);
        }
        assert_eq!(v.arrivals(), Arrivals::Rescan);
        w.publish(0, 1);
        assert_eq!(v.arrivals(), Arrivals::Runs(vec![(0, 1)]));
    }

    /// A ring entry naming pages past the cache (or none) is never handed
    /// to a clone as a run: the reader rescans the bitmap instead, and
    /// takes the next good entry as usual.
    #[test]
    fn ring_entries_outside_the_cache_make_readers_rescan() {
        let mem = 256 * PAGE;
        let mut w = CacheWriter::create(mem).unwrap();
        let mut v = view(&w, mem);
        w.put(0, &page(1)).unwrap();
        w.publish(0, 1);
        assert_eq!(v.arrivals(), Arrivals::Rescan, "the first look");
        let raw = |w: &CacheWriter, first: u64, count: u64| {
            let head = w.control.word(Word::Head as u64);
            let h = head.load(Relaxed);
            w.control
                .word(ring_base(w.pages) + h % RING_ENTRIES)
                .store(entry(first, count), Relaxed);
            head.store(h + 1, Release);
        };
        for (first, count) in [(250, 10), (256, 1), ((1 << 48) - 1, 0xffff), (5, 0)] {
            raw(&w, first, count);
            assert_eq!(v.arrivals(), Arrivals::Rescan, "{first}+{count}");
            assert_eq!(v.held_runs(512), vec![(0, 1)]);
        }
        assert!(w.put(1, &page(2)).unwrap());
        w.publish(1, 1);
        assert_eq!(v.arrivals(), Arrivals::Runs(vec![(1, 1)]));
    }

    #[test]
    fn clients_cannot_write_or_resize_the_cache() {
        let mem = 16 * PAGE;
        let w = CacheWriter::create(mem).unwrap();
        let (p, c) = fds(&w);
        for fd in [&p, &c] {
            assert!(Mapping::new(fd, PAGE, true).is_err(), "mapped writable");
            // SAFETY: a plain call on our own descriptor.
            assert_ne!(unsafe { libc::ftruncate(fd.as_raw_fd(), 0) }, 0);
        }
        // A descriptor of the wrong size (another group's RAM) is refused.
        let (p, c) = fds(&w);
        assert!(CacheView::map(p, c, 2 * mem).is_err());
    }
}
