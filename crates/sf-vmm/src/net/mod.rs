//! Host networking of clone families: every family (a parent and all its
//! clones, nested ones included, on every host) gets an isolated L2 segment.
//!
//! On each host the family has one Linux bridge; the VMs' TAPs are its
//! ports; across hosts a VXLAN device on the bridge carries the segment,
//! one VNI per family. Addresses follow [`sf_abi::net::FamilyNet`] (member
//! numbers: [`members`]). Creating devices needs CAP_NET_ADMIN, which VMMs
//! give up when they sandbox themselves, and a clone needs a fresh TAP
//! without paying for its creation on the clone path: a privileged
//! [`broker`] per family per host owns the devices, keeps a pool of
//! pre-created TAPs and hands them out over a Unix socket. [`links`] runs
//! `ip`, records each device's owner in its link alias and sweeps devices
//! whose owner died.
//!
//! [`tap`] is the NIC's side of a TAP (the virtio-net backend).
//!
//! Names (at most 15 bytes, IFNAMSIZ): bridge `sfb<vni:06x>`, VXLAN
//! `sfx<vni:06x>`, TAP `sft<vni:06x>.<n>`.

pub mod broker;
pub mod clone_taps;
pub mod endpoint;
pub mod family;
pub mod links;
pub mod members;
pub mod origin;
pub mod remote;
pub mod tap;
pub mod tun;

use sf_abi::net::FamilyNet;
use std::net::Ipv4Addr;

/// VXLAN's UDP port (IANA).
pub const VXLAN_PORT: u16 = 4789;
/// VXLAN over IPv4 adds 50 bytes (outer Ethernet 14, IP 20, UDP 8, VXLAN
/// 8), so on a 1500-byte underlay every port of a family bridge, and every
/// guest, uses an MTU of 1450.
pub const FAMILY_MTU: u32 = 1450;

/// A family as one host sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilySpec {
    pub family: FamilyNet,
    /// The VXLAN network identifier: [`vni`] of the origin host and `family`.
    pub vni: u32,
    /// Give the host 10.F.255.254 on the bridge (only on the origin host).
    pub host_access: bool,
    /// The underlay for VXLAN (the host's cluster interface), `None` for a
    /// family that stays on one host.
    pub underlay: Option<String>,
}

/// The family's VNI: the origin host's 16-bit id, then the family number
/// the origin host chose. Two families get the same VNI only if two origin
/// hosts have the same id: hosts take the low 16 bits of their cluster
/// address, unique in any cluster that fits in a /16 (larger clusters must
/// give hosts distinct ids by hand). The family number is unique on its
/// origin host (it names a bridge there).
pub fn vni(host_id: u16, family: FamilyNet) -> u32 {
    (u32::from(host_id) << 8) | u32::from(family.number())
}

/// The host id [`vni`] derives from a host's cluster address.
pub fn host_id(addr: Ipv4Addr) -> u16 {
    let o = addr.octets();
    u16::from_be_bytes([o[2], o[3]])
}

/// Checks a VNI that came from the network: 24 bits, not 0, and naming the
/// family it travels with (the low byte is the family number).
pub fn check_vni(vni: u32, family: FamilyNet) -> Result<(), String> {
    if vni == 0 || vni > 0x00ff_ffff {
        return Err(format!("VNI {vni} is outside 1..=16777215"));
    }
    if vni & 0xff != u32::from(family.number()) {
        return Err(format!(
            "VNI {vni:#x} does not belong to family {} (its low byte must be the family number)",
            family.number()
        ));
    }
    Ok(())
}

/// The multicast group the family's VXLAN devices join: 239.V2.V1.V0, one
/// group per VNI, so a family's floods reach only the hosts it runs on.
pub fn vxlan_group(vni: u32) -> Ipv4Addr {
    let [_, a, b, c] = vni.to_be_bytes();
    Ipv4Addr::new(239, a, b, c)
}

pub fn bridge_name(vni: u32) -> String {
    format!("sfb{vni:06x}")
}

pub fn vxlan_name(vni: u32) -> String {
    format!("sfx{vni:06x}")
}

/// The n-th TAP a family's broker creates (n < 100000 keeps 15 bytes).
pub fn tap_name(vni: u32, n: u32) -> String {
    format!("sft{vni:06x}.{}", n % 100_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_and_vnis_name_their_family() {
        let f = FamilyNet::new(200).unwrap();
        let v = vni(host_id(Ipv4Addr::new(10, 213, 255, 253)), f);
        assert_eq!(v, 0x00ff_fdc8);
        assert!(check_vni(v, f).is_ok());
        assert!(check_vni(v, FamilyNet::new(7).unwrap()).is_err());
        assert!(check_vni(0x0100_00c8, f).is_err());
        assert_eq!(vxlan_group(v), Ipv4Addr::new(239, 0xff, 0xfd, 0xc8));
        for name in [bridge_name(v), vxlan_name(v), tap_name(v, u32::MAX)] {
            assert!(name.len() <= 15, "{name}");
        }
    }
}
