//! Inputs and outputs for C guests; see `guest/include/snowflock.h`.
//! Output calls return 0 or a negative error code (`-SF_E*`).

use crate::hypercall::{raw, result};
use sf_abi::hypercall::{Call, Error};
use sf_abi::io::{valid_name, NAME_MAX, OUTPUT_CHUNK_MAX};

/// The bytes of a NUL-terminated C name, read at most up to one byte past
/// [`NAME_MAX`] (so a missing terminator costs a bounded read); `None`
/// for NULL or a name that is too long.
///
/// # Safety
/// `name` is NULL or points to a NUL-terminated string.
unsafe fn c_name<'a>(name: *const u8) -> Option<&'a [u8]> {
    if name.is_null() {
        return None;
    }
    for n in 0..=NAME_MAX {
        // SAFETY: the caller's string goes on at least up to its NUL.
        if unsafe { *name.add(n) } == 0 {
            // SAFETY: the `n` bytes before the NUL were just read.
            return Some(unsafe { core::slice::from_raw_parts(name, n) });
        }
    }
    None
}

/// The bytes of input `name` and their length in `*len`; NULL (and
/// `*len` = 0) when there is no such input.
///
/// # Safety
/// `name` is NULL or NUL-terminated; `len` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sf_input(name: *const u8, len: *mut usize) -> *const u8 {
    // SAFETY: as the caller promised.
    let found = unsafe { c_name(name) }
        .and_then(|n| core::str::from_utf8(n).ok())
        .and_then(crate::input::get);
    if !len.is_null() {
        // SAFETY: the caller's out parameter.
        unsafe { len.write(found.map_or(0, |b| b.len())) };
    }
    found.map_or(core::ptr::null(), |b| b.as_ptr())
}

/// C form of [`crate::input::will_read`]: the pages announced, or a
/// negated error code.
///
/// # Safety
/// `name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn sf_input_will_read(name: *const u8, offset: usize, len: usize) -> i64 {
    // SAFETY: as the caller promised.
    let Some(name) = (unsafe { c_name(name) }).and_then(|n| core::str::from_utf8(n).ok()) else {
        return -(Error::NoEntry as i64);
    };
    let Some(end) = offset.checked_add(len) else {
        return -(Error::Invalid as i64);
    };
    match crate::input::will_read(name, offset..end) {
        Ok(pages) => pages as i64,
        Err(e) => -(e as i64),
    }
}

/// How many inputs the VM has.
#[no_mangle]
pub extern "C" fn sf_input_count() -> usize {
    crate::input::count()
}

/// The name of input `i` (not NUL-terminated) and its length in
/// `*name_len`; NULL past the last input.
///
/// # Safety
/// `name_len` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sf_input_name(i: usize, name_len: *mut usize) -> *const u8 {
    let n = crate::input::names().nth(i);
    if !name_len.is_null() {
        // SAFETY: the caller's out parameter.
        unsafe { name_len.write(n.map_or(0, |s| s.len())) };
    }
    n.map_or(core::ptr::null(), |s| s.as_ptr())
}

fn err(e: Error) -> i32 {
    -(e as i32)
}

/// Writes `[buf, buf + len)` in chunks; the bytes are never turned into a
/// Rust slice here, so a wild pointer is the host's to refuse.
unsafe fn send(first: Call, name: *const u8, buf: *const u8, len: usize) -> i32 {
    // SAFETY: as the caller promised.
    let Some(name) = (unsafe { c_name(name) }).filter(|n| valid_name(n)) else {
        return err(Error::Invalid);
    };
    if buf.is_null() && len > 0 {
        return err(Error::Fault);
    }
    let mut call = first;
    let mut off = 0usize;
    loop {
        let n = (len - off).min(OUTPUT_CHUNK_MAX as usize);
        // SAFETY: the host only reads the name and `n` bytes at `buf + off`,
        // after checking them against this program's page permissions.
        let r = unsafe {
            raw(
                call as u32,
                name.as_ptr() as u64,
                name.len() as u64,
                (buf as u64).wrapping_add(off as u64),
                n as u64,
            )
        };
        if let Err(e) = result(r) {
            return err(e);
        }
        off += n;
        call = Call::OutputAppend;
        if off >= len {
            return 0;
        }
    }
}

/// C form of [`crate::output::write`].
///
/// # Safety
/// `name` is NULL or NUL-terminated; `buf` and `len` are only passed on.
#[no_mangle]
pub unsafe extern "C" fn sf_output_write(name: *const u8, buf: *const u8, len: usize) -> i32 {
    // SAFETY: as the caller promised.
    unsafe { send(Call::OutputWrite, name, buf, len) }
}

/// C form of [`crate::output::append`].
///
/// # Safety
/// As for [`sf_output_write`].
#[no_mangle]
pub unsafe extern "C" fn sf_output_append(name: *const u8, buf: *const u8, len: usize) -> i32 {
    // SAFETY: as the caller promised.
    unsafe { send(Call::OutputAppend, name, buf, len) }
}
