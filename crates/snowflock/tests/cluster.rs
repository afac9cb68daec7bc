//! The multi-host test cluster (`scripts/cluster.sh` through
//! `common::cluster::Cluster`): hosts reach each other by TCP, clusters side
//! by side do not collide, shaping slows transfers down, and everything is
//! gone after the drop. Needs root (network namespaces) and python3, which
//! plays the programs running on the hosts.

mod common;

use common::cluster::{script_path, Cluster};
use common::run_cmd;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const PORT: u16 = 5000;
const LIMIT: Duration = Duration::from_secs(20);

/// Accepts one connection, reads it to the end, answers "<bytes> <peer>".
const SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
s.settimeout(20)
print("ready", flush=True)
c, peer = s.accept()
c.settimeout(20)
n = 0
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    n += len(b)
c.sendall(f"{n} {peer[0]}\n".encode())
c.close()
"#;

/// Sends N bytes, waits for the answer, prints "<seconds> <answer>".
const CLIENT: &str = r#"
import socket, sys, time
data = b"x" * int(sys.argv[3])
t = time.monotonic()
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
c.sendall(data)
c.shutdown(socket.SHUT_WR)
r = b""
while True:
    b = c.recv(4096)
    if not b:
        break
    r += b
print(f"{time.monotonic() - t:.6f} {r.decode().strip()}")
"#;

/// A server process inside a host; killed when dropped.
struct Server(Child);

impl Server {
    fn start(cluster: &Cluster, host: usize) -> Server {
        let mut child = cluster
            .command(host, "python3")
            .args([
                "-c",
                SERVER,
                &cluster.addr(host).to_string(),
                &PORT.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start python3");
        let stdout = child.stdout.take().expect("piped");
        let server = Server(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(LIMIT).unwrap_or_default();
        assert_eq!(line.trim(), "ready", "server in host {host} did not start");
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `bytes` from host `from` to the server on host `to`; returns the
/// seconds it took (connect to answer, measured inside the client).
fn transfer(cluster: &Cluster, from: usize, to: usize, bytes: usize) -> f64 {
    let server = Server::start(cluster, to);
    let mut cmd = cluster.command(from, "python3");
    cmd.args([
        "-c",
        CLIENT,
        &cluster.addr(to).to_string(),
        &PORT.to_string(),
    ])
    .arg(bytes.to_string());
    let run = run_cmd(cmd, LIMIT);
    run.assert_code(0);
    drop(server);
    let fields: Vec<&str> = run.stdout.split_whitespace().collect();
    let want_peer = cluster.addr(from).to_string();
    assert_eq!(
        fields[1..],
        [bytes.to_string().as_str(), want_peer.as_str()],
        "host {to} got the wrong bytes or peer\n{}",
        run.describe()
    );
    fields[0].parse().expect("seconds")
}

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The namespaces of cluster `name` that exist.
fn namespaces_of(name: &str) -> Vec<String> {
    netns_list()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| {
            ns.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|rest| {
                    rest == "net"
                        || rest
                            .strip_prefix('h')
                            .is_some_and(|i| i.parse::<usize>().is_ok())
                })
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn three_hosts_reach_each_other_and_vanish_after_drop() {
    let cluster = Cluster::new(3);
    let name = cluster.name().to_owned();
    let mut want: Vec<String> = (1..=3).map(|i| cluster.netns(i)).collect();
    want.push(format!("{name}-net"));
    let mut have = namespaces_of(&name);
    have.sort();
    want.sort();
    assert_eq!(have, want);
    assert_eq!(cluster.addr(2), Ipv4Addr::new(10, 213, cluster.subnet(), 2));

    for to in [2, 3] {
        transfer(&cluster, 1, to, 1000);
    }
    // The hosts are namespaces of their own: host 3's eth0 has its address.
    let mut ip = cluster.command(3, "ip");
    ip.args(["-4", "-o", "addr", "show", "dev", "eth0"]);
    run_cmd(ip, LIMIT)
        .assert_code(0)
        .assert_stdout_has(&format!("{}/24", cluster.addr(3)));

    // A process left running inside a host does not keep the cluster alive.
    let mut stray = cluster
        .command(2, "sleep")
        .arg("60")
        .spawn()
        .expect("sleep");
    drop(cluster);
    assert_eq!(namespaces_of(&name), Vec::<String>::new());
    let status = stray.wait().expect("wait for sleep");
    assert!(!status.success(), "sleep was not stopped: {status}");
}

#[test]
fn two_clusters_at_once_do_not_collide() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Cluster::new(2));
        let b = s.spawn(|| Cluster::new(2));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a.name(), b.name());
    assert_ne!(a.subnet(), b.subnet());
    assert_ne!(a.netns(1), b.netns(1));

    // Both work at the same time, each with a server on the same port.
    std::thread::scope(|s| {
        s.spawn(|| transfer(&a, 1, 2, 100_000));
        s.spawn(|| transfer(&b, 2, 1, 100_000));
    });

    // The script refuses a subnet that is in use, and then creates nothing.
    let other = format!("{}-x", a.name());
    let mut up = Command::new("bash");
    up.arg(script_path())
        .args(["up", "1", "--name", &other, "--subnet"])
        .arg(a.subnet().to_string());
    let run = run_cmd(up, LIMIT);
    run.assert_code(3).assert_stderr_has("already used");
    assert_eq!(namespaces_of(&other), Vec::<String>::new());
    // ...and a name that is in use.
    let mut up = Command::new("bash");
    up.arg(script_path()).args(["up", "1", "--name", a.name()]);
    run_cmd(up, LIMIT)
        .assert_code(3)
        .assert_stderr_has("already exists");
    transfer(&a, 2, 1, 1000);
}

#[test]
fn rate_shaping_slows_transfers_down() {
    const BYTES: usize = 2 << 20; // 2 MiB: 1.7 s at 10 mbit/s
    let (fast, slow) = std::thread::scope(|s| {
        let fast = s.spawn(|| Cluster::new(2));
        let slow = s.spawn(|| Cluster::with_rate(2, "10mbit"));
        (fast.join().unwrap(), slow.join().unwrap())
    });
    let unshaped = transfer(&fast, 1, 2, BYTES);
    let shaped = transfer(&slow, 1, 2, BYTES);
    eprintln!("2 MiB: unshaped {unshaped:.3} s, shaped at 10mbit {shaped:.3} s");
    assert!(unshaped < 1.0, "unshaped transfer took {unshaped} s");
    assert!(shaped > 1.0, "shaped transfer took only {shaped} s");
    assert!(shaped < 10.0, "shaped transfer took {shaped} s");
}

#[test]
fn a_panicking_test_still_removes_its_cluster() {
    let mut name = String::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let cluster = Cluster::with_rate(2, "1gbit");
        name = cluster.name().to_owned();
        assert_eq!(namespaces_of(&name).len(), 3);
        panic!("a test failing with its cluster up");
    }));
    assert!(result.is_err());
    assert!(!name.is_empty());
    assert_eq!(namespaces_of(&name), Vec::<String>::new());
}
