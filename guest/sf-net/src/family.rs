//! Who is who in a clone family, from `BootInfo::family_net`.
/// Who is who in this VM's family, from the `family_net` word: bits 8..24
/// the parent's member number, 24..40 the first member number of this VM's
/// clone call (sibling `j` is that + j - 1), 40..56 the first of this VM's
/// latest clone call (its clone `k` is that + k - 1); 0xFFFF for none. A
/// word with nothing above the family number is a flat family: parent 0,
/// clone `j` of the root is member `j`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Relatives {
    pub parent: Option<u32>,
    pub siblings_base: Option<u32>,
    pub children_base: Option<u32>,
}

impl Relatives {
    pub fn from_word(word: u64) -> Relatives {
        if word >> 8 == 0 {
            return Relatives {
                parent: Some(0),
                siblings_base: Some(1),
                children_base: Some(1),
            };
        }
        let field = |shift: u32| {
            let v = ((word >> shift) & 0xffff) as u32;
            (v != 0xffff).then_some(v)
        };
        Relatives {
            parent: field(8),
            siblings_base: field(24),
            children_base: field(40),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_words_name_parent_siblings_and_children() {
        let flat = Relatives::from_word(7);
        assert_eq!(
            (flat.parent, flat.siblings_base, flat.children_base),
            (Some(0), Some(1), Some(1))
        );
        // The root before any clone call: no parent, siblings or children.
        let root = Relatives::from_word(7 | 0xffff << 8 | 0xffff << 24 | 0xffff << 40);
        assert_eq!(
            (root.parent, root.siblings_base, root.children_base),
            (None, None, None)
        );
        // A nested clone: parent 3, made by a call whose first is 20, and
        // itself the parent of members 40.. .
        let n = Relatives::from_word(7 | 3 << 8 | 20 << 24 | 40 << 40);
        assert_eq!(
            (n.parent, n.siblings_base, n.children_base),
            (Some(3), Some(20), Some(40))
        );
    }
}
