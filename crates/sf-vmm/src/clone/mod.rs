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
//!
//! Limits hold for a whole clone family, not per VM: a VM's clone budget
//! counts all its live descendants, and each clone gets a share of its
//! parent's budget (see [`tickets`]); the run's deadline is the family's,
//! inherited by every clone (remote ones get the time left).

pub(crate) mod fork;
pub mod host;
mod join;
pub mod origin_link;
pub mod park;
pub mod process;
pub(crate) mod relay;
pub mod remote;
pub mod report;
pub mod tickets;
pub mod wire;

use sf_abi::clone::CloneStatus;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};
use tickets::Tickets;

/// The most live clones one family may have, whatever is asked: each is a
/// VMM process, and with 256 of them a 2-CPU host still answers in
/// milliseconds (a clone bomb measured without a limit made 6,867).
pub const MAX_CLONES_LIMIT: u32 = 256;

/// Default budget of a VM family's live clones (all nested levels): 16 per
/// host CPU, between 8 and 256.
pub fn default_max_clones() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    (cpus * 16).clamp(8, MAX_CLONES_LIMIT)
}

/// How many timelines of past clone calls a VM keeps (the most recent):
/// they are for demos and benchmarks, and a guest that clones 10,000 times
/// must not make its VMM grow (or every later fork copy more).
pub const TIMELINES_KEPT: usize = 64;

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
    /// Its counters (a mapping it shares with this process).
    pub holder_stats: Option<std::sync::Arc<crate::remote::SharedStats>>,
    /// Which local clones have been waited for.
    pub reaped: Vec<bool>,
    /// One report pipe per local clone, aligned with `local_ids`.
    pub results: Vec<OwnedFd>,
    /// Output pipes of the local clones when this VM relays their outputs
    /// to its origin (it is a clone on another host, or descends from one).
    pub(crate) relays: Vec<relay::Relay>,
    /// Clones on other hosts.
    pub remote: Option<remote::RemoteGroup>,
    pub killed: bool,
    pub request: Instant,
    /// Budget handed down to the clones (each got `delegated / granted`),
    /// counted against this VM's budget until the ticket is released.
    pub delegated: u32,
    /// The most result bytes each clone of this group may hand back.
    pub result_cap: u64,
    /// This call's timeline, completed at the join.
    pub timeline: Box<CloneTimeline>,
}

impl Group {
    /// Every process of this group the VMM knows (clones, memory holder).
    pub fn known_pids(&self) -> impl Iterator<Item = i32> + '_ {
        std::iter::once(self.first)
            .chain(self.pids.iter().copied())
            .chain(self.holder)
            .filter(|&p| p > 0)
    }
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
    /// Sends the clone's final report. Over TCP its result goes ahead in
    /// pieces (frames stay small whatever the result's size).
    pub fn send(&mut self, mut report: report::CloneReport) -> std::io::Result<()> {
        match self {
            Reporter::Pipe(fd) => process::write_all(fd, &report.encode()),
            Reporter::Tcp(link) => {
                link.result(&std::mem::take(&mut report.result))?;
                link.report(&report.encode())
            }
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
    /// Request to every local clone's report being in (the parent then
    /// reads them and waits for the clone processes to end).
    pub request_to_reported: Option<Duration>,
    /// Request to the end of the join (all clones reported).
    pub request_to_joined: Option<Duration>,
    pub clones: Vec<CloneSummary>,
    /// What the memory holder sent (remote clones), read at the join.
    pub holder: Option<crate::remote::ServerStats>,
}

/// Per-VM clone state.
pub struct CloneHost {
    pub tickets: Tickets,
    pub role: Role,
    /// "2.1" for clone 1 of clone 2; empty for the root VM.
    pub path: String,
    /// The most result bytes this VM may hand its parent at its exit
    /// (the parent's ticket fixed it; [`sf_abi::clone::RESULT_FLOOR`] for
    /// a root VM, whose result nobody joins).
    pub result_cap: u64,
    /// The last [`TIMELINES_KEPT`] joined clone calls, oldest first.
    pub timelines: std::collections::VecDeque<CloneTimeline>,
    /// This VM's recorded working set, shared with its memory holders
    /// (mapped at its first remote clone call, before that fork).
    working_set: Option<std::sync::Arc<crate::remote::working_set::WorkingSet>>,
}

impl CloneHost {
    /// `budget`: the most live descendants this VM may have (clamped to
    /// [`MAX_CLONES_LIMIT`], also when it comes from another host).
    pub fn new(budget: u32) -> CloneHost {
        CloneHost {
            tickets: Tickets::new(budget.min(MAX_CLONES_LIMIT)),
            role: Role::Root,
            path: String::new(),
            result_cap: sf_abi::clone::RESULT_FLOOR as u64,
            timelines: std::collections::VecDeque::new(),
            working_set: None,
        }
    }

    /// This VM's working set record, mapped on first use (in the parent,
    /// before it forks the holder that records into it). `None` if the
    /// mapping failed: clones then fault as without one.
    pub fn working_set(
        &mut self,
    ) -> Option<std::sync::Arc<crate::remote::working_set::WorkingSet>> {
        use crate::remote::working_set::{WorkingSet, MAX_PAGES};
        if self.working_set.is_none() {
            self.working_set = WorkingSet::new(MAX_PAGES)
                .map_err(|e| tracing::warn!("no working set recorded: {e}"))
                .ok()
                .map(std::sync::Arc::new);
        }
        self.working_set.clone()
    }

    /// Keeps a finished call's timeline, forgetting the oldest beyond the cap.
    pub fn keep_timeline(&mut self, t: CloneTimeline) {
        if self.timelines.len() == TIMELINES_KEPT {
            self.timelines.pop_front();
        }
        self.timelines.push_back(t);
    }

    pub fn is_clone(&self) -> bool {
        matches!(self.role, Role::Clone { .. })
    }
}
