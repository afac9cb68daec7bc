//! `snowflock run` given input it cannot run: every case exits 1 with exactly
//! one `error:` line naming the problem, never a panic, and nothing reaches
//! stdout. The malformed ELF files are crafted by the tests themselves.

mod common;

use common::*;
use std::path::Path;

fn run_file(path: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["run".to_string(), path.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    snowflock(args)
}

/// A PVH guest that would print OK and exit 0, if it were loaded.
fn ok_code() -> Vec<u8> {
    let mut c = asm32::serial_print(b"OK\n");
    c.extend(asm32::debug_exit(0));
    c.extend(asm32::HALT_FOREVER);
    c
}

#[test]
fn the_builder_makes_a_bootable_elf() {
    // Guards the cases below: they fail for their one defect, not for a
    // broken builder.
    let dir = tempdir();
    let p = write_file(dir.path(), "ok.elf", &Elf64::pvh(&ok_code()).build());
    let r = run_file(&p, &["--mem", "64M"]);
    r.assert_code(0);
    assert_eq!(r.stdout, "OK\n", "{}", r.describe());
}

#[test]
fn missing_file() {
    let dir = tempdir();
    let p = dir.path().join("nope.elf");
    let r = run_file(&p, &[]);
    r.assert_one_error_line(&[
        &format!("cannot read guest image {}", p.display()),
        "No such file or directory",
    ]);
    // The OS error is said once, not repeated by the error chain.
    assert_eq!(
        r.stderr.matches("No such file or directory").count(),
        1,
        "{}",
        r.describe()
    );
    assert_eq!(
        r.stderr.trim_end(),
        format!(
            "error: cannot read guest image {}: No such file or directory (os error 2)",
            p.display()
        )
    );
}

#[test]
fn a_directory_instead_of_a_file() {
    let dir = tempdir();
    let r = run_file(dir.path(), &[]);
    r.assert_one_error_line(&["cannot read guest image", "Is a directory"]);
    assert_eq!(
        r.stderr.matches("Is a directory").count(),
        1,
        "{}",
        r.describe()
    );
}

#[test]
fn unknown_guest_name() {
    let r = snowflock(["run", "no-such-guest"]);
    r.assert_one_error_line(&[
        "no guest named \"no-such-guest\" ships with SnowFlock",
        "snowflock guests",
    ]);
}

#[test]
fn a_text_file() {
    let dir = tempdir();
    let text = "This is a text file, not a guest. It is long enough to fill an ELF header and then some.\n".repeat(4);
    let p = write_file(dir.path(), "notes.txt", text.as_bytes());
    run_file(&p, &[]).assert_one_error_line(&["guest image is not a valid ELF file"]);
}

#[test]
fn an_empty_file() {
    let dir = tempdir();
    let p = write_file(dir.path(), "empty.elf", b"");
    run_file(&p, &[]).assert_one_error_line(&["guest image is not a valid ELF file"]);
}

#[test]
fn a_truncated_elf() {
    let dir = tempdir();
    let p = write_file(dir.path(), "hello-100.elf", &shipped("hello")[..100]);
    run_file(&p, &[]).assert_one_error_line(&["guest image is not a valid ELF file", "too short"]);
}

#[test]
fn an_elf_cut_inside_its_segment() {
    let dir = tempdir();
    let elf = Elf64::pvh(&ok_code()).build();
    let p = write_file(dir.path(), "cut.elf", &elf[..elf.len() - 3]);
    let want = format!("claims {} file bytes from offset", ok_code().len());
    run_file(&p, &[]).assert_one_error_line(&[
        "guest image segment at 0x100000",
        &want,
        &format!("the file is {} bytes", elf.len() - 3),
    ]);
}

#[test]
fn a_32_bit_elf() {
    let dir = tempdir();
    let p = write_file(dir.path(), "i386.elf", &elf32_exec());
    run_file(&p, &[]).assert_one_error_line(&[
        "guest image is a 32-bit ELF; only 64-bit x86 (x86_64) executables can run",
    ]);
}

#[test]
fn a_64_bit_elf_for_another_machine() {
    let dir = tempdir();
    let mut e = Elf64::pvh(&ok_code());
    e.machine = EM_386;
    let p = write_file(dir.path(), "m.elf", &e.build());
    run_file(&p, &[]).assert_one_error_line(&["guest image is a non-x86_64 ELF"]);
}

#[test]
fn a_shared_object_instead_of_an_executable() {
    let dir = tempdir();
    let mut e = Elf64::pvh(&ok_code());
    e.e_type = ET_DYN;
    let p = write_file(dir.path(), "dyn.elf", &e.build());
    run_file(&p, &[]).assert_one_error_line(&["guest image is not an executable ELF (e_type 3)"]);
}

#[test]
fn a_segment_below_1_mib() {
    let dir = tempdir();
    let mut e = Elf64::pvh(&ok_code());
    e.loads[0].paddr = 0x8000;
    let p = write_file(dir.path(), "low.elf", &e.build());
    run_file(&p, &[]).assert_one_error_line(&["guest image segment at 0x8000 lies below 0x100000"]);
}

#[test]
fn a_segment_too_big_for_mem() {
    let dir = tempdir();
    let mut e = Elf64::pvh(&ok_code());
    e.loads[0].memsz = 100 << 20;
    let p = write_file(dir.path(), "big.elf", &e.build());
    run_file(&p, &["--mem", "64M"]).assert_one_error_line(&[
        "guest image needs RAM up to 0x6500000 (101 MiB) but the VM has 64 MiB; raise --mem",
    ]);
    // The same image fits when asked to.
    let r = run_file(&p, &["--mem", "128M"]);
    r.assert_code(0);
    assert_eq!(r.stdout, "OK\n", "{}", r.describe());
}

#[test]
fn a_segment_that_wraps_the_address_space() {
    let dir = tempdir();
    let mut e = Elf64::pvh(&ok_code());
    e.loads[0].memsz = u64::MAX - 0x1000;
    let p = write_file(dir.path(), "wrap.elf", &e.build());
    run_file(&p, &[])
        .assert_one_error_line(&["guest image segment at 0x100000", "wraps the address space"]);
}

#[test]
fn a_segment_with_more_file_bytes_than_memory() {
    let dir = tempdir();
    let mut e = Elf64::pvh(&ok_code());
    e.loads[0].memsz = 1;
    let p = write_file(dir.path(), "fm.elf", &e.build());
    run_file(&p, &[]).assert_one_error_line(&[&format!(
        "guest image segment has {} file bytes but only 1 bytes in memory",
        ok_code().len()
    )]);
}

#[test]
fn no_loadable_segment() {
    let dir = tempdir();
    let mut e = Elf64::pvh(&ok_code());
    e.loads.clear();
    let p = write_file(dir.path(), "noload.elf", &e.build());
    run_file(&p, &[]).assert_one_error_line(&["guest image has no loadable segment"]);
}

#[test]
fn no_entry_note() {
    let dir = tempdir();
    let mut e = Elf64::pvh(&ok_code());
    e.pvh_entry = None;
    let p = write_file(dir.path(), "noentry.elf", &e.build());
    run_file(&p, &[])
        .assert_one_error_line(&["guest image has neither a SnowFlock note nor a PVH entry note"]);
}

#[test]
fn a_pvh_entry_outside_the_image() {
    // The entry note points at RAM the image does not load: refuse it like
    // the SnowFlock note's entries are refused, before the vCPU runs.
    let dir = tempdir();
    let mut e = Elf64::pvh(&ok_code());
    e.pvh_entry = Some(0x3fff_0000);
    let p = write_file(dir.path(), "far.elf", &e.build());
    run_file(&p, &["--mem", "64M"]).assert_one_error_line(&[
        "entry",
        "0x3fff0000",
        "outside the loaded image",
    ]);
}

#[test]
fn direct_boot_of_an_image_without_the_snowflock_note() {
    let dir = tempdir();
    let p = write_file(dir.path(), "pvh.elf", &Elf64::pvh(&ok_code()).build());
    run_file(&p, &["--boot", "direct"]).assert_one_error_line(&[
        "boot mode direct is not possible: the image has no SnowFlock note; use --boot pvh",
    ]);
}

#[test]
fn two_vcpus() {
    snowflock(["run", "hello", "--vcpus", "2"])
        .assert_one_error_line(&["only 1 vCPU is supported for now (asked for 2)"]);
}

#[test]
fn mem_below_the_minimum() {
    snowflock(["run", "hello", "--mem", "3M"])
        .assert_one_error_line(&["guest memory of 3145728 bytes: below the 4 MiB minimum"]);
}

#[test]
fn mem_above_the_maximum() {
    snowflock(["run", "hello", "--mem", "65G"])
        .assert_one_error_line(&["guest memory of 69793218560 bytes: above the 64 GiB maximum"]);
}

#[test]
fn mem_not_a_multiple_of_2_mib() {
    snowflock(["run", "hello", "--mem", "5000K"])
        .assert_one_error_line(&["guest memory of 5120000 bytes: not a multiple of 2 MiB"]);
}

#[test]
fn guest_arguments_too_long() {
    let long = "a".repeat(5000);
    snowflock(["run", "hello", "--", &long])
        .assert_one_error_line(&["guest arguments are 5000 bytes; the limit is 4095"]);
}

#[test]
fn unparsable_options_are_usage_errors() {
    for args in [
        &["run", "hello", "--mem", "lots"][..],
        &["run", "hello", "--timeout", "soon"],
        &["run", "hello", "--boot", "bios"],
        &["run"],
    ] {
        let r = snowflock(args);
        r.assert_code(2).assert_no_host_panic();
        assert!(r.stderr.starts_with("error: "), "{}", r.describe());
    }
}
