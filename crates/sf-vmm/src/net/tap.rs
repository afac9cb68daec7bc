//! TAP devices for virtio-net: `/dev/net/tun` opened with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a 12-byte vnet header (virtio
//! 1.x's `virtio_net_hdr` with `num_buffers`), non-blocking. Creating a TAP
//! needs CAP_NET_ADMIN, so a VMM gets its TAPs as fds from a privileged
//! process before it drops privileges; [`Tap::open`] is for that process
//! and for tests. [`prepare`] checks and sets up an fd that arrived that way.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `_IOW('T', 202, int)`
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOR('T', 210, unsigned int)`
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// `_IOW('T', 216, int)`
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `_IOW('T', 208, unsigned int)`
pub const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// The reader takes frames with a partial checksum (`NEEDS_CSUM`).
pub const TUN_F_CSUM: libc::c_uint = 0x01;
/// The reader takes TCPv4 segments of up to 64 KiB (`gso_type` TCPV4).
pub const TUN_F_TSO4: libc::c_uint = 0x02;
/// The header virtio-net puts before every frame.
pub const VNET_HDR_LEN: libc::c_int = 12;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(
        "opening /dev/net/tun (is the tun module loaded, and is this process allowed to use it?)"
    )]
    Open(#[source] io::Error),
    #[error("creating TAP {name:?} (needs CAP_NET_ADMIN; a name of at most 15 bytes)")]
    Create {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("setting up the TAP fd ({what}); is it a TAP opened with IFF_VNET_HDR?")]
    Setup {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq` as TUNSETIFF/TUNGETIFF use it: a name and flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A TAP device's fd, ready for [`crate::devices::virtio::net::Net`].
pub struct Tap {
    pub fd: OwnedFd,
    pub name: String,
}

impl Tap {
    /// Creates (or attaches to) TAP `name`, set up as [`prepare`] says.
    /// The device lives as long as the fd unless made persistent elsewhere.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(TapError::Create {
                name: name.into(),
                source: io::Error::from(io::ErrorKind::InvalidInput),
            });
        }
        req.name[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is
        // (name, flags, padding to the kernel's size).
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(TapError::Create {
                name: name.into(),
                source: io::Error::last_os_error(),
            });
        }
        let fd = OwnedFd::from(file);
        prepare(&fd)?;
        let end = req
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(libc::IFNAMSIZ);
        Ok(Tap {
            fd,
            name: String::from_utf8_lossy(&req.name[..end]).into_owned(),
        })
    }
}

/// Checks that `fd` is a TAP with `IFF_VNET_HDR` and no packet info, and
/// sets what the NIC relies on: a 12-byte header, no offloads until a
/// driver acks them (see [`set_offloads`]), and non-blocking reads and
/// writes.
pub fn prepare(fd: &OwnedFd) -> Result<(), TapError> {
    let setup = |what| move |source| TapError::Setup { what, source };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: TUNGETIFF writes one ifreq into `req`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF, &mut req) } < 0 {
        return Err(setup("TUNGETIFF")(io::Error::last_os_error()));
    }
    let want = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if req.flags & want != want {
        return Err(setup("flags")(io::Error::from(io::ErrorKind::InvalidInput)));
    }
    let size: libc::c_int = VNET_HDR_LEN;
    // SAFETY: TUNSETVNETHDRSZ reads one int.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &size) } < 0 {
        return Err(setup("TUNSETVNETHDRSZ")(io::Error::last_os_error()));
    }
    set_offloads(fd, 0).map_err(setup("TUNSETOFFLOAD"))?;
    set_nonblocking(fd).map_err(setup("O_NONBLOCK"))
}

/// What the TAP may hand its reader (`TUN_F_*` flags; 0: only plain,
/// fully checksummed frames of at most the MTU, the host kernel segments
/// and checksums everything else first). Writes to the TAP may carry
/// offload headers whatever this says. The NIC sets it from the features
/// its driver acked, so a sandboxed VMM may make this one TAP ioctl.
pub fn set_offloads(fd: &OwnedFd, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its flags by value and touches no memory.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, libc::c_ulong::from(flags)) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes reads and writes on `fd` non-blocking: all a sandboxed VMM does to
/// a TAP handed to it (its filter allows no TAP ioctls, so the sender runs
/// [`prepare`] first).
pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: F_GETFL on an fd we hold.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on an fd we hold, with its own flags plus O_NONBLOCK.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
