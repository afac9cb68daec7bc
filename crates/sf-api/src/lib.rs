//! The SnowFlock daemon's API, shared by the daemon (server side), the CLI
//! and VMM processes (client side). Every endpoint takes and returns JSON;
//! see the README for the list.

pub mod client;
mod placement;
mod types;
pub mod units;

pub use client::{Client, ClientError, Endpoint};
pub use placement::place;
pub use sf_tls::Transport;
pub use types::*;

/// Version prefix of every path.
pub const PREFIX: &str = "/v1";

/// Where the daemon listens for the local CLI unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/snowflock/snowflockd.sock";
