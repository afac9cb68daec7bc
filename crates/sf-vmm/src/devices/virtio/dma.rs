//! The part of guest RAM a device may read and write for its driver: the
//! queue rings and every buffer a descriptor names must lie inside it.
//! The VMM sets it to the RAM above the loaded image (where the guest's
//! heap, and so its DMA buffers, live), so a ring-3 driver cannot make the
//! device write into the guest kernel's page tables, stacks or text below.

use super::{DriverError, Mem};
use virtio_queue::{desc::split::Descriptor, DescriptorChain};

/// `[start, end)` of guest physical memory open to device DMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DmaWindow {
    pub start: u64,
    pub end: u64,
}

impl DmaWindow {
    /// Whether `[addr, addr + len)` is inside the window (an empty range
    /// is inside when `addr` is).
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        match addr.checked_add(len) {
            Some(end) => addr >= self.start && end <= self.end,
            None => false,
        }
    }
}

/// One buffer of a descriptor chain, checked against the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub addr: u64,
    pub len: u32,
}

/// The buffers of a chain, all readable (`writable == false`) or all
/// writable, each inside the window, at most `max_total` bytes in all.
/// virtio-queue bounds the walk to the queue size (a loop in `next`
/// fields ends there) and follows indirect tables (never offered; their
/// descriptors are checked like any other).
pub fn collect(
    chain: DescriptorChain<&Mem>,
    window: &DmaWindow,
    writable: bool,
    max_total: u64,
    queue: usize,
) -> Result<Vec<Buffer>, DriverError> {
    let head = chain.head_index();
    let bad = |why: String| DriverError::Chain { queue, head, why };
    let mut out = Vec::new();
    let mut total = 0u64;
    for desc in chain {
        let desc: Descriptor = desc;
        if desc.is_write_only() != writable {
            return Err(bad(format!(
                "a {} buffer in a {} chain",
                if desc.is_write_only() {
                    "device-writable"
                } else {
                    "device-readable"
                },
                if writable { "receive" } else { "transmit" },
            )));
        }
        let (addr, len) = (desc.addr().0, desc.len());
        if !window.contains(addr, len.into()) {
            return Err(bad(format!(
                "buffer {addr:#x}+{len:#x} is outside the device's window {:#x}..{:#x}",
                window.start, window.end
            )));
        }
        total += u64::from(len);
        if total > max_total {
            return Err(bad(format!("chain holds over {max_total} bytes")));
        }
        out.push(Buffer { addr, len });
    }
    if out.is_empty() {
        return Err(bad(
            "empty chain, or its head descriptor is unreadable".into()
        ));
    }
    Ok(out)
}
