//! Ticket bookkeeping: how many clones this VM may still have, and what
//! each ticket is doing. Pure logic; the processes live in [`super::fork`].
//!
//! The budget is a family's, by hierarchical delegation: a VM with budget
//! `B` may have at most `B` live descendants, all levels together. A ticket
//! of `m` clones costs `m`; at the clone call each clone inherits a share
//! `s = (B - reserved) / 2 / m` of what is left (the parent keeps the other
//! half for its later tickets), so the ticket then costs `m * (1 + s)`. A
//! clone can itself have at most `s` live descendants, so a family never
//! exceeds the root's `B`, on this host or any other (the share travels in
//! the clone request). The parent gets the whole cost back when the ticket
//! is released after `join`. A ticket that cannot be granted gets `Again`.
//!
//! Join results are budgeted the same way: every clone may hand back
//! [`RESULT_FLOOR`] bytes, and a ticket's clones share equally what this
//! VM's other unreleased tickets left of [`RESULTS_HELD_MAX`] on top. The
//! cap is fixed at the grant, so the guest can ask it before it plans its
//! work, and the results one VMM holds stay within `RESULTS_HELD_MAX` plus
//! the floor per live clone (at most 256 x 64 KiB).

use super::Group;
use sf_abi::clone::{RESULTS_HELD_MAX, RESULT_FLOOR};
use sf_abi::hypercall::Error as HcError;
use std::collections::BTreeMap;

pub enum TicketState {
    /// Granted, not yet used to clone.
    Reserved { granted: u32 },
    /// Clones are running (or done, not yet joined).
    Cloned(Box<Group>),
    /// Joined; the record waits for the guest to fetch it. `cost`: the
    /// budget the ticket still holds.
    Joined { cost: u32, record: Vec<u8> },
}

impl TicketState {
    /// How much of the VM's budget this ticket holds.
    fn cost(&self) -> u32 {
        match self {
            TicketState::Reserved { granted } => *granted,
            TicketState::Joined { cost, .. } => *cost,
            TicketState::Cloned(g) => g.granted + g.delegated,
        }
    }
}

pub struct Tickets {
    next_id: u32,
    budget: u32,
    reserved: u32,
    map: BTreeMap<u32, TicketState>,
    /// Per ticket: each clone's result cap, and the bytes above the floor
    /// it holds of [`RESULTS_HELD_MAX`] until release.
    result_caps: BTreeMap<u32, (u64, u64)>,
    results_reserved: u64,
}

impl Tickets {
    pub fn new(budget: u32) -> Tickets {
        Tickets {
            next_id: 1,
            budget,
            reserved: 0,
            map: BTreeMap::new(),
            result_caps: BTreeMap::new(),
            results_reserved: 0,
        }
    }

    /// The most live descendants this VM may have.
    pub fn budget(&self) -> u32 {
        self.budget
    }

    /// The budget each of `granted` clones inherits if they are forked now.
    pub fn share(&self, granted: u32) -> u32 {
        (self.budget - self.reserved) / 2 / granted.max(1)
    }

    /// Ticket `id` has cloned: its group (with `delegated` set) replaces the
    /// reservation, and the delegated budget is held until release.
    pub fn cloned(&mut self, id: u32, group: Box<Group>) {
        self.reserved += group.delegated;
        debug_assert!(self.reserved <= self.budget);
        self.map.insert(id, TicketState::Cloned(group));
    }

    /// Ticket `id` is joined: it keeps its cost until the record is fetched.
    pub fn joined(&mut self, id: u32, record: Vec<u8>) {
        if let Some(t) = self.map.get_mut(&id) {
            let cost = t.cost();
            *t = TicketState::Joined { cost, record };
        }
    }

    /// Grants up to `n` of the clones still available.
    pub fn request(&mut self, n: u64) -> Result<(u32, u32), HcError> {
        if n == 0 {
            return Err(HcError::Invalid);
        }
        let available = self.budget - self.reserved;
        if available == 0 {
            return Err(HcError::Again);
        }
        let granted = n.min(available as u64) as u32;
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).ok_or(HcError::Again)?;
        self.reserved += granted;
        self.map.insert(id, TicketState::Reserved { granted });
        let left = RESULTS_HELD_MAX as u64 - self.results_reserved;
        let extra = left / granted as u64;
        self.results_reserved += extra * granted as u64;
        self.result_caps
            .insert(id, (RESULT_FLOOR as u64 + extra, extra * granted as u64));
        Ok((id, granted))
    }

    /// The most result bytes each clone of ticket `id` may hand back.
    pub fn result_cap(&self, id: u32) -> Result<u64, HcError> {
        self.result_caps
            .get(&id)
            .map(|&(cap, _)| cap)
            .ok_or(HcError::NoEntry)
    }

    /// The granted count of a ticket that may be used to clone now.
    pub fn reserved(&self, id: u32) -> Result<u32, HcError> {
        match self.map.get(&id) {
            None => Err(HcError::NoEntry),
            Some(TicketState::Reserved { granted }) => Ok(*granted),
            Some(_) => Err(HcError::Busy),
        }
    }

    pub fn get_mut(&mut self, id: u32) -> Result<&mut TicketState, HcError> {
        self.map.get_mut(&id).ok_or(HcError::NoEntry)
    }

    /// Forgets a ticket and frees its clones for new requests.
    pub fn release(&mut self, id: u32) -> Option<TicketState> {
        let t = self.map.remove(&id)?;
        self.reserved -= t.cost();
        if let Some((_, held)) = self.result_caps.remove(&id) {
            self.results_reserved -= held;
        }
        Some(t)
    }

    /// Every ticket with running clones, for cleanup when the VM ends.
    pub fn groups_mut(&mut self) -> impl Iterator<Item = &mut Group> {
        self.map.values_mut().filter_map(|t| match t {
            TicketState::Cloned(g) => Some(&mut **g),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_shrink_to_the_limit_and_never_allocate_per_request() {
        let mut t = Tickets::new(32);
        let (a, ga) = t.request(1_000_000_000).unwrap();
        assert_eq!(ga, 32);
        assert_eq!(t.request(1), Err(HcError::Again));
        assert_eq!(t.request(0), Err(HcError::Invalid));
        t.release(a);
        let (_, g) = t.request(u64::MAX).unwrap();
        assert_eq!(g, 32);
    }

    #[test]
    fn shares_never_let_a_family_exceed_its_budget() {
        // Walk a worst-case family: every VM takes all it can, one clone
        // per ticket (the deepest chain) and wide tickets (the widest).
        fn live(budget: u32, width: u32) -> u32 {
            let mut t = Tickets::new(budget);
            let mut total = 0;
            while let Ok((_, g)) = t.request(width as u64) {
                let s = t.share(g);
                t.reserved += s * g;
                total += g + g * live(s, width);
            }
            assert!(t.reserved <= budget);
            total
        }
        for budget in [0, 1, 2, 3, 8, 32, 256] {
            for width in [1, 2, 4, 1000] {
                let n = live(budget, width);
                assert!(n <= budget, "budget {budget} width {width}: {n} live");
            }
        }
        assert_eq!(Tickets::new(2).share(2), 0);
        assert_eq!(Tickets::new(32).share(1), 16);
    }

    #[test]
    fn result_caps_share_the_held_bytes_and_come_back_at_release() {
        let mut t = Tickets::new(256);
        let (a, _) = t.request(2).unwrap();
        let half = RESULT_FLOOR as u64 + RESULTS_HELD_MAX as u64 / 2;
        assert_eq!(t.result_cap(a), Ok(half));
        // The rest is taken by a greedy one-clone ticket; a third gets the
        // floor, and every clone of every ticket together stays in bounds.
        let (b, _) = t.request(1).unwrap();
        let (c, gc) = t.request(1000).unwrap();
        assert_eq!(t.result_cap(c), Ok(RESULT_FLOOR as u64));
        let held: u64 = [(a, 2), (b, 1), (c, gc)]
            .iter()
            .map(|&(id, g)| t.result_cap(id).unwrap() * g as u64)
            .sum();
        assert!(held <= RESULTS_HELD_MAX as u64 + 256 * RESULT_FLOOR as u64);
        t.release(a);
        t.release(b);
        t.release(c);
        assert_eq!(t.result_cap(a), Err(HcError::NoEntry));
        let (d, _) = t.request(1).unwrap();
        assert_eq!(
            t.result_cap(d),
            Ok((RESULT_FLOOR + RESULTS_HELD_MAX) as u64),
            "released tickets give their bytes back"
        );
    }

    #[test]
    fn ticket_states_gate_the_calls() {
        let mut t = Tickets::new(8);
        let (id, g) = t.request(3).unwrap();
        assert_eq!(t.reserved(id), Ok(g));
        assert_eq!(t.reserved(id + 1), Err(HcError::NoEntry));
        t.joined(id, vec![]);
        assert_eq!(t.reserved(id), Err(HcError::Busy));
        assert!(t.release(id).is_some());
        assert_eq!(t.reserved(id), Err(HcError::NoEntry));
        assert_eq!(
            t.request(8).unwrap().1,
            8,
            "released clones are available again"
        );
    }
}
