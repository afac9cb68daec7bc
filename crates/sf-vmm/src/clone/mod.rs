//! VM fork on one host: tickets, the clone processes, joins and kills.
//!
//! At a clone hypercall the VMM captures a [`crate::descriptor::VmDescriptor`]
//! and forks one process, then resumes the parent at once (one fork on the
//! parent's critical path, whatever the number of clones). That child forks
//! clones 2..N as its *siblings* (CLONE_PARENT), sends their PIDs to the
//! parent, and becomes clone 1 itself. Each clone process builds a fresh KVM
//! VM from the descriptor on the copy-on-write guest RAM it inherited, sets
//! its clone ID in `rax`, and continues the same run loop. All clones are
//! the parent VMM's children: it reads each one's report from its own pipe
//! and waits for its exit status. Every clone dies with its parent
//! (PR_SET_PDEATHSIG), so killing a clone also kills the clones it made, and
//! no clone outlives the VM that made it.

pub(crate) mod fork;
pub mod host;
mod join;
pub mod origin_link;
pub mod process;
pub mod remote;
pub mod report;
pub mod tickets;
pub mod wire;

use sf_abi::clone::CloneStatus;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};
use tickets::Tickets;

/// Default limit on clones one VM may have outstanding: 16 per host CPU,
/// between 8 and 256.
pub fn default_max_clones() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    (cpus * 16).clamp(8, 256)
}

/// The running clones of one ticket, from the parent's side.
pub struct Group {
    pub granted: u32,
    /// Clone IDs running on this host, in the order their PIDs are known.
    pub local_ids: Vec<u32>,
    /// The first child: the first local clone, or else the memory holder.
    pub first: i32,
    /// Where the first child reports the other PIDs (read once, lazily).
    pub pid_pipe: Option<OwnedFd>,
    /// PIDs of the local clones (aligned with `local_ids`; 0: fork failed).
    pub pids: Vec<i32>,
    /// The process serving this group's frozen memory to remote clones.
    pub holder: Option<i32>,
    /// Which local clones have been waited for.
    pub reaped: Vec<bool>,
    /// One report pipe per local clone, aligned with `local_ids`.
    pub results: Vec<OwnedFd>,
    /// Clones on other hosts.
    pub remote: Option<remote::RemoteGroup>,
    pub killed: bool,
    pub request: Instant,
    /// Index into the VM's clone timelines.
    pub timeline: usize,
}

/// Whether this VMM process runs the original VM or a clone.
pub enum Role {
    Root,
    Clone {
        id: u32,
        /// Where the clone reports its end.
        reporter: Reporter,
    },
}

/// A clone's line back to its parent: a pipe on the same host, a TCP
/// connection from another host.
pub enum Reporter {
    Pipe(OwnedFd),
    Tcp(std::sync::Arc<origin_link::OriginLink>),
}

impl Reporter {
    pub fn send(&mut self, report: &[u8]) -> std::io::Result<()> {
        match self {
            Reporter::Pipe(fd) => process::write_all(fd, report),
            Reporter::Tcp(link) => link.report(report),
        }
    }
}

/// What the parent saw of one clone, for timelines and demos.
#[derive(Clone, Debug)]
pub struct CloneSummary {
    pub id: u32,
    pub status: CloneStatus,
    pub code: i32,
    pub detail: String,
    /// It ran on another host.
    pub remote: bool,
    /// Memory fetched on demand (remote clones).
    pub memory: Option<sf_api::FetchStats>,
    /// From the clone request to this clone's first vCPU entry.
    pub first_entry: Option<Duration>,
    pub rss_bytes: u64,
    pub private_bytes: u64,
}

/// One clone call, from the parent's side.
#[derive(Clone, Debug)]
pub struct CloneTimeline {
    pub ticket: u32,
    pub granted: u32,
    pub descriptor_bytes: usize,
    /// How many of the clones went to other hosts.
    pub remote_clones: u32,
    /// From the run's start to the clone request.
    pub requested_at: Duration,
    /// Request to the parent's vCPU running again.
    pub request_to_resumed: Duration,
    /// Request to the end of the join (all clones reported).
    pub request_to_joined: Option<Duration>,
    pub clones: Vec<CloneSummary>,
}

/// Per-VM clone state.
pub struct CloneHost {
    pub tickets: Tickets,
    pub role: Role,
    pub max_clones: u32,
    /// "2.1" for clone 1 of clone 2; empty for the root VM.
    pub path: String,
    pub timelines: Vec<CloneTimeline>,
}

impl CloneHost {
    pub fn new(max_clones: u32) -> CloneHost {
        CloneHost {
            tickets: Tickets::new(max_clones),
            role: Role::Root,
            max_clones,
            path: String::new(),
            timelines: Vec::new(),
        }
    }

    pub fn is_clone(&self) -> bool {
        matches!(self.role, Role::Clone { .. })
    }
}
