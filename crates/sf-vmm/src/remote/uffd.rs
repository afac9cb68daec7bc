//! A small userfaultfd wrapper over `libc`: open, API handshake, register a
//! range in MISSING mode, read fault events, and resolve them with COPY,
//! ZEROPAGE, MOVE (a whole huge page, where the kernel has it) or WAKE.
//!
//! Written by hand rather than with the `userfaultfd` crate because that one
//! runs bindgen at build time (libclang), which a fresh machine lacks. The
//! kernel ABI used here is small and frozen: the struct layouts and ioctl
//! numbers below are those of `<linux/userfaultfd.h>` on x86-64, and a test
//! checks the numbers against the `_IOC` encoding.
//!
//! Every ioctl takes addresses, never Rust references, into the registered
//! range: the kernel validates them against its own view of the mappings,
//! so a wrong address is an error, not memory unsafety in this process.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::PAGE_SIZE;

const UFFD_API: u64 = 0xAA;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1;

const _UFFDIO_REGISTER: u64 = 0x00;
const _UFFDIO_UNREGISTER: u64 = 0x01;
const _UFFDIO_WAKE: u64 = 0x02;
const _UFFDIO_COPY: u64 = 0x03;
const _UFFDIO_ZEROPAGE: u64 = 0x04;
const _UFFDIO_MOVE: u64 = 0x05;
/// Linux 6.8: UFFDIO_MOVE, asked for at the handshake.
const UFFD_FEATURE_MOVE: u64 = 1 << 16;

/// `_IOC(dir, 0xAA, nr, size)` as in `<asm-generic/ioctl.h>`.
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const UFFDIO_API: u64 = ioc(IOC_READ | IOC_WRITE, 0x3F, size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = ioc(
    IOC_READ | IOC_WRITE,
    _UFFDIO_REGISTER,
    size_of::<UffdioRegister>(),
);
const UFFDIO_UNREGISTER: u64 = ioc(IOC_READ, _UFFDIO_UNREGISTER, size_of::<UffdioRange>());
const UFFDIO_WAKE: u64 = ioc(IOC_READ, _UFFDIO_WAKE, size_of::<UffdioRange>());
const UFFDIO_COPY: u64 = ioc(IOC_READ | IOC_WRITE, _UFFDIO_COPY, size_of::<UffdioCopy>());
const UFFDIO_ZEROPAGE: u64 = ioc(
    IOC_READ | IOC_WRITE,
    _UFFDIO_ZEROPAGE,
    size_of::<UffdioZeropage>(),
);
const UFFDIO_MOVE: u64 = ioc(IOC_READ | IOC_WRITE, _UFFDIO_MOVE, size_of::<UffdioMove>());
/// `/dev/userfaultfd`'s ioctl that hands out a new userfaultfd.
const USERFAULTFD_IOC_NEW: u64 = 0xAA00;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioMove {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    moved: i64,
}

/// `sizeof(struct uffd_msg)`; read as bytes and parsed, so no union type.
const MSG_LEN: usize = 32;

/// One event read from the userfaultfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A thread touched a missing page in a registered range (`address` is
    /// page-aligned) and sleeps until the page is installed or woken.
    PageFault { address: u64, write: bool },
    /// An event this wrapper did not ask for (none are enabled).
    Other(u8),
}

/// What a COPY or ZEROPAGE of a range did: every page of the range is
/// present afterwards, either installed now or found there already.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filled {
    pub installed: u64,
    pub already_present: u64,
}

/// An open userfaultfd after the API handshake.
#[derive(Debug)]
pub struct Userfaultfd {
    fd: OwnedFd,
    /// The kernel granted UFFD_FEATURE_MOVE.
    can_move: bool,
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Userfaultfd {
    /// Opens a userfaultfd (close-on-exec, non-blocking) and does the API
    /// handshake. Faults raised inside the kernel on behalf of this process
    /// are handled too (no `UFFD_USER_MODE_ONLY`): KVM touches guest RAM
    /// from kernel mode, and those faults are the ones that matter.
    pub fn new() -> io::Result<Userfaultfd> {
        // A kernel without UFFDIO_MOVE refuses the feature (EINVAL) and
        // the fd is spent: a second one is opened without it.
        match Self::with_features(UFFD_FEATURE_MOVE) {
            Ok(uffd) => Ok(uffd),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Self::with_features(0),
            Err(e) => Err(e),
        }
    }

    fn with_features(features: u64) -> io::Result<Userfaultfd> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: the syscall takes only flags and returns a new fd or -1.
        let rc = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        let raw = if rc >= 0 {
            rc as RawFd
        } else {
            let err = io::Error::last_os_error();
            // Where the sysctl forbids the syscall to this user, access to
            // /dev/userfaultfd may still grant it.
            if err.raw_os_error() != Some(libc::EPERM) {
                return Err(err);
            }
            Self::open_dev(flags).map_err(|_| err)?
        };
        // SAFETY: `raw` is a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut uffd = Userfaultfd {
            fd,
            can_move: false,
        };
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ..UffdioApi::default()
        };
        // SAFETY: UFFDIO_API reads and writes one `uffdio_api`, which `api` is.
        check(unsafe { libc::ioctl(uffd.raw(), UFFDIO_API as _, &mut api) })?;
        let needed = (1 << _UFFDIO_REGISTER) | (1 << _UFFDIO_UNREGISTER);
        if api.ioctls & needed != needed {
            return Err(io::Error::other(
                "userfaultfd lacks REGISTER/UNREGISTER after the API handshake",
            ));
        }
        uffd.can_move = api.features & UFFD_FEATURE_MOVE != 0;
        Ok(uffd)
    }

    fn open_dev(flags: libc::c_int) -> io::Result<RawFd> {
        let dev = std::fs::File::open("/dev/userfaultfd")?;
        // SAFETY: USERFAULTFD_IOC_NEW takes the flags by value and returns a
        // new fd or -1; `dev` stays open for the call.
        check(unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) })
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Registers `[start, start + len)` (page-aligned) in MISSING mode: from
    /// now on a touch of a missing page there raises an [`Event::PageFault`].
    pub fn register_missing(&self, start: u64, len: u64) -> io::Result<()> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes one `uffdio_register`.
        check(unsafe { libc::ioctl(self.raw(), UFFDIO_REGISTER as _, &mut reg) })?;
        let needed = (1 << _UFFDIO_WAKE) | (1 << _UFFDIO_COPY) | (1 << _UFFDIO_ZEROPAGE);
        if reg.ioctls & needed != needed {
            let _ = self.unregister(start, len);
            return Err(io::Error::other(
                "this mapping does not support UFFDIO_COPY/ZEROPAGE/WAKE",
            ));
        }
        Ok(())
    }

    /// Ends the registration; the kernel wakes every thread still waiting
    /// for a page there, and their retried faults become ordinary ones.
    pub fn unregister(&self, start: u64, len: u64) -> io::Result<()> {
        let mut range = UffdioRange { start, len };
        // SAFETY: UFFDIO_UNREGISTER reads one `uffdio_range`.
        check(unsafe { libc::ioctl(self.raw(), UFFDIO_UNREGISTER as _, &mut range) })?;
        Ok(())
    }

    /// Waits up to `timeout` (`None`: forever) for an event to be readable.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        let mut p = libc::pollfd {
            fd: self.raw(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd for the duration of the call.
            match check(unsafe { libc::poll(&mut p, 1, ms) }) {
                Ok(n) => return Ok(n > 0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the next event without blocking; `None` when there is none.
    pub fn read_event(&self) -> io::Result<Option<Event>> {
        let mut msg = [0u8; MSG_LEN];
        loop {
            // SAFETY: reads at most MSG_LEN bytes into `msg`.
            let n = unsafe { libc::read(self.raw(), msg.as_mut_ptr().cast(), MSG_LEN) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return Ok(None),
                    _ => return Err(e),
                }
            }
            if n as usize != MSG_LEN {
                return Err(io::Error::other(format!(
                    "short userfaultfd read: {n} bytes"
                )));
            }
            break;
        }
        let u64_at = |at: usize| u64::from_ne_bytes(msg[at..at + 8].try_into().expect("8"));
        Ok(Some(match msg[0] {
            UFFD_EVENT_PAGEFAULT => Event::PageFault {
                address: u64_at(16) & !(PAGE_SIZE as u64 - 1),
                write: u64_at(8) & UFFD_PAGEFAULT_FLAG_WRITE != 0,
            },
            other => Event::Other(other),
        }))
    }

    /// Waits up to `timeout` for one event and reads it.
    pub fn next_event(&self, timeout: Option<Duration>) -> io::Result<Option<Event>> {
        match self.wait(timeout)? {
            true => self.read_event(),
            false => Ok(None),
        }
    }

    /// Copies `src` (whole pages) into the missing pages from `dst` on and
    /// wakes the threads waiting for them. Pages found present are kept and
    /// counted (a racing fill or an earlier touch got there first).
    pub fn copy(&self, dst: u64, src: &[u8]) -> io::Result<Filled> {
        debug_assert!(src.len().is_multiple_of(PAGE_SIZE));
        self.fill(dst, src.len() as u64, |at, len| {
            let mut c = UffdioCopy {
                dst: dst + at,
                src: src[at as usize..].as_ptr() as u64,
                len,
                mode: 0,
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY reads and writes one `uffdio_copy`; the
            // kernel reads `len` bytes from `src[at..]`, which are in bounds
            // (`fill` keeps `at + len <= src.len()`) and live for the call.
            let rc = unsafe { libc::ioctl(self.raw(), UFFDIO_COPY as _, &mut c) };
            (rc, c.copy)
        })
    }

    /// Maps the shared zero page at the missing pages of `[dst, dst + len)`
    /// and wakes their waiters. (A later write to such a page takes one
    /// more, ordinary, copy-on-write fault.)
    pub fn zero(&self, dst: u64, len: u64) -> io::Result<Filled> {
        self.fill(dst, len, |at, len| {
            let mut z = UffdioZeropage {
                range: UffdioRange {
                    start: dst + at,
                    len,
                },
                mode: 0,
                zeropage: 0,
            };
            // SAFETY: UFFDIO_ZEROPAGE reads and writes one `uffdio_zeropage`.
            let rc = unsafe { libc::ioctl(self.raw(), UFFDIO_ZEROPAGE as _, &mut z) };
            (rc, z.zeropage)
        })
    }

    /// Drives COPY/ZEROPAGE over a range until every page is present. The
    /// kernel stops at the first page already there (EEXIST, nothing done)
    /// or part way when the address space is changing (EAGAIN with the
    /// bytes done so far); both are progress, not errors.
    fn fill(
        &self,
        dst: u64,
        len: u64,
        mut op: impl FnMut(u64, u64) -> (libc::c_int, i64),
    ) -> io::Result<Filled> {
        let page = PAGE_SIZE as u64;
        let mut filled = Filled::default();
        let mut at = 0;
        let mut stalls = 0;
        while at < len {
            let (rc, done) = op(at, len - at);
            if rc == 0 {
                filled.installed += (len - at) / page;
                break;
            }
            let err = io::Error::last_os_error();
            if done > 0 {
                filled.installed += done as u64 / page;
                at += done as u64;
                stalls = 0;
                continue;
            }
            match err.raw_os_error() {
                Some(libc::EEXIST) => {
                    filled.already_present += 1;
                    at += page;
                    // A thread may have been woken for this page by the fill
                    // that put it there, or may wait on it for a fault event
                    // read earlier: waking is cheap and never wrong.
                    self.wake(dst + at - page, page)?;
                }
                Some(libc::EAGAIN) | Some(libc::EINTR) if stalls < 1000 => {
                    stalls += 1;
                    std::thread::yield_now();
                }
                _ => return Err(err),
            }
        }
        Ok(filled)
    }

    /// Whether [`Userfaultfd::move_pages`] is available (Linux 6.8).
    pub fn can_move(&self) -> bool {
        self.can_move
    }

    /// Moves the pages of `[src, src + len)` (this process's own private
    /// anonymous memory, outside the registered range) to the missing
    /// pages at `dst` and wakes their waiters; `src` reads as missing
    /// afterwards. An aligned 2 MiB range backed by a huge page moves as
    /// that huge page. All or nothing here: EEXIST (a page already at
    /// `dst`) and any partial move are errors; what did not move stays at
    /// `src` and the caller installs it some other way.
    pub fn move_pages(&self, dst: u64, src: u64, len: u64) -> io::Result<()> {
        let mut m = UffdioMove {
            dst,
            src,
            len,
            ..UffdioMove::default()
        };
        // SAFETY: UFFDIO_MOVE reads and writes one `uffdio_move`; the
        // kernel checks both ranges against this process's mappings and
        // moves pages between them without touching any Rust object.
        let rc = unsafe { libc::ioctl(self.raw(), UFFDIO_MOVE as _, &mut m) };
        if rc == 0 && m.moved == len as i64 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if m.moved > 0 {
            return Err(io::Error::other(format!(
                "UFFDIO_MOVE moved {} of {len} bytes: {err}",
                m.moved
            )));
        }
        Err(err)
    }

    /// Wakes threads waiting for pages in `[start, start + len)` without
    /// installing anything (they retry their access).
    pub fn wake(&self, start: u64, len: u64) -> io::Result<()> {
        let mut range = UffdioRange { start, len };
        // SAFETY: UFFDIO_WAKE reads one `uffdio_range`.
        check(unsafe { libc::ioctl(self.raw(), UFFDIO_WAKE as _, &mut range) })?;
        Ok(())
    }
}

impl AsRawFd for Userfaultfd {
    fn as_raw_fd(&self) -> RawFd {
        self.raw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::tests::AnonMap;

    #[test]
    fn abi_matches_the_kernel_headers() {
        // Values of the C macros on x86-64 (from <linux/userfaultfd.h>).
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_aa01);
        assert_eq!(UFFDIO_WAKE, 0x8010_aa02);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE, 0xc020_aa04);
        assert_eq!(UFFDIO_MOVE, 0xc028_aa05);
        assert_eq!(std::mem::offset_of!(UffdioCopy, copy), 32);
        assert_eq!(std::mem::offset_of!(UffdioZeropage, zeropage), 24);
    }

    #[test]
    fn faults_are_resolved_by_copy_and_zero() {
        let map = AnonMap::new(8 * PAGE_SIZE);
        let base = map.addr();
        let uffd = Userfaultfd::new().unwrap();
        uffd.register_missing(base, map.len() as u64).unwrap();
        assert_eq!(
            uffd.next_event(Some(Duration::from_millis(10))).unwrap(),
            None
        );

        let reader = {
            let map = map.view();
            std::thread::spawn(move || (map.read(5 * PAGE_SIZE + 9), map.read(PAGE_SIZE)))
        };
        let mut src = vec![0u8; 2 * PAGE_SIZE];
        src[9] = 0xab;
        let ev = uffd.next_event(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(
            ev,
            Some(Event::PageFault {
                address: base + 5 * PAGE_SIZE as u64,
                write: false
            })
        );
        let f = uffd.copy(base + 5 * PAGE_SIZE as u64, &src).unwrap();
        assert_eq!(f.installed, 2);
        let ev = uffd.next_event(Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(ev, Some(Event::PageFault { address, .. }) if address == base + 4096));
        // Pages 5 and 6 are there already; pages 0..=4 are filled.
        let f = uffd.zero(base, 7 * PAGE_SIZE as u64).unwrap();
        assert_eq!(
            f,
            Filled {
                installed: 5,
                already_present: 2
            }
        );
        assert_eq!(reader.join().unwrap(), (0xab, 0));
        // Copying over present pages is fine and changes nothing.
        let f = uffd
            .copy(base + 5 * PAGE_SIZE as u64, &[7u8; PAGE_SIZE])
            .unwrap();
        assert_eq!(f.already_present, 1);
        assert_eq!(map.read(5 * PAGE_SIZE + 9), 0xab);
        uffd.unregister(base, map.len() as u64).unwrap();
        assert_eq!(map.read(7 * PAGE_SIZE), 0);
    }
}
