//! How a guest run ended, as plain data the CLI reports and maps to an exit
//! code. Its text is for a terminal: guest-controlled strings in it (a panic
//! message, a clone host's error) are escaped by [`crate::sanitize`].

use crate::sanitize::for_terminal;
use serde::{Deserialize, Serialize};
use sf_abi::hypercall::exception_name;
use std::fmt;
use std::time::Duration;

/// The vCPU's registers at the moment something went wrong.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterDump {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    /// In the order of [`RegisterDump::GPR_NAMES`].
    pub gprs: [u64; 15],
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub cs: u16,
    pub cpl: u8,
}

impl RegisterDump {
    pub const GPR_NAMES: [&'static str; 15] = [
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
        "r14", "r15",
    ];
}

impl fmt::Display for RegisterDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  rip={:#018x} rsp={:#018x} rflags={:#x} cs={:#x} (ring {})",
            self.rip, self.rsp, self.rflags, self.cs, self.cpl
        )?;
        let named: Vec<(&str, u64)> = Self::GPR_NAMES.iter().copied().zip(self.gprs).collect();
        for row in named.chunks(4) {
            let line: Vec<String> = row
                .iter()
                .map(|(n, v)| format!("{n:>3}={v:#018x}"))
                .collect();
            writeln!(f, "  {}", line.join(" "))?;
        }
        write!(
            f,
            "  cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            self.cr0, self.cr2, self.cr3, self.cr4, self.efer
        )
    }
}

/// Why the guest stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The guest called exit.
    Exited { status: i32 },
    /// The guest's panic handler reported this message.
    Panicked { message: String },
    /// A CPU exception reached the guest kernel's handler.
    Exception {
        vector: u64,
        error_code: u64,
        rip: u64,
        rsp: u64,
        cr2: u64,
        ring: u8,
    },
    /// The CPU shut down (usually a fault while delivering a fault).
    TripleFault { regs: RegisterDump },
    /// KVM could not emulate a ring-0 instruction.
    EmulationFailure { suberror: u32, regs: RegisterDump },
    /// The guest halted with nothing to wake it.
    Halted { regs: RegisterDump },
    /// The guest touched guest-physical memory that is not RAM.
    UnbackedAccess {
        gpa: u64,
        write: bool,
        regs: RegisterDump,
    },
    /// The run timed out.
    TimedOut { after: Duration, regs: RegisterDump },
    /// The host side failed while running the guest (a clone's VMM).
    HostError { message: String },
}

/// Exit codes of `snowflock run`, documented in its `--help`.
pub mod exit_code {
    pub const PANIC: i32 = 101;
    pub const CRASH: i32 = 102;
    pub const TIMEOUT: i32 = 124;
}

impl Outcome {
    /// The host process exit code that stands for this outcome.
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Exited { status } => status & 0xff,
            Outcome::Panicked { .. } => exit_code::PANIC,
            Outcome::TimedOut { .. } => exit_code::TIMEOUT,
            _ => exit_code::CRASH,
        }
    }

    /// Whether the guest ended on its own terms.
    pub fn is_clean_exit(&self) -> bool {
        matches!(self, Outcome::Exited { .. })
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Exited { status } => write!(f, "guest exited with status {status}"),
            Outcome::Panicked { message } => {
                write!(f, "guest panicked: {}", for_terminal(message))
            }
            Outcome::Exception {
                vector,
                error_code,
                rip,
                rsp,
                cr2,
                ring,
            } => {
                write!(f, "guest crashed: {} (vector {vector}) at rip {rip:#x} in ring {ring}, rsp {rsp:#x}", exception_name(*vector))?;
                if sf_abi::hypercall::has_error_code(*vector) {
                    write!(f, ", error code {error_code:#x}")?;
                }
                if *vector == 14 {
                    let what = if error_code & 2 != 0 {
                        "write to"
                    } else {
                        "read of"
                    };
                    let why = if error_code & 1 != 0 {
                        "a protected page"
                    } else {
                        "an unmapped page"
                    };
                    write!(f, ": {what} {cr2:#x}, {why}")?;
                }
                Ok(())
            }
            Outcome::TripleFault { regs } => {
                write!(f, "guest triple-faulted (CPU shutdown); registers:\n{regs}")
            }
            Outcome::EmulationFailure { suberror, regs } => {
                write!(f, "KVM emulation failure (internal error, suberror {suberror}): the guest ran a ring-0 instruction this host cannot emulate; registers:\n{regs}")
            }
            Outcome::Halted { regs } => {
                write!(f, "guest halted with no way to resume; registers:\n{regs}")
            }
            Outcome::UnbackedAccess { gpa, write, regs } => {
                let what = if *write { "wrote" } else { "read" };
                write!(f, "guest {what} guest-physical address {gpa:#x}, which is not RAM; registers:\n{regs}")
            }
            Outcome::TimedOut { after, regs } => write!(
                f,
                "guest timed out after {:.1} s at rip {:#x}",
                after.as_secs_f64(),
                regs.rip
            ),
            Outcome::HostError { message } => {
                write!(f, "the VMM failed: {}", for_terminal(message))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_documented_table() {
        assert_eq!(Outcome::Exited { status: 7 }.exit_code(), 7);
        assert_eq!(Outcome::Exited { status: 256 + 3 }.exit_code(), 3);
        assert_eq!(
            Outcome::Panicked {
                message: String::new()
            }
            .exit_code(),
            101
        );
        assert_eq!(
            Outcome::TripleFault {
                regs: RegisterDump::default()
            }
            .exit_code(),
            102
        );
    }

    #[test]
    fn guest_text_in_a_report_is_escaped() {
        let o = Outcome::Panicked {
            message: "\x1b[1A\rsnowflock: guest exited with status 0\nline 2".into(),
        };
        assert_eq!(
            o.to_string(),
            "guest panicked: \\x1b[1A\\x0dsnowflock: guest exited with status 0\nline 2"
        );
    }

    #[test]
    fn page_fault_report_names_the_address() {
        let o = Outcome::Exception {
            vector: 14,
            error_code: 6,
            rip: 0x101234,
            rsp: 0x3ff_fff0,
            cr2: 0x4001000,
            ring: 3,
        };
        let s = o.to_string();
        assert!(
            s.contains("page fault") && s.contains("0x101234") && s.contains("write to 0x4001000"),
            "{s}"
        );
    }
}
