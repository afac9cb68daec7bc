//! Remote memory: the memory half of VM clones on another host.
//!
//! A clone host maps empty guest RAM, registers it with userfaultfd
//! ([`uffd`]) and attaches a [`RemoteMemory`] ([`fetcher`]): one handler
//! thread turns each fault into a batched request to the origin host's
//! [`PageServer`] ([`server`]), which serves a frozen copy of the parent's
//! guest RAM over TCP with the small versioned [`protocol`]. All-zero pages
//! travel as a bit, never as 4 KiB of zeros, and sequential faults grow a
//! readahead window ([`readahead`]) so a scan costs a few dozen round trips
//! instead of one per page.
//!
//! Pages the holder pushes to the group's multicast are received once per
//! clone host, by the group's [`host_receiver`], into a [`host_cache`]
//! every clone of the group on that host installs from.
//!
//! Failure is contained: a dead or silent server never leaves a faulting
//! thread blocked. The fetcher records why, calls the VMM's `on_failure`
//! callback (to kick its vCPU) and lets every pending and later fault
//! resolve to zeros.

mod bitmap;
mod client;
mod error;
pub mod fetcher;
mod handler;
mod hinted;
mod histogram;
pub mod host_cache;
pub mod host_receiver;
mod huge;
pub mod lockstep;
pub mod multicast;
pub mod pacer;
pub mod protocol;
pub mod readahead;
mod region;
pub mod server;
pub mod server_stats;
pub mod uffd;
mod vmm;
pub mod working_set;
pub mod working_set_holder;

#[cfg(test)]
mod tests;

pub use error::RemoteError;
pub use fetcher::{FailureCallback, FetchConfig, FetchStats, RemoteMemory, StatsHandle};
pub use protocol::{ProtocolError, RefuseReason, MAX_BATCH_PAGES, PAGE_SIZE, PROTOCOL_VERSION};
pub use region::ServedRegion;
pub use server::{PageServer, ServerHandle};
pub use server_stats::{ServerStats, SharedStats};
pub use vmm::{api_stats, current_thread_kicker, serve_frozen, Serving, StatsSource, ThreadKicker};

/// The secret that admits a clone host to one clone group's pages.
pub type GroupToken = [u8; 16];
