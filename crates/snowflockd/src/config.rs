//! Command line and TOML configuration.

use anyhow::{bail, Context};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

fn duration(s: &str) -> Result<Duration, String> {
    sf_api::units::parse_duration(s)
}

/// A size in bytes: `8M`, `512K`, `1G` (a bare number is MiB).
fn size(s: &str) -> Result<u64, String> {
    sf_api::units::parse_size(s)
}

/// How long the records (console, log, counters) of an ended VM are kept.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(3600);
/// Console kept per VM (the file and its previous rotation together).
pub const DEFAULT_CONSOLE_CAP: u64 = 8 << 20;
/// Time a client has to send a request's headers; also how long an idle
/// keep-alive connection stays open.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a request's body once its headers arrived.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Open connections per listener (lowered to fit the descriptor limit).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Running VMMs on this host (VMs booted here and clones received).
pub const DEFAULT_MAX_VMS: usize = 64;

#[derive(clap::Parser, Debug)]
#[command(
    name = "snowflockd",
    version,
    about = "SnowFlock host daemon: boots VMs, receives clones from peers, places clones, reports metrics"
)]
pub struct Args {
    /// Unix socket of the local API (for `snowflock --daemon SOCKET`).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// TCP address of the peer API, e.g. 10.0.0.1:7070 (needed for clones
    /// to or from other hosts).
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,
    /// The address other hosts reach this one at (default: the --listen IP).
    #[arg(long, value_name = "IP")]
    pub advertise: Option<IpAddr>,
    /// A peer daemon's TCP API, ip:port (repeatable).
    #[arg(long = "peer", value_name = "IP:PORT")]
    pub peers: Vec<SocketAddr>,
    /// TOML file with any of: socket, listen, advertise, peers = [...],
    /// state_dir, snowflock, max_clones, image_dir, output_dir, retention, console_cap,
    /// header_timeout, body_timeout, max_connections, max_vms (sizes and
    /// durations as strings, e.g. "8M", "10s"). Command-line flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where VM consoles, logs and counters are kept: a directory of this
    /// daemon's user, writable by no one else [default: /run/snowflock].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The `snowflock` binary that runs each VMM process (default: next to
    /// this executable).
    #[arg(long, value_name = "PATH")]
    pub snowflock: Option<PathBuf>,
    /// Clone limit handed to each VM (default: the VMM's own default).
    #[arg(long)]
    pub max_clones: Option<u32>,
    /// Directory of guest images the API may boot by file name (default:
    /// none, only shipped guests). Host paths outside it are refused.
    #[arg(long, value_name = "DIR")]
    pub image_dir: Option<PathBuf>,
    /// Directory for VMs' output files (API `"output": true`): VM `ID`
    /// writes under `DIR/ID/<vm-id>/NAME` (default: none, outputs refused).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// How long the records of an ended VM are kept [default: 1h].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub retention: Option<Duration>,
    /// Console kept per VM, the current file and the previous rotation
    /// together [default: 8M].
    #[arg(long, value_name = "SIZE", value_parser = size)]
    pub console_cap: Option<u64>,
    /// Time a client has to send request headers; also the idle
    /// keep-alive timeout [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub header_timeout: Option<Duration>,
    /// Time a client has to send a request body [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub body_timeout: Option<Duration>,
    /// Open connections per listener; at the cap, the longest-idle
    /// connection is closed for a new one [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Running VMMs on this host, VMs and received clones together; over
    /// it, create and clone requests get 503 [default: 64].
    #[arg(long, value_name = "N")]
    pub max_vms: Option<usize>,
    /// The cluster CA certificate (PEM; made by `snowflock cluster init`).
    /// With --tls-cert and --tls-key, the peer API on --listen speaks only
    /// mutual TLS to hosts whose certificate this CA signed.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This host's certificate (PEM), signed by the cluster CA; its IP
    /// address must be the one peers reach this host at.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// This host's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// DANGEROUS: serve the peer API on --listen over plain TCP with no
    /// authentication (anyone who reaches the port can start clones here
    /// and read clone groups' memory). Only for measurements on a closed
    /// network.
    #[arg(long)]
    pub insecure_no_tls: bool,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    socket: Option<PathBuf>,
    listen: Option<SocketAddr>,
    advertise: Option<IpAddr>,
    #[serde(default)]
    peers: Vec<SocketAddr>,
    state_dir: Option<PathBuf>,
    snowflock: Option<PathBuf>,
    max_clones: Option<u32>,
    image_dir: Option<PathBuf>,
    output_dir: Option<PathBuf>,
    retention: Option<String>,
    console_cap: Option<String>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
    max_connections: Option<usize>,
    max_vms: Option<usize>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    insecure_no_tls: bool,
}

/// How the peer API and this host's VMMs talk to other hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerSecurity {
    /// Mutual TLS under the cluster CA.
    Tls(sf_tls::TlsPaths),
    /// `--insecure-no-tls`: plain TCP, no authentication.
    Insecure,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub socket: PathBuf,
    pub listen: Option<SocketAddr>,
    pub advertise: IpAddr,
    pub peers: Vec<SocketAddr>,
    pub state_dir: PathBuf,
    pub snowflock: PathBuf,
    pub max_clones: Option<u32>,
    pub image_dir: Option<PathBuf>,
    pub output_dir: Option<PathBuf>,
    pub retention: Duration,
    pub console_cap: u64,
    pub http: crate::http::Limits,
    pub max_vms: usize,
    pub security: PeerSecurity,
}

/// A TOML value in the grammar of its command-line option.
fn parse_file<T>(
    v: Option<String>,
    key: &str,
    parse: fn(&str) -> Result<T, String>,
) -> anyhow::Result<Option<T>> {
    v.map(|s| parse(&s).map_err(|e| anyhow::anyhow!("config key `{key}`: {e}")))
        .transpose()
}

pub use sf_api::DEFAULT_SOCKET;

impl Config {
    pub fn from_args(a: Args) -> anyhow::Result<Config> {
        let file = match &a.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("{} is not a valid snowflockd config", p.display()))?
            }
            None => FileConfig::default(),
        };
        let listen = a.listen.or(file.listen);
        let peers = if a.peers.is_empty() {
            file.peers
        } else {
            a.peers
        };
        let advertise = match a.advertise.or(file.advertise).or(listen.map(|l| l.ip()).filter(|ip| !ip.is_unspecified())) {
            Some(ip) => ip,
            None if peers.is_empty() => IpAddr::from([127, 0, 0, 1]),
            None => bail!("with peers, say how they reach this host: --advertise IP (or --listen on a specific IP)"),
        };
        if !peers.is_empty() && listen.is_none() {
            bail!("with peers, this daemon needs a TCP API for them: --listen IP:PORT");
        }
        let security = match (
            a.tls_ca.or(file.tls_ca),
            a.tls_cert.or(file.tls_cert),
            a.tls_key.or(file.tls_key),
            a.insecure_no_tls || file.insecure_no_tls,
        ) {
            (Some(ca), Some(cert), Some(key), false) => {
                PeerSecurity::Tls(sf_tls::TlsPaths { ca, cert, key })
            }
            (None, None, None, true) => PeerSecurity::Insecure,
            (_, _, _, true) => {
                bail!("--insecure-no-tls and --tls-* contradict each other; pick one")
            }
            (None, None, None, false) if listen.is_some() => bail!(
                "--listen serves other hosts, so it needs the cluster's credentials: \
                 --tls-ca ca.pem --tls-cert HOST.pem --tls-key HOST-key.pem \
                 (make them with `snowflock cluster init --dir DIR --host NAME=IP ...`); \
                 or, on a closed network only, --insecure-no-tls"
            ),
            (None, None, None, false) => PeerSecurity::Insecure,
            _ => bail!("--tls-ca, --tls-cert and --tls-key go together; one is missing"),
        };
        let snowflock = match a.snowflock.or(file.snowflock) {
            Some(p) => p,
            None => std::env::current_exe()?.with_file_name("snowflock"),
        };
        if !snowflock.is_file() {
            bail!(
                "the VMM binary {} does not exist (build it, or pass --snowflock PATH)",
                snowflock.display()
            );
        }
        let max_clones = a.max_clones.or(file.max_clones);
        if let Some(n) = max_clones {
            if n > crate::validate::MAX_CLONES {
                bail!(
                    "--max-clones {n} is more than {}",
                    crate::validate::MAX_CLONES
                );
            }
        }
        let image_dir = a.image_dir.or(file.image_dir);
        if let Some(d) = &image_dir {
            if !d.is_dir() {
                bail!(
                    "the image directory {} is not a directory (--image-dir)",
                    d.display()
                );
            }
        }
        let output_dir = a.output_dir.or(file.output_dir);
        if let Some(d) = &output_dir {
            if !d.is_dir() {
                bail!(
                    "the output directory {} is not a directory (--output-dir)",
                    d.display()
                );
            }
        }
        let console_cap = a
            .console_cap
            .or(parse_file(file.console_cap, "console_cap", size)?)
            .unwrap_or(DEFAULT_CONSOLE_CAP);
        if console_cap < 64 << 10 {
            bail!("--console-cap must be at least 64K");
        }
        Ok(Config {
            socket: a
                .socket
                .or(file.socket)
                .unwrap_or_else(|| DEFAULT_SOCKET.into()),
            listen,
            advertise,
            peers,
            state_dir: a
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| crate::state::DEFAULT_STATE_DIR.into()),
            snowflock,
            max_clones,
            image_dir,
            output_dir,
            retention: a
                .retention
                .or(parse_file(file.retention, "retention", duration)?)
                .unwrap_or(DEFAULT_RETENTION),
            console_cap,
            http: crate::http::Limits {
                header_timeout: a
                    .header_timeout
                    .or(parse_file(file.header_timeout, "header_timeout", duration)?)
                    .unwrap_or(DEFAULT_HEADER_TIMEOUT),
                body_timeout: a
                    .body_timeout
                    .or(parse_file(file.body_timeout, "body_timeout", duration)?)
                    .unwrap_or(DEFAULT_BODY_TIMEOUT),
                max_connections: a
                    .max_connections
                    .or(file.max_connections)
                    .unwrap_or(DEFAULT_MAX_CONNECTIONS),
                max_body: crate::http::MAX_BODY,
            },
            max_vms: a.max_vms.or(file.max_vms).unwrap_or(DEFAULT_MAX_VMS),
            security,
        })
    }

    /// This daemon as peers know it.
    pub fn host_name(&self) -> String {
        match self.listen {
            Some(l) => format!("{}:{}", self.advertise, l.port()),
            None => self.socket.display().to_string(),
        }
    }
}
