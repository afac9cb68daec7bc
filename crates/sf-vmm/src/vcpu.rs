//! The vCPU: CPUID, the two ways to start it (direct ring-3 entry, PVH
//! 32-bit entry), and register dumps for crash reports.

use crate::descriptor::VcpuState;
use crate::outcome::RegisterDump;
use crate::Error;
use kvm_bindings::{kvm_segment, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use sf_abi::layout::{self, selector};

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const MSR_IA32_TSC: u32 = 0x10;

/// MSRs a clone inherits: the TSC (so the guest clock runs on), segment
/// bases, syscall and sysenter set-up, PAT and TSC_AUX.
const SAVED_MSRS: [u32; 13] = [
    MSR_IA32_TSC,
    0x174,
    0x175,
    0x176,
    0x277,
    0xc000_0081,
    0xc000_0082,
    0xc000_0083,
    0xc000_0084,
    0xc000_0100,
    0xc000_0101,
    0xc000_0102,
    0xc000_0103,
];

pub struct Vcpu {
    pub fd: VcpuFd,
}

fn segment(selector: u16, code: bool, dpl: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 11 } else { 3 },
        present: 1,
        dpl,
        db: (!long) as u8,
        s: 1,
        l: (code && long) as u8,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

impl Vcpu {
    /// What the host's KVM supports; asked once per VMM (it costs ~0.3 ms
    /// here) and inherited by clones.
    pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, Error> {
        kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::kvm("reporting supported CPUID"))
    }

    pub fn new(vm: &VmFd, cpuid: &CpuId) -> Result<Vcpu, Error> {
        let fd = vm.create_vcpu(0).map_err(Error::kvm("creating the vCPU"))?;
        fd.set_cpuid2(cpuid).map_err(Error::kvm("setting CPUID"))?;
        Ok(Vcpu { fd })
    }

    /// Long mode, ring 3, at the guest's user entry, on tables the VMM built.
    pub fn start_direct(&self, entry: u64, stack_top: u64) -> Result<(), Error> {
        let mut s = self
            .fd
            .get_sregs()
            .map_err(Error::kvm("reading special registers"))?;
        s.cs = segment(selector::USER_CODE, true, 3, true);
        let data = segment(selector::USER_DATA, false, 3, true);
        (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data);
        s.tr = kvm_segment {
            base: layout::TSS,
            limit: layout::TSS_LIMIT as u32,
            selector: selector::TSS,
            type_: 11,
            present: 1,
            ..Default::default()
        };
        s.gdt.base = layout::GDT;
        s.gdt.limit = (layout::GDT_SIZE - 1) as u16;
        s.idt.base = layout::IDT;
        s.idt.limit = (layout::IDT_VECTORS * 16 - 1) as u16;
        s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
        s.cr3 = layout::PML4;
        s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
        s.efer = EFER_LME | EFER_LMA;
        self.fd
            .set_sregs(&s)
            .map_err(Error::kvm("setting special registers"))?;
        let regs = kvm_bindings::kvm_regs {
            rip: entry,
            rsp: stack_top,
            rflags: 2,
            rdi: layout::BOOT_INFO,
            ..Default::default()
        };
        self.fd
            .set_regs(&regs)
            .map_err(Error::kvm("setting registers"))
    }

    /// The PVH boot protocol's initial state: 32-bit protected mode, paging
    /// off, flat segments, `ebx` = start info.
    pub fn start_pvh(&self, entry: u64, start_info: u64) -> Result<(), Error> {
        let mut s = self
            .fd
            .get_sregs()
            .map_err(Error::kvm("reading special registers"))?;
        s.cs = segment(0x08, true, 0, false);
        let data = segment(0x10, false, 0, false);
        (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data);
        s.tr = kvm_segment {
            limit: 0x67,
            type_: 11,
            present: 1,
            ..Default::default()
        };
        s.cr0 = CR0_PE | CR0_ET;
        s.cr4 = 0;
        s.efer = 0;
        self.fd
            .set_sregs(&s)
            .map_err(Error::kvm("setting special registers"))?;
        let regs = kvm_bindings::kvm_regs {
            rip: entry,
            rbx: start_info,
            rflags: 2,
            ..Default::default()
        };
        self.fd
            .set_regs(&regs)
            .map_err(Error::kvm("setting registers"))
    }

    /// The guest's TSC right now, for mapping guest timestamps to host time.
    pub fn guest_tsc(&self) -> Option<u64> {
        let mut msrs = Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
            index: MSR_IA32_TSC,
            ..Default::default()
        }])
        .ok()?;
        match self.fd.get_msrs(&mut msrs) {
            Ok(1) => Some(msrs.as_slice()[0].data),
            _ => None,
        }
    }

    /// Completes an I/O exit without running guest code (KVM_RUN with
    /// `immediate_exit`), so the registers show the state after the port
    /// instruction.
    pub fn complete_pending_io(&mut self) -> Result<(), Error> {
        self.fd.set_kvm_immediate_exit(1);
        let r = self.fd.run().map(|_| ());
        self.fd.set_kvm_immediate_exit(0);
        match r {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Ok(()) => Ok(()),
            Err(e) => Err(Error::Kvm {
                what: "completing the hypercall",
                source: e,
            }),
        }
    }

    pub fn set_rax(&self, rax: u64) -> Result<(), Error> {
        let mut regs = self
            .fd
            .get_regs()
            .map_err(Error::kvm("reading registers"))?;
        regs.rax = rax;
        self.fd
            .set_regs(&regs)
            .map_err(Error::kvm("setting registers"))
    }

    /// Everything needed to resume this vCPU in another VM.
    pub fn capture(&self) -> Result<VcpuState, Error> {
        // One batched read; KVM stops at the first MSR it cannot read, so
        // the rest are then read one by one, skipping the unreadable.
        let entries: Vec<_> = SAVED_MSRS
            .iter()
            .map(|&index| kvm_bindings::kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut batch = Msrs::from_entries(&entries).expect("a few entries fit");
        let n = self.fd.get_msrs(&mut batch).unwrap_or(0);
        let mut msrs: Vec<(u32, u64)> = batch.as_slice()[..n]
            .iter()
            .map(|e| (e.index, e.data))
            .collect();
        for &index in &SAVED_MSRS[n.min(SAVED_MSRS.len())..] {
            let mut m = Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
                index,
                ..Default::default()
            }])
            .expect("one entry fits");
            if let Ok(1) = self.fd.get_msrs(&mut m) {
                msrs.push((index, m.as_slice()[0].data));
            }
        }
        Ok(VcpuState {
            regs: self
                .fd
                .get_regs()
                .map_err(Error::kvm("reading registers"))?,
            sregs: self
                .fd
                .get_sregs()
                .map_err(Error::kvm("reading special registers"))?,
            xsave: self
                .fd
                .get_xsave()
                .map_err(Error::kvm("reading FPU/SSE state"))?,
            xcrs: self.fd.get_xcrs().map_err(Error::kvm("reading XCRs"))?,
            debugregs: self
                .fd
                .get_debug_regs()
                .map_err(Error::kvm("reading debug registers"))?,
            events: self
                .fd
                .get_vcpu_events()
                .map_err(Error::kvm("reading pending events"))?,
            msrs,
        })
    }

    /// Loads a captured state (the vCPU must already have its CPUID).
    pub fn restore(&self, s: &VcpuState) -> Result<(), Error> {
        self.fd
            .set_sregs(&s.sregs)
            .map_err(Error::kvm("setting special registers"))?;
        self.fd
            .set_regs(&s.regs)
            .map_err(Error::kvm("setting registers"))?;
        self.fd
            .set_xcrs(&s.xcrs)
            .map_err(Error::kvm("setting XCRs"))?;
        // SAFETY: the xsave area came from KVM_GET_XSAVE on the same host.
        unsafe { self.fd.set_xsave(&s.xsave) }.map_err(Error::kvm("setting FPU/SSE state"))?;
        self.fd
            .set_debug_regs(&s.debugregs)
            .map_err(Error::kvm("setting debug registers"))?;
        self.fd
            .set_vcpu_events(&s.events)
            .map_err(Error::kvm("setting pending events"))?;
        let entries: Vec<_> = s
            .msrs
            .iter()
            .map(|&(index, data)| kvm_bindings::kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| Error::Kvm {
            what: "building the MSR list",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let n = self
            .fd
            .set_msrs(&msrs)
            .map_err(Error::kvm("setting MSRs"))?;
        if n != entries.len() {
            tracing::warn!(set = n, of = entries.len(), "KVM accepted only some MSRs");
        }
        Ok(())
    }

    pub fn dump(&self) -> RegisterDump {
        let (Ok(r), Ok(s)) = (self.fd.get_regs(), self.fd.get_sregs()) else {
            return RegisterDump::default();
        };
        RegisterDump {
            rip: r.rip,
            rsp: r.rsp,
            rflags: r.rflags,
            gprs: [
                r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
                r.r13, r.r14, r.r15,
            ],
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
            cs: s.cs.selector,
            cpl: s.cs.dpl,
        }
    }
}
