//! virtio-net (device ID 1) over a TAP (or any fd that carries one frame
//! per read and write, such as a datagram socketpair in tests). Queue 0
//! receives, queue 1 transmits; every frame is preceded by the 12-byte
//! `virtio_net_hdr` of virtio 1.x, which the TAP (opened with
//! `IFF_VNET_HDR`, header size 12) passes through as it is.
//!
//! No interrupts and no I/O thread (a VMM that forks stays single-threaded):
//! transmit rings are drained and receive buffers filled at every exit to
//! the device, and the driver's wait register sleeps in `poll()` on the TAP.
//! With `RING_EVENT_IDX` the device asks for a transmit notify only every
//! [`TX_NOTIFY_EVERY`] chains and never for receive buffers, so a bulk
//! stream costs a fraction of an exit per packet; a driver must therefore
//! not spin on transmit completions (they come at its next wait or notify).
//!
//! Identity: the MAC in config space derives from the family and the
//! member number (`sf_abi::net::FamilyNet`); a clone gets its own through
//! [`Net::set_identity`] and a fresh TAP through [`Net::set_tap`] before its
//! first instruction.

use super::dma::DmaWindow;
use super::mmio::Waitable;
use super::{features, DriverError, Mem, VirtioDevice};
use sf_abi::net::FamilyNet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;
use virtio_queue::Queue;

pub const DEVICE_ID: u32 = 1;
/// The device's MAC is in config space.
pub const F_MAC: u64 = 1 << 5;
/// Config space has a link status word.
pub const F_STATUS: u64 = 1 << 16;
/// The driver may send frames with a partial TCP/UDP checksum
/// (`NEEDS_CSUM`): the host kernel completes it.
pub const F_CSUM: u64 = 1 << 0;
/// The driver accepts frames with a partial checksum (`NEEDS_CSUM`) or one
/// the host already checked (`DATA_VALID`).
pub const F_GUEST_CSUM: u64 = 1 << 1;
/// The driver accepts TCPv4 segments of up to 64 KiB (the host kernel's
/// GRO/GSO super-packets), in receive buffers big enough for them.
pub const F_GUEST_TSO4: u64 = 1 << 7;
/// The driver may send TCPv4 segments of up to 64 KiB (`gso_type` TCPV4,
/// `gso_size` the MSS): the host kernel segments them where it must.
pub const F_HOST_TSO4: u64 = 1 << 11;
/// Features offered: the offloads above, as Linux's virtio-net uses them
/// (a driver that acks none of them gets plain frames of at most 1514
/// bytes), no mergeable receive buffers, so each receive buffer holds a
/// whole frame. Under the nested hypervisor every exit and every frame
/// costs: a 64 KiB segment moves 45 frames' worth of data for the price of
/// one.
pub const FEATURES: u64 = features::VERSION_1
    | features::RING_EVENT_IDX
    | F_MAC
    | F_STATUS
    | F_CSUM
    | F_GUEST_CSUM
    | F_GUEST_TSO4
    | F_HOST_TSO4;
/// `virtio_net_hdr` size with `VERSION_1` (`num_buffers` included).
pub const HDR_LEN: usize = 12;
/// Largest frame: 1500-byte MTU plus the Ethernet header.
pub const MAX_FRAME: usize = 1514;
/// Smallest receive buffer a driver may post (header + largest frame).
pub const MIN_RX_BUFFER: u64 = (HDR_LEN + MAX_FRAME) as u64;
/// Largest frame with segmentation offloads: a 64 KiB IP packet plus the
/// Ethernet header.
pub const MAX_GSO_FRAME: usize = 65535 + 14;
/// Largest transmit chain accepted (header + a 64 KiB segment); longer is
/// a driver error.
pub const MAX_TX_CHAIN: u64 = (HDR_LEN + MAX_GSO_FRAME) as u64;
pub const RX: usize = 0;
pub const TX: usize = 1;
pub const QUEUE_SIZE: u16 = 256;
/// With `RING_EVENT_IDX`, the driver notifies after this many new transmit
/// chains (it waits or notifies to flush fewer): as many as our guest
/// driver keeps transmit buffers, so it notifies only when it has no
/// buffer left. A 256 MiB stream between two VMs (2 MiB windows, load
/// average 11): 16 took the sender 665-707 exits (218-236 of them
/// notifies), 32 took 538-545 (37-44), at the same 8.7-11.3 Gbit/s.
pub const TX_NOTIFY_EVERY: u16 = 32;
/// Config space: `mac[6]`, `status: u16` (1 = link up).
const LINK_UP: u16 = 1;

/// Counters for the exits-per-packet measurement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetStats {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    /// Times the device ran its queues (every exit to it).
    pub runs: u64,
    pub notifies: u64,
    pub waits: u64,
}

pub struct Net {
    pub(super) tap: Option<OwnedFd>,
    pub(super) family: Option<FamilyNet>,
    pub(super) member: u32,
    pub(super) mac: [u8; 6],
    pub(super) stats: NetStats,
    pub(super) rx_frame: Vec<u8>,
    /// The MAC this NIC had before the last clone: frames still queued
    /// from before the fork carry it, and are completed unsent (see `state`).
    pub(super) former_mac: Option<[u8; 6]>,
    /// `stats.rx_packets` when the last wait began: frames delivered since
    /// (by the run that starts every wait, or by an exit in between) have
    /// not been seen by the guest yet, so that wait must not sleep.
    pub(super) rx_at_wait: u64,
    /// What the TAP may hand this driver (`TUN_F_*`), from the features it
    /// acked; kept for a clone's fresh TAP.
    pub(super) tap_offloads: libc::c_uint,
    /// The features the driver acked, for what its transmit headers may
    /// ask of the host kernel (`net_tx::check_offloads`).
    pub(super) acked: u64,
}

impl Net {
    /// A NIC on `tap` (a TAP with a 12-byte vnet header, non-blocking)
    /// with the identity of `member` of `family`; `None` when the member
    /// number is past the family's address space.
    pub fn new(tap: Option<OwnedFd>, family: FamilyNet, member: u32) -> Option<Net> {
        Some(Net {
            tap,
            family: Some(family),
            member,
            mac: family.mac_of(member)?,
            stats: NetStats::default(),
            rx_at_wait: 0,
            rx_frame: vec![0; HDR_LEN + MAX_GSO_FRAME],
            former_mac: None,
            tap_offloads: 0,
            acked: 0,
        })
    }

    /// A NIC with an explicit MAC and no family (tests, host-only use).
    pub fn with_mac(tap: Option<OwnedFd>, mac: [u8; 6]) -> Net {
        Net {
            tap,
            family: None,
            member: 0,
            mac,
            stats: NetStats::default(),
            rx_at_wait: 0,
            rx_frame: vec![0; HDR_LEN + MAX_GSO_FRAME],
            former_mac: None,
            tap_offloads: 0,
            acked: 0,
        }
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// The IPv4 address (host order) the guest must use, for
    /// `BootInfo::net_ip`; 0 without a family.
    pub fn ip(&self) -> u32 {
        self.family.and_then(|f| f.ip_of(self.member)).unwrap_or(0)
    }

    pub fn family(&self) -> Option<FamilyNet> {
        self.family
    }

    /// A clone's identity: its member number's MAC. Frames already in the
    /// guest's rings stay as they are (see `state` for what a fork does).
    pub fn set_identity(&mut self, member: u32) -> bool {
        let Some(mac) = self.family.and_then(|f| f.mac_of(member)) else {
            return false;
        };
        self.member = member;
        self.former_mac = Some(self.mac).filter(|&old| old != mac);
        self.mac = mac;
        true
    }

    /// A new backend (a clone's own TAP), or none: without one, transmitted
    /// frames are completed and dropped, and nothing is received.
    pub fn set_tap(&mut self, tap: Option<OwnedFd>) {
        self.tap = tap;
        // A TAP arrives with none (`tap::prepare`): no ioctl on the clone
        // path unless the driver took offloads.
        if self.tap_offloads != 0 {
            self.apply_offloads();
        }
    }

    /// Tells the TAP what it may hand the driver: with offloads off the
    /// host kernel segments and checksums every frame before the TAP, so a
    /// driver that acked none of them gets only plain frames. A backend
    /// that is not a TAP (a socket pair in tests) refuses, which changes
    /// nothing for the driver: it then gets plain frames.
    fn apply_offloads(&mut self) {
        let Some(tap) = &self.tap else { return };
        if let Err(e) = crate::net::tap::set_offloads(tap, self.tap_offloads) {
            tracing::debug!("virtio-net: TAP offloads {:#x}: {e}", self.tap_offloads);
        }
    }
}

/// The TAP offloads (`TUN_F_*`) matching what a driver acked: TSO4 only
/// with checksum offload, as the spec and the TAP both require.
pub fn tap_offloads(acked: u64) -> libc::c_uint {
    use crate::net::tap::{TUN_F_CSUM, TUN_F_TSO4};
    if acked & F_GUEST_CSUM == 0 {
        return 0;
    }
    if acked & F_GUEST_TSO4 != 0 {
        TUN_F_CSUM | TUN_F_TSO4
    } else {
        TUN_F_CSUM
    }
}

impl VirtioDevice for Net {
    fn device_id(&self) -> u32 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac);
        config[6..].copy_from_slice(&LINK_UP.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| config.get(o as usize))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, acked: u64, queues: &mut [Queue], mem: &Mem) {
        self.acked = acked;
        self.tap_offloads = tap_offloads(acked);
        self.apply_offloads();
        if acked & features::RING_EVENT_IDX != 0 {
            super::net_tx::arm_notify(&queues[TX], mem);
            super::net_rx::silence_notify(&queues[RX], mem);
        }
    }

    fn process(
        &mut self,
        queues: &mut [Queue],
        mem: &Mem,
        window: &DmaWindow,
        notified: Option<usize>,
    ) -> Result<(), DriverError> {
        self.stats.runs += 1;
        if notified.is_some() {
            self.stats.notifies += 1;
        }
        let (rx, tx) = queues.split_at_mut(TX);
        self.transmit(&mut tx[0], mem, window)?;
        self.receive(&mut rx[RX], mem, window)?;
        Ok(())
    }

    fn reset(&mut self) {
        self.acked = 0;
        self.tap_offloads = 0;
        self.apply_offloads();
    }
}

impl Waitable for Net {
    fn wait_input(&mut self, timeout: Duration) {
        self.stats.waits += 1;
        // Frames just put in the receive ring: the guest has work, and
        // sleeping until the next frame (or the timeout) would stall it
        // (measured: a VM-to-VM TCP stream ran at 7 Mbit/s instead of 69).
        let fresh = self.stats.rx_packets != self.rx_at_wait;
        self.rx_at_wait = self.stats.rx_packets;
        if fresh {
            return;
        }
        let mut pfd = libc::pollfd {
            fd: self.tap.as_ref().map_or(-1, |t| t.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: one pollfd on the stack, valid for the call; a negative
        // fd is ignored by poll, which then only sleeps. EINTR (the run
        // timeout's SIGALRM) just ends the wait early.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }
}
