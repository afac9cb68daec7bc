//! The console of a VMM started by the daemon: a file capped by rotation,
//! so a guest that writes without end costs a bounded amount of disk.
//!
//! The console is `PATH` (the newest bytes) and `PATH.1` (the ones before);
//! when `PATH` reaches half the cap it is renamed to `PATH.1` (dropping the
//! older one) and a new `PATH` is created (0600, `O_EXCL|O_NOFOLLOW`). Local
//! clones are forks of this process and write through their own copy of
//! the writer: each write checks that its file is still `PATH` (by inode)
//! and reopens it when another process of the family has rotated, so the
//! family shares the cap. On disk at most `cap` plus one write per process
//! (64 KiB) is kept. Errors keep their `io::Error` (ENOSPC stays ENOSPC).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConsoleArgs {
    /// Internal: write the guest console to this file (which must exist)
    /// instead of stdout, capped by rotation.
    #[arg(long, value_name = "PATH", hide = true)]
    console_file: Option<PathBuf>,
    /// Internal: with --console-file, the most console bytes kept (the file
    /// and its previous rotation together).
    #[arg(long, value_name = "BYTES", hide = true, default_value_t = 8 << 20)]
    console_cap: u64,
}

/// The console writer: stdout, or the capped file.
pub fn open(a: &ConsoleArgs) -> io::Result<Box<dyn Write>> {
    match &a.console_file {
        None => Ok(Box::new(io::stdout().lock())),
        Some(p) => Ok(Box::new(RotatingFile::open(p, a.console_cap)?)),
    }
}

pub struct RotatingFile {
    path: PathBuf,
    previous: PathBuf,
    half: u64,
    file: File,
    ino: u64,
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
    pub fn open(path: &Path, cap: u64) -> io::Result<RotatingFile> {
        let file = open_append(path, false)?;
        let ino = file.metadata()?.ino();
        let mut previous = path.as_os_str().to_owned();
        previous.push(".1");
        Ok(RotatingFile {
            path: path.to_path_buf(),
            previous: previous.into(),
            half: (cap / 2).max(4096),
            file,
            ino,
        })
    }

    /// Makes `self.file` a file of `PATH` with room left.
    fn make_room(&mut self) -> io::Result<()> {
        if self.file.metadata()?.len() < self.half {
            return Ok(());
        }
        let current = std::fs::symlink_metadata(&self.path).map(|m| m.ino()).ok();
        if current == Some(self.ino) {
            // Ours is the full one: rotate it.
            std::fs::rename(&self.path, &self.previous)?;
        }
        self.file = match open_append(&self.path, true) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => open_append(&self.path, false)?,
            r => r?,
        };
        self.ino = self.file.metadata()?.ino();
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.make_room()?;
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
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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
    fn two_writers_of_one_family_share_the_cap() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("c");
        std::fs::write(&p, "").unwrap();
        let mut a = RotatingFile::open(&p, 16 << 10).unwrap();
        let mut b = RotatingFile::open(&p, 16 << 10).unwrap();
        for _ in 0..5000 {
            a.write_all(b"aaaaaaaaaaaaaaa\n").unwrap();
            b.write_all(b"bbbbbbbbbbbbbbb\n").unwrap();
        }
        let files = std::fs::read_dir(t.path()).unwrap().count();
        assert_eq!(files, 2);
        let total = size(&p) + size(&t.path().join("c.1"));
        assert!(total <= (16 << 10) + 64, "{total}");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains('a') && text.contains('b'));
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
