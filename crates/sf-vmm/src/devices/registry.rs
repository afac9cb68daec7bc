//! Which factory rebuilds a device of a given kind from a descriptor (a
//! clone on another host builds its devices from nothing but the
//! descriptor). A new device type adds its line to [`FACTORIES`].

use super::persist::RestoreContext;
use super::{BusDevice, DeviceError};

/// Builds a device in its reset state; its saved state is loaded next.
pub type Factory = fn(&RestoreContext) -> Result<Box<dyn BusDevice>, DeviceError>;

/// Every device kind a descriptor may name, with its factory.
pub const FACTORIES: &[(&str, Factory)] = &[(
    super::virtio::bus_device::KIND,
    super::virtio::bus_device::factory,
)];

/// A fresh device of `kind`.
pub fn build(kind: &str, ctx: &RestoreContext) -> Result<Box<dyn BusDevice>, DeviceError> {
    let (_, factory) = FACTORIES
        .iter()
        .find(|(k, _)| *k == kind)
        .ok_or_else(|| DeviceError::UnknownKind(kind.to_string()))?;
    factory(ctx)
}
