//! The parent's side of the output pipes of local clones whose outputs it
//! relays to the origin (see `output`): frames are read as they come while
//! the parent waits in join, and each is passed on with the clone's ID
//! path in front. A clone writes its outputs before its report, so once
//! the report is in, what is left of them is already in the pipe.

use super::wire::Frame;
use crate::output::Outputs;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};

/// One local clone's output pipe.
pub(crate) struct Relay {
    id: u32,
    /// None once at its end or found garbled: closing the read end makes
    /// the clone's next write fail (`EPIPE`) instead of waiting forever
    /// on a pipe nobody reads.
    pipe: Option<std::fs::File>,
    /// Bytes read but not yet a whole frame (at most one frame's worth).
    pending: Vec<u8>,
}

impl Relay {
    pub fn new(id: u32, fd: OwnedFd) -> Relay {
        Relay {
            id,
            pipe: Some(fd.into()),
            pending: Vec::new(),
        }
    }

    /// The pipe while it is still read.
    pub fn raw_fd(&self) -> Option<i32> {
        self.pipe.as_ref().map(|p| p.as_raw_fd())
    }

    /// One read of what the pipe holds (call when poll says it is
    /// readable), passing every whole frame on through `outputs`. The end
    /// of the pipe, an error or a garbled frame closes it.
    pub fn read_some(&mut self, outputs: &Outputs) {
        let Some(pipe) = self.pipe.as_mut() else {
            return;
        };
        let mut buf = vec![0u8; 64 << 10];
        let n = match pipe.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return,
            Ok(0) | Err(_) => {
                self.pipe = None;
                return;
            }
            Ok(n) => n,
        };
        self.pending.extend_from_slice(&buf[..n]);
        self.pass_on(outputs);
    }

    fn pass_on(&mut self, outputs: &Outputs) {
        let mut used = 0;
        loop {
            match Frame::decode(&self.pending[used..]) {
                Ok(None) => break,
                Ok(Some((
                    Frame::NestedOutput {
                        sub,
                        append,
                        name,
                        data,
                    },
                    n,
                ))) => {
                    used += n;
                    let mut path = self.id.to_string().into_bytes();
                    if !sub.is_empty() {
                        path.push(b'.');
                        path.extend_from_slice(&sub);
                    }
                    if let Err(e) = outputs.relay(&path, append, &name, &data) {
                        tracing::warn!(clone = self.id, "a clone's output was not relayed: {e}");
                    }
                }
                Ok(Some(_)) => {
                    tracing::warn!(clone = self.id, "unexpected frame kind on an output pipe");
                    self.pipe = None;
                    break;
                }
                Err(e) => {
                    tracing::warn!(clone = self.id, "garbled output pipe: {e}");
                    self.pipe = None;
                    break;
                }
            }
        }
        if self.pipe.is_none() {
            self.pending = Vec::new();
        } else {
            self.pending.drain(..used);
        }
    }
}
