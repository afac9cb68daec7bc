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

/// The same for every connection of the cluster: ring's primitives.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

pub use rustls;
