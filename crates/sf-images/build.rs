//! Builds the guest workspace (`guest/`) with the flags a bare VM needs and
//! copies each guest ELF into OUT_DIR for `include_bytes!`.
//!
//! The guests cannot be ordinary workspace members: they need `panic=abort`,
//! a static link at 1 MiB with our linker script and no start files, none of
//! which may leak into the host crates. So this runs a nested `cargo build`
//! with its own RUSTFLAGS and target directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The host's own target: the only one installed on the project's
/// machines; the guests are freestanding programs built for it.
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

const GUESTS: [&str; 7] = [
    "hello", "pi", "crash", "hostile", "forktest", "capi", "netpi",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.join("../..").canonicalize().unwrap();
    let guest_dir = root.join("guest");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = out_dir.join("guest-target");

    // Relative to this package: cargo keeps the paths as given, and an
    // absolute one would tie a target directory to the checkout that made
    // it (a copied target then never rebuilt the guests of another one).
    println!("cargo:rerun-if-changed=../../guest");
    println!("cargo:rerun-if-changed=../sf-abi");

    let linker_script = guest_dir.join("guest.ld");
    let rustflags = [
        "-C panic=abort",
        "-C relocation-model=static",
        "-C link-arg=-nostartfiles",
        "-C link-arg=-static",
        "-C link-arg=-nostdlib",
        "-C link-arg=-Wl,--build-id=none",
        &format!("-C link-arg=-Wl,-T,{}", linker_script.display()),
    ]
    .join(" ");

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // An explicit --target keeps RUSTFLAGS off build scripts (a guest's
    // build script is a host program, e.g. the C compiler driver).
    cmd.args([
        "build",
        "--release",
        "--locked",
        "--target",
        GUEST_TARGET,
        "--manifest-path",
    ])
    .arg(guest_dir.join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target_dir)
    .env("RUSTFLAGS", rustflags)
    // The outer build's flags and settings are for the host; drop them.
    .env_remove("CARGO_ENCODED_RUSTFLAGS")
    .env_remove("CARGO_BUILD_RUSTFLAGS")
    .env_remove("CARGO_TARGET_DIR")
    .env_remove("CARGO_BUILD_TARGET")
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    .env_remove("CARGO_PROFILE_RELEASE_DEBUG")
    .env_remove("CARGO_PROFILE_RELEASE_OPT_LEVEL");
    let status = cmd.status().expect("cannot run cargo to build the guests");
    if !status.success() {
        panic!("building the guest images failed (see the cargo output above)");
    }
    for g in GUESTS {
        copy(
            &target_dir.join(GUEST_TARGET).join("release").join(g),
            &out_dir.join(format!("{g}.elf")),
        );
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("guest image {} missing after build: {e}", from.display()));
}
