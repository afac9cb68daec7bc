//! virtio-net receive: while the driver has a receive buffer posted and the
//! TAP has a frame (non-blocking reads), the frame goes into the buffer.
//! Frames stay in the TAP's kernel queue while no buffer is posted (the
//! kernel drops beyond its queue length, as a full NIC ring would). A
//! frame larger than the posted buffer is dropped and the buffer reused.

use super::dma::{self, DmaWindow};
use super::net::{Net, HDR_LEN, MIN_RX_BUFFER, RX};
use super::{DriverError, Mem};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

impl Net {
    pub(super) fn receive(
        &mut self,
        q: &mut Queue,
        mem: &Mem,
        window: &DmaWindow,
    ) -> Result<(), DriverError> {
        if !q.ready() || self.tap.is_none() {
            return Ok(());
        }
        let bad = |why: String| DriverError::Queue { queue: RX, why };
        let avail = q
            .avail_idx(mem, Ordering::Acquire)
            .map_err(|e| bad(format!("available ring: {e}")))?;
        let posted = avail.0.wrapping_sub(q.next_avail());
        if posted > q.size() {
            return Err(bad(format!(
                "{posted} buffers posted on a queue of {}",
                q.size()
            )));
        }
        let mut left = posted;
        while left > 0 {
            let Some(n) = self.read_frame() else { break };
            let mut iter = q
                .iter(mem)
                .map_err(|e| bad(format!("available ring: {e}")))?;
            let Some(chain) = iter.next() else { break };
            let head = chain.head_index();
            let bufs = dma::collect(chain, window, true, u64::MAX, RX)?;
            let capacity: u64 = bufs.iter().map(|b| u64::from(b.len)).sum();
            if capacity < MIN_RX_BUFFER {
                return Err(DriverError::Chain {
                    queue: RX,
                    head,
                    why: format!("receive buffer of {capacity} bytes, under {MIN_RX_BUFFER}"),
                });
            }
            if n as u64 > capacity {
                iter.go_to_previous_position();
                self.stats.rx_dropped += 1;
                continue;
            }
            let mut done = 0;
            for b in &bufs {
                let take = (b.len as usize).min(n - done);
                mem.write_slice(&self.rx_frame[done..done + take], GuestAddress(b.addr))
                    .map_err(|e| DriverError::Chain {
                        queue: RX,
                        head,
                        why: format!("buffer {:#x}+{:#x}: {e}", b.addr, b.len),
                    })?;
                done += take;
                if done == n {
                    break;
                }
            }
            q.add_used(mem, head, n as u32)
                .map_err(|e| bad(format!("used ring: {e}")))?;
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += (n - HDR_LEN) as u64;
            left -= 1;
        }
        if q.event_idx_enabled() {
            silence_notify(q, mem);
        }
        Ok(())
    }

    /// One frame from the TAP into `rx_frame`, its length; `None` when the
    /// TAP has nothing (or failed: logged, retried at the next exit).
    fn read_frame(&mut self) -> Option<usize> {
        let tap = self.tap.as_ref()?;
        loop {
            // SAFETY: reads at most the buffer's length into the buffer.
            let n = unsafe {
                libc::read(
                    tap.as_raw_fd(),
                    self.rx_frame.as_mut_ptr() as *mut libc::c_void,
                    self.rx_frame.len(),
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    tracing::debug!("virtio-net: reading the TAP: {e}");
                }
                return None;
            }
            let n = n as usize;
            if n == 0 {
                return None; // a closed socket pair (tests): nothing more comes
            }
            if n < HDR_LEN {
                self.stats.rx_dropped += 1;
                continue; // not even a header: nothing a driver could use
            }
            // No mergeable buffers: every frame is in exactly one buffer.
            self.rx_frame[10..12].copy_from_slice(&1u16.to_le_bytes());
            return Some(n);
        }
    }
}

/// Receive buffers need no notify: they are taken at every exit. With
/// `avail_event` one behind the device's position, the driver's
/// `vring_need_event` test never fires however many it posts.
pub(super) fn silence_notify(q: &Queue, mem: &Mem) {
    super::net_tx::store_avail_event(q, mem, q.next_avail().wrapping_sub(1));
}
