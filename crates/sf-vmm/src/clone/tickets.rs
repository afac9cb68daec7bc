//! Ticket bookkeeping: how many clones this VM may still have, and what
//! each ticket is doing. Pure logic; the processes live in [`super::fork`].

use super::Group;
use sf_abi::hypercall::Error as HcError;
use std::collections::BTreeMap;

pub enum TicketState {
    /// Granted, not yet used to clone.
    Reserved { granted: u32 },
    /// Clones are running (or done, not yet joined).
    Cloned(Box<Group>),
    /// Joined; the record waits for the guest to fetch it.
    Joined { granted: u32, record: Vec<u8> },
}

impl TicketState {
    fn granted(&self) -> u32 {
        match self {
            TicketState::Reserved { granted } | TicketState::Joined { granted, .. } => *granted,
            TicketState::Cloned(g) => g.granted,
        }
    }
}

pub struct Tickets {
    next_id: u32,
    max_clones: u32,
    reserved: u32,
    map: BTreeMap<u32, TicketState>,
}

impl Tickets {
    pub fn new(max_clones: u32) -> Tickets {
        Tickets {
            next_id: 1,
            max_clones,
            reserved: 0,
            map: BTreeMap::new(),
        }
    }

    /// Grants up to `n` of the clones still available.
    pub fn request(&mut self, n: u64) -> Result<(u32, u32), HcError> {
        if n == 0 {
            return Err(HcError::Invalid);
        }
        let available = self.max_clones - self.reserved;
        if available == 0 {
            return Err(HcError::Again);
        }
        let granted = n.min(available as u64) as u32;
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).ok_or(HcError::Again)?;
        self.reserved += granted;
        self.map.insert(id, TicketState::Reserved { granted });
        Ok((id, granted))
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

    pub fn set(&mut self, id: u32, state: TicketState) {
        self.map.insert(id, state);
    }

    /// Forgets a ticket and frees its clones for new requests.
    pub fn release(&mut self, id: u32) -> Option<TicketState> {
        let t = self.map.remove(&id)?;
        self.reserved -= t.granted();
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
    fn ticket_states_gate_the_calls() {
        let mut t = Tickets::new(8);
        let (id, g) = t.request(3).unwrap();
        assert_eq!(t.reserved(id), Ok(g));
        assert_eq!(t.reserved(id + 1), Err(HcError::NoEntry));
        t.set(
            id,
            TicketState::Joined {
                granted: g,
                record: vec![],
            },
        );
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
