//! virtio-net over a datagram socket pair standing in for the TAP: frames
//! both ways, a hostile driver's chains, the wait register, save/restore
//! and the clone hook, and exits per packet for bulk streams.

use super::features::{RING_EVENT_IDX, VERSION_1};
use super::mmio::{reg, MmioTransport};
use super::net::{
    tap_offloads, Net, FEATURES, F_CSUM, F_GUEST_CSUM, F_GUEST_TSO4, F_HOST_TSO4, F_MAC, HDR_LEN,
    MAX_GSO_FRAME, TX_NOTIFY_EVERY,
};
use super::test_driver::*;
use crate::net::tap::{TUN_F_CSUM, TUN_F_TSO4};
use sf_abi::net::FamilyNet;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

fn frame(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn nic() -> (Driver, std::os::fd::OwnedFd) {
    let (dev, peer) = socketpair();
    let fam = FamilyNet::new(7).unwrap();
    let d = Driver::start(
        Net::new(Some(dev), fam, 3).unwrap(),
        VERSION_1 | F_MAC | RING_EVENT_IDX,
    );
    (d, peer)
}

#[test]
fn config_space_holds_the_family_mac() {
    let (mut d, _p) = nic();
    let mut cfg = [0u8; 8];
    d.t.read(reg::CONFIG, &mut cfg);
    assert_eq!(&cfg[..6], &FamilyNet::new(7).unwrap().mac_of(3).unwrap());
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 1, "link up");
    let mut one = [0u8; 1];
    d.t.read(reg::CONFIG + 5, &mut one);
    assert_eq!(one[0], cfg[5]);
    let mut far = [0xffu8; 4];
    d.t.read(reg::CONFIG + 0x800, &mut far);
    assert_eq!(far, [0; 4]);
    assert_eq!(
        d.t.device().ip(),
        FamilyNet::new(7).unwrap().ip_of(3).unwrap()
    );
}

#[test]
fn transmit_sends_header_and_frame() {
    let (mut d, peer) = nic();
    let f = frame(600, 1);
    d.tx(0, &f, false);
    d.w(reg::QUEUE_NOTIFY, 1);
    let got = recv(&peer).expect("a frame");
    assert_eq!(got.len(), HDR_LEN + 600);
    assert_eq!(&got[HDR_LEN..], &f[..]);
    assert_eq!(d.take_used(1), vec![(0, 0)]);
    assert_eq!(d.t.device().stats().tx_packets, 1);
}

#[test]
fn receive_fills_a_posted_buffer() {
    let (mut d, peer) = nic();
    let mut f = vec![0u8; HDR_LEN];
    f.extend(frame(1000, 2));
    send(&peer, &f);
    d.run();
    assert!(d.take_used(0).is_empty(), "no buffer posted yet");
    d.post_rx(5);
    d.run(); // posting needs no notify: the next exit takes it
    let used = d.take_used(0);
    assert_eq!(used, vec![(5, f.len() as u32)]);
    let mut got = vec![0u8; f.len()];
    d.mem.read_slice(&mut got, GuestAddress(buf(0, 5))).unwrap();
    assert_eq!(&got[HDR_LEN..], &f[HDR_LEN..]);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
}

#[test]
fn oversized_frame_is_dropped_and_the_buffer_reused() {
    let (mut d, peer) = nic();
    send(&peer, &[0u8; HDR_LEN + 4000]);
    send(&peer, &[0u8; HDR_LEN + 100]);
    d.post_rx(0);
    d.run();
    assert_eq!(d.take_used(0), vec![(0, (HDR_LEN + 100) as u32)]);
    assert_eq!(d.t.device().stats().rx_dropped, 1);
    assert!(!d.needs_reset());
}

#[test]
fn descriptor_loop_is_bounded() {
    let (mut d, peer) = nic();
    // Descriptor 0 chains to itself: 256 x 4 KiB is over the chain limit.
    d.write_desc(1, 0, buf(1, 0), 4096, NEXT, 0);
    d.publish(1, 0, false);
    d.w(reg::QUEUE_NOTIFY, 1);
    assert!(d.needs_reset());
    assert!(recv(&peer).is_none(), "nothing sent");
    // A short loop stays under the limit: the walk stops at the queue size.
    let (mut d, peer) = nic();
    d.write_desc(1, 0, buf(1, 0), 16, NEXT, 0);
    d.publish(1, 0, false);
    d.w(reg::QUEUE_NOTIFY, 1);
    assert_eq!(recv(&peer).map(|f| f.len()), Some(16 * 256));
    assert!(!d.needs_reset());
}

#[test]
fn buffers_outside_the_window_are_refused() {
    // Transmit from the guest kernel's memory: nothing leaves.
    let (mut d, peer) = nic();
    d.write_desc(1, 0, 0x1000, 100, 0, 0);
    d.publish(1, 0, true);
    d.kick(1);
    assert!(d.needs_reset());
    assert!(recv(&peer).is_none());
    // Receive into the guest kernel's memory (or past RAM): nothing written.
    for addr in [0x1000u64, RAM - 1024, u64::MAX - 100] {
        let (mut d, peer) = nic();
        d.mem
            .write_slice(&[0xaa; 64], GuestAddress(0x1000))
            .unwrap();
        send(&peer, &[0u8; HDR_LEN + 64]);
        d.write_desc(0, 0, addr, BUF as u32, WRITE, 0);
        d.publish(0, 0, true);
        d.kick(0);
        assert!(d.needs_reset(), "{addr:#x}");
        let mut old = [0u8; 64];
        d.mem.read_slice(&mut old, GuestAddress(0x1000)).unwrap();
        assert_eq!(old, [0xaa; 64]);
    }
}

#[test]
fn wrong_direction_and_short_chains_need_reset() {
    let (mut d, _p) = nic();
    d.write_desc(1, 0, buf(1, 0), 100, WRITE, 0);
    d.publish(1, 0, true);
    d.kick(1);
    assert!(d.needs_reset(), "device-writable buffer on transmit");
    let (mut d, _p) = nic();
    d.write_desc(1, 0, buf(1, 0), 4, 0, 0);
    d.publish(1, 0, true);
    d.kick(1);
    assert!(d.needs_reset(), "shorter than the header");
    let (mut d, peer) = nic();
    send(&peer, &[0u8; 100]);
    d.write_desc(0, 0, buf(0, 0), 200, WRITE, 0);
    d.publish(0, 0, true);
    d.kick(0);
    assert!(d.needs_reset(), "receive buffer too small for a full frame");
}

#[test]
fn available_index_far_ahead_needs_reset() {
    let (mut d, _p) = nic();
    d.mem
        .write_obj(1000u16, GuestAddress(avail(1) + 2))
        .unwrap();
    d.w(reg::QUEUE_NOTIFY, 1);
    assert!(d.needs_reset());
    let (mut d, _p) = nic();
    d.mem
        .write_obj(1000u16, GuestAddress(avail(0) + 2))
        .unwrap();
    d.run();
    assert!(d.needs_reset());
}

#[test]
fn wait_sleeps_until_a_frame_arrives_and_delivers_it() {
    let (mut d, peer) = nic();
    d.post_rx(0);
    let t = Instant::now();
    d.wait(Duration::from_millis(30));
    assert!(
        t.elapsed() >= Duration::from_millis(25),
        "slept: {:?}",
        t.elapsed()
    );
    assert!(d.take_used(0).is_empty());
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        send(&peer, &[1u8; HDR_LEN + 60]);
        peer
    });
    d.wait(Duration::from_secs(20));
    assert_eq!(d.take_used(0), vec![(0, (HDR_LEN + 60) as u32)]);
    drop(sender.join().unwrap());
}

#[test]
fn wait_does_not_sleep_when_its_own_run_delivered_a_frame() {
    let (mut d, peer) = nic();
    // A frame waits in the TAP, but the guest has posted no buffer yet.
    send(&peer, &[2u8; HDR_LEN + 60]);
    d.post_rx(0);
    let t = Instant::now();
    // The run that starts the wait delivers it: the guest must get it now,
    // not after the timeout (nothing else arrives).
    d.wait(Duration::from_secs(5));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "slept: {:?}",
        t.elapsed()
    );
    assert_eq!(d.take_used(0), vec![(0, (HDR_LEN + 60) as u32)]);
}

#[test]
fn save_restore_resumes_the_rings_and_clone_gets_a_new_identity() {
    let (mut d, peer) = nic();
    let fam = FamilyNet::new(7).unwrap();
    let eth = |src: [u8; 6], n: usize| {
        let mut f = vec![0xffu8; 6];
        f.extend_from_slice(&src);
        f.extend(frame(n, 1));
        f
    };
    let parent_mac = fam.mac_of(3).unwrap();
    for i in 0..3 {
        d.tx(i, &eth(parent_mac, 100), false);
    }
    d.run();
    assert_eq!(d.take_used(1).len(), 3);
    for _ in 0..3 {
        assert!(recv(&peer).is_some());
    }
    // Two more queued without a notify: in flight at the fork.
    d.tx(3, &eth(parent_mac, 60), false);
    d.tx(4, &eth(parent_mac, 60), false);
    let state = d.t.save();
    let bytes = bincode::serialize(&state).unwrap();
    let state: super::state::NetState = bincode::deserialize(&bytes).unwrap();
    let (dev2, peer2) = socketpair();
    let mut t2 = MmioTransport::<Net>::restore(&state, None).unwrap();
    assert!(t2.on_clone(9, Some(dev2)));
    d.t = t2;
    let mut cfg = [0u8; 6];
    d.t.read(reg::CONFIG, &mut cfg);
    assert_eq!(cfg, FamilyNet::new(7).unwrap().mac_of(9).unwrap());
    assert_eq!(d.r(reg::CONFIG_GENERATION), 1);
    // The clone's driver goes on where the parent's left off, on its own
    // TAP: the parent's two frames complete unsent, its own goes out.
    d.tx(5, &eth(fam.mac_of(9).unwrap(), 50), true);
    d.run();
    assert_eq!(d.take_used(1), vec![(3, 0), (4, 0), (5, 0)]);
    assert_eq!(recv(&peer2).unwrap().len(), HDR_LEN + 62);
    assert!(recv(&peer2).is_none(), "only the clone's own frame");
    assert!(recv(&peer).is_none(), "nothing on the parent's TAP");
}

#[test]
fn restore_refuses_a_corrupt_state() {
    let (d, _p) = nic();
    let good = d.t.save();
    let mut s = good.clone();
    s.queues[0].size = 3;
    assert!(MmioTransport::<Net>::restore(&s, None).is_err());
    let mut s = good.clone();
    s.queues[1].used_ring = 0x1000;
    assert!(MmioTransport::<Net>::restore(&s, None).is_err());
    let mut s = good.clone();
    s.queues.pop();
    assert!(MmioTransport::<Net>::restore(&s, None).is_err());
    let mut s = good;
    s.mac = [0; 6];
    assert!(MmioTransport::<Net>::restore(&s, None).is_err());
}

/// Exits per packet of a bulk stream: TX with a driver that notifies as
/// EVENT_IDX says and waits when its ring is full; RX with a driver that
/// keeps every buffer posted and waits when it has nothing to read.
#[test]
fn exits_per_packet_in_bulk_streams() {
    const PACKETS: u64 = 4096;
    let (mut d, peer) = nic();
    let mut exits = 0u64;
    let mut sent = 0u64;
    let mut in_flight = 0u16;
    let mut next = 0u16;
    while sent < PACKETS {
        if in_flight == SIZE {
            d.w(reg::WAIT, 0); // ring full: let the host catch up
            d.wait(Duration::ZERO);
            exits += 1;
            in_flight -= d.take_used(1).len() as u16;
            while recv(&peer).is_some() {}
            continue;
        }
        let before = d.notifies;
        d.tx(next % SIZE, &frame(1400, 0), true);
        exits += d.notifies - before;
        next = next.wrapping_add(1);
        in_flight += 1;
        sent += 1;
        in_flight -= d.take_used(1).len() as u16;
        while recv(&peer).is_some() {}
    }
    let tx_per_packet = exits as f64 / PACKETS as f64;
    // RX: the host side has frames queued; the guest reads what it gets
    // and waits when the used ring is empty.
    let mut rx_exits = 0u64;
    for i in 0..SIZE {
        d.post_rx(i);
    }
    rx_exits += 1; // the posts never notify; count one exit for the first wait
    let mut got = 0u64;
    let mut queued = 0u64;
    while got < PACKETS {
        while queued < PACKETS && try_send(&peer, &[0u8; HDR_LEN + 1400]) {
            queued += 1;
        }
        let used = d.take_used(0);
        if used.is_empty() {
            d.wait(Duration::from_millis(100));
            rx_exits += 1;
            continue;
        }
        for (id, _) in &used {
            d.post_rx(*id as u16);
        }
        got += used.len() as u64;
    }
    let rx_per_packet = rx_exits as f64 / PACKETS as f64;
    println!("exits per packet: tx {tx_per_packet:.4} rx {rx_per_packet:.4} ({PACKETS} packets of 1400 bytes)");
    assert!(
        exits <= PACKETS / u64::from(TX_NOTIFY_EVERY) + PACKETS / u64::from(SIZE) + 2,
        "tx exits {exits}"
    );
    assert!(rx_exits <= PACKETS / 16, "rx exits {rx_exits}");
    assert!(!d.needs_reset());
}

#[test]
fn clone_hook_takes_its_tap_and_asks_for_its_new_address() {
    use super::bus_device::{NetDevice, NET0};
    use crate::devices::{BusDevice, CloneContext};
    let (mut d, parent_peer) = nic();
    let mut dev = NetDevice {
        transport: std::mem::replace(
            &mut d.t,
            MmioTransport::new(Net::with_mac(None, [0; 6]), WINDOW),
        ),
    };
    let (tap, peer) = socketpair();
    let mut ctx = CloneContext {
        clone_id: 2,
        member: Some(12),
        ..Default::default()
    };
    ctx.resources.insert(NET0.into(), vec![tap]);
    dev.on_clone(&mut ctx).unwrap();
    let fam = FamilyNet::new(7).unwrap();
    let want = u64::from(fam.ip_of(12).unwrap()).to_le_bytes().to_vec();
    assert_eq!(
        ctx.guest_writes,
        vec![(
            sf_abi::layout::BOOT_INFO + sf_abi::boot_info::BootInfo::NET_IP_OFFSET as u64,
            want
        )]
    );
    assert_eq!(dev.transport.device().mac(), fam.mac_of(12).unwrap());
    // Frames now go to the clone's TAP only.
    d.t = dev.transport;
    d.tx(0, &frame(40, 0), false);
    d.run();
    assert!(recv(&peer).is_some());
    assert!(recv(&parent_peer).is_none());
    // Without a member number, the clone ID numbers it (flat family); no
    // TAP means no backend, never the parent's.
    let mut ctx = CloneContext {
        clone_id: 5,
        ..Default::default()
    };
    let mut dev = NetDevice { transport: d.t };
    dev.on_clone(&mut ctx).unwrap();
    assert_eq!(dev.transport.device().mac(), fam.mac_of(5).unwrap());
    assert!(dev.save().unwrap().len() < 1024, "state is small");
}

#[test]
fn a_remote_clone_rebuilds_the_nic_from_the_descriptor() {
    use super::bus_device::{factory, NET0};
    use crate::devices::{registry, BusDevice, CloneContext, RestoreContext};
    let (mut d, _parent_peer) = nic();
    d.tx(0, &frame(60, 0), true);
    d.run();
    let dev = super::bus_device::NetDevice {
        transport: std::mem::replace(
            &mut d.t,
            MmioTransport::new(Net::with_mac(None, [0; 6]), WINDOW),
        ),
    };
    let saved = dev.save().unwrap();
    let ctx = RestoreContext { mem_size: RAM };
    // The descriptor names the kind; the registry builds it.
    let mut remote = registry::build(super::bus_device::KIND, &ctx).unwrap();
    remote.restore(&saved, &ctx).unwrap();
    let (tap, peer) = socketpair();
    let mut cctx = CloneContext {
        clone_id: 1,
        member: Some(20),
        ..Default::default()
    };
    cctx.resources.insert(NET0.into(), vec![tap]);
    remote.on_clone(&mut cctx).unwrap();
    let mut cfg = [0u8; 6];
    remote.read(reg::CONFIG, &mut cfg);
    assert_eq!(cfg, FamilyNet::new(7).unwrap().mac_of(20).unwrap());
    // A saved window past this host's RAM, or garbage, is refused.
    let small = RestoreContext { mem_size: 1 << 20 };
    assert!(factory(&small).unwrap().restore(&saved, &small).is_err());
    assert!(factory(&ctx)
        .unwrap()
        .restore(&saved[..saved.len() / 2], &ctx)
        .is_err());
    drop(peer);
}

const OFFLOADS: u64 = F_CSUM | F_GUEST_CSUM | F_GUEST_TSO4 | F_HOST_TSO4;

#[test]
fn offloads_are_offered_and_the_tap_takes_only_what_the_driver_acked() {
    assert_eq!(FEATURES & OFFLOADS, OFFLOADS);
    assert_eq!(tap_offloads(VERSION_1 | F_MAC), 0);
    assert_eq!(
        tap_offloads(VERSION_1 | F_CSUM | F_HOST_TSO4),
        0,
        "sending only"
    );
    assert_eq!(tap_offloads(VERSION_1 | F_GUEST_CSUM), TUN_F_CSUM);
    assert_eq!(tap_offloads(VERSION_1 | F_GUEST_TSO4), 0, "TSO needs CSUM");
    assert_eq!(tap_offloads(VERSION_1 | OFFLOADS), TUN_F_CSUM | TUN_F_TSO4);
    // A driver that acks none of them negotiates and moves frames as before.
    let (mut d, peer) = nic();
    assert_eq!(d.t.acked_features() & OFFLOADS, 0);
    d.tx(0, &frame(100, 3), false);
    d.w(reg::QUEUE_NOTIFY, 1);
    assert_eq!(recv(&peer).map(|f| f.len()), Some(HDR_LEN + 100));
}

/// A TCPv4-looking frame of `len` bytes after a header marked for TSO.
fn tso_chain(len: usize) -> Vec<u8> {
    let mut hdr = [0u8; HDR_LEN];
    hdr[0] = 1; // NEEDS_CSUM
    hdr[1] = 1; // GSO TCPV4
    hdr[2..4].copy_from_slice(&66u16.to_le_bytes());
    hdr[4..6].copy_from_slice(&1398u16.to_le_bytes());
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
    hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
    let mut c = hdr.to_vec();
    c.extend(frame(len, 9));
    c
}

#[test]
fn offload_headers_and_64k_segments_pass_through_both_ways() {
    let (dev, peer) = socketpair();
    let mut d = Driver::start(
        Net::with_mac(Some(dev), [2, 0, 0, 0, 0, 1]),
        VERSION_1 | F_MAC | RING_EVENT_IDX | OFFLOADS,
    );
    // Transmit: a 64 KiB segment in one chain, its header untouched.
    let chain = tso_chain(MAX_GSO_FRAME);
    let at = buf(1, 0);
    d.mem.write_slice(&chain, GuestAddress(at)).unwrap();
    d.write_desc(1, 0, at, chain.len() as u32, 0, 0);
    d.publish(1, 0, false);
    d.w(reg::QUEUE_NOTIFY, 1);
    assert_eq!(recv(&peer).as_deref(), Some(&chain[..]));
    assert!(!d.needs_reset());
    // Receive: the TAP's header reaches the driver as it came, with
    // `num_buffers` 1, in a buffer big enough for a segment.
    let big = tso_chain(MAX_GSO_FRAME);
    send(&peer, &big);
    let rx = buf(0, 0);
    d.write_desc(0, 0, rx, big.len() as u32, WRITE, 0);
    d.publish(0, 0, false);
    d.run();
    assert_eq!(d.take_used(0), vec![(0, big.len() as u32)]);
    let mut got = vec![0u8; big.len()];
    d.mem.read_slice(&mut got, GuestAddress(rx)).unwrap();
    assert_eq!(&got[..10], &big[..10]);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    assert_eq!(&got[HDR_LEN..], &big[HDR_LEN..]);
    // One byte more than a segment is a driver error.
    let too_long = tso_chain(MAX_GSO_FRAME + 1);
    d.mem.write_slice(&too_long, GuestAddress(at)).unwrap();
    d.write_desc(1, 1, at, too_long.len() as u32, 0, 0);
    d.publish(1, 1, false);
    d.w(reg::QUEUE_NOTIFY, 1);
    assert!(d.needs_reset());
}

/// A 12-byte header (`flags`, `gso_type`, `hdr_len`, `gso_size`,
/// `csum_start`, `csum_offset`) in front of a 200-byte frame.
fn chain_with_header(flags: u8, gso: u8, gso_size: u16, start: u16, offset: u16) -> Vec<u8> {
    let mut c = vec![0u8; HDR_LEN];
    c[0] = flags;
    c[1] = gso;
    c[2..4].copy_from_slice(&54u16.to_le_bytes());
    c[4..6].copy_from_slice(&gso_size.to_le_bytes());
    c[6..8].copy_from_slice(&start.to_le_bytes());
    c[8..10].copy_from_slice(&offset.to_le_bytes());
    c.extend(frame(200, 4));
    c
}

/// Sends `chain` from descriptor `i`; whether the peer got it.
fn sent(d: &mut Driver, peer: &std::os::fd::OwnedFd, i: u16, chain: &[u8]) -> bool {
    let at = buf(1, i);
    d.mem.write_slice(chain, GuestAddress(at)).unwrap();
    d.write_desc(1, i, at, chain.len() as u32, 0, 0);
    d.publish(1, i, false);
    d.kick(1);
    recv(peer).is_some_and(|got| got == chain)
}

/// The host kernel is handed only the offloads the driver negotiated,
/// with checksum marks inside the frame: a guest cannot reach the TAP's
/// UDP, TCPv6 or ECN segmentation paths, nor an MSS below TCP's own floor. Anything else is
/// counted dropped, never sent, and the NIC goes on sending.
#[test]
fn offload_headers_outside_what_was_negotiated_never_reach_the_tap() {
    const NEEDS_CSUM: u8 = 1;
    const TCPV4: u8 = 1;
    let good_csum = chain_with_header(NEEDS_CSUM, 0, 0, 34, 16);
    let good_tso = chain_with_header(NEEDS_CSUM, TCPV4, 146, 34, 16);
    // Without offloads acked, neither mark may be used.
    let (mut d, peer) = nic();
    let mut i = 0;
    for (what, chain) in [("checksum", &good_csum), ("TSO", &good_tso)] {
        assert!(!sent(&mut d, &peer, i, chain), "{what} not negotiated");
        i += 1;
        assert!(sent(&mut d, &peer, i, &chain_with_header(0, 0, 0, 0, 0)));
        i += 1;
    }
    assert_eq!(d.t.device().stats().tx_dropped, 2);
    assert!(!d.needs_reset());
    // With them acked, the same frames pass, and every hostile header is
    // dropped.
    let (dev, peer) = socketpair();
    let mut d = Driver::start(
        Net::with_mac(Some(dev), [2, 0, 0, 0, 0, 1]),
        VERSION_1 | F_MAC | RING_EVENT_IDX | OFFLOADS,
    );
    assert!(sent(&mut d, &peer, 0, &good_csum));
    assert!(sent(&mut d, &peer, 1, &good_tso));
    let hostile = [
        (
            "UDP segmentation",
            chain_with_header(NEEDS_CSUM, 3, 146, 34, 6),
        ),
        (
            "TCPv6 segmentation",
            chain_with_header(NEEDS_CSUM, 4, 146, 34, 16),
        ),
        (
            "UDP L4 segmentation",
            chain_with_header(NEEDS_CSUM, 5, 146, 34, 6),
        ),
        (
            "ECN not offered",
            chain_with_header(NEEDS_CSUM, TCPV4 | 0x80, 146, 34, 16),
        ),
        ("zero MSS", chain_with_header(NEEDS_CSUM, TCPV4, 0, 34, 16)),
        // One byte per segment would make the host kernel cut ~65,000
        // packets out of one 64 KiB frame.
        (
            "one-byte MSS",
            chain_with_header(NEEDS_CSUM, TCPV4, 1, 34, 16),
        ),
        (
            "MSS below TCP's floor",
            chain_with_header(NEEDS_CSUM, TCPV4, 87, 34, 16),
        ),
        (
            "TSO without a partial checksum",
            chain_with_header(0, TCPV4, 146, 0, 0),
        ),
        ("unknown flag", chain_with_header(0x80, 0, 0, 0, 0)),
        (
            "checksum start past the frame",
            chain_with_header(NEEDS_CSUM, 0, 0, 200, 0),
        ),
        (
            "checksum field past the frame",
            chain_with_header(NEEDS_CSUM, 0, 0, 34, 165),
        ),
        (
            "wrapping marks",
            chain_with_header(NEEDS_CSUM, 0, 0, u16::MAX, u16::MAX),
        ),
    ];
    let mut i = 2;
    for (what, chain) in &hostile {
        assert!(!sent(&mut d, &peer, i, chain), "{what}");
        assert!(sent(&mut d, &peer, i + 1, &good_tso), "after {what}");
        i += 2;
    }
    assert_eq!(d.t.device().stats().tx_dropped, hostile.len() as u64);
    assert!(!d.needs_reset());
}
