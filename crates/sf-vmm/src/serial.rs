//! The legacy 16550 serial port at 0x3f8, for PVH guests that print the
//! old way (one `out` per byte). SnowFlock guests use the console hypercall.

use crate::console::ConsoleSink;
use std::io::Write;
use vm_superio::{serial::NoEvents, Serial, Trigger};

/// The port raises no interrupts: nothing in our guests waits for one.
pub struct NoIrq;

impl Trigger for NoIrq {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

pub struct LegacySerial(Serial<NoIrq, NoEvents, Vec<u8>>);

impl LegacySerial {
    pub fn new() -> LegacySerial {
        LegacySerial(Serial::new(NoIrq, Vec::new()))
    }

    /// A guest write to register `offset`; transmitted bytes go to `out`.
    pub fn write(
        &mut self,
        offset: u8,
        value: u8,
        sink: &mut ConsoleSink,
        out: &mut dyn Write,
    ) -> std::io::Result<()> {
        let _ = self.0.write(offset, value);
        let buf = self.0.writer_mut();
        if !buf.is_empty() {
            sink.write(out, buf)?;
            if buf.contains(&b'\n') {
                out.flush()?;
            }
            buf.clear();
        }
        Ok(())
    }

    pub fn read(&mut self, offset: u8) -> u8 {
        self.0.read(offset)
    }
}
