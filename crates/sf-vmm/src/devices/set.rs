//! The VM's devices: the slots, the two buses that map addresses to them,
//! and saving/restoring/cloning all of them at once.

use super::bus::{Bus, BusError, BusKind, BusRange};
use super::persist::{CloneContext, DeviceState, RestoreContext, MAX_DEVICES, MAX_NAME};
use super::{BusDevice, DeviceError};

pub(crate) struct Slot {
    pub id: String,
    pub bus: BusKind,
    pub range: BusRange,
    pub dev: Box<dyn BusDevice>,
    /// Built in by the VMM (serial, debug exit, hypercall port): every VM
    /// has them, so they are not carried in the descriptor.
    pub builtin: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("a VM has at most {MAX_DEVICES} devices; device {0:?} is one too many")]
    TooMany(String),
    #[error("device id {0:?} is taken, empty or longer than {MAX_NAME} bytes; give each device its own short id")]
    BadId(String),
}

/// Every device of a VM, addressed through its buses.
#[derive(Default)]
pub struct Devices {
    pub(crate) slots: Vec<Slot>,
    pio: Bus,
    mmio: Bus,
}

impl Devices {
    pub fn new() -> Devices {
        Devices::default()
    }

    /// Puts `dev` on `bus` at `range` under the name `id`.
    pub fn add(
        &mut self,
        id: &str,
        bus: BusKind,
        range: BusRange,
        dev: Box<dyn BusDevice>,
    ) -> Result<(), AddError> {
        self.add_slot(id, bus, range, dev, false)
    }

    pub(crate) fn add_builtin(
        &mut self,
        id: &str,
        bus: BusKind,
        range: BusRange,
        dev: Box<dyn BusDevice>,
    ) -> Result<(), AddError> {
        self.add_slot(id, bus, range, dev, true)
    }

    fn add_slot(
        &mut self,
        id: &str,
        bus: BusKind,
        range: BusRange,
        dev: Box<dyn BusDevice>,
        builtin: bool,
    ) -> Result<(), AddError> {
        if id.is_empty() || id.len() > MAX_NAME || self.slots.iter().any(|s| s.id == id) {
            return Err(AddError::BadId(id.to_string()));
        }
        if self.slots.len() >= MAX_DEVICES {
            return Err(AddError::TooMany(id.to_string()));
        }
        let slot = self.slots.len();
        match bus {
            BusKind::Pio => self.pio.insert(range, slot)?,
            BusKind::Mmio => self.mmio.insert(range, slot)?,
        }
        self.slots.push(Slot {
            id: id.to_string(),
            bus,
            range,
            dev,
            builtin,
        });
        Ok(())
    }

    /// The device and offset behind a bus address.
    pub fn lookup(&mut self, bus: BusKind, addr: u64) -> Option<(usize, u64, &mut dyn BusDevice)> {
        let (slot, offset) = match bus {
            BusKind::Pio => self.pio.lookup(addr)?,
            BusKind::Mmio => self.mmio.lookup(addr)?,
        };
        Some((slot, offset, self.slots[slot].dev.as_mut()))
    }

    /// The device in slot `slot` (as [`Devices::lookup`] named it).
    pub fn slot_mut(&mut self, slot: usize) -> Option<&mut dyn BusDevice> {
        Some(self.slots.get_mut(slot)?.dev.as_mut())
    }

    /// `id: counters` of every device that keeps counters.
    pub fn counters(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter_map(|s| Some(format!("{}: {}", s.id, s.dev.counters()?)))
            .collect()
    }

    pub fn slot_id(&self, slot: usize) -> Option<&str> {
        self.slots.get(slot).map(|s| s.id.as_str())
    }

    /// The state of every device a clone must rebuild, for the descriptor.
    pub fn save(&self) -> Result<Vec<DeviceState>, DeviceError> {
        self.slots
            .iter()
            .filter(|s| !s.builtin)
            .map(|s| {
                Ok(DeviceState {
                    id: s.id.clone(),
                    kind: s.dev.kind().to_string(),
                    bus: s.bus,
                    range: s.range,
                    state: s.dev.save()?,
                })
            })
            .collect()
    }

    /// Rebuilds the descriptor's devices next to the built-in ones (a
    /// remote clone), each with the factory its kind names.
    pub fn restore(
        &mut self,
        states: &[DeviceState],
        ctx: &RestoreContext,
    ) -> Result<(), DeviceError> {
        for s in states {
            s.check().map_err(|why| DeviceError::BadState {
                device: s.id.clone(),
                why,
            })?;
            let mut dev = super::registry::build(&s.kind, ctx)?;
            dev.restore(&s.state, ctx)?;
            self.add(&s.id, s.bus, s.range, dev)
                .map_err(|e| DeviceError::BadState {
                    device: s.id.clone(),
                    why: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Gives every device the new clone's identity and its resources.
    pub fn on_clone(&mut self, ctx: &mut CloneContext) -> Result<(), DeviceError> {
        for s in &mut self.slots {
            s.dev.on_clone(ctx)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::legacy::DebugExit;
    use super::super::{persist, WriteAction};
    use super::*;

    /// A device that keeps one register and saves it.
    struct Reg(u8);
    impl BusDevice for Reg {
        fn kind(&self) -> &'static str {
            "test-reg"
        }
        fn read(&mut self, _: u64, data: &mut [u8]) {
            data.fill(self.0);
        }
        fn write(&mut self, _: u64, data: &[u8]) -> WriteAction {
            self.0 = data[0];
            WriteAction::Done
        }
        fn save(&self) -> Result<Vec<u8>, DeviceError> {
            persist::encode_state("reg", &self.0)
        }
    }

    #[test]
    fn builtins_stay_out_of_the_descriptor() {
        let mut d = Devices::new();
        let r = |base| BusRange { base, len: 1 };
        d.add_builtin("exit", BusKind::Pio, r(0xf4), Box::new(DebugExit))
            .unwrap();
        d.add("reg", BusKind::Mmio, r(0x1000), Box::new(Reg(7)))
            .unwrap();
        let saved = d.save().unwrap();
        assert_eq!(saved.len(), 1);
        assert_eq!(
            (saved[0].id.as_str(), saved[0].kind.as_str()),
            ("reg", "test-reg")
        );
        assert_eq!(saved[0].state, vec![7]);
        assert!(matches!(
            d.add("reg", BusKind::Mmio, r(0x2000), Box::new(Reg(0))),
            Err(AddError::BadId(_))
        ));
        assert!(matches!(
            d.add("reg2", BusKind::Mmio, r(0x1000), Box::new(Reg(0))),
            Err(AddError::Bus(BusError::Overlap { .. }))
        ));
        // The same address on the other bus is another address.
        d.add("reg3", BusKind::Pio, r(0x1000), Box::new(Reg(0)))
            .unwrap();
    }

    #[test]
    fn device_count_is_bounded() {
        let mut d = Devices::new();
        for i in 0..MAX_DEVICES as u64 {
            d.add(
                &format!("r{i}"),
                BusKind::Mmio,
                BusRange { base: i, len: 1 },
                Box::new(Reg(0)),
            )
            .unwrap();
        }
        assert!(matches!(
            d.add(
                "last",
                BusKind::Mmio,
                BusRange { base: 999, len: 1 },
                Box::new(Reg(0))
            ),
            Err(AddError::TooMany(_))
        ));
    }

    #[test]
    fn unknown_kinds_and_oversized_state_are_refused_on_restore() {
        let mut d = Devices::new();
        let mut s = DeviceState {
            id: "x".into(),
            kind: "no-such-device".into(),
            bus: BusKind::Mmio,
            range: BusRange { base: 0, len: 1 },
            state: vec![],
        };
        let ctx = RestoreContext::default();
        assert!(matches!(
            d.restore(std::slice::from_ref(&s), &ctx),
            Err(DeviceError::UnknownKind(_))
        ));
        s.state = vec![0; persist::MAX_DEVICE_STATE + 1];
        assert!(matches!(
            d.restore(&[s], &ctx),
            Err(DeviceError::BadState { .. })
        ));
    }
}
