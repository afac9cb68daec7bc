//! Hypercall numbers, calling convention and error codes.
//!
//! A hypercall is `out dx, eax` (opcode `0xEF`, one byte) with `dx` =
//! [`PORT`] and `eax` = the call number. Arguments travel in `rdi`, `rsi`,
//! `r8`, `r9`; the result comes back in `rax`: a non-negative value on
//! success, or the negated code of an [`Error`]. One call is one VM exit
//! (~25 µs on the project's machines), so the guest batches: a console write
//! carries a whole buffer, never a byte.
//!
//! `in eax, dx` on [`PORT`] returns [`PROBE_MAGIC`] under a SnowFlock VMM and
//! all ones elsewhere (e.g. under QEMU), which is how a guest booted through
//! PVH learns whether hypercalls exist.
//!
//! For a ring-3 caller, every buffer the host reads must be mapped present
//! and user in the guest's own page tables, and every buffer it writes also
//! writable at every level; otherwise the call gets [`Error::Fault`]. A
//! ring-3 program can name only memory it could touch itself.

/// The I/O port of the hypercall interface.
pub const PORT: u16 = 0x510;
/// What `in eax, dx` on [`PORT`] reads under a SnowFlock VMM.
pub const PROBE_MAGIC: u32 = 0x5346_4b21;
/// The legacy serial port a guest falls back to without hypercalls.
pub const SERIAL_PORT: u16 = 0x3f8;
/// QEMU's `isa-debug-exit` port, the fallback for [`Call::Exit`].
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Largest buffer one [`Call::ConsoleWrite`] may carry.
pub const CONSOLE_WRITE_MAX: u64 = 64 << 10;
/// Largest panic message the VMM reads.
pub const PANIC_MSG_MAX: u64 = 4 << 10;

/// Hypercall numbers (the value of `eax`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Call {
    /// `(ptr, len)`: write guest bytes to the console. Returns `len`.
    ConsoleWrite = 1,
    /// `(status)`: end the VM with this exit status. Does not return.
    Exit = 2,
    /// `(msg_ptr, msg_len)`: the application panicked. Does not return.
    Panic = 3,
    /// `(frame_ptr)`: ring 0 reports a CPU exception; the frame is an
    /// [`ExceptionFrame`] on the kernel stack. Does not return. From ring 3
    /// it is refused with [`Error::Denied`]: ring 3 cannot forge a crash.
    Exception = 4,
    /// `(n)`: reserve up to `n` clones. Returns `ticket << 32 | granted`
    /// (granted may be fewer than asked, never 0; [`Error::Again`] when
    /// none are available).
    TicketRequest = 16,
    /// `(ticket)`: clone the whole VM. Returns 0 in the parent and the clone
    /// ID `1..=granted` in each clone.
    Clone = 17,
    /// `(status, result_ptr, result_len)`: end this clone, handing the
    /// parent `status` and at most its ticket's [`Call::ResultCap`] result
    /// bytes ([`Error::TooBig`] beyond). In a VM that is not a clone it
    /// ends the VM like [`Call::Exit`]. Does not return (unless the
    /// arguments are refused).
    CloneExit = 18,
    /// `(ticket)`: wait for every clone of the ticket to end. Returns the
    /// size of the join record [`Call::JoinFetch`] will write.
    JoinWait = 19,
    /// `(ticket, buf_ptr, buf_len)`: after [`Call::JoinWait`], copy the
    /// join record (see [`crate::clone`]) into the buffer and forget the
    /// ticket. Returns the bytes written.
    JoinFetch = 20,
    /// `(ticket)`: kill every clone of the ticket still running. Returns how
    /// many were killed.
    Kill = 21,
    /// `(header_gpa)`: where the guest keeps its free-page hints (see
    /// [`crate::hints`]). The host only records the address and reads the
    /// structure at each clone call. Returns 0.
    RegisterHints = 22,
    /// `(name_ptr, name_len, buf_ptr, buf_len)`: create (or truncate) the
    /// output file `name` of this VM and write the buffer to it (at most
    /// [`crate::io::OUTPUT_CHUNK_MAX`] bytes). Returns `buf_len`. Errors:
    /// [`Error::Invalid`] for a name outside [`crate::io::valid_name`],
    /// [`Error::TooBig`] for a chunk over the limit or past the VM's output
    /// cap, [`Error::Denied`] when the VM has no output directory,
    /// [`Error::Io`] when the host could not write.
    OutputWrite = 23,
    /// `(name_ptr, name_len, buf_ptr, buf_len)`: append the buffer to the
    /// output `name` this VM created with [`Call::OutputWrite`]
    /// ([`Error::NoEntry`] otherwise). Same limits and errors.
    OutputAppend = 24,
    /// `(ticket)`: the most result bytes each clone of this granted ticket
    /// may hand back with [`Call::CloneExit`]: at least
    /// [`crate::clone::RESULT_FLOOR`], more when this VM's other tickets
    /// leave room in [`crate::clone::RESULTS_HELD_MAX`]. Fixed when the
    /// ticket is granted. [`Error::NoEntry`] for a ticket not held.
    ResultCap = 25,
    /// `(name_ptr, name_len, offset, len)`: this VM will soon read bytes
    /// `offset..offset + len` of input `name`; a clone on another host
    /// streams those pages from the memory holder ahead of its faults (on
    /// one host a no-op: the pages are shared already). Returns the pages
    /// asked for. [`Error::NoEntry`] for no such input, [`Error::Invalid`]
    /// for a range past its end or a bad name.
    InputWillRead = 26,
    // Reserved, so that work in progress does not collide: 27..=29 for
    // inputs, outputs and applications; 30..=39 for networking.
}

impl Call {
    pub fn from_u32(nr: u32) -> Option<Call> {
        Some(match nr {
            1 => Call::ConsoleWrite,
            2 => Call::Exit,
            3 => Call::Panic,
            4 => Call::Exception,
            16 => Call::TicketRequest,
            17 => Call::Clone,
            18 => Call::CloneExit,
            19 => Call::JoinWait,
            20 => Call::JoinFetch,
            21 => Call::Kill,
            22 => Call::RegisterHints,
            23 => Call::OutputWrite,
            24 => Call::OutputAppend,
            25 => Call::ResultCap,
            26 => Call::InputWillRead,
            _ => return None,
        })
    }
}

/// Error codes a hypercall returns, negated, in `rax`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
pub enum Error {
    /// A pointer or length does not lie inside guest RAM, or (ring 3) names
    /// a page the caller's page tables do not let it access that way.
    Fault = 14,
    /// An argument is out of range.
    Invalid = 22,
    /// A buffer is larger than the call allows.
    TooBig = 7,
    /// No such hypercall.
    NoSys = 38,
    /// No such ticket (never granted, or already joined).
    NoEntry = 2,
    /// Nothing available now (no clones left to grant).
    Again = 11,
    /// The ticket was already used for a clone, or not yet for join.
    Busy = 16,
    /// The host could not do it (e.g. fork failed); details in its log.
    Io = 5,
    /// The caller's privilege level may not make this call (e.g. an
    /// exception report from ring 3).
    Denied = 1,
}

impl Error {
    /// The value placed in `rax`.
    pub const fn to_ret(self) -> u64 {
        (-(self as i64)) as u64
    }

    /// Decodes a raw `rax`; `None` when it is a success value.
    pub fn from_ret(ret: u64) -> Option<Error> {
        Some(match ret as i64 {
            -14 => Error::Fault,
            -22 => Error::Invalid,
            -7 => Error::TooBig,
            -38 => Error::NoSys,
            -2 => Error::NoEntry,
            -11 => Error::Again,
            -16 => Error::Busy,
            -5 => Error::Io,
            -1 => Error::Denied,
            _ => return None,
        })
    }
}

/// What ring 0's exception stubs leave on the kernel stack before reporting
/// with [`Call::Exception`]: three saved registers, the vector, the error code
/// (0 where the CPU pushes none) and the CPU's own interrupt frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ExceptionFrame {
    pub rdi: u64,
    pub rdx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

impl ExceptionFrame {
    pub const SIZE: usize = 10 * 8;

    /// Decodes a frame from little-endian bytes.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> ExceptionFrame {
        let w = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_le_bytes(x)
        };
        ExceptionFrame {
            rdi: w(0),
            rdx: w(1),
            rax: w(2),
            vector: w(3),
            error_code: w(4),
            rip: w(5),
            cs: w(6),
            rflags: w(7),
            rsp: w(8),
            ss: w(9),
        }
    }
}

/// Architectural name of an exception vector.
pub fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "divide error (#DE)",
        1 => "debug (#DB)",
        2 => "non-maskable interrupt",
        3 => "breakpoint (#BP)",
        4 => "overflow (#OF)",
        5 => "bound range exceeded (#BR)",
        6 => "invalid opcode (#UD)",
        7 => "device not available (#NM)",
        8 => "double fault (#DF)",
        10 => "invalid TSS (#TS)",
        11 => "segment not present (#NP)",
        12 => "stack-segment fault (#SS)",
        13 => "general protection fault (#GP)",
        14 => "page fault (#PF)",
        16 => "x87 floating-point error (#MF)",
        17 => "alignment check (#AC)",
        18 => "machine check (#MC)",
        19 => "SIMD floating-point exception (#XM)",
        20 => "virtualization exception (#VE)",
        21 => "control protection exception (#CP)",
        _ => "reserved exception",
    }
}

/// Whether the CPU pushes an error code for this vector.
pub const fn has_error_code(vector: u64) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_round_trip_through_rax() {
        for e in [
            Error::Fault,
            Error::Invalid,
            Error::TooBig,
            Error::NoSys,
            Error::NoEntry,
            Error::Again,
            Error::Busy,
            Error::Io,
            Error::Denied,
        ] {
            assert_eq!(Error::from_ret(e.to_ret()), Some(e));
        }
        assert_eq!(Error::from_ret(0), None);
        assert_eq!(Error::from_ret(12), None);
    }

    #[test]
    fn call_numbers_decode() {
        assert_eq!(Call::from_u32(1), Some(Call::ConsoleWrite));
        assert_eq!(Call::from_u32(4), Some(Call::Exception));
        assert_eq!(Call::from_u32(21), Some(Call::Kill));
        assert_eq!(Call::from_u32(23), Some(Call::OutputWrite));
        assert_eq!(Call::from_u32(24), Some(Call::OutputAppend));
        assert_eq!(Call::from_u32(25), Some(Call::ResultCap));
        assert_eq!(Call::from_u32(26), Some(Call::InputWillRead));
        assert_eq!(Call::from_u32(27), None);
        assert_eq!(Call::from_u32(15), None);
        assert_eq!(Call::from_u32(0), None);
        assert_eq!(Call::from_u32(u32::MAX), None);
    }

    #[test]
    fn frame_decodes_in_stack_order() {
        let mut b = [0u8; ExceptionFrame::SIZE];
        for i in 0..10 {
            b[i * 8] = i as u8 + 1;
        }
        let f = ExceptionFrame::from_bytes(&b);
        assert_eq!((f.rdi, f.vector, f.rip, f.ss), (1, 4, 6, 10));
    }
}
