//! Where a VM's clones get their TAPs: leased from the family's broker
//! ahead of the clone call, so that a new clone finds its TAP in hand
//! instead of asking the broker after the fork.
//!
//! Asking after the fork put a broker round trip on every clone's path to
//! its first instruction, and the clones of one call queued behind each
//! other at the broker, which also refills its pool between requests (TAP
//! creation contends for RTNL with other families' set-up and removal): on
//! the shared, busy 2-CPU machine, 0.1–1.5 ms per clone with 1 clone and up
//! to 25 ms with 4. Now the parent leases a call's TAPs before it forks
//! (each with its own broker connection for the clone that will own it)
//! and, once resumed, asks for the next call's without waiting for the
//! answer (one write); the answer waits in the socket until the next clone
//! call. The clone hook takes 20–35 µs.

use super::broker::{BrokerClient, Lease, MAX_TAKE, POOL};
use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;

/// TAPs a root VM leases before its first clone call: a call of up to this
/// many local clones takes no broker round trip at all. Half the broker's
/// pool, so the pool answers it at once and has half its TAPs left for the
/// family's other members while it refills.
pub const FIRST_LEASE: u32 = (POOL / 2) as u32;

pub(crate) struct CloneTaps {
    broker: BrokerClient,
    /// This VM's own TAP, until its NIC takes it (a clone's, or a remote
    /// clone's leased before its VMM sandboxed itself).
    own: Option<OwnedFd>,
    /// Leased and received, for the next clone call.
    ready: Vec<Lease>,
    /// Asked for, with the answer still in the socket.
    pending: u32,
    /// The current clone call's TAPs by clone ID, between placing the
    /// clones and the fork.
    assigned: BTreeMap<u32, Lease>,
    /// Copies to close once the vCPU runs again (see [`Self::close_stale`]).
    stale: Vec<Lease>,
}

impl CloneTaps {
    pub fn new(broker: BrokerClient, own: Option<OwnedFd>) -> CloneTaps {
        CloneTaps {
            broker,
            own,
            ready: Vec::new(),
            pending: 0,
            assigned: BTreeMap::new(),
            stale: Vec::new(),
        }
    }

    /// Asks for `n` more TAPs without waiting for them (at most one
    /// request is outstanding; it is read at the next [`Self::reserve`]).
    pub fn lease_ahead(&mut self, n: u32) {
        let n = n.min(MAX_TAKE).min(POOL as u32);
        if self.pending > 0 || n == 0 {
            return;
        }
        match self.broker.ask(n) {
            Ok(()) => self.pending = n,
            Err(e) => tracing::warn!("cannot lease TAPs ahead from the network broker: {e}"),
        }
    }

    /// Before the fork: a TAP for each of `ids`, the clones this host
    /// forks; false (logged) when the broker could not give them all,
    /// and the clone call fails with `Again`. (No clone asks the broker
    /// itself: it would share the parent's connection, where answers to
    /// the parent's requests for several TAPs arrive.)
    pub fn reserve(&mut self, ids: &[u32]) -> bool {
        // A call that failed after reserving gives its TAPs back.
        self.ready
            .extend(std::mem::take(&mut self.assigned).into_values());
        if let Err(e) = self.fill(ids.len()) {
            tracing::warn!("cannot lease the clones' TAPs: {e}");
            return false;
        }
        for &id in ids {
            let lease = self.ready.pop().expect("filled above");
            self.assigned.insert(id, lease);
        }
        true
    }

    fn fill(&mut self, want: usize) -> io::Result<()> {
        if self.pending > 0 {
            let n = std::mem::take(&mut self.pending);
            self.ready.extend(self.broker.receive(n)?);
        }
        let short = want.saturating_sub(self.ready.len());
        for chunk in chunks(short) {
            self.ready.extend(self.broker.take(chunk)?);
        }
        Ok(())
    }

    /// In the parent after the fork: the clones own their TAPs now (the
    /// parent's copies close soon), and the next call's are asked for.
    pub fn parent_resumes(&mut self) {
        let used = std::mem::take(&mut self.assigned);
        let want = (used.len() as u32).max(FIRST_LEASE);
        self.stale.extend(used.into_values());
        self.lease_ahead(want.saturating_sub(self.ready.len() as u32));
    }

    /// In a new local clone `id`: its own TAP and broker connection; its
    /// copies of the other leases (they stay the parent's and siblings')
    /// close soon.
    pub fn become_clone(&mut self, id: u32) {
        // The parent's outstanding answer is not this clone's to read.
        self.pending = 0;
        let mine = self.assigned.remove(&id);
        self.stale.append(&mut self.ready);
        self.stale
            .extend(std::mem::take(&mut self.assigned).into_values());
        // Every local clone has one (`reserve`).
        if let Some(l) = mine {
            self.own = Some(l.tap);
            self.broker = l.conn;
        }
    }

    pub fn has_stale(&self) -> bool {
        !self.stale.is_empty()
    }

    /// Closes the copies of other VMs' TAPs, off the path to the vCPU's
    /// first instruction: every TAP close takes the kernel's RTNL lock
    /// (`tun_detach`), which a family being set up or removed on the host
    /// holds while it makes or deletes devices; closing them in the clone
    /// hook cost the last of 4 clones 55–65 ms in 2 of 5 runs of
    /// `bench clone --net`.
    pub fn close_stale(&mut self) {
        self.stale.clear();
    }

    /// The TAP for this VM's NIC at its clone hook.
    pub fn own_tap(&mut self) -> io::Result<OwnedFd> {
        self.own
            .take()
            .ok_or_else(|| io::Error::other("no TAP was leased for this clone"))
    }
}

/// `n` split into requests of at most [`MAX_TAKE`].
fn chunks(n: usize) -> impl Iterator<Item = u32> {
    let max = MAX_TAKE as usize;
    (0..n.div_ceil(max)).map(move |i| (n - i * max).min(max) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_stay_within_one_message() {
        assert_eq!(chunks(0).count(), 0);
        assert_eq!(chunks(5).collect::<Vec<_>>(), [5]);
        assert_eq!(chunks(64).collect::<Vec<_>>(), [64]);
        assert_eq!(chunks(130).collect::<Vec<_>>(), [64, 64, 2]);
    }
}
