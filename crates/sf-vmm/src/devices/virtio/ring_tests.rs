//! Arbitrary rings from a hostile driver: whatever descriptors, available
//! entries, indexes, register writes and resets it produces, mid-traffic,
//! the device never panics, never touches guest RAM below its DMA window,
//! hands the TAP only frames of at most a segment whose offload header was
//! negotiated, and works again after a reset.

use super::features::{RING_EVENT_IDX, VERSION_1};
use super::mmio::reg;
use super::net::{Net, FEATURES, F_MAC, HDR_LEN, MAX_GSO_FRAME};
use super::net_tx::check_offloads;
use super::test_driver::*;
use proptest::prelude::*;
use std::os::fd::OwnedFd;
use vm_memory::{Bytes, GuestAddress};

/// Where a hostile descriptor points.
#[derive(Clone, Debug)]
enum Addr {
    /// A buffer of the driver's own, inside the window.
    Buffer(u16),
    /// The guest kernel's memory below the window.
    Kernel(u32),
    /// Straddling the end of RAM.
    RamEnd(u16),
    /// One of the device's own rings (descriptors, available, used).
    Ring(u8),
    Any(u64),
}

impl Addr {
    fn at(&self) -> u64 {
        match *self {
            Addr::Buffer(i) => buf((i & 1) as usize, i % SIZE),
            Addr::Kernel(x) => u64::from(x) % WINDOW.start,
            Addr::RamEnd(back) => RAM - u64::from(back),
            Addr::Ring(r) => desc((r & 1) as usize) + u64::from((r >> 1) % 3) * 0x1000,
            Addr::Any(a) => a,
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Desc {
        q: u8,
        i: u16,
        addr: Addr,
        len: u32,
        flags: u16,
        next: u16,
    },
    /// A descriptor made available at once, as a driver posts a buffer.
    Post {
        q: u8,
        i: u16,
        addr: Addr,
        len: u32,
        flags: u16,
    },
    Avail {
        q: u8,
        slot: u16,
        head: u16,
    },
    AvailIdx {
        q: u8,
        idx: u16,
    },
    Kick(u8),
    /// The TAP delivers a frame of this many bytes after the header.
    Frame(u16),
    Register {
        offset: u16,
        value: u32,
    },
    /// A register access of 1, 2, 3 or 8 bytes, at any offset.
    Narrow {
        offset: u16,
        width: u8,
    },
    Reset,
}

fn addr() -> impl Strategy<Value = Addr> {
    prop_oneof![
        4 => any::<u16>().prop_map(Addr::Buffer),
        1 => any::<u32>().prop_map(Addr::Kernel),
        1 => (0u16..4096).prop_map(Addr::RamEnd),
        1 => any::<u8>().prop_map(Addr::Ring),
        1 => any::<u64>().prop_map(Addr::Any),
    ]
}

fn len() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(HDR_LEN as u32),
        1u32..4096,
        Just(BUF as u32),
        Just((HDR_LEN + MAX_GSO_FRAME) as u32),
        any::<u32>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..2, 0u16..SIZE, addr(), len(), 0u16..8, any::<u16>()).prop_map(
            |(q, i, addr, len, flags, next)| Op::Desc { q, i, addr, len, flags, next }
        ),
        8 => (0u8..2, 0u16..SIZE, addr(), len(), 0u16..8)
            .prop_map(|(q, i, addr, len, flags)| Op::Post { q, i, addr, len, flags }),
        2 => (0u8..2, any::<u16>(), any::<u16>())
            .prop_map(|(q, slot, head)| Op::Avail { q, slot, head }),
        1 => (0u8..2, any::<u16>()).prop_map(|(q, idx)| Op::AvailIdx { q, idx }),
        3 => (0u8..2).prop_map(Op::Kick),
        4 => (0u16..9000).prop_map(Op::Frame),
        1 => (0u16..0x110, any::<u32>()).prop_map(|(offset, value)| Op::Register { offset, value }),
        1 => (0u16..0x110, prop_oneof![Just(1u8), Just(2), Just(3), Just(8)])
            .prop_map(|(offset, width)| Op::Narrow { offset, width }),
        1 => Just(Op::Reset),
    ]
}

/// The kernel's part of RAM, below the window, as the test fills it.
const KERNEL_BYTE: u8 = 0x5a;

fn apply(d: &mut Driver, peer: &OwnedFd, features: u64, op: &Op) {
    match op {
        Op::Desc {
            q,
            i,
            addr,
            len,
            flags,
            next,
        } => d.write_desc(usize::from(*q), *i, addr.at(), *len, *flags, *next),
        Op::Post {
            q,
            i,
            addr,
            len,
            flags,
        } => {
            let q = usize::from(*q);
            d.write_desc(q, *i, addr.at(), *len, *flags & !NEXT, 0);
            d.publish(q, *i, true);
        }
        Op::Avail { q, slot, head } => {
            let at = avail(usize::from(*q)) + 4 + 2 * u64::from(slot % SIZE);
            d.mem.write_obj(*head, GuestAddress(at)).unwrap();
        }
        Op::AvailIdx { q, idx } => {
            let at = avail(usize::from(*q)) + 2;
            d.mem.write_obj(*idx, GuestAddress(at)).unwrap();
        }
        Op::Kick(q) => d.kick(usize::from(*q)),
        Op::Frame(n) => {
            let _ = try_send(peer, &vec![0x33; HDR_LEN + usize::from(*n)]);
            d.run();
        }
        Op::Register { offset, value } => {
            // The wait register sleeps as long as asked: keep it short.
            let value = if u64::from(*offset) == reg::WAIT {
                value % 100
            } else {
                *value
            };
            d.w(u64::from(*offset), value);
        }
        Op::Narrow { offset, width } => {
            let mut bytes = [0xffu8; 8];
            let bytes = &mut bytes[..usize::from(*width)];
            d.t.write(u64::from(*offset), bytes);
            d.t.read(u64::from(*offset), bytes);
            if u64::from(*offset) < reg::CONFIG {
                assert!(bytes.iter().all(|&b| b == 0), "a narrow register read");
            }
        }
        Op::Reset => restart(d, features),
    }
}

/// Brings the device up again from scratch, rings zeroed.
fn restart(d: &mut Driver, features: u64) {
    d.w(reg::STATUS, 0);
    for q in 0..2 {
        d.mem
            .write_slice(&[0u8; 0x3000], GuestAddress(desc(q)))
            .unwrap();
    }
    d.avail_idx = [0; 2];
    d.used_seen = [0; 2];
    assert!(d.negotiate(features));
    for q in 0..2 {
        d.setup_queue(q, desc(q), avail(q), used(q));
    }
    d.driver_ok();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn arbitrary_rings_from_a_hostile_driver(
        all_features in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let features = if all_features {
            FEATURES
        } else {
            VERSION_1 | F_MAC | RING_EVENT_IDX
        };
        let (dev, peer) = socketpair();
        let mut d = Driver::start(Net::with_mac(Some(dev), [2, 0, 0, 0, 0, 1]), features);
        d.mem
            .write_slice(&vec![KERNEL_BYTE; WINDOW.start as usize], GuestAddress(0))
            .unwrap();
        for op in &ops {
            apply(&mut d, &peer, features, op);
        }
        let mut kernel = vec![0u8; WINDOW.start as usize];
        d.mem.read_slice(&mut kernel, GuestAddress(0)).unwrap();
        prop_assert!(kernel.iter().all(|&b| b == KERNEL_BYTE), "RAM below the window written");
        let acked = d.t.acked_features();
        while let Some(f) = recv(&peer) {
            prop_assert!(f.len() >= HDR_LEN && f.len() <= HDR_LEN + MAX_GSO_FRAME, "{} bytes", f.len());
            prop_assert_eq!(check_offloads(f[..HDR_LEN].try_into().unwrap(), acked, (f.len() - HDR_LEN) as u64), Ok(()));
        }
        // However it was left, a reset brings the device back.
        restart(&mut d, features);
        prop_assert!(!d.needs_reset());
        d.tx(0, &[0x44; 100], true);
        d.kick(1);
        prop_assert_eq!(recv(&peer).map(|f| f.len()), Some(HDR_LEN + 100));
    }
}
