//! Fetching: contents, zero pages, readahead, prefetch, drop.

use super::*;
use crate::remote::{FetchConfig, RefuseReason, RemoteError, RemoteMemory};
use std::time::Instant;

const LIMIT: Duration = Duration::from_secs(60);

fn attach(server: &TestServer, map: &AnonMap, cfg: FetchConfig) -> RemoteMemory {
    RemoteMemory::attach(map.ptr(), map.len(), server.addr, TOKEN, cfg).unwrap()
}

#[test]
fn a_scan_sees_the_pattern_in_few_requests() {
    let server = TestServer::start(pattern_region(REGION));
    let map = AnonMap::new(REGION);
    let mem = attach(&server, &map, FetchConfig::default());
    let view = map.view();
    let t = Instant::now();
    let bad = bounded(LIMIT, move || {
        (0..PAGES).filter(|&p| !view.has_pattern(p)).count()
    });
    let took = t.elapsed();
    assert_eq!(bad, 0, "pages without the pattern");

    let s = mem.stats();
    eprintln!("scan of {PAGES} pages in {took:?}: {s:?}");
    assert_eq!(s.pages_fetched, PAGES);
    assert_eq!(s.present_pages, PAGES);
    let zeros = (0..PAGES).filter(|&p| zero_page(p)).count() as u64;
    assert_eq!(s.zero_pages, zeros);
    // A scan grows the window to 64 pages: ~PAGES/64 requests, far fewer
    // than one per page, and far fewer faults too.
    assert!(s.requests <= PAGES / 8, "{} requests", s.requests);
    assert!(s.faults <= PAGES / 8, "{} faults", s.faults);
    assert!(s.fault_latency_p50_us > 0 && s.fault_latency_p99_us >= s.fault_latency_p50_us);
    let server_stats = server_stats_once(&server.handle, |x| x.pages_sent + x.zero_pages == PAGES);
    assert_eq!(server_stats.pages_sent, PAGES - zeros);
    assert_eq!(server_stats.zero_pages, zeros);
    assert_eq!(server_stats.requests, s.requests);
}

#[test]
fn zero_pages_arrive_as_zeros_without_data() {
    let server = TestServer::start(pattern_region(REGION));
    let map = AnonMap::new(REGION);
    // One page per request, so the bytes on the wire are exact.
    let cfg = FetchConfig {
        max_window_pages: 1,
        ..FetchConfig::default()
    };
    let mem = attach(&server, &map, cfg);
    let view = map.view();
    // The all-zero run 1000..1100: a 16-byte header and a 1-byte page map
    // each, no data.
    assert!(bounded(LIMIT, move || (1000..1100)
        .all(|p| view.page(p).iter().all(|&b| b == 0))));
    let s = mem.stats();
    assert_eq!((s.pages_fetched, s.zero_pages, s.requests), (100, 100, 100));
    assert_eq!(s.bytes_received, 100 * 17);
    // Three data pages: their 4 KiB each on top.
    assert!(bounded(LIMIT, move || [5000, 9000, 13000]
        .iter()
        .all(|&p| view.has_pattern(p))));
    let s = mem.stats();
    assert_eq!((s.pages_fetched, s.zero_pages), (103, 100));
    assert_eq!(s.bytes_received, 103 * 17 + 3 * PAGE_SIZE as u64);
    let sent = server_stats_once(&server.handle, |x| x.bytes_sent == s.bytes_received);
    assert_eq!(sent.bytes_sent, s.bytes_received);
}

#[test]
fn random_touches_fetch_about_the_pages_touched() {
    let server = TestServer::start(pattern_region(REGION));
    let map = AnonMap::new(REGION);
    let mem = attach(&server, &map, FetchConfig::default());
    let mut rng = XorShift(0x5eed_1234_abcd_0001);
    let mut pages: Vec<u64> = (0..2000).map(|_| rng.next() % PAGES).collect();
    pages.sort_unstable();
    pages.dedup();
    // Touch in random order, not sorted.
    let mut order = pages.clone();
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let touched = order.len() as u64;
    let view = map.view();
    let t = Instant::now();
    let ok = bounded(LIMIT, move || order.iter().all(|&p| view.has_pattern(p)));
    let took = t.elapsed();
    assert!(ok);
    let s = mem.stats();
    eprintln!("{touched} random touches in {took:?}: {s:?}");
    assert!(s.pages_fetched >= touched);
    assert!(
        s.pages_fetched * 10 <= touched * 11 + 160,
        "{} pages fetched for {touched} touched",
        s.pages_fetched
    );
}

#[test]
fn prefetch_all_makes_the_whole_region_present() {
    let server = TestServer::start(pattern_region(REGION));
    let map = AnonMap::new(REGION);
    let mem = attach(&server, &map, FetchConfig::default());
    let view = map.view();
    assert!(bounded(LIMIT, move || view.has_pattern(77)
        && view.has_pattern(9000)));
    let t = Instant::now();
    mem.prefetch_all().unwrap();
    let took = t.elapsed();
    let s = mem.stats();
    eprintln!("prefetch_all of 64 MiB in {took:?}: {s:?}");
    assert_eq!(s.present_pages, PAGES);
    assert_eq!(s.pages_fetched, PAGES, "nothing fetched twice");
    assert!(s.requests <= PAGES / 512 + 8, "{} requests", s.requests);
    let faults = s.faults;
    let bad = bounded(LIMIT, move || {
        (0..PAGES).filter(|&p| !view.has_pattern(p)).count()
    });
    assert_eq!(bad, 0);
    assert_eq!(mem.stats().faults, faults, "no fault after a full prefetch");
    mem.prefetch_all().unwrap(); // nothing left: returns at once
    assert_eq!(mem.stats().requests, s.requests);
}

#[test]
fn dropping_unregisters_and_stops() {
    let server = TestServer::start(pattern_region(REGION));
    let map = AnonMap::new(REGION);
    let mem = attach(&server, &map, FetchConfig::default());
    let view = map.view();
    assert!(bounded(LIMIT, move || view.has_pattern(1)));
    bounded(Duration::from_secs(5), move || drop(mem));
    // Fetched pages stay; the rest is plain anonymous memory again.
    assert!(view.has_pattern(1));
    assert_eq!(map.read(9000 * PAGE_SIZE), 0);
    assert_eq!(server.handle.stats().requests, 1);
}

#[test]
fn attach_errors_name_the_problem() {
    let server = TestServer::start(pattern_region(REGION));
    let map = AnonMap::new(REGION);
    let err = |r: Result<RemoteMemory, RemoteError>| r.err().expect("attach must fail");

    let e = err(RemoteMemory::attach(
        map.ptr(),
        REGION,
        server.addr,
        *b"not-the-token!!!",
        FetchConfig::default(),
    ));
    assert!(
        matches!(
            e,
            RemoteError::Refused {
                reason: RefuseReason::BadToken,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("wrong clone-group token"), "{e}");

    let e = err(RemoteMemory::attach(
        map.ptr(),
        REGION / 2,
        server.addr,
        TOKEN,
        FetchConfig::default(),
    ));
    assert!(
        e.to_string()
            .contains("serves 67108864 bytes but the local region is 33554432"),
        "{e}"
    );

    let e = err(RemoteMemory::attach(
        map.ptr().wrapping_add(12),
        PAGE_SIZE,
        server.addr,
        TOKEN,
        FetchConfig::default(),
    ));
    assert!(e.to_string().contains("not page-aligned"), "{e}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = err(RemoteMemory::attach(
        map.ptr(),
        REGION,
        closed,
        TOKEN,
        FetchConfig::default(),
    ));
    assert!(matches!(e, RemoteError::Connect { .. }), "{e}");
    assert!(e.to_string().contains(&closed.to_string()), "{e}");
    assert_eq!(server.handle.stats().refused, 1);
}

#[test]
fn writes_land_on_fetched_pages() {
    for private_zero_pages in [false, true] {
        let server = TestServer::start(pattern_region(REGION));
        let map = AnonMap::new(REGION);
        let cfg = FetchConfig {
            private_zero_pages,
            ..FetchConfig::default()
        };
        let mem = attach(&server, &map, cfg);
        let base = map.addr() as usize;
        // A write fault on a zero page (3) and on a data page (20), then a
        // read fault on a zero page (10) that is written afterwards.
        bounded(LIMIT, move || {
            for (page, at) in [(3usize, 100usize), (20, 200), (10, 0)] {
                let addr = base + page * PAGE_SIZE + at;
                // SAFETY: inside the test mapping, which outlives this thread.
                unsafe {
                    if page == 10 {
                        assert_eq!(std::ptr::read_volatile(addr as *const u8), 0);
                    }
                    std::ptr::write_volatile(addr as *mut u8, 0x5a);
                }
            }
        });
        let view = map.view();
        for (page, at) in [(3u64, 100usize), (20, 200), (10, 0)] {
            let bytes = view.page(page);
            assert_eq!(bytes[at], 0x5a);
            assert!(bytes
                .iter()
                .enumerate()
                .all(|(i, &b)| i == at || b == pattern(page, i)));
        }
        let s = mem.stats();
        assert_eq!((s.faults, s.zero_pages), (3, 2), "{s:?}");
    }
}

#[test]
fn an_announced_range_arrives_without_faults_and_nothing_else_does() {
    let server = TestServer::start(pattern_region(REGION));
    let map = AnonMap::new(REGION);
    let mem = attach(&server, &map, FetchConfig::default());
    // 2,000 pages from page 3,000, and a range past the region's end
    // (clamped: only the region's last 10 pages), in a few batches.
    mem.prefetch_range(3000, 2000);
    mem.prefetch_range(PAGES - 10, 1 << 40);
    let stats = mem.stats_handle();
    let want = 2000 + 10;
    assert!(bounded(LIMIT, move || {
        while stats.stats().present_pages < want {
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }));
    let s = mem.stats();
    assert_eq!((s.faults, s.pages_fetched), (0, want), "{s:?}");
    assert!(s.requests <= 8, "{} requests", s.requests);
    // Only then the guest reads them: no fault, the right bytes.
    let view = map.view();
    let bad = bounded(LIMIT, move || {
        (3000..5000)
            .chain(PAGES - 10..PAGES)
            .filter(|&p| !view.has_pattern(p))
            .count()
    });
    assert_eq!(bad, 0);
    assert_eq!(mem.stats().faults, 0, "the reads found every page present");
}
