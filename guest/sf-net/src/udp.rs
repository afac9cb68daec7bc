//! UDP: bind, send_to, recv_from.

use crate::stack::{Net, Slot, SockId};
use crate::{Ipv4Addr, NetError, MTU};
use alloc::vec;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::udp::{PacketBuffer, PacketMetadata, SendError, Socket};

/// Datagrams queued per direction, and their payload bytes.
const QUEUED: usize = 32;
const QUEUED_BYTES: usize = 64 << 10;
/// Largest datagram payload: one unfragmented IPv4 packet.
pub const UDP_MAX_PAYLOAD: usize = MTU - 20 - 8;

impl Net {
    fn udp(&self, s: SockId) -> Result<SocketHandle, NetError> {
        match self.slot(s)? {
            Slot::Udp(h) => Ok(*h),
            _ => Err(NetError::BadSocket),
        }
    }

    /// A UDP socket on `port`, or on a free ephemeral port for 0.
    pub fn udp_bind(&mut self, port: u16) -> Result<SockId, NetError> {
        self.refresh();
        let port = if port == 0 {
            let mut p = self.ephemeral_port();
            while self.port_taken(p, false) {
                p = self.ephemeral_port();
            }
            p
        } else {
            port
        };
        if self.port_taken(port, false) {
            return Err(NetError::AddrInUse);
        }
        let buf =
            || PacketBuffer::new(vec![PacketMetadata::EMPTY; QUEUED], vec![0u8; QUEUED_BYTES]);
        let mut sock = Socket::new(buf(), buf());
        sock.bind(port).map_err(|_| NetError::InvalidArgument)?;
        let h = self.sockets.add(sock);
        Ok(self.add_slot(Slot::Udp(h)))
    }

    /// The local port of a UDP socket.
    pub fn udp_port(&self, s: SockId) -> Result<u16, NetError> {
        let h = self.udp(s)?;
        Ok(self.sockets.get::<Socket>(h).endpoint().port)
    }

    /// Sends one datagram of at most [`UDP_MAX_PAYLOAD`] bytes.
    pub fn udp_send_to(
        &mut self,
        s: SockId,
        buf: &[u8],
        addr: Ipv4Addr,
        port: u16,
        timeout_us: Option<u64>,
    ) -> Result<(), NetError> {
        self.udp(s)?;
        if buf.len() > UDP_MAX_PAYLOAD || port == 0 || addr.is_unspecified() {
            return Err(NetError::InvalidArgument);
        }
        self.block_on(timeout_us, |net| {
            let Ok(h) = net.udp(s) else {
                return Some(Err(NetError::Reset));
            };
            match net
                .sockets
                .get_mut::<Socket>(h)
                .send_slice(buf, (addr, port))
            {
                Ok(()) => Some(Ok(())),
                Err(SendError::BufferFull) => None,
                Err(SendError::Unaddressable) => Some(Err(NetError::InvalidArgument)),
            }
        })?;
        self.flush();
        Ok(())
    }

    /// Receives one datagram into `buf` (the rest of a longer one is
    /// dropped); returns its length as copied and the sender.
    pub fn udp_recv_from(
        &mut self,
        s: SockId,
        buf: &mut [u8],
        timeout_us: Option<u64>,
    ) -> Result<(usize, Ipv4Addr, u16), NetError> {
        self.udp(s)?;
        self.block_on(timeout_us, |net| {
            let Ok(h) = net.udp(s) else {
                return Some(Err(NetError::Reset));
            };
            let sock = net.sockets.get_mut::<Socket>(h);
            let (data, meta) = sock.recv().ok()?;
            let n = data.len().min(buf.len());
            buf[..n].copy_from_slice(&data[..n]);
            let smoltcp::wire::IpAddress::Ipv4(a) = meta.endpoint.addr;
            Some(Ok((n, a, meta.endpoint.port)))
        })
    }
}
