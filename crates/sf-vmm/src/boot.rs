//! Prepares guest RAM for the first instruction: the CPU tables and boot
//! information block for a direct ring-3 start, or the PVH start info for a
//! standard PVH boot.

use crate::image::{GuestImage, ImageError};
use crate::memory::GuestRam;
use crate::Error;
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_start_info};
use sf_abi::boot_info::{self, BootInfo};
use sf_abi::layout;
use vm_memory::{ByteValued, Bytes, GuestAddress};

const HVM_START_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;

fn write_cmdline(ram: &GuestRam, cmdline: &str) -> Result<u64, Error> {
    let len = cmdline.len();
    if len as u64 >= layout::CMDLINE_MAX {
        return Err(Error::CmdlineTooLong {
            len,
            max: layout::CMDLINE_MAX - 1,
        });
    }
    ram.write(layout::CMDLINE, cmdline.as_bytes());
    ram.write(layout::CMDLINE + len as u64, &[0]);
    Ok(len as u64)
}

/// 32 bytes of host entropy, as the boot block's seed words.
pub fn entropy_bytes() -> [u8; 32] {
    let e = entropy();
    let mut out = [0u8; 32];
    for (i, w) in e.iter().enumerate() {
        out[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    out
}

fn entropy() -> [u64; 4] {
    let mut seed = [0u8; 32];
    // SAFETY: getrandom writes at most `seed.len()` bytes into `seed`.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if n != seed.len() as isize {
        // Fall back to the clock: a weak seed beats no run.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        seed[..16].copy_from_slice(&t.as_nanos().to_le_bytes());
    }
    std::array::from_fn(|i| u64::from_le_bytes(seed[i * 8..i * 8 + 8].try_into().expect("8 bytes")))
}

/// Builds the tables and boot block and loads the inputs; returns
/// `(entry, stack_top, heap_start)`.
pub fn prepare_direct(
    ram: &GuestRam,
    image: &GuestImage,
    cmdline: &str,
    tsc_khz: Option<u32>,
    inputs: crate::inputs::OpenedInputs,
) -> Result<(u64, u64, u64), Error> {
    let (note, ring0) = match (image.note, image.ring0()) {
        (Some(n), Some(r)) => (n, r),
        _ => {
            return Err(ImageError::BootMode(
                crate::BootMode::Direct,
                "the image has no SnowFlock note; use --boot pvh",
            )
            .into())
        }
    };
    let mem = ram.size();
    if layout::user_regions(mem, image.end()).is_none() {
        return Err(ImageError::TooBig {
            end: image.end() + (2 << 20),
            mem,
        }
        .into());
    }
    let (plan, regions) = inputs.plan(mem, image.end())?;
    sf_abi::tables::build_with_inputs(&mut &*ram, mem, &ring0, plan.start..plan.end)
        .map_err(|e| ImageError::BadNote(format!("the CPU tables cannot be built: {e:?}")))?;
    let (inputs_table, inputs_table_len) = inputs.load(ram, &plan)?;
    let cmdline_len = write_cmdline(ram, cmdline)?;
    let mut flags = boot_info::FLAG_HYPERCALLS;
    if tsc_khz.is_some() {
        flags |= boot_info::FLAG_TSC_CALIBRATED;
    }
    let info = BootInfo {
        magic: boot_info::MAGIC,
        abi_version: sf_abi::ABI_VERSION as u64,
        flags,
        mem_size: mem,
        tsc_khz: tsc_khz.unwrap_or(2_000_000) as u64,
        cmdline_addr: layout::CMDLINE,
        cmdline_len,
        heap_start: regions.heap_start,
        heap_end: regions.heap_end,
        stack_top: regions.stack_top,
        first_tsc: 0,
        seed: entropy(),
        inputs_table,
        inputs_table_len,
        ..Default::default()
    };
    ram.write(layout::BOOT_INFO, &info.to_bytes());
    Ok((note.user_entry, regions.stack_top, regions.heap_start))
}

/// Writes the PVH start info (one RAM entry, the command line); returns its
/// address.
pub fn prepare_pvh(ram: &GuestRam, cmdline: &str) -> Result<u64, Error> {
    write_cmdline(ram, cmdline)?;
    let memmap_addr = layout::PVH_START_INFO + std::mem::size_of::<hvm_start_info>() as u64;
    let entry = hvm_memmap_table_entry {
        addr: 0,
        size: ram.size(),
        type_: E820_RAM,
        reserved: 0,
    };
    let info = hvm_start_info {
        magic: HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE,
        memmap_paddr: memmap_addr,
        memmap_entries: 1,
        ..Default::default()
    };
    let m = ram.mmap();
    m.write_slice(info.as_slice(), GuestAddress(layout::PVH_START_INFO))
        .expect("fixed layout");
    m.write_slice(entry.as_slice(), GuestAddress(memmap_addr))
        .expect("fixed layout");
    Ok(layout::PVH_START_INFO)
}
