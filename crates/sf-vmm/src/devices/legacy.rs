//! The VMM's built-in port devices: the 16550 serial port (0x3f8), the
//! debug-exit port (0xf4, as QEMU's `isa-debug-exit`) and the hypercall
//! port (0x510). Every VM has all three; they are not in the descriptor.

use super::{BusDevice, BusKind, BusRange, Devices, WriteAction};
use sf_abi::hypercall::{DEBUG_EXIT_PORT, PORT, PROBE_MAGIC, SERIAL_PORT};
use vm_superio::{serial::NoEvents, Serial, Trigger};

/// Little-endian value of up to 4 bytes of an access (wider ones are cut).
pub(crate) fn le_value(data: &[u8]) -> u32 {
    let mut v = [0u8; 4];
    let n = data.len().min(4);
    v[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(v)
}

/// The port raises no interrupts: nothing in our guests waits for one.
pub struct NoIrq;

impl Trigger for NoIrq {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// The legacy serial port, for PVH guests that print the old way (one
/// `out` per byte). SnowFlock guests use the console hypercall.
pub struct SerialPort(Serial<NoIrq, NoEvents, Vec<u8>>);

impl SerialPort {
    pub fn new() -> SerialPort {
        SerialPort(Serial::new(NoIrq, Vec::new()))
    }
}

impl Default for SerialPort {
    fn default() -> Self {
        SerialPort::new()
    }
}

impl BusDevice for SerialPort {
    fn kind(&self) -> &'static str {
        "serial-16550"
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = self.0.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> WriteAction {
        let _ = self
            .0
            .write(offset as u8, data.first().copied().unwrap_or(0));
        let out = self.0.writer_mut();
        if out.is_empty() {
            WriteAction::Done
        } else {
            WriteAction::Console(std::mem::take(out))
        }
    }
}

/// A write of `v` ends the VM with status `v & 0xff`.
pub struct DebugExit;

impl BusDevice for DebugExit {
    fn kind(&self) -> &'static str {
        "debug-exit"
    }

    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> WriteAction {
        WriteAction::Exit((le_value(data) & 0xff) as i32)
    }
}

/// `out dx, eax` makes hypercall `eax`; `in` returns [`PROBE_MAGIC`], so a
/// guest can tell it runs under SnowFlock.
pub struct HypercallPort;

impl BusDevice for HypercallPort {
    fn kind(&self) -> &'static str {
        "hypercall-port"
    }

    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        let m = PROBE_MAGIC.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&m[..n]);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> WriteAction {
        WriteAction::Hypercall(le_value(data))
    }
}

/// The port devices every VM has.
pub(crate) fn builtin_devices() -> Devices {
    let mut d = Devices::new();
    let port = |p: u16, len| BusRange {
        base: p as u64,
        len,
    };
    let builtins: [(&str, BusRange, Box<dyn BusDevice>); 3] = [
        ("serial", port(SERIAL_PORT, 8), Box::new(SerialPort::new())),
        // One port, as before (the TSS opens four for QEMU's device; the
        // other three are nobody's).
        ("debug-exit", port(DEBUG_EXIT_PORT, 1), Box::new(DebugExit)),
        ("hypercall", port(PORT, 1), Box::new(HypercallPort)),
    ];
    for (id, range, dev) in builtins {
        d.add_builtin(id, BusKind::Pio, range, dev)
            .expect("the built-in ports are distinct");
    }
    d
}
