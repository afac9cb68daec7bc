//! A NIC needs the direct boot: on a VM booted through PVH, `add_nic`
//! refuses first, before it touches the TAP or writes the device window
//! and boot words into guest RAM (a PVH kernel's own page tables and data
//! live where the direct boot's would). Needs /dev/kvm.

use sf_abi::net::FamilyNet;
use sf_vmm::devices::virtio::bus_device::NicConfig;
use sf_vmm::{BootMode, GuestImage, Vm, VmConfig};
use std::os::fd::OwnedFd;

fn vm(boot: BootMode) -> Vm {
    let image = sf_images::find("hello").expect("hello guest");
    let image = GuestImage::from_bytes(image.elf.to_vec()).expect("ELF");
    let cfg = VmConfig {
        mem_size: 64 << 20,
        boot,
        ..Default::default()
    };
    Vm::new(&cfg, &image).expect("VM")
}

/// Not a TAP: a NIC that got this far would fail on it, with another error.
fn not_a_tap() -> OwnedFd {
    std::fs::File::open("/dev/null").unwrap().into()
}

fn nic() -> NicConfig {
    NicConfig {
        tap: not_a_tap(),
        family: FamilyNet::new(1).unwrap(),
        member: 0,
    }
}

#[test]
fn a_pvh_booted_vm_gets_no_nic() {
    let e = vm(BootMode::Pvh)
        .add_nic(nic())
        .expect_err("a NIC on a PVH boot");
    let msg = e.to_string();
    assert!(
        msg.contains("boot mode pvh") && msg.contains("--net") && msg.contains("direct boot"),
        "{msg}"
    );
}

#[test]
fn a_direct_booted_vm_goes_on_to_check_the_tap() {
    let e = vm(BootMode::Direct).add_nic(nic()).expect_err("not a TAP");
    assert!(e.to_string().contains("TAP"), "{e}");
}
