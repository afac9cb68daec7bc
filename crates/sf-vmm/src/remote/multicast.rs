//! Pushing served pages to every clone host of a group at once (SnowFlock's
//! third idea): the memory holder also sends each data page it serves as a
//! UDP datagram to the group's multicast address, and every clone host
//! installs the pages it lacks, so a page one clone faulted in is usually
//! there before its siblings touch it. No reliability layer: a lost
//! datagram only means a later fault, served over TCP as before.
//!
//! Datagram: magic `SFMC`, the group's 16-byte token, the page offset (u64
//! LE), then the 4096 bytes of the page.

use super::protocol::PAGE_SIZE;
use super::GroupToken;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};

const MAGIC: &[u8; 4] = b"SFMC";
const HEADER_LEN: usize = 4 + 16 + 8;
pub const DATAGRAM_LEN: usize = HEADER_LEN + PAGE_SIZE;

pub fn encode(token: &GroupToken, offset: u64, page: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(DATAGRAM_LEN);
    d.extend_from_slice(MAGIC);
    d.extend_from_slice(token);
    d.extend_from_slice(&offset.to_le_bytes());
    d.extend_from_slice(page);
    d
}

/// The page offset and bytes of a datagram of this group; `None` for
/// anything else (another group, garbage, a truncated or unaligned page).
pub fn decode<'a>(d: &'a [u8], token: &GroupToken) -> Option<(u64, &'a [u8])> {
    if d.len() != DATAGRAM_LEN || &d[..4] != MAGIC || d[4..20] != token[..] {
        return None;
    }
    let offset = u64::from_le_bytes(d[20..28].try_into().ok()?);
    if offset % PAGE_SIZE as u64 != 0 {
        return None;
    }
    Some((offset, &d[HEADER_LEN..]))
}

/// The holder's side: sends pages to the group out of one interface.
pub struct Sender {
    sock: Socket,
    group: SockAddr,
    token: GroupToken,
}

impl Sender {
    pub fn new(group: SocketAddrV4, iface: Ipv4Addr, token: GroupToken) -> io::Result<Sender> {
        let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        sock.set_multicast_if_v4(&iface)?;
        sock.set_multicast_ttl_v4(1)?;
        sock.set_multicast_loop_v4(false)?;
        Ok(Sender {
            sock,
            group: group.into(),
            token,
        })
    }

    /// Sends every page of `[offset, offset + pages * 4 KiB)` of `region`
    /// that is not all zeros (zero pages cost clones nothing to fetch).
    /// Errors are ignored: multicast is only ever a head start.
    pub fn send_pages(&self, region: &[u8], offset: u64, pages: u32) {
        for i in 0..pages as u64 {
            let at = (offset + i * PAGE_SIZE as u64) as usize;
            let Some(page) = region.get(at..at + PAGE_SIZE) else {
                return;
            };
            if page.iter().all(|&b| b == 0) {
                continue;
            }
            let _ = self
                .sock
                .send_to(&encode(&self.token, at as u64, page), &self.group);
        }
    }
}

/// A clone host's side: a non-blocking socket joined to the group.
pub struct Receiver {
    sock: std::net::UdpSocket,
    token: GroupToken,
    buf: Vec<u8>,
}

impl Receiver {
    /// Joins `group` on the interface with address `iface`. Several clones
    /// of one group on one host each join (the port is shared).
    pub fn join(group: SocketAddrV4, iface: Ipv4Addr, token: GroupToken) -> io::Result<Receiver> {
        let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        sock.set_reuse_address(true)?;
        sock.set_recv_buffer_size(8 << 20)?;
        sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, group.port()).into())?;
        sock.join_multicast_v4(group.ip(), &iface)?;
        sock.set_nonblocking(true)?;
        Ok(Receiver {
            sock: sock.into(),
            token,
            buf: vec![0; DATAGRAM_LEN + 1],
        })
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// The next page of this group waiting, if any: `(offset, bytes)`.
    pub fn next_page(&mut self) -> Option<(u64, &[u8])> {
        // Strangers' datagrams are skipped; the valid one is decoded again
        // outside the loop so the borrow of the buffer can be returned.
        let n = loop {
            let n = self.sock.recv(&mut self.buf).ok()?;
            if decode(&self.buf[..n], &self.token).is_some() {
                break n;
            }
        };
        decode(&self.buf[..n], &self.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_round_trip_and_strangers_are_ignored() {
        let t = [7u8; 16];
        let page = vec![0xab; PAGE_SIZE];
        let d = encode(&t, 0x3000, &page);
        assert_eq!(decode(&d, &t), Some((0x3000, &page[..])));
        assert_eq!(decode(&d, &[8u8; 16]), None, "another group");
        assert_eq!(decode(&d[..d.len() - 1], &t), None, "truncated");
        assert_eq!(decode(&encode(&t, 0x3001, &page), &t), None, "unaligned");
        let mut bad = d.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad, &t), None);
    }
}
