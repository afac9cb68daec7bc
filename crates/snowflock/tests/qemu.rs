//! The shipped guests under a standard VMM: QEMU boots `hello.elf` through
//! its PVH entry (the guest's own ring-0 path), and `snowflock bench boot`
//! compares the two. QEMU is installed from Debian's packages when missing;
//! these tests never skip.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

const QEMU: &str = "qemu-system-x86_64";

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn apt_get(args: &[&str]) -> bool {
    Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run apt-get to install {QEMU}: {e}"))
        .success()
}

/// The QEMU binary, installed (once, even with tests in parallel) if missing.
fn qemu() -> PathBuf {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = on_path(QEMU) {
        return p;
    }
    eprintln!("{QEMU} is missing; installing qemu-system-x86");
    if !apt_get(&["install", "-y", "-q", "qemu-system-x86"]) {
        assert!(apt_get(&["update", "-q"]), "apt-get update failed");
        assert!(
            apt_get(&["install", "-y", "-q", "qemu-system-x86"]),
            "apt-get install qemu-system-x86 failed"
        );
    }
    on_path(QEMU).unwrap_or_else(|| panic!("{QEMU} still missing after installing qemu-system-x86"))
}

fn qemu_boot(elf: &Path, append: &str) -> Run {
    let mut c = Command::new(qemu());
    c.args([
        "-enable-kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-M",
        "microvm",
        "-m",
        "64M",
    ])
    .args([
        "-nographic",
        "-nodefaults",
        "-no-user-config",
        "-serial",
        "stdio",
    ])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    .arg("-kernel")
    .arg(elf)
    .args(["-append", append]);
    run_cmd(c, Duration::from_secs(30))
}

#[test]
fn qemu_boots_the_written_hello_elf() {
    let dir = tempdir();
    let r = snowflock([
        "guests".as_ref(),
        "--write".as_ref(),
        dir.path().as_os_str(),
    ]);
    r.assert_code(0).assert_stdout_has(&format!(
        "wrote {} guest images to {}",
        sf_images::IMAGES.len(),
        dir.path().display()
    ));
    for name in sf_images::IMAGES.iter().map(|i| i.name) {
        let written = std::fs::read(dir.path().join(format!("{name}.elf"))).expect("written guest");
        assert_eq!(
            written,
            shipped(name),
            "{name}.elf differs from the embedded image"
        );
    }

    let r = qemu_boot(&dir.path().join("hello.elf"), "x y");
    assert!(
        !r.killed_after_limit,
        "QEMU did not finish within 30 s\n{}",
        r.describe()
    );
    r.assert_stdout_has("Hello from a SnowFlock guest!")
        .assert_stdout_has("  arg 0: x\n")
        .assert_stdout_has("  arg 1: y\n");
    r.assert_stdout_has("  64 MiB of RAM, up ");
    // isa-debug-exit: QEMU exits with (value << 1) | 1, so guest status 0 is 1.
    r.assert_code(1);
}

#[test]
fn qemu_reports_a_guest_exception_through_the_exit_port() {
    // Without the SnowFlock VMM the guest kernel prints '!' on the serial
    // port and exits with 0x7f, which QEMU turns into (0x7f << 1) | 1.
    let dir = tempdir();
    let elf = write_file(dir.path(), "crash.elf", shipped("crash"));
    let r = qemu_boot(&elf, "ud");
    assert!(
        !r.killed_after_limit,
        "QEMU did not finish within 30 s\n{}",
        r.describe()
    );
    r.assert_stdout_has("crash: ud\n").assert_stdout_has("!");
    r.assert_code((0x7f << 1) | 1);
}

#[test]
fn bench_boot_writes_medians_for_both_vmms() {
    qemu(); // the bench would install it too; do it once, under the lock
    let dir = tempdir();
    let json = dir.path().join("boot.json");
    let mut c = Command::new(snowflock_bin());
    c.args(["bench", "boot", "--runs", "2", "--mem-mib", "64", "--json"])
        .arg(&json);
    let r = run_cmd(c, Duration::from_secs(90));
    r.assert_code(0).assert_no_host_panic();
    r.assert_stdout_has("boot benchmark: medians of 2 runs, 64 MiB guest");
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no JSON written: {e}\n{}", r.describe()));
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON: {e}\n{text}"));
    assert_eq!(v["runs"], 2, "{text}");
    for key in [
        "ours_run_ms_median",
        "qemu_run_ms_median",
        "ours_vm_create_ms_median",
        "ours_first_instr_ms_median",
    ] {
        let x = v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} is not a number in\n{text}"));
        assert!(x > 0.0 && x.is_finite(), "{key} = {x} in\n{text}");
    }
    assert!(
        v["qemu_version"]
            .as_str()
            .is_some_and(|s| s.starts_with("QEMU emulator version")),
        "{text}"
    );
}
