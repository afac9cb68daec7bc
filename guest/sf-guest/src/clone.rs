//! The SnowFlock API: fork the whole VM.
//!
//! ```ignore
//! let t = clone::request_ticket(8)?;          // may grant fewer
//! match clone::clone(&t)? {
//!     0 => { let results = clone::join(&t)?; /* parent */ }
//!     id => clone::exit(0, &work(id)),         // clone `id` of t.granted()
//! }
//! ```

use crate::hypercall::{raw, result};
use alloc::string::String;
use alloc::vec::Vec;
pub use sf_abi::clone::{CloneStatus, RESULTS_HELD_MAX, RESULT_FLOOR};
use sf_abi::hypercall::{Call, Error};

/// A reservation of clones.
#[derive(Debug, PartialEq, Eq)]
pub struct Ticket {
    id: u32,
    granted: u32,
}

impl Ticket {
    /// How many clones the host granted (1..=asked).
    pub fn granted(&self) -> u32 {
        self.granted
    }

    /// The host's ticket number.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// A ticket the host never granted, for testing its refusals.
    pub fn forged(id: u32, granted: u32) -> Ticket {
        Ticket { id, granted }
    }
}

/// How one clone ended, as `join` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloneResult {
    pub id: u32,
    pub status: CloneStatus,
    /// Exit status, or the exception vector for a crash.
    pub code: i32,
    /// The bytes the clone passed to [`exit`].
    pub result: Vec<u8>,
    /// Why it failed, in words (empty for a clean exit).
    pub detail: String,
}

/// Reserves up to `n` clones. The host may grant fewer (its `--max-clones`
/// limit); asking for a billion costs nothing.
pub fn request_ticket(n: u64) -> Result<Ticket, Error> {
    // SAFETY: no memory is passed.
    let r = result(unsafe { raw(Call::TicketRequest as u32, n, 0, 0, 0) })?;
    Ok(Ticket {
        id: (r >> 32) as u32,
        granted: r as u32,
    })
}

/// The most result bytes each clone of `ticket` may hand back with
/// [`exit`]: at least [`RESULT_FLOOR`] (64 KiB), up to [`RESULTS_HELD_MAX`]
/// shared by the clones of this VM's tickets not yet joined. Fixed when
/// the ticket was granted, so the parent can size its clones' work first.
pub fn result_cap(ticket: &Ticket) -> Result<usize, Error> {
    // SAFETY: no memory is passed.
    result(unsafe { raw(Call::ResultCap as u32, ticket.id as u64, 0, 0, 0) }).map(|n| n as usize)
}

/// Forks the VM: returns 0 in the parent and `1..=ticket.granted()` in each
/// clone, which continues from here with the parent's memory as it is now.
/// Every VM's random-number source is reseeded afterwards.
pub fn clone(ticket: &Ticket) -> Result<u32, Error> {
    crate::console::flush();
    // SAFETY: no memory is passed.
    let r = result(unsafe { raw(Call::Clone as u32, ticket.id as u64, 0, 0, 0) });
    // In the parent and in every clone, failed or not: explicit hints
    // apply to one clone call.
    crate::heap::after_clone();
    let id = r?;
    crate::rand::seed(crate::rt::boot().seed);
    Ok(id as u32)
}

/// Ends this clone with `status`, handing `result` (at most its ticket's
/// [`result_cap`] bytes) to the parent's `join`. Returns only if the host
/// refuses the arguments ([`Error::TooBig`] for a result over the cap).
pub fn exit(status: i32, result_bytes: &[u8]) -> Error {
    crate::console::flush();
    // SAFETY: the host only reads `result_bytes`.
    let r = unsafe {
        raw(
            Call::CloneExit as u32,
            status as u32 as u64,
            result_bytes.as_ptr() as u64,
            result_bytes.len() as u64,
            0,
        )
    };
    match result(r) {
        Err(e) => e,
        Ok(_) => Error::Invalid,
    }
}

/// Waits for every clone of `ticket`; returns each one's outcome in ID
/// order. The ticket is spent afterwards ([`Error::NoEntry`] if joined again).
pub fn join(ticket: &Ticket) -> Result<Vec<CloneResult>, Error> {
    // SAFETY: no memory is passed.
    let size = result(unsafe { raw(Call::JoinWait as u32, ticket.id as u64, 0, 0, 0) })? as usize;
    let mut buf = alloc::vec![0u8; size];
    // SAFETY: the host writes at most `buf.len()` bytes into `buf`.
    let n = result(unsafe {
        raw(
            Call::JoinFetch as u32,
            ticket.id as u64,
            buf.as_mut_ptr() as u64,
            buf.len() as u64,
            0,
        )
    })? as usize;
    Ok(sf_abi::clone::decode(&buf[..n.min(size)])
        .map(|e| CloneResult {
            id: e.id,
            status: e.status,
            code: e.code,
            result: e.result.to_vec(),
            detail: String::from_utf8_lossy(e.detail).into_owned(),
        })
        .collect())
}

/// Kills every clone of `ticket` still running; returns how many. `join`
/// then reports them as [`CloneStatus::Killed`].
pub fn kill(ticket: &Ticket) -> Result<u32, Error> {
    // SAFETY: no memory is passed.
    result(unsafe { raw(Call::Kill as u32, ticket.id as u64, 0, 0, 0) }).map(|n| n as u32)
}
