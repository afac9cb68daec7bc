//! Guest physical memory layout. Guest RAM starts at physical address 0 and
//! is identity mapped; the first MiB holds the structures ring 0 needs and is
//! supervisor-only except for the boot information page (user read-write)
//! and the command line (user read-only). Above the image: the heap, one
//! absent guard page, then the stack up to the end of RAM.

/// Boot information block ([`crate::boot_info::BootInfo`]); user readable and writable.
pub const BOOT_INFO: u64 = 0x1000;
/// Global descriptor table.
pub const GDT: u64 = 0x2000;
/// Interrupt descriptor table (exception vectors only).
pub const IDT: u64 = 0x3000;
/// Task state segment followed by its I/O permission bitmap.
pub const TSS: u64 = 0x4000;
/// Where a PVH boot places `hvm_start_info` and its memory map.
pub const PVH_START_INFO: u64 = 0x7000;
/// Top-level page table.
pub const PML4: u64 = 0x8000;
/// Page directory pointer table (one, covering 512 GiB).
pub const PDPT: u64 = 0x9000;
/// 4 KiB page table for the first 2 MiB, so the null page and the kernel
/// structures can be protected with 4 KiB granularity.
pub const PT_LOW: u64 = 0xA000;
/// 4 KiB page table for the 2 MiB around the stack guard page, so the guard
/// alone is absent.
pub const PT_GUARD: u64 = 0xB000;
/// 4 KiB page table for the 2 MiB holding the virtio-mmio window, so only
/// the window's own pages are mapped (see [`crate::tables::map_mmio_window`]).
pub const PT_MMIO: u64 = 0xC000;
/// Page directories, one per GiB of guest RAM.
pub const PD_BASE: u64 = 0x10000;
/// Kernel command line (the guest's arguments), NUL terminated.
pub const CMDLINE: u64 = 0x50000;
/// Maximum command line length including the terminating NUL.
pub const CMDLINE_MAX: u64 = 0x1000;
/// Top of the ring-0 stack used for exception entry (TSS.rsp0) and PVH set-up.
pub const KERNEL_STACK_TOP: u64 = 0x60000;
/// Where guest ELF images must load: everything below is reserved.
pub const IMAGE_BASE: u64 = 0x10_0000;

/// Guest physical base of the virtio-mmio window: one 4 KiB register
/// slot per device. Guest RAM must end at or below it when a VM has
/// devices there.
pub const MMIO_BASE: u64 = 0xF000_0000;
/// Size of the virtio-mmio window.
pub const MMIO_SIZE: u64 = 1 << 20;
/// Size of one device's register slot in the window.
pub const MMIO_SLOT: u64 = 4096;

/// Smallest guest RAM the layout supports.
pub const MIN_MEM: u64 = 4 << 20;
/// Largest guest RAM the layout supports (one page directory per GiB).
pub const MAX_MEM: u64 = 64 << 30;
/// Size of the large pages that map guest RAM.
pub const LARGE_PAGE: u64 = 2 << 20;
/// Size of a small page.
pub const PAGE: u64 = 4096;

/// Selectors in the GDT built by [`crate::tables`].
pub mod selector {
    pub const KERNEL_CODE: u16 = 0x08;
    pub const KERNEL_DATA: u16 = 0x10;
    pub const USER_CODE: u16 = 0x18 | 3;
    pub const USER_DATA: u16 = 0x20 | 3;
    pub const TSS: u16 = 0x28;
}

/// Number of GDT bytes in use.
pub const GDT_SIZE: u64 = 7 * 8;
/// Number of IDT vectors installed: the architectural exceptions.
pub const IDT_VECTORS: u64 = 32;
/// Size of the TSS proper; the I/O bitmap follows it.
pub const TSS_BASE_SIZE: u64 = 104;
/// I/O bitmap: one bit per port, plus the mandatory trailing 0xff byte.
pub const IO_BITMAP_SIZE: u64 = 8192 + 1;
/// TSS limit (last valid byte offset), covering the I/O bitmap.
pub const TSS_LIMIT: u64 = TSS_BASE_SIZE + IO_BITMAP_SIZE - 1;

/// Where the application's heap and stack go, derived from RAM size and the
/// end of the loaded image. The guard page is `[heap_end, heap_end + PAGE)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserRegions {
    pub heap_start: u64,
    pub heap_end: u64,
    pub stack_top: u64,
}

/// Bytes of ring-3 stack: an eighth of RAM, 256 KiB..=8 MiB (a multiple of
/// 256 KiB, since RAM is a multiple of 2 MiB).
pub const fn stack_size(mem_size: u64) -> u64 {
    let s = mem_size / 8;
    if s < (256 << 10) {
        256 << 10
    } else if s > (8 << 20) {
        8 << 20
    } else {
        s
    }
}

/// The absent page between heap and stack: a stack that outgrows its
/// region page-faults here instead of running on into the heap.
pub const fn stack_guard(mem_size: u64) -> u64 {
    mem_size.saturating_sub(stack_size(mem_size) + PAGE)
}

/// Splits the RAM above the image into heap, guard page and a stack at the
/// top of RAM. Returns `None` when the image leaves no room for a minimal
/// heap and stack.
pub fn user_regions(mem_size: u64, image_end: u64) -> Option<UserRegions> {
    let heap_start = image_end.checked_add(PAGE - 1)? & !(PAGE - 1);
    let heap_end = stack_guard(mem_size);
    if heap_end < heap_start.checked_add(256 << 10)? {
        return None;
    }
    Some(UserRegions {
        heap_start,
        heap_end,
        stack_top: mem_size,
    })
}

// The fixed ring-0 structures must not overlap: checked when the crate
// builds, so a layout change that breaks this does not compile.
const _: () = {
    assert!(GDT + GDT_SIZE <= IDT);
    assert!(IDT + IDT_VECTORS * 16 <= TSS);
    assert!(TSS + TSS_LIMIT < PVH_START_INFO);
    assert!(PT_LOW + PAGE <= PT_GUARD);
    assert!(PT_GUARD + PAGE <= PT_MMIO);
    assert!(PT_MMIO + PAGE <= PD_BASE);
    // The window fits in one 2 MiB region of one page directory.
    assert!(MMIO_BASE % LARGE_PAGE + MMIO_SIZE <= LARGE_PAGE);
    assert!(MMIO_BASE + MMIO_SIZE <= MAX_MEM);
    // The guard page never falls in the first 2 MiB (mapped by PT_LOW).
    assert!(stack_guard(MIN_MEM) >= LARGE_PAGE);
    assert!(PD_BASE + (MAX_MEM >> 30) * PAGE <= CMDLINE);
    assert!(CMDLINE + CMDLINE_MAX <= KERNEL_STACK_TOP - 0x8000);
    assert!(KERNEL_STACK_TOP <= IMAGE_BASE);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_leave_stack_at_top() {
        let r = user_regions(64 << 20, 0x12_3456).unwrap();
        assert_eq!(r.heap_start, 0x12_4000);
        assert_eq!(r.stack_top, 64 << 20);
        assert_eq!(r.heap_end, (64 << 20) - (8 << 20) - PAGE);
        assert_eq!(stack_guard(64 << 20), r.heap_end);
        assert_eq!(stack_size(4 << 20), 512 << 10);
        assert_eq!(stack_size(1 << 30), 8 << 20);
    }

    #[test]
    fn regions_refuse_an_image_filling_ram() {
        assert_eq!(user_regions(8 << 20, 8 << 20), None);
        assert_eq!(user_regions(8 << 20, u64::MAX), None);
    }
}
