//! Frames on the report connection between a remote clone (or the origin's
//! memory holder) and the origin VMM: `[kind: u8][len: u32 LE][payload]`.

use std::io::{self, Read, Write};

/// Largest payload accepted: a report whose result is within the floor
/// (larger results come first in [`Frame::ResultPiece`]s).
pub const MAX_FRAME: usize = super::report::REPORT_MAX + 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// First frame of every connection: the group token and who speaks
    /// (a clone ID; 0 for the origin's memory holder).
    Hello { token: [u8; 16], id: u32 },
    /// The clone still runs.
    Heartbeat,
    /// The clone ended: an encoded [`super::report::CloneReport`].
    Report(Vec<u8>),
    /// Origin to clone: stop now.
    Kill,
    /// Memory holder to origin: clone `id` could not be started on its host.
    Failed { id: u32, reason: String },
    /// Console output of the clone (already prefixed with its clone path).
    Console(Vec<u8>),
    /// A piece of one of the clone's output files (at most
    /// [`OUTPUT_PIECE`] bytes): the origin checks the name and the cap
    /// again and writes it under its own output directory.
    Output {
        append: bool,
        name: Vec<u8>,
        data: Vec<u8>,
    },
    /// A piece of an output file of one of the clone's own clones (on the
    /// clone's host), relayed by the clone: `sub` is that VM's ID path
    /// below the clone (`3`, or `3.1` for a clone of clone 3). Between a
    /// local clone and its parent (a pipe) `sub` is empty for the clone
    /// itself. The origin checks `sub`, the name and the cap again.
    NestedOutput {
        sub: Vec<u8>,
        append: bool,
        name: Vec<u8>,
        data: Vec<u8>,
    },
    /// The next piece (at most [`OUTPUT_PIECE`] bytes) of the clone's
    /// result, sent before its report: the origin appends the pieces, up
    /// to the ticket's result cap, and the report's own result is empty.
    ResultPiece(Vec<u8>),
}

/// Largest piece of an output file (or of a result) one frame carries.
pub const OUTPUT_PIECE: usize = 32 << 10;

impl Frame {
    /// A piece of an output file: of the sender itself (`sub` None), or
    /// relayed for the clone at ID path `sub` below it.
    pub fn output_piece(sub: Option<&[u8]>, append: bool, name: &[u8], data: &[u8]) -> Frame {
        match sub {
            None => Frame::Output {
                append,
                name: name.to_vec(),
                data: data.to_vec(),
            },
            Some(sub) => Frame::NestedOutput {
                sub: sub.to_vec(),
                append,
                name: name.to_vec(),
                data: data.to_vec(),
            },
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, Vec<u8>) = match self {
            Frame::Hello { token, id } => (1, [&token[..], &id.to_le_bytes()].concat()),
            Frame::Heartbeat => (2, Vec::new()),
            Frame::Report(r) => (3, r.clone()),
            Frame::Kill => (4, Vec::new()),
            Frame::Failed { id, reason } => {
                (5, [&id.to_le_bytes()[..], reason.as_bytes()].concat())
            }
            Frame::Console(bytes) => (6, bytes.clone()),
            Frame::Output { append, name, data } => {
                let name_len = name.len().min(255);
                let mut p = Vec::with_capacity(2 + name_len + data.len());
                p.push(*append as u8);
                p.push(name_len as u8);
                p.extend_from_slice(&name[..name_len]);
                p.extend_from_slice(data);
                (7, p)
            }
            Frame::ResultPiece(bytes) => (8, bytes.clone()),
            Frame::NestedOutput {
                sub,
                append,
                name,
                data,
            } => {
                let (sub_len, name_len) = (sub.len().min(255), name.len().min(255));
                let mut p = Vec::with_capacity(3 + sub_len + name_len + data.len());
                p.push(*append as u8);
                p.push(sub_len as u8);
                p.extend_from_slice(&sub[..sub_len]);
                p.push(name_len as u8);
                p.extend_from_slice(&name[..name_len]);
                p.extend_from_slice(data);
                (9, p)
            }
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Decodes the first frame of `buf`: `Ok(Some((frame, used)))`,
    /// `Ok(None)` if more bytes are needed, `Err` if the bytes are garbage.
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, String> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_le_bytes(buf[1..5].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(format!("frame of {len} bytes is over the limit"));
        }
        if buf.len() < 5 + len {
            return Ok(None);
        }
        let p = &buf[5..5 + len];
        let id = |p: &[u8]| {
            p.get(..4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        };
        let f = match buf[0] {
            1 if len == 20 => Frame::Hello {
                token: p[..16].try_into().expect("16 bytes"),
                id: id(&p[16..]).expect("4 bytes"),
            },
            2 if len == 0 => Frame::Heartbeat,
            3 => Frame::Report(p.to_vec()),
            4 if len == 0 => Frame::Kill,
            5 if len >= 4 => Frame::Failed {
                id: id(p).expect("4 bytes"),
                reason: String::from_utf8_lossy(&p[4..]).into_owned(),
            },
            6 => Frame::Console(p.to_vec()),
            7 if len >= 2 && p[0] <= 1 && len >= 2 + p[1] as usize => Frame::Output {
                append: p[0] == 1,
                name: p[2..2 + p[1] as usize].to_vec(),
                data: p[2 + p[1] as usize..].to_vec(),
            },
            8 if len <= OUTPUT_PIECE => Frame::ResultPiece(p.to_vec()),
            9 => {
                nested_output(p).ok_or_else(|| format!("malformed nested output of {len} bytes"))?
            }
            k => return Err(format!("unknown frame kind {k} of {len} bytes")),
        };
        Ok(Some((f, 5 + len)))
    }

    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.encode())
    }

    /// Blocking read of one frame.
    pub fn read_from(r: &mut impl Read) -> io::Result<Frame> {
        let mut head = [0u8; 5];
        r.read_exact(&mut head)?;
        let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame over the limit",
            ));
        }
        let mut buf = head.to_vec();
        buf.resize(5 + len, 0);
        r.read_exact(&mut buf[5..])?;
        match Frame::decode(&buf) {
            Ok(Some((f, _))) => Ok(f),
            Ok(None) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short frame")),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

/// `[append][sub len][sub][name len][name][data]`, lengths checked.
fn nested_output(p: &[u8]) -> Option<Frame> {
    let (&append, rest) = p.split_first()?;
    let (&sub_len, rest) = rest.split_first()?;
    let sub = rest.get(..sub_len as usize)?;
    let (&name_len, rest) = rest.get(sub_len as usize..)?.split_first()?;
    let name = rest.get(..name_len as usize)?;
    (append <= 1).then(|| Frame::NestedOutput {
        sub: sub.to_vec(),
        append: append == 1,
        name: name.to_vec(),
        data: rest[name_len as usize..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_partial_input_waits() {
        for f in [
            Frame::Hello {
                token: [7; 16],
                id: 3,
            },
            Frame::Heartbeat,
            Frame::Report(vec![1, 2, 3]),
            Frame::Kill,
            Frame::Failed {
                id: 2,
                reason: "peer down".into(),
            },
            Frame::Console(b"[clone 2] hi\n".to_vec()),
            Frame::Output {
                append: true,
                name: b"out.txt".to_vec(),
                data: vec![9; OUTPUT_PIECE],
            },
            Frame::ResultPiece(vec![5; OUTPUT_PIECE]),
            Frame::NestedOutput {
                sub: b"3.1".to_vec(),
                append: false,
                name: b"img.png".to_vec(),
                data: vec![4; OUTPUT_PIECE],
            },
            Frame::NestedOutput {
                sub: Vec::new(),
                append: true,
                name: b"x".to_vec(),
                data: Vec::new(),
            },
        ] {
            let b = f.encode();
            assert_eq!(Frame::decode(&b), Ok(Some((f.clone(), b.len()))));
            assert_eq!(Frame::decode(&b[..b.len() - 1]).unwrap_or(None), None);
        }
    }

    #[test]
    fn garbage_is_refused() {
        assert!(Frame::decode(&[9, 0, 0, 0, 0]).is_err());
        assert!(
            Frame::decode(&[1, 3, 0, 0, 0, 1, 2, 3]).is_err(),
            "short hello"
        );
        assert!(
            Frame::decode(&[3, 0xff, 0xff, 0xff, 0x7f]).is_err(),
            "huge frame"
        );
        assert!(
            Frame::decode(&[7, 2, 0, 0, 0, 0, 5]).is_err(),
            "name past the end"
        );
        assert!(
            Frame::decode(&[7, 2, 0, 0, 0, 2, 0]).is_err(),
            "bad append flag"
        );
        assert!(
            Frame::decode(&[9, 4, 0, 0, 0, 0, 5, b'1', b'2']).is_err(),
            "nested path past the end"
        );
        assert!(
            Frame::decode(&[9, 5, 0, 0, 0, 0, 1, b'1', 3, b'a']).is_err(),
            "nested name past the end"
        );
        assert!(
            Frame::decode(&[9, 4, 0, 0, 0, 7, 0, 0, b'x']).is_err(),
            "bad nested append flag"
        );
        let mut big = Frame::ResultPiece(vec![0; OUTPUT_PIECE + 1]).encode();
        assert!(Frame::decode(&big).is_err(), "result piece over the limit");
        big.truncate(5);
        assert_eq!(Frame::decode(&big), Ok(None));
    }
}

#[cfg(test)]
mod hostile_input {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(Some((_, used))) = Frame::decode(&bytes) {
                prop_assert!(used <= bytes.len());
            }
        }
    }
}
