//! What a device leaves in the VM descriptor, and what it is given when it
//! is rebuilt on another host or becomes part of a clone.

use super::bus::{BusKind, BusRange};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

/// Most devices one VM may have (and a descriptor may carry).
pub const MAX_DEVICES: usize = 32;
/// Most bytes of saved state one device may put in the descriptor (a
/// virtio device's queue state is well under 1 KiB).
pub const MAX_DEVICE_STATE: usize = 16 << 10;
/// Longest device id or kind name.
pub const MAX_NAME: usize = 64;

/// One device in the descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// The VM's name for this device (e.g. `net0`); keys the clone
    /// resources in [`CloneContext::resources`].
    pub id: String,
    /// [`super::BusDevice::kind`]: which factory rebuilds it.
    pub kind: String,
    pub bus: BusKind,
    pub range: BusRange,
    /// [`super::BusDevice::save`]'s bytes.
    pub state: Vec<u8>,
}

impl DeviceState {
    /// Checks the limits a peer's descriptor must respect.
    pub fn check(&self) -> Result<(), String> {
        if self.id.is_empty() || self.id.len() > MAX_NAME || self.kind.len() > MAX_NAME {
            return Err(format!(
                "device id {:?} or kind {:?} is empty or longer than {MAX_NAME} bytes",
                self.id, self.kind
            ));
        }
        if self.state.len() > MAX_DEVICE_STATE {
            return Err(format!(
                "device {} saved {} bytes of state, over the {MAX_DEVICE_STATE}-byte limit",
                self.id,
                self.state.len()
            ));
        }
        if self.range.len == 0 || self.range.base.checked_add(self.range.len).is_none() {
            return Err(format!("device {} has an empty or wrapping range", self.id));
        }
        Ok(())
    }
}

/// Given to a device rebuilt from a descriptor (a remote clone).
#[derive(Debug, Default)]
pub struct RestoreContext {
    /// Guest RAM size, to check saved guest addresses against.
    pub mem_size: u64,
}

/// A new clone's identity, given to every device before the clone's first
/// instruction.
#[derive(Debug, Default)]
pub struct CloneContext {
    /// The clone's ID as its parent's `clone` returned it (1..=granted).
    pub clone_id: u32,
    /// The clone's place in its family, e.g. `2.1` (clone 1 of clone 2).
    pub path: String,
    /// The clone's member number in its family (unique among the family's
    /// live VMs; the root is 0), when the family has a numbering.
    pub member: Option<u32>,
    /// Fresh host resources per device id (e.g. `net0` -> its new TAP fd).
    /// A device takes its own out of the map; what is left is closed.
    pub resources: BTreeMap<String, Vec<OwnedFd>>,
    /// Bytes the VMM writes into the clone's guest RAM after every
    /// device's `on_clone`, before the clone's first instruction, as
    /// (guest physical address, bytes): e.g. a NIC's new address in the
    /// boot information.
    pub guest_writes: Vec<(u64, Vec<u8>)>,
}

impl CloneContext {
    /// Takes the resources meant for device `id`.
    pub fn take(&mut self, id: &str) -> Vec<OwnedFd> {
        self.resources.remove(id).unwrap_or_default()
    }
}

/// Encodes a device's own state type (bincode, as the descriptor).
pub fn encode_state<T: Serialize>(device: &str, state: &T) -> Result<Vec<u8>, super::DeviceError> {
    let bytes = bincode::serialize(state).map_err(|e| super::DeviceError::BadState {
        device: device.to_string(),
        why: e.to_string(),
    })?;
    if bytes.len() > MAX_DEVICE_STATE {
        return Err(super::DeviceError::BadState {
            device: device.to_string(),
            why: format!(
                "{} bytes, over the {MAX_DEVICE_STATE}-byte limit",
                bytes.len()
            ),
        });
    }
    Ok(bytes)
}

/// Decodes what [`encode_state`] made, refusing anything over the limit
/// before allocating for it.
pub fn decode_state<T: serde::de::DeserializeOwned>(
    device: &str,
    bytes: &[u8],
) -> Result<T, super::DeviceError> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(MAX_DEVICE_STATE as u64)
        .deserialize(bytes)
        .map_err(|e| super::DeviceError::BadState {
            device: device.to_string(),
            why: e.to_string(),
        })
}
