//! Serves the guest's hypercalls. Every pointer and length comes from the
//! guest and is checked first: against guest RAM, and for a ring-3 caller
//! against its own page tables ([`crate::guest_buffer`]); a bad one is
//! answered with an error code, never trusted and never a host panic. Only
//! ring 0 may report an exception.

use crate::console::ConsoleSink;
use crate::guest_buffer::{read, read_kernel_frame};
pub use crate::guest_buffer::{Caller, CpuView, LiveCpu};
use crate::memory::GuestRam;
use crate::outcome::Outcome;
use sf_abi::hypercall::{Call, Error as HcError, ExceptionFrame, CONSOLE_WRITE_MAX, PANIC_MSG_MAX};
use std::io::Write;

/// A hypercall's effect on the vCPU.
pub enum HcReturn {
    /// Put this in `rax` and resume.
    Value(u64),
    /// The vCPU's registers are already set (a new clone, or the parent
    /// after a clone).
    AlreadySet,
    /// The run ends here (the family's deadline passed during a join).
    Stop(Box<crate::Outcome>),
}

/// The guest's registers at a hypercall.
#[derive(Clone, Copy, Debug)]
pub struct Args {
    pub nr: u32,
    pub a0: u64,
    pub a1: u64,
    pub a2: u64,
    pub a3: u64,
}

/// The caller, asked only for a buffer that names memory: an empty one
/// names none, needs no privilege and costs no register read.
fn caller_for(cpu: &mut dyn CpuView, len: u64) -> Caller {
    if len == 0 {
        Caller::Kernel
    } else {
        cpu.caller()
    }
}

/// What the run loop does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Resume the guest with this value in `rax`.
    Return(u64),
    /// Stop the VM.
    Stop(Outcome),
    /// Stop the VM, handing a result to the parent if this is a clone.
    CloneExit { status: i32, result: Vec<u8> },
    /// A clone-API call; the VM handles it (it may fork).
    Clone(Call),
    /// The guest's free-page hints live at this GPA (only recorded here;
    /// read and checked at each clone call, see [`crate::hints`]).
    RegisterHints(u64),
    /// The guest will read `len` bytes at `offset` of input `name` (the
    /// name read and bounded here; the range is checked by the VM against
    /// its input table).
    WillRead {
        name: Vec<u8>,
        offset: u64,
        len: u64,
    },
    /// An output chunk for the VM's output file `name` (checked against
    /// guest memory; the name is checked by [`crate::output`]).
    Output {
        append: bool,
        name: Vec<u8>,
        data: Vec<u8>,
    },
}

fn ret(r: Result<u64, HcError>) -> Action {
    Action::Return(match r {
        Ok(v) => v,
        Err(e) => e.to_ret(),
    })
}

/// The caller's privilege level and `cr2` are read from `cpu` only when
/// needed. `result_cap`: the most result bytes this VM may hand its parent
/// (the parent's ticket fixed it).
pub fn handle(
    ram: &GuestRam,
    args: Args,
    result_cap: u64,
    sink: &mut ConsoleSink,
    console: &mut dyn Write,
    cpu: &mut dyn CpuView,
) -> std::io::Result<Action> {
    let Some(call) = Call::from_u32(args.nr) else {
        tracing::debug!(nr = args.nr, "unknown hypercall");
        return Ok(ret(Err(HcError::NoSys)));
    };
    Ok(match call {
        Call::ConsoleWrite => match read(
            ram,
            caller_for(cpu, args.a1),
            args.a0,
            args.a1,
            CONSOLE_WRITE_MAX,
        ) {
            Ok(bytes) => {
                sink.write(console, &bytes)?;
                console.flush()?;
                ret(Ok(bytes.len() as u64))
            }
            Err(e) => ret(Err(e)),
        },
        Call::Exit => Action::Stop(Outcome::Exited {
            status: args.a0 as u32 as i32,
        }),
        Call::CloneExit => {
            match read(ram, caller_for(cpu, args.a2), args.a1, args.a2, result_cap) {
                Ok(result) => Action::CloneExit {
                    status: args.a0 as u32 as i32,
                    result,
                },
                Err(e) => ret(Err(e)),
            }
        }
        Call::TicketRequest
        | Call::Clone
        | Call::JoinWait
        | Call::JoinFetch
        | Call::Kill
        | Call::ResultCap => Action::Clone(call),
        Call::InputWillRead => {
            if args.a1 > sf_abi::io::NAME_MAX as u64 {
                return Ok(ret(Err(HcError::Invalid)));
            }
            match read(ram, caller_for(cpu, args.a1), args.a0, args.a1, args.a1) {
                Ok(name) => Action::WillRead {
                    name,
                    offset: args.a2,
                    len: args.a3,
                },
                Err(e) => ret(Err(e)),
            }
        }
        Call::RegisterHints => Action::RegisterHints(args.a0),
        Call::OutputWrite | Call::OutputAppend => output(ram, args, call, cpu),
        Call::Panic => match read(
            ram,
            caller_for(cpu, args.a1),
            args.a0,
            args.a1.min(PANIC_MSG_MAX),
            PANIC_MSG_MAX,
        ) {
            Ok(msg) => Action::Stop(Outcome::Panicked {
                message: String::from_utf8_lossy(&msg).into_owned(),
            }),
            Err(e) => ret(Err(e)),
        },
        Call::Exception => match read_kernel_frame(ram, cpu.caller(), args.a0) {
            Ok(bytes) => {
                let f =
                    ExceptionFrame::from_bytes(bytes.as_slice().try_into().expect("frame size"));
                Action::Stop(Outcome::Exception {
                    vector: f.vector,
                    error_code: f.error_code,
                    rip: f.rip,
                    rsp: f.rsp,
                    cr2: if f.vector == 14 { cpu.cr2() } else { 0 },
                    ring: (f.cs & 3) as u8,
                })
            }
            Err(e) => ret(Err(e)),
        },
    })
}

/// Reads an output call's name and chunk; a name over the limit is a bad
/// name, a chunk over the limit is too big.
fn output(ram: &GuestRam, args: Args, call: Call, cpu: &mut dyn CpuView) -> Action {
    if args.a1 > sf_abi::io::NAME_MAX as u64 {
        return ret(Err(HcError::Invalid));
    }
    let name = read(ram, caller_for(cpu, args.a1), args.a0, args.a1, args.a1);
    let data = name.and_then(|name| {
        let max = sf_abi::io::OUTPUT_CHUNK_MAX;
        Ok((
            name,
            read(ram, caller_for(cpu, args.a3), args.a2, args.a3, max)?,
        ))
    });
    match data {
        Ok((name, data)) => Action::Output {
            append: call == Call::OutputAppend,
            name,
            data,
        },
        Err(e) => ret(Err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(ram: &GuestRam, nr: u32, a0: u64, a1: u64) -> (Action, Vec<u8>) {
        call_as(ram, Caller::Kernel, nr, a0, a1)
    }

    struct Fixed(Caller);
    impl CpuView for Fixed {
        fn caller(&mut self) -> Caller {
            self.0
        }
        fn cr2(&mut self) -> u64 {
            0xdead
        }
    }

    fn call_as(ram: &GuestRam, caller: Caller, nr: u32, a0: u64, a1: u64) -> (Action, Vec<u8>) {
        let mut out = Vec::new();
        let a = handle(
            ram,
            Args {
                nr,
                a0,
                a1,
                a2: 0,
                a3: 0,
            },
            sf_abi::clone::RESULT_FLOOR as u64,
            &mut ConsoleSink::new(),
            &mut out,
            &mut Fixed(caller),
        )
        .unwrap();
        (a, out)
    }

    #[test]
    fn console_write_copies_exactly_the_buffer() {
        let ram = GuestRam::new(8 << 20).unwrap();
        ram.write(0x20_0000, b"hi there");
        assert_eq!(
            call(&ram, 1, 0x20_0000, 2),
            (Action::Return(2), b"hi".to_vec())
        );
    }

    #[test]
    fn output_calls_are_read_and_bounded() {
        let ram = GuestRam::new(8 << 20).unwrap();
        ram.write(0x20_0000, b"out.txt");
        ram.write(0x30_0000, b"data");
        let out = |a0, a1, a2, a3| {
            handle(
                &ram,
                Args {
                    nr: Call::OutputAppend as u32,
                    a0,
                    a1,
                    a2,
                    a3,
                },
                sf_abi::clone::RESULT_FLOOR as u64,
                &mut ConsoleSink::new(),
                &mut Vec::new(),
                &mut Fixed(Caller::Kernel),
            )
            .unwrap()
        };
        assert_eq!(
            out(0x20_0000, 7, 0x30_0000, 4),
            Action::Output {
                append: true,
                name: b"out.txt".to_vec(),
                data: b"data".to_vec()
            }
        );
        let err = |e: HcError| Action::Return(e.to_ret());
        assert_eq!(out(0x20_0000, 65, 0x30_0000, 4), err(HcError::Invalid));
        assert_eq!(out(u64::MAX, 7, 0x30_0000, 4), err(HcError::Fault));
        assert_eq!(out(0x20_0000, 7, (8 << 20) - 2, 4), err(HcError::Fault));
        let over = sf_abi::io::OUTPUT_CHUNK_MAX + 1;
        assert_eq!(out(0x20_0000, 7, 0, over), err(HcError::TooBig));
    }

    #[test]
    fn wild_arguments_get_error_codes() {
        let ram = GuestRam::new(8 << 20).unwrap();
        let fault = Action::Return(HcError::Fault.to_ret());
        assert_eq!(call(&ram, 1, u64::MAX, 2).0, fault);
        assert_eq!(
            call(&ram, 1, 0, u64::MAX).0,
            Action::Return(HcError::TooBig.to_ret())
        );
        assert_eq!(call(&ram, 3, 8 << 20, 1).0, fault);
        assert_eq!(call(&ram, 4, (8 << 20) - 8, 0).0, fault);
        assert_eq!(
            call(&ram, 77, 0, 0).0,
            Action::Return(HcError::NoSys.to_ret())
        );
    }

    #[test]
    fn panic_message_is_capped_not_refused() {
        let ram = GuestRam::new(8 << 20).unwrap();
        ram.write(0x20_0000, b"boom");
        match call(&ram, 3, 0x20_0000, u64::MAX).0 {
            Action::Stop(Outcome::Panicked { message }) => {
                assert!(message.starts_with("boom") && message.len() == 4096)
            }
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn exception_frame_is_decoded() {
        let ram = GuestRam::new(8 << 20).unwrap();
        let words: [u64; 10] = [0, 0, 0, 14, 6, 0x10_1000, 0x1b, 2, 0x7f_fff0, 0x23];
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        ram.write(0x5_0000, &bytes);
        let (a, _) = call(&ram, 4, 0x5_0000, 0);
        assert_eq!(
            a,
            Action::Stop(Outcome::Exception {
                vector: 14,
                error_code: 6,
                rip: 0x10_1000,
                rsp: 0x7f_fff0,
                cr2: 0xdead,
                ring: 3
            })
        );
        // The same frame from ring 3 is refused and the VM goes on.
        let user = Caller::User { cr3: Some(0x8000) };
        assert_eq!(
            call_as(&ram, user, 4, 0x5_0000, 0).0,
            Action::Return(HcError::Denied.to_ret())
        );
    }
}
