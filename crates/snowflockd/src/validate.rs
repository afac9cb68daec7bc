//! Checks of every API request field before a VMM is spawned, so a bad
//! request gets a 400 naming the field instead of a VM that dies with a
//! usage error, and the resolution of a request's `guest`: a shipped guest
//! or a file inside the operator's image directory, never any other host
//! path.

use crate::api_error::{bad, ApiError};
use sf_api::CreateVm;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Longest run a request may ask for: 30 days.
pub const MAX_TIMEOUT_MS: u64 = 30 * 24 * 3600 * 1000;
/// Most clones a request may allow a VM (the VMM's own upper clamp).
pub const MAX_CLONES: u32 = 256;
/// Largest readahead batch a remote clone may fetch (the page protocol's).
pub const MAX_PREFETCH_WINDOW: u32 = 512;
/// The guest command line: all arguments joined by spaces, plus its NUL,
/// fit the page the VMM hands the guest.
pub const MAX_ARGS_BYTES: usize = sf_abi::layout::CMDLINE_MAX as usize - 1;
/// Guest RAM when a request names none (as `snowflock run`).
pub const DEFAULT_MEM: u64 = 256 << 20;

/// A request whose fields all passed: what the VMM is told.
#[derive(Debug)]
pub struct CheckedVm {
    /// What `snowflock run` gets as GUEST: a shipped name or an absolute path.
    pub guest: String,
    pub mem: u64,
    /// `--input NAME=PATH` arguments, PATH resolved inside the image dir.
    pub inputs: Vec<String>,
    pub output_cap: Option<u64>,
}

/// Checks the fields of `POST /v1/vms` and resolves its guest and inputs.
pub fn create_vm(
    req: &CreateVm,
    image_dir: Option<&Path>,
    output_dir: Option<&Path>,
) -> Result<CheckedVm, ApiError> {
    if req.output && output_dir.is_none() {
        return Err(bad(
            "`output`: this daemon keeps no output files (it has no --output-dir)",
        ));
    }
    let mem = match &req.mem {
        None => DEFAULT_MEM,
        Some(m) => mem(m)?,
    };
    if let Some(t) = req.timeout_ms {
        timeout_ms(t)?;
    }
    if let Some(n) = req.max_clones {
        max_clones(n)?;
    }
    if let Some(w) = req.prefetch_window {
        prefetch_window(w)?;
    }
    args(&req.args)?;
    let guest = guest(&req.guest, image_dir, mem)?;
    let inputs = inputs(&req.inputs, image_dir, mem)?;
    let output_cap = match &req.output_cap {
        None => None,
        Some(c) => {
            Some(sf_api::units::parse_size(c).map_err(|e| bad(format!("`output_cap`: {e}")))?)
        }
    };
    Ok(CheckedVm {
        guest,
        mem,
        inputs,
        output_cap,
    })
}

/// `inputs`: valid names, each a regular file inside the image directory
/// (the same single refusal as `guest` for anything else), their total
/// within the guest's RAM.
pub fn inputs(
    inputs: &std::collections::BTreeMap<String, String>,
    image_dir: Option<&Path>,
    mem: u64,
) -> Result<Vec<String>, ApiError> {
    if inputs.is_empty() {
        return Ok(Vec::new());
    }
    if inputs.len() > sf_abi::io::INPUTS_MAX {
        return Err(bad(format!(
            "`inputs` holds {} files; at most {} are allowed",
            inputs.len(),
            sf_abi::io::INPUTS_MAX
        )));
    }
    let Some(dir) = image_dir else {
        return Err(bad(
            "`inputs`: this daemon takes no input files (it has no --image-dir)",
        ));
    };
    let mut out = Vec::new();
    let mut total = 0u64;
    for (name, file) in inputs {
        if !sf_abi::io::valid_name(name.as_bytes()) {
            return Err(bad(format!(
                "`inputs`: name {name:?} is not allowed: use 1 to {} letters, digits, '.', '_' or '-', not starting with '.'",
                sf_abi::io::NAME_MAX
            )));
        }
        let refused = || {
            bad(format!(
                "`inputs`: no input file {file:?} in the image directory; over the API an input is a regular file inside the daemon's --image-dir"
            ))
        };
        if file.contains('/') || file.contains('\0') || file == "." || file == ".." {
            return Err(refused());
        }
        let path = resolve_inside(dir, file).ok_or_else(refused)?;
        let meta = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .and_then(|f| f.metadata())
            .map_err(|_| refused())?;
        if !meta.file_type().is_file() {
            return Err(refused());
        }
        total = total.saturating_add(meta.len());
        if total > mem {
            return Err(bad(format!(
                "`inputs` total {total} bytes or more, over the guest's {mem} bytes of RAM; give a larger `mem`"
            )));
        }
        out.push(format!("{name}={}", path.display()));
    }
    Ok(out)
}

/// `mem`: the grammar of `snowflock run --mem`, a multiple of 2 MiB from
/// 4 MiB to 64 GiB.
pub fn mem(m: &str) -> Result<u64, ApiError> {
    let bytes = sf_api::units::parse_size(m).map_err(|e| bad(format!("`mem`: {e}")))?;
    mem_bytes(bytes).map_err(|()| {
        bad(format!(
            "`mem` must be a multiple of 2M from 4M to 64G, not {m:?}"
        ))
    })?;
    Ok(bytes)
}

pub fn mem_bytes(bytes: u64) -> Result<(), ()> {
    use sf_abi::layout::{MAX_MEM, MIN_MEM};
    if (MIN_MEM..=MAX_MEM).contains(&bytes) && bytes.is_multiple_of(2 << 20) {
        Ok(())
    } else {
        Err(())
    }
}

pub fn timeout_ms(t: u64) -> Result<(), ApiError> {
    if t > MAX_TIMEOUT_MS {
        return Err(bad(format!(
            "`timeout_ms` must be 0 (no limit) to {MAX_TIMEOUT_MS} (30 days), not {t}"
        )));
    }
    Ok(())
}

pub fn max_clones(n: u32) -> Result<(), ApiError> {
    if n > MAX_CLONES {
        return Err(bad(format!(
            "`max_clones` must be at most {MAX_CLONES}, not {n}"
        )));
    }
    Ok(())
}

pub fn prefetch_window(w: u32) -> Result<(), ApiError> {
    if !(1..=MAX_PREFETCH_WINDOW).contains(&w) {
        return Err(bad(format!(
            "`prefetch_window` must be 1 (no prefetch) to {MAX_PREFETCH_WINDOW} pages, not {w}"
        )));
    }
    Ok(())
}

/// A clone request's free-page hints: only their number is bounded here
/// (the clone host clamps and merges the ranges themselves).
pub fn free_pages(ranges: &[[u64; 2]]) -> Result<(), ApiError> {
    if ranges.len() > sf_api::MAX_FREE_RANGES {
        return Err(bad(format!(
            "`free_pages` may hold at most {} ranges, not {}",
            sf_api::MAX_FREE_RANGES,
            ranges.len()
        )));
    }
    Ok(())
}

/// Longest clone path a clone request may carry ("1.2.3": one number per
/// level of nesting; a family of at most 256 VMs needs far less).
pub const MAX_PARENT_PATH: usize = 1024;

/// A clone request's `parent_path`: dot-separated clone numbers (or empty,
/// for a root VM). It prefixes every console line of the clone, so no
/// other byte (an escape sequence) may come in this way.
pub fn parent_path(p: &str) -> Result<(), ApiError> {
    let well_formed = p.is_empty()
        || p.split('.')
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if p.len() > MAX_PARENT_PATH || !well_formed {
        return Err(bad(format!(
            "`parent_path` must be clone numbers joined by dots (e.g. \"1.3\"), at most {MAX_PARENT_PATH} bytes"
        )));
    }
    Ok(())
}

/// The guest's command line: bounded, and no NUL (which no process
/// argument can carry).
pub fn args(args: &[String]) -> Result<(), ApiError> {
    let total = args
        .iter()
        .map(|a| a.len() + 1)
        .sum::<usize>()
        .saturating_sub(1);
    if total > MAX_ARGS_BYTES {
        return Err(bad(format!(
            "`args` hold {total} bytes joined by spaces, more than the {MAX_ARGS_BYTES} a guest command line holds"
        )));
    }
    if args.iter().any(|a| a.contains('\0')) {
        return Err(bad("`args` must not contain NUL characters"));
    }
    Ok(())
}

/// Resolves `guest` to a shipped guest's name or the canonical path of a
/// checked image inside `image_dir`. Every way a name can fail to be such
/// a file (missing, a symlink out of the directory, a device, a directory)
/// gets the same answer, so the API cannot probe the host's files.
pub fn guest(name: &str, image_dir: Option<&Path>, mem: u64) -> Result<String, ApiError> {
    if name.trim().is_empty() {
        return Err(bad(
            "`guest` must name a shipped guest or a file in the daemon's image directory",
        ));
    }
    if name.starts_with('-') {
        return Err(bad(format!(
            "`guest` {name:?} looks like an option; name a shipped guest (see `snowflock guests`) or a file in the image directory"
        )));
    }
    if sf_images::find(name).is_some() {
        return Ok(name.to_string());
    }
    let Some(dir) = image_dir else {
        return Err(bad(format!(
            "`guest`: no guest named {name:?} ships with SnowFlock, and this daemon takes no guest files (it has no --image-dir)"
        )));
    };
    let refused = || {
        bad(format!(
            "`guest`: no guest image {name:?} in the image directory; over the API a guest is a shipped name (see `snowflock guests`) or a regular file inside the daemon's --image-dir"
        ))
    };
    if name.contains('/') || name.contains('\0') || name == "." || name == ".." {
        return Err(refused());
    }
    let path = resolve_inside(dir, name).ok_or_else(refused)?;
    let image = load(&path).map_err(|e| match e {
        LoadError::Refused => refused(),
        LoadError::Image(e) => bad(format!("`guest` {name:?}: {e}")),
    })?;
    image
        .check_fits(mem)
        .map_err(|e| bad(format!("`guest` {name:?}: {e}")))?;
    Ok(path.display().to_string())
}

/// `dir/name` with every symlink resolved, if that stays inside `dir`.
fn resolve_inside(dir: &Path, name: &str) -> Option<PathBuf> {
    let dir = dir.canonicalize().ok()?;
    let path = dir.join(name).canonicalize().ok()?;
    (path.starts_with(&dir) && path != dir).then_some(path)
}

enum LoadError {
    /// Not a regular file (or unreadable): the generic refusal.
    Refused,
    /// A file, but not a guest the VMM can run.
    Image(sf_vmm::ImageError),
}

/// Reads and checks a resolved image: a regular file (opened without
/// following a symlink, without blocking on a FIFO) of bounded size.
fn load(path: &Path) -> Result<sf_vmm::GuestImage, LoadError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|_| LoadError::Refused)?;
    let meta = file.metadata().map_err(|_| LoadError::Refused)?;
    if !meta.file_type().is_file() {
        return Err(LoadError::Refused);
    }
    let too_large = |size| {
        LoadError::Image(sf_vmm::ImageError::TooLarge {
            path: path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into(),
            size,
        })
    };
    if meta.len() > sf_vmm::MAX_IMAGE_SIZE {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::new();
    file.take(sf_vmm::MAX_IMAGE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|_| LoadError::Refused)?;
    if bytes.len() as u64 > sf_vmm::MAX_IMAGE_SIZE {
        return Err(too_large(bytes.len() as u64));
    }
    sf_vmm::GuestImage::from_bytes(bytes).map_err(LoadError::Image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_named() {
        assert!(mem("lots").unwrap_err().1.contains("`mem`"));
        assert!(mem("3M").unwrap_err().1.contains("`mem`"));
        assert!(mem("128G").unwrap_err().1.contains("`mem`"));
        assert_eq!(mem("64M").unwrap(), 64 << 20);
        assert!(timeout_ms(MAX_TIMEOUT_MS + 1).is_err());
        assert!(timeout_ms(0).is_ok());
        assert!(max_clones(257).is_err());
        assert!(prefetch_window(0).is_err());
        assert!(free_pages(&vec![[0, 1]; sf_api::MAX_FREE_RANGES]).is_ok());
        assert!(free_pages(&vec![[0, 1]; sf_api::MAX_FREE_RANGES + 1])
            .unwrap_err()
            .1
            .contains("`free_pages`"));
        assert!(args(&["a".repeat(MAX_ARGS_BYTES)]).is_ok());
        assert!(args(&["a".repeat(MAX_ARGS_BYTES), String::new()]).is_err());
        assert!(args(&["a\0b".into()]).is_err());
        assert!(parent_path("").is_ok() && parent_path("1.12.3").is_ok());
        for p in ["\x1b[2J", "1..2", ".1", "1.", &"1.".repeat(600)] {
            assert!(
                parent_path(p).unwrap_err().1.contains("`parent_path`"),
                "{p:?}"
            );
        }
    }

    #[test]
    fn inputs_and_outputs_are_checked_by_field() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("db"), vec![1u8; 5 << 20]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("out")).unwrap();
        let dir = Some(t.path());
        let req = |inputs: &[(&str, &str)], output: bool| CreateVm {
            guest: "hello".into(),
            inputs: inputs
                .iter()
                .map(|(n, f)| (n.to_string(), f.to_string()))
                .collect(),
            output,
            ..Default::default()
        };
        let err = |r: &CreateVm, out: Option<&Path>| create_vm(r, dir, out).unwrap_err().1;
        let ok = create_vm(&req(&[("db", "db")], false), dir, None).unwrap();
        assert_eq!(ok.inputs.len(), 1);
        assert!(ok.inputs[0].starts_with("db=/"), "{:?}", ok.inputs);
        assert!(err(&req(&[("db", "out")], false), None).contains("no input file"));
        assert_eq!(
            err(&req(&[("db", "out")], false), None),
            err(&req(&[("db", "missing")], false), None).replace("missing", "out")
        );
        assert!(err(&req(&[("db", "../db")], false), None).contains("no input file"));
        assert!(err(&req(&[("../x", "db")], false), None).contains("not allowed"));
        let small = CreateVm {
            mem: Some("4M".into()),
            ..req(&[("db", "db")], false)
        };
        assert!(err(&small, None).contains("over the guest's"));
        assert!(err(&req(&[], true), None).contains("--output-dir"));
        assert!(create_vm(&req(&[], true), dir, dir).is_ok());
        assert!(create_vm(&req(&[("db", "db")], false), None, None)
            .unwrap_err()
            .1
            .contains("--image-dir"));
    }

    #[test]
    fn guests_outside_the_image_dir_get_one_answer() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("x.elf"), b"not an elf").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("out")).unwrap();
        let dir = Some(t.path());
        let e = |n| guest(n, dir, DEFAULT_MEM).unwrap_err().1.replace(n, "N");
        assert_eq!(e("out"), e("missing"));
        assert_eq!(e("../x.elf"), e("missing"));
        assert_eq!(e("/etc/passwd"), e("missing"));
        assert!(e("x.elf").contains("not an ELF file"));
        assert!(guest("--timings", dir, DEFAULT_MEM)
            .unwrap_err()
            .1
            .contains("option"));
        assert_eq!(guest("hello", None, DEFAULT_MEM).unwrap(), "hello");
        assert!(guest("/etc/passwd", None, DEFAULT_MEM)
            .unwrap_err()
            .1
            .contains("--image-dir"));
    }
}
