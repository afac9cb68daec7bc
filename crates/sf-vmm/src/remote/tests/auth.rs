//! The page service's authentication: mutual TLS under the cluster CA
//! before the hello, the hello deadline, and strangers that never count
//! toward "Busy".

use super::*;
use crate::remote::client::{PageClient, Timeouts};
use crate::remote::protocol::{Ask, Hello, Request};
use crate::remote::server::HELLO_TIMEOUT;
use sf_tls::generate::{host_paths, init, HostSpec};
use sf_tls::{Credentials, Transport};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

/// A cluster CA with one loopback host; `(server, client)` transports (the
/// same host certificate on both sides, as a host's holder and clone).
fn cluster(dir: &std::path::Path) -> Transport {
    init(dir, &["h=127.0.0.1".parse::<HostSpec>().unwrap()]).unwrap();
    Transport::Tls(Arc::new(Credentials::load(&host_paths(dir, "h")).unwrap()))
}

fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(2),
        request: Duration::from_secs(5),
    }
}

fn tls_server(t: &Transport) -> TestServer {
    let t = t.clone();
    TestServer::start_with(pattern_region(PAGE_SIZE * 16), move |s| s.with_transport(t))
}

#[test]
fn clients_without_a_cluster_certificate_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ours = cluster(&dir.path().join("ours"));
    let theirs = cluster(&dir.path().join("theirs"));
    let server = tls_server(&ours);
    // The right token in clear, without TLS: no hello reply ever comes.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&Hello::new(TOKEN).encode()).unwrap();
    let mut reply = [0u8; 16];
    let n = s.read(&mut reply).unwrap_or(0);
    assert!(
        n == 0 || !reply.starts_with(b"SFPM"),
        "plain client got a reply: {:?}",
        &reply[..n]
    );
    for (who, t) in [("plain TCP", Transport::Plain), ("another CA", theirs)] {
        let r = PageClient::connect(server.addr, &TOKEN, timeouts(), &t);
        assert!(r.is_err(), "{who} was served");
    }
    let mut c = PageClient::connect(server.addr, &TOKEN, timeouts(), &ours).unwrap();
    let mut data = Vec::new();
    let b = c
        .fetch(
            Request {
                offset: 0,
                pages: 2,
            },
            &mut data,
            Ask::Fault,
        )
        .unwrap();
    assert_eq!(b.map.data_pages(), 2);
    assert_eq!(data[..PAGE_SIZE], pattern_region(PAGE_SIZE)[..]);
    assert_eq!(
        server.handle.stats().connections,
        1,
        "only the cluster member got in"
    );
}

#[test]
fn silent_connections_neither_lock_out_a_clone_nor_stay_open() {
    let dir = tempfile::tempdir().unwrap();
    let ours = cluster(&dir.path().join("ours"));
    let server = tls_server(&ours);
    // More than the 256 connections the server serves at once, none of
    // which ever says anything.
    let silent: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut c = PageClient::connect(server.addr, &TOKEN, timeouts(), &ours)
        .expect("a clone with the right certificate and token is served");
    let mut data = Vec::new();
    c.fetch(
        Request {
            offset: 0,
            pages: 1,
        },
        &mut data,
        Ask::Fault,
    )
    .unwrap();
    // And each silent one is closed once its deadline passes.
    let start = Instant::now();
    for mut s in silent {
        s.set_read_timeout(Some(HELLO_TIMEOUT + Duration::from_secs(3)))
            .unwrap();
        let mut b = [0u8; 1];
        let r = s.read(&mut b);
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        assert!(
            start.elapsed() < HELLO_TIMEOUT + Duration::from_secs(3),
            "a silent connection stayed open past the hello deadline"
        );
    }
}
