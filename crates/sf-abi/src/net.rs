//! A clone family's network identity, computed the same way by the VMM
//! (which programs the NIC and the boot information) and by the guest
//! (which needs any member's address without asking anyone).
//!
//! SnowFlock's scheme: a family (a parent and all its clones, nested ones
//! included, on every host) has its own isolated L2 segment, and a member's
//! MAC and IPv4 address derive from the family and the member's number, the
//! parent being member 0. Here family number `F` (1..=255) owns the subnet
//! `10.F.0.0/16`; member `m` has `10.F.0.0 + m + 1` and MAC
//! `02:53:46:F:hi(m):lo(m)` (locally administered, "SF"). The host's own
//! address on the family bridge, when the operator allows host access, is
//! `10.F.255.254`.

/// Prefix length of every family subnet.
pub const PREFIX_LEN: u8 = 16;
/// Members a family can number: the subnet less its network address, the
/// host's address and the broadcast address.
pub const MAX_MEMBERS: u32 = (1 << 16) - 3;

/// A family's network number as it travels in `BootInfo::family_net`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FamilyNet(u8);

impl FamilyNet {
    /// `None` for 0, which means "no network".
    pub const fn new(number: u8) -> Option<FamilyNet> {
        if number == 0 {
            None
        } else {
            Some(FamilyNet(number))
        }
    }

    /// Decodes `BootInfo::family_net`; `None` for anything out of range.
    pub const fn from_word(word: u64) -> Option<FamilyNet> {
        if word == 0 || word > u8::MAX as u64 {
            None
        } else {
            Some(FamilyNet(word as u8))
        }
    }

    pub const fn number(self) -> u8 {
        self.0
    }

    pub const fn word(self) -> u64 {
        self.0 as u64
    }

    /// The subnet's network address, as a host-order u32.
    pub const fn subnet(self) -> u32 {
        (10 << 24) | ((self.0 as u32) << 16)
    }

    /// Member `m`'s IPv4 address (host order), or `None` past [`MAX_MEMBERS`].
    pub const fn ip_of(self, member: u32) -> Option<u32> {
        if member >= MAX_MEMBERS {
            None
        } else {
            Some(self.subnet() + member + 1)
        }
    }

    /// The member number behind an address of this family, if it is one.
    pub const fn member_of(self, ip: u32) -> Option<u32> {
        if ip & 0xffff_0000 != self.subnet() {
            return None;
        }
        let host = ip & 0xffff;
        if host == 0 || host > MAX_MEMBERS {
            None
        } else {
            Some(host - 1)
        }
    }

    /// Member `m`'s MAC address.
    pub const fn mac_of(self, member: u32) -> Option<[u8; 6]> {
        if member >= MAX_MEMBERS {
            None
        } else {
            Some([0x02, 0x53, 0x46, self.0, (member >> 8) as u8, member as u8])
        }
    }

    /// The host's address on the family bridge (host order).
    pub const fn host_ip(self) -> u32 {
        self.subnet() | 0xfffe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_dot_one_and_addresses_round_trip() {
        let f = FamilyNet::new(7).unwrap();
        assert_eq!(f.ip_of(0), Some(0x0a07_0001));
        assert_eq!(f.mac_of(0), Some([2, 0x53, 0x46, 7, 0, 0]));
        assert_eq!(f.ip_of(300), Some(0x0a07_012d));
        for m in [0, 1, 255, 256, MAX_MEMBERS - 1] {
            assert_eq!(f.member_of(f.ip_of(m).unwrap()), Some(m));
        }
        assert_eq!(f.ip_of(MAX_MEMBERS), None);
        assert_eq!(f.member_of(f.host_ip()), None);
        assert_eq!(f.member_of(0x0a08_0001), None);
        assert_eq!(FamilyNet::from_word(0), None);
        assert_eq!(FamilyNet::from_word(256), None);
    }
}
