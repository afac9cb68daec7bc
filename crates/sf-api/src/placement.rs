//! Where a VM's clones go: spread evenly over this host and its peers, or
//! all here. A pure function of the peer list, so the VMM that clones
//! decides by itself (it never needs the daemon's admin socket).

use crate::Placement;

/// One entry per clone (IDs 1..=n in order): `None` = this host.
pub fn place(n: u32, peers: &[String], policy: Placement) -> Vec<Option<String>> {
    if policy == Placement::Local || peers.is_empty() {
        return vec![None; n as usize];
    }
    if policy == Placement::Remote {
        return (0..n as usize)
            .map(|i| Some(peers[i % peers.len()].clone()))
            .collect();
    }
    let hosts = peers.len() + 1;
    (0..n as usize)
        .map(|i| {
            if i % hosts == 0 {
                None
            } else {
                Some(peers[i % hosts - 1].clone())
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_round_robin_starting_here() {
        let peers = vec!["b:1".to_string(), "c:1".to_string()];
        let p = place(5, &peers, Placement::Spread);
        assert_eq!(
            p,
            vec![
                None,
                Some("b:1".into()),
                Some("c:1".into()),
                None,
                Some("b:1".into())
            ]
        );
    }

    #[test]
    fn remote_policy_uses_only_peers() {
        let peers = vec!["b:1".to_string(), "c:1".to_string()];
        assert_eq!(
            place(3, &peers, Placement::Remote),
            vec![Some("b:1".into()), Some("c:1".into()), Some("b:1".into())]
        );
    }

    #[test]
    fn local_policy_or_no_peers_keeps_everything_here() {
        assert_eq!(place(3, &["b:1".into()], Placement::Local), vec![None; 3]);
        assert_eq!(place(2, &[], Placement::Spread), vec![None; 2]);
        assert!(place(0, &["b:1".into()], Placement::Spread).is_empty());
    }
}
