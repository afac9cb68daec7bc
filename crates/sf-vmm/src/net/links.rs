//! The family's kernel devices, made and removed with iproute2's `ip`
//! (present wherever the project runs; each call costs ~2 ms, which is why
//! TAPs are made ahead of need by the broker, never on the clone path).
//!
//! Ownership of the bridge and the VXLAN device is recorded in their link
//! alias (TAPs need none: they vanish with their last descriptor),
//! `snowflock owner=<pid>:<start time> vni=<vni>`, so that a sweep can tell
//! the devices of a live family from those of one whose broker died
//! (SIGKILL, host crash) and delete the latter.

use super::{bridge_name, vxlan_group, vxlan_name, FamilySpec, FAMILY_MTU, VXLAN_PORT};
use std::io;
use std::net::Ipv4Addr;
use std::process::Command;

const ALIAS_PREFIX: &str = "snowflock owner=";

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        io::Error::new(e.kind(), format!("cannot run `ip` (install iproute2): {e}"))
    })?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Turns IPv6 off on a family device before it comes up: the host takes no
/// part in the segment, and a port with IPv6 sends its own address
/// discovery and multicast reports over the bridge.
pub fn disable_ipv6(dev: &str) -> io::Result<()> {
    write_sysctl(&format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1")
}

fn write_sysctl(path: &str, value: &str) -> io::Result<()> {
    std::fs::write(path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot write {value} to {path}: {e}")))
}

/// This process's owner tag: pid and start time (clock ticks since boot,
/// field 22 of /proc/PID/stat), so a reused pid is not taken for the owner.
/// `None` for a process that is gone or a zombie (a killed broker whose
/// parent has not reaped it yet is dead all the same).
pub fn owner_tag(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    if matches!(fields.next(), Some("Z" | "X" | "x")) {
        return None;
    }
    let start = fields.nth(18)?;
    Some(format!("{pid}:{start}"))
}

pub fn alias(owner: &str, vni: u32) -> String {
    format!("{ALIAS_PREFIX}{owner} vni={vni}")
}

/// Creates the family's bridge (and VXLAN device, and the host's address
/// when allowed), owned by `owner`. On error, whatever was made is removed.
pub fn create_family(spec: &FamilySpec, owner: &str) -> io::Result<()> {
    let made = create_inner(spec, owner);
    if made.is_err() {
        delete_family(spec.vni);
    }
    made
}

fn create_inner(spec: &FamilySpec, owner: &str) -> io::Result<()> {
    let br = bridge_name(spec.vni);
    let tag = alias(owner, spec.vni);
    let mtu = FAMILY_MTU.to_string();
    ip(&["link", "add", &br, "mtu", &mtu, "type", "bridge"])?;
    ip(&["link", "set", &br, "alias", &tag])?;
    // The host takes no part in the segment unless allowed: no IPv6
    // link-local address, and nothing that arrives on the bridge is routed
    // anywhere (per-interface IPv4 forwarding is checked on input).
    disable_ipv6(&br)?;
    write_sysctl(&format!("/proc/sys/net/ipv4/conf/{br}/forwarding"), "0")?;
    if spec.host_access {
        let host = Ipv4Addr::from(spec.family.host_ip());
        ip(&["addr", "add", &format!("{host}/16"), "dev", &br])?;
        // The host may reach the family, but nothing it forwards may: only
        // locally made packets (iif lo) use the route to the subnet.
        let (pref, subnet) = rule_of(spec.family.number());
        ip(&[
            "rule",
            "add",
            "pref",
            &pref.to_string(),
            "to",
            &subnet,
            "iif",
            "lo",
            "lookup",
            "main",
        ])?;
        ip(&[
            "rule",
            "add",
            "pref",
            &(pref + 1).to_string(),
            "to",
            &subnet,
            "prohibit",
        ])?;
    }
    if let Some(dev) = &spec.underlay {
        let vx = vxlan_name(spec.vni);
        let (id, group, port) = (
            spec.vni.to_string(),
            vxlan_group(spec.vni).to_string(),
            VXLAN_PORT.to_string(),
        );
        ip(&[
            "link", "add", &vx, "mtu", &mtu, "type", "vxlan", "id", &id, "group", &group, "dev",
            dev, "dstport", &port, "ttl", "4",
        ])?;
        ip(&["link", "set", &vx, "alias", &tag, "master", &br, "up"])?;
    }
    ip(&["link", "set", &br, "up"])?;
    Ok(())
}

/// Deletes the family's bridge and VXLAN device (the TAPs go with their
/// last file descriptor). Errors are ignored: the devices may be gone.
pub fn delete_family(vni: u32) {
    // Rules first: the bridge's absence is what says the family is gone.
    delete_rules(vni);
    for name in [vxlan_name(vni), bridge_name(vni)] {
        let _ = ip(&["link", "del", &name]);
    }
}

/// The policy-routing rules of host access for family `f`: preference and
/// subnet. Only an origin host gives host access, and its family numbers
/// are unique there, so the preference is the family's own.
fn rule_of(f: u8) -> (u32, String) {
    (20_000 + 2 * u32::from(f), format!("10.{f}.0.0/16"))
}

fn delete_rules(vni: u32) {
    let (pref, subnet) = rule_of(vni as u8);
    for p in [pref, pref + 1] {
        // "No such rule" when the family had no host access.
        while ip(&["rule", "del", "pref", &p.to_string(), "to", &subnet]).is_ok() {}
    }
}

/// A device some family owns, as `ip` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedLink {
    pub name: String,
    pub owner: String,
    pub vni: u32,
}

/// Every link of this network namespace that carries a family's alias.
pub fn family_links() -> io::Result<Vec<OwnedLink>> {
    let out = ip(&["-j", "link", "show"])?;
    let links: Vec<serde_json::Value> = serde_json::from_str(&out)
        .map_err(|e| io::Error::other(format!("cannot parse `ip -j link show`: {e}")))?;
    Ok(links.iter().filter_map(parse_link).collect())
}

fn parse_link(link: &serde_json::Value) -> Option<OwnedLink> {
    let name = link.get("ifname")?.as_str()?;
    let alias = link.get("ifalias")?.as_str()?;
    let rest = alias.strip_prefix(ALIAS_PREFIX)?;
    let (owner, vni) = rest.split_once(" vni=")?;
    Some(OwnedLink {
        name: name.to_string(),
        owner: owner.to_string(),
        vni: vni.parse().ok()?,
    })
}

/// Whether the owner named by a tag still runs (same pid, same start time).
pub fn owner_alive(owner: &str) -> bool {
    let Some(pid) = owner.split(':').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    owner_tag(pid).as_deref() == Some(owner)
}

/// Deletes every family device whose owner is dead; returns their names.
pub fn sweep() -> io::Result<Vec<String>> {
    let mut gone = vec![];
    for link in family_links()? {
        if !owner_alive(&link.owner) && ip(&["link", "del", &link.name]).is_ok() {
            if link.name == bridge_name(link.vni) {
                delete_rules(link.vni);
            }
            gone.push(link.name);
        }
    }
    if !gone.is_empty() {
        tracing::info!(devices = ?gone, "removed network devices of dead families");
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_parse_back_and_foreign_links_are_ignored() {
        let me = owner_tag(std::process::id()).unwrap();
        assert!(owner_alive(&me));
        assert!(!owner_alive("4294967295:0"), "no such pid");
        assert!(!owner_alive("garbage"));
        let v = serde_json::json!({"ifname": "sfb000001", "ifalias": alias(&me, 1)});
        assert_eq!(
            parse_link(&v),
            Some(OwnedLink {
                name: "sfb000001".into(),
                owner: me,
                vni: 1
            })
        );
        let other = serde_json::json!({"ifname": "eth0", "ifalias": "uplink"});
        assert_eq!(parse_link(&other), None);
        assert_eq!(parse_link(&serde_json::json!({"ifname": "lo"})), None);
    }
}
