//! The clone, join and kill hypercalls, on the parent's side and in the
//! spawner and clone processes.

use super::process::{self, Forked};
use super::report::{classify, CloneReport, REPORT_MAX};
use super::tickets::TicketState;
use super::{CloneHost, CloneSummary, CloneTimeline, Group, Role};
use crate::descriptor::{MemorySource, VmDescriptor};
use crate::vcpu::Vcpu;
use crate::vm::Vm;
use crate::Error;
use sf_abi::clone::{encode_entry, CloneStatus, Entry, RESULT_MAX};
use sf_abi::hypercall::Error as HcError;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::time::Instant;

/// A hypercall's effect on the vCPU.
pub enum HcReturn {
    /// Put this in `rax` and resume.
    Value(u64),
    /// The vCPU was rebuilt with its registers already set (a new clone).
    AlreadySet,
}

fn err(e: HcError) -> Result<HcReturn, Error> {
    Ok(HcReturn::Value(e.to_ret()))
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Clone { what, source: e }
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
        let state = self.vcpu.capture()?;
        let descriptor = VmDescriptor {
            mem_size: self.ram.size(),
            vcpu: state,
            memory: MemorySource::Inherited,
        }
        .encode();
        console.flush().map_err(Error::Console)?;

        let (pids_r, pids_w) = process::pipe().map_err(io("creating a pipe"))?;
        let mut read_ends = Vec::with_capacity(granted as usize);
        let mut write_ends = Vec::with_capacity(granted as usize);
        for _ in 0..granted {
            let (r, w) = process::pipe().map_err(io("creating a pipe"))?;
            read_ends.push(r);
            write_ends.push(w);
        }
        let parent = process::getpid();
        match process::fork().map_err(io("forking clone 1"))? {
            Forked::Parent(first) => {
                drop((pids_w, write_ends));
                let timeline = self.clones.timelines.len();
                self.clones.timelines.push(CloneTimeline {
                    ticket,
                    granted,
                    descriptor_bytes: descriptor.len(),
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
                    reaped: vec![false; granted as usize],
                    results: read_ends,
                    killed: false,
                    request,
                    timeline,
                };
                self.clones.tickets.set(ticket, TicketState::Cloned(group));
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
                self.spawn_siblings(granted, &descriptor, write_ends, pids_w, parent, request)
            }
        }
    }

    /// In clone 1: fork clones 2..N as siblings, tell the parent their PIDs,
    /// then become clone 1. Returns inside a clone whose vCPU is ready.
    fn spawn_siblings(
        &mut self,
        granted: u32,
        descriptor: &[u8],
        mut write_ends: Vec<OwnedFd>,
        pids_w: OwnedFd,
        parent: i32,
        request: Instant,
    ) -> Result<HcReturn, Error> {
        let mut pids = Vec::with_capacity(granted as usize - 1);
        for id in 2..=granted {
            match process::fork_sibling() {
                Ok(Forked::Child) => {
                    if !process::die_with_parent(parent) {
                        process::exit_now(1);
                    }
                    let report = write_ends.swap_remove(id as usize - 1);
                    drop((write_ends, pids_w));
                    return self.start_clone(id, descriptor, report, request);
                }
                Ok(Forked::Parent(pid)) => pids.push(pid),
                Err(e) => {
                    eprintln!("snowflock: forking clone {id} failed: {e}");
                    pids.push(0);
                }
            }
        }
        let bytes: Vec<u8> = pids.iter().flat_map(|p| p.to_le_bytes()).collect();
        let _ = process::write_all(&pids_w, &bytes);
        let report = write_ends.swap_remove(0);
        drop((write_ends, pids_w));
        self.start_clone(1, descriptor, report, request)
    }

    fn start_clone(
        &mut self,
        id: u32,
        descriptor: &[u8],
        report: OwnedFd,
        request: Instant,
    ) -> Result<HcReturn, Error> {
        if let Err(e) = self.become_clone(id, descriptor, report, request) {
            eprintln!("snowflock: clone {id} could not start: {e}");
            process::exit_now(3);
        }
        Ok(HcReturn::AlreadySet)
    }

    /// In a new clone process: a fresh KVM VM on the inherited RAM, built
    /// from the descriptor alone (the same path a remote host takes).
    fn become_clone(
        &mut self,
        id: u32,
        descriptor: &[u8],
        report: OwnedFd,
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
        self.clones.role = Role::Clone { id, report };
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
        let (record, summaries) = collect(group)?;
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
        }
    }

    /// In a clone process at the end of its run: report and exit.
    pub(crate) fn finish_clone(&mut self, outcome: &crate::Outcome) -> ! {
        self.kill_unjoined();
        let Role::Clone { id, report } = &self.clones.role else {
            unreachable!("finish_clone runs only in clone processes")
        };
        let (rss_bytes, private_bytes) = process::memory_usage();
        let r = CloneReport {
            id: *id,
            outcome: outcome.clone(),
            result: std::mem::take(&mut self.result),
            first_entry_us: self.first_entry.map_or(0, |d| d.as_micros() as u64),
            rss_bytes,
            private_bytes,
        };
        let code = if process::write_all(report, &r.encode()).is_ok() {
            0
        } else {
            4
        };
        process::exit_now(code)
    }
}

/// The PIDs of all clones of the group, by `id - 1` (0: never forked).
fn pids(g: &mut Group) -> &[i32] {
    if let Some(fd) = g.pid_pipe.take() {
        let want = (g.granted as usize - 1) * 4;
        let raw = process::read_all(&fd, want).unwrap_or_default();
        g.pids = std::iter::once(g.first)
            .chain((0..g.granted as usize - 1).map(|i| {
                raw.get(i * 4..i * 4 + 4)
                    .map_or(0, |b| i32::from_le_bytes(b.try_into().expect("4 bytes")))
            }))
            .collect();
    }
    &g.pids
}

/// Kills every clone that has not reported yet (their own clones die with
/// them); returns how many that was.
fn kill_group(g: &mut Group) -> u32 {
    if g.killed {
        return 0;
    }
    g.killed = true;
    let running: Vec<bool> = g.results.iter().map(|fd| !pipe_ready(fd)).collect();
    let mut killed = 0;
    for (i, pid) in pids(g).iter().enumerate() {
        if running[i] && *pid > 0 && process::kill(*pid).is_ok() {
            killed += 1;
        }
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

/// Waits for every clone of the group and builds the join record.
fn collect(g: &mut Group) -> Result<(Vec<u8>, Vec<CloneSummary>), Error> {
    let mut reports = Vec::with_capacity(g.results.len());
    for fd in &g.results {
        let bytes = process::read_all(fd, REPORT_MAX).unwrap_or_default();
        reports.push(CloneReport::decode(&bytes));
    }
    let pids = pids(g).to_vec();
    let mut record = Vec::new();
    let mut summaries = Vec::with_capacity(reports.len());
    for (i, report) in reports.into_iter().enumerate() {
        let id = i as u32 + 1;
        let status = match pids.get(i) {
            Some(&pid) if pid > 0 && !g.reaped[i] => {
                g.reaped[i] = true;
                process::wait(pid).ok()
            }
            _ => None,
        };
        let (status, code, detail, result, s) = match report {
            Some(r) if r.id == id && r.result.len() <= RESULT_MAX => {
                let (status, code, detail) = classify(&r.outcome);
                (
                    status,
                    code,
                    detail,
                    r.result,
                    Some((r.first_entry_us, r.rss_bytes, r.private_bytes)),
                )
            }
            _ if g.killed => (
                CloneStatus::Killed,
                -1,
                "killed by the parent's kill".to_string(),
                Vec::new(),
                None,
            ),
            _ => {
                let why = match (pids.get(i), status) {
                    (Some(0) | None, _) => "the host could not fork this clone".to_string(),
                    (_, Some(st)) => {
                        format!("the clone's VMM process ended without a report ({st})")
                    }
                    (_, None) => "the clone's VMM process vanished without a report".to_string(),
                };
                (CloneStatus::Lost, -1, why, Vec::new(), None)
            }
        };
        encode_entry(
            &mut record,
            &Entry {
                id,
                status,
                code,
                result: &result,
                detail: detail.as_bytes(),
            },
        );
        summaries.push(CloneSummary {
            id,
            status,
            code,
            detail,
            first_entry: s.map(|s| std::time::Duration::from_micros(s.0)),
            rss_bytes: s.map_or(0, |s| s.1),
            private_bytes: s.map_or(0, |s| s.2),
        });
    }
    Ok((record, summaries))
}
