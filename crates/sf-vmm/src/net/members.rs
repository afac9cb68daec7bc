//! Member numbers: unique in a family on every host, with no coordination
//! between hosts, because they follow the clone budget's hierarchical
//! delegation ([`crate::clone`]'s tickets).
//!
//! A VM with member number `m` and budget `B` owns the descendant numbers
//! `[d, d + B)` (the root: `m = 0`, `d = 1`). A clone call of `g` clones that
//! each inherit a share `s` takes a free run `[b, b + g * (1 + s))` of the
//! block: clone `k` (1..=g) is member `b + k - 1` and owns `[b + g + (k-1)*s,
//! +s)`. A VM never has more than `B` live descendants, so the runs of its
//! live tickets fit in the block; they can be fragmented when tickets are
//! released out of order, and then the share shrinks to the largest run
//! (a smaller share is always within budget). The same rule is in
//! `sf_abi::net::FamilyWord` for guests.

use std::collections::BTreeMap;

/// A VM's member number and the block of numbers its descendants use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberBlock {
    pub member: u32,
    pub first: u32,
    pub len: u32,
    /// Live tickets' runs: start -> (length, ticket id).
    runs: BTreeMap<u32, (u32, u32)>,
}

/// Where one clone call's clones sit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Member number of clone 1.
    pub base: u32,
    pub granted: u32,
    /// The share each clone gets (at most the one asked for).
    pub share: u32,
}

impl Placement {
    /// Clone `k` (1..=granted): its member number and block.
    pub fn clone_block(&self, k: u32) -> MemberBlock {
        assert!(
            (1..=self.granted).contains(&k),
            "clone {k} of {}",
            self.granted
        );
        MemberBlock::new(
            self.base + k - 1,
            self.base + self.granted + (k - 1) * self.share,
            self.share,
        )
    }
}

impl MemberBlock {
    pub fn new(member: u32, first: u32, len: u32) -> MemberBlock {
        MemberBlock {
            member,
            first,
            len,
            runs: BTreeMap::new(),
        }
    }

    /// A family's first VM with clone budget `budget`.
    pub fn root(budget: u32) -> MemberBlock {
        MemberBlock::new(0, 1, budget)
    }

    /// Places ticket `ticket`'s `granted` clones, each asking for `share`.
    /// `None` when not even `granted` consecutive numbers are free.
    pub fn place(&mut self, ticket: u32, granted: u32, share: u32) -> Option<Placement> {
        if granted == 0 {
            return None;
        }
        let end = self.first + self.len;
        let mut best: Option<(u32, u32)> = None; // (start, free length)
        let mut at = self.first;
        let mut consider = |start: u32, stop: u32| {
            let free = stop - start;
            let want = granted * (1 + share);
            if free >= want {
                best = Some(best.filter(|b| b.1 >= want).unwrap_or((start, free)));
            } else if free >= granted && best.is_none_or(|b| b.1 < free) {
                best = Some((start, free));
            }
        };
        for (&start, &(len, _)) in &self.runs {
            consider(at, start);
            at = start + len;
        }
        consider(at, end);
        let (base, free) = best?;
        let share = share.min(free / granted - 1);
        self.runs.insert(base, (granted * (1 + share), ticket));
        Some(Placement {
            base,
            granted,
            share,
        })
    }

    /// Ticket `ticket` is released: its numbers are free again.
    pub fn release(&mut self, ticket: u32) {
        self.runs.retain(|_, &mut (_, t)| t != ticket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn a_flat_family_numbers_clones_by_their_ids() {
        let mut root = MemberBlock::root(32);
        let p = root.place(1, 8, 1).unwrap();
        for k in 1..=8 {
            assert_eq!(p.clone_block(k).member, k);
        }
        assert_eq!(p.clone_block(1).first, 9);
        assert_eq!(p.clone_block(8).first, 16);
    }

    #[test]
    fn fragmentation_shrinks_the_share_or_refuses() {
        let mut b = MemberBlock::root(8);
        assert_eq!(b.place(1, 2, 0).unwrap().base, 1);
        assert_eq!(b.place(2, 2, 0).unwrap().base, 3);
        assert_eq!(b.place(3, 2, 0).unwrap().base, 5);
        b.release(2);
        let p = b.place(4, 1, 5).unwrap();
        assert_eq!((p.base, p.share), (3, 1), "largest free run is 2 numbers");
        assert_eq!(b.place(5, 3, 0), None);
        b.release(1);
        b.release(3);
        b.release(4);
        assert_eq!(b.place(6, 8, 0).unwrap().base, 1);
    }

    /// Walk random families as the budget rules allow (every VM takes
    /// tickets of random width, releases random ones) and check that live
    /// members never share a number and stay inside the root's block.
    #[test]
    fn live_members_are_unique_under_random_families() {
        let mut seed = 0x5eed_u64;
        let mut rnd = |n: u32| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) % u64::from(n.max(1))) as u32
        };
        for _ in 0..200 {
            // (block, budget left, live tickets' (id, cost, children))
            struct Vm {
                block: MemberBlock,
                left: u32,
                tickets: Vec<(u32, u32, Vec<usize>)>,
                alive: bool,
            }
            let mut vms = vec![Vm {
                block: MemberBlock::root(64),
                left: 64,
                tickets: vec![],
                alive: true,
            }];
            for step in 0..60 {
                let v = rnd(vms.len() as u32) as usize;
                if !vms[v].alive {
                    continue;
                }
                if rnd(3) > 0 && vms[v].left > 0 {
                    let g = 1 + rnd(vms[v].left.min(6));
                    let s = (vms[v].left - g) / 2 / g;
                    let Some(p) = vms[v].block.place(step, g, s) else {
                        continue;
                    };
                    vms[v].left -= g * (1 + p.share);
                    let mut kids = vec![];
                    for k in 1..=g {
                        kids.push(vms.len());
                        vms.push(Vm {
                            block: p.clone_block(k),
                            left: p.share,
                            tickets: vec![],
                            alive: true,
                        });
                    }
                    vms[v].tickets.push((step, g * (1 + p.share), kids));
                } else if !vms[v].tickets.is_empty() {
                    let i = rnd(vms[v].tickets.len() as u32) as usize;
                    let (id, cost, kids) = vms[v].tickets.remove(i);
                    let mut stack = kids;
                    while let Some(c) = stack.pop() {
                        vms[c].alive = false;
                        stack.extend(vms[c].tickets.drain(..).flat_map(|t| t.2));
                    }
                    vms[v].block.release(id);
                    vms[v].left += cost;
                }
                let mut seen = BTreeSet::new();
                for vm in vms.iter().filter(|vm| vm.alive) {
                    assert!(vm.block.member <= 64);
                    assert!(
                        seen.insert(vm.block.member),
                        "member {} twice",
                        vm.block.member
                    );
                }
            }
        }
    }
}
