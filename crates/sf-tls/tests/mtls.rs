//! Mutual TLS over loopback with credentials from `generate::init`: peers
//! of one cluster talk and learn each other's addresses; a certificate of
//! another CA, or none at all, is refused by the server.

use sf_tls::generate::{host_paths, init, HostSpec};
use sf_tls::{Credentials, PeerIdentity, Transport};
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cluster(dir: &std::path::Path) -> (Transport, Transport) {
    init(
        dir,
        &[
            "a=127.0.0.1".parse::<HostSpec>().unwrap(),
            "b=127.0.0.2".parse().unwrap(),
        ],
    )
    .unwrap();
    let t = |n| Transport::Tls(Arc::new(Credentials::load(&host_paths(dir, n)).unwrap()));
    (t("a"), t("b"))
}

/// Serves one connection: handshake, then echoes 5 bytes; returns the
/// handshake result and the peer's identity.
fn serve_one(
    l: TcpListener,
    t: Transport,
) -> std::thread::JoinHandle<Result<Option<PeerIdentity>, String>> {
    std::thread::spawn(move || {
        let (tcp, _) = l.accept().unwrap();
        let mut s = t.accept(tcp).unwrap();
        s.handshake_until(Instant::now() + Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        let mut b = [0u8; 5];
        s.read_exact(&mut b).map_err(|e| e.to_string())?;
        s.write_all(&b).map_err(|e| e.to_string())?;
        Ok(s.peer())
    })
}

#[test]
fn peers_of_one_cluster_talk_and_know_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = cluster(&dir.path().join("c"));
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let server = serve_one(l, a);
    let mut c = b.connect(addr, Duration::from_secs(2)).unwrap();
    assert_eq!(
        c.peer(),
        Some(PeerIdentity::Certificate {
            ips: vec![IpAddr::from([127, 0, 0, 1])]
        })
    );
    c.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello");
    let peer = server.join().unwrap().unwrap().unwrap();
    assert!(peer.owns(IpAddr::from([127, 0, 0, 2])) && !peer.owns(IpAddr::from([127, 0, 0, 1])));
}

#[test]
fn a_certificate_of_another_ca_or_none_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = cluster(&dir.path().join("c"));
    let (_, stranger) = cluster(&dir.path().join("other"));
    for client in [stranger, Transport::Plain] {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = serve_one(l, a.clone());
        let plain = !client.is_tls();
        let c = client.connect(addr, Duration::from_secs(2));
        if plain {
            // Plain bytes are no TLS hello: the server must refuse.
            let mut c = c.unwrap();
            let _ = c.write_all(b"hello");
        }
        let res = server.join().unwrap();
        assert!(res.is_err(), "server accepted a stranger: {res:?}");
    }
}

#[test]
fn init_refuses_to_overwrite_and_keys_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("c");
    cluster(&d);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d), 0o700);
    assert_eq!(mode(&d.join("ca-key.pem")), 0o600);
    assert_eq!(mode(&d.join("a-key.pem")), 0o600);
    let e = init(&d, &["z=127.0.0.9".parse().unwrap()]).unwrap_err();
    assert!(e.to_string().contains("refusing to overwrite"), "{e}");
    let p = sf_tls::generate::add_host(&d, &"c=127.0.0.3".parse().unwrap()).unwrap();
    // The added host's certificate chains to the same CA: it talks to "a".
    let added = Transport::Tls(Arc::new(Credentials::load(&p).unwrap()));
    let a = Transport::Tls(Arc::new(Credentials::load(&host_paths(&d, "a")).unwrap()));
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let server = serve_one(l, a);
    let mut c = added.connect(addr, Duration::from_secs(2)).unwrap();
    c.write_all(b"howdy").unwrap();
    let peer = server.join().unwrap().unwrap().unwrap();
    assert!(peer.owns(IpAddr::from([127, 0, 0, 3])));
    assert!(sf_tls::generate::add_host(&d, &"c=127.0.0.3".parse().unwrap()).is_err());
}
