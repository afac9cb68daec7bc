//! The VMM's sandbox: after set-up each VMM process role installs a
//! seccomp-BPF allow-list ([`filters`]) and, where the role allows it,
//! gives up root ([`privileges`]).
//!
//! Roles and where their set-up ends:
//! - **runner** (`snowflock run`): after [`crate::Vm::new`] (image loaded,
//!   VM and vCPU built), before the first `KVM_RUN`; without peer hosts
//!   (no `--peer`, so every clone stays local) it gets no sockets;
//! - **local clone**: forked from a runner or clone; keeps the filter it
//!   inherits (it needs the same calls: it may clone in turn) and only
//!   takes the role's name for the kill message;
//! - **memory holder**: forked at a clone call with remote clones; stacks a
//!   tighter filter (no KVM, no fork, no files) before serving pages;
//! - **clone host** (`snowflock clone-host`): after its userfaultfd, VM,
//!   connections and counters file exist, before the first `KVM_RUN`;
//! - **page receiver** (`snowflock page-receiver`, one per clone group per
//!   clone host): after it joined the group and made the shared cache,
//!   before it accepts its first client. It keeps root's user ID without
//!   any capability, so the clone VMMs (uid 65534) can neither signal nor
//!   trace it.
//!
//! A call outside the list raises SIGSYS; [`sigsys`] writes one line naming
//! the call and the role to stderr and the process dies of SIGSYS, which
//! its parent (the daemon, or `join`) sees.
//!
//! | role | distinct calls allowed | runs as after set-up |
//! | --- | --- | --- |
//! | runner with peer hosts (under a daemon that has peers) | 65 | uid/gid 65534, no capabilities |
//! | runner without peers (`snowflock run`) | 49: no sockets | uid/gid 65534, no capabilities |
//! | local clone | its runner's, 65 or 49 (inherited, exact) | as its parent (the drop happened before the fork) |
//! | memory holder | 56 (stacked on its parent's) | as its parent |
//! | clone host | 63 | uid/gid 65534, no capabilities |
//! | page receiver | 45 | uid 0, no capabilities |
//!
//! Nothing here needs root after set-up: KVM works on the inherited
//! /dev/kvm fd (a local clone makes its VM with it), and the clone host's
//! userfaultfd exists before the drop. A *new* userfaultfd could not be
//! made afterwards (`vm.unprivileged_userfaultfd = 0` here and
//! /dev/userfaultfd is 0600 root; `UFFD_USER_MODE_ONLY` would not see
//! KVM's kernel-mode accesses), which is fine: a clone host's own clones
//! are local forks of fully fetched memory.
//!
//! Cost, measured here: a filtered `ioctl` (the longest chain, the vCPU
//! requests) takes ~0.12-0.18 us more than an unfiltered one (~0.25 us on
//! this nested hypervisor), under 1% of a ~25 us VM exit; clone latency
//! (`snowflock run forktest --timings -- touch n=1`, 30 runs each) was
//! within noise: first clone running p50 4.45 ms sandboxed, 4.38 ms not.

mod filters;
mod names;
pub mod privileges;
mod sigsys;
#[cfg(test)]
mod tests;

pub use filters::{allow_list, AllowList, Entry};
pub use privileges::{Credentials, Dropped};

use std::sync::atomic::{AtomicBool, Ordering};

/// A VMM process role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// A runner with peer hosts its clones may go to.
    Runner = 1,
    LocalClone = 2,
    MemoryHolder = 3,
    CloneHost = 4,
    /// A runner without peers (plain `snowflock run`): no network at all.
    LoneRunner = 5,
    /// A clone host's one receiver of a clone group's page pushes
    /// (`snowflock page-receiver`).
    PageReceiver = 6,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Runner,
        Role::LocalClone,
        Role::MemoryHolder,
        Role::CloneHost,
        Role::LoneRunner,
        Role::PageReceiver,
    ];

    /// A runner's role: without peers it needs no sockets.
    pub fn runner(peers: bool) -> Role {
        if peers {
            Role::Runner
        } else {
            Role::LoneRunner
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Runner | Role::LoneRunner => "runner",
            Role::LocalClone => "local clone",
            Role::MemoryHolder => "memory holder",
            Role::CloneHost => "clone host",
            Role::PageReceiver => "page receiver",
        }
    }
}

/// How a VMM sandboxes itself.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Whom to become after set-up; `None` keeps the user ID and drops
    /// every capability instead (see [`privileges`]).
    pub user: Option<Credentials>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            user: Some(Credentials::NOBODY),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot build the {role} seccomp filter: {source}")]
    Compile {
        role: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("cannot install the {role} seccomp filter (run with --no-sandbox to debug without it): {source}")]
    Install {
        role: &'static str,
        #[source]
        source: seccompiler::Error,
    },
    #[error("cannot install the SIGSYS handler that reports seccomp kills: {0}")]
    Handler(#[source] std::io::Error),
    #[error("cannot drop privileges to {to} (pick another user with --sandbox-user, or --no-sandbox to debug): {source}")]
    Privileges {
        to: String,
        #[source]
        source: std::io::Error,
    },
}

/// Whether this process runs under a filter (inherited by forks).
static ACTIVE: AtomicBool = AtomicBool::new(false);

pub fn is_active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Ends set-up for `role`: drops privileges per `policy`, then installs the
/// role's filter on every thread of the process. After this returns, any
/// system call outside the role's list kills the process with a message.
pub fn enter(role: Role, policy: &Policy) -> Result<Dropped, SandboxError> {
    let prog = compile(role)?;
    // While it still may: later, sandboxed, its service threads may still
    // go ahead of its vCPU (and a memory holder forked from it ahead of
    // every clone's vCPU).
    crate::thread_priority::allow_service_priority();
    let dropped = privileges::drop(policy.user).map_err(|source| SandboxError::Privileges {
        to: policy
            .user
            .map_or("no capabilities".into(), |c| c.to_string()),
        source,
    })?;
    install(role, &prog)?;
    tracing::debug!(role = role.name(), ?dropped, "sandbox entered");
    Ok(dropped)
}

/// In a process forked from a sandboxed one: take `role`, stacking its
/// tighter filter when it has one. Does nothing when the parent was not
/// sandboxed (`--no-sandbox`, or a VMM embedded in a benchmark).
pub fn narrow(role: Role) -> Result<(), SandboxError> {
    if !is_active() {
        return Ok(());
    }
    if role == Role::LocalClone {
        // Same needs as its parent; the inherited filter is exact.
        sigsys::set_role(role);
        return Ok(());
    }
    let prog = compile(role)?;
    // The SIGSYS handler is inherited; only the role's name changes.
    sigsys::set_role(role);
    apply(role, &prog)
}

fn compile(role: Role) -> Result<seccompiler::BpfProgram, SandboxError> {
    allow_list(role)
        .compile()
        .map_err(|source| SandboxError::Compile {
            role: role.name(),
            source,
        })
}

/// The SIGSYS reporter, then the filter on every thread (TSYNC: a clone
/// host already runs its fault and heartbeat threads). Allocates nothing,
/// so a test may call it in a child forked from a threaded process.
fn install(role: Role, prog: &seccompiler::BpfProgram) -> Result<(), SandboxError> {
    sigsys::install(role).map_err(SandboxError::Handler)?;
    apply(role, prog)
}

fn apply(role: Role, prog: &seccompiler::BpfProgram) -> Result<(), SandboxError> {
    seccompiler::apply_filter_all_threads(prog).map_err(|source| SandboxError::Install {
        role: role.name(),
        source,
    })?;
    ACTIVE.store(true, Ordering::Relaxed);
    Ok(())
}

/// What a compromised VMM would try first: execve(2) of a program. Under
/// the sandbox this kills the process (with the logged line) and never
/// returns; without it, it returns the error of a failed exec, or replaces
/// the process with `/bin/true`.
pub fn selftest() -> std::io::Error {
    let path = c"/bin/true";
    let argv = [path.as_ptr(), std::ptr::null()];
    // SAFETY: a valid path and NULL-terminated argv and envp.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), [std::ptr::null()].as_ptr()) };
    std::io::Error::last_os_error()
}
