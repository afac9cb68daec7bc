//! A host's cluster credentials (the cluster CA, this host's certificate
//! and key) and the two rustls configurations made from them: a server
//! that requires a client certificate chained to the cluster CA, and a
//! client that trusts only the cluster CA and presents this host's
//! certificate.

use crate::TlsError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a host's credentials are (the `--tls-ca/--tls-cert/--tls-key`
/// options of the daemon and the VMM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Loaded credentials and the configurations built from them once.
#[derive(Clone)]
pub struct Credentials {
    pub paths: TlsPaths,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.into(),
        source,
    })?;
    let list = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what,
            path: path.into(),
            source,
        })?;
    if list.is_empty() {
        return Err(TlsError::NoPem {
            what,
            path: path.into(),
        });
    }
    Ok(list)
}

impl Credentials {
    /// Loads the three PEM files and builds both configurations.
    pub fn load(paths: &TlsPaths) -> Result<Credentials, TlsError> {
        let ca = certs("cluster CA certificate", &paths.ca)?;
        let chain = certs("host certificate", &paths.cert)?;
        let key_bytes = std::fs::read(&paths.key).map_err(|source| TlsError::Read {
            what: "host key",
            path: paths.key.clone(),
            source,
        })?;
        let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|source| match source {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPem {
                what: "private key",
                path: paths.key.clone(),
            },
            source => TlsError::Pem {
                what: "private key",
                path: paths.key.clone(),
                source,
            },
        })?;
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots.add(c)?;
        }
        let roots = Arc::new(roots);
        let provider = crate::provider();
        // Client certificates are required: no allow_unauthenticated().
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        // No session tickets: every connection is a full mutual handshake,
        // and a clone host's connection carries nothing it did not ask for
        // (its reader treats any byte from the origin as a kill order).
        server.send_tls13_tickets = 0;
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        client.resumption = rustls::client::Resumption::disabled();
        Ok(Credentials {
            paths: paths.clone(),
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// Requires client certificates chained to the cluster CA.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// Trusts only the cluster CA; presents this host's certificate.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }
}
