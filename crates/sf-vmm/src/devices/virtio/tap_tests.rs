//! The NIC on a real TAP (tests run as root): the host kernel's UDP and
//! `ping` reach a polling driver through the device, the driver's frames
//! reach host sockets, and a bulk stream from a host process is measured.
//! Each test has its own TAP and /24 in 10.254.0.0/16; the TAP goes away
//! with its fd.

use super::features::{RING_EVENT_IDX, VERSION_1};
use super::net::{Net, F_CSUM, F_GUEST_CSUM, F_GUEST_TSO4, F_HOST_TSO4, F_MAC, HDR_LEN};
use super::test_driver::*;
use crate::net::tap::Tap;
use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

const GUEST_MAC: [u8; 6] = [0x02, 0x53, 0x46, 0xfe, 0x00, 0x02];

struct Link {
    tap_mac: [u8; 6],
    host: Ipv4Addr,
    guest: Ipv4Addr,
    d: Driver,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect(args[0]);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn link(net: u8) -> Link {
    link_acking(net, VERSION_1 | F_MAC | RING_EVENT_IDX)
}

/// A link whose driver acks `features`.
fn link_acking(net: u8, features: u64) -> Link {
    let name = format!("sfvn{}x{net}", std::process::id() % 100_000);
    let tap = Tap::open(&name).expect("TAP (tests run as root)");
    let (host, guest) = (
        Ipv4Addr::new(10, 254, net, 1),
        Ipv4Addr::new(10, 254, net, 2),
    );
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    sh(&["ip", "addr", "add", &format!("{host}/24"), "dev", &name]);
    sh(&["ip", "link", "set", &name, "up"]);
    let mac: String = GUEST_MAC
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    sh(&[
        "ip",
        "neigh",
        "replace",
        &guest.to_string(),
        "lladdr",
        &mac,
        "dev",
        &name,
        "nud",
        "permanent",
    ]);
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).unwrap();
    let mut tap_mac = [0u8; 6];
    for (i, h) in text.trim().split(':').enumerate() {
        tap_mac[i] = u8::from_str_radix(h, 16).unwrap();
    }
    let d = Driver::start(Net::with_mac(Some(tap.fd), GUEST_MAC), features);
    Link {
        tap_mac,
        host,
        guest,
        d,
    }
}

fn csum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4 (protocol `proto`) around `l4`.
fn ipv4_frame(
    dst: [u8; 6],
    src: [u8; 6],
    from: Ipv4Addr,
    to: Ipv4Addr,
    proto: u8,
    l4: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&from.octets());
    ip.extend_from_slice(&to.octets());
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(l4);
    f
}

/// Frames the device delivered since the last call (without headers).
fn received(l: &mut Link) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (id, len) in l.d.take_used(0) {
        let mut f = vec![0u8; len as usize];
        l.d.mem
            .read_slice(&mut f, GuestAddress(buf(0, id as u16)))
            .unwrap();
        out.push(f[HDR_LEN..].to_vec());
        l.d.post_rx(id as u16);
    }
    out
}

/// The IPv4 payload of `f` if it is IPv4 with protocol `proto`.
fn ipv4_payload(f: &[u8], proto: u8) -> Option<&[u8]> {
    (f.len() >= 34 && f[12..14] == [0x08, 0x00] && f[23] == proto).then(|| &f[14 + 20..])
}

#[test]
fn host_udp_reaches_the_driver_and_back() {
    let mut l = link(1);
    for i in 0..8 {
        l.d.post_rx(i);
    }
    let sock = UdpSocket::bind((l.host, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.send_to(b"to the guest", (l.guest, 9999)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = None;
    while got.is_none() && Instant::now() < deadline {
        l.d.wait(Duration::from_millis(200));
        got = received(&mut l).into_iter().find_map(|f| {
            let udp = ipv4_payload(&f, 17)?;
            (f[..6] == GUEST_MAC && &udp[8..] == b"to the guest").then(|| f.clone())
        });
    }
    assert!(
        got.is_some(),
        "the host's datagram did not reach the driver"
    );
    // And a frame the driver sends reaches the host's socket.
    let port = sock.local_addr().unwrap().port();
    let mut udp = vec![0u8; 8];
    udp[0..2].copy_from_slice(&9999u16.to_be_bytes());
    udp[2..4].copy_from_slice(&port.to_be_bytes());
    udp[4..6].copy_from_slice(&(8 + 11u16).to_be_bytes());
    udp.extend_from_slice(b"to the host");
    let f = ipv4_frame(l.tap_mac, GUEST_MAC, l.guest, l.host, 17, &udp);
    l.d.tx(0, &f, true);
    l.d.wait(Duration::ZERO);
    let mut buf = [0u8; 64];
    let (n, from) = sock.recv_from(&mut buf).expect("the driver's datagram");
    assert_eq!(&buf[..n], b"to the host");
    assert_eq!(from.ip(), l.guest);
}

/// What `ping` does: an ICMP echo request from a host raw socket.
fn echo_request(to: Ipv4Addr, seq: u16) -> socket2::Socket {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let s =
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).expect("raw socket (root)");
    let mut req = vec![8, 0, 0, 0, 0x53, 0x46, 0, 0];
    req[6..8].copy_from_slice(&seq.to_be_bytes());
    req.extend_from_slice(b"snowflock ping");
    let c = csum(&req);
    req[2..4].copy_from_slice(&c.to_be_bytes());
    s.send_to(&req, &SockAddr::from(std::net::SocketAddrV4::new(to, 0)))
        .unwrap();
    s
}

/// Whether `s` gets the echo reply with sequence `seq` within 2 s.
fn echo_reply(s: &socket2::Socket, seq: u16) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 256];
        let Ok(n) = s.recv(&mut buf) else { continue };
        // SAFETY: recv initialized the first n bytes.
        let pkt: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        let icmp = &pkt[(pkt[0] & 0xf) as usize * 4..];
        if icmp[0] == 0 && icmp[4..6] == [0x53, 0x46] && icmp[6..8] == seq.to_be_bytes() {
            return true;
        }
    }
    false
}

#[test]
fn ping_from_the_host_is_answered_through_the_device() {
    let mut l = link(2);
    for i in 0..8 {
        l.d.post_rx(i);
    }
    let mut next_tx = 0u16;
    for seq in 1..=3u16 {
        let sock = echo_request(l.guest, seq);
        // The driver: wait for the request, answer it as a guest stack would.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut answered = false;
        while !answered && Instant::now() < deadline {
            l.d.wait(Duration::from_millis(100));
            for f in received(&mut l) {
                let Some(icmp) = ipv4_payload(&f, 1) else {
                    continue;
                };
                if icmp[0] != 8 {
                    continue; // not an echo request
                }
                let mut reply = icmp.to_vec();
                reply[0] = 0;
                reply[2..4].copy_from_slice(&[0, 0]);
                let c = csum(&reply);
                reply[2..4].copy_from_slice(&c.to_be_bytes());
                let f = ipv4_frame(l.tap_mac, GUEST_MAC, l.guest, l.host, 1, &reply);
                l.d.tx(next_tx % SIZE, &f, true);
                next_tx += 1;
                answered = true;
            }
        }
        assert!(answered, "echo request {seq} never reached the driver");
        l.d.wait(Duration::ZERO); // flush: the TX notify is batched
        l.d.take_used(1);
        assert!(echo_reply(&sock, seq), "no echo reply {seq} on the host");
    }
}

/// A host process streams 1400-byte datagrams to the driver for a second:
/// throughput through TAP and device, and exits per packet (the driver
/// reposts buffers and waits only when its used ring is empty).
#[test]
fn bulk_stream_from_a_host_process() {
    let mut l = link(3);
    for i in 0..SIZE {
        l.d.post_rx(i);
    }
    let (guest, host) = (l.guest, l.host);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let sender = std::thread::spawn(move || {
        let sock = UdpSocket::bind((host, 0)).unwrap();
        let payload = [0x42u8; 1400];
        let mut sent = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if sock.send_to(&payload, (guest, 9)).is_ok() {
                sent += 1;
            }
        }
        sent
    });
    let start = Instant::now();
    let (mut frames, mut bytes, mut waits) = (0u64, 0u64, 0u64);
    while start.elapsed() < Duration::from_secs(1) {
        let got = received(&mut l);
        if got.is_empty() {
            l.d.wait(Duration::from_millis(10));
            waits += 1;
            continue;
        }
        for f in got {
            if ipv4_payload(&f, 17).is_some_and(|u| u.len() == 8 + 1400) {
                frames += 1;
                bytes += 1400;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = sender.join().unwrap();
    let stats = l.d.t.device().stats();
    println!(
        "host process -> TAP -> device -> driver: {frames} datagrams of 1400 bytes in {secs:.2} s = {:.0} Mbit/s, {:.0} packets/s; {sent} sent (the rest dropped by the TAP's queue); exits (waits) per packet {:.4}; device runs {}",
        bytes as f64 * 8.0 / secs / 1e6,
        frames as f64 / secs,
        waits as f64 / frames.max(1) as f64,
        stats.runs,
    );
    assert!(frames > 100, "only {frames} datagrams arrived");
    assert!(!l.d.needs_reset());
}

/// The TAP hands the driver what it acked: with the guest offloads a host
/// datagram keeps its checksum partial (`NEEDS_CSUM`: the kernel left the
/// sum to the NIC), without them it arrives summed and unmarked.
#[test]
fn the_taps_offloads_follow_what_the_driver_acked() {
    let base = VERSION_1 | F_MAC | RING_EVENT_IDX;
    let offloads = F_CSUM | F_GUEST_CSUM | F_GUEST_TSO4 | F_HOST_TSO4;
    for (net, features, flags) in [(5, base, 0u8), (6, base | offloads, 1)] {
        let mut l = link_acking(net, features);
        for i in 0..8 {
            l.d.post_rx(i);
        }
        let sock = UdpSocket::bind((l.host, 0)).unwrap();
        sock.send_to(b"flags?", (l.guest, 9998)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = None;
        while got.is_none() && Instant::now() < deadline {
            l.d.wait(Duration::from_millis(200));
            for (id, len) in l.d.take_used(0) {
                let mut f = vec![0u8; len as usize];
                l.d.mem
                    .read_slice(&mut f, GuestAddress(buf(0, id as u16)))
                    .unwrap();
                l.d.post_rx(id as u16);
                if ipv4_payload(&f[HDR_LEN..], 17).is_some_and(|u| u.ends_with(b"flags?")) {
                    got = Some(f[0]);
                }
            }
        }
        assert_eq!(got, Some(flags), "header flags with features {features:#x}");
    }
}

/// A driver's offload header is the host kernel's to check: one that
/// points its checksum past the frame is refused there (the frame is
/// counted dropped), and the NIC goes on sending.
#[test]
fn a_hostile_offload_header_is_dropped_by_the_host_and_the_nic_goes_on() {
    let base = VERSION_1 | F_MAC | RING_EVENT_IDX;
    let mut l = link_acking(7, base | F_CSUM | F_HOST_TSO4);
    let sock = UdpSocket::bind((l.host, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = sock.local_addr().unwrap().port();
    let udp = |text: &[u8]| {
        let mut u = vec![0u8; 8];
        u[0..2].copy_from_slice(&9997u16.to_be_bytes());
        u[2..4].copy_from_slice(&port.to_be_bytes());
        u[4..6].copy_from_slice(&((8 + text.len()) as u16).to_be_bytes());
        u.extend_from_slice(text);
        ipv4_frame(l.tap_mac, GUEST_MAC, l.guest, l.host, 17, &u)
    };
    let bad = udp(b"hostile");
    let mut chain = vec![0u8; HDR_LEN];
    chain[0] = 1; // NEEDS_CSUM
    chain[6..8].copy_from_slice(&60_000u16.to_le_bytes()); // csum_start
    chain[8..10].copy_from_slice(&6u16.to_le_bytes());
    chain.extend_from_slice(&bad);
    let at = buf(1, 0);
    l.d.mem.write_slice(&chain, GuestAddress(at)).unwrap();
    l.d.write_desc(1, 0, at, chain.len() as u32, 0, 0);
    l.d.publish(1, 0, false);
    l.d.wait(Duration::ZERO);
    assert_eq!(l.d.t.device().stats().tx_dropped, 1);
    assert!(!l.d.needs_reset());
    l.d.tx(1, &udp(b"fine"), false);
    l.d.wait(Duration::ZERO);
    let mut got = [0u8; 64];
    let (n, _) = sock.recv_from(&mut got).expect("the good datagram");
    assert_eq!(&got[..n], b"fine");
}
