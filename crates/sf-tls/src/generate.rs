//! Making a cluster's credentials: one CA (its key stays with the
//! operator) and, per host, a certificate whose IP SAN is the host's
//! address, usable as both TLS server and client. Keys are written 0600,
//! the directory 0700, and nothing that exists is ever overwritten.
//!
//! Layout of the directory: `ca.pem`, `ca-key.pem`, and `NAME.pem`,
//! `NAME-key.pem` per host.

use crate::{TlsError, TlsPaths};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One host of the cluster: a file name and the address peers reach it at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSpec {
    pub name: String,
    pub ip: IpAddr,
}

impl std::str::FromStr for HostSpec {
    type Err = String;

    /// `NAME=IP`, NAME made of letters, digits, `.`, `_`, `-`.
    fn from_str(s: &str) -> Result<HostSpec, String> {
        let (name, ip) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not NAME=IP (e.g. h1=10.0.0.1)"))?;
        let ok = !name.is_empty()
            && name != "ca"
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !ok {
            return Err(format!(
                "host name {name:?} must be letters, digits, '.', '_' or '-' (and not \"ca\")"
            ));
        }
        let ip = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IP address"))?;
        Ok(HostSpec {
            name: name.into(),
            ip,
        })
    }
}

/// The files of host `name` in a credentials directory.
pub fn host_paths(dir: &Path, name: &str) -> TlsPaths {
    TlsPaths {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    }
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "SnowFlock cluster CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p)
}

fn write_new(path: &Path, mode: u32, text: &str) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.into(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => TlsError::Exists { path: path.into() },
            _ => err(e),
        })?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}

fn refuse_existing(paths: &[PathBuf]) -> Result<(), TlsError> {
    match paths.iter().find(|p| p.symlink_metadata().is_ok()) {
        Some(p) => Err(TlsError::Exists { path: p.clone() }),
        None => Ok(()),
    }
}

fn private_dir(dir: &Path) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: dir.into(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

fn host_cert(
    dir: &Path,
    host: &HostSpec,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<TlsPaths, TlsError> {
    let paths = host_paths(dir, &host.name);
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("snowflock host {}", host.name));
    p.distinguished_name = dn;
    p.subject_alt_names = vec![SanType::IpAddress(host.ip)];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, issuer)?;
    write_new(&paths.key, 0o600, &key.serialize_pem())?;
    write_new(&paths.cert, 0o644, &cert.pem())?;
    Ok(paths)
}

/// Creates a new cluster CA and one certificate per host in `dir`;
/// refuses if any of the files exists. Returns each host's paths.
pub fn init(dir: &Path, hosts: &[HostSpec]) -> Result<Vec<TlsPaths>, TlsError> {
    let mut all = vec![dir.join("ca.pem"), dir.join("ca-key.pem")];
    for h in hosts {
        let p = host_paths(dir, &h.name);
        all.extend([p.cert, p.key]);
    }
    refuse_existing(&all)?;
    private_dir(dir)?;
    let params = ca_params()?;
    let key = KeyPair::generate()?;
    let ca = params.self_signed(&key)?;
    write_new(&dir.join("ca-key.pem"), 0o600, &key.serialize_pem())?;
    write_new(&dir.join("ca.pem"), 0o644, &ca.pem())?;
    let issuer = Issuer::new(params, key);
    hosts.iter().map(|h| host_cert(dir, h, &issuer)).collect()
}

/// Adds one host to an existing cluster directory (made by [`init`]).
pub fn add_host(dir: &Path, host: &HostSpec) -> Result<TlsPaths, TlsError> {
    let p = host_paths(dir, &host.name);
    refuse_existing(&[p.cert.clone(), p.key.clone()])?;
    let read = |path: PathBuf, what| {
        std::fs::read_to_string(&path).map_err(|source| TlsError::Read { what, path, source })
    };
    let ca_pem = read(dir.join("ca.pem"), "cluster CA certificate")?;
    let key_pem = read(dir.join("ca-key.pem"), "cluster CA key")?;
    let key = KeyPair::from_pem(&key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, key)?;
    host_cert(dir, host, &issuer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_specs_parse_and_bad_ones_are_named() {
        let h: HostSpec = "h1=10.0.0.1".parse().unwrap();
        assert_eq!(h.ip, IpAddr::from([10, 0, 0, 1]));
        assert!("h1".parse::<HostSpec>().unwrap_err().contains("NAME=IP"));
        assert!("../x=1.2.3.4".parse::<HostSpec>().is_err());
        assert!("ca=1.2.3.4".parse::<HostSpec>().is_err());
        assert!("h=nope"
            .parse::<HostSpec>()
            .unwrap_err()
            .contains("not an IP"));
    }
}
