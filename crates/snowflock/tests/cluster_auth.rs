//! Attacks on a cluster's network boundary, from a namespace host playing
//! the attacker: without a certificate, with one from another CA, and as a
//! legitimate peer overstepping (naming another host's addresses). Also
//! what must not be found on disk or left open locally.

mod common;
use common::hosts::{cluster_init, Hosts};
use sf_api::{ClientError, CloneRequest, CreateVm, VmInfo};
use sf_tls::{Credentials, Transport};
use sf_vmm::remote::protocol::{Hello, HelloReply, RefuseReason, HELLO_REPLY_LEN};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

fn clone_request(memory_server: String, report_to: String) -> CloneRequest {
    CloneRequest {
        descriptor_hex: "00".into(),
        mem_size: 64 << 20,
        memory_server,
        report_to,
        token_hex: "11".repeat(16),
        ids: vec![1],
        timeout_ms: None,
        max_clones: 8,
        parent_path: String::new(),
        prefetch_window: None,
        multicast: None,
        requested_unix_ns: None,
        free_pages: Vec::new(),
        output_cap: None,
        result_cap: None,
        net: None,
    }
}

/// One request's name and what came back.
type Attempt = (&'static str, Result<(u16, Vec<u8>), ClientError>);

/// What an attacker's client may try on the TCP port.
fn every_request(c: &sf_api::Client, req: &CloneRequest) -> Vec<Attempt> {
    let create = serde_json::to_vec(&CreateVm {
        guest: "hello".into(),
        ..Default::default()
    })
    .unwrap();
    let clone = serde_json::to_vec(req).unwrap();
    vec![
        ("list", c.request("GET", "/v1/vms", None)),
        ("console", c.request("GET", "/v1/vms/vm-1", None)),
        ("kill", c.request("DELETE", "/v1/vms/vm-1", None)),
        ("boot", c.request("POST", "/v1/vms", Some(&create))),
        ("metrics", c.request("GET", "/v1/metrics", None)),
        ("clone", c.request("POST", "/v1/clones", Some(&clone))),
    ]
}

fn spin_vm(h: &Hosts) -> VmInfo {
    h.client(1)
        .post(
            "/v1/vms",
            &CreateVm {
                guest: "crash".into(),
                args: vec!["spin".into()],
                ..Default::default()
            },
        )
        .unwrap()
}

fn still_running(h: &Hosts, id: &str) {
    let vms: Vec<VmInfo> = h.client(1).get("/v1/vms").unwrap();
    assert!(
        vms.iter().any(|v| v.id == id && v.state == "running"),
        "{vms:?}\n{}",
        h.describe()
    );
    assert_eq!(vms.len(), 1, "nothing else was started: {vms:?}");
}

#[test]
fn without_a_cluster_certificate_the_tcp_port_answers_nothing() {
    let h = Hosts::start(3);
    let vm = spin_vm(&h);
    let other_ca = h.dir.path().join("other-ca");
    // Another CA's certificate for the attacker's very own address.
    cluster_init(&other_ca, &h.cluster, [3]);
    let stranger = Transport::Tls(Arc::new(
        Credentials::load(&sf_tls::generate::host_paths(&other_ca, "h3")).unwrap(),
    ));
    let req = clone_request(
        format!("{}:1", h.cluster.addr(3)),
        format!("{}:2", h.cluster.addr(3)),
    );
    {
        let _attacker = h.cluster.enter(3);
        for (who, t) in [
            ("no certificate", Transport::Plain),
            ("another CA", stranger),
        ] {
            for (what, res) in every_request(&h.peer_client(1, t), &req) {
                assert!(
                    !matches!(res, Ok(_) | Err(ClientError::Status { .. })),
                    "{who}: {what} got an HTTP answer: {res:?}"
                );
            }
        }
    }
    still_running(&h, &vm.id);
    assert!(
        h.daemon_log(1)
            .contains("peer refused: TLS handshake failed"),
        "{}",
        h.daemon_log(1)
    );
}

#[test]
fn a_cluster_peer_gets_only_the_peer_api_on_tcp() {
    let h = Hosts::start(3);
    let vm = spin_vm(&h);
    {
        let _peer = h.cluster.enter(3);
        let c = h.peer_client(1, h.transport(3));
        let health: sf_api::Health = c.get("/v1/health").unwrap();
        assert!(health.ok);
        let req = clone_request(String::new(), String::new());
        for (what, res) in every_request(&c, &req) {
            let status = res.unwrap().0;
            match what {
                "clone" => assert_eq!(status, 400, "bad addresses are named"),
                _ => assert_eq!(status, 404, "{what} is not on the peer API"),
            }
        }
    }
    still_running(&h, &vm.id);
}

#[test]
fn a_peer_naming_another_hosts_memory_server_or_report_to_gets_403() {
    let h = Hosts::start(3);
    let (a2, a3) = (h.cluster.addr(2), h.cluster.addr(3));
    let _peer = h.cluster.enter(3);
    let c = h.peer_client(1, h.transport(3));
    for (req, field) in [
        (
            clone_request(format!("{a2}:7070"), format!("{a3}:2")),
            "memory_server",
        ),
        (
            clone_request(format!("{a3}:1"), format!("{a2}:7070")),
            "report_to",
        ),
    ] {
        let e = c
            .post::<_, sf_api::CloneAccepted>("/v1/clones", &req)
            .unwrap_err();
        match &e {
            ClientError::Status {
                status: 403,
                message,
                ..
            } => assert!(
                message.contains(field) && message.contains("is not an address of the sender"),
                "{message}"
            ),
            other => panic!("{field}: {other}"),
        }
    }
    drop(_peer);
    let vms: Vec<VmInfo> = h.client(1).get("/v1/vms").unwrap();
    assert!(vms.is_empty(), "nothing was started: {vms:?}");
    assert!(
        h.daemon_log(1).contains("clone request refused"),
        "{}",
        h.daemon_log(1)
    );
}

#[test]
fn the_clone_token_is_in_no_file_and_the_admin_socket_is_private() {
    let h = Hosts::start(3);
    for i in 1..=3 {
        let mode = std::fs::metadata(h.socket(i)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "host {i}'s admin socket");
    }
    let r = h.run(1, &["forktest", "--", "basic", "n=6"]);
    assert!(r.code == Some(0), "{}\n{}", r.describe(), h.describe());
    // Clone requests (with the group's token) reached hosts 2 and 3; no
    // file there or anywhere in the test's directories may hold one.
    let mut files = 0;
    let mut stack = vec![h.dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                files += 1;
                let text = String::from_utf8_lossy(&bytes);
                assert!(!text.contains("token"), "{} mentions a token", p.display());
            }
        }
    }
    assert!(
        files > 10,
        "the state directories were searched ({files} files)"
    );
}

#[test]
fn remote_clones_work_in_insecure_mode_too() {
    let h = Hosts::start_with(2, &["--insecure-no-tls"]);
    let r = h.run(1, &["forktest", "--", "basic", "n=2"]);
    h.assert_forktest_ok(&r, "basic");
    assert!(h.daemon_log(1).contains("INSECURE"), "{}", h.daemon_log(1));
    std::thread::sleep(Duration::from_millis(10));
}

/// The hello reply of the page server at `addr` to `token` over `t`
/// (`None`: no reply at all).
fn page_hello(addr: SocketAddr, t: &Transport, token: [u8; 16]) -> Option<HelloReply> {
    let mut s = t.connect(addr, Duration::from_secs(3)).ok()?;
    s.tcp()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    s.write_all(&Hello::new(token).encode()).ok()?;
    let mut reply = [0u8; HELLO_REPLY_LEN];
    s.read_exact(&mut reply).ok()?;
    HelloReply::decode(&reply).ok()
}

#[test]
fn the_memory_holder_serves_only_cluster_members_and_silent_strangers_do_not_make_it_busy() {
    let h = Hosts::start(3);
    let child = h.start_run(1, &["forktest", "--", "slow", "n=3", "ms=3000"]);
    // The origin's log names its memory holder's address.
    let until = Instant::now() + Duration::from_secs(20);
    let holder: SocketAddr = loop {
        let vms: Vec<VmInfo> = h.client(1).get("/v1/vms").unwrap_or_default();
        let log = vms
            .first()
            .and_then(|v| {
                h.client(1)
                    .get::<sf_api::VmDetail>(&format!("/v1/vms/{}", v.id))
                    .ok()
            })
            .map(|d| d.log)
            .unwrap_or_default();
        if let Some(a) = log
            .lines()
            .find_map(|l| l.split("serving the clone group's RAM on ").nth(1))
            .and_then(|a| a.trim().parse().ok())
        {
            break a;
        }
        assert!(Instant::now() < until, "no memory holder\n{}", h.describe());
        std::thread::sleep(Duration::from_millis(20));
    };
    {
        let _attacker = h.cluster.enter(3);
        // Without a certificate, even a right token would get no answer.
        assert_eq!(page_hello(holder, &Transport::Plain, [0; 16]), None);
        // 300 connections that never say anything...
        let silent: Vec<TcpStream> = (0..300)
            .filter_map(|_| TcpStream::connect(holder).ok())
            .collect();
        assert_eq!(silent.len(), 300);
        std::thread::sleep(Duration::from_millis(300));
        // ...do not fill the holder: a cluster member is still heard (and,
        // without the group's token, refused for that reason, not "Busy").
        match page_hello(holder, &h.transport(3), [0; 16]) {
            Some(HelloReply::Refuse { reason, .. }) => assert_eq!(reason, RefuseReason::BadToken),
            other => panic!("{other:?}"),
        }
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.code() == Some(0) && stdout.contains("forktest slow: ok"),
        "{stdout}\n{}",
        h.describe()
    );
}

/// A descriptor that decodes (the clone host never gets to run it here).
fn descriptor_hex(mem_size: u64) -> String {
    use sf_vmm::descriptor::{MemorySource, VcpuState, VmDescriptor};
    let d = VmDescriptor {
        mem_size,
        vcpus: vec![VcpuState {
            regs: Default::default(),
            sregs: Default::default(),
            xsave: Default::default(),
            xcrs: Default::default(),
            debugregs: Default::default(),
            events: Default::default(),
            msrs: Vec::new(),
        }],
        devices: Vec::new(),
        hints: Default::default(),
        memory: MemorySource::Inherited,
    };
    sf_api::to_hex(&d.encode())
}

#[test]
fn concurrent_clone_requests_never_exceed_the_host_budget() {
    const BUDGET: usize = 2;
    const REQUESTS: u32 = 8;
    let h = Hosts::start_with(3, &["--max-vms", "2"]);
    let peer = h.cluster.enter(3);
    // Host 3's memory server and report listener accept and never answer
    // the TLS handshake, so each clone host it gets started stays running
    // (2 s connect deadline) while the other requests arrive.
    let memory = std::net::TcpListener::bind((h.cluster.addr(3), 0)).unwrap();
    let reports = std::net::TcpListener::bind((h.cluster.addr(3), 0)).unwrap();
    let (mem_addr, rep_addr) = (memory.local_addr().unwrap(), reports.local_addr().unwrap());
    for l in [memory, reports] {
        std::thread::spawn(move || {
            let held: Vec<TcpStream> = l.incoming().map_while(Result::ok).collect();
            drop(held);
        });
    }
    let start = Arc::new(std::sync::Barrier::new(REQUESTS as usize));
    // Threads made here share host 3's network namespace.
    let sends: Vec<_> = (1..=REQUESTS)
        .map(|id| {
            let c = h.peer_client(1, h.transport(3));
            let mut req = clone_request(mem_addr.to_string(), rep_addr.to_string());
            req.descriptor_hex = descriptor_hex(req.mem_size);
            req.ids = vec![id];
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                c.post::<_, sf_api::CloneAccepted>("/v1/clones", &req)
            })
        })
        .collect();
    let answers: Vec<_> = sends.into_iter().map(|t| t.join().unwrap()).collect();
    drop(peer);
    let accepted = answers.iter().filter(|a| a.is_ok()).count();
    let running = h
        .client(1)
        .get::<Vec<VmInfo>>("/v1/vms")
        .unwrap()
        .iter()
        .filter(|v| v.state == "running")
        .count();
    assert!(
        (1..=BUDGET).contains(&accepted) && running <= BUDGET,
        "{accepted} of {REQUESTS} concurrent clone requests accepted, {running} running, budget {BUDGET}: {answers:?}\n{}",
        h.describe()
    );
    for a in answers.iter().filter_map(|a| a.as_ref().err()) {
        assert!(matches!(a, ClientError::Status { status: 503, .. }), "{a}");
    }
}

#[test]
fn a_flood_of_failed_handshakes_does_not_flood_the_daemon_log() {
    let h = Hosts::start(3);
    let before = h.daemon_log(1).lines().count();
    {
        let _attacker = h.cluster.enter(3);
        let port = format!("{}:7070", h.cluster.addr(1));
        for _ in 0..500 {
            // Not a TLS ClientHello: refused at the first byte.
            if let Ok(mut s) = TcpStream::connect(&port) {
                let _ = s.write_all(b"GET /v1/vms HTTP/1.1\r\n\r\n");
                let _ = s.read(&mut [0u8; 64]);
            }
        }
    }
    let log = h.daemon_log(1);
    let refusals = log
        .lines()
        .skip(before)
        .filter(|l| l.contains("peer refused"))
        .count();
    assert!(
        (1..=20).contains(&refusals),
        "{refusals} log lines for 500 refused connections\n{log}"
    );
    let _ = h.client(1).get::<sf_api::Health>("/v1/health").unwrap();
    // The count of the ones not logged one by one is said.
    std::thread::sleep(Duration::from_millis(1100));
    {
        let _attacker = h.cluster.enter(3);
        let mut s = TcpStream::connect(format!("{}:7070", h.cluster.addr(1))).unwrap();
        let _ = s.write_all(b"x");
        let _ = s.read(&mut [0u8; 8]);
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        h.daemon_log(1).contains("more refused since"),
        "{}",
        h.daemon_log(1)
    );
}
