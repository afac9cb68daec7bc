//! What a NIC's state is in a VM descriptor, and what a fork does to it.
//!
//! Saved: the transport's registers (negotiated features, status, queue
//! selectors), each queue's size, ring addresses and the device's ring
//! positions (`next_avail`, `next_used`), the NIC's identity. So a clone,
//! local or on another host, resumes the guest driver's queues exactly
//! where the parent left them. Not saved: the TAP (a clone gets its own)
//! and the counters.
//!
//! Packets in flight at a fork, exactly:
//! - transmit: frames the guest had queued but the device had not sent
//!   (batched notifies leave up to 15 queued) are sent by the parent at
//!   its next exit to the NIC. The clone's copy of the ring still holds
//!   them: the clone's device completes every frame whose source MAC is
//!   the parent's unsent ([`MmioTransport::on_clone`] keeps the old MAC for
//!   that), so the clone never sends a frame with the parent's addresses,
//!   its driver gets every buffer back, and what its own stack queues
//!   after the fork (with its new MAC) goes out normally.
//! - receive, already delivered: frames the parent's device put in receive
//!   buffers that the guest had not consumed are in guest RAM and the used
//!   ring, which the clone inherits: its driver sees them, addressed to the
//!   parent's MAC and IP, and its stack drops them (its sockets open across
//!   the fork are reset anyway).
//! - receive, not yet delivered: frames still queued in the parent's TAP
//!   stay the parent's; the clone's new TAP starts empty.
//!
//! TCP recovers from each of these as from any lost or stray segment.

use super::dma::DmaWindow;
use super::mmio::MmioTransport;
use super::net::Net;
use sf_abi::net::FamilyNet;
use std::os::fd::OwnedFd;
use virtio_queue::{Queue, QueueState, QueueT};

/// One queue, as saved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedQueue {
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
}

/// A virtio-net device behind its transport, as saved in a descriptor.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetState {
    pub status: u32,
    pub acked_features: u64,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub queue_sel: u32,
    pub config_generation: u32,
    pub queues: Vec<SavedQueue>,
    pub window: DmaWindow,
    pub family: u8,
    pub member: u32,
    pub mac: [u8; 6],
}

/// Why a saved state cannot be restored (a corrupt or hostile descriptor).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("saved virtio-net state has {0} queues, expected 2: the descriptor is corrupt or from another version")]
    QueueCount(usize),
    #[error("saved virtio-net queue {queue} is invalid ({why}): the descriptor is corrupt")]
    Queue { queue: usize, why: String },
    #[error("saved virtio-net DMA window {0:?} is empty or inverted: the descriptor is corrupt")]
    Window(DmaWindow),
    #[error("saved virtio-net identity is invalid (family {family}, member {member}): the descriptor is corrupt")]
    Identity { family: u8, member: u32 },
}

impl MmioTransport<Net> {
    pub fn save(&self) -> NetState {
        let n = &self.device;
        NetState {
            status: self.status,
            acked_features: self.acked_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            queues: self.queues.iter().map(save_queue).collect(),
            window: self.window,
            family: n.family.map_or(0, |f| f.number()),
            member: n.member,
            mac: n.mac,
        }
    }

    /// Rebuilds a NIC from a descriptor on `tap` (the clone's own, or none
    /// yet). Every value is checked as if the guest had written it.
    pub fn restore(s: &NetState, tap: Option<OwnedFd>) -> Result<Self, RestoreError> {
        let mut net = Net::with_mac(tap, s.mac);
        if s.family != 0 {
            let family = FamilyNet::new(s.family).expect("nonzero");
            if family.mac_of(s.member) != Some(s.mac) {
                return Err(RestoreError::Identity {
                    family: s.family,
                    member: s.member,
                });
            }
            net.family = Some(family);
            net.member = s.member;
        }
        if s.window.start > s.window.end {
            return Err(RestoreError::Window(s.window));
        }
        let mut t = MmioTransport::new(net, s.window);
        if s.queues.len() != t.queues.len() {
            return Err(RestoreError::QueueCount(s.queues.len()));
        }
        let event_idx = s.acked_features & super::features::RING_EVENT_IDX != 0;
        for (i, sq) in s.queues.iter().enumerate() {
            let q = Queue::try_from(QueueState {
                max_size: t.queues[i].max_size(),
                next_avail: sq.next_avail,
                next_used: sq.next_used,
                event_idx_enabled: event_idx,
                size: sq.size,
                ready: sq.ready,
                desc_table: sq.desc_table,
                avail_ring: sq.avail_ring,
                used_ring: sq.used_ring,
            })
            .map_err(|e| RestoreError::Queue {
                queue: i,
                why: e.to_string(),
            })?;
            if q.ready() {
                super::mmio::check_rings(&q, &s.window)
                    .map_err(|why| RestoreError::Queue { queue: i, why })?;
            }
            t.queues[i] = q;
        }
        t.status = s.status;
        t.acked_features = s.acked_features & super::net::FEATURES;
        t.device_features_sel = s.device_features_sel;
        t.driver_features_sel = s.driver_features_sel;
        t.queue_sel = s.queue_sel;
        t.config_generation = s.config_generation;
        // Re-arms notification suppression at the first run.
        t.pending_activate = t.active();
        Ok(t)
    }

    /// A clone's new identity and TAP, before its first instruction. The
    /// MAC changes, so the config generation moves on (a driver that reads
    /// config twice sees the change).
    pub fn on_clone(&mut self, member: u32, tap: Option<OwnedFd>) -> bool {
        if !self.device.set_identity(member) {
            return false;
        }
        self.device.set_tap(tap);
        self.config_generation = self.config_generation.wrapping_add(1);
        true
    }
}

fn save_queue(q: &Queue) -> SavedQueue {
    SavedQueue {
        size: q.size(),
        ready: q.ready(),
        desc_table: q.desc_table(),
        avail_ring: q.avail_ring(),
        used_ring: q.used_ring(),
        next_avail: q.next_avail(),
        next_used: q.next_used(),
    }
}
