//! The guest console as the host prints it: bytes from the console
//! hypercall or the legacy serial port, with a per-line prefix for clones
//! (so interleaved output from many VMs stays readable); and [`FdConsole`],
//! the writer for a console on a file descriptor that never blocks past the
//! run's deadline.

use std::io::{self, Write};
use std::os::fd::RawFd;

/// A buffered writer on a raw file descriptor (stdout) that waits for room
/// with `poll` bounded by the family's deadline: a consumer that stops
/// reading (a full pipe) cannot hold the VMM past its `--timeout` (it did,
/// 2 s became 8.2 s, as std's writers retry interrupted writes). Past the
/// deadline a write that would block fails with `TimedOut` and the output
/// is dropped. Write errors (a full disk: ENOSPC, a closed pipe: EPIPE) are
/// returned as they are, for the VMM to report.
pub struct FdConsole {
    fd: RawFd,
    buf: Vec<u8>,
}

/// Flush at a line end or at this many bytes, like std's line-buffered stdout.
const BUFFER: usize = 8 << 10;
/// Bytes per write(2): at most one pipe buffer page, so a write after poll
/// said "writable" does not block.
const CHUNK: usize = 4096;

impl FdConsole {
    /// The process's standard output.
    pub fn stdout() -> FdConsole {
        FdConsole {
            fd: libc::STDOUT_FILENO,
            buf: Vec::with_capacity(BUFFER),
        }
    }

    /// Waits until `fd` takes bytes, or the deadline passes.
    fn wait_writable(&self) -> io::Result<()> {
        loop {
            let wait_ms = crate::watchdog::poll_timeout_ms(crate::watchdog::thread_deadline());
            let mut p = libc::pollfd {
                fd: self.fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut p, 1, wait_ms) };
            if r > 0 {
                return Ok(());
            }
            if r == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the console's reader stopped reading and the run's time is up",
                ));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn drain(&mut self) -> io::Result<()> {
        while !self.buf.is_empty() {
            if let Err(e) = self.wait_writable() {
                self.buf.clear();
                return Err(e);
            }
            let n = self.buf.len().min(CHUNK);
            // SAFETY: writes from a live buffer of at least `n` bytes.
            let r = unsafe { libc::write(self.fd, self.buf.as_ptr().cast(), n) };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => continue,
                    _ => {
                        self.buf.clear();
                        return Err(e);
                    }
                }
            }
            self.buf.drain(..r as usize);
        }
        Ok(())
    }
}

impl Write for FdConsole {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= BUFFER || bytes.contains(&b'\n') {
            self.drain()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.drain()
    }
}

#[derive(Default)]
pub struct ConsoleSink {
    prefix: Option<String>,
    at_line_start: bool,
}

impl ConsoleSink {
    pub fn new() -> ConsoleSink {
        ConsoleSink {
            prefix: None,
            at_line_start: true,
        }
    }

    pub fn set_prefix(&mut self, prefix: String) {
        self.prefix = Some(prefix);
        self.at_line_start = true;
    }

    /// Writes guest bytes, prefixing each line when a prefix is set.
    pub fn write(&mut self, out: &mut dyn Write, bytes: &[u8]) -> io::Result<()> {
        let Some(prefix) = &self.prefix else {
            return out.write_all(bytes);
        };
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            if self.at_line_start {
                out.write_all(prefix.as_bytes())?;
            }
            out.write_all(line)?;
            self.at_line_start = line.ends_with(b"\n");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_stalled_reader_makes_writes_fail_at_the_deadline() {
        let (r, w) = crate::clone::process::pipe().unwrap();
        use std::os::fd::AsRawFd;
        let mut c = FdConsole {
            fd: w.as_raw_fd(),
            buf: Vec::new(),
        };
        let start = Instant::now();
        crate::watchdog::set_thread_deadline(Some(start + std::time::Duration::from_millis(200)));
        let line = [b'x'; 1000];
        let e = loop {
            if let Err(e) = c.write_all(&line).and_then(|()| c.flush()) {
                break e;
            }
        };
        crate::watchdog::set_thread_deadline(None);
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let took = start.elapsed();
        assert!(took < std::time::Duration::from_secs(2), "{took:?}");
        drop(r);
    }

    #[test]
    fn prefix_goes_on_every_line_even_across_writes() {
        let mut c = ConsoleSink::new();
        let mut out = Vec::new();
        c.write(&mut out, b"plain\n").unwrap();
        c.set_prefix("[clone 2] ".into());
        c.write(&mut out, b"a\nb").unwrap();
        c.write(&mut out, b"c\n\nd\n").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "plain\n[clone 2] a\n[clone 2] bc\n[clone 2] \n[clone 2] d\n"
        );
    }
}
