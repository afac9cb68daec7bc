//! Guest workloads that several end-to-end test files run on remote
//! clones, as `snowflock run` arguments.

/// Four remote clones (two per clone host of three) read one word of each
/// page of the same 16 MiB, at once.
pub const SCAN: &[&str] = &[
    "--placement",
    "remote",
    "forktest",
    "--",
    "scan",
    "n=4",
    "mib=16",
    "ms=0",
];

/// Two remote clones of a 256 MiB VM read a 16 MiB working set, then
/// allocate, fill and check 64 MiB (pages the guest hinted free).
pub const AVOID_ALLOC: &[&str] = &[
    "--mem",
    "256M",
    "--placement",
    "remote",
    "forktest",
    "--",
    "avoid",
    "n=2",
    "ws=16",
    "alloc=64",
];
