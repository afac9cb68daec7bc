//! One VM: KVM set-up, guest RAM, the vCPU, and the run loop that turns VM
//! exits into hypercalls, device accesses or an [`Outcome`].

use crate::boot;
use crate::clone::{CloneHost, CloneTimeline};
use crate::console::ConsoleSink;
use crate::devices::{self, BusDevice, BusKind, BusRange, Devices, ExitAction, VcpuExitView};
use crate::hypercall::HcReturn;
use crate::hypercall::{self, Action, Args, CpuView};
use crate::image::{BootMode, GuestImage};
use crate::memory::GuestRam;
use crate::outcome::Outcome;
use crate::vcpu::Vcpu;
use crate::watchdog::Alarm;
use crate::Error;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit, VmFd};
use sf_abi::boot_info::BootInfo;
use sf_abi::hypercall::Call;
use sf_abi::layout;
use std::io::Write;
use std::time::{Duration, Instant};

/// What to build.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Guest RAM in bytes (multiple of 2 MiB, 4 MiB..=64 GiB).
    pub mem_size: u64,
    pub vcpus: u32,
    pub timeout: Option<Duration>,
    pub boot: BootMode,
    /// The guest's arguments.
    pub cmdline: String,
    /// Most live clones the VM's whole family may have at once, nested
    /// ones included (clamped to [`crate::clone::MAX_CLONES_LIMIT`]).
    pub max_clones: u32,
    /// The peer hosts (as the daemon gave them) and the cluster credentials,
    /// when clones may go to other hosts.
    pub remote: Option<crate::clone::remote::RemoteLink>,
    /// Ignore the guest's free-page hints (clones get every page from
    /// the parent), to measure what they save.
    pub no_hints: bool,
    /// `--input NAME=PATH`: files loaded read-only after the image.
    pub inputs: Vec<crate::inputs::InputSpec>,
    /// `--output DIR`: where the guest's output files go (opened before
    /// the sandbox; see [`crate::output`]).
    pub output: Option<crate::output::OutputDir>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            mem_size: 256 << 20,
            vcpus: 1,
            timeout: None,
            boot: BootMode::Auto,
            cmdline: String::new(),
            max_clones: crate::clone::default_max_clones(),
            remote: None,
            no_hints: false,
            inputs: Vec::new(),
            output: None,
        }
    }
}

/// Where the time went, measured from the start of [`Vm::new`].
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// KVM VM + guest RAM + vCPU creation.
    pub create_vm: Duration,
    /// Image load and boot-state preparation.
    pub load: Duration,
    /// Until the guest's first ring-3 instruction (from the guest's TSC
    /// stamp), when the guest's runtime recorded one.
    pub first_instruction: Option<Duration>,
    /// Until the run ended.
    pub total: Duration,
    pub exits: u64,
    pub hypercalls: u64,
    /// The exits by kind (hypercalls are port writes).
    pub exit_kinds: ExitKinds,
}

/// VM exits counted by what caused them.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitKinds {
    pub pio: u64,
    pub mmio_reads: u64,
    pub mmio_writes: u64,
    /// Signals (the deadline timer, a kick), halts and the rest.
    pub other: u64,
}

#[derive(Clone, Debug)]
pub struct RunReport {
    pub outcome: Outcome,
    pub boot_mode: BootMode,
    pub timings: Timings,
    /// The result bytes of a clone-API `exit` in the root VM.
    pub result: Vec<u8>,
    /// Every clone call the VM made, with what its clones did.
    pub clones: Vec<CloneTimeline>,
}

pub struct Vm {
    pub(crate) kvm: Kvm,
    pub(crate) cpuid: kvm_bindings::CpuId,
    vm_fd: VmFd,
    pub(crate) vcpu: Vcpu,
    pub(crate) ram: GuestRam,
    /// The port-I/O and MMIO devices (serial, debug exit, hypercall port,
    /// and whatever [`Vm::add_device`] added).
    pub(crate) devices: Devices,
    pub(crate) console: ConsoleSink,
    pub(crate) mode: BootMode,
    pub(crate) timeout: Option<Duration>,
    pub(crate) remote_link: Option<crate::clone::remote::RemoteLink>,
    /// Guest RAM filled on demand from another host (a remote clone).
    pub(crate) remote_memory: Option<crate::remote::RemoteMemory>,
    /// Where a remote clone keeps its memory counters for the daemon.
    pub(crate) stats_file: Option<std::sync::Arc<crate::stats_file::StatsFile>>,
    alarm: Option<Alarm>,
    /// When the family's time is up (set once, inherited by every clone).
    pub(crate) deadline: Option<Instant>,
    pub(crate) started: Instant,
    started_tsc: u64,
    tsc_khz: Option<u32>,
    timings: Timings,
    pub(crate) clones: CloneHost,
    /// Result bytes handed to the clone-API exit.
    pub(crate) result: Vec<u8>,
    /// In a new clone: the request time, until the first vCPU entry.
    pub(crate) pending_entry: Option<Instant>,
    /// In a clone: request to first vCPU entry.
    pub(crate) first_entry: Option<Duration>,
    /// Where the guest registered its free-page hints (guest data: read and
    /// checked at each clone call).
    pub(crate) hints_gpa: Option<u64>,
    /// `--no-hints`: registrations are ignored.
    pub(crate) no_hints: bool,
    /// First page a hint may cover: the end of the image, below which lie
    /// ring 0's structures and code. Unknown in a VM resumed from a
    /// descriptor (a remote clone), whose own clones then get no hints.
    pub(crate) hints_floor: Option<u64>,
    /// At a clone call, the hints the local clones apply after the fork.
    pub(crate) clone_free_pages: crate::hints::FreePages,
    /// The guest's output files: this VM's directory, names and bytes.
    pub(crate) outputs: crate::output::Outputs,
    /// Hands a new clone's devices their host resources (see
    /// [`devices::CloneContext::resources`]).
    pub(crate) clone_resources: Option<devices::ResourceProvider>,
    /// Its place in the family network, when it has a NIC on one.
    pub(crate) family: Option<crate::net::family::VmFamily>,
}

fn host_tsc() -> u64 {
    // SAFETY: RDTSC has no memory effects.
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

impl Vm {
    pub fn new(cfg: &VmConfig, image: &GuestImage) -> Result<Vm, Error> {
        let (started, started_tsc) = (Instant::now(), host_tsc());
        if cfg.vcpus != 1 {
            return Err(Error::Vcpus(cfg.vcpus));
        }
        let mode = image.boot_mode(cfg.boot)?;
        let inputs = crate::inputs::OpenedInputs::open(&cfg.inputs)?;
        if !inputs.is_empty() && mode == BootMode::Pvh {
            return Err(crate::inputs::InputError::NeedsDirectBoot.into());
        }
        let kvm = Kvm::new().map_err(Error::KvmUnavailable)?;
        let ram = GuestRam::new(cfg.mem_size)?;
        if image.end() > cfg.mem_size {
            return Err(crate::ImageError::TooBig {
                end: image.end(),
                mem: cfg.mem_size,
            }
            .into());
        }
        let mut vm = Vm::assemble(
            kvm,
            ram,
            mode,
            cfg.timeout,
            cfg.max_clones,
            started,
            started_tsc,
        )?;
        let create_vm = started.elapsed();
        image.load(vm.ram.mmap(), vm.ram.size())?;
        // Hints never reach below the heap: the image and the inputs hold
        // bytes every clone reads as they are.
        let hints_floor = match mode {
            BootMode::Pvh => {
                let start_info = boot::prepare_pvh(&vm.ram, &cfg.cmdline)?;
                vm.vcpu
                    .start_pvh(image.pvh_entry.expect("checked by boot_mode"), start_info)?;
                image.end()
            }
            _ => {
                let (entry, stack, heap_start) =
                    boot::prepare_direct(&vm.ram, image, &cfg.cmdline, vm.tsc_khz, inputs)?;
                vm.vcpu.start_direct(entry, stack)?;
                heap_start
            }
        };
        let load = started.elapsed() - create_vm;
        tracing::debug!(?mode, ?create_vm, ?load, mem = cfg.mem_size, "VM ready");
        vm.timings.create_vm = create_vm;
        vm.timings.load = load;
        vm.remote_link = cfg.remote.clone();
        vm.no_hints = cfg.no_hints;
        vm.hints_floor = Some(hints_floor.div_ceil(layout::PAGE));
        vm.outputs = crate::output::Outputs::new(cfg.output.clone());
        Ok(vm)
    }

    /// A KVM VM with one vCPU on `ram`, and the run state around it.
    fn assemble(
        kvm: Kvm,
        ram: GuestRam,
        mode: BootMode,
        timeout: Option<Duration>,
        max_clones: u32,
        started: Instant,
        started_tsc: u64,
    ) -> Result<Vm, Error> {
        let vm_fd = kvm.create_vm().map_err(Error::kvm("creating the VM"))?;
        register_ram(&vm_fd, &ram)?;
        let cpuid = Vcpu::supported_cpuid(&kvm)?;
        let vcpu = Vcpu::new(&vm_fd, &cpuid)?;
        let tsc_khz = vcpu.fd.get_tsc_khz().ok().filter(|&k| k > 0);
        Ok(Vm {
            kvm,
            cpuid,
            vm_fd,
            vcpu,
            ram,
            devices: devices::legacy::builtin_devices(),
            console: ConsoleSink::new(),
            mode,
            timeout,
            remote_link: None,
            remote_memory: None,
            stats_file: None,
            alarm: None,
            deadline: None,
            started,
            started_tsc,
            tsc_khz,
            timings: Timings::default(),
            clones: CloneHost::new(max_clones),
            result: Vec::new(),
            pending_entry: None,
            first_entry: None,
            hints_gpa: None,
            no_hints: false,
            hints_floor: None,
            clone_free_pages: crate::hints::FreePages::none(),
            outputs: crate::output::Outputs::new(None),
            clone_resources: None,
            family: None,
        })
    }

    /// A VM resumed from a descriptor on RAM that fills itself from another
    /// host (a remote clone).
    pub(crate) fn from_descriptor(
        desc: &crate::descriptor::VmDescriptor,
        ram: GuestRam,
        memory: crate::remote::RemoteMemory,
        timeout: Option<Duration>,
        max_clones: u32,
        started: Instant,
    ) -> Result<Vm, Error> {
        // The format carries every vCPU; this VMM runs one.
        if desc.vcpus.len() != 1 {
            return Err(Error::Vcpus(desc.vcpus.len() as u32));
        }
        crate::watchdog::install_handler().map_err(Error::Timer)?;
        // This process is the root of the clone's subtree on this host: it
        // reaps the orphans of its killed clones (else PID 1 gets zombies).
        if let Err(e) = crate::clone::process::become_subreaper() {
            tracing::warn!("cannot become the clones' reaper: {e}");
        }
        let kvm = Kvm::new().map_err(Error::KvmUnavailable)?;
        let mut vm = Vm::assemble(
            kvm,
            ram,
            BootMode::Direct,
            timeout,
            max_clones,
            started,
            host_tsc(),
        )?;
        vm.vcpu.restore(desc.boot_vcpu())?;
        vm.devices.restore(
            &desc.devices,
            &devices::RestoreContext {
                mem_size: desc.mem_size,
            },
        )?;
        // The family's hint settings: this clone's own clones honour the
        // guest's hints as the root did (or ignore them with --no-hints).
        vm.no_hints = desc.hints.no_hints;
        vm.hints_floor = desc.hints.floor;
        vm.hints_gpa = desc.hints.bitmap_gpa.filter(|_| !vm.no_hints);
        vm.timings.create_vm = started.elapsed();
        vm.remote_memory = Some(memory);
        vm.pending_entry = Some(started);
        vm.reseed();
        Ok(vm)
    }

    /// Makes every page of a remotely backed RAM present (before a fork: a
    /// child does not inherit the on-demand filling).
    pub(crate) fn fetch_all_memory(&self) -> Result<(), Error> {
        match &self.remote_memory {
            Some(m) => m.prefetch_all().map_err(Error::Remote),
            None => Ok(()),
        }
    }

    /// Reads this VM's remote-memory counters from another thread.
    pub(crate) fn memory_stats_source(&self) -> crate::remote::StatsSource {
        self.remote_memory
            .as_ref()
            .map(|m| crate::remote::StatsSource::new(m.stats_handle()))
            .unwrap_or_default()
    }

    pub(crate) fn register_ram(&self, vm: &VmFd) -> Result<(), Error> {
        register_ram(vm, &self.ram)
    }

    /// Swaps in a new KVM VM and vCPU (in a clone process; the parent's
    /// descriptors are closed, the parent's VM is untouched).
    pub(crate) fn replace_vm(&mut self, vm_fd: VmFd, vcpu: Vcpu) {
        self.vcpu = vcpu;
        self.vm_fd = vm_fd;
    }

    /// Fresh host entropy for the guest's random-number source.
    pub(crate) fn reseed(&self) {
        self.ram.write(
            layout::BOOT_INFO + BootInfo::SEED_OFFSET as u64,
            &boot::entropy_bytes(),
        );
    }

    /// Arms the timer for the family's deadline: fixed at the first call
    /// (the root's start), kept by every clone (a fork copies it; only the
    /// timer is per process, so a new clone arms its own for the time left).
    pub(crate) fn arm_deadline(&mut self) -> Result<(), Error> {
        if let Some(old) = self.alarm.take() {
            // Its timer id belongs to the parent process.
            std::mem::forget(old);
        }
        if self.deadline.is_none() {
            self.deadline = self.timeout.map(|t| Instant::now() + t);
        }
        crate::watchdog::set_thread_deadline(self.deadline);
        if let Some(d) = self.deadline {
            let left = d.saturating_duration_since(Instant::now());
            self.alarm = Some(Alarm::arm(left, Duration::from_millis(50)).map_err(Error::Timer)?);
        }
        Ok(())
    }

    /// What is left of the family's time (for clones on other hosts, whose
    /// clocks differ): never more than the family has.
    pub(crate) fn time_left(&self) -> Option<Duration> {
        match self.deadline {
            Some(d) => Some(d.saturating_duration_since(Instant::now())),
            None => self.timeout,
        }
    }

    pub(crate) fn timed_out(&self) -> Outcome {
        Outcome::TimedOut {
            after: self.timeout.unwrap_or_default(),
            regs: self.vcpu.dump(),
        }
    }

    /// Kills and reaps every clone and memory holder of this VM, and (as
    /// the subreaper) any orphan of theirs: on every way out of the run.
    fn end_family(&mut self) {
        self.kill_unjoined();
        crate::clone::process::reap_all(Duration::from_secs(2));
    }

    /// Runs the guest until it stops, writing its console to `console`.
    /// In a clone process this never returns: the clone reports its end to
    /// its parent and the process exits.
    pub fn run(&mut self, console: &mut dyn Write) -> Result<RunReport, Error> {
        let outcome = match self.arm_deadline().and_then(|()| self.run_loop(console)) {
            // The console consumer stalled until the deadline passed.
            Err(Error::Console(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                Ok(self.timed_out())
            }
            other => other,
        };
        self.alarm = None;
        tracing::debug!(
            target: "sf_vmm::exits",
            "pid {}: {} exits ({:?}), {} hypercalls; {}",
            std::process::id(),
            self.timings.exits,
            self.timings.exit_kinds,
            self.timings.hypercalls,
            self.device_counters().join("; ")
        );
        if self.clones.is_clone() {
            let outcome = outcome.unwrap_or_else(|e| Outcome::HostError {
                message: e.to_string(),
            });
            let _ = console.flush();
            self.finish_clone(&outcome);
        }
        self.end_family();
        let outcome = outcome?;
        match console.flush() {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            r => r.map_err(Error::Console)?,
        }
        self.timings.total = self.started.elapsed();
        self.timings.first_instruction = self.first_instruction();
        Ok(RunReport {
            outcome,
            boot_mode: self.mode,
            timings: self.timings.clone(),
            result: std::mem::take(&mut self.result),
            clones: self.clones.timelines.iter().cloned().collect(),
        })
    }

    fn run_loop(&mut self, console: &mut dyn Write) -> Result<Outcome, Error> {
        Ok(loop {
            let action = self.next_exit()?;
            self.timings.exits += 1;
            // Once remote memory has failed, missing pages read as zeros:
            // stop before the guest acts on them.
            if let Some(why) = self.remote_memory.as_ref().and_then(|m| m.failed()) {
                break Outcome::HostError {
                    message: format!("guest memory could not be fetched from the origin: {why}"),
                };
            }
            let stop = match action {
                ExitAction::Resume => None,
                ExitAction::Console(bytes) => {
                    self.console
                        .write(console, &bytes)
                        .and_then(|()| match bytes.contains(&b'\n') {
                            true => console.flush(),
                            false => Ok(()),
                        })
                        .map_err(Error::Console)?;
                    None
                }
                ExitAction::Hypercall(nr) => self.hypercall(nr, console)?,
                ExitAction::Exit(status) => Some(Outcome::Exited { status }),
                ExitAction::Work { slot, wait } => {
                    self.device_work(slot, wait)?;
                    None
                }
                ExitAction::Halted => Some(Outcome::Halted {
                    regs: self.vcpu.dump(),
                }),
                ExitAction::TripleFault => Some(Outcome::TripleFault {
                    regs: self.vcpu.dump(),
                }),
                ExitAction::EmulationFailure => {
                    // SAFETY: KVM filled the `internal` member for this exit reason.
                    let suberror = unsafe {
                        self.vcpu
                            .fd
                            .get_kvm_run()
                            .__bindgen_anon_1
                            .internal
                            .suberror
                    };
                    Some(Outcome::EmulationFailure {
                        suberror,
                        regs: self.vcpu.dump(),
                    })
                }
                ExitAction::Unbacked { gpa, write } => Some(Outcome::UnbackedAccess {
                    gpa,
                    write,
                    regs: self.vcpu.dump(),
                }),
                ExitAction::Interrupted => match self.deadline {
                    Some(d) if Instant::now() >= d => Some(self.timed_out()),
                    _ => None,
                },
                ExitAction::Unexpected(what) => {
                    tracing::warn!("unexpected VM exit: {what}");
                    Some(Outcome::Halted {
                        regs: self.vcpu.dump(),
                    })
                }
            };
            if let Some(o) = stop {
                break o;
            }
        })
    }

    /// Runs the vCPU to its next exit and routes it through the buses.
    fn next_exit(&mut self) -> Result<ExitAction, Error> {
        if let Some(request) = self.pending_entry.take() {
            self.first_entry = Some(request.elapsed());
        }
        self.family_after_entry();
        let view = match self.vcpu.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => VcpuExitView::IoOut { port, data },
            Ok(VcpuExit::IoIn(port, data)) => VcpuExitView::IoIn { port, data },
            Ok(VcpuExit::MmioRead(gpa, data)) => VcpuExitView::MmioRead { gpa, data },
            Ok(VcpuExit::MmioWrite(gpa, data)) => VcpuExitView::MmioWrite { gpa, data },
            Ok(VcpuExit::Hlt) => VcpuExitView::Hlt,
            Ok(VcpuExit::Shutdown) => VcpuExitView::Shutdown,
            Ok(VcpuExit::InternalError) => VcpuExitView::InternalError,
            Ok(VcpuExit::Intr) => VcpuExitView::Interrupted,
            Ok(other) => VcpuExitView::Other(format!("{other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                VcpuExitView::Interrupted
            }
            Err(e) => {
                return Err(Error::Kvm {
                    what: "running the vCPU",
                    source: e,
                })
            }
        };
        let kinds = &mut self.timings.exit_kinds;
        match view {
            VcpuExitView::IoOut { .. } | VcpuExitView::IoIn { .. } => kinds.pio += 1,
            VcpuExitView::MmioRead { .. } => kinds.mmio_reads += 1,
            VcpuExitView::MmioWrite { .. } => kinds.mmio_writes += 1,
            _ => kinds.other += 1,
        }
        Ok(devices::handle_exit(view, &mut self.devices))
    }

    /// Work a device asked for in an exit, blocking at most `wait` and never
    /// past the family's deadline.
    fn device_work(&mut self, slot: usize, wait: Duration) -> Result<(), Error> {
        let wait = match self.time_left() {
            Some(left) => wait.min(left),
            None => wait,
        };
        let mut ctx = devices::WorkContext {
            ram: &self.ram,
            wait,
        };
        match self.devices.slot_mut(slot) {
            Some(dev) => dev.work(&mut ctx).map_err(Error::Device),
            None => Ok(()),
        }
    }

    /// `id: counters` of every device that keeps counters (the NIC's
    /// `NetStats`), as logged at the end of a run.
    pub fn device_counters(&self) -> Vec<String> {
        self.devices.counters()
    }

    /// Adds a device on the port-I/O or MMIO bus (before [`Vm::run`]). Its
    /// state goes into the descriptor at each clone call, and each clone
    /// gives it its identity through [`BusDevice::on_clone`].
    pub fn add_device(
        &mut self,
        id: &str,
        bus: BusKind,
        range: BusRange,
        device: Box<dyn BusDevice>,
    ) -> Result<(), Error> {
        self.devices
            .add(id, bus, range, device)
            .map_err(Error::AddDevice)
    }

    /// In a new clone (local or remote), before its first instruction:
    /// every device takes the clone's identity and its fresh resources.
    pub(crate) fn devices_on_clone(&mut self, id: u32, path: &str) -> Result<(), Error> {
        let mut ctx = devices::CloneContext {
            clone_id: id,
            path: path.to_string(),
            member: self.family_member(),
            resources: Default::default(),
            guest_writes: Vec::new(),
        };
        if let Some(provider) = self.clone_resources.as_mut() {
            ctx.resources = provider(&ctx)?;
        }
        self.devices.on_clone(&mut ctx)?;
        for (gpa, bytes) in &ctx.guest_writes {
            self.ram.write_checked(*gpa, bytes).map_err(|e| {
                Error::Device(devices::DeviceError::Host {
                    device: "clone hook".into(),
                    what: format!("writing {} bytes at {gpa:#x}: {e:?}", bytes.len()),
                    source: None,
                })
            })?;
        }
        Ok(())
    }

    /// Sets what hands a new clone's devices their fresh host resources
    /// (called in each new clone before its first instruction).
    pub fn set_clone_resources(&mut self, provider: devices::ResourceProvider) {
        self.clone_resources = Some(provider);
    }

    fn hypercall(&mut self, nr: u32, console: &mut dyn Write) -> Result<Option<Outcome>, Error> {
        self.timings.hypercalls += 1;
        let mut regs = self
            .vcpu
            .fd
            .get_regs()
            .map_err(Error::kvm("reading registers"))?;
        let args = Args {
            nr,
            a0: regs.rdi,
            a1: regs.rsi,
            a2: regs.r8,
            a3: regs.r9,
        };
        let mut cpu = hypercall::LiveCpu::new(&self.vcpu.fd);
        let action = hypercall::handle(
            &self.ram,
            args,
            self.clones.result_cap,
            &mut self.console,
            console,
            &mut cpu,
        )
        .map_err(Error::Console)?;
        let ret = match action {
            Action::Return(v) => HcReturn::Value(v),
            Action::Stop(o) => return Ok(Some(o)),
            Action::CloneExit { status, result } => {
                self.result = result;
                return Ok(Some(Outcome::Exited { status }));
            }
            Action::RegisterHints(gpa) => {
                if !self.no_hints {
                    self.hints_gpa = Some(gpa);
                }
                HcReturn::Value(0)
            }
            Action::WillRead { name, offset, len } => {
                HcReturn::Value(match self.will_read(&name, offset, len) {
                    Ok(pages) => pages,
                    Err(e) => e.to_ret(),
                })
            }
            Action::Output { append, name, data } => HcReturn::Value(
                match self.outputs.write(&self.clones.path, append, &name, &data) {
                    Ok(n) => n,
                    Err(e) => e.to_ret(),
                },
            ),
            Action::Clone(call) => match self.clone_call(call, args, console)? {
                HcReturn::Stop(o) => return Ok(Some(*o)),
                r => r,
            },
        };
        if let HcReturn::Value(v) = ret {
            regs.rax = v;
            self.vcpu
                .fd
                .set_regs(&regs)
                .map_err(Error::kvm("setting registers"))?;
        }
        Ok(None)
    }

    fn clone_call(
        &mut self,
        call: Call,
        a: Args,
        console: &mut dyn Write,
    ) -> Result<HcReturn, Error> {
        // Ticket numbers are 32-bit; anything else names no ticket.
        let ticket = u32::try_from(a.a0).unwrap_or(0);
        match call {
            Call::TicketRequest => Ok(HcReturn::Value(self.ticket_request(a.a0))),
            Call::Clone => self.clone_vm(ticket, console),
            Call::JoinWait => self.join_wait(ticket, console),
            Call::JoinFetch => {
                let caller = hypercall::LiveCpu::new(&self.vcpu.fd).caller();
                self.join_fetch(ticket, a.a1, a.a2, caller)
            }
            Call::Kill => self.kill_clones(ticket),
            Call::ResultCap => Ok(HcReturn::Value(
                match self.clones.tickets.result_cap(ticket) {
                    Ok(cap) => cap,
                    Err(e) => e.to_ret(),
                },
            )),
            _ => unreachable!("hypercall::handle routes only clone calls here"),
        }
    }

    /// Maps the guest's first-instruction TSC stamp onto host time.
    fn first_instruction(&self) -> Option<Duration> {
        let khz = self.tsc_khz? as u64;
        let first = self
            .ram
            .read_u64(layout::BOOT_INFO + BootInfo::FIRST_TSC_OFFSET as u64)
            .filter(|&t| t != 0)?;
        let guest_now = self.vcpu.guest_tsc()?;
        let offset = guest_now.wrapping_sub(host_tsc());
        let ticks = first.wrapping_sub(offset).checked_sub(self.started_tsc)?;
        Some(Duration::from_nanos(
            (ticks as u128 * 1_000_000 / khz as u128) as u64,
        ))
    }
}

impl Drop for Vm {
    /// A VMM that unwinds (a host bug) or is dropped early still ends its
    /// clones; after a normal run this finds nothing left to do.
    fn drop(&mut self) {
        if !self.clones.is_clone() {
            self.end_family();
        }
    }
}

fn register_ram(vm: &VmFd, ram: &GuestRam) -> Result<(), Error> {
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: ram.size(),
        userspace_addr: ram.host_base(),
    };
    // SAFETY: the region is guest RAM owned by the `Vm` that also owns this
    // VM descriptor, so the mapping outlives the VM's use of it.
    unsafe { vm.set_user_memory_region(region) }.map_err(Error::kvm("registering guest memory"))
}
