//! VM exit handling without KVM: a vCPU exit (as [`VcpuExitView`], copied
//! from KVM's run area by the caller) goes to the device on the bus it
//! addresses, and comes back as the [`ExitAction`] the run loop carries
//! out. Pure apart from the devices it calls, so it is unit-tested with
//! fake devices.

use super::bus::BusKind;
use super::{Devices, WriteAction};
use std::time::Duration;

/// A VM exit as KVM reported it; port and MMIO data borrow KVM's run area
/// (a read's data is what the guest register receives).
#[derive(Debug)]
pub enum VcpuExitView<'a> {
    IoIn {
        port: u16,
        data: &'a mut [u8],
    },
    IoOut {
        port: u16,
        data: &'a [u8],
    },
    MmioRead {
        gpa: u64,
        data: &'a mut [u8],
    },
    MmioWrite {
        gpa: u64,
        data: &'a [u8],
    },
    Hlt,
    Shutdown,
    InternalError,
    /// A signal (the deadline timer, a kick) interrupted the run.
    Interrupted,
    Other(String),
}

/// What the run loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Run the vCPU again.
    Resume,
    /// Write these bytes to the console, then resume.
    Console(Vec<u8>),
    /// Serve hypercall `nr` (registers hold its arguments).
    Hypercall(u32),
    /// The guest asked to end with this status (debug exit).
    Exit(i32),
    /// Device `slot` has work (may block up to `wait`), then resume.
    Work {
        slot: usize,
        wait: Duration,
    },
    /// MMIO to an address with neither RAM nor a device: the VM ends.
    Unbacked {
        gpa: u64,
        write: bool,
    },
    Halted,
    TripleFault,
    EmulationFailure,
    Interrupted,
    Unexpected(String),
}

fn from_write(slot: usize, a: WriteAction) -> ExitAction {
    match a {
        WriteAction::Done => ExitAction::Resume,
        WriteAction::Work => ExitAction::Work {
            slot,
            wait: Duration::ZERO,
        },
        WriteAction::Wait(wait) => ExitAction::Work { slot, wait },
        WriteAction::Console(bytes) => ExitAction::Console(bytes),
        WriteAction::Exit(status) => ExitAction::Exit(status),
        WriteAction::Hypercall(nr) => ExitAction::Hypercall(nr),
    }
}

/// Routes one exit. Ports nobody owns behave as on a PC with nothing
/// there: writes are dropped, reads give all ones; MMIO nobody owns ends
/// the VM (a guest that touches memory it does not have is broken).
pub fn handle_exit(exit: VcpuExitView<'_>, devices: &mut Devices) -> ExitAction {
    match exit {
        VcpuExitView::IoOut { port, data } => match devices.lookup(BusKind::Pio, port as u64) {
            Some((slot, offset, dev)) => from_write(slot, dev.write(offset, data)),
            None => {
                tracing::debug!(port, ?data, "write to an unclaimed port ignored");
                ExitAction::Resume
            }
        },
        VcpuExitView::IoIn { port, data } => {
            match devices.lookup(BusKind::Pio, port as u64) {
                Some((_, offset, dev)) => dev.read(offset, data),
                None => data.fill(0xff),
            }
            ExitAction::Resume
        }
        VcpuExitView::MmioWrite { gpa, data } => match devices.lookup(BusKind::Mmio, gpa) {
            Some((slot, offset, dev)) => from_write(slot, dev.write(offset, data)),
            None => ExitAction::Unbacked { gpa, write: true },
        },
        VcpuExitView::MmioRead { gpa, data } => match devices.lookup(BusKind::Mmio, gpa) {
            Some((_, offset, dev)) => {
                dev.read(offset, data);
                ExitAction::Resume
            }
            None => ExitAction::Unbacked { gpa, write: false },
        },
        VcpuExitView::Hlt => ExitAction::Halted,
        VcpuExitView::Shutdown => ExitAction::TripleFault,
        VcpuExitView::InternalError => ExitAction::EmulationFailure,
        VcpuExitView::Interrupted => ExitAction::Interrupted,
        VcpuExitView::Other(what) => ExitAction::Unexpected(what),
    }
}

#[cfg(test)]
mod tests {
    use super::super::legacy::{DebugExit, HypercallPort, SerialPort};
    use super::super::{BusDevice, BusRange};
    use super::*;
    use sf_abi::hypercall::{DEBUG_EXIT_PORT, PORT, PROBE_MAGIC, SERIAL_PORT};
    use std::sync::{Arc, Mutex};

    /// Every access a fake device saw: (read or write, offset, bytes).
    type AccessLog = Arc<Mutex<Vec<(char, u64, Vec<u8>)>>>;

    /// Records every access; a write of 0xee asks for work, 0xdd for a wait.
    struct Fake(AccessLog);
    impl BusDevice for Fake {
        fn kind(&self) -> &'static str {
            "fake"
        }
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 1);
            self.0.lock().unwrap().push(('r', offset, data.to_vec()));
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> WriteAction {
            self.0.lock().unwrap().push(('w', offset, data.to_vec()));
            match data.first() {
                Some(0xee) => WriteAction::Work,
                Some(0xdd) => WriteAction::Wait(Duration::from_millis(5)),
                _ => WriteAction::Done,
            }
        }
    }

    fn vm_devices() -> (Devices, AccessLog) {
        let mut d = Devices::new();
        let pio = |base, len| BusRange { base, len };
        d.add_builtin(
            "serial",
            BusKind::Pio,
            pio(SERIAL_PORT as u64, 8),
            Box::new(SerialPort::new()),
        )
        .unwrap();
        d.add_builtin(
            "exit",
            BusKind::Pio,
            pio(DEBUG_EXIT_PORT as u64, 1),
            Box::new(DebugExit),
        )
        .unwrap();
        d.add_builtin(
            "hc",
            BusKind::Pio,
            pio(PORT as u64, 1),
            Box::new(HypercallPort),
        )
        .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        d.add(
            "fake",
            BusKind::Mmio,
            pio(0xf000_0000, 0x1000),
            Box::new(Fake(log.clone())),
        )
        .unwrap();
        (d, log)
    }

    #[test]
    fn ports_reach_the_builtin_devices() {
        let (mut d, _) = vm_devices();
        let out =
            |port, data: &[u8], d: &mut Devices| handle_exit(VcpuExitView::IoOut { port, data }, d);
        assert_eq!(
            out(PORT, &7u32.to_le_bytes(), &mut d),
            ExitAction::Hypercall(7)
        );
        assert_eq!(
            out(DEBUG_EXIT_PORT, &[0x2a, 1], &mut d),
            ExitAction::Exit(0x2a)
        );
        assert_eq!(
            out(DEBUG_EXIT_PORT, &0x1_03u32.to_le_bytes(), &mut d),
            ExitAction::Exit(3)
        );
        assert_eq!(
            out(SERIAL_PORT, b"h", &mut d),
            ExitAction::Console(b"h".to_vec())
        );
        // Neighbours of the debug-exit port are nobody's: ignored.
        assert_eq!(out(DEBUG_EXIT_PORT + 1, &[1], &mut d), ExitAction::Resume);
        assert_eq!(out(0x80, &[1], &mut d), ExitAction::Resume);

        let mut probe = [0u8; 4];
        let r = handle_exit(
            VcpuExitView::IoIn {
                port: PORT,
                data: &mut probe,
            },
            &mut d,
        );
        assert_eq!(
            (r, u32::from_le_bytes(probe)),
            (ExitAction::Resume, PROBE_MAGIC)
        );
        let mut lsr = [0u8; 1];
        handle_exit(
            VcpuExitView::IoIn {
                port: SERIAL_PORT + 5,
                data: &mut lsr,
            },
            &mut d,
        );
        assert_ne!(lsr[0] & 0x20, 0, "transmitter holding register empty");
        let mut none = [0u8; 2];
        handle_exit(
            VcpuExitView::IoIn {
                port: 0x60,
                data: &mut none,
            },
            &mut d,
        );
        assert_eq!(none, [0xff, 0xff]);
    }

    #[test]
    fn mmio_reaches_the_device_at_its_offset_or_ends_the_vm() {
        let (mut d, log) = vm_devices();
        let mut data = [0u8; 4];
        let a = handle_exit(
            VcpuExitView::MmioRead {
                gpa: 0xf000_0010,
                data: &mut data,
            },
            &mut d,
        );
        assert_eq!((a, data), (ExitAction::Resume, [0x11; 4]));
        let a = handle_exit(
            VcpuExitView::MmioWrite {
                gpa: 0xf000_0050,
                data: &[0xee, 0, 0, 0],
            },
            &mut d,
        );
        assert_eq!(
            a,
            ExitAction::Work {
                slot: 3,
                wait: Duration::ZERO
            }
        );
        let a = handle_exit(
            VcpuExitView::MmioWrite {
                gpa: 0xf000_0ffc,
                data: &[0xdd],
            },
            &mut d,
        );
        assert_eq!(
            a,
            ExitAction::Work {
                slot: 3,
                wait: Duration::from_millis(5)
            }
        );
        assert_eq!(
            log.lock()
                .unwrap()
                .iter()
                .map(|(k, o, _)| (*k, *o))
                .collect::<Vec<_>>(),
            [('r', 0x10), ('w', 0x50), ('w', 0xffc)]
        );
        let mut data = [0u8; 8];
        for gpa in [0xf000_1000, 0xefff_ffff, 0] {
            assert_eq!(
                handle_exit(
                    VcpuExitView::MmioRead {
                        gpa,
                        data: &mut data
                    },
                    &mut d
                ),
                ExitAction::Unbacked { gpa, write: false }
            );
            assert_eq!(
                handle_exit(VcpuExitView::MmioWrite { gpa, data: &[1] }, &mut d),
                ExitAction::Unbacked { gpa, write: true }
            );
        }
        // Port space and MMIO space are separate.
        assert_eq!(
            handle_exit(
                VcpuExitView::MmioWrite {
                    gpa: PORT as u64,
                    data: &[1]
                },
                &mut d
            ),
            ExitAction::Unbacked {
                gpa: PORT as u64,
                write: true
            }
        );
    }

    #[test]
    fn cpu_events_map_to_their_actions() {
        let (mut d, _) = vm_devices();
        assert_eq!(handle_exit(VcpuExitView::Hlt, &mut d), ExitAction::Halted);
        assert_eq!(
            handle_exit(VcpuExitView::Shutdown, &mut d),
            ExitAction::TripleFault
        );
        assert_eq!(
            handle_exit(VcpuExitView::InternalError, &mut d),
            ExitAction::EmulationFailure
        );
        assert_eq!(
            handle_exit(VcpuExitView::Interrupted, &mut d),
            ExitAction::Interrupted
        );
        assert_eq!(
            handle_exit(VcpuExitView::Other("X".into()), &mut d),
            ExitAction::Unexpected("X".into())
        );
    }
}
