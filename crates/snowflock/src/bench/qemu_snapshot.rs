//! QEMU snapshot/restore of the same guest, the peer the clone benchmark
//! compares with: QEMU boots `forktest fill` (which touches all of its heap,
//! like the guest we clone), the state is saved with a migration to a file,
//! and each restore is timed from process start to the VM running again.

use super::qemu;
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A QMP connection (line-delimited JSON over a Unix socket).
struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Qmp {
    fn connect(sock: &Path, within: Duration) -> anyhow::Result<Qmp> {
        let until = Instant::now() + within;
        let s = loop {
            match UnixStream::connect(sock) {
                Ok(s) => break s,
                Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => bail!("QEMU's monitor at {} did not answer: {e}", sock.display()),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut q = Qmp {
            r: BufReader::new(s.try_clone()?),
            w: s,
        };
        q.line()?; // the greeting
        q.cmd("qmp_capabilities", None)?;
        Ok(q)
    }

    fn line(&mut self) -> anyhow::Result<Value> {
        let mut l = String::new();
        if self.r.read_line(&mut l)? == 0 {
            bail!("QEMU closed its monitor");
        }
        Ok(serde_json::from_str(&l)?)
    }

    /// Runs a command; skips events; returns `return` or fails on `error`.
    fn cmd(&mut self, name: &str, args: Option<Value>) -> anyhow::Result<Value> {
        let mut c = json!({ "execute": name });
        if let Some(a) = args {
            c["arguments"] = a;
        }
        writeln!(self.w, "{c}")?;
        loop {
            let v = self.line()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!("QEMU refused {name}: {e}");
            }
        }
    }

    fn status(&mut self) -> anyhow::Result<String> {
        Ok(self.cmd("query-status", None)?["status"]
            .as_str()
            .unwrap_or("")
            .to_string())
    }
}

fn base(qemu_bin: &Path, elf: &Path, mem_mib: u64, sock: &Path) -> Command {
    let mut c = qemu::command(qemu_bin, elf, mem_mib);
    c.arg("-append")
        .arg("fill")
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()));
    c.stdin(Stdio::null()).stderr(Stdio::null());
    c
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A saved QEMU state of `forktest fill` with `mem_mib` of RAM.
pub struct Snapshot {
    pub file: PathBuf,
    pub bytes: u64,
    elf: PathBuf,
    qemu: PathBuf,
    mem_mib: u64,
}

pub fn save(qemu_bin: &Path, dir: &Path, mem_mib: u64) -> anyhow::Result<Snapshot> {
    let elf = dir.join("forktest.elf");
    std::fs::write(
        &elf,
        sf_images::find("forktest").expect("forktest ships").elf,
    )?;
    let sock = dir.join(format!("save-{mem_mib}.sock"));
    let file = dir.join(format!("state-{mem_mib}"));
    let mut c = base(qemu_bin, &elf, mem_mib, &sock);
    c.stdout(Stdio::piped());
    let mut child = Killed(c.spawn().context("cannot start QEMU")?);
    let mut out = BufReader::new(child.0.stdout.take().expect("piped"));
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line)? == 0 {
            bail!("QEMU's guest ended before filling its memory");
        }
        if line.contains("filled") {
            break;
        }
    }
    let mut q = Qmp::connect(&sock, Duration::from_secs(10))?;
    q.cmd("stop", None)?;
    q.cmd(
        "migrate",
        Some(json!({ "uri": format!("exec:cat > {}", file.display()) })),
    )?;
    loop {
        match q.cmd("query-migrate", None)?["status"].as_str() {
            Some("completed") => break,
            Some("failed") | Some("cancelled") => bail!("QEMU could not save its state"),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    let _ = q.cmd("quit", None);
    let _ = out.read_to_end(&mut Vec::new());
    let bytes = std::fs::metadata(&file)?.len();
    Ok(Snapshot {
        file,
        bytes,
        elf,
        qemu: qemu_bin.to_path_buf(),
        mem_mib,
    })
}

impl Snapshot {
    /// One restore: process start to the restored VM running.
    pub fn restore(&self, n: usize) -> anyhow::Result<Duration> {
        let sock = self.file.with_extension(format!("restore-{n}.sock"));
        let _ = std::fs::remove_file(&sock);
        let t0 = Instant::now();
        let mut c = base(&self.qemu, &self.elf, self.mem_mib, &sock);
        c.arg("-incoming")
            .arg(format!("exec:cat {}", self.file.display()))
            .stdout(Stdio::null());
        let _child = Killed(c.spawn().context("cannot start QEMU")?);
        let mut q = Qmp::connect(&sock, Duration::from_secs(30))?;
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            match q.status()?.as_str() {
                "running" => break,
                // The state was saved stopped: once loaded, go on.
                "paused" | "postmigrate"
                    if q.cmd("query-migrate", None)?["status"].as_str() == Some("completed") =>
                {
                    q.cmd("cont", None)?;
                }
                _ => {}
            }
            if Instant::now() > until {
                bail!("QEMU did not resume within 60 s");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let took = t0.elapsed();
        let _ = q.cmd("quit", None);
        Ok(took)
    }
}
