//! The files given with `--input NAME=PATH`: checked and opened before the
//! VM is built, then read straight into guest RAM after the image, with
//! the input table the guest finds through `BootInfo::inputs_table` (the
//! layout and the table format are `sf_abi::io`'s). Clones inherit them
//! with the rest of RAM: copy-on-write locally, fetched on demand remotely.

use crate::memory::GuestRam;
use sf_abi::io::{self, InputEntry, InputsPlan, INPUTS_MAX, INPUT_ENTRY_SIZE, NAME_MAX};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// One `--input NAME=PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputSpec {
    pub name: String,
    pub path: PathBuf,
}

impl std::str::FromStr for InputSpec {
    type Err = InputError;

    /// `NAME=PATH`; the name is checked here, the file when it is opened.
    fn from_str(s: &str) -> Result<InputSpec, InputError> {
        let (name, path) = s
            .split_once('=')
            .ok_or_else(|| InputError::Syntax(s.into()))?;
        check_name(name)?;
        if path.is_empty() {
            return Err(InputError::Syntax(s.into()));
        }
        Ok(InputSpec {
            name: name.into(),
            path: path.into(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("input {0:?} is not NAME=PATH (e.g. --input db=./seqs.fasta)")]
    Syntax(String),
    #[error("input name {0:?} is not allowed: use 1 to {NAME_MAX} letters, digits, '.', '_' or '-', not starting with '.'")]
    BadName(String),
    #[error("input name {0:?} is given twice; each input needs its own name")]
    Duplicate(String),
    #[error("{0} inputs given; at most {INPUTS_MAX} are allowed (pack files together)")]
    TooMany(usize),
    #[error("input {name:?}: cannot open {path:?}")]
    Open {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("input {name:?}: {path:?} is not a regular file")]
    NotRegular { name: String, path: PathBuf },
    #[error("input {name:?}: cannot read {path:?}")]
    Read {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("input {name:?}: {path:?} changed size while it was loaded ({expected} bytes, then {found}); give a file nothing writes to")]
    Changed {
        name: String,
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("the inputs need {need} bytes of guest RAM but only {room} are left after the image with --mem {mem} (a heap and stack need the rest); give a larger --mem or smaller inputs")]
    TooBig { need: u64, room: u64, mem: u64 },
    #[error("inputs need the direct boot (--boot direct or auto with a SnowFlock guest); a PVH boot has no input table")]
    NeedsDirectBoot,
}

fn check_name(name: &str) -> Result<(), InputError> {
    if io::valid_name(name.as_bytes()) {
        Ok(())
    } else {
        Err(InputError::BadName(name.into()))
    }
}

/// Inputs opened and checked, before anything is built.
pub struct OpenedInputs {
    files: Vec<(InputSpec, File, u64)>,
}

impl OpenedInputs {
    /// Opens every file (following the operator's symlinks, never blocking
    /// on a FIFO) and checks names, count and kinds.
    pub fn open(specs: &[InputSpec]) -> Result<OpenedInputs, InputError> {
        if specs.len() > INPUTS_MAX {
            return Err(InputError::TooMany(specs.len()));
        }
        let mut files = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            check_name(&s.name)?;
            if specs[..i].iter().any(|o| o.name == s.name) {
                return Err(InputError::Duplicate(s.name.clone()));
            }
            let open_err = |source| InputError::Open {
                name: s.name.clone(),
                path: s.path.clone(),
                source,
            };
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(&s.path)
                .map_err(open_err)?;
            let meta = f.metadata().map_err(open_err)?;
            if !meta.file_type().is_file() {
                return Err(InputError::NotRegular {
                    name: s.name.clone(),
                    path: s.path.clone(),
                });
            }
            files.push((s.clone(), f, meta.len()));
        }
        Ok(OpenedInputs { files })
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Bytes of guest RAM the inputs region takes (2 MiB aligned).
    pub fn region_size(&self) -> u64 {
        io::inputs_region_size(self.files.iter().map(|f| f.2)).unwrap_or(u64::MAX)
    }

    /// Total bytes of the files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.2).sum()
    }

    /// The region and the heap/stack split, or how much RAM is missing.
    pub fn plan(
        &self,
        mem: u64,
        image_end: u64,
    ) -> Result<(InputsPlan, sf_abi::layout::UserRegions), InputError> {
        let need = self.region_size();
        io::user_regions_with_inputs(mem, image_end, need).ok_or(InputError::TooBig {
            need,
            room: io::inputs_room(mem, image_end),
            mem,
        })
    }

    /// Reads every file into `plan`'s region and writes the table at its
    /// start; returns the table's `(gpa, byte length)`, `(0, 0)` without
    /// inputs.
    pub fn load(self, ram: &GuestRam, plan: &InputsPlan) -> Result<(u64, u64), InputError> {
        if self.files.is_empty() {
            return Ok((0, 0));
        }
        let n = self.files.len() as u64;
        let table_len = n * INPUT_ENTRY_SIZE as u64;
        let mut at = plan.start + table_len.next_multiple_of(sf_abi::layout::PAGE);
        for (i, (spec, mut file, len)) in self.files.into_iter().enumerate() {
            let end = at.checked_add(len).filter(|&e| e <= plan.end);
            let Some(end) = end else {
                unreachable!("the plan was sized from these lengths")
            };
            // SAFETY: `[at, end)` lies inside guest RAM (the plan fits in
            // it) in a fresh mapping no vCPU runs on yet, and this is the
            // only reference to those bytes while it lives.
            let dst = unsafe {
                std::slice::from_raw_parts_mut((ram.host_base() + at) as *mut u8, len as usize)
            };
            let read_err = |source| InputError::Read {
                name: spec.name.clone(),
                path: spec.path.clone(),
                source,
            };
            file.read_exact(dst).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    let found = file.metadata().map_or(0, |m| m.len());
                    InputError::Changed {
                        name: spec.name.clone(),
                        path: spec.path.clone(),
                        expected: len,
                        found,
                    }
                } else {
                    read_err(e)
                }
            })?;
            let mut name = [0u8; NAME_MAX];
            name[..spec.name.len()].copy_from_slice(spec.name.as_bytes());
            let entry = InputEntry {
                gpa: at,
                len,
                name,
                name_len: spec.name.len(),
            };
            ram.write(
                plan.start + i as u64 * INPUT_ENTRY_SIZE as u64,
                &entry.to_bytes(),
            );
            at = end.next_multiple_of(sf_abi::layout::PAGE);
        }
        Ok((plan.start, table_len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Result<InputSpec, InputError> {
        s.parse()
    }

    #[test]
    fn specs_are_parsed_and_names_checked() {
        assert_eq!(spec("db=/tmp/x").unwrap().name, "db");
        assert_eq!(spec("db=a=b").unwrap().path, PathBuf::from("a=b"));
        for bad in ["db", "=x", "db=", "../x=y", "a/b=c", ".h=c"] {
            assert!(spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_sets_get_named_errors() {
        let dir = std::env::temp_dir().join(format!("sf-inputs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f");
        std::fs::write(&f, b"abc").unwrap();
        let s = |n: &str, p: &std::path::Path| InputSpec {
            name: n.into(),
            path: p.into(),
        };
        let dup = OpenedInputs::open(&[s("a", &f), s("a", &f)]);
        assert!(matches!(dup, Err(InputError::Duplicate(_))));
        let missing = OpenedInputs::open(&[s("a", &dir.join("nope"))]);
        assert!(matches!(missing, Err(InputError::Open { .. })));
        let d = OpenedInputs::open(&[s("a", &dir)]);
        assert!(matches!(d, Err(InputError::NotRegular { .. })));
        let many: Vec<_> = (0..=INPUTS_MAX).map(|i| s(&format!("n{i}"), &f)).collect();
        assert!(matches!(
            OpenedInputs::open(&many),
            Err(InputError::TooMany(_))
        ));
        let ok = OpenedInputs::open(&[s("a", &f)]).unwrap();
        assert!(matches!(
            ok.plan(4 << 20, 0x20_0000),
            Err(InputError::TooBig { .. })
        ));
        let ram = GuestRam::new(16 << 20).unwrap();
        let (plan, _) = ok.plan(16 << 20, 0x10_2000).unwrap();
        assert_eq!(
            ok.load(&ram, &plan).unwrap(),
            (2 << 20, INPUT_ENTRY_SIZE as u64)
        );
        assert_eq!(ram.read_checked((2 << 20) + 4096, 3, 3).unwrap(), b"abc");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
