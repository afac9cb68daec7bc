//! `snowflock bench`: benchmarks that print a table and can write JSON.

mod apps;
mod apps_run;
mod avoid;
mod boot;
mod clone;
mod cpu;
mod group;
mod net;
mod plot;
mod qemu;
mod qemu_snapshot;
mod remote;
mod stats;
mod testbed;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Boot latency: VM create, first ring-3 instruction and whole
    /// `snowflock run hello`, against QEMU booting the same guest.
    Boot(boot::BootBenchArgs),
    /// Clone latency and memory for N clones of 256 MiB / 1 GiB guests,
    /// against fork() of a plain process with the same resident memory.
    Clone(clone::CloneBenchArgs),
    /// Clones on other hosts (network namespaces, root needed): latency,
    /// fault latency, pages and bytes fetched against pages touched.
    Remote(remote::RemoteBenchArgs),
    /// Free-page hints (namespace hosts, root needed): what remote clones
    /// fetch and how long their work takes, hints on and off.
    Avoid(avoid::AvoidBenchArgs),
    /// The application guests (align, render, price) on one VM, local
    /// clones and remote clones: speedup and warm-up penalty.
    Apps(apps::AppsBenchArgs),
    /// Family networks (namespace hosts, root needed): TCP throughput and
    /// RTT on one host and across two, against host sockets on the same path.
    Net(net::NetBenchArgs),
}

pub fn main(c: BenchCommand) -> anyhow::Result<u8> {
    match c {
        BenchCommand::Boot(a) => boot::main(a),
        BenchCommand::Clone(a) => clone::main(a),
        BenchCommand::Remote(a) => remote::main(a),
        BenchCommand::Avoid(a) => avoid::main(a),
        BenchCommand::Apps(a) => apps::main(a),
        BenchCommand::Net(a) => net::main(a),
    }
}
