//! The few process primitives cloning needs, each a thin checked wrapper
//! around one system call: pipes, fork, parent-death signals, wait.

use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

/// A pipe as (read end, write end), both close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills exactly two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub enum Forked {
    Parent(i32),
    Child,
}

/// fork(2). The child gets just the calling thread, so it must never need a
/// lock or stream another thread may hold. Rule: call it only while every
/// other thread of the process is parked (`super::park::park_all`): a
/// runner has no other thread; a clone host's fault, heartbeat and
/// origin-link threads park at known points holding nothing.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: see above; the child only continues the VMM's own code.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// Like [`fork`], but the child becomes a child of the caller's parent
/// (clone(2) with CLONE_PARENT): a spawner can create clones as siblings of
/// itself, all owned, waited for and killable by the VMM that asked.
pub fn fork_sibling() -> io::Result<Forked> {
    // SAFETY: the raw clone syscall without CLONE_VM duplicates the process
    // like fork; only the single-threaded spawner calls it, while it holds
    // no locks, so skipping glibc's fork handlers is safe.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match r {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid as i32)),
    }
}

/// In a fresh child: die with SIGKILL when the parent dies, so a clone
/// never outlives the VMM that owns it. Returns false if the parent is
/// already gone (then the caller must exit).
pub fn die_with_parent(parent: i32) -> bool {
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() == parent }
}

/// Ends this process now, without destructors or stdio flushing (a forked
/// helper must not flush buffers it shares with its parent).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

pub fn getpid() -> i32 {
    // SAFETY: no preconditions.
    unsafe { libc::getpid() }
}

/// How a child process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    pub fn from_raw(s: i32) -> ExitStatus {
        if libc::WIFSIGNALED(s) {
            ExitStatus::Signal(libc::WTERMSIG(s))
        } else {
            ExitStatus::Code(libc::WEXITSTATUS(s))
        }
    }

    pub fn raw(self) -> i32 {
        match self {
            ExitStatus::Code(c) => (c & 0xff) << 8,
            ExitStatus::Signal(s) => s & 0x7f,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit status {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// Blocks until child `pid` ends (retrying on EINTR).
pub fn wait(pid: i32) -> io::Result<ExitStatus> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(ExitStatus::from_raw(status));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

pub fn kill(pid: i32) -> io::Result<()> {
    // SAFETY: plain signal delivery to a process we created.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads until EOF, at most `limit` bytes (more is an error), retrying EINTR.
pub fn read_all(fd: &OwnedFd, limit: usize) -> io::Result<Vec<u8>> {
    let mut f = std::fs::File::from(fd.try_clone()?);
    let mut out = Vec::new();
    (&mut f).take(limit as u64 + 1).read_to_end(&mut out)?;
    if out.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message over {limit} bytes"),
        ));
    }
    Ok(out)
}

pub fn write_all(fd: &OwnedFd, bytes: &[u8]) -> io::Result<()> {
    std::fs::File::from(fd.try_clone()?).write_all(bytes)
}

/// Resident and private (not shared with any other process) bytes of this
/// process, from /proc/self/smaps_rollup.
pub fn memory_usage() -> (u64, u64) {
    let Ok(s) = std::fs::read_to_string("/proc/self/smaps_rollup") else {
        return (0, 0);
    };
    let field = |name: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (
        field("Rss:"),
        field("Private_Clean:") + field("Private_Dirty:"),
    )
}

/// Makes this process the reaper of orphaned descendants: a clone killed
/// with clones of its own leaves them to the nearest subreaper, and without
/// this that is PID 1 (they stayed zombies there). The root VMM sets it so it
/// can reap its whole family before it exits.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    SUBREAPER.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

static SUBREAPER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Children of this process (from /proc), living or zombie.
fn children() -> Vec<i32> {
    let tid = getpid();
    std::fs::read_to_string(format!("/proc/self/task/{tid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Reaps ended children that are not in `known` (orphans adopted as the
/// subreaper), leaving the clones this VMM still tracks to their own wait.
/// Does nothing unless this process is the subreaper.
pub fn reap_strays(known: &[i32]) {
    if !SUBREAPER.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    for pid in children() {
        if !known.contains(&pid) && is_zombie(pid) {
            let mut status = 0;
            // SAFETY: `status` is a valid out-pointer; `pid` is our child.
            unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        }
    }
}

/// At the end of the VMM: every child left (all were killed, so all are
/// ending) is waited for, for up to `grace`. Only the subreaper does this:
/// elsewhere (tests, benchmarks) other code may own children of its own.
pub fn reap_all(grace: std::time::Duration) {
    if !SUBREAPER.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let until = std::time::Instant::now() + grace;
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r > 0 {
            continue;
        }
        if r < 0 || std::time::Instant::now() >= until {
            return;
        }
        // Killed children (and orphans on their way here) are still ending.
        for pid in children() {
            let _ = kill(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// One line on stderr, ignoring failure: a full disk or a closed stderr
/// must not turn into a panic (which reads as "guest panicked", exit 101).
pub fn note(line: &str) {
    let _ = writeln!(io::stderr(), "{line}");
}
