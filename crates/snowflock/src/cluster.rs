//! `snowflock cluster`: make a cluster's credentials (a CA and one
//! certificate per host), and the hidden TLS options the daemon hands the
//! VMM processes it starts.

use anyhow::{bail, Context};
use sf_tls::generate::HostSpec;
use sf_tls::{Credentials, TlsPaths, Transport};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// Create a cluster CA and a certificate and key for each host.
    #[command(after_long_help = "\
Writes into DIR (created with mode 0700; keys are 0600; nothing that exists
is overwritten):

    ca.pem, ca-key.pem         the cluster CA (keep ca-key.pem off the hosts)
    NAME.pem, NAME-key.pem     each host's certificate (its IP address is the
                               certificate's subject alternative name) and key

Copy ca.pem, NAME.pem and NAME-key.pem to host NAME and start its daemon with

    snowflockd --listen IP:7070 --tls-ca ca.pem --tls-cert NAME.pem --tls-key NAME-key.pem ...

Daemons, VMMs and memory holders then accept only peers whose certificate
the cluster CA signed, and a clone request may name only addresses in the
sending host's certificate.

EXAMPLE
    snowflock cluster init --dir /etc/snowflock/cluster \\
        --host h1=10.0.0.1 --host h2=10.0.0.2 --host h3=10.0.0.3")]
    Init {
        /// Directory for the credentials (made if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// A host: its name (file names) and the IP address peers reach
        /// it at (repeatable, at least one).
        #[arg(long = "host", value_name = "NAME=IP", required = true)]
        hosts: Vec<HostSpec>,
    },
    /// Add a host's certificate to a cluster made with `cluster init`.
    AddHost {
        /// The directory `cluster init` wrote (needs ca.pem and ca-key.pem).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The new host, NAME=IP.
        #[arg(long = "host", value_name = "NAME=IP")]
        host: HostSpec,
    },
}

pub fn main(c: ClusterCommand) -> anyhow::Result<u8> {
    let show = |p: &TlsPaths| {
        println!(
            "  {} + {} (CA {})",
            p.cert.display(),
            p.key.display(),
            p.ca.display()
        )
    };
    match c {
        ClusterCommand::Init { dir, hosts } => {
            let paths = sf_tls::generate::init(&dir, &hosts)?;
            println!(
                "cluster CA {} (key {})",
                dir.join("ca.pem").display(),
                dir.join("ca-key.pem").display()
            );
            paths.iter().for_each(show);
        }
        ClusterCommand::AddHost { dir, host } => show(&sf_tls::generate::add_host(&dir, &host)?),
    }
    Ok(0)
}

/// How a VMM started by the daemon talks to other hosts (hidden options;
/// the daemon passes its own).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// Internal: the cluster CA certificate (PEM).
    #[arg(long, value_name = "FILE", hide = true)]
    tls_ca: Option<PathBuf>,
    /// Internal: this host's certificate (PEM).
    #[arg(long, value_name = "FILE", hide = true)]
    tls_cert: Option<PathBuf>,
    /// Internal: this host's key (PEM).
    #[arg(long, value_name = "FILE", hide = true)]
    tls_key: Option<PathBuf>,
    /// Internal: plain TCP to other hosts (the daemon runs insecurely).
    #[arg(long, hide = true)]
    insecure_no_tls: bool,
}

impl TlsArgs {
    /// Loads the credentials once, at start-up.
    pub fn transport(&self) -> anyhow::Result<Transport> {
        match (&self.tls_ca, &self.tls_cert, &self.tls_key, self.insecure_no_tls) {
            (Some(ca), Some(cert), Some(key), false) => {
                let paths = TlsPaths {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                };
                Ok(Transport::Tls(Arc::new(
                    Credentials::load(&paths).context("cannot load the cluster credentials")?,
                )))
            }
            (None, None, None, true) => Ok(Transport::Plain),
            _ => bail!("clones on other hosts need --tls-ca, --tls-cert and --tls-key together, or --insecure-no-tls"),
        }
    }
}
