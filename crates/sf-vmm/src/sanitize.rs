//! Guest text on its way to a human's terminal. A guest controls its panic
//! message and its console; raw, an escape sequence in either could clear
//! the screen, rewrite the status line above it ("guest exited with status
//! 0"), set the window title or, on some terminals, write the clipboard.
//! Control characters (C0, DEL, C1 such as the one-byte CSI U+009B) and the
//! bidirectional overrides that reorder a line are shown escaped (`\x1b`,
//! `\u{202e}`), so what the guest tried stays visible; `\n` and `\t` pass.
//!
//! The console on stdout is sanitized only when stdout is a terminal: piped
//! or redirected, it is the guest's data, byte for byte (a guest may write
//! binary output to a file). Everything the VMM prints about a guest on
//! stderr (panic messages, crash reports) is always sanitized.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{self, Write};

/// Whether `c` must not reach a terminal raw.
fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

fn escape(c: char, out: &mut String) {
    let _ = match c as u32 {
        n @ 0..=0xff => write!(out, "\\x{n:02x}"),
        n => write!(out, "\\u{{{n:x}}}"),
    };
}

/// `s` with every unsafe character escaped (borrowed when there is none).
pub fn for_terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if is_unsafe(c) {
            escape(c, &mut out);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A writer for a terminal: decodes the byte stream as UTF-8 (a character
/// split across two writes is kept until its end arrives; invalid bytes
/// become U+FFFD) and escapes what [`for_terminal`] escapes.
pub struct TerminalWriter<W: Write> {
    inner: W,
    /// The start of a character whose remaining bytes have not come yet.
    pending: Vec<u8>,
}

impl<W: Write> TerminalWriter<W> {
    pub fn new(inner: W) -> Self {
        TerminalWriter {
            inner,
            pending: Vec::new(),
        }
    }
}

impl<W: Write> Write for TerminalWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        let mut text = String::with_capacity(self.pending.len());
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    text.push_str(&for_terminal(s));
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (ok, bad) = rest.split_at(e.valid_up_to());
                    text.push_str(&for_terminal(
                        std::str::from_utf8(ok).expect("valid up to here"),
                    ));
                    match e.error_len() {
                        Some(n) => {
                            text.push('\u{fffd}');
                            rest = &bad[n..];
                        }
                        // An incomplete character at the end: wait for more.
                        None => {
                            rest = bad;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        self.inner.write_all(text.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> Drop for TerminalWriter<W> {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let _ = self.inner.write_all("\u{fffd}".as_bytes());
            let _ = self.inner.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_keeps_newlines_and_tabs() {
        assert_eq!(
            for_terminal("a\x1b[2J\tb\r\n\x07\u{9b}31m\u{202e}z\u{7f}"),
            "a\\x1b[2J\tb\\x0d\n\\x07\\x9b31m\\u{202e}z\\x7f"
        );
        assert!(matches!(for_terminal("plain ü text\n"), Cow::Borrowed(_)));
    }

    #[test]
    fn the_stream_survives_characters_split_across_writes() {
        let mut out = Vec::new();
        {
            let mut w = TerminalWriter::new(&mut out);
            let bytes = "é\u{1b}]0;x\u{7}ok\n".as_bytes();
            for b in bytes {
                w.write_all(std::slice::from_ref(b)).unwrap();
            }
            // A C1 CSI as UTF-8, split; then an invalid byte.
            w.write_all(&[0xc2]).unwrap();
            w.write_all(&[0x9b, b'A', 0xff, b'B']).unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "é\\x1b]0;x\\x07ok\n\\x9bA\u{fffd}B"
        );
    }

    #[test]
    fn an_unfinished_character_at_the_end_is_not_lost_silently() {
        let mut out = Vec::new();
        TerminalWriter::new(&mut out)
            .write_all(&[b'a', 0xe2, 0x82])
            .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "a\u{fffd}");
    }
}
