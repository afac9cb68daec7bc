//! `snowflock net-broker`, `net-hold` and `net-sweep`: the privileged side
//! of family networks as commands. The broker is started by the VMM or the
//! daemon (never by hand); `net-hold` stands in for a family's VMM (takes
//! TAPs and keeps them until its stdin closes), for tests and benchmarks;
//! `net-sweep` removes the devices of families whose broker died.

use anyhow::{bail, Context};
use sf_abi::net::FamilyNet;
use sf_vmm::net::{self, broker, links, FamilySpec};
use std::io::Read;

#[derive(clap::Args)]
pub struct FamilyArgs {
    /// Family number F (1..=255): the family's subnet is 10.F.0.0/16.
    #[arg(long)]
    family: u8,
    /// The family's VXLAN network identifier (low byte = F).
    #[arg(long)]
    vni: u32,
    /// Give this host 10.F.255.254 on the family bridge.
    #[arg(long)]
    host_access: bool,
    /// The interface VXLAN runs over (the host's cluster interface); none:
    /// the family stays on this host.
    #[arg(long)]
    underlay: Option<String>,
}

impl FamilyArgs {
    fn spec(&self) -> anyhow::Result<FamilySpec> {
        let family = FamilyNet::new(self.family).context("--family must be 1..=255")?;
        net::check_vni(self.vni, family).map_err(anyhow::Error::msg)?;
        if let Some(dev) = &self.underlay {
            if dev.is_empty() || dev.len() > 15 || dev.contains(['/', ' ']) {
                bail!("--underlay {dev:?} is not an interface name");
            }
        }
        Ok(FamilySpec {
            family,
            vni: self.vni,
            host_access: self.host_access,
            underlay: self.underlay.clone(),
        })
    }
}

#[derive(clap::Args)]
pub struct HoldArgs {
    #[command(flatten)]
    family: FamilyArgs,
    /// TAPs to take (0: only keep the family alive).
    #[arg(long, default_value_t = 1)]
    taps: u32,
}

pub fn broker_main(a: FamilyArgs) -> anyhow::Result<u8> {
    let spec = a.spec()?;
    let starter = starter_pidfd();
    detach()?;
    broker::serve(&spec, starter)
        .with_context(|| format!("network broker of family {}", spec.family.number()))?;
    Ok(0)
}

/// A pidfd of the VMM that started the broker, so that a VMM killed before
/// it ever connected ends the family at once instead of after
/// [`broker::FIRST_CONNECT`]. `None` when the starter is already gone (the
/// broker was re-parented) or pidfds are unavailable: the timeout remains.
pub(crate) fn starter_pidfd() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, parent, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a descriptor pidfd_open just returned to us alone.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    // The parent may have died between getppid and pidfd_open, and its pid
    // been reused: still our parent afterwards means the pidfd is its own.
    // SAFETY: as above.
    (unsafe { libc::getppid() } == parent && parent > 1).then_some(fd)
}

/// The broker must not be a child of the VMM that started it: a VMM reaps
/// its whole family before it exits (it is a child subreaper), and would
/// wait for a broker that ends only after that VMM's connection closes. So
/// it forks once more and the intermediate exits; the broker is re-parented
/// above the VMM and sits in a session of its own.
pub(crate) fn detach() -> anyhow::Result<()> {
    // SAFETY: fork in a single-threaded process (this command starts no
    // thread before it), so the child holds no lock another thread had; the
    // parent only exits.
    match unsafe { libc::fork() } {
        -1 => bail!(
            "cannot fork the network broker: {}",
            std::io::Error::last_os_error()
        ),
        0 => {}
        // SAFETY: _exit ends the intermediate without running destructors
        // that belong to the child.
        _ => unsafe { libc::_exit(0) },
    }
    // SAFETY: setsid has no memory effects; it fails only for a group leader.
    unsafe { libc::setsid() };
    Ok(())
}

pub fn hold(a: HoldArgs) -> anyhow::Result<u8> {
    let spec = a.family.spec()?;
    links::sweep().context("cannot sweep the devices of dead families")?;
    let exe = std::env::current_exe()?;
    let mut client = broker::BrokerClient::ensure(&exe, &spec)?;
    let leases = if a.taps > 0 {
        client.take(a.taps)?
    } else {
        vec![]
    };
    for l in &leases {
        println!("{}", tap_name(&l.tap)?);
    }
    println!("holding");
    let mut sink = vec![];
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(0)
}

pub fn sweep() -> anyhow::Result<u8> {
    for name in links::sweep()? {
        println!("removed {name}");
    }
    Ok(0)
}

/// The interface name behind a TAP descriptor (TUNGETIFF).
fn tap_name(fd: &std::os::fd::OwnedFd) -> anyhow::Result<String> {
    use std::os::fd::AsRawFd;
    const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
    let mut req = [0u8; 40];
    // SAFETY: TUNGETIFF writes a 40-byte `struct ifreq` into `req`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF, req.as_mut_ptr()) } < 0 {
        bail!("TUNGETIFF: {}", std::io::Error::last_os_error());
    }
    let end = req[..16].iter().position(|&b| b == 0).unwrap_or(16);
    Ok(String::from_utf8_lossy(&req[..end]).into_owned())
}

/// `snowflock run --net`: a new family on this host (its broker, bridge,
/// and VXLAN towards `peer` when clones may go to other hosts). Before the
/// VMM becomes a subreaper, so that the detached broker is not its child.
pub fn start_family(
    advertise: Option<std::net::IpAddr>,
    peer: Option<std::net::SocketAddr>,
    host_access: bool,
    max_clones: u32,
) -> anyhow::Result<net::origin::OriginFamily> {
    // Host id 0 (no cluster address ends in .0.0) for one-host families.
    let host_id = match advertise {
        Some(std::net::IpAddr::V4(ip)) => net::host_id(ip),
        _ => 0,
    };
    let underlay = match peer {
        Some(p) => Some(net::remote::underlay_towards(p.ip())?),
        None => None,
    };
    let exe = std::env::current_exe()?;
    let fam = net::origin::start(&exe, host_id, host_access, underlay, max_clones)
        .context("cannot set up the family's network")?;
    let f = fam.spec.family;
    tracing::info!(
        family = f.number(),
        vni = fam.spec.vni,
        bridge = net::bridge_name(fam.spec.vni),
        "family network 10.{}.0.0/16",
        f.number()
    );
    Ok(fam)
}

/// The root VM's NIC as member 0 of `fam`. Before the VMM sandboxes itself.
pub fn give_family(vm: &mut sf_vmm::Vm, fam: net::origin::OriginFamily) -> anyhow::Result<()> {
    let f = fam.spec.family;
    vm.add_nic(sf_vmm::devices::virtio::bus_device::NicConfig {
        tap: fam.root.tap,
        family: f,
        member: 0,
    })
    .context("cannot give the VM its NIC")?;
    vm.join_family_as_root(f, fam.spec.vni, fam.client);
    Ok(())
}
