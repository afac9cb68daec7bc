//! Tests of remote memory over loopback: a page server in this process, a
//! fetcher on a fresh anonymous mapping, readers on their own threads.

mod auth;
mod failure;
mod fetch;
mod hints;
mod lockstep;
mod serve;

use super::{GroupToken, PageServer, ServedRegion, ServerHandle, PAGE_SIZE};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

pub const REGION: usize = 64 << 20;
pub const PAGES: u64 = (REGION / PAGE_SIZE) as u64;
pub const TOKEN: GroupToken = *b"clone-group-0001";

/// The test region's zero pages: every 7th page and a run of 100.
pub fn zero_page(page: u64) -> bool {
    page % 7 == 3 || (1000..1100).contains(&page)
}

/// Never 0 in a data page, so a data page can never pass for a zero page.
pub fn pattern(page: u64, at: usize) -> u8 {
    if zero_page(page) {
        0
    } else {
        ((page * 131 + at as u64 * 7) % 255 + 1) as u8
    }
}

pub fn pattern_region(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    for (page, chunk) in v.chunks_mut(PAGE_SIZE).enumerate() {
        if !zero_page(page as u64) {
            for (at, b) in chunk.iter_mut().enumerate() {
                *b = pattern(page as u64, at);
            }
        }
    }
    v
}

/// A private anonymous mapping, like a clone's empty guest RAM.
pub struct AnonMap {
    ptr: *mut u8,
    len: usize,
}

impl AnonMap {
    pub fn new(len: usize) -> AnonMap {
        // SAFETY: a fresh anonymous mapping at an address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap {len}");
        AnonMap { ptr: p.cast(), len }
    }

    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn view(&self) -> View {
        View {
            base: self.ptr as usize,
            len: self.len,
        }
    }

    pub fn read(&self, at: usize) -> u8 {
        self.view().read(at)
    }
}

impl Drop for AnonMap {
    fn drop(&mut self) {
        // SAFETY: our own mapping; the tests join every reader first.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A handle for reader threads (addresses only, so it is Send).
#[derive(Clone, Copy)]
pub struct View {
    base: usize,
    len: usize,
}

impl View {
    pub fn read(&self, at: usize) -> u8 {
        assert!(at < self.len);
        // SAFETY: inside the mapping, which outlives the readers; a volatile
        // read so every touch really reaches memory (and faults).
        unsafe { std::ptr::read_volatile((self.base + at) as *const u8) }
    }

    pub fn page(&self, page: u64) -> Vec<u8> {
        let at = page as usize * PAGE_SIZE;
        assert!(at + PAGE_SIZE <= self.len);
        let mut out = vec![0u8; PAGE_SIZE];
        // SAFETY: one whole page inside the mapping (see `read`); reading it
        // faults it in first if needed.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self.base + at) as *const u8,
                out.as_mut_ptr(),
                PAGE_SIZE,
            )
        };
        out
    }

    /// Whether `page` holds the test pattern.
    pub fn has_pattern(&self, page: u64) -> bool {
        self.page(page)
            .iter()
            .enumerate()
            .all(|(at, &b)| b == pattern(page, at))
    }
}

/// A page server on a loopback port, serving memory it owns.
pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    thread: Option<JoinHandle<std::io::Result<()>>>,
    _data: Box<[u8]>,
}

impl TestServer {
    pub fn start(data: Vec<u8>) -> TestServer {
        Self::start_with(data, |s| s)
    }

    pub fn start_with(data: Vec<u8>, tune: impl FnOnce(PageServer) -> PageServer) -> TestServer {
        let data = data.into_boxed_slice();
        // SAFETY: the bytes are owned by the TestServer, never written
        // again, and freed only after `kill` has joined the serving thread.
        let region = unsafe { ServedRegion::new(data.as_ptr(), data.len()) };
        let (server, addr) = PageServer::bind("127.0.0.1:0", region, TOKEN).unwrap();
        let server = tune(server);
        let handle = server.handle();
        let thread = std::thread::spawn(move || server.serve());
        TestServer {
            addr,
            handle,
            thread: Some(thread),
            _data: data,
        }
    }

    /// Stops serving, closing every connection, and waits for the server.
    pub fn kill(&mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `f` on its own thread and fails the test if it takes longer than
/// `limit`: a hang here is the bug under test, not a reason to wait.
pub fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("still blocked after {limit:?}"),
    }
}

#[test]
fn handles_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<crate::remote::RemoteMemory>();
    send_sync::<PageServer>();
    send_sync::<ServerHandle>();
    send_sync::<crate::remote::RemoteError>();
}

/// Waits (up to 5 s) for the server's counters to satisfy `ok`: a server
/// thread counts a response after sending it, so its counters may trail
/// what the client already has.
pub fn server_stats_once(
    handle: &ServerHandle,
    ok: impl Fn(&super::ServerStats) -> bool,
) -> super::ServerStats {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = handle.stats();
        if ok(&s) || std::time::Instant::now() > until {
            return s;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Deterministic pseudo-random numbers for access patterns.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
