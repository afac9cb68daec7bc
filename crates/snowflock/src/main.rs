//! `snowflock`: run SnowFlock guests on KVM, list the guests that ship with
//! the project, and benchmark.

mod bench;
mod cluster;
mod daemon;
mod demo;
mod gen_fasta;
mod guests;
mod net;
mod page_receiver;
mod run;
mod sandbox_args;
mod units;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "snowflock", version, about = "SnowFlock: VM fork as a first-class cloud primitive", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Watch a guest fork itself into N clones that share the work, then
    /// join them: the answer, checked, and the timeline.
    Demo(demo::DemoArgs),
    /// Boot a guest, print its console on stdout, exit with its exit code.
    Run(run::RunArgs),
    /// List the guests that ship with SnowFlock (usable by name with `run`).
    Guests(guests::GuestsArgs),
    /// Write a synthetic FASTA database with planted matches for the
    /// `align` guest (`--input db=FILE`).
    GenFasta(gen_fasta::GenFastaArgs),
    /// Measure and compare (prints a table; --json writes the numbers).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// A cluster's credentials: `cluster init` makes a CA and each host's
    /// certificate and key for mutual TLS between daemons.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// List the VMs a daemon runs.
    Vms(daemon::VmsArgs),
    /// Kill a VM a daemon runs.
    Kill(daemon::KillArgs),
    /// A daemon's counters: VMs, clones received, memory fetched on demand.
    Metrics(daemon::MetricsArgs),
    /// Internal: run one clone received from another host (the daemon
    /// starts this).
    #[command(hide = true)]
    CloneHost(daemon::CloneHostArgs),
    /// Internal: a family's network broker (the VMM or daemon starts it).
    #[command(hide = true)]
    NetBroker(net::FamilyArgs),
    /// Internal: a clone host's one receiver of a clone group's page
    /// pushes (the group's first clone VMM on the host starts it).
    #[command(hide = true)]
    PageReceiver,
    /// Internal: take a family's TAPs and hold them until stdin closes
    /// (a stand-in for a VMM in tests and benchmarks).
    #[command(hide = true)]
    NetHold(net::HoldArgs),
    /// Remove the network devices (bridges, VXLAN, TAPs) of clone families
    /// whose owner died.
    NetSweep,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SNOWFLOCK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(a) => demo::main(a),
        Command::Run(a) => run::main(a),
        Command::Guests(a) => guests::main(a),
        Command::GenFasta(a) => gen_fasta::main(a),
        Command::Bench(b) => bench::main(b),
        Command::Cluster(c) => cluster::main(c),
        Command::Vms(a) => daemon::vms(a),
        Command::Kill(a) => daemon::kill(a),
        Command::Metrics(a) => daemon::metrics(a),
        Command::CloneHost(a) => daemon::clone_host(a),
        Command::NetBroker(a) => net::broker_main(a),
        Command::NetHold(a) => net::hold(a),
        Command::PageReceiver => page_receiver::main(),
        Command::NetSweep => net::sweep(),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // Not eprintln!: with stderr on a full disk it would panic, and a
            // failed console write would then read as a panic (exit 101).
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::from(1)
        }
    }
}
