//! What can go wrong with cluster credentials, each naming the fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source} (make the cluster's credentials with `snowflock cluster init --dir DIR --host NAME=IP ...`)")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no usable {what} in PEM form: {source} (use the files `snowflock cluster init` wrote)")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no {what} (no PEM block of that kind; use the files `snowflock cluster init` wrote)")]
    NoPem { what: &'static str, path: PathBuf },
    #[error("the TLS configuration is not usable: {0}")]
    Config(#[from] rustls::Error),
    #[error("the cluster CA certificate is not usable: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path} already exists; refusing to overwrite cluster credentials (pick another --dir, or remove it yourself)")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
