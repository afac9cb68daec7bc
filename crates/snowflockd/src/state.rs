//! The daemon's state directory: where VM consoles, VMM logs and memory
//! counters live (never a clone group's token: the daemon hands clone
//! requests to their VMMs on stdin).
//!
//! The directory must belong to the daemon's user and be writable by no one
//! else, because a file planted there (a symlink to `/etc/shadow`, a
//! pre-created console) would otherwise be written, truncated or read on
//! the daemon's behalf. It is opened once (`O_NOFOLLOW`) and every file is
//! created relative to that handle with `O_CREAT|O_EXCL|O_NOFOLLOW`, mode
//! 0600: never a symlink followed, never an existing file truncated. One
//! daemon owns a directory at a time (`flock` on `lock`), and VM IDs come
//! from a counter kept in `next-id`, so a restarted daemon never reuses an
//! ID (nor, therefore, a file name) of a previous run.

use anyhow::{bail, Context};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Where the daemon keeps its state unless told otherwise: under `/run`,
/// which only root can write, so no other user can create it first.
pub const DEFAULT_STATE_DIR: &str = "/run/snowflock";

/// Name prefixes of the files a VM leaves ("vm-3.console", "clone-4.log";
/// "group-2.json" are clone requests, tokens included, that earlier
/// versions wrote, so they go too); garbage collection touches nothing else.
const KINDS: [&str; 3] = ["vm-", "clone-", "group-"];

pub struct StateDir {
    path: PathBuf,
    dir: OwnedFd,
    /// Held for the daemon's life: the `flock` that keeps a second daemon out.
    _lock: File,
    counter: File,
    next: AtomicU64,
}

fn cstr(name: &str) -> io::Result<CString> {
    if name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a state file name has no '/'",
        ));
    }
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

impl StateDir {
    /// Opens (creating it 0700 if missing) and checks the state directory.
    pub fn open(path: &Path) -> anyhow::Result<StateDir> {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .with_context(|| format!("cannot create the state directory {}", path.display()))?,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot inspect the state directory {}", path.display())
                })
            }
            Ok(m) if m.file_type().is_symlink() => bail!(
                "the state directory {} is a symlink; pass the real directory with --state-dir",
                path.display()
            ),
            Ok(_) => {}
        }
        let c = CString::new(path.as_os_str().as_bytes()).context("NUL in the state directory")?;
        // SAFETY: a valid C string; the returned fd (if any) is owned below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error()).with_context(|| {
                format!(
                    "cannot open the state directory {} (it must be a directory, not a symlink)",
                    path.display()
                )
            });
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let dir = unsafe { OwnedFd::from_raw_fd(fd) };
        let meta = File::from(dir.try_clone()?).metadata()?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            bail!(
                "the state directory {} is owned by uid {}, not by this daemon's user (uid {me}): \
                 whoever owns it could read its tokens or plant symlinks; remove it or choose \
                 another with --state-dir",
                path.display(),
                meta.uid()
            );
        }
        if meta.mode() & 0o022 != 0 {
            bail!(
                "the state directory {} is group- or world-writable (mode {:o}): others could \
                 plant files or symlinks in it; `chmod 700` it or choose another with --state-dir",
                path.display(),
                meta.mode() & 0o7777
            );
        }
        let mut s = StateDir {
            path: path.to_path_buf(),
            _lock: File::from(dir.try_clone()?),
            counter: File::from(dir.try_clone()?),
            dir,
            next: AtomicU64::new(1),
        };
        s._lock = s.open_at("lock", libc::O_RDONLY | libc::O_CREAT)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(s._lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "another snowflockd uses the state directory {}; give this one its own --state-dir",
                path.display()
            );
        }
        s.counter = s.open_at("next-id", libc::O_RDWR | libc::O_CREAT)?;
        let mut text = String::new();
        s.counter.read_to_string(&mut text)?;
        let stored: u64 = text.trim().parse().unwrap_or(1);
        // Never below an ID whose files are still here (e.g. a lost counter).
        let seen = s.entries()?.iter().filter_map(|(n, _)| id_number(n)).max();
        s.next = AtomicU64::new(stored.max(seen.map_or(1, |n| n + 1)));
        Ok(s)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of a file in the directory (for VMM processes).
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn open_at(&self, name: &str, flags: i32) -> io::Result<File> {
        let c = cstr(name)?;
        // SAFETY: a valid directory fd and C string; the fd returned is owned below.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// A new file, 0600; fails if the name exists (even as a dangling symlink).
    pub fn create(&self, name: &str) -> io::Result<File> {
        self.open_at(name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::EEXIST) {
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!(
                            "{} already exists in the state directory and is not this daemon's",
                            name
                        ),
                    )
                } else {
                    e
                }
            })
    }

    /// Opens a file for reading, never through a symlink.
    pub fn open_read(&self, name: &str) -> io::Result<File> {
        self.open_at(name, libc::O_RDONLY)
    }

    pub fn remove(&self, name: &str) {
        if let Ok(c) = cstr(name) {
            // SAFETY: a valid directory fd and C string.
            unsafe { libc::unlinkat(self.dir.as_raw_fd(), c.as_ptr(), 0) };
        }
    }

    /// A VM ID never handed out before in this directory: the counter is
    /// stored before the ID is used.
    pub fn new_id(&self, kind: &str) -> io::Result<String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let text = format!("{:<20}\n", n + 1);
        self.counter.write_all_at(text.as_bytes(), 0)?;
        Ok(format!("{kind}-{n}"))
    }

    /// VM files (name, modification time) in the directory.
    fn entries(&self) -> io::Result<Vec<(String, SystemTime)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.path)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !KINDS.iter().any(|k| name.starts_with(k)) {
                continue;
            }
            let m = e.metadata()?;
            out.push((name, m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
        }
        Ok(out)
    }

    /// Removes VM files untouched for longer than `retention` whose VM this
    /// daemon does not track (files of a previous run, or of VMs already
    /// forgotten). Returns how many went.
    pub fn collect_stale(&self, retention: Duration, live: &dyn Fn(&str) -> bool) -> usize {
        let Ok(entries) = self.entries() else {
            return 0;
        };
        let now = SystemTime::now();
        let mut removed = 0;
        for (name, mtime) in entries {
            let id = name.split('.').next().unwrap_or("");
            if live(id) || now.duration_since(mtime).unwrap_or_default() < retention {
                continue;
            }
            self.remove(&name);
            removed += 1;
        }
        removed
    }
}

/// `vm-12.console` -> 12.
fn id_number(name: &str) -> Option<u64> {
    let id = name.split('.').next()?;
    id.rsplit_once('-')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ids_continue_after_a_reopen_and_past_files_left_behind() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("s");
        {
            let s = StateDir::open(&p).unwrap();
            assert_eq!(s.new_id("vm").unwrap(), "vm-1");
            assert_eq!(s.new_id("clone").unwrap(), "clone-2");
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        let s = StateDir::open(&p).unwrap();
        assert_eq!(s.new_id("vm").unwrap(), "vm-3");
        drop(s);
        std::fs::remove_file(p.join("next-id")).unwrap();
        std::fs::write(p.join("vm-41.console"), "").unwrap();
        let s = StateDir::open(&p).unwrap();
        assert_eq!(s.new_id("vm").unwrap(), "vm-42");
    }

    #[test]
    fn files_are_new_private_and_never_through_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::open(&t.path().join("s")).unwrap();
        let target = t.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, s.file("vm-9.console")).unwrap();
        assert!(s.create("vm-9.console").is_err());
        assert!(s.open_read("vm-9.console").is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        s.create("vm-9.log").unwrap();
        assert!(
            s.create("vm-9.log").is_err(),
            "an existing file is never reopened"
        );
        let m = std::fs::metadata(s.file("vm-9.log")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert!(s.create("../escape").is_err());
    }

    #[test]
    fn a_second_daemon_on_the_same_dir_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let _a = StateDir::open(t.path()).unwrap();
        let e = StateDir::open(t.path()).err().unwrap().to_string();
        assert!(e.contains("another snowflockd"), "{e}");
    }

    #[test]
    fn stale_files_go_after_the_retention_live_ones_stay() {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::open(t.path()).unwrap();
        s.create("vm-1.console").unwrap();
        s.create("vm-2.console").unwrap();
        assert_eq!(s.collect_stale(Duration::from_secs(3600), &|_| false), 0);
        assert_eq!(s.collect_stale(Duration::ZERO, &|id| id == "vm-2"), 1);
        assert!(!s.file("vm-1.console").exists());
        assert!(s.file("vm-2.console").exists());
        assert!(s.file("next-id").exists() && s.file("lock").exists());
    }
}
