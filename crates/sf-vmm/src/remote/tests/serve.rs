//! The server side: refusals, and staying up for everyone else.

use super::*;
use crate::remote::protocol::{
    self, Hello, HelloReply, RefuseReason, Request, Response, HELLO_REPLY_LEN,
};
use crate::remote::{FetchConfig, RemoteMemory};
use std::io::{Read, Write};
use std::net::TcpStream;

fn hello(addr: SocketAddr, hello: &[u8]) -> (TcpStream, HelloReply) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(hello).unwrap();
    let mut reply = [0u8; HELLO_REPLY_LEN];
    s.read_exact(&mut reply).unwrap();
    (s, HelloReply::decode(&reply).unwrap())
}

fn refused(reply: HelloReply) -> RefuseReason {
    match reply {
        HelloReply::Refuse { reason, .. } => reason,
        other => panic!("accepted: {other:?}"),
    }
}

#[test]
fn bad_requests_are_refused_and_the_server_stays_up() {
    let server = TestServer::start(pattern_region(REGION));
    let (mut s, reply) = hello(server.addr, &Hello::new(TOKEN).encode());
    assert_eq!(
        reply,
        HelloReply::Accept {
            version: protocol::PROTOCOL_VERSION,
            region_len: REGION as u64
        }
    );
    let bad = [
        (
            Request {
                offset: REGION as u64,
                pages: 1,
            },
            RefuseReason::OutOfRange,
        ),
        (
            Request {
                offset: REGION as u64 - 4096,
                pages: 2,
            },
            RefuseReason::OutOfRange,
        ),
        (
            Request {
                offset: u64::MAX - 4095,
                pages: 512,
            },
            RefuseReason::OutOfRange,
        ),
        (
            Request {
                offset: 4097,
                pages: 1,
            },
            RefuseReason::Unaligned,
        ),
        (
            Request {
                offset: 0,
                pages: 0,
            },
            RefuseReason::BadPageCount,
        ),
        (
            Request {
                offset: 0,
                pages: 513,
            },
            RefuseReason::BadPageCount,
        ),
        (
            Request {
                offset: 0,
                pages: u32::MAX,
            },
            RefuseReason::BadPageCount,
        ),
    ];
    let mut data = Vec::new();
    for (req, reason) in bad {
        s.write_all(&req.encode()).unwrap();
        let (resp, _) = protocol::read_response(&mut s, &req, &mut data).unwrap();
        assert_eq!(resp, Response::Refused(reason), "{req:?}");
    }
    // The same connection still works...
    let req = Request {
        offset: 8 * 4096,
        pages: 4,
    };
    s.write_all(&req.encode()).unwrap();
    let (resp, _) = protocol::read_response(&mut s, &req, &mut data).unwrap();
    let Response::Pages(map) = resp else {
        panic!("refused")
    };
    let data_pages: Vec<u64> = (8..12).filter(|&p| !zero_page(p)).collect();
    assert_eq!(map.data_pages() as usize, data_pages.len());
    for (bytes, &p) in data.chunks(PAGE_SIZE).zip(&data_pages) {
        assert!(bytes.iter().enumerate().all(|(at, &b)| b == pattern(p, at)));
    }
    // ...and so does a new client.
    let map = AnonMap::new(REGION);
    let mem = RemoteMemory::attach(
        map.ptr(),
        REGION,
        server.addr,
        TOKEN,
        FetchConfig::default(),
    )
    .unwrap();
    let view = map.view();
    assert!(bounded(Duration::from_secs(10), move || view.has_pattern(123)));
    assert_eq!(mem.failed(), None);
    let stats = server.handle.stats();
    assert_eq!(stats.refused, 7);
    assert_eq!(stats.connections, 2);
}

#[test]
fn bad_hellos_are_refused_with_a_reason() {
    let server = TestServer::start(pattern_region(PAGE_SIZE * 16));
    // Version 1 had no pushed answers, unicast flag or reports.
    let older = Hello {
        version: protocol::PROTOCOL_VERSION - 1,
        token: TOKEN,
    };
    let newer = Hello {
        version: protocol::PROTOCOL_VERSION + 1,
        token: TOKEN,
    };
    let cases = [
        (
            Hello::new(*b"0123456789abcdef").encode(),
            RefuseReason::BadToken,
        ),
        (older.encode(), RefuseReason::UnsupportedVersion),
        (newer.encode(), RefuseReason::UnsupportedVersion),
        ([0x47u8; 24], RefuseReason::BadMagic),
    ];
    for (bytes, reason) in cases {
        let (mut s, reply) = hello(server.addr, &bytes);
        assert_eq!(refused(reply), reason);
        // Then the server hangs up.
        let mut rest = Vec::new();
        assert_eq!(s.read_to_end(&mut rest).unwrap(), 0);
    }
    // Garbage of every length, then hang-ups: the server shrugs them off.
    let mut rng = XorShift(99);
    for len in [0usize, 1, 5, 23, 24, 25, 40, 1000] {
        let mut s = TcpStream::connect(server.addr).unwrap();
        let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = s.write_all(&junk);
    }
    let (_s, reply) = hello(server.addr, &Hello::new(TOKEN).encode());
    assert!(matches!(reply, HelloReply::Accept { region_len, .. } if region_len == 16 * 4096));
    assert!(server.handle.stats().refused >= 4);
}

/// A page server of another release: it answers every hello with `reply`.
fn other_release(reply: HelloReply) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Some(Ok(mut s)) = listener.incoming().next() {
            let mut hello = [0u8; protocol::HELLO_LEN];
            if s.read_exact(&mut hello).is_ok() {
                let _ = s.write_all(&reply.encode());
            }
        }
    });
    addr
}

#[test]
fn a_clone_host_and_a_holder_of_another_protocol_version_refuse_each_other_clearly() {
    let old = protocol::PROTOCOL_VERSION - 1;
    // The holder refuses this host's hello (what this release's holder
    // does to an older host, checked in bad_hellos_are_refused_with_a_reason).
    let refusing = other_release(HelloReply::Refuse {
        version: old,
        reason: RefuseReason::UnsupportedVersion,
    });
    // An older holder that accepted anyway: the host refuses to go on.
    let accepting = other_release(HelloReply::Accept {
        version: old,
        region_len: REGION as u64,
    });
    let mismatch = format!(
        "peer speaks protocol version {old}, this side speaks {}",
        protocol::PROTOCOL_VERSION
    );
    for (addr, want) in [
        (refusing, "unsupported protocol version"),
        (accepting, mismatch.as_str()),
    ] {
        let map = AnonMap::new(REGION);
        let e = RemoteMemory::attach(map.ptr(), REGION, addr, TOKEN, FetchConfig::default())
            .err()
            .expect("attached to another release");
        let msg = format!("{e}: {:?}", std::error::Error::source(&e));
        eprintln!("{msg}");
        assert!(msg.contains(want), "{msg}");
        assert!(msg.contains(&addr.to_string()), "{msg}");
    }
}

#[test]
fn connections_over_the_limit_are_refused_as_busy() {
    let server =
        TestServer::start_with(pattern_region(PAGE_SIZE * 4), |s| s.with_max_connections(1));
    let (_first, reply) = hello(server.addr, &Hello::new(TOKEN).encode());
    assert!(matches!(reply, HelloReply::Accept { .. }));
    let (_second, reply) = hello(server.addr, &Hello::new(TOKEN).encode());
    assert_eq!(refused(reply), RefuseReason::Busy);
}

#[test]
fn loss_reports_get_no_answer_and_slow_the_pushes_within_bounds() {
    use crate::remote::pacer::{Report, MAX_PPS, MIN_PPS};
    let server = TestServer::start(pattern_region(REGION));
    let (mut s, _) = hello(server.addr, &Hello::new(TOKEN).encode());
    // A report, one with the largest numbers, then a request: the only
    // answer is the request's, so reports keep the stream in step.
    s.write_all(&Report::new(5, 0).encode()).unwrap();
    s.write_all(&Report::new(u64::MAX, u64::MAX).encode())
        .unwrap();
    let req = Request {
        offset: 0,
        pages: 2,
    };
    s.write_all(&req.encode()).unwrap();
    let mut data = Vec::new();
    let (resp, _) = protocol::read_response(&mut s, &req, &mut data).unwrap();
    assert!(matches!(resp, Response::Pages(_)), "{resp:?}");
    let stats = server.handle.stats();
    assert_eq!((stats.reports, stats.requests), (2, 1), "{stats:?}");
    assert_eq!(stats.push_rate_pps, (MAX_PPS / 4).max(MIN_PPS), "{stats:?}");
}
