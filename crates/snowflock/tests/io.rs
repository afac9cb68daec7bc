//! End-to-end tests of inputs and outputs: a guest and its clones (local
//! and on other hosts) read the files given with `--input` and write files
//! that land under `--output DIR`; names that would escape DIR are refused,
//! planted symlinks are not followed, inputs over the limit and outputs
//! over the cap are refused with their errors, and the host survives.

mod common;
use common::hosts::Hosts;
use common::*;
use std::path::Path;

/// The guest's hash (FNV-1a, 64 bits), computed here from the file.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Bytes that differ from run to run, so no answer can be built in.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// The line a VM prints for one input: `WHO input NAME LEN HASH`.
fn input_line(who: &str, name: &str, bytes: &[u8]) -> String {
    format!("{who} input {name} {} {:016x}", bytes.len(), fnv(bytes))
}

/// The hash over all inputs the guest returns, in input order.
fn all_hash(files: &[&[u8]]) -> u64 {
    files
        .iter()
        .fold(0u64, |all, f| all.rotate_left(7) ^ fnv(f))
}

/// The origin VM's ID, which names its directory under `--output-dir`, from
/// `snowflock run`'s stderr.
fn origin_vm(r: &Run) -> String {
    r.stderr
        .split_whitespace()
        .skip_while(|w| *w != "VM")
        .nth(1)
        .expect("the VM ID on stderr")
        .to_string()
}

/// The `hostile io` guest on namespace hosts ended well, every check of
/// its own passed.
fn assert_io_ok(r: &Run, h: &Hosts) {
    h.assert_printed(r, "io: 0 failed", "");
}

/// The `hostile io` guest's big output file: `len` bytes counting 0..251
/// over and over.
fn assert_big_output(path: &Path, len: usize) {
    let big = std::fs::read(path).unwrap();
    assert_eq!(big.len(), len, "{}", path.display());
    assert!(big.iter().enumerate().all(|(i, &b)| b as usize == i % 251));
}

#[test]
fn a_guest_and_its_local_clones_read_inputs_and_write_outputs() {
    let t = tempdir();
    let db = random_bytes(3 << 20 | 12345);
    let small = random_bytes(100);
    let db_path = write_file(t.path(), "db.bin", &db);
    let small_path = write_file(t.path(), "small.txt", &small);
    let out = t.path().join("out");
    let r = snowflock([
        "run",
        "--mem",
        "64M",
        "--input",
        format!("db={}", db_path.display()).as_str(),
        "--input",
        format!("s={}", small_path.display()).as_str(),
        "--output",
        out.to_str().unwrap(),
        "hostile",
        "--",
        "io",
        "n=3",
        "big=3",
        "nest=1",
    ]);
    r.assert_no_host_panic().assert_code(0);
    r.assert_stdout_has(&input_line("parent", "db", &db));
    r.assert_stdout_has(&input_line("parent", "s", &small));
    for id in 1..=3 {
        r.assert_stdout_has(&input_line(&format!("clone {id}"), "db", &db));
        r.assert_stdout_has(&format!("ok   io clone {id}: Exited 0 same inputs"));
    }
    r.assert_stdout_has("io: 0 failed");
    let all = all_hash(&[&db, &small]);
    let parent = std::fs::read_to_string(out.join("0/parent.txt")).unwrap();
    assert_eq!(parent, format!("parent {all:016x}\n"));
    for id in 1..=3 {
        let c = std::fs::read_to_string(out.join(format!("{id}/clone.txt"))).unwrap();
        assert_eq!(c, format!("clone {id} {all:016x}\n"));
        // Clone 1 of clone `id` writes under the ID path `id.1`.
        let n = std::fs::read_to_string(out.join(format!("{id}.1/nested.txt"))).unwrap();
        assert_eq!(n, format!("nested {id}.1 {all:016x}\n"));
    }
    // 3 MiB streamed in 1 MiB chunks.
    assert_big_output(&out.join("0/big.bin"), 3 << 20);
}

#[test]
fn output_names_that_escape_are_refused_and_planted_symlinks_are_not_followed() {
    let t = tempdir();
    let out = t.path().join("out");
    let outside = t.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let r = snowflock([
        "run",
        "--mem",
        "32M",
        "--output",
        out.to_str().unwrap(),
        "hostile",
        "--",
        "io",
    ]);
    r.assert_no_host_panic().assert_code(0);
    for what in ["slash", "dotdot", "escape", "nul", "too long", "absolute"] {
        r.assert_stdout_has(&format!("ok   io name {what}: got -22, want -22"));
    }
    // Only parent.txt was written, and nothing next to DIR.
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&out.join("0")), ["parent.txt"]);
    assert_eq!(names(t.path()), ["out", "outside"]);

    // A symlink planted as the VM's directory, and one as a file name.
    let victim = outside.join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    let planted = t.path().join("planted");
    std::fs::create_dir_all(&planted).unwrap();
    std::os::unix::fs::symlink(&outside, planted.join("0")).unwrap();
    let try_write = |dir: &Path| {
        snowflock([
            "run",
            "--output",
            dir.to_str().unwrap(),
            "hostile",
            "--",
            "io-try",
            "victim",
        ])
    };
    let r = try_write(&planted);
    r.assert_no_host_panic().assert_code(3);
    r.assert_stdout_has("io-try victim: Err(Io)");
    let planted2 = t.path().join("planted2");
    std::fs::create_dir_all(planted2.join("0")).unwrap();
    std::os::unix::fs::symlink(&victim, planted2.join("0/victim")).unwrap();
    let r = try_write(&planted2);
    r.assert_no_host_panic().assert_code(3);
    r.assert_stdout_has("io-try victim: Err(Exists)");
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    assert_eq!(names(&outside), ["victim"]);
}

#[test]
fn bad_inputs_are_refused_with_named_errors() {
    let t = tempdir();
    let f = write_file(t.path(), "f", b"abc");
    let big = t.path().join("big");
    // Sparse: 100 MiB for a 32 MiB guest.
    std::fs::File::create(&big)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let run = |inputs: &[String]| {
        let mut args: Vec<String> = vec!["run".into(), "--mem".into(), "32M".into()];
        for i in inputs {
            args.extend(["--input".into(), i.clone()]);
        }
        args.extend(["hostile".into(), "--".into(), "io".into()]);
        snowflock(args)
    };
    let fi = |n: &str| format!("{n}={}", f.display());
    let r = run(&[format!("db={}", big.display())]);
    r.assert_no_host_panic()
        .assert_code(1)
        .assert_stderr_has("the inputs need")
        .assert_stderr_has("are left after the image");
    run(&[fi("a"), fi("a")])
        .assert_code(1)
        .assert_stderr_has("given twice");
    run(&[format!("a={}", t.path().join("missing").display())])
        .assert_code(1)
        .assert_stderr_has("cannot open");
    run(&[format!("a={}", t.path().display())])
        .assert_code(1)
        .assert_stderr_has("not a regular file");
    for bad in ["../x", "a/b", ".h", &"n".repeat(65)] {
        run(&[fi(bad)])
            .assert_code(2)
            .assert_stderr_has("not allowed");
    }
    let many: Vec<String> = (0..65).map(|i| fi(&format!("n{i}"))).collect();
    run(&many).assert_code(1).assert_stderr_has("at most 64");
    // With PVH there is no input table.
    let r = snowflock(["run", "--boot", "pvh", "--input", fi("a").as_str(), "hello"]);
    r.assert_code(1)
        .assert_stderr_has("inputs need the direct boot");
}

/// A FIFO with no writer, a device, and symlinks to them as `--input`
/// paths: each is refused by name at once (opening never blocks on the
/// FIFO, nothing is read from the device), while a symlink to a regular
/// file is the operator's and is followed.
#[test]
fn fifos_devices_and_links_to_them_are_refused_without_blocking() {
    let t = tempdir();
    let fifo = t.path().join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path that lives for the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let to_zero = t.path().join("to-zero");
    std::os::unix::fs::symlink("/dev/zero", &to_zero).unwrap();
    let to_fifo = t.path().join("to-fifo");
    std::os::unix::fs::symlink(&fifo, &to_fifo).unwrap();
    let f = write_file(t.path(), "f", b"abc");
    let to_file = t.path().join("to-file");
    std::os::unix::fs::symlink(&f, &to_file).unwrap();
    let run = |path: &Path| {
        let input = format!("a={}", path.display());
        snowflock([
            "run", "--mem", "32M", "--input", &input, "hostile", "--", "io",
        ])
    };
    for bad in [fifo.as_path(), Path::new("/dev/zero"), &to_zero, &to_fifo] {
        let started = std::time::Instant::now();
        run(bad)
            .assert_no_host_panic()
            .assert_code(1)
            .assert_stderr_has("not a regular file");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{} took {:?}",
            bad.display(),
            started.elapsed()
        );
    }
    // The guest reads the 3 bytes of the file behind the link.
    run(&to_file)
        .assert_no_host_panic()
        .assert_stdout_has("input a 3 ");
}

#[test]
fn an_input_is_read_only_in_the_guest() {
    let t = tempdir();
    let f = write_file(t.path(), "f", b"abc");
    let r = snowflock([
        "run",
        "--input",
        format!("db={}", f.display()).as_str(),
        "hostile",
        "--",
        "io-write-input",
        "db",
    ]);
    r.assert_no_host_panic()
        .assert_code(102)
        .assert_stderr_has("page fault")
        .assert_stderr_has("a protected page");
    assert!(
        !r.stdout.contains("the write went through"),
        "{}",
        r.describe()
    );
    assert_eq!(std::fs::read(&f).unwrap(), b"abc");
}

#[test]
fn a_guest_writing_past_its_cap_gets_an_error_and_the_host_survives() {
    let t = tempdir();
    let out = t.path().join("out");
    let r = snowflock([
        "run",
        "--output",
        out.to_str().unwrap(),
        "--output-cap",
        "8M",
        "hostile",
        "--",
        "io-cap",
    ]);
    r.assert_no_host_panic()
        .assert_code(0)
        .assert_stdout_has("io-cap: refused after 8388608 bytes with TooBig; then Err(TooBig)")
        .assert_stdout_has("io-cap: still running");
    assert_eq!(
        std::fs::metadata(out.join("0/fill")).unwrap().len(),
        8 << 20
    );
}

#[test]
fn remote_clones_read_the_inputs_and_their_outputs_arrive_at_the_origin() {
    let io = tempdir();
    let images = io.path().join("images");
    let outputs = io.path().join("outputs");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&outputs).unwrap();
    let db = random_bytes(5 << 20 | 777);
    write_file(&images, "db.bin", &db);
    let h = Hosts::start_with(
        3,
        &[
            "--image-dir",
            images.to_str().unwrap(),
            "--output-dir",
            outputs.to_str().unwrap(),
        ],
    );
    let r = h.run(
        1,
        &[
            "--mem",
            "64M",
            "--placement",
            "remote",
            "--input",
            "db=db.bin",
            "--output",
            "-",
            "hostile",
            "--",
            "io",
            "n=2",
            "cbig=24",
        ],
    );
    assert_io_ok(&r, &h);
    for id in 1..=2 {
        r.assert_stdout_has(&input_line(&format!("clone {id}"), "db", &db));
    }
    let vm = origin_vm(&r);
    let all = all_hash(&[&db]);
    let dir = outputs.join(&vm);
    assert_eq!(
        std::fs::read_to_string(dir.join("0/parent.txt")).unwrap(),
        format!("parent {all:016x}\n")
    );
    for id in 1..=2 {
        let c = std::fs::read_to_string(dir.join(format!("{id}/clone.txt")))
            .unwrap_or_else(|e| panic!("clone {id}: {e}\n{}", h.describe()));
        assert_eq!(c, format!("clone {id} {all:016x}\n"));
        // 24 MiB from each clone, in 1 MiB hypercalls and 32 KiB frames.
        assert_big_output(&dir.join(format!("{id}/big.bin")), 24 << 20);
    }
    for l in r.stdout.lines().filter(|l| l.contains("MiB of output")) {
        eprintln!("{l}");
    }
    // A file outside the image directory is refused by name only.
    let r = h.run(1, &["--input", "db=passwd", "hello"]);
    assert_eq!(r.code, Some(1), "{}", r.describe());
    assert!(r.stderr.contains("no input file"), "{}", r.describe());
}

/// A remote clone's own (local) clone has no connection to the origin:
/// its outputs go through a pipe to the remote clone's VMM, which relays
/// them, and they land at the origin under the nested clone's ID path. Its
/// 3 MiB file is larger than a pipe holds, so the relay must read while
/// the remote clone waits in join.
#[test]
fn a_remote_clones_own_clone_writes_outputs_that_arrive_at_the_origin() {
    let io = tempdir();
    let outputs = io.path().join("outputs");
    std::fs::create_dir_all(&outputs).unwrap();
    let h = Hosts::start_with(3, &["--output-dir", outputs.to_str().unwrap()]);
    let r = h.run(
        1,
        &[
            "--mem",
            "64M",
            "--placement",
            "remote",
            "--output",
            "-",
            "hostile",
            "--",
            "io",
            "n=2",
            "nest=1",
            "nbig=3",
        ],
    );
    assert_io_ok(&r, &h);
    let vm = origin_vm(&r);
    let dir = outputs.join(&vm);
    let all = all_hash(&[]);
    for id in 1..=2 {
        let n = std::fs::read_to_string(dir.join(format!("{id}.1/nested.txt")))
            .unwrap_or_else(|e| panic!("clone {id}.1: {e}\n{}", h.describe()));
        assert_eq!(n, format!("nested {id}.1 {all:016x}\n"));
        assert_big_output(&dir.join(format!("{id}.1/big.bin")), 3 << 20);
    }
}

#[test]
fn the_c_api_reads_inputs_and_writes_outputs() {
    // guest/apps/capi/src/io.c, compiled against snowflock.h.
    let t = tempdir();
    let db = random_bytes(70_000);
    let f = write_file(t.path(), "db", &db);
    let out = t.path().join("out");
    let r = snowflock([
        "run",
        "--input",
        format!("db={}", f.display()).as_str(),
        "--output",
        out.to_str().unwrap(),
        "capi",
        "--",
        "io",
    ]);
    let h = format!("{:016x}", fnv(&db));
    r.assert_no_host_panic()
        .assert_code(0)
        .assert_stdout_has(&format!("capi io: db {h}, 0 failed"));
    assert_eq!(
        std::fs::read_to_string(out.join("0/c-io.txt")).unwrap(),
        format!("c {h}\n")
    );
}
