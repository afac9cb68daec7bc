//! Ring 0: the PVH entry, the exception stubs and the ring-3 entry stub.
//!
//! Ring-0 code is emulated one instruction at a time on the project's
//! machines (~0.5 µs each), so it does the least it can: the PVH path enters
//! long mode, builds the tables with the shared builder and `iretq`s to ring
//! 3; an exception stub saves three registers and reports to the VMM. The
//! SnowFlock VMM skips all of it: it builds the same tables itself and starts
//! the vCPU at `_sf_user_entry` in ring 3.

use core::arch::{asm, global_asm};
use sf_abi::boot_info::{self, BootInfo};

use sf_abi::hypercall::{self, Call};
use sf_abi::layout::{self, selector};
use sf_abi::tables::{self, GuestWords};

global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long {pvh_note_type}
    .asciz "Xen"
    .long _sf_pvh_start
    .balign 4

    .section .note.snowflock, "a", @note
    .balign 4
    .long 10
    .long 56
    .long {sf_note_type}
    .asciz "SnowFlock"
    .balign 4
    .quad {abi_version}
    .quad _sf_user_entry
    .quad _sf_isr_0
    .quad 16
    .quad _sf_image_end
    .quad _sf_ring0_start
    .quad _sf_ring0_end
    .balign 4

    .section .rodata.sf_boot, "a"
    .balign 16
_sf_boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
_sf_boot_gdtr:
    .word 23
    .quad _sf_boot_gdt
_sf_final_gdtr:
    .word {gdt_size} - 1
    .quad {gdt}
_sf_final_idtr:
    .word {idt_vectors} * 16 - 1
    .quad {idt}

    .section .text.sf_boot, "ax"
    .code32
    .globl _sf_pvh_start
_sf_pvh_start:
    cli
    mov %ebx, %esi
    mov ${kstack}, %esp
    mov %cr4, %eax
    or $0x620, %eax
    mov %eax, %cr4
    /* Map the first 64 MiB, all ring 0 touches before the real tables
       exist (the image, low tables, start info); each emulated
       iteration costs microseconds. */
    movl $({pdpt} | 3), {pml4}
    movl $({pd} | 3), {pdpt}
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, {pd}(,%ecx,8)
    inc %ecx
    cmp $32, %ecx
    jne 1b
    mov ${pml4}, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80010022, %eax
    and $~0x4, %eax
    mov %eax, %cr0
    lgdt _sf_boot_gdtr
    ljmp $0x08, $_sf_pvh_long

    .code64
_sf_pvh_long:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov ${kstack}, %rsp
    mov %esi, %edi
    call sf_pvh_setup
    mov ${pml4}, %rax
    mov %rax, %cr3
    lgdt _sf_final_gdtr
    lidt _sf_final_idtr
    mov ${tss_sel}, %ax
    ltr %ax
    pushq ${user_data}
    pushq {boot_info} + {stack_top_off}
    pushq $2
    pushq ${user_code}
    pushq $_sf_user_entry
    mov ${boot_info}, %edi
    iretq

    /* The exception stubs run in ring 0: they live in their own
       page-aligned section (guest.ld), which the page tables map
       supervisor-only and read-only, never in ring 3's writable image. */
    .section .text.sf_ring0, "ax"
    .globl _sf_isr_0
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .balign 16
_sf_isr_\v:
    .if (\v == 8) || (\v == 10) || (\v == 11) || (\v == 12) || (\v == 13) || (\v == 14) || (\v == 17) || (\v == 21) || (\v == 29) || (\v == 30)
    .else
    pushq $0
    .endif
    pushq $\v
    jmp _sf_isr_common
    .endr

_sf_isr_common:
    push %rax
    push %rdx
    push %rdi
    mov %rsp, %rdi
    mov ${exception}, %eax
    mov ${port}, %dx
    out %eax, %dx
    /* No SnowFlock VMM: say so on the serial port and ask QEMU to exit. */
    mov ${serial}, %dx
    mov $'!', %al
    out %al, %dx
    mov ${debug_exit}, %dx
    mov $0x7f, %al
    out %al, %dx
2:  hlt
    jmp 2b

    .section .text.sf_boot, "ax"
    .globl _sf_user_entry
_sf_user_entry:
    rdtsc
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, {first_tsc_off}(%rdi)
    and $-16, %rsp
    call sf_rt_start
    ud2
    .text
    "#,
    pvh_note_type = const sf_abi::note::PVH_NOTE_TYPE,
    sf_note_type = const sf_abi::note::NOTE_TYPE,
    abi_version = const sf_abi::ABI_VERSION,
    gdt_size = const layout::GDT_SIZE,
    gdt = const layout::GDT,
    idt_vectors = const layout::IDT_VECTORS,
    idt = const layout::IDT,
    kstack = const layout::KERNEL_STACK_TOP,
    pml4 = const layout::PML4,
    pdpt = const layout::PDPT,
    pd = const layout::PD_BASE,
    tss_sel = const selector::TSS,
    user_data = const selector::USER_DATA,
    user_code = const selector::USER_CODE,
    boot_info = const layout::BOOT_INFO,
    stack_top_off = const 9 * 8,
    first_tsc_off = const BootInfo::FIRST_TSC_OFFSET,
    exception = const Call::Exception as u32,
    port = const hypercall::PORT,
    serial = const hypercall::SERIAL_PORT,
    debug_exit = const hypercall::DEBUG_EXIT_PORT,
    options(att_syntax)
);

extern "C" {
    static _sf_isr_0: u8;
    static _sf_image_end: u8;
    static _sf_ring0_start: u8;
    static _sf_ring0_end: u8;
}

const HVM_START_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
/// Without a memory map, assume the smallest layout.
const FALLBACK_MEM: u64 = layout::MIN_MEM;
/// Without a TSC frequency from CPUID, guess; the clock says it is a guess.
const FALLBACK_TSC_KHZ: u64 = 2_000_000;

struct IdentityMapped;

impl GuestWords for IdentityMapped {
    fn write_u64(&mut self, gpa: u64, value: u64) {
        // SAFETY: ring 0 runs on an identity map of guest RAM and `gpa` is one
        // of the table addresses below IMAGE_BASE, reserved for these tables.
        unsafe { core::ptr::write_volatile(gpa as *mut u64, value) }
    }
}

fn read_u32(addr: u64) -> u32 {
    // SAFETY: reads of the PVH start info the loader placed in guest RAM.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn read_u64(addr: u64) -> u64 {
    // SAFETY: as for `read_u32`.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

/// Highest end of the RAM entries in the PVH memory map, rounded down to a
/// large page.
fn ram_size_from_start_info(start_info: u64) -> u64 {
    if start_info == 0 || read_u32(start_info) != HVM_START_MAGIC || read_u32(start_info + 4) < 1 {
        return FALLBACK_MEM;
    }
    let map = read_u64(start_info + 40);
    let entries = read_u32(start_info + 48) as u64;
    let mut end = 0;
    for i in 0..entries.min(128) {
        let e = map + i * 24;
        if read_u32(e + 16) == E820_RAM {
            end = end.max(read_u64(e) + read_u64(e + 8));
        }
    }
    let end = end.min(layout::MAX_MEM) & !(layout::LARGE_PAGE - 1);
    if end < layout::MIN_MEM {
        FALLBACK_MEM
    } else {
        end
    }
}

/// Copies the command line into the reserved area, before the tables (which
/// may overlap where the loader put it) are written.
fn copy_cmdline(start_info: u64) -> u64 {
    if start_info == 0 || read_u32(start_info) != HVM_START_MAGIC {
        return 0;
    }
    let src = read_u64(start_info + 24);
    if src == 0 {
        return 0;
    }
    let mut len = 0;
    while len < layout::CMDLINE_MAX - 1 {
        // SAFETY: the loader's NUL-terminated command line, in guest RAM.
        let b = unsafe { core::ptr::read_volatile((src + len) as *const u8) };
        if b == 0 {
            break;
        }
        // SAFETY: the reserved command-line area below IMAGE_BASE.
        unsafe { core::ptr::write_volatile((layout::CMDLINE + len) as *mut u8, b) };
        len += 1;
    }
    len
}

fn probe_hypercalls() -> bool {
    let v: u32;
    // SAFETY: an `in` from the hypercall port has no side effect.
    unsafe { asm!("in eax, dx", in("dx") hypercall::PORT, out("eax") v, options(nomem, nostack)) };
    v == hypercall::PROBE_MAGIC
}

fn tsc_khz_from_cpuid() -> Option<u64> {
    let max = core::arch::x86_64::__cpuid(0).eax;
    if max >= 0x15 {
        let l = core::arch::x86_64::__cpuid(0x15);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return Some(l.ecx as u64 * l.ebx as u64 / l.eax as u64 / 1000);
        }
    }
    if max >= 0x16 {
        let l = core::arch::x86_64::__cpuid(0x16);
        if l.eax != 0 {
            return Some(l.eax as u64 * 1000);
        }
    }
    None
}

/// Called from the PVH entry in 64-bit ring 0 on a temporary map of the
/// first 64 MiB; afterwards the assembly loads the tables and enters ring 3.
#[no_mangle]
extern "C" fn sf_pvh_setup(start_info: u64) {
    let mem_size = ram_size_from_start_info(start_info);
    let cmdline_len = copy_cmdline(start_info);
    // SAFETY: the linker-defined addresses of the stubs, the ring-0 text
    // and the image end.
    let (ring0, image_end) = unsafe {
        (
            tables::Ring0 {
                isr_base: &_sf_isr_0 as *const u8 as u64,
                isr_stride: 16,
                text_start: &_sf_ring0_start as *const u8 as u64,
                text_end: &_sf_ring0_end as *const u8 as u64,
            },
            &_sf_image_end as *const u8 as u64,
        )
    };
    if tables::build(&mut IdentityMapped, mem_size, &ring0).is_err() {
        halt();
    }
    let Some(regions) = layout::user_regions(mem_size, image_end) else {
        halt()
    };
    let mut flags = boot_info::FLAG_PVH_BOOT;
    if probe_hypercalls() {
        flags |= boot_info::FLAG_HYPERCALLS;
    }
    let tsc_khz = match tsc_khz_from_cpuid() {
        Some(k) => {
            flags |= boot_info::FLAG_TSC_CALIBRATED;
            k
        }
        None => FALLBACK_TSC_KHZ,
    };
    // Field by field, word stores only: a block copy could use SSE, which
    // ring 0's emulator lacks.
    let words = [
        (0, boot_info::MAGIC),
        (1, sf_abi::ABI_VERSION as u64),
        (2, flags),
        (3, mem_size),
        (4, tsc_khz),
        (5, layout::CMDLINE),
        (6, cmdline_len),
        (7, regions.heap_start),
        (8, regions.heap_end),
        (9, regions.stack_top),
    ];
    for (i, w) in words {
        IdentityMapped.write_u64(layout::BOOT_INFO + i * 8, w);
    }
}

fn halt() -> ! {
    loop {
        // SAFETY: ring 0, nothing to do but stop.
        unsafe { asm!("hlt", options(nomem, nostack)) };
    }
}
