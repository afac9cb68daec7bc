//! The device layer: the port-I/O and MMIO buses, the device trait every
//! emulated device implements, the state a device saves into the VM
//! descriptor and its clone hook, and the pure exit handler that routes a
//! VM exit to a device and says what the run loop must do next.
//!
//! A device is registered with [`crate::Vm::add_device`] before the VM runs.
//! Its state is saved into the descriptor at every clone call
//! ([`BusDevice::save`]); a local clone inherits the device itself through
//! `fork()`, a remote clone rebuilds it from the descriptor with the
//! factory named by [`BusDevice::kind`] (see [`registry`]). Either way the
//! clone calls [`BusDevice::on_clone`] before its first instruction, with
//! its new identity and fresh host resources ([`CloneContext`]).

pub mod bus;
pub mod exit;
pub mod legacy;
pub mod persist;
pub mod registry;
mod set;
pub mod virtio;

pub use bus::{Bus, BusError, BusKind, BusRange};
pub use exit::{handle_exit, ExitAction, VcpuExitView};
pub use persist::{CloneContext, DeviceState, RestoreContext, MAX_DEVICES, MAX_DEVICE_STATE};
pub use set::{AddError, Devices};

/// Hands a new clone's devices their fresh host resources (e.g. a TAP per
/// NIC from a privileged helper), keyed by device id. Called in the clone
/// process before its devices' [`BusDevice::on_clone`].
pub type ResourceProvider = Box<
    dyn FnMut(
            &CloneContext,
        )
            -> Result<std::collections::BTreeMap<String, Vec<std::os::fd::OwnedFd>>, DeviceError>
        + Send,
>;

use std::time::Duration;

/// What a guest write asks of the run loop.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteAction {
    /// Nothing more: the vCPU resumes.
    Done,
    /// The device has work that needs guest memory or host I/O (a queue
    /// notification): the run loop calls [`BusDevice::work`] before resuming.
    Work,
    /// As `Work`, and the device may block up to this long waiting for host
    /// I/O (a driver with nothing to do); the run loop bounds it by the
    /// family's deadline.
    Wait(Duration),
    /// Bytes for the VM's console.
    Console(Vec<u8>),
    /// The VM ends with this exit status (the debug-exit port).
    Exit(i32),
    /// A hypercall with this number (the hypercall port).
    Hypercall(u32),
}

/// What [`BusDevice::work`] gets: guest RAM and how long it may block.
pub struct WorkContext<'a> {
    pub ram: &'a crate::memory::GuestRam,
    /// Most time the device may block waiting for host I/O (zero: do not
    /// block). Already bounded by the family's deadline.
    pub wait: Duration,
}

/// A device failed in a way that must end the VM (a host resource broke);
/// a guest's own mistakes never end here (they break only the device,
/// e.g. virtio NEEDS_RESET).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device {device}: {what}")]
    Host {
        device: String,
        what: String,
        #[source]
        source: Option<std::io::Error>,
    },
    #[error("device {device}: saved state does not restore: {why}; the descriptor comes from an incompatible VMM, run the same snowflock version on every host")]
    BadState { device: String, why: String },
    #[error(
        "device kind {0:?} is not known to this VMM; run the same snowflock version on every host"
    )]
    UnknownKind(String),
}

/// A device on the port-I/O or MMIO bus. Reads and writes run on the vCPU
/// thread inside a VM exit (~25 µs each here): keep them short, and leave
/// anything slow to [`BusDevice::work`].
pub trait BusDevice: Send {
    /// A stable name of the device type, saved in the descriptor; a remote
    /// clone picks the factory that rebuilds the device by it.
    fn kind(&self) -> &'static str;

    /// A guest read of `data.len()` bytes at `offset` in the device's range.
    /// Whatever the device leaves in `data` reaches the guest register.
    fn read(&mut self, offset: u64, data: &mut [u8]);

    /// A guest write at `offset` in the device's range.
    fn write(&mut self, offset: u64, data: &[u8]) -> WriteAction;

    /// Work the device asked for with [`WriteAction::Work`] or `Wait`.
    fn work(&mut self, _ctx: &mut WorkContext<'_>) -> Result<(), DeviceError> {
        Ok(())
    }

    /// The device's state for the descriptor (at most
    /// [`MAX_DEVICE_STATE`] bytes; see [`persist::encode_state`]).
    fn save(&self) -> Result<Vec<u8>, DeviceError> {
        Ok(Vec::new())
    }

    /// Loads state saved by [`BusDevice::save`] (a remote clone's freshly
    /// built device). The bytes came over the network: check everything.
    fn restore(&mut self, _state: &[u8], _ctx: &RestoreContext) -> Result<(), DeviceError> {
        Ok(())
    }

    /// In a new clone, before its first instruction: take the clone's
    /// identity and this device's fresh host resources (e.g. a NIC's TAP).
    fn on_clone(&mut self, _ctx: &mut CloneContext) -> Result<(), DeviceError> {
        Ok(())
    }

    /// The device's own counters, for the end-of-run log line (`None`:
    /// it keeps none).
    fn counters(&self) -> Option<String> {
        None
    }
}
