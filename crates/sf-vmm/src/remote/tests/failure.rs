//! A dead or silent server: the faulting thread gets zeros, never a hang.

use super::*;
use crate::remote::protocol::{HelloReply, HELLO_LEN, PROTOCOL_VERSION, REQUEST_LEN};
use crate::remote::{FetchConfig, RemoteMemory};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A config with short timeouts and a callback that counts its calls.
fn config(request_ms: u64) -> (FetchConfig, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let cfg = FetchConfig {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(request_ms),
        on_failure: Some(Arc::new(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        })),
        ..FetchConfig::default()
    };
    (cfg, calls)
}

#[test]
fn a_killed_server_gives_zeros_not_a_hang() {
    let mut server = TestServer::start(pattern_region(REGION));
    let map = AnonMap::new(REGION);
    let (cfg, calls) = config(1000);
    let mem = RemoteMemory::attach(map.ptr(), REGION, server.addr, TOKEN, cfg).unwrap();
    let view = map.view();
    assert!(bounded(Duration::from_secs(10), move || view.has_pattern(10)));

    server.kill();
    let t = Instant::now();
    // A data page of the pattern: after the failure it reads as zeros.
    let page = bounded(Duration::from_secs(10), move || view.page(5000));
    let took = t.elapsed();
    assert!(page.iter().all(|&b| b == 0));
    // Closed connection, then one refused reconnect: well inside the
    // configured timeouts (1 s per request, 500 ms to connect).
    assert!(took < Duration::from_millis(1000 + 500), "took {took:?}");
    let why = mem.failed().expect("failure recorded");
    assert!(why.contains(&server.addr.to_string()), "{why}");
    assert!(why.contains("connect") || why.contains("closed"), "{why}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Later faults resolve too (the range is plain memory again), and a
    // prefetch says why it cannot run.
    assert!(bounded(Duration::from_secs(10), move || view
        .page(16000)
        .iter()
        .all(|&b| b == 0)));
    assert!(view.has_pattern(10), "pages fetched before stay");
    let e = mem.prefetch_all().unwrap_err();
    assert!(e.to_string().contains("failed earlier"), "{e}");
    eprintln!("killed server: zeros after {took:?}; failed(): {why}");
}

#[test]
fn a_silent_server_times_out_with_the_configured_timeout() {
    // Accepts, says hello like a page server, then never answers a request.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU32::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(2) {
            let mut s = stream.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let mut hello = [0u8; HELLO_LEN];
            s.read_exact(&mut hello).unwrap();
            let reply = HelloReply::Accept {
                version: PROTOCOL_VERSION,
                region_len: REGION as u64,
            };
            s.write_all(&reply.encode()).unwrap();
            held.push(s);
        }
        // Keep the connections open (and silent) for a while.
        std::thread::sleep(Duration::from_secs(20));
        drop(held);
    });
    let map = AnonMap::new(REGION);
    let (cfg, calls) = config(300);
    let mem = RemoteMemory::attach(map.ptr(), REGION, addr, TOKEN, cfg).unwrap();
    let view = map.view();
    let t = Instant::now();
    let page = bounded(Duration::from_secs(10), move || view.page(3));
    let took = t.elapsed();
    assert!(page.iter().all(|&b| b == 0));
    // One timeout, one reconnect, one more timeout.
    assert!(took >= Duration::from_millis(600), "took {took:?}");
    assert!(
        took < Duration::from_millis(600 + 500 + 400),
        "took {took:?}"
    );
    let why = mem.failed().expect("failure recorded");
    assert!(why.contains("300 ms") && why.contains("timeout"), "{why}");
    assert!(why.contains("fetching 1 pages at offset 0x3000"), "{why}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(mem.stats().reconnects, 1);
    eprintln!("silent server: zeros after {took:?}; failed(): {why}");
}

#[test]
fn a_garbage_reply_fails_cleanly() {
    // Accepts, then answers every request with a header for other pages.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(2) {
            let mut s = stream.unwrap();
            let mut hello = [0u8; HELLO_LEN];
            s.read_exact(&mut hello).unwrap();
            let reply = HelloReply::Accept {
                version: PROTOCOL_VERSION,
                region_len: REGION as u64,
            };
            s.write_all(&reply.encode()).unwrap();
            let mut req = [0u8; REQUEST_LEN];
            s.read_exact(&mut req).unwrap();
            s.write_all(&[0xee; 64]).unwrap();
        }
    });
    let map = AnonMap::new(REGION);
    let (cfg, calls) = config(2000);
    let mem = RemoteMemory::attach(map.ptr(), REGION, addr, TOKEN, cfg).unwrap();
    let view = map.view();
    let page = bounded(Duration::from_secs(10), move || view.page(42));
    assert!(page.iter().all(|&b| b == 0));
    let why = mem.failed().expect("failure recorded");
    assert!(why.contains("broke the protocol"), "{why}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
