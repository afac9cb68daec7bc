//! The guest network stack end to end: real VMs with a virtio-net NIC on a
//! TAP, in a network namespace of the test's own (so nothing reaches the
//! host's networks). A host process pings a VM, echoes TCP and UDP through
//! it and measures round trips and throughput; clones on one bridge talk
//! to each other and to their parent over TCP.

use sf_vmm::devices::virtio::bus_device::NicConfig;
use sf_vmm::devices::DeviceError;
use sf_vmm::net::tap::Tap;
use sf_vmm::{GuestImage, Vm, VmConfig};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

const FAMILY: u8 = 9;

fn guest_ip(member: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, FAMILY, (member >> 8) as u8, member as u8 + 1)
}

/// Moves the calling thread (and the threads and processes it starts
/// afterwards) into a new, empty network namespace.
fn enter_new_netns() {
    // SAFETY: unshare takes no pointers; it affects this thread only.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    ip("link set lo up");
    // Per namespace: lets root use ICMP datagram ("ping") sockets here.
    std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 0").unwrap();
}

fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn image(name: &str) -> GuestImage {
    let i = sf_images::find(name).expect("shipped guest");
    GuestImage::from_bytes(i.elf.to_vec()).unwrap()
}

/// Boots `guest` with a NIC on `tap` as member 0 of the family; clones get
/// the persistent TAP `sfgt<member>` (made by the test). Returns the exit
/// status and the console.
fn run_vm(guest: &str, args: &str, tap: OwnedFd, clone_taps: bool) -> (i32, String) {
    let (code, console, _) = run_vm_counted(guest, args, tap, clone_taps);
    (code, console)
}

/// [`run_vm`], with the VM's device counters after the run.
fn run_vm_counted(
    guest: &str,
    args: &str,
    tap: OwnedFd,
    clone_taps: bool,
) -> (i32, String, Vec<String>) {
    let cfg = VmConfig {
        mem_size: 256 << 20,
        timeout: Some(Duration::from_secs(40)),
        cmdline: args.into(),
        ..Default::default()
    };
    let mut vm = Vm::new(&cfg, &image(guest)).expect("VM");
    vm.add_nic(NicConfig {
        tap,
        family: sf_abi::net::FamilyNet::new(FAMILY).unwrap(),
        member: 0,
    })
    .expect("NIC");
    if clone_taps {
        vm.set_clone_resources(Box::new(|ctx| {
            let member = ctx.member.unwrap_or(ctx.clone_id);
            let tap = Tap::open(&format!("sfgt{member}")).map_err(|e| DeviceError::Host {
                device: "net0".into(),
                what: format!("the test's TAP for member {member}: {e}"),
                source: None,
            })?;
            Ok(BTreeMap::from([("net0".to_string(), vec![tap.fd])]))
        }));
    }
    let mut console = Vec::new();
    let report = vm.run(&mut console).expect("run");
    (
        report.outcome.exit_code(),
        String::from_utf8_lossy(&console).into_owned(),
        vm.device_counters(),
    )
}

/// Counter `name` in the NIC's `NetStats` counters line.
fn nic_counter(counters: &[String], name: &str) -> u64 {
    let line = counters
        .iter()
        .find(|c| c.starts_with("net0: "))
        .unwrap_or_else(|| panic!("no NIC counters in {counters:?}"));
    let key = format!("{name}: ");
    let rest = &line[line
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + key.len()..];
    rest[..rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len())]
        .parse()
        .unwrap()
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One ICMP echo over a kernel ping socket (allowed for root in the test's
/// namespace by [`enter_new_netns`]); the round trip, or `None` without an
/// answer within `wait`.
fn ping(to: Ipv4Addr, seq: u16, wait: Duration) -> Option<Duration> {
    // SAFETY: plain socket creation; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let sock = std::net::UdpSocket::from(unsafe { OwnedFd::from_raw_fd(fd) });
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut pkt = vec![8u8, 0, 0, 0, 0x53, 0x46, (seq >> 8) as u8, seq as u8];
    pkt.extend_from_slice(b"snowflock ping");
    let c = checksum(&pkt);
    pkt[2..4].copy_from_slice(&c.to_be_bytes());
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(to).to_be(),
        },
        sin_zero: [0; 8],
    };
    let t = Instant::now();
    // SAFETY: `pkt` and `addr` are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    assert_eq!(
        n,
        pkt.len() as isize,
        "sendto {to}: {}",
        std::io::Error::last_os_error()
    );
    let mut buf = [0u8; 1500];
    while t.elapsed() < wait {
        let Ok(n) = sock.recv(&mut buf) else { break };
        // An ICMP echo reply (0) with our sequence number (the kernel
        // sets the identifier) and payload.
        let icmp = &buf[..n];
        if icmp.len() >= 8 && icmp[0] == 0 && icmp[6..8] == pkt[6..8] && icmp[8..] == pkt[8..] {
            return Some(t.elapsed());
        }
    }
    None
}

fn connect_retry(to: SocketAddr, within: Duration) -> TcpStream {
    let t = Instant::now();
    loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
            Ok(s) => return s,
            Err(_) if t.elapsed() < within => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("connect to {to}: {e}"),
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn a_vm_on_a_tap_answers_ping_and_echoes_tcp_and_udp_from_the_host() {
    enter_new_netns();
    let tap = Tap::open("sfg0").expect("TAP");
    ip("addr add 10.9.255.254/16 dev sfg0");
    ip("link set sfg0 up");
    let vm = guest_ip(0);
    let client = std::thread::spawn(move || {
        // The guest answers pings while it waits in accept.
        let t = Instant::now();
        let first = loop {
            if let Some(rtt) = ping(vm, 0, Duration::from_millis(500)) {
                break rtt;
            }
            if t.elapsed() > Duration::from_secs(30) {
                let o = Command::new("ip")
                    .args(["-s", "link", "show", "sfg0"])
                    .output()
                    .unwrap();
                let n = Command::new("ip").args(["neigh"]).output().unwrap();
                panic!(
                    "no answer to ping: {}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&n.stdout)
                );
            }
        };
        let pings: Vec<Duration> = (1..=20)
            .map(|i| ping(vm, i, Duration::from_secs(2)).expect("ping answered"))
            .collect();
        // Connection 1: small round trips.
        let mut s = connect_retry(SocketAddr::from((vm, 7000)), Duration::from_secs(10));
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut rtts = Vec::new();
        let mut b = [0u8; 64];
        for i in 0..200u32 {
            let msg = [i as u8; 64];
            let t = Instant::now();
            s.write_all(&msg).unwrap();
            s.read_exact(&mut b).unwrap();
            rtts.push(t.elapsed());
            assert_eq!(b, msg);
        }
        drop(s);
        // Connection 2: a bulk stream, checked byte for byte.
        let total = 16 << 20;
        let data: Vec<u8> = (0..total)
            .map(|i| (i as u32).wrapping_mul(2654435761) as u8 ^ (i >> 13) as u8)
            .collect();
        let s = connect_retry(SocketAddr::from((vm, 7000)), Duration::from_secs(10));
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut r = s.try_clone().unwrap();
        let t = Instant::now();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            let mut w = s;
            w.write_all(&sent).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut back = Vec::with_capacity(total);
        r.read_to_end(&mut back).unwrap();
        let secs = t.elapsed().as_secs_f64();
        writer.join().unwrap();
        assert!(
            back == data,
            "the echoed stream differs ({} of {total} bytes back)",
            back.len()
        );
        // UDP: three datagrams echoed, sender and boundaries kept.
        let u = UdpSocket::bind("10.9.255.254:0").unwrap();
        u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for n in [1usize, 700, 1422] {
            let d: Vec<u8> = (0..n).map(|i| i as u8 ^ n as u8).collect();
            u.send_to(&d, (vm, 7000)).unwrap();
            let mut got = [0u8; 2048];
            let (m, from) = u.recv_from(&mut got).unwrap();
            assert_eq!((&got[..m], from), (&d[..], SocketAddr::from((vm, 7000))));
        }
        (
            first,
            median(pings),
            median(rtts),
            total as f64 * 2.0 * 8.0 / secs / 1e6,
        )
    });
    let (code, console) = run_vm("netpi", "echo port=7000 conns=2 dgrams=3", tap.fd, false);
    eprintln!("{console}");
    let (first, ping, rtt, mbit) = client.join().expect("host side");
    assert_eq!(code, 0, "{console}");
    assert!(console.contains("echo: done"), "{console}");
    // The numbers, for the record (no timing is asserted).
    eprintln!(
        "guest<->host: first ping {first:?}, ping median {ping:?}, TCP 64-byte round trip median {rtt:?}, TCP echo {mbit:.0} Mbit/s (both directions)"
    );
}

/// Persistent TAPs `sfgt1..=n` on bridge `sfbr`, for clones to attach to.
fn bridge_with_taps(n: u32) {
    ip("link add sfbr type bridge");
    ip("link set sfbr up");
    for m in 1..=n {
        ip(&format!("tuntap add dev sfgt{m} mode tap vnet_hdr"));
        ip(&format!("link set sfgt{m} master sfbr up"));
    }
}

/// The links' counters, to tell which VM sent and got what.
fn links() -> String {
    let o = Command::new("ip").args(["-s", "link"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn parent_on_bridge() -> OwnedFd {
    let tap = Tap::open("sfgt0").expect("TAP");
    ip("link set sfgt0 master sfbr up");
    tap.fd
}

#[test]
fn every_clone_exchanges_checksummed_messages_with_every_other_over_tcp() {
    enter_new_netns();
    bridge_with_taps(8);
    let tap = parent_on_bridge();
    let (code, console) = run_vm(
        "netpi",
        "allpairs clones=8 bytes=20000 timeout_ms=25000",
        tap,
        true,
    );
    assert_eq!(code, 0, "{console}\n{}", links());
    assert!(
        console.contains("allpairs: ok pairs=56 clones=8"),
        "{console}"
    );
}

#[test]
fn pi_clones_report_to_their_parent_over_tcp() {
    enter_new_netns();
    bridge_with_taps(3);
    let tap = parent_on_bridge();
    let (code, console) = run_vm("netpi", "samples=3000000 clones=3", tap, true);
    assert_eq!(code, 0, "{console}");
    assert!(console.contains("slices=3 via=tcp"), "{console}");
    // The same pi without a network, as the reference answer.
    let cfg = VmConfig {
        cmdline: "samples=3000000 split=3".into(),
        timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let mut reference = Vec::new();
    Vm::new(&cfg, &image("pi"))
        .unwrap()
        .run(&mut reference)
        .unwrap();
    let reference = String::from_utf8_lossy(&reference);
    let inside = |s: &str| {
        s.split_whitespace()
            .find_map(|w| w.strip_prefix("inside=").map(str::to_string))
            .unwrap_or_default()
    };
    assert_eq!(
        inside(&console),
        inside(&reference),
        "{console}\n{reference}"
    );
}

#[test]
fn a_c_clone_sends_its_parent_a_checksummed_message_and_a_datagram() {
    enter_new_netns();
    bridge_with_taps(1);
    let tap = parent_on_bridge();
    let (code, console) = run_vm("capi", "net", tap, true);
    assert_eq!(code, 0, "{console}");
    assert!(
        console.contains("capi: net: TCP and UDP between parent and clone: ok"),
        "{console}"
    );
}

/// The receiving VM of a bulk stream notifies the NIC only for its
/// acknowledgements (every `TX_NOTIFY_EVERY` transmit chains, as the
/// device asks with `RING_EVENT_IDX`), never for the receive buffers it re-posts: those
/// the device takes at every exit. Before, a notify per 8 re-posted
/// buffers was a third of a receiving VM's exits.
#[test]
fn a_receiving_vm_does_not_notify_its_receive_buffers() {
    enter_new_netns();
    bridge_with_taps(1);
    let tap = parent_on_bridge();
    let (code, console, counters) = run_vm_counted("netpi", "stream mib=64 rounds=1", tap, true);
    assert_eq!(code, 0, "{console}\n{}", links());
    let (received, sent, notifies) = (
        nic_counter(&counters, "rx_packets"),
        nic_counter(&counters, "tx_packets"),
        nic_counter(&counters, "notifies"),
    );
    eprintln!("the parent received {received} frames, sent {sent}, notified {notifies} times");
    assert!(received > 500, "{counters:?}");
    let every = u64::from(sf_vmm::devices::virtio::net::TX_NOTIFY_EVERY);
    assert!(
        notifies <= sent / every + 2,
        "{notifies} notifies for {sent} frames sent and {received} received: {counters:?}"
    );
}

#[test]
fn two_vms_on_a_bridge_measure_round_trip_and_throughput() {
    enter_new_netns();
    bridge_with_taps(1);
    let tap = parent_on_bridge();
    let (code, console) = run_vm("netpi", "stream mib=16 rounds=200", tap, true);
    assert_eq!(code, 0, "{console}\n{}", links());
    let line = console
        .lines()
        .find(|l| l.starts_with("stream: rtt"))
        .unwrap_or_default();
    assert!(line.contains("bytes=16777216"), "{console}");
    eprintln!("VM<->VM on one bridge: {line}");
}

/// With offloads negotiated, 64 MiB go from a clone to its parent in
/// segments larger than the MTU (the clone's persistent TAP counts what
/// its VM wrote), and the parent checks the stream's checksum.
#[test]
fn two_vms_stream_a_checksummed_64_mib_in_segments_past_the_mtu() {
    enter_new_netns();
    bridge_with_taps(1);
    let tap = parent_on_bridge();
    let (code, console) = run_vm("netpi", "stream mib=64 rounds=50", tap, true);
    assert_eq!(code, 0, "{console}\n{}", links());
    let line = console
        .lines()
        .find(|l| l.starts_with("stream: rtt"))
        .unwrap_or_default();
    assert!(line.contains("bytes=67108864 offloads=on"), "{console}");
    // `ip`, not /sys/class/net: sysfs shows the namespace it was mounted in.
    let out = Command::new("ip")
        .args(["-j", "-s", "link", "show", "dev", "sfgt1"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rx = &v[0]["stats64"]["rx"];
    let (bytes, frames) = (
        rx["bytes"].as_u64().unwrap(),
        rx["packets"].as_u64().unwrap(),
    );
    assert!(
        bytes > 64 << 20 && bytes / frames > 1514,
        "the clone wrote {bytes} bytes in {frames} frames\n{}",
        links()
    );
    eprintln!("{line}; {} bytes per frame from the clone", bytes / frames);
}

#[test]
fn without_a_nic_every_call_says_so_and_pi_falls_back_to_join() {
    let run = |guest: &str, args: &str| {
        let cfg = VmConfig {
            cmdline: args.into(),
            timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        let mut out = Vec::new();
        let r = Vm::new(&cfg, &image(guest)).unwrap().run(&mut out).unwrap();
        (
            r.outcome.exit_code(),
            String::from_utf8_lossy(&out).into_owned(),
        )
    };
    let (code, console) = run("capi", "net");
    assert_eq!(code, 0, "{console}");
    assert!(
        console.contains("every call said ENETDOWN: ok"),
        "{console}"
    );
    let (code, console) = run("netpi", "samples=100000 clones=2");
    assert_eq!(code, 0, "{console}");
    assert!(console.contains("via=join"), "{console}");
    let (code, console) = run("netpi", "allpairs clones=2");
    assert_eq!(code, 1, "{console}");
    assert!(
        console.contains("allpairs: FAIL no network interface"),
        "{console}"
    );
}
