//! Shared helpers of the end-to-end tests: run the real `snowflock` binary
//! (or any program) with a hard time limit, and craft guest ELF files byte by
//! byte, with no external tools.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn snowflock_bin() -> &'static str {
    env!("CARGO_BIN_EXE_snowflock")
}

/// How a finished process ended.
#[derive(Debug)]
pub struct Run {
    /// Exit status; `None` when it was killed by a signal (e.g. our time limit).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub killed_after_limit: bool,
}

impl Run {
    /// Everything needed to understand a failed assertion.
    pub fn describe(&self) -> String {
        format!(
            "exit {:?} after {:.2?}{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            self.elapsed,
            if self.killed_after_limit {
                " (killed: time limit)"
            } else {
                ""
            },
            self.stdout,
            self.stderr
        )
    }

    pub fn assert_code(&self, want: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(want),
            "wrong exit status\n{}",
            self.describe()
        );
        self
    }

    pub fn assert_stdout_has(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\n{}",
            self.describe()
        );
        self
    }

    pub fn assert_stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n{}",
            self.describe()
        );
        self
    }

    /// The host process itself must never panic, whatever the guest or the
    /// input did. (A guest panic is reported as "guest panicked: ...", which
    /// is fine; a Rust panic of snowflock reads "thread '...' panicked at".)
    pub fn assert_no_host_panic(&self) -> &Self {
        let host_panic = self
            .stderr
            .lines()
            .any(|l| l.starts_with("thread '") && l.contains("panicked at"));
        let hint = ["RUST_BACKTRACE", "stack backtrace"]
            .iter()
            .any(|h| self.stderr.contains(h));
        assert!(
            !host_panic && !hint,
            "snowflock itself panicked\n{}",
            self.describe()
        );
        self
    }

    /// Exit 1, no panic, and stderr is exactly one `error: ...` line that
    /// contains every one of `needles`.
    pub fn assert_one_error_line(&self, needles: &[&str]) -> &Self {
        self.assert_code(1).assert_no_host_panic();
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "want exactly one line on stderr\n{}",
            self.describe()
        );
        assert!(
            lines[0].starts_with("error: "),
            "the stderr line does not start with \"error: \"\n{}",
            self.describe()
        );
        for n in needles {
            assert!(
                lines[0].contains(n),
                "the error line lacks {n:?}\n{}",
                self.describe()
            );
        }
        assert!(
            self.stdout.is_empty(),
            "nothing should reach stdout when the VM cannot start\n{}",
            self.describe()
        );
        self
    }

    /// The value of the first `rip 0x...` / `rip=0x...` in stderr.
    pub fn stderr_rip(&self) -> u64 {
        for key in ["rip 0x", "rip=0x"] {
            if let Some(i) = self.stderr.find(key) {
                let hex: String = self.stderr[i + key.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_hexdigit())
                    .collect();
                return u64::from_str_radix(&hex, 16)
                    .unwrap_or_else(|_| panic!("bad rip in\n{}", self.describe()));
            }
        }
        panic!("no rip in stderr\n{}", self.describe())
    }
}

/// Polls `probe` every 50 ms until it says done (`Ok`), for at most
/// `limit`; past that, fails with what it last said (`Err`).
pub fn wait_until<T>(limit: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let t0 = Instant::now();
    loop {
        match probe() {
            Ok(done) => return done,
            Err(why) => assert!(t0.elapsed() < limit, "after {limit:?}: {why}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `cmd` with stdin closed, capturing its output; kills it after `limit`.
pub fn run_cmd(mut cmd: Command, limit: Duration) -> Run {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    let pipe = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = pipe(Box::new(child.stdout.take().expect("piped")));
    let err = pipe(Box::new(child.stderr.take().expect("piped")));
    let mut killed_after_limit = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for the child") {
            break s;
        }
        if start.elapsed() > limit {
            killed_after_limit = true;
            let _ = child.kill();
            break child.wait().expect("waiting for the killed child");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    Run {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        elapsed,
        killed_after_limit,
    }
}

/// The longest any single `snowflock run` in these tests may take.
pub const RUN_LIMIT: Duration = Duration::from_secs(30);

/// `snowflock ARGS...`
pub fn snowflock<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(snowflock_bin());
    c.args(args)
        .env_remove("SNOWFLOCK_LOG")
        .env_remove("RUST_BACKTRACE");
    run_cmd(c, RUN_LIMIT)
}

/// A fresh temporary directory, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("snowflock-test-")
        .tempdir()
        .expect("cannot create a temporary directory")
}

/// Writes `bytes` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
    p
}

/// One shipped guest's ELF bytes.
pub fn shipped(name: &str) -> &'static [u8] {
    sf_images::find(name)
        .unwrap_or_else(|| panic!("guest {name} does not ship"))
        .elf
}

// ---------------------------------------------------------------------------
// A tiny ELF writer.

pub const PT_LOAD: u32 = 1;
pub const PT_NOTE: u32 = 4;
pub const EM_386: u16 = 3;
pub const EM_X86_64: u16 = 62;
pub const ET_EXEC: u16 = 2;
pub const ET_DYN: u16 = 3;
/// Where guest images load (the VMM refuses anything below).
pub const LOAD_ADDR: u64 = 0x10_0000;
/// `XEN_ELFNOTE_PHYS32_ENTRY`
pub const PVH_NOTE_TYPE: u32 = 18;

/// One `PT_LOAD` segment: `data` at guest-physical `paddr`, `memsz` bytes in memory.
#[derive(Clone, Debug)]
pub struct Load {
    pub paddr: u64,
    pub data: Vec<u8>,
    pub memsz: u64,
}

/// An ELF64 executable: header, program headers, an optional `PT_NOTE`
/// holding the Xen PVH entry note, then the segments' bytes.
#[derive(Clone, Debug)]
pub struct Elf64 {
    pub machine: u16,
    pub e_type: u16,
    pub entry: u64,
    pub loads: Vec<Load>,
    pub pvh_entry: Option<u32>,
}

impl Elf64 {
    /// A PVH kernel: `code` loaded at 1 MiB, where the PVH note points.
    pub fn pvh(code: &[u8]) -> Elf64 {
        Elf64 {
            machine: EM_X86_64,
            e_type: ET_EXEC,
            entry: LOAD_ADDR,
            loads: vec![Load {
                paddr: LOAD_ADDR,
                data: code.to_vec(),
                memsz: code.len() as u64,
            }],
            pvh_entry: Some(LOAD_ADDR as u32),
        }
    }

    pub fn build(&self) -> Vec<u8> {
        const EHDR: usize = 64;
        const PHDR: usize = 56;
        let phnum = self.loads.len() + self.pvh_entry.is_some() as usize;
        let mut note = Vec::new();
        if let Some(entry) = self.pvh_entry {
            note.extend_from_slice(&4u32.to_le_bytes()); // namesz
            note.extend_from_slice(&4u32.to_le_bytes()); // descsz
            note.extend_from_slice(&PVH_NOTE_TYPE.to_le_bytes());
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&entry.to_le_bytes());
        }
        let note_off = EHDR + phnum * PHDR;
        let mut data_off = (note_off + note.len()).next_multiple_of(16);

        let mut f = Vec::new();
        // e_ident: magic, ELFCLASS64, little endian, version 1, System V ABI.
        f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&self.e_type.to_le_bytes());
        f.extend_from_slice(&self.machine.to_le_bytes());
        f.extend_from_slice(&1u32.to_le_bytes()); // e_version
        f.extend_from_slice(&self.entry.to_le_bytes());
        f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
        f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        f.extend_from_slice(&(EHDR as u16).to_le_bytes());
        f.extend_from_slice(&(PHDR as u16).to_le_bytes());
        f.extend_from_slice(&(phnum as u16).to_le_bytes());
        f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
        f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
        f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
        assert_eq!(f.len(), EHDR);

        let phdr = |f: &mut Vec<u8>,
                    p_type: u32,
                    flags: u32,
                    off: u64,
                    addr: u64,
                    filesz: u64,
                    memsz: u64,
                    align: u64| {
            f.extend_from_slice(&p_type.to_le_bytes());
            f.extend_from_slice(&flags.to_le_bytes());
            for v in [off, addr, addr, filesz, memsz, align] {
                f.extend_from_slice(&v.to_le_bytes());
            }
        };
        let mut offsets = Vec::new();
        for l in &self.loads {
            offsets.push(data_off);
            phdr(
                &mut f,
                PT_LOAD,
                7,
                data_off as u64,
                l.paddr,
                l.data.len() as u64,
                l.memsz,
                16,
            );
            data_off = (data_off + l.data.len()).next_multiple_of(16);
        }
        if self.pvh_entry.is_some() {
            phdr(
                &mut f,
                PT_NOTE,
                4,
                note_off as u64,
                0,
                note.len() as u64,
                note.len() as u64,
                4,
            );
        }
        assert_eq!(f.len(), note_off);
        f.extend_from_slice(&note);
        for (l, off) in self.loads.iter().zip(offsets) {
            f.resize(off, 0);
            f.extend_from_slice(&l.data);
        }
        f
    }
}

/// A 32-bit x86 executable (ELFCLASS32, EM_386) with one `PT_LOAD` at 1 MiB.
pub fn elf32_exec() -> Vec<u8> {
    let code = [0xf4u8, 0xeb, 0xfd]; // hlt; jmp .-1
    let mut f = Vec::new();
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&ET_EXEC.to_le_bytes());
    f.extend_from_slice(&EM_386.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&(LOAD_ADDR as u32).to_le_bytes()); // e_entry
    f.extend_from_slice(&52u32.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&52u16.to_le_bytes()); // e_ehsize
    f.extend_from_slice(&32u16.to_le_bytes()); // e_phentsize
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&40u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    assert_eq!(f.len(), 52);
    for v in [
        PT_LOAD,
        84,
        LOAD_ADDR as u32,
        LOAD_ADDR as u32,
        code.len() as u32,
        code.len() as u32,
        7,
        4,
    ] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(&code);
    f
}

/// The bytes of a (well-formed, 64-bit) ELF file at guest-physical `addr`,
/// found through its `PT_LOAD` program headers.
pub fn bytes_at(elf: &[u8], addr: u64, len: usize) -> Option<&[u8]> {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (
        u64_at(32) as usize,
        u16_at(54) as usize,
        u16_at(56) as usize,
    );
    (0..phnum).map(|i| phoff + i * phentsize).find_map(|ph| {
        let (off, paddr, filesz) = (u64_at(ph + 8), u64_at(ph + 24), u64_at(ph + 32));
        (u32_at(ph) == PT_LOAD && addr >= paddr && addr + len as u64 <= paddr + filesz).then(|| {
            let start = (off + addr - paddr) as usize;
            &elf[start..start + len]
        })
    })
}

/// 32-bit code for a PVH entry point, assembled by hand.
pub mod asm32 {
    /// `mov $port, %dx`
    pub fn mov_dx(port: u16) -> Vec<u8> {
        let p = port.to_le_bytes();
        vec![0x66, 0xba, p[0], p[1]]
    }
    /// `mov $v, %al`
    pub fn mov_al(v: u8) -> Vec<u8> {
        vec![0xb0, v]
    }
    /// `out %al, %dx`
    pub const OUT_AL_DX: u8 = 0xee;
    /// `ud2`
    pub const UD2: [u8; 2] = [0x0f, 0x0b];
    /// `movd %eax, %xmm0`
    pub const MOVD_EAX_XMM0: [u8; 4] = [0x66, 0x0f, 0x6e, 0xc0];
    /// `hlt; jmp .-1`: stop for good.
    pub const HALT_FOREVER: [u8; 3] = [0xf4, 0xeb, 0xfd];

    /// Prints `s` on the legacy serial port, one `out` per byte.
    pub fn serial_print(s: &[u8]) -> Vec<u8> {
        let mut c = mov_dx(0x3f8);
        for &b in s {
            c.extend(mov_al(b));
            c.push(OUT_AL_DX);
        }
        c
    }

    /// Writes `status` to QEMU's isa-debug-exit port 0xf4 (exit status).
    pub fn debug_exit(status: u8) -> Vec<u8> {
        let mut c = mov_dx(0xf4);
        c.extend(mov_al(status));
        c.push(OUT_AL_DX);
        c
    }

    /// `lidt abs32` (ModRM 0x1d: disp32, no base).
    pub fn lidt_abs(addr: u32) -> Vec<u8> {
        let mut c = vec![0x0f, 0x01, 0x1d];
        c.extend_from_slice(&addr.to_le_bytes());
        c
    }
}

pub mod cluster;
pub mod families;
pub mod hintnest;
pub mod hosts;
pub mod workloads;
