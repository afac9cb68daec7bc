//! The stack over in-memory wires: a loopback NIC (one stack talks to
//! itself) and a crossed pair (two stacks in two threads), with a host
//! whose identity a test can change to play a clone.

use crate::*;
use std::boxed::Box;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use std::vec;
use std::vec::Vec;

type Queue = Arc<Mutex<VecDeque<Vec<u8>>>>;

/// Frames on the wire carry the 12-byte virtio-net header. A NIC with
/// offloads marks what it sends as the guest driver does
/// (`offload::mark_tx`), and every NIC settles what it receives as the
/// driver does (`offload::rx_checksum_ok`; without offloads a partial
/// checksum is completed, as the host kernel does for such a NIC).
struct WireNic {
    rx: Queue,
    tx: Queue,
    offloads: bool,
    /// The longest frame this NIC sent.
    longest: Arc<AtomicUsize>,
}

impl WireNic {
    fn new(rx: Queue, tx: Queue) -> WireNic {
        WireNic {
            rx,
            tx,
            offloads: false,
            longest: Default::default(),
        }
    }
}

impl Nic for WireNic {
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        let mut f = self.rx.lock().unwrap().pop_front()?;
        let (hdr, frame) = f.split_at_mut(offload::HDR);
        let hdr: &[u8; offload::HDR] = (&*hdr).try_into().unwrap();
        if !offload::rx_checksum_ok(hdr, frame, self.offloads) {
            return Some(0);
        }
        buf[..frame.len()].copy_from_slice(frame);
        Some(frame.len())
    }
    fn can_transmit(&mut self) -> bool {
        self.tx.lock().unwrap().len() < 256
    }
    fn transmit(&mut self, frame: &[u8]) -> bool {
        self.longest.fetch_max(frame.len(), Ordering::Relaxed);
        let mut f = vec![0u8; offload::HDR];
        f.extend_from_slice(frame);
        if self.offloads {
            let (hdr, frame) = f.split_at_mut(offload::HDR);
            offload::mark_tx(hdr.try_into().unwrap(), frame);
        }
        self.tx.lock().unwrap().push_back(f);
        true
    }
    fn offloads(&self) -> bool {
        self.offloads
    }
}

#[derive(Default)]
struct Counters {
    waits: u64,
    waited_us: u64,
}

struct TestHost {
    t0: Instant,
    id: Arc<Mutex<Identity>>,
    counters: Arc<Mutex<Counters>>,
    seed: u64,
}

impl Host for TestHost {
    fn now_us(&mut self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }
    fn wait(&mut self, timeout_us: u64) {
        let mut c = self.counters.lock().unwrap();
        c.waits += 1;
        c.waited_us += timeout_us;
        drop(c);
        std::thread::sleep(Duration::from_micros(timeout_us.min(200)));
    }
    fn identity(&mut self) -> Identity {
        *self.id.lock().unwrap()
    }
    fn random(&mut self) -> u64 {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.seed
    }
}

const FAMILY: u8 = 9;

fn identity(member: u32) -> Identity {
    let f = FamilyNet::new(FAMILY).unwrap();
    Identity {
        mac: f.mac_of(member).unwrap(),
        ip: Ipv4Addr::from_bits(f.ip_of(member).unwrap()),
        prefix_len: sf_abi::net::PREFIX_LEN,
        family: Some(f),
    }
}

struct Handle {
    id: Arc<Mutex<Identity>>,
    counters: Arc<Mutex<Counters>>,
}

fn stack(nic: WireNic, member: u32) -> (Net, Handle) {
    let id = Arc::new(Mutex::new(identity(member)));
    let counters = Arc::new(Mutex::new(Counters::default()));
    let host = TestHost {
        t0: Instant::now(),
        id: id.clone(),
        counters: counters.clone(),
        seed: member as u64 + 1,
    };
    let net = Net::new(Box::new(nic), Box::new(host)).unwrap();
    (net, Handle { id, counters })
}

fn loopback(member: u32) -> (Net, Handle) {
    let q: Queue = Default::default();
    stack(WireNic::new(q.clone(), q), member)
}

fn pair() -> (WireNic, WireNic) {
    let (a, b): (Queue, Queue) = Default::default();
    (WireNic::new(a.clone(), b.clone()), WireNic::new(b, a))
}

fn fnv64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn pattern(n: usize, salt: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect()
}

const SEC: Option<u64> = Some(5_000_000);

#[test]
fn tcp_round_trip_over_loopback_then_eof_after_close() {
    let (mut net, _) = loopback(0);
    let me = net.my_addr();
    assert_eq!(me, Ipv4Addr::new(10, FAMILY, 0, 1));
    let l = net.tcp_listen(7000).unwrap();
    let c = net.tcp_connect(me, 7000, SEC).unwrap();
    let a = net.tcp_accept(l, SEC).unwrap();
    let msg = pattern(20_000, 7);
    net.tcp_write_all(c, &msg, SEC).unwrap();
    let mut got = vec![0u8; msg.len()];
    net.tcp_read_exact(a, &mut got, SEC).unwrap();
    assert_eq!(fnv64(&got), fnv64(&msg));
    net.tcp_write_all(a, b"ack", SEC).unwrap();
    let mut ack = [0u8; 3];
    net.tcp_read_exact(c, &mut ack, SEC).unwrap();
    assert_eq!(&ack, b"ack");
    assert_eq!(net.tcp_peer(a).unwrap().0, me);
    net.tcp_close(c).unwrap();
    let mut rest = [0u8; 8];
    assert_eq!(net.tcp_recv(a, &mut rest, SEC), Ok(0));
    assert_eq!(
        net.tcp_read_exact(a, &mut rest, SEC),
        Err(NetError::UnexpectedEof)
    );
    net.tcp_close(a).unwrap();
    assert_eq!(net.tcp_close(a), Err(NetError::BadSocket));
    assert_eq!(net.tcp_send(c, b"x", SEC), Err(NetError::BadSocket));
}

#[test]
fn two_stacks_stream_a_megabyte_through_small_windows() {
    let (wa, wb) = pair();
    stream_between(wa, wb, 1 << 20, Some(8 << 10));
}

#[test]
fn a_clone_gets_its_new_address_and_the_parents_sockets_reset() {
    let (mut net, h) = loopback(0);
    let l = net.tcp_listen(7100).unwrap();
    let c = net.tcp_connect(net.my_addr(), 7100, SEC).unwrap();
    let a = net.tcp_accept(l, SEC).unwrap();
    let u = net.udp_bind(5000).unwrap();
    // What the VMM does before a clone's first instruction.
    *h.id.lock().unwrap() = identity(3);
    let mut buf = [0u8; 4];
    assert_eq!(net.tcp_recv(a, &mut buf, SEC), Err(NetError::Reset));
    assert_eq!(net.tcp_send(c, b"x", SEC), Err(NetError::Reset));
    assert_eq!(net.tcp_accept(l, SEC), Err(NetError::Reset));
    assert_eq!(
        net.udp_send_to(u, b"x", net.my_addr(), 1, SEC),
        Err(NetError::Reset)
    );
    assert_eq!(net.my_addr(), Ipv4Addr::new(10, FAMILY, 0, 4));
    assert_eq!(net.identity().mac, [2, 0x53, 0x46, FAMILY, 0, 3]);
    assert_eq!(net.readdressed, 1);
    for s in [a, c, l, u] {
        net.close(s).unwrap();
    }
    // The same port again, on the new address.
    let l = net.tcp_listen(7100).unwrap();
    let c = net.tcp_connect(net.addr_of(3).unwrap(), 7100, SEC).unwrap();
    let a = net.tcp_accept(l, SEC).unwrap();
    net.tcp_write_all(c, b"new!", SEC).unwrap();
    net.tcp_read_exact(a, &mut buf, SEC).unwrap();
    assert_eq!(&buf, b"new!");
    // The parent's old address is no longer ours.
    assert_eq!(
        net.tcp_connect(Ipv4Addr::new(10, FAMILY, 0, 1), 7100, Some(300_000)),
        Err(NetError::TimedOut)
    );
}

#[test]
fn udp_datagrams_keep_their_sender_and_boundaries() {
    let (mut net, _) = loopback(0);
    let a = net.udp_bind(6000).unwrap();
    let b = net.udp_bind(0).unwrap();
    let bport = net.udp_port(b).unwrap();
    assert!(bport >= 49152);
    let me = net.my_addr();
    net.udp_send_to(b, b"one", me, 6000, SEC).unwrap();
    net.udp_send_to(b, b"second", me, 6000, SEC).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(net.udp_recv_from(a, &mut buf, SEC), Ok((3, me, bport)));
    assert_eq!(&buf[..3], b"one");
    let mut small = [0u8; 2];
    assert_eq!(net.udp_recv_from(a, &mut small, SEC), Ok((2, me, bport)));
    assert_eq!(&small, b"se");
    assert_eq!(
        net.udp_recv_from(a, &mut buf, Some(50_000)),
        Err(NetError::TimedOut)
    );
    let big = vec![0u8; udp::UDP_MAX_PAYLOAD + 1];
    assert_eq!(
        net.udp_send_to(b, &big, me, 6000, SEC),
        Err(NetError::InvalidArgument)
    );
    assert_eq!(net.udp_bind(6000), Err(NetError::AddrInUse));
}

#[test]
fn bad_arguments_and_refusals_are_errors_not_hangs() {
    let (mut net, _) = loopback(0);
    let me = net.my_addr();
    assert_eq!(net.tcp_listen(0), Err(NetError::InvalidArgument));
    let l = net.tcp_listen(80).unwrap();
    assert_eq!(net.tcp_listen(80), Err(NetError::AddrInUse));
    // UDP has ports of its own.
    let u = net.udp_bind(80).unwrap();
    assert_eq!(net.udp_bind(80), Err(NetError::AddrInUse));
    net.close(u).unwrap();
    assert_eq!(
        net.tcp_connect(me, 81, SEC),
        Err(NetError::ConnectionRefused)
    );
    assert_eq!(net.tcp_connect(me, 0, SEC), Err(NetError::InvalidArgument));
    assert_eq!(
        net.tcp_connect(Ipv4Addr::UNSPECIFIED, 80, SEC),
        Err(NetError::InvalidArgument)
    );
    assert_eq!(net.tcp_accept(l, Some(20_000)), Err(NetError::TimedOut));
    assert_eq!(net.tcp_accept(SockId(999), SEC), Err(NetError::BadSocket));
    assert_eq!(
        net.tcp_recv(l, &mut [0u8; 4], SEC),
        Err(NetError::BadSocket)
    );
    assert_eq!(
        net.udp_recv_from(l, &mut [0u8; 4], SEC),
        Err(NetError::BadSocket)
    );
    assert_eq!(net.addr_of(0), Some(me));
    assert_eq!(net.addr_of(sf_abi::net::MAX_MEMBERS), None);
    net.close(l).unwrap();
    assert_eq!(net.close(l), Err(NetError::BadSocket));
}

#[test]
fn an_idle_wait_sleeps_in_the_host_instead_of_spinning() {
    let (mut net, h) = loopback(0);
    let u = net.udp_bind(6100).unwrap();
    let t = Instant::now();
    assert_eq!(
        net.udp_recv_from(u, &mut [0u8; 8], Some(100_000)),
        Err(NetError::TimedOut)
    );
    assert!(t.elapsed() >= Duration::from_millis(100));
    let c = h.counters.lock().unwrap();
    // Every pass that found nothing to do asked the host to sleep until the
    // deadline, so nearly all of the 100 ms was asked for as sleep.
    assert!(c.waits > 0);
    assert!(c.waited_us >= 80_000, "waited {} us", c.waited_us);
}

#[test]
fn a_listener_backlog_holds_connections_made_before_accept() {
    let (mut net, _) = loopback(0);
    net.backlog = 4;
    let me = net.my_addr();
    let l = net.tcp_listen(7200).unwrap();
    let clients: Vec<SockId> = (0..4)
        .map(|_| net.tcp_connect(me, 7200, SEC).unwrap())
        .collect();
    for (i, &c) in clients.iter().enumerate() {
        net.tcp_write_all(c, &[i as u8], SEC).unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        let a = net.tcp_accept(l, SEC).unwrap();
        let mut b = [0u8; 1];
        net.tcp_read_exact(a, &mut b, SEC).unwrap();
        seen.push(b[0]);
    }
    seen.sort();
    assert_eq!(seen, [0, 1, 2, 3]);
    // Accepting refilled the backlog: a fifth connection is taken too.
    let c = net.tcp_connect(me, 7200, SEC).unwrap();
    net.tcp_accept(l, SEC).unwrap();
    net.tcp_close(c).unwrap();
}

#[test]
fn sockets_made_right_after_a_clone_belong_to_the_clone() {
    let (mut net, h) = loopback(0);
    let old = net.tcp_listen(7300).unwrap();
    *h.id.lock().unwrap() = identity(5);
    // No poll in between: the calls that make sockets look first.
    let l = net.tcp_listen(7301).unwrap();
    let u = net.udp_bind(7302).unwrap();
    assert_eq!(net.my_addr(), Ipv4Addr::new(10, FAMILY, 0, 6));
    let c = net.tcp_connect(net.my_addr(), 7301, SEC).unwrap();
    net.tcp_accept(l, SEC).unwrap();
    net.udp_send_to(u, b"hi", net.my_addr(), 7302, SEC).unwrap();
    assert_eq!(net.udp_recv_from(u, &mut [0u8; 4], SEC).unwrap().0, 2);
    assert_eq!(net.tcp_accept(old, Some(1000)), Err(NetError::Reset));
    net.tcp_close(c).unwrap();
}

/// A peer that speaks raw frames: what the host's kernel does on a TAP.
mod raw {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::*;

    pub const PEER_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x99]);

    pub fn peer_ip() -> Ipv4Addr {
        Ipv4Addr::new(10, FAMILY, 255, 254)
    }

    pub fn eth(dst: EthernetAddress, ethertype: EthernetProtocol, payload: &[u8]) -> Vec<u8> {
        let repr = EthernetRepr {
            src_addr: PEER_MAC,
            dst_addr: dst,
            ethertype,
        };
        let mut f = vec![0u8; repr.buffer_len() + payload.len()];
        let mut frame = EthernetFrame::new_unchecked(&mut f);
        repr.emit(&mut frame);
        frame.payload_mut().copy_from_slice(payload);
        f
    }

    pub fn echo_request(to: Identity, seq: u16) -> Vec<u8> {
        let icmp = Icmpv4Repr::EchoRequest {
            ident: 0x5346,
            seq_no: seq,
            data: b"snowflock",
        };
        let ip = Ipv4Repr {
            src_addr: peer_ip(),
            dst_addr: to.ip,
            next_header: IpProtocol::Icmp,
            payload_len: icmp.buffer_len(),
            hop_limit: 64,
        };
        let caps = ChecksumCapabilities::default();
        let mut p = vec![0u8; ip.buffer_len() + icmp.buffer_len()];
        let mut packet = Ipv4Packet::new_unchecked(&mut p);
        ip.emit(&mut packet, &caps);
        icmp.emit(
            &mut Icmpv4Packet::new_unchecked(packet.payload_mut()),
            &caps,
        );
        eth(EthernetAddress(to.mac), EthernetProtocol::Ipv4, &p)
    }

    /// The answer to an ARP request for the peer, if `frame` is one.
    pub fn arp_answer(frame: &[u8]) -> Option<Vec<u8>> {
        let f = EthernetFrame::new_checked(frame).ok()?;
        if f.ethertype() != EthernetProtocol::Arp {
            return None;
        }
        let ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } = ArpRepr::parse(&ArpPacket::new_checked(f.payload()).ok()?).ok()?
        else {
            return None;
        };
        if target_protocol_addr != peer_ip() {
            return None;
        }
        let reply = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: PEER_MAC,
            source_protocol_addr: peer_ip(),
            target_hardware_addr: source_hardware_addr,
            target_protocol_addr: source_protocol_addr,
        };
        let mut p = vec![0u8; reply.buffer_len()];
        reply.emit(&mut ArpPacket::new_unchecked(&mut p));
        Some(eth(source_hardware_addr, EthernetProtocol::Arp, &p))
    }

    /// The sequence number of an ICMP echo reply to the peer.
    pub fn echo_reply_seq(frame: &[u8]) -> Option<u16> {
        let f = EthernetFrame::new_checked(frame).ok()?;
        let ip = Ipv4Packet::new_checked(f.payload()).ok()?;
        if f.ethertype() != EthernetProtocol::Ipv4 || ip.dst_addr() != peer_ip() {
            return None;
        }
        let icmp = Icmpv4Packet::new_checked(ip.payload()).ok()?;
        match Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).ok()? {
            Icmpv4Repr::EchoReply { seq_no, data, .. } if data == b"snowflock" => Some(seq_no),
            _ => None,
        }
    }
}

/// A raw frame as it travels on the test wire: after an empty header.
fn with_header(frame: Vec<u8>) -> Vec<u8> {
    let mut f = vec![0u8; offload::HDR];
    f.extend_from_slice(&frame);
    f
}

#[test]
fn the_stack_answers_ping_while_a_program_waits() {
    let (peer, nic) = pair();
    let (mut net, _) = stack(nic, 0);
    let id = net.identity();
    let u = net.udp_bind(6200).unwrap();
    let mut answered = Vec::new();
    for seq in 0..3u16 {
        peer.tx
            .lock()
            .unwrap()
            .push_back(with_header(raw::echo_request(id, seq)));
        // A program blocked in a receive: the stack still runs.
        assert_eq!(
            net.udp_recv_from(u, &mut [0u8; 4], Some(20_000)),
            Err(NetError::TimedOut)
        );
        while let Some(f) = peer.rx.lock().unwrap().pop_front() {
            let f = &f[offload::HDR..];
            if let Some(a) = raw::arp_answer(f) {
                peer.tx.lock().unwrap().push_back(with_header(a));
            } else if let Some(s) = raw::echo_reply_seq(f) {
                answered.push(s);
            }
        }
    }
    // The first request may be spent on resolving the peer's address.
    assert!(
        answered.contains(&1) && answered.contains(&2),
        "answered {answered:?}"
    );
}

#[test]
fn closed_streams_whose_peer_never_closes_do_not_pile_up() {
    let (mut net, _) = loopback(0);
    let me = net.my_addr();
    net.backlog = 1;
    net.tcp_buffer = 1024;
    let l = net.tcp_listen(7400).unwrap();
    let mut kept = Vec::new();
    for _ in 0..100 {
        let c = net.tcp_connect(me, 7400, SEC).unwrap();
        // The accepted side stays open: the closed side waits in FIN-WAIT-2.
        kept.push(net.tcp_accept(l, SEC).unwrap());
        net.tcp_close(c).unwrap();
    }
    assert!(net.closing.len() <= 64, "{} closing", net.closing.len());
    assert!(net.sockets.iter().count() <= 64 + 100 + 1);
}

/// Streams `total` bytes from a stack on `wa` (member 2) to one on `wb`
/// (member 1), which answers with their checksum; the sender checks it.
/// Streams `total` bytes from a stack on `wa` to one on `wb` and checks the
/// receiver's checksum; `tcp_buffer` sets both sides' socket buffers.
fn stream_between(wa: WireNic, wb: WireNic, total: usize, tcp_buffer: Option<usize>) {
    let server = std::thread::spawn(move || {
        let (mut net, _) = stack(wb, 1);
        if let Some(b) = tcp_buffer {
            net.tcp_buffer = b;
        }
        let l = net.tcp_listen(9100).unwrap();
        let s = net.tcp_accept(l, SEC).unwrap();
        let mut got = vec![0u8; total];
        net.tcp_read_exact(s, &mut got, SEC).unwrap();
        net.tcp_write_all(s, &fnv64(&got).to_le_bytes(), SEC)
            .unwrap();
        net.tcp_close(s).unwrap();
    });
    let (mut net, _) = stack(wa, 2);
    if let Some(b) = tcp_buffer {
        net.tcp_buffer = b;
    }
    let peer = net.addr_of(1).unwrap();
    // The server may not listen yet: a refused attempt is retried.
    let c = loop {
        match net.tcp_connect(peer, 9100, SEC) {
            Ok(c) => break c,
            Err(NetError::ConnectionRefused) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("connect: {e:?}"),
        }
    };
    let data = pattern(total, 5);
    net.tcp_write_all(c, &data, SEC).unwrap();
    let mut sum = [0u8; 8];
    net.tcp_read_exact(c, &mut sum, SEC).unwrap();
    assert_eq!(u64::from_le_bytes(sum), fnv64(&data));
    net.tcp_close(c).unwrap();
    server.join().unwrap();
}

#[test]
fn offloading_stacks_move_64k_segments_with_their_checksums_left_to_the_host() {
    let (mut wa, mut wb) = pair();
    wa.offloads = true;
    wb.offloads = true;
    let longest = wa.longest.clone();
    stream_between(wa, wb, 4 << 20, None);
    let longest = longest.load(Ordering::Relaxed);
    assert!(
        longest > 60_000 && longest <= OFFLOAD_FRAME,
        "longest frame {longest}"
    );
}

#[test]
fn an_offloading_stack_keeps_to_the_mss_of_a_peer_without_offloads() {
    let (mut wa, wb) = pair();
    wa.offloads = true;
    let longest = wa.longest.clone();
    // The peer checks every TCP checksum itself: each partial one the
    // sender left was completed on the way, or nothing would arrive.
    stream_between(wa, wb, 1 << 20, None);
    let longest = longest.load(Ordering::Relaxed);
    assert!(longest <= MAX_FRAME, "longest frame {longest}");
}

#[test]
fn udp_keeps_to_the_family_mtu_on_a_nic_with_offloads() {
    let q: Queue = Default::default();
    let mut nic = WireNic::new(q.clone(), q);
    nic.offloads = true;
    let longest = nic.longest.clone();
    let (mut net, _) = stack(nic, 0);
    let me = net.my_addr();
    let a = net.udp_bind(6100).unwrap();
    let big = vec![7u8; udp::UDP_MAX_PAYLOAD + 1];
    assert_eq!(
        net.udp_send_to(a, &big, me, 6100, SEC),
        Err(NetError::InvalidArgument)
    );
    net.udp_send_to(a, &big[1..], me, 6100, SEC).unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, _, _) = net.udp_recv_from(a, &mut buf, SEC).unwrap();
    assert_eq!(n, udp::UDP_MAX_PAYLOAD);
    assert_eq!(longest.load(Ordering::Relaxed), MAX_FRAME);
}
