//! Guest images: ELF files checked before any byte reaches guest RAM.
//!
//! An image boots either directly in ring 3 (it carries the SnowFlock note,
//! so the VMM knows its entry and exception stubs) or through the standard
//! PVH entry note. Every program header is checked against the layout and
//! the RAM size, so a malformed or oversized ELF gets an error naming the
//! problem instead of a half-loaded VM.

use goblin::elf::{program_header::PT_LOAD, Elf};
use sf_abi::layout::IMAGE_BASE;
use sf_abi::note::{GuestNote, NOTE_NAME, NOTE_TYPE, PVH_NOTE_TYPE};
use std::io::{Cursor, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Largest guest image file loaded: the shipped guests are under 1 MiB and
/// an image must fit in guest RAM next to its heap, so 64 MiB is generous;
/// the bound keeps a device or a huge file from being read without end.
pub const MAX_IMAGE_SIZE: u64 = 64 << 20;

/// Why the bytes are not an ELF, without a word of their content (an
/// attacker who names a file must not learn its first bytes from the
/// error, as goblin's "Invalid magic number: 0x..." would tell).
fn malformed(bytes: &[u8]) -> ImageError {
    if bytes.len() < 4 || bytes[..4] != *b"\x7fELF" {
        ImageError::Malformed("not an ELF file (it does not start with the ELF magic)".into())
    } else {
        ImageError::Malformed("too short, or its headers do not parse".into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read guest image {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("guest image is not a valid ELF file: {0}")]
    Malformed(String),
    #[error("guest image {path} is not a regular file; name an ELF file")]
    NotRegular { path: String },
    #[error("guest image {path} is {size} bytes, more than the {} MiB a guest image may have", MAX_IMAGE_SIZE >> 20)]
    TooLarge { path: String, size: u64 },
    #[error("guest image is a {0} ELF; only 64-bit x86 (x86_64) executables can run")]
    WrongArch(&'static str),
    #[error("guest image is not an executable ELF (e_type {0})")]
    NotExecutable(u16),
    #[error("guest image has no loadable segment")]
    NoSegments,
    #[error("guest image segment at {addr:#x} lies below {base:#x}, which is reserved for the guest kernel's tables")]
    BelowBase { addr: u64, base: u64 },
    #[error("guest image segment at {addr:#x} (+{size:#x} bytes) wraps the address space")]
    Overflow { addr: u64, size: u64 },
    #[error("guest image segment at {addr:#x} claims {filesz} file bytes from offset {offset} but the file is {len} bytes")]
    Truncated {
        addr: u64,
        offset: u64,
        filesz: u64,
        len: usize,
    },
    #[error("guest image segment has {filesz} file bytes but only {memsz} bytes in memory")]
    FileLargerThanMemory { filesz: u64, memsz: u64 },
    #[error("guest image needs RAM up to {end:#x} ({} MiB) but the VM has {} MiB; raise --mem", end.div_ceil(1 << 20), mem >> 20)]
    TooBig { end: u64, mem: u64 },
    #[error("guest image has neither a SnowFlock note nor a PVH entry note, so there is no way to start it")]
    NoEntry,
    #[error("guest image was built for SnowFlock ABI {found}; this VMM speaks ABI {expected}; rebuild the guest")]
    AbiMismatch { found: u64, expected: u32 },
    #[error("guest image's PVH entry point {entry:#x} is outside the loaded image")]
    EntryOutside { entry: u64 },
    #[error("guest image's SnowFlock note is malformed: {0}")]
    BadNote(String),
    #[error("boot mode {0} is not possible: {1}")]
    BootMode(BootMode, &'static str),
    #[error("loading guest image failed: {0}")]
    Load(#[source] linux_loader::loader::Error),
}

/// Why a VM booted through PVH gets no NIC: a PVH kernel builds its own
/// page tables and boot data where the direct boot's would be, so mapping
/// the device window and writing the NIC's boot words would overwrite that
/// kernel's memory, and nothing would tell it where the device is.
pub const NIC_NEEDS_DIRECT_BOOT: &str = "a NIC (--net) needs the direct boot; \
     a PVH kernel builds its own page tables and is told of no device: \
     boot a guest with a SnowFlock note (--boot direct, or auto)";

/// How the vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootMode {
    /// Direct ring-3 entry when the image has a SnowFlock note, else PVH.
    Auto,
    /// The VMM builds the tables and starts the vCPU in ring 3.
    Direct,
    /// The standard PVH entry: 32-bit protected mode, paging off.
    Pvh,
}

impl std::fmt::Display for BootMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BootMode::Auto => "auto",
            BootMode::Direct => "direct",
            BootMode::Pvh => "pvh",
        })
    }
}

#[derive(Clone, Copy, Debug)]
struct Segment {
    paddr: u64,
    memsz: u64,
}

/// A checked guest ELF.
#[derive(Debug)]
pub struct GuestImage {
    bytes: Vec<u8>,
    segments: Vec<Segment>,
    pub pvh_entry: Option<u64>,
    pub note: Option<GuestNote>,
}

impl GuestImage {
    /// Loads a guest ELF: a regular file of at most [`MAX_IMAGE_SIZE`]
    /// bytes (a device such as `/dev/zero` or a FIFO is refused before a
    /// byte is read, and a file growing while read is cut at the limit).
    pub fn from_file(path: &Path) -> Result<GuestImage, ImageError> {
        let read_err = |source| ImageError::Read {
            path: path.display().to_string(),
            source,
        };
        // O_NONBLOCK: opening a FIFO must not wait for a writer.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        if meta.is_dir() {
            return Err(read_err(std::io::Error::from_raw_os_error(libc::EISDIR)));
        }
        if !meta.file_type().is_file() {
            return Err(ImageError::NotRegular {
                path: path.display().to_string(),
            });
        }
        if meta.len() > MAX_IMAGE_SIZE {
            return Err(ImageError::TooLarge {
                path: path.display().to_string(),
                size: meta.len(),
            });
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(MAX_IMAGE_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 > MAX_IMAGE_SIZE {
            return Err(ImageError::TooLarge {
                path: path.display().to_string(),
                size: bytes.len() as u64,
            });
        }
        GuestImage::from_bytes(bytes)
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Result<GuestImage, ImageError> {
        let elf = Elf::parse(&bytes).map_err(|_| malformed(&bytes))?;
        if !elf.is_64 {
            return Err(ImageError::WrongArch("32-bit"));
        }
        if elf.header.e_machine != goblin::elf::header::EM_X86_64 {
            return Err(ImageError::WrongArch("non-x86_64"));
        }
        if elf.header.e_type != goblin::elf::header::ET_EXEC {
            return Err(ImageError::NotExecutable(elf.header.e_type));
        }
        let mut segments = Vec::new();
        for ph in elf.program_headers.iter().filter(|p| p.p_type == PT_LOAD) {
            let (addr, offset) = (ph.p_paddr, ph.p_offset);
            if ph.p_filesz > ph.p_memsz {
                return Err(ImageError::FileLargerThanMemory {
                    filesz: ph.p_filesz,
                    memsz: ph.p_memsz,
                });
            }
            if offset
                .checked_add(ph.p_filesz)
                .is_none_or(|end| end > bytes.len() as u64)
            {
                return Err(ImageError::Truncated {
                    addr,
                    offset,
                    filesz: ph.p_filesz,
                    len: bytes.len(),
                });
            }
            if addr.checked_add(ph.p_memsz).is_none() {
                return Err(ImageError::Overflow {
                    addr,
                    size: ph.p_memsz,
                });
            }
            if ph.p_memsz == 0 {
                continue;
            }
            if addr < IMAGE_BASE {
                return Err(ImageError::BelowBase {
                    addr,
                    base: IMAGE_BASE,
                });
            }
            segments.push(Segment {
                paddr: addr,
                memsz: ph.p_memsz,
            });
        }
        if segments.is_empty() {
            return Err(ImageError::NoSegments);
        }
        let (mut pvh_entry, mut note) = (None, None);
        if let Some(notes) = elf.iter_note_headers(&bytes) {
            for n in notes {
                let n = n.map_err(|_| ImageError::Malformed("a note does not parse".into()))?;
                if n.n_type == PVH_NOTE_TYPE && n.name == "Xen" && n.desc.len() >= 4 {
                    pvh_entry =
                        Some(u32::from_le_bytes(n.desc[..4].try_into().expect("4 bytes")) as u64);
                } else if n.n_type == NOTE_TYPE && n.name.as_bytes() == NOTE_NAME {
                    note = Some(
                        GuestNote::parse(n.desc)
                            .ok_or(ImageError::BadNote("descriptor too short".into()))?,
                    );
                }
            }
        }
        if let Some(n) = note {
            if n.abi_version != sf_abi::ABI_VERSION as u64 {
                return Err(ImageError::AbiMismatch {
                    found: n.abi_version,
                    expected: sf_abi::ABI_VERSION,
                });
            }
            if n.isr_stride == 0 || n.isr_stride > 4096 {
                return Err(ImageError::BadNote(format!(
                    "exception stub stride {} out of range",
                    n.isr_stride
                )));
            }
            if ring0(&n).check().is_err() {
                return Err(ImageError::BadNote(format!(
                    "the ring-0 text {:#x}..{:#x} must be whole 4 KiB pages between 1 and 2 MiB holding every exception stub (at {:#x}, stride {})",
                    n.ring0_start, n.ring0_end, n.isr_base, n.isr_stride
                )));
            }
        }
        if pvh_entry.is_none() && note.is_none() {
            return Err(ImageError::NoEntry);
        }
        let image = GuestImage {
            bytes,
            segments,
            pvh_entry,
            note,
        };
        if let Some(entry) = pvh_entry {
            if !image.contains(entry) {
                return Err(ImageError::EntryOutside { entry });
            }
        }
        if let Some(n) = note {
            for (what, addr) in [
                ("ring-3 entry", n.user_entry),
                ("exception stubs", n.isr_base),
            ] {
                if !image.contains(addr) {
                    return Err(ImageError::BadNote(format!(
                        "{what} at {addr:#x} is outside the loaded image"
                    )));
                }
            }
        }
        Ok(image)
    }

    /// Where the ring-0 text and exception stubs are (direct boot only).
    pub fn ring0(&self) -> Option<sf_abi::tables::Ring0> {
        self.note.as_ref().map(ring0)
    }

    fn contains(&self, addr: u64) -> bool {
        self.segments
            .iter()
            .any(|s| addr >= s.paddr && addr - s.paddr < s.memsz)
    }

    /// End of the highest segment (and of the image's own idea of its end).
    pub fn end(&self) -> u64 {
        let seg_end = self
            .segments
            .iter()
            .map(|s| s.paddr + s.memsz)
            .max()
            .unwrap_or(IMAGE_BASE);
        seg_end.max(self.note.map_or(0, |n| n.image_end))
    }

    /// Whether the image fits in `mem_size` bytes of guest RAM (checked
    /// again when loading; a daemon checks it before spawning a VMM).
    pub fn check_fits(&self, mem_size: u64) -> Result<(), ImageError> {
        if self.end() > mem_size {
            return Err(ImageError::TooBig {
                end: self.end(),
                mem: mem_size,
            });
        }
        Ok(())
    }

    /// Resolves [`BootMode::Auto`] and checks the mode is possible.
    pub fn boot_mode(&self, asked: BootMode) -> Result<BootMode, ImageError> {
        match asked {
            BootMode::Auto if self.note.is_some() => Ok(BootMode::Direct),
            BootMode::Auto => Ok(BootMode::Pvh),
            BootMode::Direct if self.note.is_none() => Err(ImageError::BootMode(
                asked,
                "the image has no SnowFlock note; use --boot pvh",
            )),
            BootMode::Pvh if self.pvh_entry.is_none() => Err(ImageError::BootMode(
                asked,
                "the image has no PVH entry note",
            )),
            m => Ok(m),
        }
    }

    /// Copies the segments into guest RAM of `mem_size` bytes.
    pub fn load<M: vm_memory::GuestMemoryBackend>(
        &self,
        mem: &M,
        mem_size: u64,
    ) -> Result<(), ImageError> {
        if self.end() > mem_size {
            return Err(ImageError::TooBig {
                end: self.end(),
                mem: mem_size,
            });
        }
        use linux_loader::loader::{elf::Elf as ElfLoader, KernelLoader};
        ElfLoader::load(mem, None, &mut Cursor::new(&self.bytes), None)
            .map_err(ImageError::Load)?;
        Ok(())
    }
}

fn ring0(n: &GuestNote) -> sf_abi::tables::Ring0 {
    sf_abi::tables::Ring0 {
        isr_base: n.isr_base,
        isr_stride: n.isr_stride,
        text_start: n.ring0_start,
        text_end: n.ring0_end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_an_elf() {
        assert!(matches!(
            GuestImage::from_bytes(b"hello world".to_vec()),
            Err(ImageError::Malformed(_))
        ));
        assert!(matches!(
            GuestImage::from_bytes(Vec::new()),
            Err(ImageError::Malformed(_))
        ));
    }

    #[test]
    fn errors_never_echo_file_bytes() {
        let e = GuestImage::from_bytes(b"root:*:19000:0:99999:7:::".to_vec())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not an ELF file"), "{e}");
        assert!(!e.contains("0x") && !e.contains("root"), "{e}");
    }

    #[test]
    fn devices_and_huge_files_are_refused_unread() {
        let e = GuestImage::from_file(Path::new("/dev/zero")).err().unwrap();
        assert!(matches!(e, ImageError::NotRegular { .. }), "{e}");
        let t = tempfile::NamedTempFile::new().unwrap();
        t.as_file().set_len(MAX_IMAGE_SIZE + 1).unwrap();
        let e = GuestImage::from_file(t.path()).err().unwrap();
        assert!(matches!(e, ImageError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("64 MiB"), "{e}");
    }
}
