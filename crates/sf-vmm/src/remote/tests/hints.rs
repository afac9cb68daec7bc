//! Free-page hints on the clone host: a hinted page is zero-filled here and
//! never requested, on every path a page can arrive by (faults, readahead,
//! prefetch before a nested fork, multicast pushes).

use super::*;
use crate::hints::FreePages;
use crate::remote::{FetchConfig, RemoteMemory};
use std::sync::Arc;

const LIMIT: Duration = Duration::from_secs(60);

/// Data pages of the pattern region hinted free: a long run, a lone page,
/// and the region's tail.
fn hints() -> FreePages {
    FreePages::from_ranges(vec![[2000, 3000], [7001, 1], [PAGES - 1000, 5000]], PAGES)
}

fn attach(server: &TestServer, map: &AnonMap, free: FreePages) -> RemoteMemory {
    let cfg = FetchConfig {
        free_pages: Arc::new(free),
        ..FetchConfig::default()
    };
    RemoteMemory::attach(map.ptr(), map.len(), server.addr, TOKEN, cfg).unwrap()
}

/// Parent's bytes where not hinted, zeros where hinted.
fn expected(view: View, free: &FreePages) -> usize {
    (0..PAGES)
        .filter(|&p| {
            if free.contains(p) {
                !view.page(p).iter().all(|&b| b == 0)
            } else {
                !view.has_pattern(p)
            }
        })
        .count()
}

#[test]
fn a_scan_never_requests_a_hinted_page() {
    let server = TestServer::start(pattern_region(REGION));
    let map = AnonMap::new(REGION);
    let free = hints();
    let hinted = free.pages();
    assert_eq!(hinted, 3000 + 1 + 1000);
    let mem = attach(&server, &map, free.clone());
    let view = map.view();
    let bad = bounded(LIMIT, move || expected(view, &free));
    assert_eq!(bad, 0, "pages neither the parent's nor zeros where hinted");
    let s = mem.stats();
    eprintln!("hinted scan: {s:?}");
    assert_eq!(s.zero_local_pages, hinted);
    assert_eq!(
        s.pages_fetched,
        PAGES - hinted,
        "readahead never asks for a hinted page"
    );
    assert_eq!(s.present_pages, PAGES);
    let served = server_stats_once(&server.handle, |x| {
        x.pages_sent + x.zero_pages == PAGES - hinted
    });
    assert_eq!(served.pages_sent + served.zero_pages, PAGES - hinted);
}

#[test]
fn writes_to_hinted_pages_need_no_request() {
    let server = TestServer::start(pattern_region(REGION));
    let map = AnonMap::new(REGION);
    let mem = attach(&server, &map, hints());
    let base = map.addr() as usize;
    let ok = bounded(LIMIT, move || {
        for p in 2000..5000usize {
            let at = base + p * PAGE_SIZE;
            // SAFETY: inside the mapping, which outlives this thread
            // (`bounded` joins it or fails the test).
            unsafe {
                std::ptr::write_volatile((at + 7) as *mut u8, 0xAB);
            }
        }
        (2000..5000usize).all(|p| {
            let at = base + p * PAGE_SIZE;
            // SAFETY: as above.
            unsafe {
                std::ptr::read_volatile((at + 7) as *const u8) == 0xAB
                    && std::ptr::read_volatile(at as *const u8) == 0
            }
        })
    });
    assert!(
        ok,
        "a written hinted page keeps what was written, zeros elsewhere"
    );
    let s = mem.stats();
    assert_eq!((s.requests, s.pages_fetched), (0, 0), "{s:?}");
    assert_eq!(s.zero_local_pages, 3000);
    // Batched like readahead: far fewer faults than pages.
    assert!(s.faults <= 3000 / 8, "{} faults", s.faults);
}

/// Writes one byte into each page of the 64 MiB region, hinted or not;
/// returns the time and the counters.
fn write_scan(free: FreePages) -> (Duration, crate::remote::FetchStats) {
    let server = TestServer::start(pattern_region(REGION));
    let map = AnonMap::new(REGION);
    let mem = attach(&server, &map, free);
    let base = map.addr() as usize;
    let t = std::time::Instant::now();
    bounded(LIMIT, move || {
        for p in 0..PAGES as usize {
            // SAFETY: inside the mapping, which outlives this thread.
            unsafe { std::ptr::write_volatile((base + p * PAGE_SIZE) as *mut u8, 1) };
        }
    });
    (t.elapsed(), mem.stats())
}

#[test]
fn a_hinted_write_scan_costs_no_round_trip() {
    let (fetched, f) = write_scan(FreePages::default());
    let (hinted, h) = write_scan(FreePages::from_ranges(vec![[0, PAGES]], PAGES));
    eprintln!("write scan of 64 MiB: fetched {fetched:?} ({} requests, {} bytes), hinted {hinted:?} ({} requests, {} faults)",
        f.requests, f.bytes_received, h.requests, h.faults);
    assert_eq!(f.pages_fetched, PAGES);
    assert_eq!(
        (h.requests, h.bytes_received, h.zero_local_pages),
        (0, 0, PAGES)
    );
}

#[test]
fn prefetch_all_zero_fills_hinted_pages_and_fetches_the_rest() {
    let server = TestServer::start(pattern_region(REGION));
    let map = AnonMap::new(REGION);
    let free = hints();
    let hinted = free.pages();
    let mem = attach(&server, &map, free.clone());
    mem.prefetch_all().unwrap();
    let s = mem.stats();
    assert_eq!(s.present_pages, PAGES);
    assert_eq!(s.pages_fetched, PAGES - hinted);
    assert_eq!(s.zero_local_pages, hinted);
    let faults = s.faults;
    let view = map.view();
    assert_eq!(bounded(LIMIT, move || expected(view, &free)), 0);
    assert_eq!(mem.stats().faults, faults, "no fault after a full prefetch");
}

#[test]
fn hostile_hints_only_cost_the_guest_its_own_bytes() {
    let server = TestServer::start(pattern_region(REGION));
    let map = AnonMap::new(REGION);
    // Everything, wrapping lengths, beyond RAM, overlapping.
    let free = FreePages::from_ranges(
        vec![
            [0, u64::MAX],
            [u64::MAX, u64::MAX],
            [PAGES, 10],
            [5, 3],
            [1, 1 << 40],
        ],
        PAGES,
    );
    assert_eq!(free.ranges(), &[(0, PAGES)]);
    let mem = attach(&server, &map, free);
    let view = map.view();
    let zeros = bounded(LIMIT, move || {
        (0..PAGES)
            .step_by(97)
            .all(|p| view.page(p).iter().all(|&b| b == 0))
    });
    assert!(zeros);
    assert_eq!(mem.stats().requests, 0);
}

#[test]
fn multicast_pushes_for_hinted_pages_are_not_installed() {
    use crate::remote::multicast::encode;
    use crate::remote::multicast::GroupKey;
    let server = TestServer::start(pattern_region(REGION));
    let map = AnonMap::new(REGION);
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let lo = std::net::Ipv4Addr::LOCALHOST;
    let group = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(239, 213, 77, 9), port);
    let cfg = FetchConfig {
        free_pages: Arc::new(hints()),
        multicast: Some((group, lo)),
        ..FetchConfig::default()
    };
    let mem = RemoteMemory::attach(map.ptr(), map.len(), server.addr, TOKEN, cfg).unwrap();
    // A sender that loops back to this host (the holder's does not).
    let tx = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    tx.set_multicast_if_v4(&lo).unwrap();
    tx.set_multicast_loop_v4(true).unwrap();
    let key = GroupKey::new(&TOKEN);
    let data = pattern_region(REGION);
    // Pages 1990..2010: ten unhinted, then ten hinted.
    let pushed: Vec<u64> = (1990..2010).filter(|&p| !zero_page(p)).collect();
    for (seq, &p) in pushed.iter().enumerate() {
        let at = p as usize * PAGE_SIZE;
        let d = encode(&key, seq as u64, at as u64, &data[at..at + PAGE_SIZE]);
        tx.send_to(&d, &std::net::SocketAddr::V4(group).into())
            .unwrap();
    }
    let unhinted = pushed.iter().filter(|&&p| p < 2000).count() as u64;
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while mem.stats().multicast_pages < unhinted && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Let any stray push for a hinted page land, if it were going to.
    std::thread::sleep(Duration::from_millis(100));
    let s = mem.stats();
    assert_eq!(s.multicast_pages, unhinted, "{s:?}");
    assert_eq!(s.present_pages, unhinted);
    let view = map.view();
    let ok = bounded(LIMIT, move || {
        (1990..2000).all(|p| view.has_pattern(p))
            && (2000..2010).all(|p| view.page(p).iter().all(|&b| b == 0))
    });
    assert!(ok);
    // Only the unhinted zero pages (never pushed) were requested.
    let zeros = (1990..2000).filter(|&p| zero_page(p)).count() as u64;
    let s = mem.stats();
    assert_eq!(s.pages_fetched, zeros, "{s:?}");
    // (A scan's window may zero-fill a few hinted pages past 2009 too.)
    assert!(s.zero_local_pages >= 10, "{s:?}");
}

#[test]
fn hinted_blocks_handed_to_the_kernel_read_zeros_and_keep_writes() {
    let server = TestServer::start(pattern_region(REGION));
    let map = AnonMap::new(REGION);
    let free = hints();
    let hinted = free.pages();
    let cfg = FetchConfig {
        free_pages: Arc::new(free.clone()),
        release_hinted_blocks: true,
        ..FetchConfig::default()
    };
    let mem = RemoteMemory::attach(map.ptr(), map.len(), server.addr, TOKEN, cfg).unwrap();
    // 2048..4608 and 15872..16384 are whole 2 MiB blocks: released.
    let released = (4608 - 2048) + (16384 - 15872);
    assert_eq!(
        (
            mem.stats().released_hinted_pages,
            mem.stats().zero_local_pages
        ),
        (released, 0)
    );
    let base = map.addr() as usize;
    let ok = bounded(LIMIT, move || {
        (2000..5000usize).all(|p| {
            let at = base + p * PAGE_SIZE;
            // SAFETY: inside the mapping, which outlives this thread.
            unsafe {
                std::ptr::write_volatile((at + 9) as *mut u8, 0xCD);
                std::ptr::read_volatile((at + 9) as *const u8) == 0xCD
                    && std::ptr::read_volatile(at as *const u8) == 0
            }
        })
    });
    assert!(ok);
    // The rest as before, and a prefetch for a nested fork finds the
    // released blocks in place.
    mem.prefetch_all().unwrap();
    let s = mem.stats();
    assert_eq!(s.pages_fetched, PAGES - hinted, "{s:?}");
    assert_eq!(
        s.zero_local_pages + s.released_hinted_pages,
        hinted,
        "{s:?}"
    );
    assert_eq!(s.released_hinted_pages, released, "{s:?}");
    let view = map.view();
    let ok = bounded(LIMIT, move || {
        (0..PAGES).filter(|&p| !(2000..5000).contains(&p)).all(|p| {
            if free.contains(p) {
                view.page(p).iter().all(|&b| b == 0)
            } else {
                view.has_pattern(p)
            }
        })
    });
    assert!(ok);
}
