//! Ring-0 guest code must not use SSE/AVX registers.
//!
//! On the project's hosts ring 0 is emulated instruction by instruction and
//! the emulator has no SSE: an `xmm` instruction in ring 0 ends the VM with a
//! KVM emulation failure (and on real hardware the PVH path runs before
//! CR4.OSFXSR is set, where SSE raises #UD). The compiler may use SSE for
//! any copy or zeroing, so this test disassembles every shipped guest and
//! checks the ring-0 code: the PVH entry `_sf_pvh_start` (32-bit code), the
//! exception stubs `_sf_isr_*`, `sf_pvh_setup`, and every function any of
//! them reaches by `call`, `jmp`, `ljmp` or falling through, transitively.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Register names that mean SSE/AVX state is used.
const VECTOR_REGS: [&str; 3] = ["%xmm", "%ymm", "%zmm"];
/// Instructions without a vector register operand that the ring-0 emulator
/// lacks or that touch SSE/AVX state (see shared ENVIRONMENT notes:
/// `cmpxchg16b` and `xrstor` fail at CPL0).
const BAD_MNEMONICS: [&str; 12] = [
    "cmpxchg16b",
    "xrstor",
    "xrstors",
    "xsave",
    "xsaveopt",
    "xsavec",
    "xsaves",
    "fxsave",
    "fxrstor",
    "ldmxcsr",
    "stmxcsr",
    "vzeroupper",
];

#[derive(Debug)]
struct Func {
    start: u64,
    insns: Vec<(u64, String)>,
}

/// `objdump -d` of `elf` (with `extra` options) as functions by symbol name.
fn disassemble(elf: &Path, extra: &[&str]) -> BTreeMap<String, Func> {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn", "-w"])
        .args(extra)
        .arg(elf)
        .output()
        .unwrap_or_else(|e| panic!("cannot run objdump (binutils is needed for this test): {e}"));
    assert!(
        out.status.success(),
        "objdump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("objdump prints UTF-8");
    let mut funcs = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        // "0000000000100000 <_sf_pvh_start>:"
        if let Some((addr, rest)) = line.split_once(" <") {
            if let (Ok(start), Some(name)) =
                (u64::from_str_radix(addr, 16), rest.strip_suffix(">:"))
            {
                funcs.insert(
                    name.to_string(),
                    Func {
                        start,
                        insns: Vec::new(),
                    },
                );
                current = Some(name.to_string());
                continue;
            }
        }
        // "  100000:\tcli"
        let Some((addr, insn)) = line.split_once(":\t") else {
            continue;
        };
        let (Ok(addr), Some(name)) = (u64::from_str_radix(addr.trim(), 16), current.as_ref())
        else {
            continue;
        };
        funcs
            .get_mut(name)
            .expect("current function")
            .insns
            .push((addr, insn.trim().to_string()));
    }
    funcs
}

/// The mnemonic, past prefixes such as `notrack`, `bnd`, `cs`, `lock`.
fn mnemonic(insn: &str) -> &str {
    let prefixes = [
        "notrack", "bnd", "cs", "ds", "data16", "lock", "rep", "repz", "repnz", "addr32",
    ];
    insn.split_whitespace()
        .find(|w| !prefixes.contains(w))
        .unwrap_or("")
}

fn is_padding(insn: &str) -> bool {
    let m = mnemonic(insn);
    m.starts_with("nop") || m == "int3" || insn == "xchg   %ax,%ax"
}

/// The function whose code holds `addr`.
fn function_at(funcs: &BTreeMap<String, Func>, addr: u64) -> Option<&str> {
    funcs
        .iter()
        .find(|(_, f)| {
            f.insns.first().is_some_and(|i| i.0 <= addr)
                && f.insns.last().is_some_and(|i| addr <= i.0)
        })
        .map(|(n, _)| n.as_str())
}

/// Where control can go from `name` into another function.
fn successors(funcs: &BTreeMap<String, Func>, name: &str) -> Result<Vec<String>, String> {
    let f = &funcs[name];
    let mut next = Vec::new();
    for (addr, insn) in &f.insns {
        let m = mnemonic(insn);
        let is_call = m.starts_with("call");
        let is_jump = m.starts_with('j') || m == "ljmp";
        if !is_call && !is_jump {
            continue;
        }
        if let Some(sym) = insn
            .split_once('<')
            .and_then(|(_, s)| s.split_once('>'))
            .map(|(s, _)| s)
        {
            // "call 1008da <foo>", "jmp 1002c6 <_sf_isr_common>", "jne 100e32 <self+0x8e>"
            let target = sym.split('+').next().unwrap_or(sym);
            if target != name {
                next.push(target.to_string());
            }
        } else if m == "ljmp" {
            // "ljmp $0x8,$0x100075": a far jump to an absolute address.
            let abs = insn
                .rsplit("$0x")
                .next()
                .and_then(|h| u64::from_str_radix(h, 16).ok());
            match abs.and_then(|a| function_at(funcs, a)) {
                Some(t) => next.push(t.to_string()),
                None => return Err(format!("{addr:#x} in {name}: cannot follow `{insn}`")),
            }
        } else if is_call && insn.contains('*') {
            return Err(format!(
                "{addr:#x} in {name}: indirect call `{insn}` cannot be followed"
            ));
        }
    }
    // Falling off the end (past alignment padding) runs the next function.
    let last = f
        .insns
        .iter()
        .rev()
        .find(|(_, i)| !is_padding(i))
        .map(|(_, i)| mnemonic(i));
    let ends = matches!(
        last,
        Some("jmp" | "ret" | "iretq" | "iret" | "iretl" | "ljmp" | "ud2" | "sysret" | "sysretq")
    );
    if !ends {
        if let Some((n, _)) = funcs
            .iter()
            .filter(|(_, g)| g.start > f.start)
            .min_by_key(|(_, g)| g.start)
        {
            next.push(n.clone());
        }
    }
    Ok(next)
}

/// Checks one image; returns its offending instructions, one line each.
fn check_image(name: &str, elf: &[u8]) -> (Vec<String>, BTreeSet<String>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join(format!("{name}.elf"));
    std::fs::write(&path, elf).expect("write the image");
    let mut funcs = disassemble(&path, &[]);

    // The PVH entry runs in 32-bit protected mode: decode it as such.
    let pvh = funcs
        .get("_sf_pvh_start")
        .unwrap_or_else(|| panic!("{name}: no _sf_pvh_start symbol"));
    let pvh_start = pvh.start;
    let pvh_end = funcs
        .values()
        .map(|f| f.start)
        .filter(|&s| s > pvh_start)
        .min()
        .expect("a symbol after _sf_pvh_start");
    let range = [
        format!("--start-address={pvh_start:#x}"),
        format!("--stop-address={pvh_end:#x}"),
        "-Mi386".to_string(),
    ];
    let mut as32 = disassemble(&path, &range.iter().map(String::as_str).collect::<Vec<_>>());
    let pvh32 = as32
        .remove("_sf_pvh_start")
        .expect("_sf_pvh_start in the 32-bit listing");
    assert!(
        pvh32.insns.len() > 10,
        "{name}: the 32-bit listing of _sf_pvh_start is too short: {pvh32:?}"
    );
    funcs.insert("_sf_pvh_start".to_string(), pvh32);

    let mut roots: Vec<String> = vec!["_sf_pvh_start".into(), "sf_pvh_setup".into()];
    roots.extend(funcs.keys().filter(|n| n.starts_with("_sf_isr_")).cloned());
    for r in &roots {
        assert!(
            funcs.contains_key(r),
            "{name}: ring-0 symbol {r} is missing"
        );
    }
    assert!(
        roots.iter().filter(|r| r.starts_with("_sf_isr_")).count() >= 32,
        "{name}: fewer than 32 exception stubs"
    );

    let mut bad = Vec::new();
    let mut seen = BTreeSet::new();
    let mut todo = roots;
    while let Some(f) = todo.pop() {
        if !seen.insert(f.clone()) {
            continue;
        }
        let Some(func) = funcs.get(&f) else {
            bad.push(format!(
                "{name}: ring-0 code reaches {f}, which is not in the disassembly"
            ));
            continue;
        };
        match successors(&funcs, &f) {
            Ok(next) => todo.extend(next),
            Err(e) => bad.push(format!("{name}: {e}")),
        }
        for (addr, insn) in &func.insns {
            let m = mnemonic(insn);
            if VECTOR_REGS.iter().any(|r| insn.contains(r)) || BAD_MNEMONICS.contains(&m) {
                bad.push(format!("{name}: {f} at {addr:#x}: {insn}"));
            }
        }
    }
    (bad, seen)
}

#[test]
fn ring_0_code_of_every_shipped_guest_is_free_of_sse() {
    let mut bad = Vec::new();
    for image in sf_images::IMAGES {
        let (offending, reached) = check_image(image.name, image.elf);
        // The walk must have found the long-mode half of the PVH entry (via
        // its far jump) and the table builder sf_pvh_setup calls.
        assert!(
            reached.contains("_sf_pvh_long"),
            "{}: walk missed _sf_pvh_long; reached {reached:?}",
            image.name
        );
        assert!(
            reached.iter().any(|f| f.contains("sf_abi6tables5build")),
            "{}: walk missed sf_abi::tables::build; reached {reached:?}",
            image.name
        );
        assert!(
            !reached.contains("_sf_user_entry") && !reached.contains("sf_rt_start"),
            "{}: walk leaked into ring 3: {reached:?}",
            image.name
        );
        bad.extend(offending);
    }
    assert!(
        bad.is_empty(),
        "ring-0 guest code uses SSE/AVX state or instructions the ring-0 emulator lacks ({} instructions):\n  {}",
        bad.len(),
        bad.join("\n  ")
    );
}

#[test]
fn the_check_sees_sse_where_there_is_some() {
    // Ring-3 code of the pi guest computes with doubles: the same scan over
    // all of its functions must find xmm registers, or the scan is blind.
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("pi.elf");
    std::fs::write(&path, sf_images::find("pi").expect("pi ships").elf).expect("write the image");
    let funcs = disassemble(&path, &[]);
    let hits = funcs
        .values()
        .flat_map(|f| &f.insns)
        .filter(|(_, i)| i.contains("%xmm"))
        .count();
    assert!(
        hits > 0,
        "no xmm use found anywhere in pi: the disassembly parse is broken"
    );
}
