//! `snowflock bench`: benchmarks that print a table and can write JSON.

mod boot;
mod qemu;
mod stats;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Boot latency: VM create, first ring-3 instruction and whole
    /// `snowflock run hello`, against QEMU booting the same guest.
    Boot(boot::BootBenchArgs),
}

pub fn main(c: BenchCommand) -> anyhow::Result<u8> {
    match c {
        BenchCommand::Boot(a) => boot::main(a),
    }
}
