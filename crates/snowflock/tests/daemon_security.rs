//! End-to-end attacks on a real `snowflockd` (issue 8): guest paths that
//! name host files, a predictable or foreign state directory, symlinks in
//! it, a console flood, slow and idle HTTP clients, `kill -9` of the daemon,
//! misreported failures, a full disk, the host-wide VM budget and the
//! per-VMM cgroup. Each test starts its own daemon on its own socket and
//! state directory.

mod common;
use common::*;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn snowflockd_bin() -> PathBuf {
    Path::new(snowflock_bin()).with_file_name("snowflockd")
}

/// A daemon of this test, killed when dropped.
struct Daemon {
    child: Child,
    sock: PathBuf,
    state: PathBuf,
    stderr: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a daemon with its socket in a fresh temporary directory and its
/// state in `state` (default: `<tmp>/state`). Err = (exit code, stderr).
fn try_start(
    state: Option<&Path>,
    extra: &[&str],
    nofile: Option<u64>,
) -> Result<Daemon, (Option<i32>, String)> {
    let dir = tempdir();
    let sock = dir.path().join("d.sock");
    let state = state.map_or_else(|| dir.path().join("state"), Path::to_path_buf);
    start_at(&sock, &state, extra, nofile, Some(dir))
}

fn start_at(
    sock: &Path,
    state: &Path,
    extra: &[&str],
    nofile: Option<u64>,
    dir: Option<tempfile::TempDir>,
) -> Result<Daemon, (Option<i32>, String)> {
    let stderr = sock.with_extension(format!("{}.stderr", std::process::id()));
    let mut cmd = Command::new(snowflockd_bin());
    cmd.arg("--socket")
        .arg(sock)
        .arg("--state-dir")
        .arg(state)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap());
    if let Some(n) = nofile {
        // SAFETY: setrlimit is async-signal-safe; it only lowers this
        // child's own file limit.
        unsafe {
            cmd.pre_exec(move || {
                let l = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().expect("start snowflockd");
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Err((st.code(), std::fs::read_to_string(&stderr).unwrap()));
        }
        if UnixStream::connect(sock).is_ok() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "daemon did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Daemon {
        child,
        sock: sock.to_path_buf(),
        state: state.to_path_buf(),
        stderr,
        _dir: dir,
    })
}

fn start(extra: &[&str]) -> Daemon {
    try_start(None, extra, None).unwrap_or_else(|e| panic!("daemon failed: {e:?}"))
}

/// One HTTP/1.1 request over a stream; (status, body).
fn http_on(
    mut s: impl Read + Write,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    // Large bodies: the server may answer (413) before reading all of it.
    let _ = s.write_all(body.as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |b| b.1).to_string();
    (status, body)
}

impl Daemon {
    fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let s = UnixStream::connect(&self.sock).expect("connect to the daemon");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        http_on(s, method, path, body)
    }

    fn create(&self, body: &str) -> (u16, serde_json::Value) {
        let (code, text) = self.http("POST", "/v1/vms", Some(body));
        let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (code, v)
    }

    fn detail(&self, id: &str) -> serde_json::Value {
        let (code, text) = self.http("GET", &format!("/v1/vms/{id}"), None);
        assert_eq!(code, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Waits until the VM has exited; its detail.
    fn wait_exit(&self, id: &str, limit: Duration) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            let d = self.detail(id);
            if d["info"]["state"] == "exited" {
                return d;
            }
            assert!(t0.elapsed() < limit, "VM {id} still runs: {d}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn list(&self) -> Vec<serde_json::Value> {
        let (code, text) = self.http("GET", "/v1/vms", None);
        assert_eq!(code, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

fn error_of(v: &serde_json::Value) -> String {
    v["error"]
        .as_str()
        .map_or_else(|| v.to_string(), str::to_string)
}

fn pid_alive(pid: i32) -> bool {
    // A zombie no longer runs; /proc says "Z".
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn host_paths_are_refused_without_echoing_bytes_or_existence() {
    let d = start(&[]);
    let (c1, shadow) = d.create(r#"{"guest":"/etc/shadow"}"#);
    let (c2, missing) = d.create(r#"{"guest":"/etc/no-such-file-here"}"#);
    let t0 = Instant::now();
    let (c3, zero) = d.create(r#"{"guest":"/dev/zero"}"#);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "/dev/zero took {:?}",
        t0.elapsed()
    );
    for (c, v) in [(c1, &shadow), (c2, &missing), (c3, &zero)] {
        assert_eq!(c, 400, "{v}");
        let e = error_of(v);
        assert!(e.contains("guest"), "{e}");
        assert!(
            !e.contains("0x") && !e.contains("magic"),
            "leaks bytes: {e}"
        );
    }
    // The same answer whether the file exists or not.
    assert_eq!(
        error_of(&shadow).replace("/etc/shadow", "P"),
        error_of(&missing).replace("/etc/no-such-file-here", "P")
    );
    assert!(d.list().is_empty(), "a VMM was spawned: {:?}", d.list());
}

#[test]
fn the_image_dir_holds_regular_files_only_and_no_escape() {
    let images = tempdir();
    std::fs::write(images.path().join("mine.elf"), shipped("hello")).unwrap();
    std::fs::write(
        images.path().join("text.elf"),
        b"root:*:19000:0:99999:7:::\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/shadow", images.path().join("shadow.elf")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", images.path().join("zero.elf")).unwrap();
    std::os::unix::fs::symlink("mine.elf", images.path().join("alias.elf")).unwrap();
    let big = std::fs::File::create(images.path().join("big.elf")).unwrap();
    big.set_len(1 << 30).unwrap();
    let d = start(&["--image-dir", images.path().to_str().unwrap()]);

    let (c, v) = d.create(r#"{"guest":"mine.elf","args":["from","the","dir"]}"#);
    assert_eq!(c, 201, "{v}");
    let det = d.wait_exit(v["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(det["info"]["exit_code"], 0, "{det}");
    assert!(det["console"].as_str().unwrap().contains("dir"), "{det}");
    // A symlink that stays inside the directory is fine.
    let (c, v) = d.create(r#"{"guest":"alias.elf"}"#);
    assert_eq!(c, 201, "{v}");

    let (c, v) = d.create(r#"{"guest":"text.elf"}"#);
    assert_eq!(c, 400, "{v}");
    let e = error_of(&v);
    assert!(e.contains("not an ELF"), "{e}");
    assert!(!e.contains("0x") && !e.contains("root"), "leaks bytes: {e}");

    let (c, v) = d.create(r#"{"guest":"big.elf"}"#);
    assert_eq!(c, 400, "{v}");
    assert!(error_of(&v).contains("MiB"), "the size limit is named: {v}");

    for name in [
        "shadow.elf",
        "zero.elf",
        "../mine.elf",
        "nothing.elf",
        "/etc/passwd",
    ] {
        let (c, v) = d.create(&format!(r#"{{"guest":"{name}"}}"#));
        assert_eq!(c, 400, "{name}: {v}");
        let e = error_of(&v);
        assert!(
            !e.contains("0x") && !e.contains("root"),
            "{name} leaks: {e}"
        );
        assert!(
            !e.contains("symlink") && !e.contains("exist"),
            "{name}: {e}"
        );
    }
}

#[test]
fn snowflock_run_refuses_devices_and_oversized_images() {
    let t0 = Instant::now();
    snowflock(["run", "/dev/zero"])
        .assert_code(1)
        .assert_stderr_has("regular file")
        .assert_no_host_panic();
    assert!(t0.elapsed() < Duration::from_secs(5));
    let dir = tempdir();
    let big = dir.path().join("big.elf");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    snowflock(["run", big.to_str().unwrap()])
        .assert_code(1)
        .assert_stderr_has("MiB")
        .assert_no_host_panic();
    let text = write_file(dir.path(), "t.elf", b"root:*:19000:0:99999:7:::\n");
    let r = snowflock(["run", text.to_str().unwrap()]);
    r.assert_code(1).assert_stderr_has("not an ELF file");
    assert!(!r.stderr.contains("0x"), "{}", r.describe());
}

#[test]
fn a_foreign_or_open_state_dir_is_refused() {
    let dir = tempdir();
    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::os::unix::fs::chown(&foreign, Some(12345), Some(12345)).unwrap();
    let err = try_start(Some(&foreign), &[], None)
        .err()
        .expect("foreign dir accepted");
    assert_eq!(err.0, Some(1), "{}", err.1);
    assert!(err.1.contains("owned by uid 12345"), "{}", err.1);

    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = try_start(Some(&open), &[], None)
        .err()
        .expect("0777 dir accepted");
    assert!(
        err.1.contains("writable") && err.1.contains("chmod 700"),
        "{}",
        err.1
    );

    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    let err = try_start(Some(&link), &[], None)
        .err()
        .expect("symlinked dir accepted");
    assert!(err.1.contains("symlink"), "{}", err.1);

    // A fresh one is created 0700, and the default is not under /tmp.
    let d = start(&[]);
    let mode = std::fs::metadata(&d.state).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let help = Command::new(snowflockd_bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("/run/snowflock"), "{help}");
}

#[test]
fn state_files_are_private_and_symlinks_in_the_state_dir_are_not_followed() {
    let dir = tempdir();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    for name in ["vm-1.console", "vm-1.log", "vm-2.console", "vm-2.log"] {
        std::os::unix::fs::symlink(&victim, state.join(name)).unwrap();
    }
    let d = try_start(Some(&state), &[], None).unwrap();
    let (c, v) = d.create(r#"{"guest":"hello","args":["x"]}"#);
    assert_eq!(c, 201, "{v}");
    d.wait_exit(v["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    for e in std::fs::read_dir(&state).unwrap() {
        let e = e.unwrap();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        if m.file_type().is_file() {
            assert_eq!(
                m.mode() & 0o077,
                0,
                "{} is {:o}",
                e.path().display(),
                m.mode()
            );
        }
    }
}

#[test]
fn a_console_flood_is_capped_and_detail_stays_fast() {
    let d = start(&[]);
    let t0 = Instant::now();
    let (c, v) = d.create(r#"{"guest":"crash","args":["flood=4096"],"timeout_ms":120000}"#);
    assert_eq!(c, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    // While it floods, the API answers quickly.
    let mut worst = Duration::ZERO;
    let det = loop {
        let t = Instant::now();
        let det = d.detail(&id);
        worst = worst.max(t.elapsed());
        if det["info"]["state"] == "exited" {
            break det;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "flood still runs");
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "flood of 4 GiB done in {:?}, slowest detail {worst:?}",
        t0.elapsed()
    );
    assert_eq!(det["info"]["exit_code"], 0, "{det}");
    let t = Instant::now();
    let det = d.detail(&id);
    let last = t.elapsed();
    // A detail that waited on the flood (or read it all) would take the
    // flood's seconds; the bounds leave room for a loaded machine.
    assert!(
        worst < Duration::from_secs(3) && last < Duration::from_millis(1500),
        "{worst:?} {last:?}"
    );
    assert!(det["console"].as_str().unwrap().len() <= 64 << 10);
    let on_disk: u64 = std::fs::read_dir(&d.state)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{id}."))
        })
        .map(|e| e.metadata().unwrap().len())
        .sum();
    eprintln!("{on_disk} bytes of console kept on disk");
    assert!(on_disk <= 9 << 20, "{on_disk} bytes of console kept");
}

/// Sends `prefix` and waits for the server to close; how long it took.
fn closed_after<S: Read + Write>(mut s: S, prefix: &[u8]) -> Duration {
    s.write_all(prefix).unwrap();
    let t0 = Instant::now();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    t0.elapsed()
}

#[test]
fn a_partial_request_is_closed_after_the_header_timeout() {
    // A port found free here can still be taken when the daemon binds it
    // (the probe's listener lives on in a child another test is starting
    // at that moment): another port then.
    let (d, listen) = (0..5)
        .find_map(|_| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let listen = format!("127.0.0.1:{port}");
            let args = [
                "--header-timeout",
                "1s",
                "--body-timeout",
                "2s",
                "--listen",
                &listen,
                // Plain TCP, to send raw HTTP: the limits are the same
                // behind TLS, whose handshake has its own 2 s deadline
                // (cluster_auth tests).
                "--insecure-no-tls",
            ];
            let mut d = match try_start(None, &args, None) {
                Ok(d) => d,
                Err((_, log)) if log.contains("in use") => return None,
                Err(e) => panic!("daemon failed: {e:?}"),
            };
            // The admin socket comes first: wait for the TCP one.
            let t0 = Instant::now();
            while std::net::TcpStream::connect(&listen).is_err() {
                if let Some(st) = d.child.try_wait().unwrap() {
                    let log = std::fs::read_to_string(&d.stderr).unwrap_or_default();
                    assert!(log.contains("in use"), "daemon failed ({st}): {log}");
                    return None;
                }
                assert!(t0.elapsed() < Duration::from_secs(10), "no TCP listener");
                std::thread::sleep(Duration::from_millis(20));
            }
            Some((d, listen))
        })
        .expect("a free port in five tries");
    let head = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n".as_slice();
    let body = b"POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        .as_slice();
    // The TCP listener serves only the peer API: its route with a body.
    let peer_body = b"POST /v1/clones HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        .as_slice();
    let unix = || {
        let s = UnixStream::connect(&d.sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    };
    let tcp = || {
        let s = std::net::TcpStream::connect(&listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    };
    // Headers that never end, an idle keep-alive connection, a body that
    // never comes: all cut off, on both listeners.
    for (what, t, limit) in [
        // (Bounds well under the clients' 20 s, with room for a loaded
        // machine.)
        ("unix head", closed_after(unix(), head), 6),
        ("tcp head", closed_after(tcp(), head), 6),
        ("unix idle", closed_after(unix(), b""), 6),
        ("tcp idle", closed_after(tcp(), b""), 6),
        ("unix body", closed_after(unix(), body), 8),
        ("tcp body", closed_after(tcp(), peer_body), 8),
    ] {
        eprintln!("{what}: closed after {t:?}");
        assert!(t < Duration::from_secs(limit), "{what}: open for {t:?}");
        // Closed by the timeout, not refused at once.
        assert!(t > Duration::from_millis(800), "{what}: closed after {t:?}");
    }
    let (code, _) = d.http("GET", "/v1/health", None);
    assert_eq!(code, 200);
    let (code, _) = http_on(tcp(), "GET", "/v1/health", None);
    assert_eq!(code, 200);
}

#[test]
fn thousands_of_idle_connections_do_not_block_health() {
    // A daemon limited to 1024 descriptors, as on many hosts.
    let d = try_start(None, &[], Some(1024)).unwrap();
    let mut idle = Vec::new();
    for _ in 0..3000 {
        match UnixStream::connect(&d.sock) {
            Ok(mut s) => {
                let _ = s.write_all(b"GET /v1/heal");
                idle.push(s);
            }
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let (code, body) = d.http("GET", "/v1/health", None);
    eprintln!(
        "{} idle connections: health in {:?}",
        idle.len(),
        t0.elapsed()
    );
    assert_eq!(code, 200, "{body}");
    // Blocked behind the idle ones, it would wait for the client's 60 s.
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "health took {:?}",
        t0.elapsed()
    );
    drop(idle);
}

#[test]
fn kill_9_of_the_daemon_takes_its_vms_and_a_restart_reuses_nothing() {
    let dir = tempdir();
    let sock = dir.path().join("d.sock");
    let state = dir.path().join("state");
    let mut d = start_at(&sock, &state, &[], None, None).unwrap();
    let (c, v) = d.create(r#"{"guest":"crash","args":["spin"]}"#);
    assert_eq!(c, 201, "{v}");
    let id1 = v["id"].as_str().unwrap().to_string();
    let pid = v["pid"].as_i64().unwrap() as i32;
    std::thread::sleep(Duration::from_millis(300));
    let console1 = std::fs::read(state.join(format!("{id1}.console"))).unwrap();
    assert!(pid_alive(pid));
    d.child.kill().unwrap(); // SIGKILL
    d.child.wait().unwrap();
    let t0 = Instant::now();
    while pid_alive(pid) {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "VMM {pid} outlived its daemon"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let d2 = start_at(&sock, &state, &[], None, None).unwrap();
    assert!(d2.list().is_empty(), "{:?}", d2.list());
    let (c, v) = d2.create(r#"{"guest":"hello"}"#);
    assert_eq!(c, 201, "{v}");
    assert_ne!(v["id"].as_str().unwrap(), id1, "VM ID reused");
    d2.wait_exit(v["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(
        std::fs::read(state.join(format!("{id1}.console"))).unwrap(),
        console1
    );
    drop(d);
}

#[test]
fn a_guest_that_exits_at_once_is_a_finished_vm() {
    let d = start(&[]);
    for (code, want) in [
        (1, "crash: exit=1"),
        (0, "crash: exit=0"),
        (7, "crash: exit=7"),
    ] {
        let (c, v) = d.create(&format!(r#"{{"guest":"crash","args":["exit={code}"]}}"#));
        assert_eq!(c, 201, "exit={code}: {v}");
        let det = d.wait_exit(v["id"].as_str().unwrap(), Duration::from_secs(30));
        assert_eq!(det["info"]["exit_code"], code, "{det}");
        assert!(det["console"].as_str().unwrap().contains(want), "{det}");
    }
}

#[test]
fn bad_fields_get_a_400_naming_them_before_any_vmm_starts() {
    let d = start(&[]);
    let big = "a".repeat(1_900_000);
    let cases = [
        (r#"{"guest":"hello","mem":"lots"}"#.to_string(), "mem"),
        (r#"{"guest":"hello","mem":"5T"}"#.to_string(), "mem"),
        (r#"{"guest":"hello","mem":"3M"}"#.to_string(), "mem"),
        (r#"{"guest":"hello","mem":"128G"}"#.to_string(), "mem"),
        (
            r#"{"guest":"hello","timeout_ms":99999999999999}"#.to_string(),
            "timeout_ms",
        ),
        (
            r#"{"guest":"hello","max_clones":100000}"#.to_string(),
            "max_clones",
        ),
        (
            r#"{"guest":"hello","prefetch_window":0}"#.to_string(),
            "prefetch_window",
        ),
        (r#"{"guest":"--timings"}"#.to_string(), "guest"),
        (r#"{"guest":""}"#.to_string(), "guest"),
        (
            format!(r#"{{"guest":"hello","args":["{}"]}}"#, "b".repeat(5000)),
            "args",
        ),
        (
            r#"{"guest":"hello","args":["a\u0000b"]}"#.to_string(),
            "args",
        ),
        (format!(r#"{{"guest":"hello","args":["{big}"]}}"#), "limit"),
    ];
    for (body, field) in &cases {
        let (c, v) = d.create(body);
        let short: String = body.chars().take(80).collect();
        assert!((400..500).contains(&c), "{short}: {c} {v}");
        assert!(error_of(&v).contains(field), "{short}: {v}");
    }
    assert!(d.list().is_empty(), "a VMM was spawned: {:?}", d.list());
}

#[test]
fn a_full_state_dir_is_reported_as_no_space() {
    let dir = tempdir();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(st.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _u = Unmount(state.clone());
    let d = try_start(Some(&state), &[], None).unwrap();
    // A guest that writes more than the disk holds: its VMM says why.
    let (c, v) = d.create(r#"{"guest":"crash","args":["flood=8"],"timeout_ms":60000}"#);
    assert_eq!(c, 201, "{v}");
    let det = d.wait_exit(v["id"].as_str().unwrap(), Duration::from_secs(60));
    let log = det["log"].as_str().unwrap();
    assert!(
        log.to_lowercase().contains("no space left"),
        "{} {log}",
        det["info"]
    );
    assert!(!log.contains("panicked"), "{} {log}", det["info"]);
    // With the disk full, a create says so instead of a 500.
    let fill = state.join("filler");
    let mut f = std::fs::File::create(&fill).unwrap();
    while f.write_all(&[0u8; 4096]).is_ok() {}
    drop(f);
    let (c, v) = d.create(r#"{"guest":"hello"}"#);
    assert_eq!(c, 507, "{v}");
    assert!(error_of(&v).contains("no space left"), "{v}");
    drop(d);
}

#[test]
fn the_host_budget_of_vms_answers_503() {
    let d = start(&["--max-vms", "2"]);
    for _ in 0..2 {
        let (c, v) = d.create(r#"{"guest":"crash","args":["spin"]}"#);
        assert_eq!(c, 201, "{v}");
    }
    let (c, v) = d.create(r#"{"guest":"crash","args":["spin"]}"#);
    assert_eq!(c, 503, "{v}");
    assert!(error_of(&v).contains("--max-vms"), "{v}");
    assert_eq!(d.list().len(), 2);
}

#[test]
fn a_running_vm_has_its_own_cgroup_with_limits() {
    let d = start(&[]);
    let (c, v) = d.create(r#"{"guest":"crash","args":["spin"],"mem":"64M","max_clones":8}"#);
    assert_eq!(c, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let pid = v["pid"].as_i64().unwrap();
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mem_path = cg
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|x| x.1.to_string()))
        .expect("memory cgroup line");
    let pids_path = cg
        .lines()
        .find_map(|l| l.split_once(":pids:").map(|x| x.1.to_string()))
        .expect("pids cgroup line");
    assert!(mem_path.contains(&id), "{cg}");
    assert!(pids_path.contains(&id), "{cg}");
    let mem_dir = PathBuf::from(format!("/sys/fs/cgroup/memory{mem_path}"));
    let limit: u64 = std::fs::read_to_string(mem_dir.join("memory.limit_in_bytes"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The VM's RAM for itself and each clone, plus VMM overhead, and no more.
    assert!(
        (64 << 20..=9 * (64 << 20) + (1 << 30)).contains(&limit),
        "{limit}"
    );
    let pids_dir = PathBuf::from(format!("/sys/fs/cgroup/pids{pids_path}"));
    let max = std::fs::read_to_string(pids_dir.join("pids.max")).unwrap();
    let max: u64 = max.trim().parse().expect("a number, not max");
    assert!((9..=1000).contains(&max), "{max}");
    let (c, _) = d.http("DELETE", &format!("/v1/vms/{id}"), None);
    assert_eq!(c, 200);
    d.wait_exit(&id, Duration::from_secs(10));
    let t0 = Instant::now();
    while mem_dir.exists() || pids_dir.exists() {
        assert!(t0.elapsed() < Duration::from_secs(5), "cgroup left behind");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = d.log();
}

#[test]
fn records_of_ended_vms_go_after_the_retention() {
    let d = start(&["--retention", "1s"]);
    let (c, v) = d.create(r#"{"guest":"hello"}"#);
    assert_eq!(c, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    d.wait_exit(&id, Duration::from_secs(30));
    let t0 = Instant::now();
    loop {
        let (code, _) = d.http("GET", &format!("/v1/vms/{id}"), None);
        let files = std::fs::read_dir(&d.state)
            .unwrap()
            .filter(|e| {
                let n = e.as_ref().unwrap().file_name();
                n.to_string_lossy().starts_with(&format!("{id}."))
            })
            .count();
        if code == 404 && files == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{id} kept: {code}, {files} files"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The ID is still never handed out again.
    let (c, v) = d.create(r#"{"guest":"hello"}"#);
    assert_eq!(c, 201, "{v}");
    assert_ne!(v["id"].as_str().unwrap(), id);
}

/// `snowflock run --daemon` follows the console through the API's 64 KiB
/// tail: it must keep printing after the first 64 KiB, and say when the
/// guest wrote more between two looks than the tail holds.
#[test]
fn run_daemon_follows_the_console_past_the_tail_and_says_what_it_skipped() {
    let d = start(&[]);
    let out = Command::new(snowflock_bin())
        .arg("run")
        .arg("--daemon")
        .arg(&d.sock)
        .args(["--timeout", "120s", "crash", "--", "flood=512"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        out.stdout.len() > 2 * (64 << 10),
        "only {} bytes of a 512 MiB console were shown\n{stderr}",
        out.stdout.len()
    );
    assert!(
        stderr.contains("bytes of console output were skipped"),
        "{stderr}"
    );
}
