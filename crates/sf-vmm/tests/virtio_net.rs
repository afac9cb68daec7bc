//! End to end: a VM with a NIC on a TAP, and its clone on a TAP of its own,
//! on one bridge. The host pings the VM through the kernel (replies come
//! from the guest's stack), a packet socket on the VM's TAP sees its frames
//! (what `tcpdump -i TAP` shows), and the `netpi` guest's clone reports to
//! its parent over TCP across the bridge. The VMM runs in a child process
//! (this binary again) so it can fork clones without the test's threads.

use sf_abi::net::FamilyNet;
use sf_vmm::devices::virtio::bus_device::{NicConfig, NET0};
use sf_vmm::net::tap::Tap;
use sf_vmm::{BootMode, GuestImage, Vm, VmConfig};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FAMILY: u8 = 201;
const ROLE: &str = "SF_VNET_TEST_VMM";

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

/// In the child the test below starts: the VMM, the VM on the first TAP,
/// clone i on the (i+1)-th. Run directly: a VM whose RAM reaches into the
/// device window is refused a NIC, by name.
#[test]
fn vmm_child() {
    let Ok(names) = std::env::var(ROLE) else {
        let image = sf_images::find("hello").expect("hello guest");
        let image = GuestImage::from_bytes(image.elf.to_vec()).expect("ELF");
        let cfg = VmConfig {
            mem_size: 4 << 30,
            vcpus: 1,
            timeout: None,
            boot: BootMode::Auto,
            cmdline: String::new(),
            max_clones: 8,
            remote: None,
            no_hints: false,
            ..Default::default()
        };
        let mut vm = Vm::new(&cfg, &image).expect("VM");
        let tap = std::fs::File::open("/dev/null").unwrap().into();
        let family = FamilyNet::new(FAMILY).unwrap();
        let e = vm
            .add_nic(NicConfig {
                tap,
                family,
                member: 0,
            })
            .unwrap_err();
        assert!(e.to_string().contains("device window"), "{e}");
        return;
    };
    // "TAP,TAP,...,BRIDGE": the VM's TAP, then one per clone (clone i gets
    // the i-th after the first).
    let v: Vec<String> = names.split(',').map(str::to_string).collect();
    let (taps, bridge) = v.split_at(v.len() - 1);
    let mut fds: Vec<Option<std::os::fd::OwnedFd>> = Vec::new();
    for t in taps {
        fds.push(Some(Tap::open(t).expect("TAP").fd));
        sh(&["ip", "link", "set", t, "master", &bridge[0], "up"]);
    }
    // The test watches every TAP before the VM runs (a line on stdin): the
    // whole run, clone included, can take less than a second.
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).expect("the test's go");
    let image = sf_images::find("netpi").expect("netpi guest");
    let image = GuestImage::from_bytes(image.elf.to_vec()).expect("ELF");
    let cmdline = std::env::var("SF_VNET_TEST_ARGS")
        .unwrap_or_else(|_| "samples=300000000 clones=1 timeout_ms=40000".into());
    let cfg = VmConfig {
        mem_size: 256 << 20,
        vcpus: 1,
        timeout: Some(Duration::from_secs(60)),
        boot: BootMode::Auto,
        cmdline,
        max_clones: 8,
        remote: None,
        no_hints: false,
        ..Default::default()
    };
    let mut vm = Vm::new(&cfg, &image).expect("VM");
    let family = FamilyNet::new(FAMILY).unwrap();
    let first = fds[0].take().unwrap();
    vm.add_nic(NicConfig {
        tap: first,
        family,
        member: 0,
    })
    .expect("NIC");
    vm.set_clone_resources(Box::new(move |ctx| {
        let mut m = BTreeMap::new();
        if let Some(fd) = fds.get_mut(ctx.clone_id as usize).and_then(Option::take) {
            m.insert(NET0.to_string(), vec![fd]);
        }
        Ok(m)
    }));
    let mut out = std::io::stdout();
    let report = vm.run(&mut out).expect("run");
    let t = &report.timings;
    println!(
        "\nVMM outcome: {} | {:.1} ms, {} exits, {} hypercalls (this VM)",
        report.outcome,
        t.total.as_secs_f64() * 1e3,
        t.exits,
        t.hypercalls
    );
    std::process::exit(if report.outcome.is_clean_exit() { 0 } else { 1 });
}

/// Deletes a network link when dropped.
struct LinkGone(String);

impl Drop for LinkGone {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An ICMP echo request to `to`; whether a reply came within `wait`.
fn ping(to: Ipv4Addr, seq: u16, wait: Duration) -> bool {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).unwrap();
    let mut req = vec![8, 0, 0, 0, 0x56, 0x4e, 0, 0];
    req[6..8].copy_from_slice(&seq.to_be_bytes());
    req.extend_from_slice(&[0x11; 32]);
    let mut sum = 0u32;
    for c in req.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    req[2..4].copy_from_slice(&sum.to_be_bytes());
    s.send_to(&req, &SockAddr::from(std::net::SocketAddrV4::new(to, 0)))
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let end = Instant::now() + wait;
    while Instant::now() < end {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 256];
        let Ok(n) = s.recv(&mut buf) else { continue };
        // SAFETY: recv initialized the first n bytes.
        let p: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        let icmp = &p[(p[0] & 0xf) as usize * 4..];
        if icmp[0] == 0 && icmp[4..6] == [0x56, 0x4e] && icmp[6..8] == seq.to_be_bytes() {
            return true;
        }
    }
    false
}

/// A packet socket for `ifname`'s frames, as tcpdump sees them, and the
/// interface's index (the socket sees every interface's frames: the index
/// picks this one's).
fn capture(ifname: &str) -> (socket2::Socket, i32) {
    use socket2::{Domain, Protocol, Socket, Type};
    let eth_all = (libc::ETH_P_ALL as u16).to_be();
    let s = Socket::new(
        Domain::PACKET,
        Type::RAW,
        Some(Protocol::from(i32::from(eth_all))),
    )
    .unwrap();
    s.set_nonblocking(true).unwrap();
    let index = std::fs::read_to_string(format!("/sys/class/net/{ifname}/ifindex")).unwrap();
    (s, index.trim().parse().unwrap())
}

/// Source MACs of the frames the VM sent (the TAP's ingress; frames the
/// host sends towards the VM are PACKET_OUTGOING and skipped).
fn source_macs((s, ifindex): &(socket2::Socket, i32), seen: &mut Vec<[u8; 6]>) {
    use std::os::fd::AsRawFd;
    loop {
        let mut buf = [0u8; 2048];
        // SAFETY: sockaddr_ll is plain data; all zeros is a valid value.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: recvfrom into the buffer and address on the stack, with their sizes.
        let n = unsafe {
            libc::recvfrom(
                s.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n < 0 {
            return;
        }
        if n >= 12 && from.sll_ifindex == *ifindex && from.sll_pkttype != libc::PACKET_OUTGOING {
            let src: [u8; 6] = buf[6..12].try_into().unwrap();
            if !seen.contains(&src) {
                seen.push(src);
            }
        }
    }
}

#[test]
fn a_vm_on_a_tap_answers_ping_and_its_clone_talks_to_it_over_tcp() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let id = std::process::id() % 10_000;
    let (a, b, bridge) = (
        format!("sfvq{id}a"),
        format!("sfvq{id}b"),
        format!("sfvq{id}br"),
    );
    sh(&["ip", "link", "add", &bridge, "type", "bridge"]);
    // Removed however the test ends: a bridge left on 10.201/16 would take
    // the next run's pings.
    let _bridge = LinkGone(bridge.clone());
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{bridge}/disable_ipv6"),
        "1",
    );
    sh(&["ip", "addr", "add", "10.201.255.254/16", "dev", &bridge]);
    sh(&["ip", "link", "set", &bridge, "up"]);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "vmm_child", "--nocapture", "--test-threads", "1"])
        .env(ROLE, format!("{a},{b},{bridge}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let family = FamilyNet::new(FAMILY).unwrap();
    let parent_ip = Ipv4Addr::from(family.ip_of(0).unwrap());
    // Wait for both TAPs and watch them before the VM runs. Watched from
    // the ping loop on, a clone's TAP once showed no frame of the clone on
    // a loaded CI machine although the clone had talked to its parent:
    // most likely before the watch began (a whole run takes 0.6 s here).
    let start = Instant::now();
    let exists = |t: &str| std::path::Path::new(&format!("/sys/class/net/{t}")).exists();
    while !(exists(&a) && exists(&b)) && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let cap = exists(&a).then(|| capture(&a));
    let cap_b = exists(&b).then(|| capture(&b));
    if let Some(stdin) = child.stdin.as_mut() {
        use std::io::Write;
        let _ = stdin.write_all(b"go\n");
    }
    let (mut macs, mut clone_macs) = (Vec::new(), Vec::new());
    let mut replies = 0;
    let mut seq = 0;
    while replies < 3 && start.elapsed() < Duration::from_secs(30) {
        seq += 1;
        if ping(parent_ip, seq, Duration::from_millis(300)) {
            replies += 1;
        }
        if let Some(c) = &cap {
            source_macs(c, &mut macs);
        }
        if let Some(c) = &cap_b {
            source_macs(c, &mut clone_macs);
        }
    }
    // The clone talks to its parent after the pings: keep watching its TAP.
    while start.elapsed() < Duration::from_secs(40) {
        if let Some(c) = &cap_b {
            source_macs(c, &mut clone_macs);
        }
        if clone_macs.contains(&family.mac_of(1).unwrap()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "VMM failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("via=tcp"),
        "the clone did not report over TCP:\n{stdout}"
    );
    assert_eq!(replies, 3, "ping answered {replies} of {seq}:\n{stdout}");
    let vm_mac = family.mac_of(0).unwrap();
    assert!(
        macs.contains(&vm_mac),
        "no frame from the VM's MAC {} on its TAP; saw {:?}",
        mac_str(vm_mac),
        macs.iter().map(|m| mac_str(*m)).collect::<Vec<_>>()
    );
    // The clone sends with its own MAC from its own TAP, never the parent's.
    let names = |v: &[[u8; 6]]| v.iter().map(|m| mac_str(*m)).collect::<Vec<_>>();
    assert!(
        clone_macs.contains(&family.mac_of(1).unwrap()),
        "no frame from the clone's MAC on its TAP; saw {:?}",
        names(&clone_macs)
    );
    let parent_from_b = clone_macs.contains(&vm_mac);
    assert!(
        !parent_from_b,
        "the parent's MAC came out of the clone's TAP"
    );
}
