//! QEMU as the reference peer: found or installed from Debian packages, and
//! timed booting the same guest ELF through its PVH entry.

use anyhow::{bail, Context};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const QEMU: &str = "qemu-system-x86_64";

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The QEMU binary, installing Debian's `qemu-system-x86` if it is missing.
pub fn ensure_installed() -> anyhow::Result<PathBuf> {
    if let Some(p) = on_path(QEMU) {
        return Ok(p);
    }
    eprintln!("bench: {QEMU} not found; installing Debian's qemu-system-x86 (about 20 s)...");
    let apt = |args: &[&str]| -> anyhow::Result<bool> {
        Ok(Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .context("cannot run apt-get (QEMU is needed for the comparison; install qemu-system-x86 or pass --no-qemu)")?
            .success())
    };
    if !apt(&["install", "-y", "-q", "qemu-system-x86"])? {
        apt(&["update", "-q"])?;
        if !apt(&["install", "-y", "-q", "qemu-system-x86"])? {
            bail!("apt-get could not install qemu-system-x86 (are we root?); install it or pass --no-qemu");
        }
    }
    on_path(QEMU).context("qemu-system-x86_64 still missing after installing qemu-system-x86")
}

/// The command line that boots `elf` the way the project's probes found to
/// work on these hosts: microvm, PVH `-kernel`, serial on stdout, and an
/// `isa-debug-exit` port so the guest's exit ends QEMU.
pub fn command(qemu: &Path, elf: &Path, mem_mib: u64) -> Command {
    let mut c = Command::new(qemu);
    c.args([
        "-enable-kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-M",
        "microvm",
        "-m",
    ])
    .arg(format!("{mem_mib}M"))
    .args([
        "-nographic",
        "-nodefaults",
        "-no-user-config",
        "-serial",
        "stdio",
    ])
    .args([
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-kernel",
    ])
    .arg(elf);
    c
}

/// One timed process run.
#[derive(Clone, Debug)]
pub struct ProcessRun {
    /// Spawn to the first byte on stdout.
    pub first_output: Option<Duration>,
    /// Spawn to exit.
    pub total: Duration,
    pub status: Option<i32>,
    pub stdout: Vec<u8>,
}

/// Spawns `cmd`, timing its first stdout byte and its exit; kills it after
/// `timeout`.
pub fn time_process(mut cmd: Command, timeout: Duration) -> anyhow::Result<ProcessRun> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut first = None;
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            first.get_or_insert_with(|| start.elapsed());
            out.extend_from_slice(&buf[..n]);
        }
        (first, out)
    });
    let pid = child.id();
    let (cancel, cancelled) = mpsc::channel::<()>();
    let killer = std::thread::spawn(move || {
        if cancelled.recv_timeout(timeout).is_err() {
            // SAFETY: kill(2) takes plain integers; it signals our own child,
            // which has not been reaped yet (the main thread is still in wait()).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
    let status = child
        .wait()
        .context("waiting for the benchmarked process")?;
    let total = start.elapsed();
    let _ = cancel.send(());
    let _ = killer.join();
    let (first_output, stdout) = reader.join().expect("reader thread");
    Ok(ProcessRun {
        first_output,
        total,
        status: status.code(),
        stdout,
    })
}
