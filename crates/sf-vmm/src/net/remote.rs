//! A family's network on a clone host: what a clone request says about it
//! is checked (the peer is authenticated, but its numbers are not trusted),
//! and the host joins the family's segment through the family's broker.

use super::broker::{BrokerClient, Lease};
use super::{check_vni, links, FamilySpec};
use sf_abi::net::{FamilyNet, MAX_MEMBERS};
use sf_api::CloneNet;
use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::path::Path;

/// Checks a request's family network against its clone ids and budget.
pub fn check(net: &CloneNet, ids: &[u32], max_clones: u32) -> Result<FamilyNet, String> {
    let family = FamilyNet::new(net.family).ok_or("`net.family` must be 1..=255")?;
    check_vni(net.vni, family).map_err(|e| format!("`net.vni`: {e}"))?;
    if net.parent >= MAX_MEMBERS {
        return Err(format!("`net.parent` {} is past {MAX_MEMBERS}", net.parent));
    }
    if net.members.len() != ids.len() {
        return Err(format!(
            "`net.members` has {} entries for {} clone ids",
            net.members.len(),
            ids.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for &[member, first] in &net.members {
        let end = u64::from(first) + u64::from(max_clones);
        if member >= MAX_MEMBERS || member == net.parent || end > u64::from(MAX_MEMBERS) {
            return Err(format!(
                "`net.members` entry [{member}, {first}] is outside the family's numbers"
            ));
        }
        if (first..first + max_clones).contains(&member) || !seen.insert(member) {
            return Err(format!("member number {member} is used twice"));
        }
    }
    Ok(family)
}

/// The interface this host reaches `peer` through: the VXLAN underlay.
pub fn underlay_towards(peer: IpAddr) -> io::Result<String> {
    let out = links::ip(&["-j", "route", "get", &peer.to_string()])?;
    let routes: Vec<serde_json::Value> = serde_json::from_str(&out)
        .map_err(|e| io::Error::other(format!("cannot parse `ip -j route get`: {e}")))?;
    routes
        .first()
        .and_then(|r| r.get("dev"))
        .and_then(|d| d.as_str())
        .map(str::to_string)
        .ok_or_else(|| io::Error::other(format!("no route to {peer} for the family's VXLAN")))
}

/// Joins the family's segment on this host (starting its broker, `exe
/// net-broker`, if none runs) and takes one TAP for a clone. Call before
/// the VMM sandboxes itself; keep the lease as long as the clone runs.
pub fn join(exe: &Path, net: &CloneNet, family: FamilyNet, origin: IpAddr) -> io::Result<Lease> {
    links::sweep()?;
    let spec = FamilySpec {
        family,
        vni: net.vni,
        host_access: false,
        underlay: Some(underlay_towards(origin)?),
    };
    let mut client = BrokerClient::ensure(exe, &spec)?;
    let mut leases = client.take(1)?;
    Ok(leases.pop().expect("take(1) gives one"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(members: Vec<[u32; 2]>) -> CloneNet {
        CloneNet {
            family: 3,
            vni: 0x0001_0203,
            parent: 0,
            members,
        }
    }

    #[test]
    fn hostile_family_numbers_are_refused() {
        assert!(check(&net(vec![[1, 3], [2, 5]]), &[1, 2], 2).is_ok());
        let bad = [
            (net(vec![[1, 3]]), "entries"),
            (net(vec![[0, 3], [2, 5]]), "outside"),
            (net(vec![[1, 3], [1, 5]]), "twice"),
            (net(vec![[4, 3], [2, 9]]), "twice"),
            (net(vec![[1, u32::MAX], [2, 5]]), "outside"),
            (net(vec![[MAX_MEMBERS, 3], [2, 5]]), "outside"),
            (
                CloneNet {
                    vni: 0x0001_0204,
                    ..net(vec![[1, 3], [2, 5]])
                },
                "family number",
            ),
            (
                CloneNet {
                    vni: 0x0100_0003,
                    ..net(vec![[1, 3], [2, 5]])
                },
                "outside",
            ),
            (
                CloneNet {
                    family: 0,
                    ..net(vec![[1, 3], [2, 5]])
                },
                "1..=255",
            ),
            (
                CloneNet {
                    parent: u32::MAX,
                    ..net(vec![[1, 3], [2, 5]])
                },
                "parent",
            ),
        ];
        for (n, why) in bad {
            let e = check(&n, &[1, 2], 2).expect_err(why);
            assert!(e.contains(why), "{e} (wanted {why})");
        }
    }
}
