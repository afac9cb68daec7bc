//! Lockstep detection over loopback: clone memories that scan one region
//! at the same time get each page pushed once, and one that loses every
//! push still reads the right bytes, by unicast.

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
    let maps: Vec<AnonMap> = drop_pushes.iter().map(|_| AnonMap::new(REGION)).collect();
    let mems: Vec<RemoteMemory> = maps
        .iter()
        .zip(drop_pushes)
        .map(|(m, &drop_pushes)| {
            let cfg = FetchConfig {
                multicast: Some((group, Ipv4Addr::LOCALHOST)),
                drop_pushes,
                ..FetchConfig::default()
            };
            RemoteMemory::attach(m.ptr(), m.len(), server.addr, TOKEN, cfg).unwrap()
        })
        .collect();
    let views: Vec<View> = maps.iter().map(|m| m.view()).collect();
    let ok = bounded(LIMIT, move || {
        let readers: Vec<_> = views
            .into_iter()
            .map(|v| std::thread::spawn(move || (0..SCANNED).all(|p| v.has_pattern(p))))
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
    assert!(s.pushed_answers > 0, "{s:?}");
    // Without lockstep detection each of the three would get every page
    // over TCP, and every page served would be pushed again.
    assert!(
        s.pages_sent + s.multicast_datagrams < data_pages * 2,
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
