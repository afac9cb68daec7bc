//! The clone API for C guests; see `guest/include/snowflock.h`. Each call
//! returns a negative error code (`-SF_E*`) on failure.

use crate::clone::{self, Ticket};

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

/// # Safety
/// `result` must point to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn sf_exit(status: i32, result: *const u8, len: usize) -> i64 {
    let bytes = if len == 0 {
        &[][..]
    } else {
        core::slice::from_raw_parts(result, len)
    };
    err(clone::exit(status, bytes))
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

/// # Safety
/// `t` as for `sf_clone`.
#[no_mangle]
pub unsafe extern "C" fn sf_kill(t: *const SfTicket) -> i64 {
    match clone::kill(&ticket(&*t)) {
        Ok(n) => n as i64,
        Err(e) => err(e),
    }
}
