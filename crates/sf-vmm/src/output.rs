//! The guest's output files (`--output DIR`): each VM writes into
//! `DIR/<vm-id>/NAME`, where vm-id is `0` for the root VM and the clone's
//! ID path for a clone (`2`, nested `2.3`).
//!
//! Nothing lands outside DIR: DIR is opened once at set-up (before the
//! sandbox) and every later path is one validated component resolved
//! relative to a directory fd, with `O_NOFOLLOW`, so a symlink planted in
//! DIR (as `DIR/0` or as a file name) is refused, never followed. Files are
//! created with `O_EXCL`: a VMM never opens an existing file for writing,
//! so a file (or hard link) from before the run is never overwritten; the
//! guest gets `Busy` for it. Writing a name again in the same run replaces
//! the VM's own file (truncating the fd it created). A VM may write at most
//! `cap` bytes in all (every byte sent counts, rewrites included) in at
//! most [`OUTPUTS_MAX`] files.
//!
//! A clone on another host ships its pieces to the origin over its report
//! connection; a local clone of such a clone has no connection of its own
//! (a second writer would break the TLS session), so it writes them into a
//! pipe to its parent VMM, which relays them the same way with the
//! clone's ID path (`sub`, see [`valid_sub_path`]). The origin writes them
//! under `DIR/<remote clone's path>.<sub>/`, checking names and caps again.
//!
//! The sandboxed VMM runs as an unprivileged user: [`OutputDir::open`]
//! makes that user DIR's owner so its clones can add their directories.

use sf_abi::hypercall::Error as HcError;
use sf_abi::io::valid_name;
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default of `--output-cap`: bytes one VM may write.
pub const DEFAULT_CAP: u64 = 1 << 30;
/// Most distinct output files one VM may create.
pub const OUTPUTS_MAX: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum OutputDirError {
    #[error("cannot create the output directory {path:?}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the output directory {path:?} (it must be a directory)")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot hand the output directory {path:?} to the sandbox user {uid}:{gid} (run as root, or use --no-sandbox)")]
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        #[source]
        source: std::io::Error,
    },
}

/// DIR, opened at set-up.
#[derive(Clone, Debug)]
pub struct OutputDir {
    fd: Arc<OwnedFd>,
    path: PathBuf,
    /// Bytes one VM may write in all.
    pub cap: u64,
}

fn cstr(s: &[u8]) -> CString {
    CString::new(s).expect("valid names hold no NUL")
}

fn last_err<T>(rc: i32, ok: T) -> std::io::Result<T> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ok)
    }
}

impl OutputDir {
    /// Creates DIR if missing (0700) and opens it; with `owner`, the user
    /// the VMM becomes in its sandbox, makes that user its owner.
    pub fn open(path: &Path, cap: u64, owner: Option<(u32, u32)>) -> Result<Self, OutputDirError> {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(OutputDirError::Create {
                    path: path.into(),
                    source: e,
                })
            }
            _ => {}
        }
        let p = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
            OutputDirError::Open {
                path: path.into(),
                source: std::io::ErrorKind::InvalidInput.into(),
            }
        })?;
        // SAFETY: a NUL-terminated path; the fd returned is owned below.
        let fd = unsafe {
            libc::open(
                p.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        let fd = last_err(fd, fd).map_err(|source| OutputDirError::Open {
            path: path.into(),
            source,
        })?;
        // SAFETY: a fresh fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if let Some((uid, gid)) = owner {
            // SAFETY: fchown of the fd just opened.
            let rc = unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) };
            last_err(rc, ()).map_err(|source| OutputDirError::Chown {
                path: path.into(),
                uid,
                gid,
                source,
            })?;
        }
        Ok(OutputDir {
            fd: Arc::new(fd),
            path: path.into(),
            cap,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (creating if needed) the directory `sub` of DIR, refusing a
    /// symlink there.
    pub(crate) fn subdir(&self, sub: &str) -> std::io::Result<OwnedFd> {
        let c = cstr(sub.as_bytes());
        // SAFETY: a NUL-terminated name relative to our own directory fd.
        let rc = unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o755) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e);
            }
        }
        open_dir_at(&self.fd, &c)
    }
}

fn open_dir_at(dir: &OwnedFd, name: &CString) -> std::io::Result<OwnedFd> {
    // No O_DIRECTORY (its bits are O_TMPFILE's, which the sandbox refuses):
    // O_NOFOLLOW refuses a symlink, O_NONBLOCK a FIFO's wait, and fstat
    // anything else that is not a directory.
    // SAFETY: relative to an fd we own.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    let fd = last_err(fd, fd)?;
    // SAFETY: a fresh fd nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if !File::from(fd.try_clone()?).metadata()?.is_dir() {
        return Err(std::io::Error::from_raw_os_error(libc::ENOTDIR));
    }
    Ok(fd)
}

/// Creates `name` in `dir`, never following a symlink and never opening
/// an existing file.
pub(crate) fn create_at(dir: &OwnedFd, name: &[u8]) -> std::io::Result<File> {
    let c = cstr(name);
    // SAFETY: a NUL-terminated single component relative to our fd.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o644 as libc::c_uint,
        )
    };
    let fd = last_err(fd, fd)?;
    // SAFETY: a fresh fd nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Where a VM's outputs go.
#[derive(Default)]
enum Sink {
    /// No `--output`: output calls get `Denied`.
    #[default]
    None,
    Local(OutputDir),
    /// A clone on another host: to its origin, over the report connection,
    /// with the origin's cap (the origin checks everything again).
    Origin {
        link: Arc<crate::clone::origin_link::OriginLink>,
        cap: u64,
    },
    /// A local clone of a remote clone: to the parent VMM over a pipe
    /// (as [`Frame::NestedOutput`](crate::clone::wire::Frame) frames),
    /// which relays them to the origin.
    Parent {
        pipe: OwnedFd,
        cap: u64,
    },
}

/// Longest relayed ID path below a remote clone (`sub`).
pub const SUB_PATH_MAX: usize = 64;

/// Whether `sub` is an ID path of clones below a remote clone: 1 to 8
/// dot-separated clone IDs (decimal, no leading zero, not 0), at most
/// [`SUB_PATH_MAX`] bytes. Nothing else may reach a directory name.
pub fn valid_sub_path(sub: &[u8]) -> bool {
    !sub.is_empty()
        && sub.len() <= SUB_PATH_MAX
        && sub.split(|&b| b == b'.').count() <= 8
        && sub.split(|&b| b == b'.').all(|id| {
            !id.is_empty()
                && id.len() <= 10
                && id[0] != b'0'
                && id.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(id).is_ok_and(|s| s.parse::<u32>().is_ok())
        })
}

/// One VM's outputs (or, at the origin, one remote clone's).
#[derive(Default)]
pub struct Outputs {
    sink: Sink,
    vm_dir: Option<OwnedFd>,
    /// The files this VM created (locally: their fds).
    files: HashMap<Vec<u8>, Option<File>>,
    written: u64,
}

impl Outputs {
    pub fn new(dir: Option<OutputDir>) -> Outputs {
        Outputs {
            sink: dir.map_or(Sink::None, Sink::Local),
            ..Default::default()
        }
    }

    /// A remote clone's outputs, shipped to its origin.
    pub(crate) fn to_origin(link: Arc<crate::clone::origin_link::OriginLink>, cap: u64) -> Self {
        Outputs {
            sink: Sink::Origin { link, cap },
            ..Default::default()
        }
    }

    /// The output directory (the origin's side of remote clones).
    pub(crate) fn dir(&self) -> Option<&OutputDir> {
        match &self.sink {
            Sink::Local(d) => Some(d),
            _ => None,
        }
    }

    /// The cap a clone of this VM gets, if it may write outputs.
    pub(crate) fn cap(&self) -> Option<u64> {
        match &self.sink {
            Sink::None => None,
            Sink::Local(d) => Some(d.cap),
            Sink::Origin { cap, .. } | Sink::Parent { cap, .. } => Some(*cap),
        }
    }

    /// Whether this VM's local clones send their outputs through it (it
    /// is, or descends locally from, a clone on another host).
    pub(crate) fn relays(&self) -> bool {
        matches!(self.sink, Sink::Origin { .. } | Sink::Parent { .. })
    }

    /// Passes on a piece of an output of the clone at ID path `sub` below
    /// this VM (read from that clone's pipe); the origin checks it.
    pub(crate) fn relay(
        &self,
        sub: &[u8],
        append: bool,
        name: &[u8],
        data: &[u8],
    ) -> std::io::Result<()> {
        match &self.sink {
            Sink::Origin { link, .. } => link.output(Some(sub), append, name, data),
            Sink::Parent { pipe, .. } => to_parent(pipe, sub, append, name, data),
            _ => Err(std::io::ErrorKind::Unsupported.into()),
        }
    }

    /// In a new clone: its own directory, files and count (the parent's
    /// fds, inherited by the fork, are closed here). A local clone of a
    /// remote clone writes into `relay`, a pipe its parent reads (the
    /// origin link is its parent's alone: a second writer would break the
    /// TLS session); without one it has no outputs.
    pub(crate) fn reset_for_clone(&mut self, relay: Option<OwnedFd>) {
        self.vm_dir = None;
        self.files.clear();
        self.written = 0;
        if let Some(cap) = self.cap().filter(|_| self.relays()) {
            self.sink = relay.map_or(Sink::None, |pipe| Sink::Parent { pipe, cap });
        }
    }

    /// One output call of the VM whose ID path is `vm_path` (empty for the
    /// root VM). Every argument is the guest's (or a remote clone's):
    /// checked here.
    pub fn write(
        &mut self,
        vm_path: &str,
        append: bool,
        name: &[u8],
        data: &[u8],
    ) -> Result<u64, HcError> {
        let Some(cap) = self.cap() else {
            return Err(HcError::Denied);
        };
        if !valid_name(name) {
            return Err(HcError::Invalid);
        }
        let len = data.len() as u64;
        if self.written.saturating_add(len) > cap {
            tracing::warn!(
                vm = vm_id(vm_path),
                cap,
                "output refused: the VM's output cap is reached"
            );
            return Err(HcError::TooBig);
        }
        let known = self.files.contains_key(name);
        if append && !known {
            return Err(HcError::NoEntry);
        }
        if !known && self.files.len() >= OUTPUTS_MAX {
            return Err(HcError::TooBig);
        }
        let show = String::from_utf8_lossy(name).into_owned();
        let io_err = |what: &str, e: std::io::Error| {
            tracing::warn!(
                vm = vm_id(vm_path),
                name = show,
                "output {what} failed: {e}"
            );
            HcError::Io
        };
        match &self.sink {
            Sink::None => unreachable!("no cap without a sink"),
            Sink::Origin { link, .. } => {
                link.output(None, append, name, data)
                    .map_err(|e| io_err("send", e))?;
                self.files.entry(name.to_vec()).or_insert(None);
            }
            Sink::Parent { pipe, .. } => {
                to_parent(pipe, b"", append, name, data).map_err(|e| io_err("send", e))?;
                self.files.entry(name.to_vec()).or_insert(None);
            }
            Sink::Local(dir) => {
                if !known {
                    if self.vm_dir.is_none() {
                        let d = dir
                            .subdir(&vm_id(vm_path))
                            .map_err(|e| io_err("directory", e))?;
                        self.vm_dir = Some(d);
                    }
                    let f = match create_at(self.vm_dir.as_ref().expect("set"), name) {
                        Ok(f) => f,
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                            tracing::warn!(
                                vm = vm_id(vm_path),
                                name = show,
                                "output refused: the file exists from before this run (never overwritten)"
                            );
                            return Err(HcError::Busy);
                        }
                        Err(e) => return Err(io_err("create", e)),
                    };
                    self.files.insert(name.to_vec(), Some(f));
                }
                let f = self
                    .files
                    .get_mut(name)
                    .and_then(|f| f.as_mut())
                    .expect("a local file");
                if known && !append {
                    f.set_len(0).map_err(|e| io_err("truncate", e))?;
                    f.rewind().map_err(|e| io_err("rewind", e))?;
                }
                f.write_all(data).map_err(|e| io_err("write", e))?;
            }
        }
        self.written += len;
        Ok(len)
    }
}

/// Writes one output (of this VM when `sub` is empty) to the parent VMM's
/// pipe in [`OUTPUT_PIECE`](crate::clone::wire::OUTPUT_PIECE) frames; a
/// parent that reads slowly slows the clone (a pipe holds 64 KiB).
fn to_parent(
    pipe: &OwnedFd,
    sub: &[u8],
    append: bool,
    name: &[u8],
    data: &[u8],
) -> std::io::Result<()> {
    use crate::clone::wire::{Frame, OUTPUT_PIECE};
    let mut append = append;
    let mut pieces = data.chunks(OUTPUT_PIECE);
    let first = pieces.next().unwrap_or(&[]);
    for piece in std::iter::once(first).chain(pieces) {
        let f = Frame::output_piece(Some(sub), append, name, piece);
        crate::clone::process::write_all(pipe, &f.encode())?;
        append = true;
    }
    Ok(())
}

/// The directory name of the VM with this ID path.
pub fn vm_id(path: &str) -> String {
    if path.is_empty() {
        "0".into()
    } else {
        path.into()
    }
}

#[cfg(test)]
mod tests;
