//! Hypercall buffers as their caller may name them. A ring-3 caller names
//! virtual addresses: the host follows the guest's own page tables from CR3
//! (`sf_abi::pagewalk`, over bounds-checked reads of guest RAM) and accepts
//! only pages ring 3 could access the same way itself: present + user to be
//! read, also writable at every level to be written. So ring 3 cannot make
//! the host write clone-controlled bytes into its IDT, page tables or kernel
//! stack. The guest kernel (ring 0, on an identity map) may name any range
//! of guest RAM.

use crate::memory::GuestRam;
use kvm_bindings::kvm_sregs;
use sf_abi::hypercall::Error as HcError;
use sf_abi::pagewalk::{self, Access, PhysRead};

const CR0_PG: u64 = 1 << 31;

/// Who made the hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Ring 0: the guest kernel's own stubs.
    Kernel,
    /// Ring 1-3, with the page tables it runs on (`None`: paging is off,
    /// which no ring-3 code can run with, so every buffer is refused).
    User { cr3: Option<u64> },
}

impl Caller {
    /// The privilege level at the exit: the RPL of CS and the DPL of SS
    /// both equal the CPL; ring 3 can set neither to 0, and either one
    /// saying "not ring 0" is enough to treat the caller as ring 3.
    pub fn from_sregs(s: &kvm_sregs) -> Caller {
        if s.cs.selector & 3 == 0 && s.ss.dpl == 0 {
            Caller::Kernel
        } else {
            Caller::User {
                cr3: (s.cr0 & CR0_PG != 0).then_some(s.cr3),
            }
        }
    }
}

/// The vCPU's privilege state at a hypercall, read once and only when a
/// call needs it: KVM_GET_SREGS costs ~8 µs here (10 extra reads per call
/// made a 20,000-call flood 1.6 s slower), against ~60 µs for the whole
/// hypercall, so calls that name no buffer never pay it.
pub trait CpuView {
    /// Who is calling; a failed read counts as ring 3 with no usable page
    /// tables, so it refuses every buffer instead of trusting the call.
    fn caller(&mut self) -> Caller;
    /// The page-fault address, for an exception report.
    fn cr2(&mut self) -> u64;
}

/// [`CpuView`] of a live vCPU.
pub struct LiveCpu<'a> {
    vcpu: &'a kvm_ioctls::VcpuFd,
    sregs: Option<Option<kvm_sregs>>,
}

impl<'a> LiveCpu<'a> {
    pub fn new(vcpu: &'a kvm_ioctls::VcpuFd) -> Self {
        LiveCpu { vcpu, sregs: None }
    }

    fn sregs(&mut self) -> Option<kvm_sregs> {
        let vcpu = self.vcpu;
        *self.sregs.get_or_insert_with(|| vcpu.get_sregs().ok())
    }
}

impl CpuView for LiveCpu<'_> {
    fn caller(&mut self) -> Caller {
        match self.sregs() {
            Some(s) => Caller::from_sregs(&s),
            None => Caller::User { cr3: None },
        }
    }

    fn cr2(&mut self) -> u64 {
        self.sregs().map_or(0, |s| s.cr2)
    }
}

impl PhysRead for GuestRam {
    fn read_u64(&self, gpa: u64) -> Option<u64> {
        self.check_range(gpa, 8, 8).ok()?;
        GuestRam::read_u64(self, gpa)
    }
}

fn pieces(
    ram: &GuestRam,
    cr3: Option<u64>,
    va: u64,
    len: u64,
    access: Access,
) -> Result<Vec<(u64, u64)>, HcError> {
    let pieces = pagewalk::user_buffer(ram, cr3.ok_or(HcError::Fault)?, va, len, access)
        .ok_or(HcError::Fault)?;
    // A page table may point past RAM: check every piece before using any.
    for &(gpa, n) in &pieces {
        ram.check_range(gpa, n, u64::MAX)?;
    }
    Ok(pieces)
}

/// Reads a buffer the caller named, at most `max` bytes.
pub fn read(
    ram: &GuestRam,
    caller: Caller,
    va: u64,
    len: u64,
    max: u64,
) -> Result<Vec<u8>, HcError> {
    let Caller::User { cr3 } = caller else {
        return ram.read_checked(va, len, max);
    };
    if len > max {
        return Err(HcError::TooBig);
    }
    let mut out = Vec::with_capacity(len as usize);
    for (gpa, n) in pieces(ram, cr3, va, len, Access::Read)? {
        out.extend_from_slice(&ram.read_checked(gpa, n, u64::MAX)?);
    }
    Ok(out)
}

/// Writes host data into a buffer the caller named; nothing is written
/// unless all of it may be.
pub fn write(ram: &GuestRam, caller: Caller, va: u64, bytes: &[u8]) -> Result<(), HcError> {
    let Caller::User { cr3 } = caller else {
        return ram.write_checked(va, bytes);
    };
    let mut at = 0;
    for (gpa, n) in pieces(ram, cr3, va, bytes.len() as u64, Access::Write)? {
        ram.write_checked(gpa, &bytes[at..at + n as usize])?;
        at += n as usize;
    }
    Ok(())
}

/// The frame an exception report points at: only ring 0's stubs may send
/// one (the VM ends with the report), so ring 3 cannot forge a crash.
pub fn read_kernel_frame(ram: &GuestRam, caller: Caller, frame: u64) -> Result<Vec<u8>, HcError> {
    match caller {
        Caller::Kernel => ram.read_checked(frame, FRAME, FRAME),
        Caller::User { .. } => Err(HcError::Denied),
    }
}

const FRAME: u64 = sf_abi::hypercall::ExceptionFrame::SIZE as u64;

#[cfg(test)]
mod tests {
    use super::*;
    use sf_abi::layout::{self, PML4};
    use sf_abi::tables::{self, Ring0};

    fn booted(mem: u64) -> GuestRam {
        let ram = GuestRam::new(mem).unwrap();
        let ring0 = Ring0 {
            isr_base: 0x10_0000,
            isr_stride: 16,
            text_start: 0x10_0000,
            text_end: 0x10_1000,
        };
        tables::build(&mut &ram, mem, &ring0).unwrap();
        ram
    }

    const USER: Caller = Caller::User { cr3: Some(PML4) };

    #[test]
    fn ring3_names_only_what_it_could_write_itself() {
        let mem = 16 << 20;
        let ram = booted(mem);
        // Ring 0 writes into a VM of its own: it would break these tables.
        let kernel_ram = booted(mem);
        let rec = [7u8; 100];
        for a in [
            layout::IDT,
            layout::PML4,
            layout::PD_BASE,
            layout::TSS,
            layout::KERNEL_STACK_TOP - 64,
            0x10_0000,
            layout::CMDLINE,
            layout::stack_guard(mem),
        ] {
            assert_eq!(write(&ram, USER, a, &rec), Err(HcError::Fault), "{a:#x}");
            assert_eq!(
                write(&kernel_ram, Caller::Kernel, a, &rec),
                Ok(()),
                "ring 0 may: {a:#x}"
            );
        }
        let idt_after = ram.read_checked(layout::IDT + 200, 8, 8).unwrap();
        assert_eq!(idt_after, [0; 8], "a refused write wrote nothing");
        assert_eq!(write(&ram, USER, mem - 100, &rec), Ok(()));
        assert_eq!(ram.read_checked(mem - 100, 100, 100).unwrap(), rec);
        assert_eq!(
            read(&ram, USER, layout::CMDLINE, 8, 8).map(|v| v.len()),
            Ok(8)
        );
        assert_eq!(read(&ram, USER, layout::IDT, 8, 8), Err(HcError::Fault));
        assert_eq!(read(&ram, USER, 0x20_0000, 9, 8), Err(HcError::TooBig));
        let no_paging = Caller::User { cr3: None };
        assert_eq!(read(&ram, no_paging, 0x20_0000, 8, 8), Err(HcError::Fault));
    }

    #[test]
    fn a_page_table_pointing_past_ram_is_a_fault() {
        let ram = booted(8 << 20);
        // Point the 2 MiB page at 4 MiB somewhere beyond RAM.
        let pd = layout::PD_BASE + 2 * 8;
        ram.write(pd, &((64u64 << 30) | 0x87).to_le_bytes());
        assert_eq!(read(&ram, USER, 4 << 20, 8, 8), Err(HcError::Fault));
        // And the PML4 at a table beyond RAM.
        ram.write(PML4, &((64u64 << 30) | 0x7).to_le_bytes());
        assert_eq!(write(&ram, USER, 0x20_0000, &[1]), Err(HcError::Fault));
    }
}
