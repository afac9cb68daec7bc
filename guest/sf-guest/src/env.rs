//! The application's arguments: the VM's command line, split on whitespace.

use crate::rt;

/// The whole command line (empty if none or not UTF-8).
pub fn cmdline() -> &'static str {
    let b = rt::boot();
    if b.cmdline_len == 0 {
        return "";
    }
    // SAFETY: the VMM (or PVH set-up) wrote `cmdline_len` bytes at
    // `cmdline_addr` in RAM that nothing else writes.
    let bytes =
        unsafe { core::slice::from_raw_parts(b.cmdline_addr as *const u8, b.cmdline_len as usize) };
    core::str::from_utf8(bytes).unwrap_or("")
}

/// The arguments, whitespace separated.
pub fn args() -> impl Iterator<Item = &'static str> {
    cmdline().split_ascii_whitespace()
}

/// The argument after `name=` in `name=value` form, if any.
pub fn arg(name: &str) -> Option<&'static str> {
    args().find_map(|a| a.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
}

/// Guest RAM size in bytes.
pub fn mem_size() -> u64 {
    rt::boot().mem_size
}

/// Whether the VM was booted through PVH (e.g. by QEMU) rather than entered
/// directly in ring 3 by the SnowFlock VMM.
pub fn pvh_boot() -> bool {
    rt::boot().flags & sf_abi::boot_info::FLAG_PVH_BOOT != 0
}

/// Bytes of heap the runtime manages.
pub fn heap_size() -> u64 {
    let b = rt::boot();
    b.heap_end - b.heap_start
}
