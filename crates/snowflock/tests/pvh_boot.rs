//! Foreign PVH kernels, hand-assembled 32-bit code behind a Xen PVH entry
//! note, booted by `snowflock run FILE` (auto mode picks PVH when there is
//! no SnowFlock note): a plain one that prints over the legacy serial port,
//! and ring-0 code that fails the two ways only ring 0 can fail here.

mod common;

use common::*;

/// Boots `code` (at 1 MiB, PVH entry there) and returns the run.
fn boot(code: &[u8], extra: &[&str]) -> Run {
    let dir = tempdir();
    let p = write_file(dir.path(), "kernel.elf", &Elf64::pvh(code).build());
    let mut args = vec![
        "run".to_string(),
        p.display().to_string(),
        "--mem".into(),
        "64M".into(),
        "--timeout".into(),
        "10s".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let r = snowflock(args);
    r.assert_no_host_panic();
    r
}

/// A register dump: the registers, the control registers and the ring
/// (r15 is checked on its own, below).
fn assert_register_dump(r: &Run) {
    let regs = "rip= rsp= rflags= rax= rbx= rcx= rdx= rsi= rdi= rbp= r8= r9= r10= r11= r12= r13= r14= cr0= cr2= cr3= cr4= efer=";
    for reg in regs.split(' ').chain(["cs=0x8 (ring 0)"]) {
        assert!(
            r.stderr.contains(reg),
            "the register dump lacks {reg:?}\n{}",
            r.describe()
        );
    }
    // PVH hands over the start info in ebx.
    r.assert_stderr_has("rbx=0x0000000000007000");
}

#[test]
fn a_foreign_pvh_kernel_prints_on_the_serial_port_and_exits_0() {
    let mut code = asm32::serial_print(b"OK\n");
    code.extend(asm32::debug_exit(0));
    code.extend(asm32::HALT_FOREVER);
    let r = boot(&code, &["--timings"]);
    r.assert_code(0);
    assert_eq!(r.stdout, "OK\n", "{}", r.describe());
    r.assert_stderr_has("snowflock: boot pvh | ");
}

#[test]
fn the_exit_port_carries_the_status() {
    let mut code = asm32::serial_print(b"bye\n");
    code.extend(asm32::debug_exit(42));
    code.extend(asm32::HALT_FOREVER);
    let r = boot(&code, &[]);
    r.assert_code(42);
    assert_eq!(r.stdout, "bye\n", "{}", r.describe());
}

#[test]
fn the_pvh_command_line_reaches_the_kernel() {
    // hvm_start_info is at ebx (0x7000); its cmdline_paddr (offset 24) points
    // at the NUL-terminated arguments. Print the first two bytes of them.
    let mut code = vec![0x8b, 0x73, 0x18]; // mov 0x18(%ebx), %esi
    code.extend(asm32::mov_dx(0x3f8));
    for _ in 0..2 {
        code.extend([0x8a, 0x06]); // mov (%esi), %al
        code.push(asm32::OUT_AL_DX);
        code.push(0x46); // inc %esi
    }
    code.extend(asm32::mov_al(b'\n'));
    code.push(asm32::OUT_AL_DX);
    code.extend(asm32::debug_exit(0));
    code.extend(asm32::HALT_FOREVER);
    let r = boot(&code, &["--", "hi", "there"]);
    r.assert_code(0);
    assert_eq!(r.stdout, "hi\n", "{}", r.describe());
}

#[test]
fn ud2_without_an_idt_triple_faults() {
    // lidt of a zero-limit IDT, then ud2: #UD -> #GP -> #DF -> shutdown.
    let mut body = asm32::UD2.to_vec();
    body.extend(asm32::serial_print(b"survived\n"));
    body.extend(asm32::HALT_FOREVER);
    let lidt_len = asm32::lidt_abs(0).len();
    let idtr_off = (lidt_len + body.len()).next_multiple_of(16);
    let mut code = asm32::lidt_abs(LOAD_ADDR as u32 + idtr_off as u32);
    let ud2_at = LOAD_ADDR + code.len() as u64;
    code.extend(body);
    code.resize(idtr_off, 0x90);
    code.extend([0u8; 6]); // IDTR: limit 0, base 0
    let r = boot(&code, &[]);
    r.assert_code(102);
    assert_eq!(r.stdout, "", "{}", r.describe());
    r.assert_stderr_has("snowflock: guest triple-faulted (CPU shutdown); registers:");
    assert_register_dump(&r);
    assert_eq!(
        r.stderr_rip(),
        ud2_at,
        "the dump should stop at the ud2\n{}",
        r.describe()
    );
}

#[test]
fn sse_in_ring_0_is_an_emulation_failure() {
    // Ring 0 is emulated here and the emulator has no SSE: KVM gives up with
    // an internal error (suberror 1) on the very instruction.
    let mut code = asm32::MOVD_EAX_XMM0.to_vec();
    code.extend(asm32::serial_print(b"SSE ran\n"));
    code.extend(asm32::debug_exit(0));
    code.extend(asm32::HALT_FOREVER);
    let r = boot(&code, &[]);
    r.assert_code(102);
    assert_eq!(r.stdout, "", "{}", r.describe());
    r.assert_stderr_has("snowflock: KVM emulation failure (internal error, suberror 1)");
    r.assert_stderr_has("ring-0 instruction this host cannot emulate; registers:");
    assert_register_dump(&r);
    assert_eq!(
        r.stderr_rip(),
        LOAD_ADDR,
        "the dump should stop at the movd\n{}",
        r.describe()
    );
}

#[test]
fn hlt_with_interrupts_off_is_reported_as_a_halt() {
    let mut code = vec![0xfa]; // cli
    code.extend(asm32::HALT_FOREVER);
    let r = boot(&code, &[]);
    r.assert_code(102);
    r.assert_stderr_has("snowflock: guest halted with no way to resume; registers:");
    assert_register_dump(&r);
}

#[test]
fn the_register_dump_shows_all_16_general_purpose_registers() {
    let mut code = vec![0xfa]; // cli
    code.extend(asm32::HALT_FOREVER);
    let r = boot(&code, &[]);
    r.assert_code(102);
    for reg in [
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ] {
        assert!(
            r.stderr.contains(&format!("{reg}=0x")),
            "the register dump lacks {reg}\n{}",
            r.describe()
        );
    }
}

/// `--net` needs the direct boot (a PVH kernel builds its own page tables
/// and is told of no device): refused with one clear error line before any
/// family device exists, for a foreign PVH kernel (auto picks PVH) and for
/// a shipped guest booted with `--boot pvh`. Runs on a namespace host,
/// which is checked for leftovers.
#[test]
fn a_nic_is_refused_with_a_pvh_boot() {
    let c = common::cluster::Cluster::new(1);
    let dir = tempdir();
    let mut code = asm32::serial_print(b"OK\n");
    code.extend(asm32::debug_exit(0));
    code.extend(asm32::HALT_FOREVER);
    let kernel = write_file(dir.path(), "kernel.elf", &Elf64::pvh(&code).build());
    let kernel = kernel.to_str().unwrap();
    for args in [
        vec!["run", "--net", kernel],
        vec!["run", "--net", "--boot", "pvh", "hello"],
    ] {
        let mut cmd = c.command(1, snowflock_bin());
        cmd.args(&args);
        let r = run_cmd(cmd, std::time::Duration::from_secs(30));
        r.assert_one_error_line(&["boot mode pvh", "--net", "direct boot"]);
        let links = std::process::Command::new("ip")
            .args(["-n", &c.netns(1), "-br", "link", "show"])
            .output()
            .unwrap();
        let links = String::from_utf8_lossy(&links.stdout);
        assert!(!links.contains("sf"), "{args:?} left {links}");
    }
}
