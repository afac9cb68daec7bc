//! The checksummed frames netpi's VMs exchange, and connecting to a peer
//! that may not be listening yet.
//!
//! A frame is `"SFNP"`, sender, receiver, payload length (u32 LE each), the
//! payload, then the FNV-1a 64 checksum of everything before it.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;
use sf_guest::net::{Error, Ipv4Addr, TcpStream};
use sf_guest::rand::Xoshiro256;
use sf_guest::time;

const MAGIC: &[u8; 4] = b"SFNP";
const HEADER: usize = 16;
/// Longest payload a reader accepts.
pub const MAX_PAYLOAD: usize = 1 << 20;

pub fn fnv64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The bytes member `from` sends member `to`: anyone can recompute them.
pub fn payload(from: u32, to: u32, len: usize) -> Vec<u8> {
    let mut rng = Xoshiro256::from_seed(((from as u64) << 32) | to as u64);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn encode(from: u32, to: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER + payload.len() + 8);
    f.extend_from_slice(MAGIC);
    for w in [from, to, payload.len() as u32] {
        f.extend_from_slice(&w.to_le_bytes());
    }
    f.extend_from_slice(payload);
    let sum = fnv64(&f);
    f.extend_from_slice(&sum.to_le_bytes());
    f
}

/// The checksum a frame ends with.
pub fn checksum_of(frame: &[u8]) -> u64 {
    u64::from_le_bytes(frame[frame.len() - 8..].try_into().unwrap())
}

pub struct Frame {
    pub from: u32,
    pub to: u32,
    pub payload: Vec<u8>,
    pub checksum: u64,
}

/// Reads one frame and checks it; the error says what was wrong.
pub fn read_frame(s: &mut TcpStream) -> Result<Frame, String> {
    let mut h = [0u8; HEADER];
    s.read_exact(&mut h)
        .map_err(|e| format!("reading a header: {e:?}"))?;
    if &h[..4] != MAGIC {
        return Err(String::from("bad magic"));
    }
    let w = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
    let (from, to, len) = (w(4), w(8), w(12) as usize);
    if len > MAX_PAYLOAD {
        return Err(format!("payload of {len} bytes is over the limit"));
    }
    let mut rest = vec![0u8; len + 8];
    s.read_exact(&mut rest)
        .map_err(|e| format!("reading {len} bytes from {from}: {e:?}"))?;
    let mut all = Vec::with_capacity(HEADER + len);
    all.extend_from_slice(&h);
    all.extend_from_slice(&rest[..len]);
    let checksum = u64::from_le_bytes(rest[len..].try_into().unwrap());
    if fnv64(&all) != checksum {
        return Err(format!(
            "checksum mismatch on the frame from {from} to {to}"
        ));
    }
    rest.truncate(len);
    Ok(Frame {
        from,
        to,
        payload: rest,
        checksum,
    })
}

/// Time left until `deadline_ns` (on the guest clock), at least 1 ms.
pub fn left(deadline_ns: u64) -> Duration {
    Duration::from_nanos(deadline_ns.saturating_sub(time::now_ns()).max(1_000_000))
}

/// Connects to `addr:port`, retrying while the peer is not up or not
/// listening yet, until `deadline_ns`.
pub fn connect_retry(addr: Ipv4Addr, port: u16, deadline_ns: u64) -> Result<TcpStream, Error> {
    loop {
        let attempt = left(deadline_ns).min(Duration::from_secs(2));
        match TcpStream::connect_timeout(addr, port, attempt) {
            Ok(s) => return Ok(s),
            Err(Error::ConnectionRefused | Error::TimedOut) if time::now_ns() < deadline_ns => {
                sf_guest::net::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}
