//! Lockstep detection over loopback: clone memories that scan one region
//! at the same time get each page pushed once, ones that scan their own
//! parts get them by unicast and nothing pushed to the others, and one
//! that loses every push still reads the right bytes, by unicast.

use super::*;
use crate::remote::multicast::Sender;
use crate::remote::{FetchConfig, FetchStats, RemoteMemory};
use std::net::{Ipv4Addr, SocketAddrV4};

const LIMIT: Duration = Duration::from_secs(60);
/// The first 16 MiB of the test region.
const SCANNED: u64 = 4096;

fn group() -> SocketAddrV4 {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    SocketAddrV4::new(Ipv4Addr::new(239, 213, 78, (port % 250) as u8 + 1), port)
}

fn server(group: SocketAddrV4) -> TestServer {
    TestServer::start_with(pattern_region(REGION), |s| {
        let tx = Sender::looped(group, Ipv4Addr::LOCALHOST, TOKEN).unwrap();
        s.with_multicast(tx).with_lockstep()
    })
}

/// Attaches one clone memory per entry of `drop_pushes` and scans the
/// first [`SCANNED`] pages in all of them at once; every page must hold
/// the pattern.
fn scan_together(
    server: &TestServer,
    group: SocketAddrV4,
    drop_pushes: &[bool],
) -> Vec<FetchStats> {
    let parts: Vec<_> = drop_pushes.iter().map(|&d| (0..SCANNED, d)).collect();
    scan_parts(server, group, &parts)
}

/// Attaches one clone memory per part and scans each one's pages in all of
/// them at once (`true`: that clone drops every push it gets).
fn scan_parts(
    server: &TestServer,
    group: SocketAddrV4,
    parts: &[(std::ops::Range<u64>, bool)],
) -> Vec<FetchStats> {
    let maps: Vec<AnonMap> = parts.iter().map(|_| AnonMap::new(REGION)).collect();
    let mems: Vec<RemoteMemory> = maps
        .iter()
        .zip(parts)
        .map(|(m, &(_, drop_pushes))| {
            let cfg = FetchConfig {
                multicast: Some((group, Ipv4Addr::LOCALHOST)),
                drop_pushes,
                ..FetchConfig::default()
            };
            RemoteMemory::attach(m.ptr(), m.len(), server.addr, TOKEN, cfg).unwrap()
        })
        .collect();
    let views: Vec<(View, std::ops::Range<u64>)> = maps
        .iter()
        .zip(parts)
        .map(|(m, (range, _))| (m.view(), range.clone()))
        .collect();
    let ok = bounded(LIMIT, move || {
        let readers: Vec<_> = views
            .into_iter()
            .map(|(v, range)| std::thread::spawn(move || range.clone().all(|p| v.has_pattern(p))))
            .collect();
        readers.into_iter().all(|r| r.join().unwrap())
    });
    assert!(ok, "a clone read wrong bytes");
    mems.iter().map(|m| m.stats()).collect()
}

#[test]
fn clones_scanning_in_step_get_each_page_pushed_about_once() {
    let g = group();
    let server = server(g);
    let stats = scan_together(&server, g, &[false, false, false]);
    let s = server.handle.stats();
    let data_pages = (0..SCANNED).filter(|&p| !zero_page(p)).count() as u64;
    eprintln!("server {s:?}\nclones {stats:#?}");
    assert!(
        s.pushed_answers > 0 && s.lockstep_shared_chunks > 0,
        "{s:?}"
    );
    // Without lockstep detection each of the three would get every page
    // over TCP, and every page served would be pushed again. With it, only
    // a chunk's first batches before a second clone asks there go by
    // unicast as well.
    assert!(
        (s.pages_sent + s.multicast_datagrams) * 2 <= data_pages * 3,
        "pages sent once, not once per clone: {s:?} for {data_pages} data pages"
    );
    let by_push: u64 = stats.iter().map(|c| c.multicast_pages).sum();
    assert!(by_push > data_pages * 2, "{stats:?}");
}

#[test]
fn a_clone_that_loses_every_push_reads_the_right_bytes_by_unicast() {
    let g = group();
    let server = server(g);
    let stats = scan_together(&server, g, &[false, true]);
    eprintln!("server {:?}\nclones {stats:#?}", server.handle.stats());
    let (healthy, lossy) = (&stats[0], &stats[1]);
    assert_eq!(lossy.multicast_pages, 0, "{lossy:?}");
    assert!(
        lossy.pages_fetched >= SCANNED,
        "the lossy clone fetched every page itself: {lossy:?}"
    );
    assert!(healthy.multicast_pages > 0, "{healthy:?}");
}

#[test]
fn clones_scanning_their_own_parts_get_them_by_unicast_and_push_nothing_to_the_others() {
    let g = group();
    let server = server(g);
    // Two parts that meet inside a chunk (page 5000 of 2 MiB chunks of
    // 512 pages), as a database split by bytes would.
    let (a, b) = (0..5000, 5000..10_000);
    let stats = scan_parts(&server, g, &[(a, false), (b, false)]);
    let s = server.handle.stats();
    eprintln!("server {s:?}\nclones {stats:#?}");
    let data_pages = (0..10_000).filter(|&p| !zero_page(p)).count() as u64;
    // The parts go by unicast, once. At most the chunk where they meet,
    // the chunks the clone asked there last then enters as followed, and
    // the batches pushed ahead of its scan there also went to the group
    // (push-all sent every page to both: twice the data on each host).
    use crate::remote::lockstep::{CHUNK_PAGES, FOLLOWED_CHUNKS};
    let bound = (1 + u64::from(FOLLOWED_CHUNKS)) * CHUNK_PAGES as u64 + 256;
    assert!(
        s.multicast_datagrams <= bound,
        "{} pages pushed to both clones: {s:?}",
        s.multicast_datagrams
    );
    assert!(
        s.unicast_private_pages >= data_pages - bound,
        "private pages went by unicast: {s:?}"
    );
    assert!(
        s.pages_sent + s.multicast_datagrams <= data_pages + data_pages / 10,
        "each page sent about once: {s:?} for {data_pages} data pages"
    );
    let by_push: u64 = stats.iter().map(|c| c.multicast_pages).sum();
    assert!(by_push <= 2 * bound, "{stats:?}");
}
