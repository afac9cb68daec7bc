//! `snowflock run`: one VM in this process, console on stdout.

use crate::units::{parse_duration, parse_size};
use anyhow::Context;
use sf_vmm::{BootMode, GuestImage, Vm, VmConfig};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Boot {
    /// Direct ring-3 start for SnowFlock guests, PVH for other ELFs.
    Auto,
    /// The VMM builds the CPU tables and starts the guest in ring 3.
    Direct,
    /// The standard PVH entry (what QEMU does with -kernel).
    Pvh,
}

impl From<Boot> for BootMode {
    fn from(b: Boot) -> BootMode {
        match b {
            Boot::Auto => BootMode::Auto,
            Boot::Direct => BootMode::Direct,
            Boot::Pvh => BootMode::Pvh,
        }
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum PlacementArg {
    /// Spread clones over this host and the daemon's peers.
    Spread,
    /// Keep every clone on this host.
    Local,
    /// Only the daemon's peers (for measuring remote cloning).
    Remote,
}

impl From<PlacementArg> for sf_api::Placement {
    fn from(p: PlacementArg) -> sf_api::Placement {
        match p {
            PlacementArg::Spread => sf_api::Placement::Spread,
            PlacementArg::Local => sf_api::Placement::Local,
            PlacementArg::Remote => sf_api::Placement::Remote,
        }
    }
}

#[derive(clap::Args)]
#[command(after_long_help = "\
GUEST is the name of a shipped guest (see `snowflock guests`) or the path of a
guest ELF. Arguments after `--` are handed to the guest as its command line:

    snowflock run hello -- one two
    snowflock run pi -- samples=50000000
    snowflock run ./my-guest.elf --mem 1G --timeout 30s

EXIT STATUS
    the guest's own exit status (0-255) when it exits
    101  the guest panicked (its message is printed)
    102  the guest crashed: CPU exception, triple fault, emulation failure
    124  the guest ran past --timeout
    1    the VM could not be built or run (bad image, no /dev/kvm, ...)
    2    bad command-line usage")]
pub struct RunArgs {
    /// Shipped guest name or path to a guest ELF.
    guest: String,
    /// Guest RAM: e.g. 64M, 512M, 4G (multiple of 2M, from 4M to 64G).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    mem: u64,
    /// Number of vCPUs (only 1 is supported so far).
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Stop the guest after this long: e.g. 500ms, 30s, 2m (0 = never).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    timeout: Duration,
    /// Most clones the guest may have at once (each clone gets the same
    /// limit for its own clones). Default: 16 per host CPU, 8..=256.
    #[arg(long, value_name = "N")]
    max_clones: Option<u32>,
    /// How to start the vCPU.
    #[arg(long, value_enum, default_value = "auto")]
    boot: Boot,
    /// Print where the time went (VM create, first instruction, total) on stderr.
    #[arg(long)]
    timings: bool,
    /// Run the VM under the daemon listening on this Unix socket (clones
    /// may then go to its peer hosts) and follow its console.
    #[arg(long, value_name = "SOCKET")]
    daemon: Option<std::path::PathBuf>,
    /// With --daemon: where the VM's clones may go.
    #[arg(long, value_enum, default_value = "spread")]
    placement: PlacementArg,
    /// With --daemon: largest batch, in 4 KiB pages, a clone on another
    /// host fetches per fault (1 = no prefetch; default 64).
    #[arg(long, value_name = "PAGES")]
    prefetch_window: Option<u32>,
    /// Internal: the address other hosts reach this one at (given by the
    /// daemon, with its peers and credentials, for clones on other hosts).
    #[arg(long, value_name = "IP", hide = true)]
    advertise: Option<std::net::IpAddr>,
    /// Internal: a peer daemon, ip:port (repeatable).
    #[arg(long = "peer", value_name = "IP:PORT", hide = true)]
    peers: Vec<String>,
    #[command(flatten)]
    tls: crate::cluster::TlsArgs,
    /// Arguments for the guest (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
}

/// The guest called `name` that ships with SnowFlock.
pub fn shipped(name: &str) -> anyhow::Result<GuestImage> {
    let i = sf_images::find(name)
        .ok_or_else(|| anyhow::anyhow!("no guest named {name:?} ships with SnowFlock"))?;
    Ok(GuestImage::from_bytes(i.elf.to_vec())?)
}

/// A shipped guest by name, else a file path.
pub fn load_image(guest: &str) -> anyhow::Result<GuestImage> {
    if let Some(i) = sf_images::find(guest) {
        if !Path::new(guest).exists() {
            return Ok(GuestImage::from_bytes(i.elf.to_vec())?);
        }
    }
    let path = Path::new(guest);
    if !path.exists() && !guest.contains('/') {
        anyhow::bail!("no guest named {guest:?} ships with SnowFlock and no such file exists; see `snowflock guests`");
    }
    Ok(GuestImage::from_file(path)?)
}

pub fn main(a: RunArgs) -> anyhow::Result<u8> {
    if let Some(sock) = &a.daemon {
        return crate::daemon::run_remote(
            sock,
            &a.guest,
            &a.args,
            a.mem,
            a.timeout,
            a.max_clones,
            a.placement.into(),
            a.prefetch_window,
        );
    }
    let image = load_image(&a.guest)?;
    let remote = match a.advertise {
        Some(advertise) => Some(sf_vmm::clone::remote::RemoteLink {
            peers: a.peers.clone(),
            transport: a.tls.transport()?,
            advertise,
            placement: a.placement.into(),
            prefetch_window: a.prefetch_window,
        }),
        None => None,
    };
    let cfg = VmConfig {
        mem_size: a.mem,
        vcpus: a.vcpus,
        timeout: (!a.timeout.is_zero()).then_some(a.timeout),
        boot: a.boot.into(),
        cmdline: a.args.join(" "),
        max_clones: a.max_clones.unwrap_or_else(sf_vmm::default_max_clones),
        remote,
    };
    let mut vm = Vm::new(&cfg, &image).context("cannot start the VM")?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let report = vm.run(&mut out)?;
    out.flush().ok();
    if !report.outcome.is_clean_exit() {
        eprintln!("snowflock: {}", report.outcome);
    }
    if a.timings {
        let t = &report.timings;
        let first = t
            .first_instruction
            .map_or("n/a".into(), |d| format!("{:.3} ms", d.as_secs_f64() * 1e3));
        eprintln!(
            "snowflock: boot {} | VM create {:.3} ms | load {:.3} ms | first ring-3 instruction {first} | total {:.3} ms | {} exits, {} hypercalls",
            report.boot_mode,
            t.create_vm.as_secs_f64() * 1e3,
            t.load.as_secs_f64() * 1e3,
            t.total.as_secs_f64() * 1e3,
            t.exits,
            t.hypercalls
        );
    }
    Ok(report.outcome.exit_code() as u8)
}
