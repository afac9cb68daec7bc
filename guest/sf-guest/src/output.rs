//! Files this VM hands back to the host with `sf_guest::output::write`:
//! they land in `DIR/<vm-id>/NAME` under the host's `--output DIR` (`0`
//! for the root VM, the clone's ID path such as `2` or `2.3` for clones).
//! Large outputs go in chunks of `sf_abi::io::OUTPUT_CHUNK_MAX` bytes,
//! one hypercall each, so the host never buffers a whole file.

use crate::hypercall::{raw, result};
use sf_abi::hypercall::{Call, Error};
use sf_abi::io::{valid_name, OUTPUT_CHUNK_MAX};

/// Why an output was not written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputError {
    /// The name breaks the rule (1..=64 bytes of letters, digits, `.`,
    /// `_`, `-`, not starting with `.`); checked here and by the host.
    BadName,
    /// The host was started without an output directory.
    NoOutputDir,
    /// The VM's output cap would be exceeded (the host's
    /// `--output-cap`); what was written before the call stays.
    TooBig,
    /// `append` to a name this VM has not created with `write`.
    NotCreated,
    /// A file of that name was in the output directory before this run:
    /// the host never overwrites one (give the host a fresh directory).
    Exists,
    /// A buffer the host could not read.
    Fault,
    /// The host failed to write the file (details in its log).
    Io,
    /// Any other code from the host.
    Other(Error),
}

impl From<Error> for OutputError {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid => OutputError::BadName,
            Error::Denied => OutputError::NoOutputDir,
            Error::TooBig => OutputError::TooBig,
            Error::NoEntry => OutputError::NotCreated,
            Error::Busy => OutputError::Exists,
            Error::Fault => OutputError::Fault,
            Error::Io => OutputError::Io,
            e => OutputError::Other(e),
        }
    }
}

/// One hypercall; the host checks the name and every buffer itself.
pub(crate) fn raw_call(call: Call, name: &[u8], buf: &[u8]) -> Result<u64, Error> {
    // SAFETY: the host only reads `name` and `buf`.
    result(unsafe {
        raw(
            call as u32,
            name.as_ptr() as u64,
            name.len() as u64,
            buf.as_ptr() as u64,
            buf.len() as u64,
        )
    })
}

fn send(first: Call, name: &[u8], bytes: &[u8]) -> Result<(), OutputError> {
    if !valid_name(name) {
        return Err(OutputError::BadName);
    }
    let mut call = first;
    let mut chunks = bytes.chunks(OUTPUT_CHUNK_MAX as usize);
    // An empty output still creates its file.
    let head = chunks.next().unwrap_or(&[]);
    raw_call(call, name, head)?;
    call = Call::OutputAppend;
    for c in chunks {
        raw_call(call, name, c)?;
    }
    Ok(())
}

/// Creates (or replaces) this VM's output `name` with `bytes`, of any size.
pub fn write(name: &str, bytes: &[u8]) -> Result<(), OutputError> {
    send(Call::OutputWrite, name.as_bytes(), bytes)
}

/// Appends `bytes` to this VM's output `name`, created before with
/// [`write`] (in this VM: a clone starts with no outputs of its own).
/// Lets a guest stream an output larger than its memory.
pub fn append(name: &str, bytes: &[u8]) -> Result<(), OutputError> {
    send(Call::OutputAppend, name.as_bytes(), bytes)
}
