//! Transport tests: register semantics, feature negotiation, reset, and a
//! hostile driver's queue set-up.

use super::features::{RING_EVENT_IDX, VERSION_1};
use super::mmio::{reg, Action, MAGIC, VENDOR_ID, VERSION};
use super::net::{Net, FEATURES, F_MAC};
use super::status;
use super::test_driver::*;
use std::time::Duration;

fn nic() -> Net {
    Net::with_mac(None, [2, 0x53, 0x46, 1, 0, 1])
}

#[test]
fn identity_registers() {
    let mut d = Driver::new(nic());
    assert_eq!(d.r(reg::MAGIC), MAGIC);
    assert_eq!(d.r(reg::VERSION), VERSION);
    assert_eq!(d.r(reg::DEVICE_ID), 1);
    assert_eq!(d.r(reg::VENDOR_ID), VENDOR_ID);
    assert_eq!(d.r(reg::QUEUE_NUM_MAX), 256);
    d.w(reg::QUEUE_SEL, 2);
    assert_eq!(d.r(reg::QUEUE_NUM_MAX), 0, "no third queue");
    // Registers are 32-bit: other widths read zero.
    let mut two = [0xffu8; 2];
    d.t.read(reg::MAGIC, &mut two);
    assert_eq!(two, [0, 0]);
}

#[test]
fn device_features_by_selector() {
    let mut d = Driver::new(nic());
    d.w(reg::DEVICE_FEATURES_SEL, 0);
    let low = d.r(reg::DEVICE_FEATURES);
    d.w(reg::DEVICE_FEATURES_SEL, 1);
    let high = d.r(reg::DEVICE_FEATURES);
    assert_eq!(u64::from(low) | u64::from(high) << 32, FEATURES);
    d.w(reg::DEVICE_FEATURES_SEL, 7);
    assert_eq!(d.r(reg::DEVICE_FEATURES), 0);
}

#[test]
fn features_ok_needs_version_1_and_offered_bits_only() {
    let mut d = Driver::new(nic());
    assert!(!d.negotiate(F_MAC), "legacy driver (no VERSION_1) refused");
    assert!(!d.negotiate(VERSION_1 | 1 << 40), "a feature never offered");
    assert!(d.negotiate(VERSION_1 | F_MAC | RING_EVENT_IDX));
    assert_eq!(d.t.acked_features(), VERSION_1 | F_MAC | RING_EVENT_IDX);
    // Fixed once FEATURES_OK is set.
    d.w(reg::DRIVER_FEATURES_SEL, 0);
    d.w(reg::DRIVER_FEATURES, 0);
    assert_eq!(d.t.acked_features(), VERSION_1 | F_MAC | RING_EVENT_IDX);
}

#[test]
fn driver_ok_without_features_ok_does_not_stick() {
    let mut d = Driver::new(nic());
    d.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    d.w(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert_eq!(d.r(reg::STATUS) & status::DRIVER_OK, 0);
}

#[test]
fn status_bits_cannot_be_cleared_but_zero_resets() {
    let mut d = Driver::start(nic(), VERSION_1 | RING_EVENT_IDX);
    let s = d.r(reg::STATUS);
    d.w(reg::STATUS, status::ACKNOWLEDGE);
    assert_eq!(d.r(reg::STATUS), s);
    d.w(reg::STATUS, 0);
    assert_eq!(d.r(reg::STATUS), 0);
    assert_eq!(d.t.acked_features(), 0);
    d.w(reg::QUEUE_SEL, 0);
    assert_eq!(d.r(reg::QUEUE_READY), 0, "reset unreadies the queues");
    // And the device comes back after a fresh bring-up.
    assert!(d.negotiate(VERSION_1));
}

#[test]
fn hostile_queue_sizes_need_reset() {
    for size in [0u32, 3, 512, 0x1_0000 + 16] {
        let mut d = Driver::new(nic());
        assert!(d.negotiate(VERSION_1));
        d.w(reg::QUEUE_SEL, 0);
        d.w(reg::QUEUE_NUM, size);
        assert!(d.needs_reset(), "size {size}");
    }
}

#[test]
fn queue_setup_outside_its_phase_needs_reset() {
    let mut d = Driver::new(nic());
    d.w(reg::QUEUE_NUM, 16);
    assert!(d.needs_reset(), "before FEATURES_OK");
    let mut d = Driver::start(nic(), VERSION_1);
    d.w(reg::QUEUE_SEL, 1);
    d.w(reg::QUEUE_DESC_LOW, 0x1000);
    assert!(d.needs_reset(), "after DRIVER_OK");
}

#[test]
fn rings_outside_the_window_need_reset() {
    let cases = [
        (0x1000, avail(0), used(0)), // descriptor table in the kernel's area
        (desc(0), RAM - 8, used(0)), // available ring runs past RAM
        (desc(0), avail(0), u64::MAX - 0xfff), // used ring at the top of the address space
        (desc(0), avail(0), WINDOW.start - 0x800), // used ring straddles the window's start
    ];
    for (i, (dt, av, us)) in cases.into_iter().enumerate() {
        let mut d = Driver::new(nic());
        assert!(d.negotiate(VERSION_1));
        d.setup_queue(0, dt, av, us);
        d.driver_ok();
        assert!(d.needs_reset(), "case {i}");
        // A broken device does no queue work and the driver can reset it.
        d.w(reg::QUEUE_NOTIFY, 0);
        d.w(reg::STATUS, 0);
        assert!(!d.needs_reset());
    }
}

#[test]
fn wait_register_asks_the_vmm_to_wait() {
    let mut d = Driver::new(nic());
    assert_eq!(
        d.w(reg::WAIT, 1500),
        Action::Wait(Duration::from_micros(1500))
    );
    assert_eq!(d.w(reg::QUEUE_NOTIFY, 0), Action::None);
}

#[test]
fn unknown_offsets_and_config_writes_are_ignored() {
    let mut d = Driver::start(nic(), VERSION_1);
    for off in [0x18, 0x28, 0x3c, 0xac, 0xfff, reg::CONFIG, reg::CONFIG + 3] {
        d.w(off, 0xdead_beef);
    }
    assert!(!d.needs_reset());
    let mut mac = [0u8; 6];
    d.t.read(reg::CONFIG, &mut mac);
    assert_eq!(mac, [2, 0x53, 0x46, 1, 0, 1]);
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any sequence of register writes, notifies and waits leaves the
        /// VMM standing: no panic, no hang, and reads stay well-formed.
        #[test]
        fn random_register_writes(ops in proptest::collection::vec((0u64..0x110, any::<u32>()), 1..200)) {
            let (nic_end, _peer) = socketpair();
            let mut d = Driver::new(Net::with_mac(Some(nic_end), [2, 0, 0, 0, 0, 1]));
            for (off, v) in ops {
                let off = off & !3;
                if off == reg::WAIT {
                    d.wait(Duration::from_micros(u64::from(v % 100)));
                } else {
                    d.w(off, v);
                }
                d.run();
            }
            prop_assert_eq!(d.r(reg::MAGIC), MAGIC);
        }
    }
}
