//! Host networking of VMs: the TAP devices their NICs send and receive on.

pub mod tap;
