//! The page protocol on the wire: fixed-size little-endian frames, so a
//! peer can never make the other side allocate or wait for more than one
//! batch, and a refused request leaves the stream in step.
//!
//! ```text
//! client -> server  hello     magic "SFPM" | version u16 | flags u16 (0) | token [16]     24 bytes
//! server -> client  reply     magic "SFPM" | version u16 | status u8 | reason u8 | region_len u64   16 bytes
//!                             status 0 = accepted, 1 = refused (then the server closes)
//! client -> server  request   offset u64 | pages u32                                       12 bytes
//!                             bit 31 of `pages` ([`UNICAST_FLAG`]): answer over this connection
//!                             even if the pages are on their way by multicast (a lost push)
//!                             bit 29 ([`ANNOUNCED_FLAG`]): part of a range the guest announced
//!                             and the clone streams ahead of its reads
//! client -> server  report    backlog_bytes u64 | lost u32 with bit 30 set (not bit 31): a
//!                             receiver's losses and socket backlog; no response
//! server -> client  response  status u8 | reason u8 | 0 u16 | pages u32 | offset u64       16 bytes
//!                   status 0: page map, ceil(pages / 8) bytes, bit i set = page i has data
//!                             (bit i of byte i / 8, least significant first), then the
//!                             4096 bytes of every data page, in order; a clear bit is an
//!                             all-zero page and costs no data
//!                   status 1: refused with `reason`; nothing follows, the connection stays open
//!                   status 2: pushed: the first `pages` (1..=asked) pages go to the clone
//!                             group's multicast instead (lockstep); the page map follows,
//!                             no data: clear bits are zero pages, set bits come as datagrams;
//!                             then seq_end u64: datagrams the holder had sent to the group
//!                             when it answered (the pages' sequence numbers are below it)
//! ```
//!
//! A request must be page-aligned, 1..=[`MAX_BATCH_PAGES`] pages, and inside
//! the served region. Every `decode` accepts any bytes without panicking.
//!
//! Version 2 added the pushed answer (with its `seq_end`), the unicast
//! flag and the report frame. A version 1 peer would read a pushed answer as a bad status and
//! send its reports as requests, so the two refuse each other at the hello
//! ([`RefuseReason::UnsupportedVersion`]) instead. Version 3 added the
//! announced flag, which a version 2 holder would refuse as a bad page
//! count.

use std::io::{self, Read, Write};

pub const PAGE_SIZE: usize = 4096;
pub const MAGIC: [u8; 4] = *b"SFPM";
pub const PROTOCOL_VERSION: u16 = 3;
/// Most pages one request may ask for (2 MiB): bounds what a client buffers
/// and how long one request holds a server thread.
pub const MAX_BATCH_PAGES: u32 = 512;

pub const HELLO_LEN: usize = 24;
pub const HELLO_REPLY_LEN: usize = 16;
pub const REQUEST_LEN: usize = 12;
pub const RESPONSE_HEADER_LEN: usize = 16;
/// Largest page map (for [`MAX_BATCH_PAGES`]).
pub const MAX_PAGE_MAP_LEN: usize = MAX_BATCH_PAGES as usize / 8;
/// What follows a pushed answer's page map: its `seq_end` (u64).
pub const PUSHED_TRAILER_LEN: usize = 8;

const STATUS_OK: u8 = 0;
const STATUS_REFUSED: u8 = 1;
const STATUS_PUSHED: u8 = 2;
/// Set in a request's page count: serve it here, not by multicast.
pub const UNICAST_FLAG: u32 = 1 << 31;
/// Set in a request's page count: the pages are part of a range the guest
/// announced (`input::will_read`) and the clone streams them ahead of its
/// own reads. Such a stream is no scan that other clones follow: two
/// clones each streaming its own half of an input meet only where the
/// halves join (see `super::lockstep`).
pub const ANNOUNCED_FLAG: u32 = 1 << 29;
/// Bit 30 of a request's page count: not a request but a receiver's report
/// of its losses and backlog (`super::pacer::Report`), never answered.
pub const REPORT_FLAG: u32 = 1 << 30;

/// Why a server refused a connection or a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseReason {
    BadMagic,
    UnsupportedVersion,
    BadToken,
    Busy,
    OutOfRange,
    Unaligned,
    BadPageCount,
    /// A code this side does not know (a newer peer).
    Other(u8),
}

impl RefuseReason {
    pub fn code(self) -> u8 {
        match self {
            RefuseReason::BadMagic => 1,
            RefuseReason::UnsupportedVersion => 2,
            RefuseReason::BadToken => 3,
            RefuseReason::Busy => 4,
            RefuseReason::OutOfRange => 5,
            RefuseReason::Unaligned => 6,
            RefuseReason::BadPageCount => 7,
            RefuseReason::Other(c) => c,
        }
    }

    pub fn from_code(code: u8) -> RefuseReason {
        match code {
            1 => RefuseReason::BadMagic,
            2 => RefuseReason::UnsupportedVersion,
            3 => RefuseReason::BadToken,
            4 => RefuseReason::Busy,
            5 => RefuseReason::OutOfRange,
            6 => RefuseReason::Unaligned,
            7 => RefuseReason::BadPageCount,
            c => RefuseReason::Other(c),
        }
    }
}

impl std::fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefuseReason::BadMagic => write!(f, "not a SnowFlock page client (bad magic)"),
            RefuseReason::UnsupportedVersion => write!(
                f,
                "unsupported protocol version (this side speaks {PROTOCOL_VERSION}; run the same \
                 SnowFlock release on the origin and the clone hosts)"
            ),
            RefuseReason::BadToken => write!(f, "wrong clone-group token"),
            RefuseReason::Busy => write!(f, "too many connections"),
            RefuseReason::OutOfRange => write!(f, "pages outside the served region"),
            RefuseReason::Unaligned => write!(f, "offset not page-aligned"),
            RefuseReason::BadPageCount => {
                write!(f, "page count not in 1..={MAX_BATCH_PAGES}")
            }
            RefuseReason::Other(c) => write!(f, "reason code {c}"),
        }
    }
}

/// A frame that cannot be what the protocol says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("bad magic {0:02x?} (not a SnowFlock page server)")]
    BadMagic([u8; 4]),
    #[error("unknown status byte {0}")]
    BadStatus(u8),
    #[error("peer speaks protocol version {0}, this side speaks {PROTOCOL_VERSION}")]
    Version(u16),
    #[error("page map marks pages past the {0} of the batch")]
    StrayMapBits(u32),
    #[error("batch of {0} pages; the limit is {MAX_BATCH_PAGES}")]
    TooManyPages(u32),
    #[error("reply for {got_pages} pages at offset {got_offset:#x}, asked for {want_pages} at {want_offset:#x}")]
    WrongReply {
        want_offset: u64,
        want_pages: u32,
        got_offset: u64,
        got_pages: u32,
    },
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The client's first frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub token: [u8; 16],
}

impl Hello {
    pub fn new(token: [u8; 16]) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            token,
        }
    }

    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        // 6..8: flags, none defined yet.
        b[8..24].copy_from_slice(&self.token);
        b
    }

    /// Checks only the magic: the server answers a wrong version with a
    /// refusal the client understands, rather than hanging up.
    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Hello, ProtocolError> {
        check_magic(b)?;
        Ok(Hello {
            version: u16_at(b, 4),
            token: b[8..24].try_into().expect("16 bytes"),
        })
    }
}

fn check_magic(b: &[u8]) -> Result<(), ProtocolError> {
    let magic: [u8; 4] = b[0..4].try_into().expect("4 bytes");
    if magic == MAGIC {
        Ok(())
    } else {
        Err(ProtocolError::BadMagic(magic))
    }
}

/// The server's answer to a [`Hello`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloReply {
    Accept { version: u16, region_len: u64 },
    Refuse { version: u16, reason: RefuseReason },
}

impl HelloReply {
    pub fn encode(&self) -> [u8; HELLO_REPLY_LEN] {
        let mut b = [0u8; HELLO_REPLY_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        let (version, status, reason, len) = match *self {
            HelloReply::Accept {
                version,
                region_len,
            } => (version, STATUS_OK, 0, region_len),
            HelloReply::Refuse { version, reason } => (version, STATUS_REFUSED, reason.code(), 0),
        };
        b[4..6].copy_from_slice(&version.to_le_bytes());
        b[6] = status;
        b[7] = reason;
        b[8..16].copy_from_slice(&len.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HELLO_REPLY_LEN]) -> Result<HelloReply, ProtocolError> {
        check_magic(b)?;
        let version = u16_at(b, 4);
        match b[6] {
            STATUS_OK => Ok(HelloReply::Accept {
                version,
                region_len: u64_at(b, 8),
            }),
            STATUS_REFUSED => Ok(HelloReply::Refuse {
                version,
                reason: RefuseReason::from_code(b[7]),
            }),
            s => Err(ProtocolError::BadStatus(s)),
        }
    }
}

/// Why a clone asks for pages (a flag in the request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// A fault, its readahead or the whole-region prefetch.
    Fault,
    /// Pages pushed to it that never arrived: answer over TCP.
    Unicast,
    /// Part of a range the guest announced, streamed ahead of its reads.
    Announced,
}

/// `pages` pages from byte `offset` of the served region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub offset: u64,
    pub pages: u32,
}

impl Request {
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..12].copy_from_slice(&self.pages.to_le_bytes());
        b
    }

    /// The request with the flag of `ask` set.
    pub fn encode_as(&self, ask: Ask) -> [u8; REQUEST_LEN] {
        let flag = match ask {
            Ask::Fault => 0,
            Ask::Unicast => UNICAST_FLAG,
            Ask::Announced => ANNOUNCED_FLAG,
        };
        let mut b = self.encode();
        b[8..12].copy_from_slice(&(self.pages | flag).to_le_bytes());
        b
    }

    /// Any 12 bytes are a request; [`Request::check`] says if it is a good one.
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Request {
        Request {
            offset: u64_at(b, 0),
            pages: u32_at(b, 8),
        }
    }

    /// [`Request::decode`], with the flags taken out of the count (the
    /// unicast flag wins if both are set).
    pub fn decode_flagged(b: &[u8; REQUEST_LEN]) -> (Request, Ask) {
        let r = Request::decode(b);
        let ask = if r.pages & UNICAST_FLAG != 0 {
            Ask::Unicast
        } else if r.pages & ANNOUNCED_FLAG != 0 {
            Ask::Announced
        } else {
            Ask::Fault
        };
        (
            Request {
                offset: r.offset,
                pages: r.pages & !(UNICAST_FLAG | ANNOUNCED_FLAG),
            },
            ask,
        )
    }

    /// Whether a server of `region_len` bytes may answer this request.
    pub fn check(&self, region_len: u64) -> Result<(), RefuseReason> {
        if self.pages == 0 || self.pages > MAX_BATCH_PAGES {
            return Err(RefuseReason::BadPageCount);
        }
        if !self.offset.is_multiple_of(PAGE_SIZE as u64) {
            return Err(RefuseReason::Unaligned);
        }
        let len = u64::from(self.pages) * PAGE_SIZE as u64;
        match self.offset.checked_add(len) {
            Some(end) if end <= region_len => Ok(()),
            _ => Err(RefuseReason::OutOfRange),
        }
    }
}

/// Which pages of a batch carry data; the others are all zeros.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageMap {
    pages: u32,
    bits: [u8; MAX_PAGE_MAP_LEN],
}

impl PageMap {
    /// A map of `pages` (at most [`MAX_BATCH_PAGES`]) zero pages.
    pub fn new(pages: u32) -> PageMap {
        assert!(pages <= MAX_BATCH_PAGES, "{pages} pages in one batch");
        PageMap {
            pages,
            bits: [0; MAX_PAGE_MAP_LEN],
        }
    }

    pub fn pages(&self) -> u32 {
        self.pages
    }

    pub fn set_data(&mut self, page: u32) {
        assert!(page < self.pages);
        self.bits[page as usize / 8] |= 1 << (page % 8);
    }

    pub fn has_data(&self, page: u32) -> bool {
        page < self.pages && self.bits[page as usize / 8] & (1 << (page % 8)) != 0
    }

    pub fn data_pages(&self) -> u32 {
        (0..self.pages).filter(|&p| self.has_data(p)).count() as u32
    }

    /// The map as sent: `ceil(pages / 8)` bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits[..page_map_len(self.pages)]
    }

    /// Runs of consecutive pages of one kind: `(first, count, has_data)`.
    /// Installing a run costs one ioctl, however long it is.
    pub fn runs(&self) -> impl Iterator<Item = (u32, u32, bool)> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            if at >= self.pages {
                return None;
            }
            let kind = self.has_data(at);
            let start = at;
            while at < self.pages && self.has_data(at) == kind {
                at += 1;
            }
            Some((start, at - start, kind))
        })
    }

    /// Reads a map for `pages` pages; bits past `pages` must be clear, so a
    /// peer cannot smuggle extra data pages past the count.
    fn read_from(r: &mut impl Read, pages: u32) -> Result<PageMap, WireError> {
        let mut map = PageMap::new(pages);
        let len = page_map_len(pages);
        r.read_exact(&mut map.bits[..len])?;
        if !pages.is_multiple_of(8) && map.bits[len - 1] >> (pages % 8) != 0 {
            return Err(ProtocolError::StrayMapBits(pages).into());
        }
        Ok(map)
    }
}

pub fn page_map_len(pages: u32) -> usize {
    (pages as usize).div_ceil(8)
}

/// Whether a page is all zeros (and so travels as one clear bit).
pub fn is_zero_page(page: &[u8]) -> bool {
    // Word-wise: the bulk of a page check is memory bandwidth either way,
    // but byte-wise comparisons are several times slower.
    let (head, words, tail) = {
        // SAFETY: any initialized bytes are a valid u64; align_to only
        // splits the slice at alignment boundaries.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// A server's answer to one request, before its page data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Pages(PageMap),
    Refused(RefuseReason),
    /// The first `map.pages()` pages come by multicast (set bits) or are
    /// zero pages (clear bits), in datagrams numbered below `seq_end`
    /// unless another connection's push of them was still going out.
    Pushed {
        map: PageMap,
        seq_end: u64,
    },
}

/// Reading a frame failed: the transport, or the peer broke the protocol.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Encodes a response header.
pub fn encode_response_header(
    req: &Request,
    refused: Option<RefuseReason>,
) -> [u8; RESPONSE_HEADER_LEN] {
    let mut b = [0u8; RESPONSE_HEADER_LEN];
    match refused {
        None => b[0] = STATUS_OK,
        Some(reason) => {
            b[0] = STATUS_REFUSED;
            b[1] = reason.code();
        }
    }
    b[4..8].copy_from_slice(&req.pages.to_le_bytes());
    b[8..16].copy_from_slice(&req.offset.to_le_bytes());
    b
}

/// Reads the answer to `req` and, for pages, its data into `data` (resized
/// to the data pages only). Returns the response and the bytes read.
/// The header must echo `req`, so a reply can never land on the wrong pages.
pub fn read_response(
    r: &mut impl Read,
    req: &Request,
    data: &mut Vec<u8>,
) -> Result<(Response, usize), WireError> {
    let mut h = [0u8; RESPONSE_HEADER_LEN];
    r.read_exact(&mut h)?;
    let (pages, offset) = (u32_at(&h, 4), u64_at(&h, 8));
    // A pushed answer may cover only the first pages of the request.
    let pushed_ok = h[0] == STATUS_PUSHED && (1..=req.pages).contains(&pages);
    // A refusal echoes the request as sent, unicast flag and all.
    let refused_ok = h[0] == STATUS_REFUSED && pages & !UNICAST_FLAG == req.pages & !UNICAST_FLAG;
    if (pages != req.pages && !pushed_ok && !refused_ok) || offset != req.offset {
        return Err(ProtocolError::WrongReply {
            want_offset: req.offset,
            want_pages: req.pages,
            got_offset: offset,
            got_pages: pages,
        }
        .into());
    }
    match h[0] {
        STATUS_REFUSED => Ok((
            Response::Refused(RefuseReason::from_code(h[1])),
            RESPONSE_HEADER_LEN,
        )),
        STATUS_OK if pages <= MAX_BATCH_PAGES => {
            let map = PageMap::read_from(r, pages)?;
            let bytes = map.data_pages() as usize * PAGE_SIZE;
            data.resize(bytes, 0);
            r.read_exact(data)?;
            let total = RESPONSE_HEADER_LEN + page_map_len(pages) + bytes;
            Ok((Response::Pages(map), total))
        }
        STATUS_PUSHED if pages <= MAX_BATCH_PAGES => {
            let map = PageMap::read_from(r, pages)?;
            let mut seq_end = [0u8; PUSHED_TRAILER_LEN];
            r.read_exact(&mut seq_end)?;
            let total = RESPONSE_HEADER_LEN + page_map_len(pages) + PUSHED_TRAILER_LEN;
            let seq_end = u64::from_le_bytes(seq_end);
            Ok((Response::Pushed { map, seq_end }, total))
        }
        // Only a caller that asked for too much gets here: refuse to
        // buffer it rather than trust the count.
        STATUS_OK => Err(ProtocolError::TooManyPages(pages).into()),
        s => Err(ProtocolError::BadStatus(s).into()),
    }
}

/// Counts of one answered request, for the server's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub data_pages: u32,
    pub zero_pages: u32,
    pub bytes: usize,
}

/// Which of `pages` pages from byte `start` of `region` hold data.
pub fn page_map(region: &[u8], start: usize, pages: u32) -> PageMap {
    let mut map = PageMap::new(pages);
    for i in 0..pages {
        let at = start + i as usize * PAGE_SIZE;
        if !is_zero_page(&region[at..at + PAGE_SIZE]) {
            map.set_data(i);
        }
    }
    map
}

/// Answers the first `map.pages()` pages of a checked request at `offset`
/// with "pushed": header, page map and `seq_end` (the datagrams sent to the
/// group so far), no data. Returns the bytes sent.
pub fn write_pushed(
    w: &mut impl Write,
    offset: u64,
    map: &PageMap,
    seq_end: u64,
) -> io::Result<usize> {
    let mut b = Vec::with_capacity(RESPONSE_HEADER_LEN + MAX_PAGE_MAP_LEN + PUSHED_TRAILER_LEN);
    let req = Request {
        offset,
        pages: map.pages(),
    };
    b.extend_from_slice(&encode_response_header(&req, None));
    b[0] = STATUS_PUSHED;
    b.extend_from_slice(map.as_bytes());
    b.extend_from_slice(&seq_end.to_le_bytes());
    w.write_all(&b)?;
    Ok(b.len())
}

/// Answers a checked `req` from `region` (the whole served region): header,
/// page map, then the data pages straight from the region, one write per run
/// of data pages.
pub fn write_pages(w: &mut impl Write, req: &Request, region: &[u8]) -> io::Result<Sent> {
    let start = req.offset as usize;
    let map = page_map(region, start, req.pages);
    let mut head = Vec::with_capacity(RESPONSE_HEADER_LEN + MAX_PAGE_MAP_LEN);
    head.extend_from_slice(&encode_response_header(req, None));
    head.extend_from_slice(map.as_bytes());
    w.write_all(&head)?;
    let mut sent = Sent {
        bytes: head.len(),
        ..Sent::default()
    };
    for (first, count, data) in map.runs() {
        if data {
            let at = start + first as usize * PAGE_SIZE;
            let len = count as usize * PAGE_SIZE;
            w.write_all(&region[at..at + len])?;
            sent.data_pages += count;
            sent.bytes += len;
        } else {
            sent.zero_pages += count;
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_round_trip() {
        let h = Hello::new([7; 16]);
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
        for r in [
            HelloReply::Accept {
                version: 1,
                region_len: 64 << 20,
            },
            HelloReply::Refuse {
                version: 1,
                reason: RefuseReason::BadToken,
            },
        ] {
            assert_eq!(HelloReply::decode(&r.encode()), Ok(r));
        }
        let q = Request {
            offset: 0x1234_5000,
            pages: 64,
        };
        assert_eq!(Request::decode(&q.encode()), q);
        for code in 0..=255u8 {
            assert_eq!(RefuseReason::from_code(code).code(), code);
        }
    }

    #[test]
    fn requests_are_checked() {
        let len = 16 * PAGE_SIZE as u64;
        let req = |offset, pages| Request { offset, pages }.check(len);
        assert_eq!(req(0, 16), Ok(()));
        assert_eq!(req(15 * 4096, 1), Ok(()));
        assert_eq!(req(15 * 4096, 2), Err(RefuseReason::OutOfRange));
        assert_eq!(req(16 * 4096, 1), Err(RefuseReason::OutOfRange));
        assert_eq!(req(u64::MAX - 4095, 1), Err(RefuseReason::OutOfRange));
        assert_eq!(req(100, 1), Err(RefuseReason::Unaligned));
        assert_eq!(req(0, 0), Err(RefuseReason::BadPageCount));
        assert_eq!(req(0, 513), Err(RefuseReason::BadPageCount));
        assert_eq!(req(0, u32::MAX), Err(RefuseReason::BadPageCount));
        let big = Request {
            offset: 0,
            pages: MAX_BATCH_PAGES,
        };
        assert_eq!(big.check(1 << 30), Ok(()));
    }

    #[test]
    fn zero_pages_cost_one_bit() {
        let mut region = vec![0u8; 10 * PAGE_SIZE];
        region[2 * PAGE_SIZE + 17] = 1; // page 2
        region[9 * PAGE_SIZE - 1] = 5; // last byte of page 8
        let req = Request {
            offset: PAGE_SIZE as u64,
            pages: 9,
        };
        let mut wire = Vec::new();
        let sent = write_pages(&mut wire, &req, &region).unwrap();
        assert_eq!(sent.data_pages, 2);
        assert_eq!(sent.zero_pages, 7);
        assert_eq!(wire.len(), 16 + 2 + 2 * PAGE_SIZE);
        assert_eq!(sent.bytes, wire.len());

        let mut data = Vec::new();
        let (resp, n) = read_response(&mut wire.as_slice(), &req, &mut data).unwrap();
        assert_eq!(n, wire.len());
        let Response::Pages(map) = resp else {
            panic!("refused")
        };
        let runs: Vec<_> = map.runs().collect();
        assert_eq!(
            runs,
            vec![
                (0, 1, false),
                (1, 1, true),
                (2, 5, false),
                (7, 1, true),
                (8, 1, false)
            ]
        );
        assert_eq!(data[17], 1);
        assert_eq!(data[2 * PAGE_SIZE - 1], 5);
    }

    #[test]
    fn replies_must_match_the_request() {
        let req = Request {
            offset: 0,
            pages: 1,
        };
        let other = Request {
            offset: 4096,
            pages: 1,
        };
        let wire = encode_response_header(&other, Some(RefuseReason::OutOfRange));
        let err = read_response(&mut &wire[..], &req, &mut Vec::new()).unwrap_err();
        assert!(matches!(
            err,
            WireError::Protocol(ProtocolError::WrongReply { .. })
        ));
        let wire = encode_response_header(&req, Some(RefuseReason::OutOfRange));
        let (resp, _) = read_response(&mut &wire[..], &req, &mut Vec::new()).unwrap();
        assert_eq!(resp, Response::Refused(RefuseReason::OutOfRange));
    }

    #[test]
    fn pushed_answers_cover_at_most_the_request_and_carry_no_data() {
        let mut region = vec![0u8; 8 * PAGE_SIZE];
        region[3 * PAGE_SIZE + 5] = 9; // page 3 has data, the rest are zeros
        let req = Request {
            offset: 2 * PAGE_SIZE as u64,
            pages: 4,
        };
        for ask in [Ask::Fault, Ask::Unicast, Ask::Announced] {
            assert_eq!(Request::decode_flagged(&req.encode_as(ask)), (req, ask));
            assert_eq!(
                Request::decode(&req.encode_as(ask)).check(1 << 30).is_err(),
                ask != Ask::Fault,
                "a server that ignores the flags refuses a flagged request: {ask:?}"
            );
        }
        for n in 1..=4 {
            let map = page_map(&region, req.offset as usize, n);
            let mut wire = Vec::new();
            let seq_end = 0x0123_4567_89ab_cdef + u64::from(n);
            let sent = write_pushed(&mut wire, req.offset, &map, seq_end).unwrap();
            assert_eq!(sent, wire.len());
            let mut data = vec![1u8; 9];
            let (resp, read) = read_response(&mut &wire[..], &req, &mut data).unwrap();
            assert_eq!(
                (resp, read),
                (Response::Pushed { map, seq_end }, wire.len())
            );
            // A pushed answer cut short before its seq_end is an error,
            // not a guess.
            let cut = &wire[..wire.len() - 1];
            assert!(read_response(&mut &cut[..], &req, &mut data).is_err());
        }
        // More pages than asked for, or another offset: refused.
        for (offset, pages) in [(req.offset, 5), (0, 2)] {
            let map = page_map(&region, offset as usize, pages);
            let mut wire = Vec::new();
            write_pushed(&mut wire, offset, &map, 7).unwrap();
            let got = read_response(&mut &wire[..], &req, &mut Vec::new());
            assert!(got.is_err(), "{offset} {pages}");
        }
    }

    #[test]
    fn stray_map_bits_are_rejected() {
        let req = Request {
            offset: 0,
            pages: 3,
        };
        let mut wire = encode_response_header(&req, None).to_vec();
        wire.push(0b1000); // page 3 does not exist
        wire.extend_from_slice(&[1u8; PAGE_SIZE]);
        assert!(read_response(&mut wire.as_slice(), &req, &mut Vec::new()).is_err());
    }

    #[test]
    fn zero_check_sees_every_byte() {
        let mut page = vec![0u8; PAGE_SIZE + 1];
        for at in [0, 1, 7, 8, 2047, PAGE_SIZE - 1] {
            // Misaligned slices too: the head and tail bytes are checked.
            for base in [0usize, 1] {
                page.iter_mut().for_each(|b| *b = 0);
                assert!(is_zero_page(&page[base..base + PAGE_SIZE]));
                page[base + at] = 0x80;
                assert!(!is_zero_page(&page[base..base + PAGE_SIZE]), "{base} {at}");
            }
        }
    }

    proptest! {
        #[test]
        fn garbage_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 24)) {
            let _ = Hello::decode(&bytes[..24].try_into().unwrap());
            let _ = HelloReply::decode(&bytes[..16].try_into().unwrap());
            let req = Request::decode(&bytes[..12].try_into().unwrap());
            let _ = req.check(u64::from_le_bytes(bytes[16..24].try_into().unwrap()));
        }

        #[test]
        fn garbage_responses_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..3000),
            offset in any::<u64>(),
            pages in any::<u32>(),
            honest_header in any::<bool>(),
        ) {
            let req = Request { offset, pages };
            let mut wire = Vec::new();
            if honest_header {
                // Past the echo check, so the map and data paths see garbage too.
                let mut h = encode_response_header(&req, None);
                h[0] = bytes.first().copied().unwrap_or(0) % 3;
                wire.extend_from_slice(&h);
            }
            wire.extend_from_slice(&bytes);
            let mut data = Vec::new();
            if let Ok((Response::Pages(map), n)) = read_response(&mut wire.as_slice(), &req, &mut data) {
                prop_assert!(map.pages() <= MAX_BATCH_PAGES);
                prop_assert_eq!(data.len(), map.data_pages() as usize * PAGE_SIZE);
                prop_assert!(n <= wire.len());
            }
        }

        #[test]
        fn valid_requests_stay_inside(offset in any::<u64>(), pages in any::<u32>(), len in any::<u64>()) {
            let req = Request { offset, pages };
            if req.check(len).is_ok() {
                prop_assert!(offset % 4096 == 0 && (1..=512).contains(&pages));
                prop_assert!(offset + u64::from(pages) * 4096 <= len);
            }
        }

        #[test]
        fn responses_round_trip(
            // Sparse non-zero bytes: any one of them makes its page a data page.
            pokes in proptest::collection::vec((0..8 * PAGE_SIZE, 1..=255u8), 0..24),
            first in 0u32..8,
        ) {
            let mut region = vec![0u8; 8 * PAGE_SIZE];
            for (at, b) in pokes {
                region[at] = b;
            }
            let req = Request { offset: u64::from(first) * 4096, pages: 8 - first };
            let mut wire = Vec::new();
            write_pages(&mut wire, &req, &region).unwrap();
            let mut data = Vec::new();
            let (resp, _) = read_response(&mut wire.as_slice(), &req, &mut data).unwrap();
            let Response::Pages(map) = resp else { panic!("refused") };
            let mut rebuilt = Vec::new();
            let mut next = data.chunks(PAGE_SIZE);
            for p in 0..req.pages {
                match map.has_data(p) {
                    true => rebuilt.extend_from_slice(next.next().unwrap()),
                    false => rebuilt.extend_from_slice(&[0; PAGE_SIZE]),
                }
            }
            prop_assert_eq!(&rebuilt[..], &region[first as usize * PAGE_SIZE..]);
        }
    }
}
