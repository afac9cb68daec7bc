//! A cgroup per VMM process: a memory limit and a process-count limit the
//! guest cannot lift, so one VM (with its local clones, which are forks of
//! its VMM and stay in its cgroup) cannot exhaust the host.
//!
//! cgroup v1 with the `memory` and `pids` controllers mounted under
//! `/sys/fs/cgroup/{memory,pids}` is used when present; otherwise a v2
//! hierarchy at `/sys/fs/cgroup` whose root enables both controllers. The
//! daemon creates `snowflock/d<daemon pid>.<vm id>` before the VMM starts,
//! the VMM joins it between fork and exec (so it never runs outside it),
//! and the daemon removes it once the VMM has exited.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

/// What a VMM process costs besides its guest RAM: page tables, KVM
/// state, buffers and the memory holder's maps (measured: a running
/// `snowflock run` of a 64 MiB guest peaks near 20 MiB RSS; doubled and
/// rounded up for the remote paths).
pub const VMM_OVERHEAD: u64 = 64 << 20;
/// Tasks one VMM may run: its threads (vCPU, watchdog, page fetcher and
/// server threads) and short-lived helpers.
pub const TASKS_PER_VMM: u64 = 16;

/// The limits of one VM whose guest has `mem` bytes of RAM and may have
/// `max_clones` live clones on this host: each clone may dirty all of its
/// copy-on-write RAM.
pub fn limits(mem: u64, max_clones: u32) -> (u64, u64) {
    let vmms = 1 + max_clones as u64;
    (
        (mem + VMM_OVERHEAD).saturating_mul(vmms),
        TASKS_PER_VMM * vmms + TASKS_PER_VMM,
    )
}

#[derive(Clone, Debug)]
enum Layout {
    V1 { memory: PathBuf, pids: PathBuf },
    V2 { root: PathBuf },
}

/// The cgroup hierarchy this host offers, found once at start.
#[derive(Clone, Debug)]
pub struct Cgroups {
    layout: Option<Layout>,
}

impl Cgroups {
    pub fn detect() -> Cgroups {
        let base = Path::new("/sys/fs/cgroup");
        let v1 = Layout::V1 {
            memory: base.join("memory/snowflock"),
            pids: base.join("pids/snowflock"),
        };
        let layout = if base.join("memory/memory.limit_in_bytes").exists()
            && base.join("pids/cgroup.procs").exists()
        {
            Some(v1)
        } else {
            let ctl = std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
            let has = |c| ctl.split_whitespace().any(|x| x == c);
            (has("memory") && has("pids")).then(|| Layout::V2 {
                root: base.join("snowflock"),
            })
        };
        // A daemon that may not create cgroups (not root) runs its VMMs
        // without them, and says so at start.
        let usable = match &layout {
            Some(Layout::V1 { memory, pids }) => {
                std::fs::create_dir_all(memory).is_ok() && std::fs::create_dir_all(pids).is_ok()
            }
            Some(Layout::V2 { root }) => {
                root.exists()
                    || (std::fs::create_dir(root).is_ok()
                        && std::fs::write(root.join("cgroup.subtree_control"), "+memory +pids")
                            .is_ok())
            }
            None => false,
        };
        Cgroups {
            layout: layout.filter(|_| usable),
        }
    }

    /// A description for the start-up log.
    pub fn describe(&self) -> &'static str {
        match self.layout {
            Some(Layout::V1 { .. }) => "cgroup v1 memory + pids",
            Some(Layout::V2 { .. }) => "cgroup v2 memory + pids",
            None => "none (no usable memory and pids controllers): VMMs run without per-VM limits",
        }
    }

    /// Creates the cgroup `name` with the given limits.
    pub fn create(&self, name: &str, mem_limit: u64, pids_limit: u64) -> io::Result<VmCgroup> {
        let Some(layout) = &self.layout else {
            return Ok(VmCgroup::default());
        };
        let mut cg = VmCgroup::default();
        match layout {
            Layout::V1 { memory, pids } => {
                let m = make(memory, name, &mut cg)?;
                write(&m.join("memory.limit_in_bytes"), mem_limit)?;
                // Swap must not lift the limit where swap accounting exists.
                let _ = write(&m.join("memory.memsw.limit_in_bytes"), mem_limit);
                let p = make(pids, name, &mut cg)?;
                write(&p.join("pids.max"), pids_limit)?;
            }
            Layout::V2 { root } => {
                let d = make(root, name, &mut cg)?;
                write(&d.join("memory.max"), mem_limit)?;
                let _ = write(&d.join("memory.swap.max"), 0);
                write(&d.join("pids.max"), pids_limit)?;
            }
        }
        Ok(cg)
    }

    /// Removes the cgroups left by daemons that are gone (a `kill -9`),
    /// killing any process still in them: nothing a dead daemon started
    /// keeps running unseen.
    pub fn collect_stale(&self) {
        let parents: Vec<&PathBuf> = match &self.layout {
            Some(Layout::V1 { memory, pids }) => vec![memory, pids],
            Some(Layout::V2 { root }) => vec![root],
            None => vec![],
        };
        for parent in parents {
            let Ok(rd) = std::fs::read_dir(parent) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name
                    .strip_prefix('d')
                    .and_then(|r| r.split('.').next())
                    .and_then(|p| p.parse::<u32>().ok());
                if let Some(pid) = pid {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        remove_stale(&e.path());
                    }
                }
            }
        }
    }
}

fn remove_stale(dir: &Path) {
    for _ in 0..50 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for p in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: signals a process left in a dead daemon's VM cgroup.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        if std::fs::remove_dir(dir).is_ok() {
            tracing::info!(cgroup = %dir.display(), "removed a dead daemon's VM cgroup");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn make(parent: &Path, name: &str, cg: &mut VmCgroup) -> io::Result<PathBuf> {
    std::fs::create_dir_all(parent)?;
    let d = parent.join(name);
    std::fs::create_dir(&d)?;
    cg.dirs.push(d.clone());
    cg.procs.push(
        std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("cgroup.procs"))?,
    );
    Ok(d)
}

fn write(file: &Path, value: u64) -> io::Result<()> {
    std::fs::write(file, value.to_string())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", file.display())))
}

/// The cgroup(s) of one VMM; removed when dropped.
#[derive(Default, Debug)]
pub struct VmCgroup {
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each, opened by the daemon so the child only has
    /// to write to them (async-signal-safe) between fork and exec.
    procs: Vec<File>,
}

impl VmCgroup {
    pub fn path(&self) -> Option<&Path> {
        self.dirs.first().map(PathBuf::as_path)
    }

    /// Processes still in the cgroup (a VMM's clones that outlived it).
    pub fn pids(&self) -> Vec<i32> {
        self.dirs
            .first()
            .and_then(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// The descriptors the child writes "0" (itself) to.
    pub fn join_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// Closes the descriptors the daemon no longer needs once the VMM runs.
    pub fn close_fds(&mut self) {
        self.procs.clear();
    }
}

impl Drop for VmCgroup {
    fn drop(&mut self) {
        self.procs.clear();
        for d in &self.dirs {
            // Empty once the VMM and every fork of it have exited.
            if let Err(e) = std::fs::remove_dir(d) {
                tracing::warn!(cgroup = %d.display(), error = %e, "cannot remove a VM's cgroup");
            }
        }
    }
}

/// Between fork and exec: moves the calling process into the cgroups.
/// Only `write(2)`, which is async-signal-safe.
pub fn join_in_child(fds: &[RawFd]) -> io::Result<()> {
    for &fd in fds {
        // SAFETY: writes one byte from a static buffer to an fd the parent
        // opened and keeps open until the child has exec'd.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_grow_with_memory_and_clones() {
        let (m, p) = limits(64 << 20, 0);
        assert_eq!(m, 128 << 20);
        assert_eq!(p, 32);
        let (m, p) = limits(64 << 20, 8);
        assert_eq!(m, 9 * (128 << 20));
        assert_eq!(p, 160);
    }
}
