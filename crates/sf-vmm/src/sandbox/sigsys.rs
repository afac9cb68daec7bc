//! The SIGSYS handler behind a seccomp kill: one line on stderr naming the
//! system call and the role, then death by SIGSYS.
//!
//! Only async-signal-safe work: the line is formatted into a stack buffer
//! and written with one raw write(2), which every role's list allows.
//! Then the handler makes a call no list allows while SIGSYS is still
//! blocked (it is the signal being handled): the kernel then resets SIGSYS
//! to its default action and delivers it, so the process dies *of SIGSYS*
//! and its parent can tell a seccomp kill from any other end.

use super::names::NAMES;
use super::Role;
use std::sync::atomic::{AtomicU8, Ordering};

static ROLE: AtomicU8 = AtomicU8::new(0);

/// The call the handler makes to die: `tuxcall` is not implemented on
/// x86-64 (so it has no effect if it ever ran) and no role allows it.
pub(super) const DEATH_CALL: i64 = libc::SYS_tuxcall;

/// Offset of `si_syscall` in a SIGSYS `siginfo_t` (x86-64: signo, errno,
/// code, padding, then `_sigsys { void *call_addr; int syscall; ... }`).
const SI_SYSCALL_OFFSET: usize = 24;

pub(super) fn set_role(role: Role) {
    ROLE.store(role as u8, Ordering::Relaxed);
}

fn role_name() -> &'static str {
    Role::ALL
        .into_iter()
        .find(|r| *r as u8 == ROLE.load(Ordering::Relaxed))
        .map_or("unknown", Role::name)
}

pub(super) fn install(role: Role) -> std::io::Result<()> {
    set_role(role);
    // SAFETY: a zeroed sigaction is valid; the handler has the SA_SIGINFO
    // signature and is async-signal-safe (see the module comment).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A fixed-size line buffer; no allocation in a signal handler.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_number(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The line for a trapped call `nr` with its first two arguments (which
/// tell an ioctl request, a socket family or a signal apart).
pub(super) fn message(nr: i64, args: [u64; 2], role: &str) -> ([u8; 256], usize) {
    let mut l = Line {
        buf: [0; 256],
        len: 0,
    };
    let name = usize::try_from(nr)
        .ok()
        .and_then(|i| NAMES.get(i))
        .filter(|n| !n.is_empty())
        .copied()
        .unwrap_or("unknown");
    l.push(b"snowflock: seccomp: syscall ");
    l.push_number(nr as u64);
    l.push(b" (");
    l.push(name.as_bytes());
    l.push(b") is not allowed for the ");
    l.push(role.as_bytes());
    l.push(b" role (arguments ");
    l.push_number(args[0]);
    l.push(b", ");
    l.push_number(args[1]);
    l.push(b")\n");
    (l.buf, l.len)
}

/// `si_code` of a SIGSYS raised by a seccomp filter (not sent by kill(2)).
const SYS_SECCOMP: i32 = 1;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo.
    if unsafe { (*info).si_code } != SYS_SECCOMP {
        // Sent by another process: no call to name; die of it all the same.
        let line = b"snowflock: killed by a SIGSYS another process sent (not a seccomp kill)\n";
        // SAFETY: async-signal-safe raw calls.
        unsafe {
            libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), line.len());
            libc::syscall(DEATH_CALL);
            libc::_exit(128 + libc::SIGSYS);
        }
    }
    // SAFETY: the kernel hands a valid siginfo for SIGSYS, whose `_sigsys`
    // member holds the trapped call's number at SI_SYSCALL_OFFSET.
    let nr = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    // SAFETY: with SA_SIGINFO the third argument is the interrupted
    // context; its saved rdi and rsi are the call's first two arguments.
    let args = unsafe {
        let g = &(*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs;
        [
            g[libc::REG_RDI as usize] as u64,
            g[libc::REG_RSI as usize] as u64,
        ]
    };
    let (buf, len) = message(nr as i64, args, role_name());
    // SAFETY: raw write(2) and syscall(2) are async-signal-safe; `buf`
    // holds `len` initialized bytes.
    unsafe {
        libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), len);
        // Trapped again while SIGSYS is blocked: the kernel kills the process.
        libc::syscall(DEATH_CALL);
        // Only reached if the filter was somehow gone: still die distinctly.
        libc::_exit(128 + libc::SIGSYS);
    }
}
