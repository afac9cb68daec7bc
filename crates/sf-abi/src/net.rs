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

    /// Decodes the family from `BootInfo::family_net` (its low 8 bits; the
    /// rest is the [`FamilyWord`]); `None` when there is no network.
    pub const fn from_word(word: u64) -> Option<FamilyNet> {
        FamilyNet::new(word as u8)
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

/// "No such member" in a [`FamilyWord`] field.
pub const NO_MEMBER: u16 = 0xffff;

/// `BootInfo::family_net` as a whole: the family and the member numbers a
/// guest needs to address its parent, its siblings and its own clones
/// without asking the host.
///
/// Member numbers (unique in the family, with no coordination between
/// hosts): a VM with member `m` owns the descendant numbers `[d, d + B)`,
/// `B` being its clone budget (the root: `m = 0`, `d = 1`). A clone call of
/// `g` clones that each inherit a budget share `s` takes the run
/// `[b, b + g * (1 + s))` of that block: clone `k` is member `b + k - 1` and
/// owns `[b + g + (k - 1) * s, +s)`. A root's first clone call has `b = 1`,
/// so there member == clone id.
///
/// Layout: bits 0..8 the family number, 8..24 the parent's member number,
/// 24..40 `siblings_base` (the `b` of the call that made this VM), 40..56
/// `children_base` (the `b` of this VM's latest clone call); [`NO_MEMBER`]
/// when there is none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FamilyWord {
    pub family: FamilyNet,
    pub parent: u16,
    pub siblings_base: u16,
    pub children_base: u16,
}

impl FamilyWord {
    /// The root of a family: no parent, no siblings, no clones yet.
    pub const fn root(family: FamilyNet) -> FamilyWord {
        FamilyWord {
            family,
            parent: NO_MEMBER,
            siblings_base: NO_MEMBER,
            children_base: NO_MEMBER,
        }
    }

    pub const fn pack(self) -> u64 {
        self.family.word()
            | (self.parent as u64) << 8
            | (self.siblings_base as u64) << 24
            | (self.children_base as u64) << 40
    }

    /// `None` when the word names no family (0: no network).
    pub const fn unpack(word: u64) -> Option<FamilyWord> {
        match FamilyNet::from_word(word) {
            None => None,
            Some(family) => Some(FamilyWord {
                family,
                parent: (word >> 8) as u16,
                siblings_base: (word >> 24) as u16,
                children_base: (word >> 40) as u16,
            }),
        }
    }

    /// The parent's member number (`None` for the root).
    pub const fn parent(self) -> Option<u32> {
        member(self.parent, 0)
    }

    /// The member number of sibling clone `id` (1-based, as `clone` returns).
    pub const fn sibling(self, id: u32) -> Option<u32> {
        if id == 0 {
            return None;
        }
        member(self.siblings_base, id - 1)
    }

    /// The member number of clone `id` of this VM's latest clone call.
    pub const fn child(self, id: u32) -> Option<u32> {
        if id == 0 {
            return None;
        }
        member(self.children_base, id - 1)
    }
}

const fn member(base: u16, offset: u32) -> Option<u32> {
    if base == NO_MEMBER {
        return None;
    }
    let m = base as u32 + offset;
    if m >= MAX_MEMBERS {
        None
    } else {
        Some(m)
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

    #[test]
    fn family_words_round_trip_and_name_peers() {
        let f = FamilyNet::new(9).unwrap();
        let root = FamilyWord::root(f);
        assert_eq!(FamilyWord::unpack(root.pack()), Some(root));
        assert_eq!(FamilyNet::from_word(root.pack()), Some(f));
        assert_eq!(
            (root.parent(), root.sibling(1), root.child(1)),
            (None, None, None)
        );
        let w = FamilyWord {
            children_base: 1,
            ..root
        };
        assert_eq!(
            (w.child(1), w.child(8), w.child(0)),
            (Some(1), Some(8), None)
        );
        let c = FamilyWord {
            family: f,
            parent: 0,
            siblings_base: 1,
            children_base: 40,
        };
        let back = FamilyWord::unpack(c.pack()).unwrap();
        assert_eq!(
            (back.parent(), back.sibling(3), back.child(2)),
            (Some(0), Some(3), Some(41))
        );
        assert_eq!(FamilyWord::unpack(0), None);
        let top = FamilyWord {
            siblings_base: 0xfffe,
            ..c
        };
        assert_eq!(top.sibling(1), None, "past MAX_MEMBERS");
    }
}
