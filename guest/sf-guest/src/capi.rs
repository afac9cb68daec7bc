//! The clone API for C guests; see `guest/include/snowflock.h`. Each call
//! returns a negative error code (`-SF_E*`) on failure.

use crate::clone::{self, Ticket};
use crate::hypercall::{raw, result};
use sf_abi::hypercall::{Call, Error};

/// C view of a ticket.
#[repr(C)]
pub struct SfTicket {
    pub id: u32,
    pub granted: u32,
}

fn ticket(t: &SfTicket) -> Ticket {
    Ticket::forged(t.id, t.granted)
}

fn err(e: sf_abi::hypercall::Error) -> i64 {
    -(e as i64)
}

/// # Safety
/// `out` must point to writable memory for one `SfTicket`.
#[no_mangle]
pub unsafe extern "C" fn sf_request_ticket(n: u64, out: *mut SfTicket) -> i64 {
    match clone::request_ticket(n) {
        Ok(t) => {
            out.write(SfTicket {
                id: t.id(),
                granted: t.granted(),
            });
            t.granted() as i64
        }
        Err(e) => err(e),
    }
}

/// # Safety
/// `t` must point to a ticket filled in by `sf_request_ticket`.
#[no_mangle]
pub unsafe extern "C" fn sf_clone(t: *const SfTicket) -> i64 {
    match clone::clone(&ticket(&*t)) {
        Ok(id) => id as i64,
        Err(e) => err(e),
    }
}

/// Ends this clone with `status`, handing the parent `result[..len]`.
/// Returns only when refused: `-SF_E2BIG` over the limit, `-SF_EFAULT` for
/// a NULL `result` with `len > 0` (defined, not undefined behaviour: no
/// result is handed over and the clone keeps running) or memory the host
/// cannot read. The bytes are never turned into a Rust slice here, so a
/// wild pointer or length is the host's to refuse.
///
/// # Safety
/// None beyond what the host checks: `result` and `len` are only passed on.
#[no_mangle]
pub unsafe extern "C" fn sf_exit(status: i32, result_ptr: *const u8, len: usize) -> i64 {
    if result_ptr.is_null() && len > 0 {
        return err(Error::Fault);
    }
    crate::console::flush();
    // SAFETY: the host only reads `len` bytes at `result_ptr`, after
    // checking them against this program's own page permissions.
    let r = unsafe {
        raw(
            Call::CloneExit as u32,
            status as u32 as u64,
            result_ptr as u64,
            len as u64,
            0,
        )
    };
    match result(r) {
        Err(e) => err(e),
        Ok(_) => err(Error::Invalid),
    }
}

/// C view of one clone's end; see `sf_clone_t` in the header.
#[repr(C)]
pub struct SfClone {
    pub id: u32,
    pub status: u32,
    pub code: i32,
    pub result_len: u32,
    pub result: *mut u8,
    pub result_cap: usize,
}

/// Waits for the ticket's clones; fills up to `cap` entries (status, code,
/// result copied into each entry's own buffer) and returns how many clones
/// there were.
///
/// # Safety
/// `t` as for `sf_clone`; `clones` must point to `cap` entries whose
/// `result` is NULL or has room for `result_cap` bytes.
#[no_mangle]
pub unsafe extern "C" fn sf_join_clones(
    t: *const SfTicket,
    clones: *mut SfClone,
    cap: usize,
) -> i64 {
    if t.is_null() || (clones.is_null() && cap > 0) {
        return err(Error::Fault);
    }
    // SAFETY: the caller's ticket.
    match clone::join(&ticket(unsafe { &*t })) {
        Ok(rs) => {
            for (i, r) in rs.iter().take(cap).enumerate() {
                // SAFETY: one of the caller's `cap` entries.
                let c = unsafe { &mut *clones.add(i) };
                c.id = r.id;
                c.status = r.status as u32;
                c.code = r.code;
                c.result_len = r.result.len() as u32;
                if !c.result.is_null() {
                    let n = r.result.len().min(c.result_cap);
                    // SAFETY: the caller gave `result_cap` bytes at `result`.
                    unsafe { core::ptr::copy_nonoverlapping(r.result.as_ptr(), c.result, n) };
                }
            }
            rs.len() as i64
        }
        Err(e) => err(e),
    }
}

/// Waits for the ticket's clones; writes up to `cap` statuses (exit code,
/// or -1 for a clone that failed) and returns how many clones there were.
///
/// # Safety
/// `t` as for `sf_clone`; `statuses` must have room for `cap` values.
#[no_mangle]
pub unsafe extern "C" fn sf_join(t: *const SfTicket, statuses: *mut i32, cap: usize) -> i64 {
    match clone::join(&ticket(&*t)) {
        Ok(rs) => {
            for (i, r) in rs.iter().take(cap).enumerate() {
                let ok = r.status == clone::CloneStatus::Exited;
                statuses.add(i).write(if ok { r.code } else { -1 });
            }
            rs.len() as i64
        }
        Err(e) => err(e),
    }
}

/// The most result bytes each clone of the ticket may hand to `sf_exit`.
///
/// # Safety
/// `t` as for `sf_clone`.
#[no_mangle]
pub unsafe extern "C" fn sf_result_cap(t: *const SfTicket) -> i64 {
    match clone::result_cap(&ticket(&*t)) {
        Ok(n) => n as i64,
        Err(e) => err(e),
    }
}

/// # Safety
/// `t` as for `sf_clone`.
#[no_mangle]
pub unsafe extern "C" fn sf_kill(t: *const SfTicket) -> i64 {
    match clone::kill(&ticket(&*t)) {
        Ok(n) => n as i64,
        Err(e) => err(e),
    }
}

/// C form of [`crate::mem::will_overwrite`]: 1 if recorded, 0 if dropped.
/// Never dereferences `p`.
#[no_mangle]
pub extern "C" fn sf_will_overwrite(p: *const u8, len: usize) -> i32 {
    crate::mem::will_overwrite(p, len) as i32
}
