//! `snowflock page-receiver`: a clone host's one receiver of a clone
//! group's page pushes (see `sf_vmm::remote::host_receiver`). Started by
//! the group's first clone VMM on the host, never by hand: the group's
//! spec (with its token) comes on stdin.

use anyhow::Context;
use sf_vmm::remote::host_receiver::{self, Service};
use sf_vmm::sandbox::{Policy, Role};
use std::io::Write;

pub fn main() -> anyhow::Result<u8> {
    let spec = host_receiver::read_spec(&mut std::io::stdin().lock())
        .context("cannot read the page receiver's spec on stdin")?;
    let starter = crate::net::starter_pidfd();
    leave_vm_cgroup();
    // Not a child of the VMM that started it: that VMM reaps its whole
    // family before it exits, and the receiver outlives it when later
    // clones of the group still run here.
    crate::net::detach()?;
    let mut out = std::io::stdout();
    let Some(listener) = host_receiver::bind(&spec)? else {
        let _ = writeln!(out, "taken");
        return Ok(0);
    };
    raise_priority();
    let mut service =
        Service::new(spec, listener).with_context(|| format!("page receiver of {spec}: set-up"))?;
    quiet_stderr()?;
    // Root's user ID without any capability: VMMs (uid 65534) can neither
    // signal nor trace it.
    sf_vmm::sandbox::enter(Role::PageReceiver, &Policy { user: None })
        .with_context(|| format!("page receiver of {spec}: sandbox"))?;
    if writeln!(out, "ready").and_then(|()| out.flush()).is_err() {
        // The VMM that started it is gone: nobody will connect.
        return Ok(0);
    }
    service
        .run(starter)
        .with_context(|| format!("page receiver of {spec}"))?;
    Ok(0)
}

/// Moves this process out of the cgroup of the VMM that started it: the
/// daemon kills whatever is left in a VM's cgroup when that VMM ends, and
/// the receiver serves the group's other clones here until the last one
/// ends. Its memory stays bounded without it: the cache is sealed at the
/// guest RAM's size. cgroup v1: into `snowflock/` (the daemon's VM cgroups'
/// parent); v2: the root (a v2 parent with controllers holds no process).
fn leave_vm_cgroup() {
    let Ok(text) = std::fs::read_to_string("/proc/self/cgroup") else {
        return;
    };
    let pid = std::process::id().to_string();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Some(vm) = path.strip_prefix("/snowflock/") else {
            continue;
        };
        if vm.contains('/') {
            continue;
        }
        let procs: Vec<String> = if controllers.is_empty() {
            vec!["/sys/fs/cgroup/cgroup.procs".into()]
        } else {
            controllers
                .split(',')
                .map(|c| format!("/sys/fs/cgroup/{c}/snowflock/cgroup.procs"))
                .collect()
        };
        for p in procs {
            if let Err(e) = std::fs::write(&p, &pid) {
                tracing::warn!("page receiver: cannot leave the VM's cgroup ({p}): {e}");
            }
        }
    }
}

/// The receiver's nice value. It serves every clone of the group on this
/// host: while it waits for a CPU behind their vCPUs, their faults miss the
/// cache and the holder pushes those pages again (seen at 32 clones on 3
/// hosts, load ~15: 62,769 datagrams for 16,404 pages at nice 0). Its work
/// is small (one AES-GCM open and one copy per page, ~2 us), so it costs
/// the vCPUs little.
const NICE: libc::c_int = -10;

/// Needs CAP_SYS_NICE: before the sandbox drops the capabilities.
fn raise_priority() {
    // SAFETY: setpriority with integer arguments, on this process.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) } != 0 {
        tracing::warn!(
            "page receiver keeps its priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// From here on the receiver's stderr is /dev/null: it was the starting
/// clone's, whose end the daemon waits for (its copier reads the pipe to
/// its end) while the receiver serves the group's other clones. Set-up
/// errors went to that clone's log before this.
fn quiet_stderr() -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .context("page receiver: cannot open /dev/null")?;
    // SAFETY: dup2 onto fd 2 of two descriptors this process owns.
    if unsafe { libc::dup2(null.as_raw_fd(), 2) } < 0 {
        return Err(std::io::Error::last_os_error()).context("page receiver: dup2 of stderr");
    }
    Ok(())
}
