//! A new family on its origin host: pick a family number no live family
//! of this host uses, start its broker, take the root VM's TAP.

use super::broker::{BrokerClient, Lease};
use super::members::MemberBlock;
use super::{links, vni, FamilySpec};
use sf_abi::net::FamilyNet;
use std::io;
use std::path::Path;

/// A family this host started; its devices live as long as `client` and
/// every lease it handed out (the VMs' TAPs and connections).
pub struct OriginFamily {
    pub spec: FamilySpec,
    pub client: BrokerClient,
    /// The root VM's TAP (member 0).
    pub root: Lease,
    pub members: MemberBlock,
}

/// Starts a family. `host_id`: this host's id in the cluster (0 for a host
/// with no peers, which no cluster address has); `underlay`: the interface
/// to the peers, if clones may go to other hosts.
pub fn start(
    exe: &Path,
    host_id: u16,
    host_access: bool,
    underlay: Option<String>,
    max_clones: u32,
) -> io::Result<OriginFamily> {
    links::sweep()?;
    let used: Vec<u32> = links::family_links()?.iter().map(|l| l.vni).collect();
    for n in 1..=u8::MAX {
        let family = FamilyNet::new(n).expect("nonzero");
        let spec = FamilySpec {
            family,
            vni: vni(host_id, family),
            host_access,
            underlay: underlay.clone(),
        };
        // Host access puts 10.F.0.0/16 in this host's routes: it needs a
        // family number no family on this host has, from any origin.
        let clash = |v: &u32| *v == spec.vni || (host_access && *v as u8 == n);
        if used.iter().any(clash) {
            continue;
        }
        match BrokerClient::start(exe, &spec) {
            Ok(mut client) => {
                let root = client.take(1)?.pop().expect("take(1) gives one");
                return Ok(OriginFamily {
                    spec,
                    client,
                    root,
                    members: MemberBlock::root(max_clones),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(
        "all 255 family numbers of this host are in use: end a family first",
    ))
}
