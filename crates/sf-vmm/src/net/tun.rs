//! Creates TAP devices for the family's pool and makes them bridge ports
//! with ioctls only (~0.1 ms a TAP; with `ip` it took ~4 ms, which a clone
//! call on a fresh family waited for). A TAP made here is not persistent:
//! it exists while some process holds its file descriptor, so a VMM's TAP
//! disappears with the VMM, however it ends, and the pool's spare TAPs with
//! the broker; TAPs therefore carry no owner alias and need no sweep.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `struct virtio_net_hdr_v1` (virtio 1.x, with `num_buffers`).
pub const VNET_HDR_LEN: libc::c_int = 12;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens a new TAP `name` (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, a 12-byte
/// virtio-net header, non-blocking). Needs CAP_NET_ADMIN.
pub fn create_tap(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TAP name {name:?} must be 1..=15 bytes"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/net/tun: {e}")))?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq`
    // lays out (40 bytes, name then flags); the fd is ours and open.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot create TAP {name} (needs CAP_NET_ADMIN): {e}"),
        ));
    }
    let hdr = VNET_HDR_LEN;
    // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which is valid.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &hdr) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot set the vnet header size of {name}: {e}"),
        ));
    }
    Ok(file.into())
}

const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
const SIOCSIFMTU: libc::c_ulong = 0x8922;
const SIOCGIFINDEX: libc::c_ulong = 0x8933;
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// `struct ifreq` with its union as one int (flags, MTU or index).
#[repr(C)]
struct IfReqInt {
    name: [u8; libc::IFNAMSIZ],
    value: libc::c_int,
    _pad: [u8; 20],
}

fn ifreq(name: &str, value: libc::c_int) -> IfReqInt {
    let mut r = IfReqInt {
        name: [0; libc::IFNAMSIZ],
        value,
        _pad: [0; 20],
    };
    let n = name.len().min(libc::IFNAMSIZ - 1);
    r.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    r
}

fn ctl(sock: &OwnedFd, req: libc::c_ulong, r: &mut IfReqInt, what: &str) -> io::Result<()> {
    // SAFETY: every request used here reads or writes one `struct ifreq`,
    // which `IfReqInt` lays out (40 bytes); the socket is ours.
    if unsafe { libc::ioctl(sock.as_raw_fd(), req, r as *mut IfReqInt) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// Sets `dev`'s MTU, makes it a port of `bridge` and brings it up.
pub fn attach_to_bridge(dev: &str, bridge: &str, mtu: u32) -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that we own.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    ctl(
        &sock,
        SIOCSIFMTU,
        &mut ifreq(dev, mtu as libc::c_int),
        &format!("MTU of {dev}"),
    )?;
    let mut idx = ifreq(dev, 0);
    ctl(&sock, SIOCGIFINDEX, &mut idx, &format!("index of {dev}"))?;
    let mut add = ifreq(bridge, idx.value);
    ctl(
        &sock,
        SIOCBRADDIF,
        &mut add,
        &format!("adding {dev} to bridge {bridge}"),
    )?;
    let mut flags = ifreq(dev, 0);
    ctl(&sock, SIOCGIFFLAGS, &mut flags, &format!("flags of {dev}"))?;
    flags.value |= libc::IFF_UP;
    ctl(
        &sock,
        SIOCSIFFLAGS,
        &mut flags,
        &format!("bringing {dev} up"),
    )
}
