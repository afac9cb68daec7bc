//! The parent's side after a clone: waiting for the clones (`join`),
//! handing the guest the join record, killing clones, and turning what
//! each clone process left behind into one record entry.

use super::process;
use super::relay::Relay;
use super::report::{classify, report_max, CloneReport};
use super::tickets::TicketState;
use super::{CloneSummary, Group};
use crate::hypercall::HcReturn;
use crate::output::Outputs;
use crate::vm::Vm;
use crate::Error;
use sf_abi::clone::{encode_entry, CloneStatus, Entry};
use sf_abi::hypercall::Error as HcError;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

fn err(e: HcError) -> Result<HcReturn, Error> {
    Ok(HcReturn::Value(e.to_ret()))
}

/// What the first child tells the parent once it has forked the rest.
#[derive(serde::Serialize, serde::Deserialize, Default)]
pub(super) struct SpawnReport {
    /// PIDs of local clones after the first, in `local_ids` order (0: the
    /// fork failed).
    pub pids: Vec<i32>,
    pub holder: Option<i32>,
}

impl Vm {
    pub(crate) fn join_wait(
        &mut self,
        ticket: u32,
        console: &mut dyn std::io::Write,
    ) -> Result<HcReturn, Error> {
        let state = match self.clones.tickets.get_mut(ticket) {
            Ok(s) => s,
            Err(e) => return err(e),
        };
        let group = match state {
            TicketState::Joined { record, .. } => return Ok(HcReturn::Value(record.len() as u64)),
            TicketState::Reserved { .. } => {
                // Never cloned: joining releases the reservation.
                self.clones.tickets.joined(ticket, Vec::new());
                return Ok(HcReturn::Value(0));
            }
            TicketState::Cloned(g) => g,
        };
        let deadline = self.deadline;
        let (record, summaries, timed_out) = collect(group, &self.outputs, console, deadline);
        let mut t = std::mem::replace(&mut group.timeline, Box::new(empty_timeline()));
        t.request_to_joined = Some(group.request.elapsed());
        t.clones = summaries;
        t.holder = group.holder_stats.as_ref().map(|s| s.stats());
        self.clones.keep_timeline(*t);
        let len = record.len() as u64;
        self.clones.tickets.joined(ticket, record);
        // Orphans of clones killed with clones of their own end up here.
        // Every group's PIDs are read first: an unread group's clones and
        // holder are this VMM's children too, and reaping one of them here
        // would free its PID for a stranger that a later kill would hit.
        let known: Vec<i32> = self
            .clones
            .tickets
            .groups_mut()
            .flat_map(|g| {
                read_spawn_report(g);
                g.known_pids().collect::<Vec<_>>()
            })
            .collect();
        process::reap_strays(&known);
        // Clones that hit the same deadline report just before the parent
        // sees it: the run is over all the same.
        if timed_out || deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(HcReturn::Stop(Box::new(self.timed_out())));
        }
        Ok(HcReturn::Value(len))
    }

    pub(crate) fn join_fetch(
        &mut self,
        ticket: u32,
        buf: u64,
        cap: u64,
        caller: crate::hypercall::Caller,
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
        // Clone-controlled bytes: only where the caller could write itself.
        if let Err(e) = crate::guest_buffer::write(&self.ram, caller, buf, record) {
            return err(e);
        }
        self.clones.tickets.release(ticket);
        self.family_release(ticket);
        Ok(HcReturn::Value(len))
    }

    pub(crate) fn kill_clones(&mut self, ticket: u32) -> Result<HcReturn, Error> {
        match self.clones.tickets.get_mut(ticket) {
            Err(e) => err(e),
            Ok(TicketState::Cloned(g)) => Ok(HcReturn::Value(kill_group(g) as u64)),
            Ok(_) => Ok(HcReturn::Value(0)),
        }
    }

    /// Ends every clone group not joined yet and waits for its processes:
    /// clones never outlive their VM, nor stay behind as zombies.
    pub(crate) fn kill_unjoined(&mut self) {
        let mut ended = Vec::new();
        for g in self.clones.tickets.groups_mut() {
            kill_group(g);
            let spawn = read_spawn_report(g);
            if let Some(h) = g.holder.take() {
                let _ = process::kill(h);
                let _ = process::wait(h);
            }
            for (i, &pid) in spawn.pids.iter().enumerate() {
                if pid > 0 && !g.reaped[i] {
                    g.reaped[i] = true;
                    let _ = process::wait(pid);
                }
            }
            ended.push(g.timeline.as_ref().clone());
        }
        for t in ended {
            self.clones.keep_timeline(t);
        }
    }
}

fn empty_timeline() -> super::CloneTimeline {
    super::CloneTimeline {
        ticket: 0,
        granted: 0,
        descriptor_bytes: 0,
        remote_clones: 0,
        requested_at: Duration::ZERO,
        request_to_resumed: Duration::ZERO,
        request_to_reported: None,
        request_to_joined: None,
        clones: Vec::new(),
        holder: None,
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
    fd_ready(fd.as_raw_fd())
}

/// Whether a pipe has data or its writer is gone, without waiting.
fn fd_ready(fd: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
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

/// A report's entry; its result is taken (it may be large) and checked
/// against the ticket's cap once more.
fn from_report(mut r: CloneReport, result_cap: u64) -> Joined {
    let (status, code, mut detail) = classify(&r.outcome);
    let mut result = std::mem::take(&mut r.result);
    if result.len() as u64 > result_cap {
        detail = format!(
            "its result of {} bytes is over the ticket's cap of {result_cap} and was dropped",
            result.len()
        );
        result = Vec::new();
    }
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

/// Waits until every report pipe has data or an end, or `deadline`; false
/// if the deadline came first. Meanwhile the clones' output pipes (when
/// this VM relays their outputs) are read and passed on through `outputs`:
/// a clone blocked on a full output pipe would never report.
fn wait_reports(
    fds: &[OwnedFd],
    relays: &mut [Relay],
    outputs: &Outputs,
    deadline: Option<Instant>,
) -> bool {
    use std::os::fd::AsRawFd;
    let mut waiting: Vec<usize> = (0..fds.len()).collect();
    loop {
        if waiting.is_empty() {
            // A clone writes its outputs before its report: what is left
            // of them is in the pipes now.
            for r in relays.iter_mut() {
                while r.raw_fd().is_some_and(fd_ready) {
                    r.read_some(outputs);
                }
            }
            return true;
        }
        let open: Vec<(usize, i32)> = (0..relays.len())
            .filter_map(|i| Some((i, relays[i].raw_fd()?)))
            .collect();
        let mut polls: Vec<libc::pollfd> = waiting
            .iter()
            .map(|&i| fds[i].as_raw_fd())
            .chain(open.iter().map(|&(_, fd)| fd))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let wait_ms = crate::watchdog::poll_timeout_ms(deadline);
        if wait_ms == 0 {
            return false;
        }
        // SAFETY: `polls` is a valid array of pollfds for its length.
        let r = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, wait_ms) };
        if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return true;
        }
        let (reports, pipes) = polls.split_at(waiting.len());
        for (p, &(i, _)) in pipes.iter().zip(&open) {
            if p.revents != 0 {
                relays[i].read_some(outputs);
            }
        }
        let mut k = 0;
        waiting.retain(|_| {
            k += 1;
            reports[k - 1].revents == 0
        });
    }
}

/// Waits for every clone of the group (until `deadline`: then the rest are
/// killed and reported `TimedOut`) and builds the join record; also says
/// whether the deadline passed.
fn collect(
    g: &mut Group,
    outputs: &Outputs,
    console: &mut dyn std::io::Write,
    deadline: Option<Instant>,
) -> (Vec<u8>, Vec<CloneSummary>, bool) {
    let mut joined: BTreeMap<u32, Joined> = BTreeMap::new();
    let mut timed_out = !wait_reports(&g.results, &mut g.relays, outputs, deadline);
    g.timeline.request_to_reported = Some(g.request.elapsed());
    if let Some(r) = g.remote.as_mut() {
        while !timed_out && !r.done() {
            let left = deadline.map_or(Duration::from_millis(100), |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                timed_out = true;
                break;
            }
            r.pump(left.min(Duration::from_millis(100)));
            r.show_console(console);
        }
    }
    if timed_out {
        kill_group(g);
    }
    let limit = report_max(g.result_cap);
    let cap = g.result_cap;
    let reports: Vec<Option<CloneReport>> = g
        .results
        .iter()
        .map(|fd| CloneReport::decode(&process::read_all(fd, limit).unwrap_or_default(), limit))
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
            Some(r) if r.id == id => from_report(r, cap),
            _ if timed_out => failed(CloneStatus::TimedOut, DEADLINE_PASSED.into()),
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
        if !timed_out {
            r.collect(console);
        }
        for &id in &r.ids.clone() {
            let j = match r.reports.remove(&id) {
                Some(rep) => {
                    let mut j = from_report(rep, cap);
                    if let Some(why) = r.output_refused.remove(&id) {
                        j.detail = if j.detail.is_empty() {
                            why
                        } else {
                            format!("{}; {why}", j.detail)
                        };
                    }
                    j
                }
                None if timed_out => failed(CloneStatus::TimedOut, DEADLINE_PASSED.into()),
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
        g.holder = None;
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
    (record, summaries, timed_out)
}

const DEADLINE_PASSED: &str = "the run's --timeout passed while the parent waited in join";
