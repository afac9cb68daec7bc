//! Cluster authentication for SnowFlock: every daemon, VMM and memory
//! holder of one cluster proves itself with a host certificate signed by
//! the cluster's own CA, and accepts only peers that do the same (mutual
//! TLS, TLS 1.3 only, rustls with the `ring` provider so a fresh machine
//! builds it without cmake or clang).
//!
//! This crate owns loading the PEM files ([`Credentials`]), the server
//! configuration that *requires* a client certificate chained to the
//! cluster CA and the client configuration that trusts only that CA,
//! the authenticated peer's identity (its certificate's IP addresses,
//! [`PeerIdentity`]), blocking streams for VMM processes, which run no
//! async runtime ([`Transport`], [`Stream`]), and making the CA and host
//! certificates ([`generate`]).

mod credentials;
mod error;
pub mod generate;
mod identity;
mod stream;

pub use credentials::{Credentials, TlsPaths};
pub use error::TlsError;
pub use identity::PeerIdentity;
pub use stream::{Stream, Transport};

/// The same for every connection of the cluster: ring's primitives, TLS
/// 1.3 with AES-128-GCM first. Pages are most of what the cluster sends and
/// every byte is sealed and opened once, so the cheaper AES key schedule
/// matters; the other suites stay as fallbacks.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
    ];
    std::sync::Arc::new(p)
}

pub use rustls;
