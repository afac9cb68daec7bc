//! virtio 1.x devices on the virtio-mmio transport (version 2 register
//! layout). The transport ([`mmio`]) owns the registers, feature
//! negotiation and the queues (rust-vmm `virtio-queue` over guest RAM); a
//! device ([`net`]) owns what its queues carry. Guests run in ring 3 with
//! no interrupts: drivers poll the used rings, and the host does the
//! device's work whenever the vCPU exits to it (a register access, a queue
//! notify, or the NIC's wait register). Nothing here needs KVM.
//!
//! The guest is hostile: every value it writes (queue size, ring
//! addresses, descriptor chains, lengths) is checked, and a driver that
//! breaks the rules only breaks its own device (status `NEEDS_RESET`, all
//! queue work stops until the driver resets it), never the VMM.

pub mod bus_device;
pub mod dma;
pub mod mmio;
pub mod net;
mod net_rx;
mod net_tx;
pub mod state;

#[cfg(test)]
mod mmio_tests;
#[cfg(test)]
mod net_tests;
#[cfg(test)]
mod ring_tests;
#[cfg(test)]
mod tap_tests;
#[cfg(test)]
mod test_driver;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// Guest RAM as the devices see it.
pub type Mem = GuestMemoryMmap<()>;

/// Feature bits shared by every device type (virtio 1.x, section 6).
pub mod features {
    /// The device and driver speak virtio 1.x (little-endian, modern layout).
    pub const VERSION_1: u64 = 1 << 32;
    /// `used_event` / `avail_event` notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// Indirect descriptor tables (not offered: every buffer is a direct descriptor).
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
}

/// Device status bits (virtio 1.x, section 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// Why a device stopped working: the driver broke a rule. The device goes
/// to `NEEDS_RESET`; the message goes to the VMM's log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DriverError {
    #[error("queue {queue}: {why}")]
    Queue { queue: usize, why: String },
    #[error("descriptor chain at head {head} of queue {queue}: {why}")]
    Chain {
        queue: usize,
        head: u16,
        why: String,
    },
}

/// A device behind the virtio-mmio transport.
pub trait VirtioDevice: Send {
    /// virtio device ID (1 = network).
    fn device_id(&self) -> u32;
    /// Feature bits offered to the driver.
    fn features(&self) -> u64;
    /// Largest size of each queue; the slice's length is the queue count.
    fn queue_max_sizes(&self) -> &'static [u16];
    /// Reads device-specific configuration space; out-of-range bytes read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver set `DRIVER_OK` with these features.
    fn activate(&mut self, acked_features: u64, queues: &mut [Queue], mem: &Mem);
    /// Does whatever work the queues hold (called at every exit to the
    /// device once it is active). `notified` is the queue the driver
    /// kicked, if any.
    fn process(
        &mut self,
        queues: &mut [Queue],
        mem: &Mem,
        window: &dma::DmaWindow,
        notified: Option<usize>,
    ) -> Result<(), DriverError>;
    /// The driver reset the device.
    fn reset(&mut self);
}
