//! The console the daemon keeps for each VMM: the VMM writes to a pipe, and
//! a thread of the daemon copies it into a file capped by rotation, so a
//! guest that writes without end costs a bounded amount of disk.
//!
//! Why the daemon and not the VMM: a VMM runs sandboxed, without root and
//! without path system calls once set up (crates/sf-vmm/src/sandbox), so it
//! could not rotate files in the 0700 state directory; and a VMM's local
//! clones share its stdout, so one pipe carries the whole family's console
//! to one writer and the family shares one cap.
//!
//! The console is `PATH` (the newest bytes) and `PATH.1` (the ones before);
//! when `PATH` reaches half the cap it becomes `PATH.1` (dropping the older
//! one) and a new `PATH` is created (0600, `O_EXCL|O_NOFOLLOW`). On disk at
//! most the cap plus one read (64 KiB) is kept: a flood of 4 GiB keeps
//! 8 MiB with the default cap.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Bytes a VM's console has had in all. The copier holds the lock while
/// it writes and rotates, and a reader of the tail holds it while it
/// reads, so the tail it reads ends exactly at the count.
pub type ConsoleEnd = Arc<Mutex<u64>>;

pub struct RotatingFile {
    path: PathBuf,
    previous: PathBuf,
    half: u64,
    file: File,
    written: u64,
}

fn open_append(path: &Path, create: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.append(true).custom_flags(libc::O_NOFOLLOW).mode(0o600);
    if create {
        o.create_new(true);
    }
    o.open(path)
}

impl RotatingFile {
    /// Opens `path`, which must exist (the daemon created it 0600).
    pub fn open(path: &Path, cap: u64) -> io::Result<RotatingFile> {
        let file = open_append(path, false)?;
        let written = file.metadata()?.len();
        let mut previous = path.as_os_str().to_owned();
        previous.push(".1");
        Ok(RotatingFile {
            path: path.to_path_buf(),
            previous: previous.into(),
            half: (cap / 2).max(4096),
            file,
            written,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        std::fs::rename(&self.path, &self.previous)?;
        self.file = open_append(&self.path, true)?;
        self.written = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written >= self.half {
            self.rotate()?;
        }
        match self.file.write_all(buf) {
            // A full disk: the older half is the first thing to give up.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                if std::fs::remove_file(&self.previous).is_err() {
                    return Err(e);
                }
                self.file.write_all(buf)?;
            }
            r => r?,
        }
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Copies a VMM's console pipe into its capped file until every writer of
/// the pipe (the VMM and its local clones) has closed it. A file that
/// cannot be written (full disk) is said once, in the daemon's log and in
/// the VM's own log (`vm_log`, whose first blocks the daemon reserved for
/// such last words), and the rest is drained and dropped, so the guest
/// never blocks on its console because of the host's disk. Runs on a
/// thread of its own: a flood must not take the daemon's event loop.
/// `end` counts every byte read, kept or dropped.
pub fn copy_console(
    id: &str,
    mut pipe: impl Read,
    mut file: RotatingFile,
    mut vm_log: File,
    end: ConsoleEnd,
) {
    let mut buf = vec![0u8; 64 << 10];
    let mut failed = false;
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(%id, "reading the VMM's console failed: {e}");
                return;
            }
        };
        let mut end = end.lock().unwrap_or_else(|e| e.into_inner());
        *end += n as u64;
        if failed {
            continue;
        }
        if let Err(e) = file.write_all(&buf[..n]) {
            tracing::warn!(%id, "the console file cannot be written, the rest of this VM's console is dropped: {e}");
            let _ = writeln!(
                vm_log,
                "error: cannot write the guest console: {e}; the rest of the console is dropped (free space in the state directory)"
            );
            failed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(p: &Path) -> u64 {
        std::fs::metadata(p).map_or(0, |m| m.len())
    }

    #[test]
    fn a_flood_keeps_at_most_the_cap_and_the_newest_bytes() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("c");
        std::fs::write(&p, "").unwrap();
        let mut w = RotatingFile::open(&p, 64 << 10).unwrap();
        for i in 0..10_000u32 {
            writeln!(w, "line {i:08}").unwrap();
        }
        let total = size(&p) + size(&t.path().join("c.1"));
        assert!(total <= (64 << 10) + 64, "{total}");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.ends_with("line 00009999\n"), "{text}");
    }

    #[test]
    fn the_copier_drains_a_pipe_into_the_capped_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("c");
        std::fs::write(&p, "").unwrap();
        let (r, mut w) = std::io::pipe().unwrap();
        let f = RotatingFile::open(&p, 64 << 10).unwrap();
        let log = tempfile::tempfile().unwrap();
        let end = ConsoleEnd::default();
        let e = end.clone();
        let copier = std::thread::spawn(move || copy_console("vm-1", r, f, log, e));
        for i in 0..20_000u32 {
            writeln!(w, "line {i:08}").unwrap();
        }
        drop(w);
        copier.join().unwrap();
        assert_eq!(*end.lock().unwrap(), 20_000 * 14);
        let total = size(&p) + size(&t.path().join("c.1"));
        assert!(total <= (64 << 10) + (64 << 10), "{total}");
        assert!(std::fs::read_to_string(&p)
            .unwrap()
            .ends_with("line 00019999\n"));
    }

    #[test]
    fn a_symlink_is_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let p = t.path().join("c");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        assert!(RotatingFile::open(&p, 1 << 20).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }
}
