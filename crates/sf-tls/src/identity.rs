//! Who is on the other end of an authenticated connection: the IP
//! addresses in its certificate's subject alternative names (a host
//! certificate names the addresses that host serves on). With
//! `--insecure-no-tls` the best there is is the connection's source
//! address, kept so the same authorization code runs in both modes.

use rustls::pki_types::CertificateDer;
use std::net::IpAddr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerIdentity {
    /// A certificate chained to the cluster CA: its IP SANs.
    Certificate { ips: Vec<IpAddr> },
    /// No TLS (insecure mode): the TCP source address, unauthenticated.
    SourceAddress(IpAddr),
}

impl PeerIdentity {
    /// The identity of a verified end-entity certificate.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> PeerIdentity {
        PeerIdentity::Certificate { ips: ip_sans(cert) }
    }

    /// Whether `ip` belongs to this peer.
    pub fn owns(&self, ip: IpAddr) -> bool {
        match self {
            PeerIdentity::Certificate { ips } => ips.contains(&ip),
            PeerIdentity::SourceAddress(a) => *a == ip,
        }
    }
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerIdentity::Certificate { ips } => {
                write!(f, "the peer whose certificate names {ips:?}")
            }
            PeerIdentity::SourceAddress(a) => write!(f, "the unauthenticated peer at {a}"),
        }
    }
}

/// The IP addresses among a certificate's subject alternative names (none
/// if it does not parse: such a peer owns nothing).
pub fn ip_sans(cert: &CertificateDer<'_>) -> Vec<IpAddr> {
    let Ok((_, x509)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let Ok(Some(san)) = x509.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                4 => Some(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?)),
                16 => Some(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}
