//! A VM's place in its family network: its member number and block
//! ([`super::members`]), the packed `BootInfo::family_net` word the guest
//! reads its peers' numbers from, and where its clones' TAPs come from.
//! The clone path uses it to number clones (local and remote) and to give
//! each its identity before its first instruction.

use super::broker::BrokerClient;
use super::clone_taps::{CloneTaps, FIRST_LEASE};
use super::members::{MemberBlock, Placement};
use crate::devices::{DeviceError, ResourceProvider};
use sf_abi::boot_info::BootInfo;
use sf_abi::layout;
use sf_abi::net::{FamilyNet, FamilyWord, NO_MEMBER};
use sf_api::CloneNet;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

/// The NIC's device id, under which its TAP travels in clone resources.
const NIC: &str = "net0";
/// Byte offset of `BootInfo::family_net` (word 20, ABI 3).
const FAMILY_NET_OFFSET: u64 = 20 * 8;
const _: () = assert!(BootInfo::NET_IP_OFFSET == 18 * 8, "ABI 3 layout");

pub(crate) struct VmFamily {
    pub block: MemberBlock,
    pub word: FamilyWord,
    pub vni: u32,
    /// The latest clone call's placement, for the clones it forks.
    pub placement: Option<Placement>,
    /// The clones' TAPs, shared with the clone hook's provider.
    taps: Arc<Mutex<CloneTaps>>,
    /// `taps` holds copies to close once the vCPU has run again: the
    /// number of vCPU entries until then (see [`crate::Vm::family_after_entry`]).
    close_stale_in: u8,
}

/// Entries until stale TAP copies close: this one, then the next, so the
/// vCPU has run in between.
fn stale_countdown(taps: &CloneTaps) -> u8 {
    if taps.has_stale() {
        2
    } else {
        0
    }
}

fn word16(m: u32) -> u16 {
    u16::try_from(m).unwrap_or(NO_MEMBER)
}

/// Gives new clones their TAPs from `taps` (see [`CloneTaps`]).
fn tap_provider(taps: Arc<Mutex<CloneTaps>>) -> ResourceProvider {
    Box::new(move |_ctx| {
        let tap = lock(&taps).own_tap().map_err(|e| DeviceError::Host {
            device: NIC.to_string(),
            what: "no TAP from the family's network broker".to_string(),
            source: Some(e),
        })?;
        Ok(BTreeMap::from([(NIC.to_string(), vec![tap])]))
    })
}

/// The VMM's vCPU thread is the only one that touches the TAPs (the mutex
/// only makes them shareable with the clone hook), so a poisoned lock can
/// only come from a panic on that same thread: its state is still whole.
fn lock(taps: &Mutex<CloneTaps>) -> std::sync::MutexGuard<'_, CloneTaps> {
    taps.lock().unwrap_or_else(|p| p.into_inner())
}

impl crate::Vm {
    /// Makes this VM (with its NIC already added as member 0) the root of
    /// family `family`, whose clones get TAPs from `broker`.
    pub fn join_family_as_root(&mut self, family: FamilyNet, vni: u32, broker: BrokerClient) {
        let budget = self.clones.tickets.budget();
        let mut taps = CloneTaps::new(broker, None);
        taps.lease_ahead(budget.min(FIRST_LEASE));
        let taps = Arc::new(Mutex::new(taps));
        self.family = Some(VmFamily {
            block: MemberBlock::root(budget),
            word: FamilyWord::root(family),
            vni,
            placement: None,
            taps: taps.clone(),
            close_stale_in: 0,
        });
        self.write_family_word();
        self.set_clone_resources(tap_provider(taps));
    }

    /// A remote clone's place, from its (checked) request; `index` is its
    /// position in the request's ids.
    pub(crate) fn join_family_remote(
        &mut self,
        net: &CloneNet,
        index: usize,
        id: u32,
        tap: OwnedFd,
        broker: BrokerClient,
    ) {
        let Some(family) = FamilyNet::new(net.family) else {
            return;
        };
        let [member, first] = net.members[index];
        let budget = self.clones.tickets.budget();
        // Siblings: clone k is base + k - 1, so base follows from any one.
        let base = (member + 1).checked_sub(id).map_or(NO_MEMBER, word16);
        let taps = Arc::new(Mutex::new(CloneTaps::new(broker, Some(tap))));
        self.family = Some(VmFamily {
            block: MemberBlock::new(member, first, budget),
            word: FamilyWord {
                family,
                parent: word16(net.parent),
                siblings_base: base,
                children_base: NO_MEMBER,
            },
            vni: net.vni,
            placement: None,
            taps: taps.clone(),
            close_stale_in: 0,
        });
        self.write_family_word();
        self.set_clone_resources(tap_provider(taps));
    }

    pub(crate) fn family_member(&self) -> Option<u32> {
        self.family.as_ref().map(|f| f.block.member)
    }

    /// The identity words of the boot information: `family_net` and, for
    /// the VM's own member number, `net_ip` (the guest's stack reads its
    /// address there, so a clone has it before its first instruction).
    fn write_family_word(&self) {
        if let Some(f) = &self.family {
            let ip = f.word.family.ip_of(f.block.member).unwrap_or(0);
            let at = layout::BOOT_INFO + BootInfo::NET_IP_OFFSET as u64;
            self.ram.write(at, &u64::from(ip).to_le_bytes());
            self.ram.write(
                layout::BOOT_INFO + FAMILY_NET_OFFSET,
                &f.word.pack().to_le_bytes(),
            );
        }
    }

    /// At a clone call: numbers the ticket's clones, and has a TAP in
    /// hand for each of `local_ids` (the clones forked on this host).
    /// `Ok(share)`, perhaps smaller than asked when the block is
    /// fragmented; `Err` when not even the clones fit, or the family's
    /// broker gave no TAPs (the call fails with `Again`).
    pub(crate) fn family_place(
        &mut self,
        ticket: u32,
        granted: u32,
        share: u32,
        local_ids: &[u32],
    ) -> Result<u32, ()> {
        let Some(f) = self.family.as_mut() else {
            return Ok(share);
        };
        if !lock(&f.taps).reserve(local_ids) {
            return Err(());
        }
        let p = f.block.place(ticket, granted, share).ok_or(())?;
        f.placement = Some(p);
        Ok(p.share)
    }

    /// In the parent, once its clones are forked: its clones' numbers are
    /// in its boot information before it resumes.
    pub(crate) fn family_parent_resumes(&mut self) {
        if let Some(f) = self.family.as_mut() {
            if let Some(p) = f.placement.take() {
                f.word.children_base = word16(p.base);
            }
            let mut taps = lock(&f.taps);
            taps.parent_resumes();
            f.close_stale_in = stale_countdown(&taps);
        }
        self.write_family_word();
    }

    /// In a new local clone `id`: its member number, block and word.
    pub(crate) fn family_become_clone(&mut self, id: u32) {
        if let Some(f) = self.family.as_mut() {
            if let Some(p) = f.placement.take() {
                let parent = f.block.member;
                f.block = p.clone_block(id);
                f.word = FamilyWord {
                    family: f.word.family,
                    parent: word16(parent),
                    siblings_base: word16(p.base),
                    children_base: NO_MEMBER,
                };
            }
            let mut taps = lock(&f.taps);
            taps.become_clone(id);
            f.close_stale_in = stale_countdown(&taps);
        }
        self.write_family_word();
    }

    /// What a clone request tells other hosts about the family, for the
    /// clones `ids` of the latest placement.
    pub(crate) fn family_wire(&self, ids: &[u32]) -> Option<CloneNet> {
        let f = self.family.as_ref()?;
        let p = f.placement?;
        Some(CloneNet {
            family: f.word.family.number(),
            vni: f.vni,
            parent: f.block.member,
            members: ids
                .iter()
                .map(|&k| {
                    let b = p.clone_block(k);
                    [b.member, b.first]
                })
                .collect(),
        })
    }

    /// At every vCPU entry: once the vCPU has run after a clone call (the
    /// clone's first instruction, the parent's resume), closes the TAP
    /// copies the call left (see [`CloneTaps::close_stale`]).
    pub(crate) fn family_after_entry(&mut self) {
        if let Some(f) = self.family.as_mut().filter(|f| f.close_stale_in > 0) {
            f.close_stale_in -= 1;
            if f.close_stale_in == 0 {
                lock(&f.taps).close_stale();
            }
        }
    }

    /// A ticket is released: its clones' numbers are free again.
    pub(crate) fn family_release(&mut self, ticket: u32) {
        if let Some(f) = self.family.as_mut() {
            f.block.release(ticket);
        }
    }
}
