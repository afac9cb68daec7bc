//! The clone, join and kill hypercalls: the parent's side, the first child
//! (which forks the other local clones and the memory holder), and the start
//! of each local clone.

use super::process::{self, Forked};
use super::remote::{self, RemoteGroup, RemotePlan};
use super::report::{classify, CloneReport, REPORT_MAX};
use super::tickets::TicketState;
use super::{CloneHost, CloneSummary, CloneTimeline, Group, Reporter, Role};
use crate::descriptor::{MemorySource, VmDescriptor};
use crate::vcpu::Vcpu;
use crate::vm::Vm;
use crate::Error;
use sf_abi::clone::{encode_entry, CloneStatus, Entry, RESULT_MAX};
use sf_abi::hypercall::Error as HcError;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// A hypercall's effect on the vCPU.
pub enum HcReturn {
    /// Put this in `rax` and resume.
    Value(u64),
    /// The vCPU's registers are already set (a new clone, or the parent
    /// after a clone).
    AlreadySet,
}

fn err(e: HcError) -> Result<HcReturn, Error> {
    Ok(HcReturn::Value(e.to_ret()))
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Clone { what, source: e }
}

/// What the first child tells the parent once it has forked the rest.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct SpawnReport {
    /// PIDs of local clones after the first, in `local_ids` order (0: the
    /// fork failed).
    pids: Vec<i32>,
    holder: Option<i32>,
}

/// The processes the first child must make, in order; it becomes the last.
enum Job {
    Holder,
    Clone { id: u32, report: OwnedFd },
}

impl Vm {
    pub(crate) fn ticket_request(&mut self, n: u64) -> u64 {
        match self.clones.tickets.request(n) {
            Ok((id, granted)) => ((id as u64) << 32) | granted as u64,
            Err(e) => e.to_ret(),
        }
    }

    pub(crate) fn clone_vm(
        &mut self,
        ticket: u32,
        console: &mut dyn Write,
    ) -> Result<HcReturn, Error> {
        let granted = match self.clones.tickets.reserved(ticket) {
            Ok(g) => g,
            Err(e) => return err(e),
        };
        let request = Instant::now();
        // Let KVM finish the hypercall's port write first, so the captured
        // state is after the instruction (some KVMs advance RIP only then).
        self.vcpu.complete_pending_io()?;
        match self.fork_group(ticket, granted, request, console) {
            Ok(r) => Ok(r),
            Err(e) => {
                // The VM goes on; the guest learns that this clone failed
                // and may try again (its ticket is still reserved).
                tracing::warn!(ticket, "clone failed: {e}");
                self.vcpu.set_rax(HcError::Io.to_ret())?;
                Ok(HcReturn::AlreadySet)
            }
        }
    }

    /// After the hypercall completed: capture, place, fork.
    fn fork_group(
        &mut self,
        ticket: u32,
        granted: u32,
        request: Instant,
        console: &mut dyn Write,
    ) -> Result<HcReturn, Error> {
        let state = self.vcpu.capture()?;
        let descriptor = VmDescriptor {
            mem_size: self.ram.size(),
            vcpu: state,
            memory: MemorySource::Inherited,
        }
        .encode();

        let hosts = match &self.remote_link {
            Some(link) => remote::place(link, granted),
            None => vec![None; granted as usize],
        };
        let local_ids: Vec<u32> = (1..=granted)
            .filter(|&id| hosts[id as usize - 1].is_none())
            .collect();
        let mut by_peer: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (i, h) in hosts.iter().enumerate() {
            if let Some(peer) = h {
                by_peer.entry(peer.clone()).or_default().push(i as u32 + 1);
            }
        }
        let remote_ids: Vec<u32> = by_peer.values().flatten().copied().collect();
        let plan = match (&self.remote_link, by_peer.is_empty()) {
            (Some(link), false) => {
                // A clone's RAM may be remote too; the holder serves a full copy.
                self.fetch_all_memory()?;
                let p = RemotePlan::new(
                    link,
                    by_peer,
                    &descriptor,
                    self.ram.size(),
                    self.timeout,
                    self.clones.max_clones,
                    &self.clones.path,
                )
                .map_err(io("opening the clone group's sockets"))?;
                Some(p)
            }
            _ => None,
        };
        if !local_ids.is_empty() {
            self.fetch_all_memory()?;
        }
        console.flush().map_err(Error::Console)?;

        let (pids_r, pids_w) = process::pipe().map_err(io("creating a pipe"))?;
        let mut read_ends = Vec::with_capacity(local_ids.len());
        let mut jobs = Vec::with_capacity(local_ids.len() + 1);
        if plan.is_some() {
            jobs.push(Job::Holder);
        }
        for &id in &local_ids {
            let (r, w) = process::pipe().map_err(io("creating a pipe"))?;
            read_ends.push(r);
            jobs.push(Job::Clone { id, report: w });
        }
        // The first child becomes the first local clone if there is one, so
        // it goes last in the job list.
        if let Some(pos) = jobs.iter().position(|j| matches!(j, Job::Clone { .. })) {
            let first = jobs.remove(pos);
            jobs.push(first);
        }
        let parent = process::getpid();
        match process::fork().map_err(io("forking the first clone"))? {
            Forked::Parent(first) => {
                drop((pids_w, jobs));
                let remote = match plan {
                    Some(p) => Some(
                        RemoteGroup::new(p.reports, p.token, remote_ids, request)
                            .map_err(io("listening for clone reports"))?,
                    ),
                    None => None,
                };
                let timeline = self.clones.timelines.len();
                self.clones.timelines.push(CloneTimeline {
                    ticket,
                    granted,
                    descriptor_bytes: descriptor.len(),
                    remote_clones: remote.as_ref().map_or(0, |r| r.ids.len() as u32),
                    requested_at: request.duration_since(self.started),
                    request_to_resumed: request.elapsed(),
                    request_to_joined: None,
                    clones: Vec::new(),
                });
                let group = Group {
                    granted,
                    first,
                    pid_pipe: Some(pids_r),
                    pids: Vec::new(),
                    holder: None,
                    reaped: vec![false; local_ids.len()],
                    local_ids,
                    results: read_ends,
                    remote,
                    killed: false,
                    request,
                    timeline,
                };
                self.clones
                    .tickets
                    .set(ticket, TicketState::Cloned(Box::new(group)));
                self.reseed();
                tracing::debug!(
                    ticket,
                    granted,
                    first,
                    descriptor = descriptor.len(),
                    "clones forked"
                );
                self.vcpu.set_rax(0)?;
                Ok(HcReturn::AlreadySet)
            }
            Forked::Child => {
                drop((pids_r, read_ends));
                if !process::die_with_parent(parent) {
                    process::exit_now(1);
                }
                self.spawn_jobs(jobs, plan, &descriptor, pids_w, parent, request)
            }
        }
    }

    /// In the first child: fork all jobs but the last as siblings, tell the
    /// parent their PIDs, then do the last job here. Returns only inside a
    /// clone whose vCPU is ready to run.
    fn spawn_jobs(
        &mut self,
        mut jobs: Vec<Job>,
        mut plan: Option<RemotePlan>,
        descriptor: &[u8],
        pids_w: OwnedFd,
        parent: i32,
        request: Instant,
    ) -> Result<HcReturn, Error> {
        let last = jobs.pop().expect("at least one job");
        let mut report = SpawnReport::default();
        let mut jobs = jobs.into_iter();
        while let Some(job) = jobs.next() {
            match process::fork_sibling() {
                Ok(Forked::Child) => {
                    if !process::die_with_parent(parent) {
                        process::exit_now(1);
                    }
                    drop((pids_w, jobs, last));
                    return self.do_job(job, plan.take(), descriptor, request);
                }
                Ok(Forked::Parent(pid)) => match job {
                    Job::Holder => report.holder = Some(pid),
                    Job::Clone { .. } => report.pids.push(pid),
                },
                Err(e) => {
                    eprintln!("snowflock: forking a clone process failed: {e}");
                    if let Job::Clone { .. } = job {
                        report.pids.push(0);
                    }
                }
            }
        }
        if let Job::Holder = last {
            report.holder = Some(process::getpid());
        }
        let _ = process::write_all(&pids_w, &bincode::serialize(&report).expect("serializes"));
        drop(pids_w);
        self.do_job(last, plan, descriptor, request)
    }

    fn do_job(
        &mut self,
        job: Job,
        plan: Option<RemotePlan>,
        descriptor: &[u8],
        request: Instant,
    ) -> Result<HcReturn, Error> {
        match job {
            Job::Holder => {
                remote::run_holder(plan.expect("a holder job comes with a plan"), &self.ram)
            }
            Job::Clone { id, report } => {
                drop(plan);
                if let Err(e) = self.become_clone(id, descriptor, Reporter::Pipe(report), request) {
                    eprintln!("snowflock: clone {id} could not start: {e}");
                    process::exit_now(3);
                }
                Ok(HcReturn::AlreadySet)
            }
        }
    }

    /// In a new clone process: a fresh KVM VM on the inherited RAM, built
    /// from the descriptor alone (the same path a remote host takes).
    fn become_clone(
        &mut self,
        id: u32,
        descriptor: &[u8],
        reporter: Reporter,
        request: Instant,
    ) -> Result<(), Error> {
        let mut desc = VmDescriptor::decode(descriptor)?;
        desc.vcpu.regs.rax = id as u64;
        let path = if self.clones.path.is_empty() {
            id.to_string()
        } else {
            format!("{}.{id}", self.clones.path)
        };
        // Drops (closes) everything inherited from the parent's other tickets.
        self.clones = CloneHost::new(self.clones.max_clones);
        self.clones.path = path.clone();
        self.clones.role = Role::Clone { id, reporter };
        let vm_fd = self
            .kvm
            .create_vm()
            .map_err(Error::kvm("creating the clone VM"))?;
        self.register_ram(&vm_fd)?;
        let vcpu = Vcpu::new(&vm_fd, &self.cpuid)?;
        vcpu.restore(&desc.vcpu)?;
        self.replace_vm(vm_fd, vcpu);
        self.reseed();
        self.console.set_prefix(format!("[clone {path}] "));
        self.rearm_timeout()?;
        self.pending_entry = Some(request);
        Ok(())
    }

    pub(crate) fn join_wait(&mut self, ticket: u32) -> Result<HcReturn, Error> {
        let state = match self.clones.tickets.get_mut(ticket) {
            Ok(s) => s,
            Err(e) => return err(e),
        };
        let group = match state {
            TicketState::Joined { record, .. } => return Ok(HcReturn::Value(record.len() as u64)),
            TicketState::Reserved { granted } => {
                // Never cloned: joining releases the reservation.
                *state = TicketState::Joined {
                    granted: *granted,
                    record: Vec::new(),
                };
                return Ok(HcReturn::Value(0));
            }
            TicketState::Cloned(g) => g,
        };
        let (record, summaries) = collect(group);
        let (granted, timeline, request) = (group.granted, group.timeline, group.request);
        let t = &mut self.clones.timelines[timeline];
        t.request_to_joined = Some(request.elapsed());
        t.clones = summaries;
        let len = record.len() as u64;
        self.clones
            .tickets
            .set(ticket, TicketState::Joined { granted, record });
        Ok(HcReturn::Value(len))
    }

    pub(crate) fn join_fetch(
        &mut self,
        ticket: u32,
        buf: u64,
        cap: u64,
    ) -> Result<HcReturn, Error> {
        let record = match self.clones.tickets.get_mut(ticket) {
            Err(e) => return err(e),
            Ok(TicketState::Joined { record, .. }) => record,
            Ok(_) => return err(HcError::Busy),
        };
        let len = record.len() as u64;
        if cap < len {
            return err(HcError::TooBig);
        }
        if let Err(e) = self.ram.write_checked(buf, record) {
            return err(e);
        }
        self.clones.tickets.release(ticket);
        Ok(HcReturn::Value(len))
    }

    pub(crate) fn kill_clones(&mut self, ticket: u32) -> Result<HcReturn, Error> {
        match self.clones.tickets.get_mut(ticket) {
            Err(e) => err(e),
            Ok(TicketState::Cloned(g)) => Ok(HcReturn::Value(kill_group(g) as u64)),
            Ok(_) => Ok(HcReturn::Value(0)),
        }
    }

    /// Ends every clone group not joined yet: clones never outlive their VM.
    pub(crate) fn kill_unjoined(&mut self) {
        for g in self.clones.tickets.groups_mut() {
            kill_group(g);
            if let Some(h) = read_spawn_report(g).holder {
                let _ = process::kill(h);
            }
        }
    }

    /// In a clone process at the end of its run: report and exit.
    pub(crate) fn finish_clone(&mut self, outcome: &crate::Outcome) -> ! {
        self.kill_unjoined();
        let Role::Clone { id, reporter } = &mut self.clones.role else {
            unreachable!("finish_clone runs only in clone processes")
        };
        let (rss_bytes, private_bytes) = process::memory_usage();
        let memory = self
            .remote_memory
            .as_ref()
            .map(|m| crate::remote::api_stats(&m.stats()));
        if let (Some(path), Some(m)) = (&self.stats_file, &memory) {
            let _ = std::fs::write(path, serde_json::to_vec(m).unwrap_or_default());
        }
        let r = CloneReport {
            id: *id,
            outcome: outcome.clone(),
            result: std::mem::take(&mut self.result),
            first_entry_us: self.first_entry.map_or(0, |d| d.as_micros() as u64),
            rss_bytes,
            private_bytes,
            memory,
        };
        let code = if reporter.send(&r.encode()).is_ok() {
            0
        } else {
            4
        };
        process::exit_now(code)
    }
}

/// The first child's report (read once, lazily): local PIDs and the holder.
fn read_spawn_report(g: &mut Group) -> SpawnReport {
    if let Some(fd) = g.pid_pipe.take() {
        let raw = process::read_all(&fd, 64 << 10).unwrap_or_default();
        let rep: SpawnReport = bincode::deserialize(&raw).unwrap_or_default();
        let n = g.local_ids.len();
        g.pids = match n {
            0 => Vec::new(),
            _ => std::iter::once(g.first)
                .chain((0..n - 1).map(|i| rep.pids.get(i).copied().unwrap_or(0)))
                .collect(),
        };
        g.holder = if n == 0 { Some(g.first) } else { rep.holder };
    }
    SpawnReport {
        pids: g.pids.clone(),
        holder: g.holder,
    }
}

/// Kills every clone that has not reported yet (their own clones die with
/// them); returns how many that was.
fn kill_group(g: &mut Group) -> u32 {
    if g.killed {
        return 0;
    }
    g.killed = true;
    let running: Vec<bool> = g.results.iter().map(|fd| !pipe_ready(fd)).collect();
    let pids = read_spawn_report(g).pids;
    let mut killed = 0;
    for (i, pid) in pids.iter().enumerate() {
        if running[i] && *pid > 0 && process::kill(*pid).is_ok() {
            killed += 1;
        }
    }
    if let Some(r) = g.remote.as_mut() {
        killed += r.kill();
    }
    killed
}

/// Whether a report pipe has data or its writer is gone (the clone ended).
fn pipe_ready(fd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

/// One clone's line in the join record, before encoding.
struct Joined {
    status: CloneStatus,
    code: i32,
    detail: String,
    result: Vec<u8>,
    report: Option<CloneReport>,
}

fn from_report(r: CloneReport) -> Joined {
    let (status, code, detail) = classify(&r.outcome);
    let result = if r.result.len() <= RESULT_MAX {
        r.result.clone()
    } else {
        Vec::new()
    };
    Joined {
        status,
        code,
        detail,
        result,
        report: Some(r),
    }
}

fn failed(status: CloneStatus, detail: String) -> Joined {
    Joined {
        status,
        code: -1,
        detail,
        result: Vec::new(),
        report: None,
    }
}

/// Waits for every clone of the group and builds the join record.
fn collect(g: &mut Group) -> (Vec<u8>, Vec<CloneSummary>) {
    let mut joined: BTreeMap<u32, Joined> = BTreeMap::new();
    let reports: Vec<Option<CloneReport>> = g
        .results
        .iter()
        .map(|fd| CloneReport::decode(&process::read_all(fd, REPORT_MAX).unwrap_or_default()))
        .collect();
    let spawn = read_spawn_report(g);
    for (i, report) in reports.into_iter().enumerate() {
        let id = g.local_ids[i];
        let pid = spawn.pids.get(i).copied().unwrap_or(0);
        let status = if pid > 0 && !g.reaped[i] {
            g.reaped[i] = true;
            process::wait(pid).ok()
        } else {
            None
        };
        let j = match report {
            Some(r) if r.id == id => from_report(r),
            _ if g.killed => failed(CloneStatus::Killed, "killed by the parent's kill".into()),
            _ => failed(
                CloneStatus::Lost,
                match (pid, status) {
                    (0, _) => "the host could not fork this clone".into(),
                    (_, Some(st)) => {
                        format!("the clone's VMM process ended without a report ({st})")
                    }
                    (_, None) => "the clone's VMM process vanished without a report".into(),
                },
            ),
        };
        joined.insert(id, j);
    }
    if let Some(r) = g.remote.as_mut() {
        r.collect();
        for &id in &r.ids.clone() {
            let j = match r.reports.remove(&id) {
                Some(rep) => from_report(rep),
                None if g.killed => {
                    failed(CloneStatus::Killed, "killed by the parent's kill".into())
                }
                None => failed(
                    CloneStatus::Lost,
                    r.lost.remove(&id).unwrap_or_else(|| "no report".into()),
                ),
            };
            joined.insert(id, j);
        }
    }
    if let Some(h) = spawn.holder {
        let _ = process::kill(h);
        let _ = process::wait(h);
    }
    let mut record = Vec::new();
    let mut summaries = Vec::with_capacity(joined.len());
    for (id, j) in joined {
        encode_entry(
            &mut record,
            &Entry {
                id,
                status: j.status,
                code: j.code,
                result: &j.result,
                detail: j.detail.as_bytes(),
            },
        );
        let r = j.report.as_ref();
        summaries.push(CloneSummary {
            id,
            status: j.status,
            code: j.code,
            detail: j.detail.clone(),
            remote: g.remote.as_ref().is_some_and(|rg| rg.ids.contains(&id)),
            first_entry: r.map(|r| Duration::from_micros(r.first_entry_us)),
            rss_bytes: r.map_or(0, |r| r.rss_bytes),
            private_bytes: r.map_or(0, |r| r.private_bytes),
            memory: r.and_then(|r| r.memory.clone()),
        });
    }
    (record, summaries)
}
