//! Devices of a VM: the virtio devices on the virtio-mmio window.

pub mod virtio;
