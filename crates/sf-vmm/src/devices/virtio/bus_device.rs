//! The NIC on the VMM's MMIO bus: register accesses from exits, queue work
//! with guest RAM, the wait register bounded by the family's deadline, its
//! state in the descriptor and its clone hook. Also how a VM gets a NIC
//! ([`crate::Vm::add_nic`]): the device at `MMIO_BASE` slot 0, and the boot
//! information words the guest finds it and its address by.

use super::dma::DmaWindow;
use super::mmio::{Action, MmioTransport};
use super::net::Net;
use super::state::NetState;
use crate::devices::persist::{decode_state, encode_state};
use crate::devices::{
    BusDevice, BusKind, BusRange, CloneContext, DeviceError, RestoreContext, WorkContext,
    WriteAction,
};
use sf_abi::boot_info::BootInfo;
use sf_abi::layout;
use sf_abi::net::FamilyNet;
use std::os::fd::OwnedFd;

/// The kind name in the descriptor.
pub const KIND: &str = "virtio-net";
/// The id of a VM's (only) NIC: its key in the clone resources.
pub const NET0: &str = "net0";

/// [`MmioTransport`]`<`[`Net`]`>` as a [`BusDevice`].
pub struct NetDevice {
    pub transport: MmioTransport<Net>,
}

fn host_error(what: impl Into<String>, source: Option<std::io::Error>) -> DeviceError {
    DeviceError::Host {
        device: NET0.into(),
        what: what.into(),
        source,
    }
}

impl BusDevice for NetDevice {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.transport.read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> WriteAction {
        match self.transport.write(offset, data) {
            Action::None => WriteAction::Done,
            Action::Work => WriteAction::Work,
            Action::Wait(d) => WriteAction::Wait(d),
        }
    }

    fn work(&mut self, ctx: &mut WorkContext<'_>) -> Result<(), DeviceError> {
        let mem = ctx.ram.mmap();
        if ctx.wait.is_zero() {
            self.transport.run(mem);
        } else {
            self.transport.wait(mem, ctx.wait);
        }
        Ok(())
    }

    fn counters(&self) -> Option<String> {
        Some(format!("{:?}", self.transport.device().stats()))
    }

    fn save(&self) -> Result<Vec<u8>, DeviceError> {
        encode_state(NET0, &self.transport.save())
    }

    fn restore(&mut self, state: &[u8], ctx: &RestoreContext) -> Result<(), DeviceError> {
        let bad = |why: String| DeviceError::BadState {
            device: NET0.into(),
            why,
        };
        let s: NetState = decode_state(NET0, state)?;
        if s.window.end > ctx.mem_size {
            return Err(bad(format!(
                "DMA window ends at {:#x}, past guest RAM ({:#x})",
                s.window.end, ctx.mem_size
            )));
        }
        self.transport = MmioTransport::restore(&s, None).map_err(|e| bad(e.to_string()))?;
        Ok(())
    }

    /// The clone's identity (its member number, or its clone ID in a flat
    /// family when the family has no numbering) and its own TAP (none if
    /// no provider gave one: then frames are dropped until the VM ends;
    /// never the parent's TAP). The provider sends TAPs already set up with
    /// [`crate::net::tap::prepare`].
    fn on_clone(&mut self, ctx: &mut CloneContext) -> Result<(), DeviceError> {
        let member = ctx.member.unwrap_or(ctx.clone_id);
        let mut fds = ctx.take(NET0);
        let tap = fds.pop();
        if let Some(fd) = &tap {
            // The clone is sandboxed already: no TAP ioctls here, the
            // provider handed it over set up by `tap::prepare`.
            crate::net::tap::set_nonblocking(fd)
                .map_err(|e| host_error("making the clone's TAP non-blocking", Some(e)))?;
        }
        if !self.transport.on_clone(member, tap) {
            return Err(host_error(
                format!("member {member} has no address in the family"),
                None,
            ));
        }
        // The guest finds its new address where it found the old one.
        let ip = u64::from(self.transport.device().ip());
        ctx.guest_writes.push((
            layout::BOOT_INFO + BootInfo::NET_IP_OFFSET as u64,
            ip.to_le_bytes().to_vec(),
        ));
        Ok(())
    }
}

/// A fresh NIC in its reset state, for a remote clone's descriptor.
pub fn factory(_ctx: &RestoreContext) -> Result<Box<dyn BusDevice>, DeviceError> {
    let window = DmaWindow { start: 0, end: 0 };
    Ok(Box::new(NetDevice {
        transport: MmioTransport::new(Net::with_mac(None, [0; 6]), window),
    }))
}

/// A NIC's host side as a VM is built with one.
pub struct NicConfig {
    /// A TAP fd (see [`crate::net::tap::prepare`]).
    pub tap: OwnedFd,
    pub family: FamilyNet,
    pub member: u32,
}

impl crate::Vm {
    /// Gives the VM a virtio-net NIC at `MMIO_BASE` slot 0 on `nic.tap`,
    /// and writes its boot information words (`mmio_base`, `net_ip`,
    /// `net_prefix_len`, `family_net`). Device DMA may touch guest RAM
    /// from the end of the loaded image up (where the guest's heap, and so
    /// its rings and buffers, are). Guest RAM must end at or below
    /// `MMIO_BASE`.
    pub fn add_nic(&mut self, nic: NicConfig) -> Result<(), crate::Error> {
        if self.mode == crate::BootMode::Pvh {
            return Err(crate::ImageError::BootMode(
                crate::BootMode::Pvh,
                crate::image::NIC_NEEDS_DIRECT_BOOT,
            )
            .into());
        }
        let mem = self.ram.size();
        let bad = |what: String| crate::Error::Device(host_error(what, None));
        if mem > layout::MMIO_BASE {
            return Err(bad(format!(
                "guest RAM of {mem:#x} bytes overlaps the device window at {:#x}; use less memory with a NIC",
                layout::MMIO_BASE
            )));
        }
        crate::net::tap::prepare(&nic.tap).map_err(|e| bad(format!("the TAP: {e}")))?;
        // The guest's driver runs in ring 3: its page tables map the window.
        sf_abi::tables::map_mmio_window(&mut &self.ram, mem)
            .map_err(|e| bad(format!("mapping the device window: {e:?}")))?;
        let ip = nic
            .family
            .ip_of(nic.member)
            .ok_or_else(|| bad(format!("member {} has no address", nic.member)))?;
        let net = Net::new(Some(nic.tap), nic.family, nic.member).expect("member checked above");
        let floor = self.hints_floor.unwrap_or(0).saturating_mul(layout::PAGE);
        let window = DmaWindow {
            start: floor.max(layout::IMAGE_BASE),
            end: mem,
        };
        let dev = NetDevice {
            transport: MmioTransport::new(net, window),
        };
        let range = BusRange {
            base: layout::MMIO_BASE,
            len: layout::MMIO_SLOT,
        };
        self.add_device(NET0, BusKind::Mmio, range, Box::new(dev))?;
        // Words 17..=20 of the boot information (ABI 3).
        for (off, v) in [
            (17 * 8, layout::MMIO_BASE),
            (BootInfo::NET_IP_OFFSET, u64::from(ip)),
            (19 * 8, u64::from(sf_abi::net::PREFIX_LEN)),
            (20 * 8, nic.family.word()),
        ] {
            self.ram
                .write(layout::BOOT_INFO + off as u64, &v.to_le_bytes());
        }
        Ok(())
    }
}
