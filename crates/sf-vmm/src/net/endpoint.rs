//! A plain host endpoint on a family segment: a network namespace whose
//! `eth0` is one end of a veth pair and whose other end is a port of the
//! family bridge, exactly where a VM's TAP would be. The benchmark's
//! reference traffic and the isolation tests use it; sockets made with
//! [`Endpoint::within`] live in the endpoint's namespace.

use super::{bridge_name, links::ip, FAMILY_MTU};
use sf_abi::net::FamilyNet;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

/// Removes its namespace (and so both veth ends) when dropped.
pub struct Endpoint {
    pub ns: String,
    pub ip: Ipv4Addr,
}

impl Endpoint {
    /// Makes namespace `ns` (at most 15 bytes: it also names the bridge
    /// port) with address `ip/16` on the bridge of family `vni`, which lives
    /// in namespace `host_ns` (`None`: this one).
    pub fn attach(
        host_ns: Option<&str>,
        ns: &str,
        vni: u32,
        ip_addr: Ipv4Addr,
    ) -> io::Result<Endpoint> {
        if ns.len() > 15 {
            return Err(io::Error::other(format!(
                "endpoint name {ns:?} is over 15 bytes"
            )));
        }
        ip(&["netns", "add", ns])?;
        let ep = Endpoint {
            ns: ns.to_string(),
            ip: ip_addr,
        };
        let on_host = |args: &[&str]| match host_ns {
            Some(h) => ip(&[&["-n", h][..], args].concat()),
            None => ip(args),
        };
        let mtu = FAMILY_MTU.to_string();
        on_host(&[
            "link", "add", ns, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        on_host(&[
            "link",
            "set",
            ns,
            "mtu",
            &mtu,
            "master",
            &bridge_name(vni),
            "up",
        ])?;
        let cidr = format!("{ip_addr}/16");
        ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "mtu", &mtu, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(ep)
    }

    /// Family `family`'s member `member` as an endpoint.
    pub fn member(
        host_ns: Option<&str>,
        ns: &str,
        vni: u32,
        family: FamilyNet,
        member: u32,
    ) -> io::Result<Endpoint> {
        let addr = family.ip_of(member).ok_or_else(|| {
            io::Error::other(format!("member {member} is past the family's subnet"))
        })?;
        Endpoint::attach(host_ns, ns, vni, Ipv4Addr::from(addr))
    }

    /// Runs `f` on a thread inside the endpoint's namespace (sockets it
    /// makes stay there, wherever they are used later).
    pub fn within<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let path = format!("/run/netns/{}", self.ns);
        let file = std::fs::File::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open {path}: {e}")))?;
        std::thread::spawn(move || {
            // SAFETY: setns on a namespace fd we hold; it changes only this
            // new thread's network namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("a thread inside the endpoint panicked"))?
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.ns]);
    }
}
