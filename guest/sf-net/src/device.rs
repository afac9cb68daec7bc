//! Adapts a [`Nic`] to smoltcp's `phy::Device`: one receive buffer and one
//! transmit buffer, reused for every frame, so the data path allocates
//! nothing. On a NIC with offloads the stack builds TCP segments of up to
//! 64 KiB and leaves their checksums to the NIC.

use crate::{Nic, MAX_FRAME, MTU, OFFLOAD_FRAME, OFFLOAD_MTU};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

pub(crate) struct NicDevice {
    pub(crate) nic: Box<dyn Nic>,
    rx: Vec<u8>,
    tx: Vec<u8>,
}

impl NicDevice {
    pub(crate) fn new(nic: Box<dyn Nic>) -> NicDevice {
        let frame = if nic.offloads() {
            OFFLOAD_FRAME
        } else {
            MAX_FRAME
        };
        NicDevice {
            nic,
            rx: vec![0; frame],
            tx: vec![0; frame],
        }
    }
}

pub(crate) struct Rx<'a>(&'a [u8]);

pub(crate) struct Tx<'a> {
    nic: &'a mut dyn Nic,
    buf: &'a mut [u8],
}

impl phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // smoltcp never asks for more than the MTU it was given.
        let len = len.min(self.buf.len());
        let r = f(&mut self.buf[..len]);
        // A full queue drops the frame; TCP retransmits, UDP is lossy anyway.
        let _ = self.nic.transmit(&self.buf[..len]);
        r
    }
}

impl phy::Device for NicDevice {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let n = self.nic.receive(&mut self.rx)?.min(self.rx.len());
        Some((
            Rx(&self.rx[..n]),
            Tx {
                nic: &mut *self.nic,
                buf: &mut self.tx,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_>> {
        if !self.nic.can_transmit() {
            return None;
        }
        Some(Tx {
            nic: &mut *self.nic,
            buf: &mut self.tx,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_burst_size = None;
        if self.nic.offloads() {
            // TCP only: UDP payloads are bounded by `MTU` where they are
            // sent, and smoltcp sends no other large packet.
            caps.max_transmission_unit = OFFLOAD_MTU + 14;
            caps.checksum.tcp = smoltcp::phy::Checksum::None;
        } else {
            caps.max_transmission_unit = MTU + 14;
        }
        caps
    }
}
