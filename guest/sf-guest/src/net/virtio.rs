//! The NIC: virtio-net on the virtio-mmio transport in slot 0 of the
//! window at `BootInfo::mmio_base`, driven by `virtio-drivers`' raw driver
//! with our own buffers. Guest RAM is identity mapped, so the DMA "HAL" is
//! page-aligned heap memory whose virtual address is its physical one.
//!
//! Sending does not wait for the device: frames are queued (the device is
//! notified only when it asked to be, with event indexes) and their buffers
//! reclaimed later, so a burst costs fewer VM exits than frames.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;
use sf_abi::layout;
use sf_net::{Nic, MAX_FRAME};
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

/// Descriptors per queue: receive buffers posted, frames in flight.
const QUEUE: usize = 64;
/// A buffer holds the 12-byte virtio-net header and one frame.
const BUF: usize = 2048;

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

type Raw = VirtIONetRaw<GuestHal, MmioTransport<'static>, QUEUE>;

pub(crate) struct VirtioNic {
    raw: Raw,
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
        let transport = unsafe { MmioTransport::new(header, layout::MMIO_SLOT as usize) }
            .map_err(|_| NicError::NotNetwork)?;
        if transport.device_type() != DeviceType::Network {
            return Err(NicError::NotNetwork);
        }
        let mut raw = Raw::new(transport).map_err(|_| NicError::Driver)?;
        raw.disable_interrupts();
        let mut rx = Vec::new();
        rx.resize_with(QUEUE, || None);
        for _ in 0..QUEUE {
            let mut b: Box<[u8]> = vec![0u8; BUF].into_boxed_slice();
            // SAFETY: the buffer lives in `rx` (heap, never moved) until the
            // device hands it back through `receive_complete`.
            let t = unsafe { raw.receive_begin(&mut b) }.map_err(|_| NicError::Queue)?;
            rx[t as usize] = Some(b);
        }
        let mut tx_busy = Vec::new();
        tx_busy.resize_with(QUEUE, || None);
        let tx_free = (0..QUEUE / 2)
            .map(|_| vec![0u8; BUF].into_boxed_slice())
            .collect();
        Ok(VirtioNic {
            raw,
            rx,
            tx_busy,
            tx_free,
        })
    }

    /// Takes back the buffers of frames the device has sent.
    fn reclaim(&mut self) {
        while let Some(t) = self.raw.poll_transmit() {
            let Some((b, len)) = self.tx_busy.get_mut(t as usize).and_then(Option::take) else {
                break;
            };
            // SAFETY: the same buffer and length given to `transmit_begin`.
            let _ = unsafe { self.raw.transmit_complete(t, &b[..len]) };
            self.tx_free.push(b);
        }
    }
}

impl Nic for VirtioNic {
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        let t = self.raw.poll_receive()?;
        let mut b = self.rx.get_mut(t as usize)?.take()?;
        // SAFETY: `b` is the buffer posted with token `t`.
        let r = unsafe { self.raw.receive_complete(t, &mut b) };
        let n = match r {
            Ok((hdr, len)) if len <= MAX_FRAME && hdr + len <= b.len() => {
                let n = len.min(buf.len());
                buf[..n].copy_from_slice(&b[hdr..hdr + n]);
                Some(n)
            }
            _ => None,
        };
        // Post it again at once; a bad length from the device only loses
        // that frame.
        // SAFETY: as in `open`.
        if let Ok(nt) = unsafe { self.raw.receive_begin(&mut b) } {
            self.rx[nt as usize] = Some(b);
        }
        n.or(Some(0))
    }

    fn can_transmit(&mut self) -> bool {
        if self.tx_free.is_empty() {
            self.reclaim();
        }
        !self.tx_free.is_empty() && self.raw.can_send()
    }

    fn transmit(&mut self, frame: &[u8]) -> bool {
        if !self.can_transmit() {
            return false;
        }
        let Some(mut b) = self.tx_free.pop() else {
            return false;
        };
        let Ok(hdr) = self.raw.fill_buffer_header(&mut b) else {
            self.tx_free.push(b);
            return false;
        };
        let len = hdr + frame.len().min(BUF - hdr);
        b[hdr..len].copy_from_slice(&frame[..len - hdr]);
        // SAFETY: `b` stays in `tx_busy` until `transmit_complete`.
        match unsafe { self.raw.transmit_begin(&b[..len]) } {
            Ok(t) => {
                self.tx_busy[t as usize] = Some((b, len));
                true
            }
            Err(_) => {
                self.tx_free.push(b);
                false
            }
        }
    }
}
