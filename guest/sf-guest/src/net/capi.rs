//! The network API for C guests (`snowflock.h`): sockets are small
//! non-negative numbers, addresses are IPv4 in host byte order, timeouts
//! are milliseconds (negative: wait forever), and every call returns a
//! negative error code (`-SF_E*`) on failure.

use super::{with, Error, Ipv4Addr, SockId};

const EBADF: i64 = 9;
const EFAULT: i64 = 14;
const EINVAL: i64 = 22;
const EADDRINUSE: i64 = 98;
const ENETDOWN: i64 = 100;
const ENETRESET: i64 = 102;
const ECONNRESET: i64 = 104;
const ETIMEDOUT: i64 = 110;
const ECONNREFUSED: i64 = 111;

fn code(e: Error) -> i64 {
    -match e {
        Error::NoNetwork => ENETDOWN,
        Error::InvalidArgument => EINVAL,
        Error::AddrInUse => EADDRINUSE,
        Error::ConnectionRefused => ECONNREFUSED,
        Error::ConnectionReset | Error::UnexpectedEof => ECONNRESET,
        Error::TimedOut => ETIMEDOUT,
        Error::Reset => ENETRESET,
        Error::BadSocket => EBADF,
    }
}

fn ret(r: Result<u64, Error>) -> i64 {
    match r {
        Ok(v) => v as i64,
        Err(e) => code(e),
    }
}

fn timeout(ms: i64) -> Option<u64> {
    (ms >= 0).then(|| (ms as u64).saturating_mul(1000))
}

fn sock(s: i64) -> Result<SockId, Error> {
    u32::try_from(s).map(SockId).map_err(|_| Error::BadSocket)
}

fn port(p: u32) -> Result<u16, Error> {
    u16::try_from(p).map_err(|_| Error::InvalidArgument)
}

/// This VM's IPv4 address, or `-SF_ENETDOWN`.
#[no_mangle]
pub extern "C" fn sf_my_addr() -> i64 {
    ret(super::my_addr()
        .map(|a| a.to_bits() as u64)
        .ok_or(Error::NoNetwork))
}

/// Family member `member`'s address.
#[no_mangle]
pub extern "C" fn sf_addr_of(member: u32) -> i64 {
    ret(with(|n| {
        n.addr_of(member)
            .map(|a| a.to_bits() as u64)
            .ok_or(Error::InvalidArgument)
    }))
}

fn addr(a: Option<Ipv4Addr>) -> i64 {
    if !super::available() {
        return code(Error::NoNetwork);
    }
    a.map(|a| a.to_bits() as i64).unwrap_or(-EINVAL)
}

/// This VM's parent's address.
#[no_mangle]
pub extern "C" fn sf_parent_addr() -> i64 {
    addr(super::parent_addr())
}

/// Clone `j` of the clone call that made this VM.
#[no_mangle]
pub extern "C" fn sf_sibling_addr(j: u32) -> i64 {
    addr(super::sibling_addr(j))
}

/// Clone `k` of this VM's latest clone call.
#[no_mangle]
pub extern "C" fn sf_child_addr(k: u32) -> i64 {
    addr(super::child_addr(k))
}

#[no_mangle]
pub extern "C" fn sf_net_listen(port_: u32) -> i64 {
    ret(with(|n| Ok(n.tcp_listen(port(port_)?)?.0 as u64)))
}

#[no_mangle]
pub extern "C" fn sf_net_accept(listener: i64, timeout_ms: i64) -> i64 {
    ret(with(|n| {
        Ok(n.tcp_accept(sock(listener)?, timeout(timeout_ms))?.0 as u64)
    }))
}

#[no_mangle]
pub extern "C" fn sf_net_connect(ip: u32, port_: u32, timeout_ms: i64) -> i64 {
    ret(with(|n| {
        let s = n.tcp_connect(Ipv4Addr::from_bits(ip), port(port_)?, timeout(timeout_ms))?;
        Ok(s.0 as u64)
    }))
}

/// Sends some of `buf[0..len)`; returns the bytes taken (>= 1 for len > 0).
///
/// # Safety
/// `buf` must be readable for `len` bytes (NULL is refused).
#[no_mangle]
pub unsafe extern "C" fn sf_net_send(s: i64, buf: *const u8, len: usize, timeout_ms: i64) -> i64 {
    if buf.is_null() && len > 0 {
        return -EFAULT;
    }
    let data = if len == 0 {
        &[][..]
    } else {
        // SAFETY: the caller promises `len` readable bytes at `buf`.
        unsafe { core::slice::from_raw_parts(buf, len) }
    };
    ret(with(|n| {
        Ok(n.tcp_send(sock(s)?, data, timeout(timeout_ms))? as u64)
    }))
}

/// Receives up to `len` bytes; 0 when the peer closed.
///
/// # Safety
/// `buf` must be writable for `len` bytes (NULL is refused).
#[no_mangle]
pub unsafe extern "C" fn sf_net_recv(s: i64, buf: *mut u8, len: usize, timeout_ms: i64) -> i64 {
    if buf.is_null() && len > 0 {
        return -EFAULT;
    }
    let data = if len == 0 {
        &mut [][..]
    } else {
        // SAFETY: the caller promises `len` writable bytes at `buf`.
        unsafe { core::slice::from_raw_parts_mut(buf, len) }
    };
    ret(with(|n| {
        Ok(n.tcp_recv(sock(s)?, data, timeout(timeout_ms))? as u64)
    }))
}

/// Moves frames and timers without blocking, and sends what is queued.
#[no_mangle]
pub extern "C" fn sf_net_poll() {
    super::poll();
}

/// Closes any socket (a stream gracefully, at most 5 s).
#[no_mangle]
pub extern "C" fn sf_net_close(s: i64) -> i64 {
    ret(with(|n| n.close(sock(s)?).map(|()| 0)))
}

#[no_mangle]
pub extern "C" fn sf_udp_bind(port_: u32) -> i64 {
    ret(with(|n| Ok(n.udp_bind(port(port_)?)?.0 as u64)))
}

/// # Safety
/// `buf` must be readable for `len` bytes (NULL is refused).
#[no_mangle]
pub unsafe extern "C" fn sf_udp_send_to(
    s: i64,
    buf: *const u8,
    len: usize,
    ip: u32,
    port_: u32,
    timeout_ms: i64,
) -> i64 {
    if buf.is_null() && len > 0 {
        return -EFAULT;
    }
    let data = if len == 0 {
        &[][..]
    } else {
        // SAFETY: as in `sf_net_send`.
        unsafe { core::slice::from_raw_parts(buf, len) }
    };
    ret(with(|n| {
        n.udp_send_to(
            sock(s)?,
            data,
            Ipv4Addr::from_bits(ip),
            port(port_)?,
            timeout(timeout_ms),
        )?;
        Ok(len as u64)
    }))
}

/// Receives one datagram; the sender goes to `*ip` and `*port` when those
/// are not NULL.
///
/// # Safety
/// `buf` must be writable for `len` bytes; `ip` and `port` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn sf_udp_recv_from(
    s: i64,
    buf: *mut u8,
    len: usize,
    ip: *mut u32,
    port_: *mut u16,
    timeout_ms: i64,
) -> i64 {
    if buf.is_null() && len > 0 {
        return -EFAULT;
    }
    let data = if len == 0 {
        &mut [][..]
    } else {
        // SAFETY: as in `sf_net_recv`.
        unsafe { core::slice::from_raw_parts_mut(buf, len) }
    };
    ret(with(|n| {
        let (got, a, p) = n.udp_recv_from(sock(s)?, data, timeout(timeout_ms))?;
        // SAFETY: the caller promises these are NULL or writable.
        unsafe {
            if !ip.is_null() {
                ip.write(a.to_bits());
            }
            if !port_.is_null() {
                port_.write(p);
            }
        }
        Ok(got as u64)
    }))
}

#[no_mangle]
pub extern "C" fn sf_udp_close(s: i64) -> i64 {
    sf_net_close(s)
}
