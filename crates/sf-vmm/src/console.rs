//! The guest console as the host prints it: bytes from the console
//! hypercall or the legacy serial port, with a per-line prefix for clones
//! (so interleaved output from many VMs stays readable).

use std::io::{self, Write};

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
