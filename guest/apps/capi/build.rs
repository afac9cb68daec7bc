//! Compiles the C half of this guest against `guest/include/snowflock.h`,
//! freestanding (no libc in a SnowFlock guest).

fn main() {
    println!("cargo:rerun-if-changed=src/fork_sum.c");
    println!("cargo:rerun-if-changed=src/net_echo.c");
    println!("cargo:rerun-if-changed=../../include/snowflock.h");
    cc::Build::new()
        .file("src/fork_sum.c")
        .file("src/net_echo.c")
        .include("../../include")
        .flag("-ffreestanding")
        .flag("-fno-stack-protector")
        .flag("-fno-builtin")
        .opt_level(2)
        .compile("fork_sum");
}
