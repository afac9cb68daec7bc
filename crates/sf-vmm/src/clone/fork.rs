//! The clone hypercall: the parent's side, the first child (which forks the
//! other local clones and the memory holder), the start of each local clone,
//! and a clone's report at its end. Joins and kills are in `join`.

use super::join::SpawnReport;
use super::process::{self, Forked};
use super::remote::{self, RemoteGroup, RemotePlan};
use super::report::CloneReport;
use super::{CloneHost, CloneTimeline, Group, Reporter, Role};
use crate::descriptor::{HintSettings, MemorySource, VmDescriptor};
use crate::hypercall::CpuView;
use crate::hypercall::HcReturn;
use crate::vcpu::Vcpu;
use crate::vm::Vm;
use crate::Error;
use sf_abi::hypercall::Error as HcError;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::time::Instant;

fn err(e: HcError) -> Result<HcReturn, Error> {
    Ok(HcReturn::Value(e.to_ret()))
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Clone { what, source: e }
}

/// The processes the first child must make, in order; it becomes the last.
enum Job {
    Holder,
    Clone {
        id: u32,
        report: OwnedFd,
        /// The clone's own budget of live descendants.
        budget: u32,
        /// The most result bytes it may hand back.
        result_cap: u64,
        /// Where its outputs go when this VM relays them (a pipe's write
        /// end; the read end is in the group).
        outputs: Option<OwnedFd>,
    },
}

impl Vm {
    /// The guest's free-page hints as they are now (all guest RAM is
    /// present: the caller fetched it). A missing or corrupt structure
    /// costs only the hints.
    fn free_pages(&self) -> crate::hints::FreePages {
        let (Some(gpa), Some(floor)) =
            (self.hints_gpa.filter(|_| !self.no_hints), self.hints_floor)
        else {
            return crate::hints::FreePages::none();
        };
        // The clone call's caller: ring 3 names only what it may read.
        let caller = crate::hypercall::LiveCpu::new(&self.vcpu.fd).caller();
        match crate::hints::read_guest_hints(&self.ram, caller, gpa, floor) {
            Ok(f) => {
                tracing::debug!(
                    pages = f.pages(),
                    ranges = f.ranges().len(),
                    "free-page hints for the clone group"
                );
                f
            }
            Err(e) => {
                tracing::debug!("free-page hints not used: {e}");
                crate::hints::FreePages::none()
            }
        }
    }

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
        // Granted with the ticket, so always there.
        let result_cap = self
            .clones
            .tickets
            .result_cap(ticket)
            .unwrap_or(sf_abi::clone::RESULT_FLOOR as u64);
        let state = self.vcpu.capture()?;
        let descriptor = VmDescriptor {
            mem_size: self.ram.size(),
            vcpus: vec![state],
            devices: self.devices.save()?,
            hints: HintSettings {
                floor: self.hints_floor,
                bitmap_gpa: self.hints_gpa,
                no_hints: self.no_hints,
            },
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
        let share = self.clones.tickets.share(granted);
        // Member numbers for the family network (a fragmented block may
        // lower the share; never raise it).
        let Ok(share) = self.family_place(ticket, granted, share, &local_ids) else {
            return err(HcError::Again);
        };
        let mut plan = match (&self.remote_link, by_peer.is_empty()) {
            (Some(link), false) => {
                // A clone's RAM may be remote too; the holder serves a full copy.
                self.fetch_all_memory()?;
                let p = RemotePlan::new(
                    link,
                    by_peer,
                    &descriptor,
                    self.ram.size(),
                    // Another host's clock differs: send the time left.
                    self.time_left(),
                    share,
                    &self.clones.path,
                )
                .map_err(io("opening the clone group's sockets"))?;
                // Remote clones' outputs come back here, to this VM's own
                // directory (a remote clone's clones stay on its host).
                let mut p = p;
                p.request.output_cap = self.outputs.dir().map(|d| d.cap);
                p.request.result_cap = Some(result_cap);
                // Mapped here, before the fork, so the holder shares it.
                if !link.no_working_set {
                    p.working_set = self.clones.working_set();
                }
                Some(p)
            }
            _ => None,
        };
        if !local_ids.is_empty() {
            self.fetch_all_memory()?;
        }
        // The hints, read once with all memory here and before the fork (a
        // child cannot ask the parent's vCPU who called): remote clones get
        // them in their request, local ones drop their copy of these pages.
        let free = self.free_pages();
        if let Some(p) = plan.as_mut() {
            p.request.free_pages = free.to_wire();
            // Every clone's numbers; each host's request gets its own.
            p.request.net = self.family_wire(&(1..=granted).collect::<Vec<_>>());
        }
        self.clone_free_pages = free;
        console.flush().map_err(Error::Console)?;

        let (pids_r, pids_w) = process::pipe().map_err(io("creating a pipe"))?;
        let mut read_ends = Vec::with_capacity(local_ids.len());
        let mut relays = Vec::with_capacity(local_ids.len());
        let mut jobs = Vec::with_capacity(local_ids.len() + 1);
        if plan.is_some() {
            jobs.push(Job::Holder);
        }
        for &id in &local_ids {
            let (r, w) = process::pipe().map_err(io("creating a pipe"))?;
            read_ends.push(r);
            let outputs = if self.outputs.relays() {
                let (r, w) = process::pipe().map_err(io("creating a pipe"))?;
                relays.push(super::relay::Relay::new(id, r));
                Some(w)
            } else {
                None
            };
            jobs.push(Job::Clone {
                id,
                report: w,
                budget: share,
                result_cap,
                outputs,
            });
        }
        // The first child becomes the first local clone if there is one, so
        // it goes last in the job list.
        if let Some(pos) = jobs.iter().position(|j| matches!(j, Job::Clone { .. })) {
            let first = jobs.remove(pos);
            jobs.push(first);
        }
        let parent = process::getpid();
        // Fork safety: the vCPU thread forks only after the memory is whole
        // and every helper thread (a remote clone's fault handler, heartbeat
        // and origin link) is parked at a known point holding no lock and
        // no stream the child needs (`park`); they resume right after. The
        // child has none of them and needs none.
        let parked = super::park::park_all()
            .map_err(|e| io("parking the helper threads")(std::io::Error::other(e)))?;
        let forked = process::fork();
        match forked {
            Ok(Forked::Child) => parked.in_child(),
            _ => parked.resume(),
        }
        match forked.map_err(io("forking the first clone"))? {
            Forked::Parent(first) => {
                drop((pids_w, jobs));
                let holder_stats = plan.as_ref().and_then(|p| p.holder_stats.clone());
                let remote = match plan {
                    Some(p) => {
                        let mut r =
                            RemoteGroup::new(p.reports, p.token, remote_ids, request, result_cap)
                                .map_err(io("listening for clone reports"))?;
                        r.set_outputs(self.outputs.dir().cloned(), &self.clones.path);
                        Some(r)
                    }
                    None => None,
                };
                let timeline = Box::new(CloneTimeline {
                    ticket,
                    granted,
                    descriptor_bytes: descriptor.len(),
                    remote_clones: remote.as_ref().map_or(0, |r| r.ids.len() as u32),
                    requested_at: request.duration_since(self.started),
                    request_to_resumed: request.elapsed(),
                    request_to_reported: None,
                    request_to_joined: None,
                    clones: Vec::new(),
                    holder: None,
                });
                let group = Group {
                    granted,
                    first,
                    pid_pipe: Some(pids_r),
                    pids: Vec::new(),
                    holder: None,
                    holder_stats,
                    reaped: vec![false; local_ids.len()],
                    local_ids,
                    results: read_ends,
                    relays,
                    remote,
                    killed: false,
                    request,
                    delegated: share * granted,
                    result_cap,
                    timeline,
                };
                self.clones.tickets.cloned(ticket, Box::new(group));
                self.family_parent_resumes();
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
                drop((pids_r, read_ends, relays));
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
            // Fork safety: this first child has only the one thread that
            // forked it (its parent's helpers were parked, and none exist
            // here), so nothing can hold a lock the siblings need.
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
                    process::note(&format!("snowflock: forking a clone process failed: {e}"));
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
            Job::Clone {
                id,
                report,
                budget,
                result_cap,
                outputs,
            } => {
                drop(plan);
                let reporter = Reporter::Pipe(report);
                if let Err(e) =
                    self.become_clone(id, budget, descriptor, reporter, outputs, request)
                {
                    process::note(&format!("snowflock: clone {id} could not start: {e}"));
                    process::exit_now(3);
                }
                self.clones.result_cap = result_cap;
                Ok(HcReturn::AlreadySet)
            }
        }
    }

    /// In a new clone process: a fresh KVM VM on the inherited RAM, built
    /// from the descriptor alone (the same path a remote host takes).
    fn become_clone(
        &mut self,
        id: u32,
        budget: u32,
        descriptor: &[u8],
        reporter: Reporter,
        outputs: Option<OwnedFd>,
        request: Instant,
    ) -> Result<(), Error> {
        let mut desc = VmDescriptor::decode(descriptor)?;
        desc.boot_vcpu_mut().regs.rax = id as u64;
        let path = if self.clones.path.is_empty() {
            id.to_string()
        } else {
            format!("{}.{id}", self.clones.path)
        };
        // Drops (closes) everything inherited from the parent's other
        // tickets. The parent's budget is not inherited: only the share.
        self.clones = CloneHost::new(budget);
        self.clones.path = path.clone();
        self.clones.role = Role::Clone { id, reporter };
        // A clone of a remote clone: the RAM was fully fetched before the
        // fork, but the fetcher's thread did not come along. Its state must
        // go unused (asking it to fetch again waited forever) and may not be
        // dropped (that joins the missing thread): forgotten. The counters
        // file is the parent's, not this clone's.
        let ram_maps_host_cache = self
            .remote_memory
            .as_ref()
            .is_some_and(|m| m.maps_host_cache());
        if let Some(m) = self.remote_memory.take() {
            std::mem::forget(m);
        }
        self.stats_file = None;
        // Its own output directory, files and cap (the parent's fds close),
        // or its pipe to the parent when the parent relays outputs.
        self.outputs.reset_for_clone(outputs);
        // Hinted pages: fresh zero pages instead of copies of the parent's.
        let hinted = std::mem::take(&mut self.clone_free_pages);
        if ram_maps_host_cache {
            self.ram.discard_over_shared_file(&hinted);
        } else {
            self.ram.discard(&hinted);
        }
        let vm_fd = self
            .kvm
            .create_vm()
            .map_err(Error::kvm("creating the clone VM"))?;
        self.register_ram(&vm_fd)?;
        let vcpu = Vcpu::new(&vm_fd, &self.cpuid)?;
        vcpu.restore(desc.boot_vcpu())?;
        self.replace_vm(vm_fd, vcpu);
        self.reseed();
        self.family_become_clone(id);
        // The devices came along with the fork: they take the clone's
        // identity and their fresh host resources.
        self.devices_on_clone(id, &path)?;
        self.console.set_prefix(format!("[clone {path}] "));
        // Built: from here on the (inherited) filter is all this clone needs.
        crate::sandbox::narrow(crate::sandbox::Role::LocalClone).map_err(Error::Sandbox)?;
        // The family's deadline came with the fork; only the timer is new.
        self.arm_deadline()?;
        self.pending_entry = Some(request);
        Ok(())
    }

    /// In a clone process at the end of its run: report and exit.
    pub(crate) fn finish_clone(&mut self, outcome: &crate::Outcome) -> ! {
        // Its own clones end (and are reaped) before it reports.
        self.kill_unjoined();
        process::reap_all(std::time::Duration::from_secs(2));
        let Role::Clone { id, reporter } = &mut self.clones.role else {
            unreachable!("finish_clone runs only in clone processes")
        };
        let (rss_bytes, private_bytes) = process::memory_usage();
        let memory = self.remote_memory.as_ref().map(|m| {
            m.settle(std::time::Duration::from_millis(100));
            crate::remote::api_stats(&m.stats())
        });
        if let (Some(file), Some(m)) = (&self.stats_file, &memory) {
            let _ = file.publish(m);
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
        let code = if reporter.send(r).is_ok() { 0 } else { 4 };
        process::exit_now(code)
    }
}
