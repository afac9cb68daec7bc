//! The NIC: virtio-net on the virtio-mmio transport in slot 0 of the
//! window at `BootInfo::mmio_base`, on `virtio-drivers`' transport and
//! queues with our own buffers and feature negotiation (its ready-made
//! driver negotiates no offloads). Guest RAM is identity mapped, so the
//! DMA "HAL" is page-aligned heap memory whose virtual address is its
//! physical one.
//!
//! Sending does not wait for the device: frames are queued (the device is
//! notified only when it asked to be, with event indexes) and their buffers
//! reclaimed later, so a burst costs fewer VM exits than frames.
//!
//! Offloads, when the device offers all of them (as Linux's driver uses
//! them): TCP frames go out with a partial checksum and, when larger than
//! the family MTU, as one TSO segment, which the host kernel cuts up only
//! where a link needs it; received frames may be 64 KiB segments. The
//! header work is `sf_net::offload`'s.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;
use sf_abi::layout;
use sf_net::offload::{self, HDR};
use sf_net::{Nic, OFFLOAD_FRAME};
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

/// Descriptors per queue: receive buffers posted, frames in flight.
const QUEUE: usize = 64;
/// A buffer without offloads: the header and one frame.
const BUF: usize = 2048;
/// A buffer with offloads: the header and a 64 KiB segment (the spec asks
/// for at least 65562 bytes with `GUEST_TSO4`).
const BIG_BUF: usize = HDR + OFFLOAD_FRAME;
/// Receive buffers posted with offloads: 2 MiB of guest RAM, where 64
/// small ones took 128 KiB; a stream of small frames still gets 32 per exit.
const BIG_RX: usize = 32;
/// Transmit buffers with offloads (2 MiB of guest RAM): a stream with
/// 2 MiB socket buffers (`netpi stream`) keeps ~32 segments in flight;
/// the stack's default 512 KiB window needs eight.
const BIG_TX: usize = 32;
/// Receive buffers re-posted between notifies at most, when the device
/// did not negotiate `RING_EVENT_IDX`. With it, receive buffers are never
/// notified: this device takes posted buffers at every exit to it, and
/// the driver always exits (the WAIT register) before it waits for a
/// frame. virtio-drivers' `should_notify` compares indexes without
/// wrap-around, so the device's "never notify" `avail_event` (one behind
/// its position) reads as "always", and a notify per 8 buffers was a
/// third of a receiving VM's exits: 687 of 1,816 for a 256 MiB stream
/// (one VM exit is ~25-30 us under the nested hypervisor).
const RX_NOTIFY_BATCH: usize = 8;

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;

bitflags::bitflags! {
    /// The virtio-net features this driver knows (virtio 1.x, 5.1.3).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Features: u64 {
        const CSUM = 1 << 0;
        const GUEST_CSUM = 1 << 1;
        const GUEST_TSO4 = 1 << 7;
        const MAC = 1 << 5;
        const HOST_TSO4 = 1 << 11;
        const STATUS = 1 << 16;
        const RING_EVENT_IDX = 1 << 29;
        const VERSION_1 = 1 << 32;
    }
}

pub(crate) struct GuestHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned, exclusively owned heap
// memory whose address is also its guest-physical address (identity map);
// `dma_dealloc` frees exactly that; MMIO addresses are identity mapped too.
unsafe impl Hal for GuestHal {
    fn dma_alloc(pages: usize, _dir: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let layout = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE)
            .expect("virtio DMA allocation size");
        // SAFETY: the layout has a non-zero size (virtio-drivers asks for
        // at least one page).
        let p = unsafe { alloc_zeroed(layout) };
        let p = NonNull::new(p).expect("out of memory for the NIC's queues");
        (p.as_ptr() as u64, p)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let layout = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE)
            .expect("virtio DMA allocation size");
        // SAFETY: the caller passes back what `dma_alloc` returned.
        unsafe { dealloc(vaddr.as_ptr(), layout) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("MMIO at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _dir: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as u64
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _dir: BufferDirection) {}
}

type Queue = VirtQueue<GuestHal, QUEUE>;

pub(crate) struct VirtioNic {
    transport: MmioTransport<'static>,
    rxq: Queue,
    txq: Queue,
    /// TCP checksum and segmentation offloads both ways (see the module).
    offloads: bool,
    /// Receive buffers posted since the last receive notify.
    rx_unnotified: usize,
    /// Receive buffers need no notify (`RING_EVENT_IDX`, see
    /// [`RX_NOTIFY_BATCH`]).
    rx_silent: bool,
    /// Posted receive buffers, by the token the queue gave them.
    rx: Vec<Option<Box<[u8]>>>,
    /// Sent frames not yet returned by the device: buffer and length.
    tx_busy: Vec<Option<(Box<[u8]>, usize)>>,
    tx_free: Vec<Box<[u8]>>,
}

/// Why the NIC could not be started.
#[derive(Debug)]
pub(crate) enum NicError {
    NotNetwork,
    Driver,
    Queue,
}

impl NicError {
    pub(crate) fn why(&self) -> &'static str {
        match self {
            NicError::NotNetwork => "no virtio-net device in the MMIO window's first slot",
            NicError::Driver => "the virtio-net device refused the driver's set-up",
            NicError::Queue => "the virtio-net device refused a receive buffer",
        }
    }
}

impl VirtioNic {
    /// Starts the virtio-net device in slot 0 of the window at `base`.
    pub(crate) fn open(base: u64) -> Result<VirtioNic, NicError> {
        if base != layout::MMIO_BASE {
            return Err(NicError::NotNetwork);
        }
        let header = NonNull::new(base as *mut VirtIOHeader).ok_or(NicError::NotNetwork)?;
        // SAFETY: the VMM maps this slot for ring 3 (uncached) whenever it
        // gives the VM a NIC (`mmio_base` != 0), for the whole run; nothing
        // else in the guest touches it.
        let mut transport = unsafe { MmioTransport::new(header, layout::MMIO_SLOT as usize) }
            .map_err(|_| NicError::NotNetwork)?;
        if transport.device_type() != DeviceType::Network {
            return Err(NicError::NotNetwork);
        }
        let offload =
            Features::CSUM | Features::GUEST_CSUM | Features::HOST_TSO4 | Features::GUEST_TSO4;
        let got = transport.begin_init(
            Features::VERSION_1
                | Features::MAC
                | Features::STATUS
                | Features::RING_EVENT_IDX
                | offload,
        );
        if !got.contains(Features::VERSION_1) {
            return Err(NicError::Driver);
        }
        let event_idx = got.contains(Features::RING_EVENT_IDX);
        let txq =
            Queue::new(&mut transport, TX_QUEUE, false, event_idx).map_err(|_| NicError::Driver)?;
        let mut rxq =
            Queue::new(&mut transport, RX_QUEUE, false, event_idx).map_err(|_| NicError::Driver)?;
        transport.finish_init();
        // A polling driver has no use for interrupts.
        rxq.set_dev_notify(false);
        // All or nothing: a device offering only some of them gets plain
        // frames from the stack (a received partial checksum is still
        // completed below, whatever was negotiated).
        let offloads = got.contains(offload);
        let big_rx = got.contains(Features::GUEST_TSO4);
        let (rx_len, rx_count) = if big_rx {
            (BIG_BUF, BIG_RX)
        } else {
            (BUF, QUEUE)
        };
        let (tx_len, tx_count) = if offloads {
            (BIG_BUF, BIG_TX)
        } else {
            (BUF, QUEUE / 2)
        };
        let mut nic = VirtioNic {
            transport,
            rxq,
            txq,
            offloads,
            rx_unnotified: 0,
            rx_silent: event_idx,
            rx: (0..QUEUE).map(|_| None).collect(),
            tx_busy: (0..QUEUE).map(|_| None).collect(),
            tx_free: (0..tx_count)
                .map(|_| vec![0u8; tx_len].into_boxed_slice())
                .collect(),
        };
        nic.txq.set_dev_notify(false);
        for _ in 0..rx_count {
            nic.post(vec![0u8; rx_len].into_boxed_slice())
                .map_err(|_| NicError::Queue)?;
        }
        // Once, so that the device looks at the ring whatever it asked.
        nic.transport.notify(RX_QUEUE);
        nic.rx_unnotified = 0;
        Ok(nic)
    }

    /// Posts a receive buffer; notifies per [`RX_NOTIFY_BATCH`] unless
    /// receive buffers are silent.
    fn post(&mut self, mut b: Box<[u8]>) -> Result<(), ()> {
        // SAFETY: the buffer lives in `rx` (heap, never moved) until the
        // device hands it back through `pop_used`.
        let t = unsafe { self.rxq.add(&[], &mut [&mut b[..]]) }.map_err(|_| ())?;
        self.rx[t as usize] = Some(b);
        if self.rx_silent {
            return Ok(());
        }
        self.rx_unnotified += 1;
        if self.rx_unnotified >= RX_NOTIFY_BATCH && self.rxq.should_notify() {
            self.transport.notify(RX_QUEUE);
            self.rx_unnotified = 0;
        }
        Ok(())
    }

    /// Takes back the buffers of frames the device has sent.
    fn reclaim(&mut self) {
        while let Some(t) = self.txq.peek_used() {
            let Some((b, len)) = self.tx_busy.get_mut(t as usize).and_then(Option::take) else {
                break;
            };
            // SAFETY: the same buffer and length given to `add`.
            let _ = unsafe { self.txq.pop_used(t, &[&b[..len]], &mut []) };
            self.tx_free.push(b);
        }
    }
}

impl Nic for VirtioNic {
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        let t = self.rxq.peek_used()?;
        let mut b = self.rx.get_mut(t as usize)?.take()?;
        // SAFETY: `b` is the buffer posted with token `t`.
        let r = unsafe { self.rxq.pop_used(t, &[], &mut [&mut b[..]]) };
        let n = match r {
            Ok(len) => {
                let len = (len as usize).min(b.len());
                let frame_len = len.saturating_sub(HDR);
                let (hdr, frame) = b.split_at_mut(HDR);
                let frame = &mut frame[..frame_len];
                let hdr: &[u8; HDR] = (&*hdr).try_into().expect("HDR bytes");
                let ok =
                    frame_len <= buf.len() && offload::rx_checksum_ok(hdr, frame, self.offloads);
                ok.then(|| {
                    buf[..frame_len].copy_from_slice(frame);
                    frame_len
                })
            }
            Err(_) => None,
        };
        // Post it again at once; a bad frame or length only loses that
        // frame.
        let _ = self.post(b);
        n.or(Some(0))
    }

    fn can_transmit(&mut self) -> bool {
        if self.tx_free.is_empty() {
            self.reclaim();
        }
        !self.tx_free.is_empty() && self.txq.available_desc() >= 1
    }

    fn transmit(&mut self, frame: &[u8]) -> bool {
        if !self.can_transmit() {
            return false;
        }
        let Some(mut b) = self.tx_free.pop() else {
            return false;
        };
        let len = HDR + frame.len().min(b.len() - HDR);
        b[..HDR].fill(0);
        b[HDR..len].copy_from_slice(&frame[..len - HDR]);
        if self.offloads {
            let (hdr, frame) = b[..len].split_at_mut(HDR);
            offload::mark_tx(hdr.try_into().expect("HDR bytes"), frame);
        }
        // SAFETY: `b` stays in `tx_busy` until `pop_used`.
        match unsafe { self.txq.add(&[&b[..len]], &mut []) } {
            Ok(t) => {
                if self.txq.should_notify() {
                    self.transport.notify(TX_QUEUE);
                }
                self.tx_busy[t as usize] = Some((b, len));
                true
            }
            Err(_) => {
                self.tx_free.push(b);
                false
            }
        }
    }

    fn offloads(&self) -> bool {
        self.offloads
    }
}
