//! Builds the boot-time CPU tables in guest RAM: identity page tables, GDT,
//! IDT and TSS with its I/O permission bitmap.
//!
//! The same code runs on the host (fast boot: the VMM prepares everything and
//! starts the vCPU in ring 3) and in the guest's ring 0 (PVH boot, where each
//! instruction is emulated, so it only issues aligned 64-bit stores).

use crate::hypercall;
use crate::layout::*;

/// Somewhere to put 64-bit words at guest physical addresses.
pub trait GuestWords {
    fn write_u64(&mut self, gpa: u64, value: u64);
}

pub const PRESENT: u64 = 1 << 0;
pub const WRITABLE: u64 = 1 << 1;
pub const USER: u64 = 1 << 2;
pub const LARGE: u64 = 1 << 7;
/// Write-through and cache-disable: device registers must not be cached.
pub const PWT: u64 = 1 << 3;
pub const PCD: u64 = 1 << 4;

/// Why the tables cannot be built for the requested RAM size or image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    TooSmall,
    TooLarge,
    NotLargePageAligned,
    /// The ring-0 text is not page-aligned inside `[IMAGE_BASE, 2 MiB)`,
    /// or does not hold every exception stub.
    Ring0Text,
}

/// Where the guest kernel's ring-0 code is: the exception stubs (vector `v`
/// at `isr_base + v * isr_stride`) inside the page-aligned text
/// `[text_start, text_end)`, which is mapped supervisor-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring0 {
    pub isr_base: u64,
    pub isr_stride: u64,
    pub text_start: u64,
    pub text_end: u64,
}

impl Ring0 {
    /// The text must sit in the 4 KiB-mapped first 2 MiB, above the fixed
    /// structures, and contain every stub.
    pub fn check(&self) -> Result<(), LayoutError> {
        let ok = self.text_start.is_multiple_of(PAGE)
            && self.text_end.is_multiple_of(PAGE)
            && IMAGE_BASE <= self.text_start
            && self.text_start < self.text_end
            && self.text_end <= LARGE_PAGE
            && self.isr_stride > 0
            && self.isr_stride <= PAGE
            && self.text_start <= self.isr_base
            // Both from the image's note: checked, a huge base must not wrap.
            && self
                .isr_base
                .checked_add(IDT_VECTORS * self.isr_stride)
                .is_some_and(|end| end <= self.text_end);
        if ok {
            Ok(())
        } else {
            Err(LayoutError::Ring0Text)
        }
    }
}

pub fn check_mem_size(mem_size: u64) -> Result<(), LayoutError> {
    if mem_size < MIN_MEM {
        Err(LayoutError::TooSmall)
    } else if mem_size > MAX_MEM {
        Err(LayoutError::TooLarge)
    } else if !mem_size.is_multiple_of(LARGE_PAGE) {
        Err(LayoutError::NotLargePageAligned)
    } else {
        Ok(())
    }
}

/// Ports a ring-3 application may use: the hypercall port (a 4-byte
/// access), and the serial and debug-exit ports it falls back to elsewhere.
pub const OPEN_PORTS: [(u16, u16); 3] = [
    (hypercall::PORT, 4),
    (hypercall::SERIAL_PORT, 8),
    (hypercall::DEBUG_EXIT_PORT, 4),
];

/// Writes every table. `ring0` locates the guest's exception stubs and
/// ring-0 text. The caller guarantees the RAM below [`IMAGE_BASE`] is zero,
/// as it is in a fresh VM.
pub fn build(m: &mut impl GuestWords, mem_size: u64, ring0: &Ring0) -> Result<(), LayoutError> {
    check_mem_size(mem_size)?;
    ring0.check()?;
    build_page_tables(m, mem_size, ring0);
    build_gdt(m);
    build_idt(m, ring0.isr_base, ring0.isr_stride);
    build_tss(m);
    Ok(())
}

/// Flags of one 4 KiB page of the first 2 MiB: the null page is absent; the
/// ring-0 structures below the image and the ring-0 text are
/// supervisor-only (the text also read-only: CR0.WP holds ring 0 to it);
/// ring 3 may write the boot information page and read its arguments.
pub fn low_page_flags(addr: u64, ring0: &Ring0) -> u64 {
    if addr < PAGE {
        0
    } else if (ring0.text_start..ring0.text_end).contains(&addr) {
        PRESENT
    } else if addr >= IMAGE_BASE || addr == BOOT_INFO {
        PRESENT | WRITABLE | USER
    } else if (CMDLINE..CMDLINE + CMDLINE_MAX).contains(&addr) {
        PRESENT | USER
    } else {
        PRESENT | WRITABLE
    }
}

fn build_page_tables(m: &mut impl GuestWords, mem_size: u64, ring0: &Ring0) {
    // Two 4 KiB page tables: the first 2 MiB (null page, ring-0 structures
    // and text) and the 2 MiB holding the stack guard page; every other
    // 2 MiB is one large user page.
    for page in 0..512u64 {
        let addr = page * PAGE;
        let flags = low_page_flags(addr, ring0);
        m.write_u64(PT_LOW + page * 8, if flags == 0 { 0 } else { addr | flags });
    }
    let guard = stack_guard(mem_size);
    let guard_region = guard & !(LARGE_PAGE - 1);
    for page in 0..512u64 {
        let addr = guard_region + page * PAGE;
        let entry = if addr == guard {
            0
        } else {
            addr | PRESENT | WRITABLE | USER
        };
        m.write_u64(PT_GUARD + page * 8, entry);
    }
    let large_pages = mem_size / LARGE_PAGE;
    for i in 1..large_pages {
        let addr = i * LARGE_PAGE;
        let entry = if addr == guard_region {
            PT_GUARD | PRESENT | WRITABLE | USER
        } else {
            addr | PRESENT | WRITABLE | USER | LARGE
        };
        m.write_u64(PD_BASE + i * 8, entry);
    }
    m.write_u64(PD_BASE, PT_LOW | PRESENT | WRITABLE | USER);
    let gibs = mem_size.div_ceil(1 << 30);
    for g in 0..gibs {
        m.write_u64(
            PDPT + g * 8,
            (PD_BASE + g * PAGE) | PRESENT | WRITABLE | USER,
        );
    }
    m.write_u64(PML4, PDPT | PRESENT | WRITABLE | USER);
}

/// Maps the virtio-mmio window `[MMIO_BASE, MMIO_BASE + MMIO_SIZE)` for
/// ring 3 (read/write, uncached), after [`build`], for a VM that has
/// devices there: the guest's drivers run in ring 3 and poll. The rest of
/// the window's 2 MiB stays unmapped. Refused with
/// [`LayoutError::TooLarge`] when guest RAM reaches into the window (RAM
/// must end at or below `MMIO_BASE`).
pub fn map_mmio_window(m: &mut impl GuestWords, mem_size: u64) -> Result<(), LayoutError> {
    check_mem_size(mem_size)?;
    if mem_size > MMIO_BASE {
        return Err(LayoutError::TooLarge);
    }
    let region = MMIO_BASE & !(LARGE_PAGE - 1);
    for page in 0..512u64 {
        let addr = region + page * PAGE;
        let entry = if (MMIO_BASE..MMIO_BASE + MMIO_SIZE).contains(&addr) {
            addr | PRESENT | WRITABLE | USER | PWT | PCD
        } else {
            0
        };
        m.write_u64(PT_MMIO + page * 8, entry);
    }
    let gib = MMIO_BASE >> 30;
    let pd = PD_BASE + gib * PAGE;
    m.write_u64(
        pd + ((MMIO_BASE >> 21) & 511) * 8,
        PT_MMIO | PRESENT | WRITABLE | USER,
    );
    // RAM below 3 GiB leaves this GiB's directory unused: link it in. (Its
    // other entries are zero, as all RAM below the image is in a new VM.)
    m.write_u64(PDPT + gib * 8, pd | PRESENT | WRITABLE | USER);
    Ok(())
}

/// Flat 64-bit segments; DPL in bits 45..47.
const GDT_ENTRIES: [u64; 5] = [
    0,
    0x00af_9a00_0000_ffff, // kernel code
    0x00cf_9200_0000_ffff, // kernel data
    0x00af_fa00_0000_ffff, // user code
    0x00cf_f200_0000_ffff, // user data
];

/// The two GDT words of the 64-bit available-TSS descriptor.
pub fn tss_descriptor() -> [u64; 2] {
    let base = TSS;
    let limit = TSS_LIMIT;
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    [low, base >> 32]
}

fn build_gdt(m: &mut impl GuestWords) {
    for (i, e) in GDT_ENTRIES.iter().enumerate() {
        m.write_u64(GDT + i as u64 * 8, *e);
    }
    let [lo, hi] = tss_descriptor();
    m.write_u64(GDT + selector::TSS as u64, lo);
    m.write_u64(GDT + selector::TSS as u64 + 8, hi);
}

/// Interrupt gates to ring 0; DPL 0, so `int n` from ring 3 raises #GP.
fn build_idt(m: &mut impl GuestWords, isr_base: u64, isr_stride: u64) {
    for v in 0..IDT_VECTORS {
        let h = isr_base + v * isr_stride;
        let low = (h & 0xffff)
            | ((selector::KERNEL_CODE as u64) << 16)
            | (0x8e << 40)
            | (((h >> 16) & 0xffff) << 48);
        m.write_u64(IDT + v * 16, low);
        m.write_u64(IDT + v * 16 + 8, h >> 32);
    }
}

fn build_tss(m: &mut impl GuestWords) {
    // rsp0 lives at byte offset 4; the I/O map base at offset 102.
    m.write_u64(TSS, KERNEL_STACK_TOP << 32);
    m.write_u64(TSS + 8, KERNEL_STACK_TOP >> 32);
    m.write_u64(TSS + 96, TSS_BASE_SIZE << 48);
    let bitmap = TSS + TSS_BASE_SIZE;
    // Deny everything in a tight loop, then open the few words that hold
    // open ports: in an emulated ring 0 every instruction costs ~1 us.
    for word in 0..1024u64 {
        m.write_u64(bitmap + word * 8, u64::MAX);
    }
    for (start, len) in OPEN_PORTS {
        for word in start as u64 / 64..=(start as u64 + len as u64 - 1) / 64 {
            m.write_u64(bitmap + word * 8, io_bitmap_word(word));
        }
    }
    m.write_u64(bitmap + 1024 * 8, 0xff);
}

/// One 64-port word of the I/O bitmap: a set bit denies the port.
pub fn io_bitmap_word(word: u64) -> u64 {
    let (lo, hi) = (word * 64, word * 64 + 64);
    let mut bits = u64::MAX;
    for (start, len) in OPEN_PORTS {
        let (s, e) = ((start as u64).max(lo), (start as u64 + len as u64).min(hi));
        if s < e {
            let n = e - s;
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << (s - lo)
            };
            bits &= !mask;
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::pagewalk::{translate_user, Access, PhysRead};
    use std::collections::BTreeMap;

    struct Ram(BTreeMap<u64, u64>);
    impl GuestWords for Ram {
        fn write_u64(&mut self, gpa: u64, value: u64) {
            assert_eq!(gpa % 8, 0, "unaligned store at {gpa:#x}");
            assert!(gpa < IMAGE_BASE, "table store above the reserved area");
            self.0.insert(gpa, value);
        }
    }
    impl PhysRead for Ram {
        fn read_u64(&self, gpa: u64) -> Option<u64> {
            Some(self.0.get(&gpa).copied().unwrap_or(0))
        }
    }

    const RING0: Ring0 = Ring0 {
        isr_base: 0x10_0000,
        isr_stride: 16,
        text_start: 0x10_0000,
        text_end: 0x10_1000,
    };

    fn built(mem: u64) -> Ram {
        let mut r = Ram(BTreeMap::new());
        build(&mut r, mem, &RING0).unwrap();
        r
    }

    /// Where `va` leads for ring 3, or `None`; ring 0 sees the same map
    /// with the user bit ignored, checked through the low table directly.
    fn user(r: &Ram, va: u64) -> Option<u64> {
        translate_user(r, PML4, va, Access::Read).map(|t| t.0)
    }

    #[test]
    fn identity_maps_ram_and_nothing_beyond() {
        let mem = 3 << 30;
        let r = built(mem);
        for va in [0x10_1000, 0x20_0000, 0x4000_1234, mem - 8] {
            assert_eq!(user(&r, va), Some(va), "va {va:#x}");
        }
        assert_eq!(user(&r, 0), None, "null page must fault");
        assert_eq!(user(&r, mem), None, "RAM end must fault");
    }

    #[test]
    fn kernel_structures_and_text_are_supervisor_only() {
        let r = built(64 << 20);
        assert_eq!(user(&r, BOOT_INFO), Some(BOOT_INFO));
        assert_eq!(user(&r, CMDLINE + 8), Some(CMDLINE + 8));
        for a in [
            GDT,
            IDT,
            TSS,
            PML4,
            PT_GUARD,
            PD_BASE,
            KERNEL_STACK_TOP - 8,
            0x10_0000,
            0x10_0ff8,
        ] {
            assert_eq!(user(&r, a), None, "{a:#x}");
            let e = r.0[&(PT_LOW + (a / PAGE) * 8)];
            assert_eq!(e & !0xfff, a & !0xfff, "ring 0 still maps {a:#x}");
            assert_ne!(e & PRESENT, 0);
        }
        assert_eq!(
            r.0[&(PT_LOW + 0x100 * 8)] & (WRITABLE | USER),
            0,
            "text is read-only"
        );
        assert_eq!(user(&r, 0x10_1000), Some(0x10_1000));
    }

    #[test]
    fn the_guard_page_alone_is_absent() {
        for mem in [MIN_MEM, 16 << 20, 64 << 20, 1 << 30] {
            let r = built(mem);
            let g = stack_guard(mem);
            assert_eq!(user(&r, g), None, "guard of {mem:#x}");
            assert_eq!(user(&r, g + PAGE - 1), None);
            assert_eq!(user(&r, g - 1), Some(g - 1));
            assert_eq!(user(&r, g + PAGE), Some(g + PAGE));
        }
    }

    #[test]
    fn ring0_text_is_checked() {
        let bad = [
            Ring0 {
                text_start: 0x10_0800,
                ..RING0
            },
            Ring0 {
                text_end: 0x20_1000,
                ..RING0
            },
            Ring0 {
                text_start: 0xf_f000,
                isr_base: 0xf_f000,
                ..RING0
            },
            Ring0 {
                isr_base: 0x10_0f00,
                ..RING0
            },
            Ring0 {
                isr_stride: 0,
                ..RING0
            },
            // The stubs' end wraps around: an overflow, not a fit.
            Ring0 {
                isr_base: u64::MAX - (IDT_VECTORS * 16 - 1),
                ..RING0
            },
        ];
        for r0 in bad {
            let mut r = Ram(BTreeMap::new());
            assert_eq!(
                build(&mut r, 64 << 20, &r0),
                Err(LayoutError::Ring0Text),
                "{r0:?}"
            );
        }
    }

    #[test]
    fn the_built_bitmap_matches_the_per_word_rule() {
        let r = built(64 << 20);
        for word in 0..1024u64 {
            assert_eq!(
                r.0[&(TSS + TSS_BASE_SIZE + word * 8)],
                io_bitmap_word(word),
                "word {word}"
            );
        }
        assert_eq!(r.0[&(TSS + TSS_BASE_SIZE + 1024 * 8)], 0xff);
    }

    #[test]
    fn io_bitmap_opens_exactly_the_listed_ports() {
        let open = |p: u64| io_bitmap_word(p / 64) & (1 << (p % 64)) == 0;
        assert!((0x510..0x514).all(open));
        assert!((0x3f8..0x400).all(open));
        assert!(open(0xf4));
        assert!(!open(0x50f) && !open(0x514) && !open(0x60) && !open(0xcf8));
    }

    #[test]
    fn the_mmio_window_is_mapped_for_ring3_uncached_and_nothing_around_it() {
        for mem in [64 << 20, 3 << 30, MMIO_BASE] {
            let mut r = built(mem);
            assert_eq!(user(&r, MMIO_BASE), None, "unmapped before the call");
            map_mmio_window(&mut r, mem).unwrap();
            for va in [MMIO_BASE, MMIO_BASE + 0x100, MMIO_BASE + MMIO_SIZE - 8] {
                let t = translate_user(&r, PML4, va, Access::Write).map(|t| t.0);
                assert_eq!(t, Some(va), "mem {mem:#x} va {va:#x}");
            }
            let pte = r.0[&(PT_MMIO + ((MMIO_BASE >> 12) & 511) * 8)];
            assert_eq!(pte & (PCD | PWT), PCD | PWT, "uncached");
            assert_eq!(user(&r, MMIO_BASE + MMIO_SIZE), None);
            assert_eq!(
                user(&r, MMIO_BASE - 8),
                if mem == MMIO_BASE {
                    Some(MMIO_BASE - 8)
                } else {
                    None
                }
            );
            // RAM is still mapped as before.
            assert_eq!(user(&r, mem - 8), Some(mem - 8));
            assert_eq!(
                user(&r, mem),
                if mem == MMIO_BASE { Some(mem) } else { None }
            );
        }
    }

    #[test]
    fn the_mmio_window_is_refused_over_ram() {
        let mem = MMIO_BASE + LARGE_PAGE;
        let mut r = built(mem);
        assert_eq!(map_mmio_window(&mut r, mem), Err(LayoutError::TooLarge));
        assert_eq!(user(&r, MMIO_BASE), Some(MMIO_BASE), "RAM left as it was");
    }

    #[test]
    fn sizes_are_validated() {
        assert_eq!(check_mem_size(2 << 20), Err(LayoutError::TooSmall));
        assert_eq!(check_mem_size(65 << 30), Err(LayoutError::TooLarge));
        assert_eq!(
            check_mem_size((64 << 20) + 4096),
            Err(LayoutError::NotLargePageAligned)
        );
        assert_eq!(check_mem_size(64 << 20), Ok(()));
    }

    #[test]
    fn idt_gates_point_at_the_stubs() {
        let r = built(64 << 20);
        let low = r.0[&(IDT + 14 * 16)];
        let handler = (low & 0xffff) | ((low >> 48) << 16);
        assert_eq!(handler, 0x10_0000 + 14 * 16);
        assert_eq!((low >> 16) & 0xffff, selector::KERNEL_CODE as u64);
    }
}
