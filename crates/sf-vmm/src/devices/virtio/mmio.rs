//! The virtio-mmio transport, version 2 (virtio 1.x, section 4.2.2): the
//! register file of one device slot, feature negotiation, the device status
//! state machine and the queues' configuration. Reads and writes arrive as
//! (offset into the slot, bytes) from the VMM's MMIO exits.
//!
//! Hostile drivers: a queue size that is not a power of two up to the
//! maximum, ring addresses outside the device's DMA window or misaligned,
//! queue set-up after `DRIVER_OK`, a feature set the device did not offer
//! or without `VERSION_1`, and broken descriptor chains all end in
//! `NEEDS_RESET` (or, for features, `FEATURES_OK` not sticking, as the
//! spec says); the device then does no queue work until a reset.

use super::dma::DmaWindow;
use super::{features, status, DriverError, Mem, VirtioDevice};
use std::time::Duration;
use virtio_queue::{Queue, QueueT};

/// "virt", little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The modern (virtio 1.x) register layout.
pub const VERSION: u32 = 2;
/// "SNOW": our vendor ID.
pub const VENDOR_ID: u32 = 0x534E_4F57;

/// Register offsets in a device slot.
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// SnowFlock extension, in the spec's reserved range: the driver
    /// writes a timeout in microseconds when it has nothing to do; the
    /// host sleeps until the device has work for it or the timeout ends.
    pub const WAIT: u64 = 0x0f0;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// What the VMM must do after a register write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    /// The device has queue work: the VMM calls [`MmioTransport::run`]
    /// with guest RAM before the vCPU resumes.
    Work,
    /// The driver asked to wait this long (the VMM bounds it by the VM's
    /// deadline and calls [`MmioTransport::wait`]).
    Wait(Duration),
}

/// Something the transport can block on for [`reg::WAIT`].
pub trait Waitable {
    /// Sleeps until the device has input or `timeout` passes.
    fn wait_input(&mut self, timeout: Duration);
}

/// One virtio device behind its virtio-mmio register slot.
pub struct MmioTransport<D> {
    pub(super) device: D,
    pub(super) window: DmaWindow,
    pub(super) queues: Vec<Queue>,
    pub(super) device_features_sel: u32,
    pub(super) driver_features_sel: u32,
    pub(super) acked_features: u64,
    pub(super) queue_sel: u32,
    pub(super) status: u32,
    pub(super) config_generation: u32,
    /// `DRIVER_OK` was set: the device activates at the next run.
    pub(super) pending_activate: bool,
    /// The queue the driver notified since the last run.
    pub(super) pending_notify: Option<usize>,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// `window` is the part of guest RAM DMA may touch.
    pub fn new(device: D, window: DmaWindow) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).expect("queue maximum sizes are powers of two"))
            .collect();
        MmioTransport {
            device,
            window,
            queues,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            pending_activate: false,
            pending_notify: None,
        }
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    pub fn window(&self) -> DmaWindow {
        self.window
    }

    pub(super) fn active(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::NEEDS_RESET == 0
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A driver broke a rule: the device stops until it is reset.
    pub(super) fn fail(&mut self, e: DriverError) {
        tracing::warn!(
            "virtio device {} needs a reset: {e}",
            self.device.device_id()
        );
        self.status |= status::NEEDS_RESET;
    }

    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 {
            return; // registers are 32-bit only; other widths read 0
        }
        let q = self.queues.get(self.queue_sel as usize);
        let v: u32 = match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_id(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| q.max_size().into()),
            reg::QUEUE_READY => q.map_or(0, |q| q.ready().into()),
            reg::INTERRUPT_STATUS => 0, // no interrupts: drivers poll
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        if offset >= reg::CONFIG {
            return Action::None; // net config space is read-only
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return Action::None; // registers are 32-bit only
        };
        let v = u32::from_le_bytes(bytes);
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => self.write_driver_features(v),
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::STATUS => self.write_status(v),
            reg::QUEUE_NOTIFY => self.pending_notify = Some(v as usize),
            reg::WAIT => return Action::Wait(Duration::from_micros(v.into())),
            reg::INTERRUPT_ACK => {}
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue(offset, v),
            _ => {}
        }
        // Every write to a working device is an exit it does its work at.
        if self.active() {
            Action::Work
        } else {
            Action::None
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        // Features are fixed once FEATURES_OK is set.
        if self.status & status::FEATURES_OK != 0 || self.status & status::DRIVER == 0 {
            return;
        }
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            _ => return,
        };
        self.acked_features &= !(0xffff_ffffu64 << shift);
        self.acked_features |= u64::from(v) << shift;
    }

    fn write_queue(&mut self, offset: u64, v: u32) {
        // Queues are set up between FEATURES_OK and DRIVER_OK, not after.
        if self.status & status::FEATURES_OK == 0 || self.status & status::DRIVER_OK != 0 {
            let q = self.queue_sel as usize;
            return self.fail(DriverError::Queue {
                queue: q,
                why: "queue set up outside FEATURES_OK..DRIVER_OK".into(),
            });
        }
        let q = self.queue_sel as usize;
        let Some(queue) = self.selected() else {
            return; // no such queue: writes are ignored, as QueueNumMax 0 says
        };
        let result = match offset {
            reg::QUEUE_NUM => u16::try_from(v)
                .ok()
                .map_or(Err(()), |n| queue.try_set_size(n).map_err(|_| ()))
                .map_err(|_| format!("size {v} is not a power of two in 1..={}", queue.max_size())),
            reg::QUEUE_READY => {
                queue.set_ready(v == 1);
                Ok(())
            }
            _ => {
                let (low, high) = match offset & 4 {
                    0 => (Some(v), None),
                    _ => (None, Some(v)),
                };
                match offset & !4 {
                    reg::QUEUE_DESC_LOW => queue.set_desc_table_address(low, high),
                    reg::QUEUE_DRIVER_LOW => queue.set_avail_ring_address(low, high),
                    _ => queue.set_used_ring_address(low, high),
                }
                Ok(())
            }
        };
        if let Err(why) = result {
            self.fail(DriverError::Queue { queue: q, why });
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            return self.reset();
        }
        // The driver only adds bits (section 3.1.1); anything else is ignored.
        if v & self.status != self.status {
            return;
        }
        let added = v & !self.status;
        let mut v = v;
        if added & status::FEATURES_OK != 0 && !self.features_acceptable() {
            v &= !status::FEATURES_OK; // the driver reads it back and gives up
        }
        if added & status::DRIVER_OK != 0 && v & status::FEATURES_OK == 0 {
            v &= !status::DRIVER_OK;
        }
        self.status = v;
        if added & status::DRIVER_OK != 0 && v & status::DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device.features();
        self.acked_features & !offered == 0 && self.acked_features & features::VERSION_1 != 0
    }

    fn activate(&mut self) {
        let event_idx = self.acked_features & features::RING_EVENT_IDX != 0;
        for (i, q) in self.queues.iter_mut().enumerate() {
            q.set_event_idx(event_idx);
            if !q.ready() {
                continue;
            }
            if let Err(why) = check_rings(q, &self.window) {
                let e = DriverError::Queue { queue: i, why };
                return self.fail(e);
            }
        }
        self.pending_activate = true;
    }

    /// Does the device's queue work; called at every exit to the device.
    pub fn run(&mut self, mem: &Mem) {
        let notified = self.pending_notify.take();
        if !self.active() {
            return;
        }
        if std::mem::take(&mut self.pending_activate) {
            self.device
                .activate(self.acked_features, &mut self.queues, mem);
        }
        if let Err(e) = self
            .device
            .process(&mut self.queues, mem, &self.window, notified)
        {
            self.fail(e);
        }
    }

    pub fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.device.reset();
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.pending_activate = false;
        self.pending_notify = None;
    }
}

impl<D: VirtioDevice + Waitable> MmioTransport<D> {
    /// Serves [`reg::WAIT`]: does pending work, sleeps until input arrives
    /// or `timeout` passes (the VMM has bounded it by the VM's deadline),
    /// and does the work again so the driver finds its packets.
    pub fn wait(&mut self, mem: &Mem, timeout: Duration) {
        self.run(mem);
        if self.active() {
            self.device.wait_input(timeout);
        } else {
            std::thread::sleep(timeout);
        }
        self.run(mem);
    }
}

/// A ready queue's rings must be aligned (virtio-queue checks it when they
/// are set) and lie wholly inside the DMA window.
pub(super) fn check_rings(q: &Queue, window: &DmaWindow) -> Result<(), String> {
    let n = u64::from(q.size());
    let rings = [
        ("descriptor table", q.desc_table(), 16 * n, 16),
        ("available ring", q.avail_ring(), 6 + 2 * n, 2),
        ("used ring", q.used_ring(), 6 + 8 * n, 4),
    ];
    for (name, addr, len, align) in rings {
        if addr % align != 0 {
            return Err(format!("{name} at {addr:#x} is not {align}-byte aligned"));
        }
        if !window.contains(addr, len) {
            return Err(format!(
                "{name} {addr:#x}+{len:#x} is outside the device's window {:#x}..{:#x}",
                window.start, window.end
            ));
        }
    }
    Ok(())
}
