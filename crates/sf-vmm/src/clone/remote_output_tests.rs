//! The origin's side of remote clones' outputs and results: whatever a
//! clone host sends, names are checked, the caps hold and files land only
//! under the clone's own directory.

use super::*;
use std::net::TcpStream;

/// A group waiting for reports of `clones` on loopback (plain TCP, token
/// `[1; 16]`), each result capped at `cap` bytes, and its address.
fn group(clones: Vec<u32>, cap: u64) -> (RemoteGroup, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reports = ReportListener {
        listener,
        transport: Transport::Plain,
    };
    let g = RemoteGroup::new(reports, [1; 16], clones, Instant::now(), cap).unwrap();
    (g, addr)
}

/// A fresh directory for one test's outputs (named `tag`).
fn scratch(tag: &str) -> std::path::PathBuf {
    let t = std::env::temp_dir().join(format!("sf-remote-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&t);
    std::fs::create_dir_all(&t).unwrap();
    t
}

/// A group waiting for clone 2, whose outputs go to `<scratch>/out` with
/// a cap of 10 bytes per VM, the origin VM being clone 4 of the root (its
/// clone 2 is "4.2"); the scratch directory and the group's address.
fn output_group(tag: &str) -> (std::path::PathBuf, RemoteGroup, std::net::SocketAddr) {
    let t = scratch(tag);
    let (mut g, addr) = group(vec![2], sf_abi::clone::RESULT_FLOOR as u64);
    let dir = crate::output::OutputDir::open(&t.join("out"), 10, None).unwrap();
    g.set_outputs(Some(dir), "4");
    (t, g, addr)
}

/// Pumps `g` until `done` holds of it, for at most 5 s.
fn pump_until(g: &mut RemoteGroup, done: impl Fn(&RemoteGroup) -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !done(g) && Instant::now() < until {
        g.pump(Duration::from_millis(50));
    }
}

/// Whether `path` holds `len` bytes.
fn has_len(path: &std::path::Path, len: usize) -> bool {
    std::fs::read(path).is_ok_and(|b| b.len() == len)
}

/// The names in directory `dir`, sorted.
fn names(dir: &std::path::Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    names
}

#[test]
fn a_clone_hosts_output_frames_are_checked_like_local_calls() {
    let (t, mut g, addr) = output_group("out");
    let mut c = TcpStream::connect(addr).unwrap();
    let out = |append: bool, name: &[u8], data: &[u8]| Frame::Output {
        append,
        name: name.to_vec(),
        data: data.to_vec(),
    };
    // Before its hello, a connection's frames end it.
    let mut early = TcpStream::connect(addr).unwrap();
    out(false, b"early", b"x").write_to(&mut early).unwrap();
    Frame::Hello {
        token: [1; 16],
        id: 2,
    }
    .write_to(&mut c)
    .unwrap();
    for f in [
        out(false, b"../../escaped", b"x"),
        out(false, b"/tmp/escaped", b"x"),
        out(false, b"a\0b", b"x"),
        out(true, b"never-created", b"x"),
        out(false, b"ok.txt", b"12345678"),
        out(true, b"ok.txt", b"9"),
        // Past the cap of 10 bytes: refused, the file keeps 9.
        out(true, b"ok.txt", b"ab"),
    ] {
        f.write_to(&mut c).unwrap();
    }
    pump_until(&mut g, |_| has_len(&t.join("out/4.2/ok.txt"), 9));
    g.pump(Duration::from_millis(200));
    assert_eq!(
        std::fs::read(t.join("out/4.2/ok.txt")).unwrap(),
        b"123456789"
    );
    assert_eq!(names(&t.join("out/4.2")), ["ok.txt"]);
    assert_eq!(names(&t), ["out"], "nothing next to the output directory");
    assert!(!std::path::Path::new("/tmp/escaped").exists());
    // The first refusal is kept for the clone's join detail.
    let why = g.output_refused.get(&2).expect("a refusal recorded");
    assert!(
        why.contains("\"../../escaped\"") && why.contains("Invalid"),
        "{why}"
    );
    std::fs::remove_dir_all(&t).unwrap();
}

/// Outputs a clone host relays for the remote clone's own clones: the
/// clone path must be clone IDs, names and caps are checked per nested VM,
/// and files land only under `DIR/<origin path>.<clone>.<sub>/`.
#[test]
fn relayed_outputs_of_nested_clones_are_checked_like_local_calls() {
    let (t, mut g, addr) = output_group("nested");
    let mut c = TcpStream::connect(addr).unwrap();
    let out = |sub: &[u8], append: bool, name: &[u8], data: &[u8]| Frame::NestedOutput {
        sub: sub.to_vec(),
        append,
        name: name.to_vec(),
        data: data.to_vec(),
    };
    Frame::Hello {
        token: [1; 16],
        id: 2,
    }
    .write_to(&mut c)
    .unwrap();
    for f in [
        out(b"../../escaped", false, b"x", b"x"),
        out(b"3/../../escaped", false, b"x", b"x"),
        out(b"0", false, b"x", b"x"),
        out(b"3..1", false, b"x", b"x"),
        out(b"3", false, b"../escaped", b"x"),
        out(b"3", false, b"ok.txt", b"1234"),
        out(b"3.1", false, b"ok.txt", b"12345678"),
        // Each nested VM has its own cap of 10 bytes, as a local one.
        out(b"3.1", true, b"ok.txt", b"9ab"),
        out(b"3", true, b"ok.txt", b"5"),
    ] {
        f.write_to(&mut c).unwrap();
    }
    pump_until(&mut g, |_| has_len(&t.join("out/4.2.3/ok.txt"), 5));
    g.pump(Duration::from_millis(200));
    assert_eq!(std::fs::read(t.join("out/4.2.3/ok.txt")).unwrap(), b"12345");
    assert_eq!(
        std::fs::read(t.join("out/4.2.3.1/ok.txt")).unwrap(),
        b"12345678"
    );
    assert_eq!(names(&t.join("out")), ["4.2.3", "4.2.3.1"]);
    for d in ["out/4.2.3", "out/4.2.3.1"] {
        assert_eq!(names(&t.join(d)), ["ok.txt"], "{d}");
    }
    assert_eq!(names(&t), ["out"], "nothing next to the output directory");
    let why = g.output_refused.get(&2).expect("a refusal recorded");
    assert!(why.contains("invalid clone path"), "{why}");
    std::fs::remove_dir_all(&t).unwrap();
}

/// A clone host's result pieces are appended up to the ticket's cap and
/// become the report's result; one byte more and the clone is lost, with
/// the reason, and nothing past the cap is kept.
#[test]
fn result_pieces_are_held_to_the_tickets_cap() {
    let (mut g, addr) = group(vec![1, 2], 100);
    let hello = |id| Frame::Hello { token: [1; 16], id };
    let report = |id| {
        super::super::report::CloneReport {
            id,
            outcome: crate::Outcome::Exited { status: 0 },
            result: Vec::new(),
            first_entry_us: 0,
            rss_bytes: 0,
            private_bytes: 0,
            memory: None,
        }
        .encode()
    };
    let mut ok = TcpStream::connect(addr).unwrap();
    for f in [
        hello(1),
        Frame::ResultPiece(vec![1; 60]),
        Frame::ResultPiece(vec![2; 40]),
        Frame::Report(report(1)),
    ] {
        f.write_to(&mut ok).unwrap();
    }
    let mut greedy = TcpStream::connect(addr).unwrap();
    for f in [
        hello(2),
        Frame::ResultPiece(vec![3; 60]),
        Frame::ResultPiece(vec![4; 41]),
        Frame::Report(report(2)),
    ] {
        f.write_to(&mut greedy).unwrap();
    }
    pump_until(&mut g, |g| g.done());
    let got = &g.reports.get(&1).expect("clone 1's report").result;
    assert_eq!(got.len(), 100);
    assert_eq!((got[0], got[99]), (1, 2));
    assert!(!g.reports.contains_key(&2));
    let why = g.lost.get(&2).expect("clone 2 lost");
    assert!(why.contains("cap of 100"), "{why}");
    assert!(g.results.is_empty(), "nothing held past the cap");
}

/// A clone host that floods the origin with tiny frames (16 MiB of
/// heartbeats, 5 bytes each) neither stalls the origin's report loop nor
/// makes it hold more than about one frame of that connection's bytes,
/// and another clone's report still gets through.
#[test]
fn a_flood_of_tiny_frames_neither_stalls_the_origin_nor_grows_its_buffer() {
    let (mut g, addr) = group(vec![1, 2], 100);
    let mut flood = TcpStream::connect(addr).unwrap();
    Frame::Hello {
        token: [1; 16],
        id: 1,
    }
    .write_to(&mut flood)
    .unwrap();
    let writer = std::thread::spawn(move || {
        let burst = Frame::Heartbeat.encode().repeat((1 << 20) / 5);
        for _ in 0..16 {
            if std::io::Write::write_all(&mut flood, &burst).is_err() {
                return;
            }
        }
    });
    let (mut slowest, mut most_held) = (Duration::ZERO, 0);
    while !writer.is_finished() {
        let t = Instant::now();
        g.pump(Duration::from_millis(20));
        slowest = slowest.max(t.elapsed());
        let held = g.conns.iter().map(|c| c.buf.len()).max().unwrap_or(0);
        most_held = most_held.max(held);
    }
    writer.join().unwrap();
    assert!(slowest < Duration::from_secs(1), "a look took {slowest:?}");
    assert!(
        most_held <= READ_AHEAD + (16 << 10),
        "{most_held} bytes of one connection held"
    );
    let mut other = TcpStream::connect(addr).unwrap();
    let report = super::super::report::CloneReport {
        id: 2,
        outcome: crate::Outcome::Exited { status: 0 },
        result: Vec::new(),
        first_entry_us: 0,
        rss_bytes: 0,
        private_bytes: 0,
        memory: None,
    };
    for f in [
        Frame::Hello {
            token: [1; 16],
            id: 2,
        },
        Frame::Report(report.encode()),
    ] {
        f.write_to(&mut other).unwrap();
    }
    pump_until(&mut g, |g| g.reports.contains_key(&2));
    assert!(g.reports.contains_key(&2), "the other clone's report");
}

/// Once a clone is resolved (reported, or lost for sending too much), its
/// host cannot change that: pieces and a second report on a new
/// connection are refused, the first report stands, a lost clone stays
/// lost, and nothing more is held for either.
#[test]
fn pieces_and_reports_after_a_clone_is_resolved_change_nothing() {
    let (mut g, addr) = group(vec![1, 2], 100);
    let hello = |id| Frame::Hello { token: [1; 16], id };
    let report = |id, status| {
        super::super::report::CloneReport {
            id,
            outcome: crate::Outcome::Exited { status },
            result: Vec::new(),
            first_entry_us: 0,
            rss_bytes: 0,
            private_bytes: 0,
            memory: None,
        }
        .encode()
    };
    let send_all = |frames: Vec<Frame>| {
        let mut s = TcpStream::connect(addr).unwrap();
        for f in frames {
            f.write_to(&mut s).unwrap();
        }
        s
    };
    let _first = send_all(vec![
        hello(1),
        Frame::ResultPiece(vec![1; 10]),
        Frame::Report(report(1, 0)),
        // After its report, on the same connection: never read.
        Frame::ResultPiece(vec![9; 10]),
    ]);
    let _greedy = send_all(vec![hello(2), Frame::ResultPiece(vec![2; 101])]);
    pump_until(&mut g, |g| g.done());
    assert!(g.done());
    let _again = send_all(vec![
        hello(1),
        Frame::ResultPiece(vec![7; 50]),
        Frame::Report(report(1, 3)),
    ]);
    let _back = send_all(vec![
        hello(2),
        Frame::ResultPiece(vec![8; 5]),
        Frame::Report(report(2, 0)),
    ]);
    for _ in 0..10 {
        g.pump(Duration::from_millis(50));
    }
    let first = g.reports.get(&1).expect("clone 1's report");
    assert_eq!(first.result, vec![1; 10]);
    assert_eq!(first.outcome, crate::Outcome::Exited { status: 0 });
    assert!(!g.reports.contains_key(&2), "a lost clone came back");
    assert!(g.lost.contains_key(&2));
    assert!(g.results.is_empty(), "pieces held for resolved clones");
}
