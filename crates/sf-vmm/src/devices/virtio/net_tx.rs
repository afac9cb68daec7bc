//! virtio-net transmit: every chain the driver made available is one frame
//! (12-byte header first), written to the TAP with one `writev` straight
//! from guest RAM. A full TAP queue (EAGAIN) or a TAP that is gone drops
//! the frame, as a NIC's full queue would; TCP recovers.

use super::dma::{self, DmaWindow};
use super::net::{Net, F_CSUM, F_HOST_TSO4, HDR_LEN, MAX_TX_CHAIN, TX, TX_NOTIFY_EVERY};
use super::{DriverError, Mem};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

impl Net {
    pub(super) fn transmit(
        &mut self,
        q: &mut Queue,
        mem: &Mem,
        window: &DmaWindow,
    ) -> Result<(), DriverError> {
        if !q.ready() {
            return Ok(());
        }
        // The vCPU is stopped, so the available index cannot move while
        // this runs; virtio-queue refuses one more than the queue size
        // ahead of what the device has taken.
        let chains: Vec<_> = q
            .iter(mem)
            .map_err(|e| DriverError::Queue {
                queue: TX,
                why: format!("available ring: {e}"),
            })?
            .collect();
        for chain in chains {
            let head = chain.head_index();
            let bufs = dma::collect(chain, window, false, MAX_TX_CHAIN, TX)?;
            self.send(&bufs, mem, head)?;
            q.add_used(mem, head, 0).map_err(|e| DriverError::Queue {
                queue: TX,
                why: format!("used ring: {e}"),
            })?;
        }
        if q.event_idx_enabled() {
            arm_notify(q, mem);
        }
        Ok(())
    }

    fn send(&mut self, bufs: &[dma::Buffer], mem: &Mem, head: u16) -> Result<(), DriverError> {
        let total: u64 = bufs.iter().map(|b| u64::from(b.len)).sum();
        if total < HDR_LEN as u64 {
            return Err(DriverError::Chain {
                queue: TX,
                head,
                why: format!("{total} bytes, less than the {HDR_LEN}-byte header"),
            });
        }
        let Some(tap) = &self.tap else {
            self.stats.tx_dropped += 1;
            return Ok(());
        };
        let frame_len = total - HDR_LEN as u64;
        let header = chain_prefix(bufs, mem, HDR_LEN);
        let checked = header
            .as_deref()
            .and_then(|h| <&[u8; HDR_LEN]>::try_from(h).ok())
            .ok_or("unreadable")
            .and_then(|h| check_offloads(h, self.acked, frame_len));
        if let Err(why) = checked {
            tracing::debug!("virtio-net: frame of {frame_len} bytes dropped: header {why}");
            self.stats.tx_dropped += 1;
            return Ok(());
        }
        if let Some(old) = self.former_mac {
            if source_mac(bufs, mem) == Some(old) {
                self.stats.tx_dropped += 1;
                return Ok(()); // queued by the parent before the fork
            }
        }
        let mut slices = Vec::with_capacity(bufs.len());
        for b in bufs {
            // Inside the DMA window, which is inside guest RAM: checked again.
            let s = mem
                .get_slice(GuestAddress(b.addr), b.len as usize)
                .map_err(|e| DriverError::Chain {
                    queue: TX,
                    head,
                    why: format!("buffer {:#x}+{:#x}: {e}", b.addr, b.len),
                })?;
            slices.push(s);
        }
        let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard()).collect();
        let iov: Vec<libc::iovec> = guards
            .iter()
            .zip(&slices)
            .map(|(g, s)| libc::iovec {
                iov_base: g.as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            })
            .collect();
        // SAFETY: each iovec points into guest RAM mapped for as long as
        // `guards` live, with its checked length; writev only reads them.
        let n = unsafe { libc::writev(tap.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            tracing::debug!("virtio-net: frame of {total} bytes dropped: {e}");
            self.stats.tx_dropped += 1;
        } else {
            self.stats.tx_packets += 1;
            self.stats.tx_bytes += total - HDR_LEN as u64;
        }
        Ok(())
    }
}

/// The Ethernet source address of a transmit chain's frame (bytes 6..12
/// after the header), wherever the chain's buffers split it.
fn source_mac(bufs: &[dma::Buffer], mem: &Mem) -> Option<[u8; 6]> {
    let head = chain_prefix(bufs, mem, HDR_LEN + 12)?;
    head[HDR_LEN + 6..].try_into().ok()
}

/// The first `want` bytes of a chain, wherever its buffers split them;
/// `None` when the chain is shorter.
fn chain_prefix(bufs: &[dma::Buffer], mem: &Mem, want: usize) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(want);
    for b in bufs {
        let take = (b.len as usize).min(want - head.len());
        let mut part = vec![0u8; take];
        mem.read_slice(&mut part, GuestAddress(b.addr)).ok()?;
        head.extend_from_slice(&part);
        if head.len() == want {
            return Some(head);
        }
    }
    None
}

/// `virtio_net_hdr.flags`: the checksum from `csum_start` on is partial.
const NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was checked (meaningless on transmit, harmless).
const DATA_VALID: u8 = 2;
/// `gso_type`: a TCPv4 segment, the only kind offered (`F_HOST_TSO4`).
const GSO_TCPV4: u8 = 1;
/// The smallest MSS a TSO frame may ask for: Linux's own TCP never uses
/// less (`TCP_MIN_MSS`). A smaller one lets one 64 KiB frame make the
/// host kernel cut and checksum up to ~65,000 packets; at 88 bytes it is
/// at most 745, against ~45 at a 1,448-byte MSS.
const MIN_TSO_MSS: u64 = 88;

/// Whether a transmit header asks the host kernel only for offloads the
/// driver negotiated, with its marks inside the frame. The kernel checks
/// headers too, but a guest has no business reaching its UDP, TCPv6 or
/// ECN segmentation code, or handing it an MSS below TCP's floor: these paths have had
/// their own bugs, and a driver that sends them is broken or hostile.
pub(super) fn check_offloads(
    hdr: &[u8; HDR_LEN],
    acked: u64,
    frame_len: u64,
) -> Result<(), &'static str> {
    let field = |at: usize| u64::from(u16::from_le_bytes([hdr[at], hdr[at + 1]]));
    let (flags, gso_type, gso_size) = (hdr[0], hdr[1], field(4));
    if flags & !(NEEDS_CSUM | DATA_VALID) != 0 {
        return Err("has flags virtio-net does not define");
    }
    if flags & NEEDS_CSUM != 0 {
        if acked & F_CSUM == 0 {
            return Err("asks for a checksum without the CSUM feature");
        }
        if field(6) + field(8) + 2 > frame_len {
            return Err("puts the checksum past the frame");
        }
    }
    match gso_type {
        0 => Ok(()),
        GSO_TCPV4 if acked & F_HOST_TSO4 == 0 => Err("asks for TSO without HOST_TSO4"),
        GSO_TCPV4 if flags & NEEDS_CSUM == 0 => Err("asks for TSO without a partial checksum"),
        GSO_TCPV4 if gso_size < MIN_TSO_MSS => Err("asks for TSO with an MSS below 88 bytes"),
        GSO_TCPV4 => Ok(()),
        _ => Err("asks for a segmentation type not offered"),
    }
}

/// Asks the driver (through `avail_event` in the used ring) to notify
/// only after [`TX_NOTIFY_EVERY`] more chains.
pub(super) fn arm_notify(q: &Queue, mem: &Mem) {
    let at = q.next_avail().wrapping_add(TX_NOTIFY_EVERY - 1);
    store_avail_event(q, mem, at);
}

/// `avail_event` sits after the used ring's entries (virtio 1.x 2.7.10).
pub(super) fn store_avail_event(q: &Queue, mem: &Mem, value: u16) {
    let addr = q
        .used_ring()
        .checked_add(4 + 8 * u64::from(q.size()))
        .map(GuestAddress);
    if let Some(addr) = addr {
        // Checked inside the window at DRIVER_OK; a failure only means the
        // driver notifies at its own pace.
        let _ = mem.store(value.to_le(), addr, Ordering::Release);
    }
}
