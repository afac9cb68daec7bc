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
    124  the run (the guest and all its clones) went past --timeout
    1    the VM could not be built or run (bad image, no /dev/kvm, the
         console cannot be written: a full disk, a closed pipe, ...)
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
    /// Stop the guest and all its clones (nested ones and time in join
    /// included) after this long: e.g. 500ms, 30s, 2m (0 = never).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    timeout: Duration,
    /// Most live clones the guest's whole family may have at once (clones
    /// of clones included, on every host). Default: 16 per host CPU,
    /// 8..=256; at most 256 (a larger value is cut to 256, with a warning).
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
    /// Ignore the guest's free-page hints: clones on other hosts fetch
    /// every page they touch, even ones the guest said it will overwrite
    /// (to measure what hints save).
    #[arg(long)]
    no_hints: bool,
    /// A file the guest reads with `sf_guest::input::get(NAME)` (C:
    /// `sf_input`), loaded read-only into guest RAM after the image and
    /// shared by clones (repeatable; at most 64; direct boot only).
    #[arg(long = "input", value_name = "NAME=PATH")]
    inputs: Vec<sf_vmm::inputs::InputSpec>,
    /// Where the guest's `sf_guest::output::write(NAME, ..)` files go:
    /// DIR/<vm-id>/NAME, vm-id 0 for this VM and the clone's ID path for
    /// clones (2, or 2.3 for clone 3 of clone 2; remote clones' files are
    /// shipped back here). Created if missing; the sandbox user becomes its
    /// owner. Existing files are never overwritten (the guest gets an error).
    /// With --daemon the files stay in the daemon's --output-dir, under the
    /// VM's ID (DIR is then only a switch), and --input names files inside
    /// the daemon's --image-dir by their file name.
    #[arg(long, value_name = "DIR")]
    output: Option<std::path::PathBuf>,
    /// Most bytes one VM (the root or any clone) may write to --output.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size)]
    output_cap: u64,
    /// Clones on other hosts get no pages by multicast: each fetches what
    /// it touches over its own connection (to measure what multicast buys).
    #[arg(long)]
    no_multicast: bool,
    /// With multicast: push every page served after answering over TCP,
    /// without lockstep detection (to measure what it buys).
    #[arg(long)]
    no_lockstep: bool,
    /// Give the guest's family a private network: a virtio-net NIC in every
    /// VM of the family on 10.F.0.0/16 (the guest is 10.F.0.1, clone k of
    /// the first clone call 10.F.0.(k+1)), a bridge on each host, VXLAN to
    /// the peers. F is the first family number free on this host.
    #[arg(long)]
    net: bool,
    /// With --net: this host gets 10.F.255.254 on the family network (and
    /// can reach its VMs; nothing is forwarded between it and other networks).
    #[arg(long, requires = "net")]
    net_host_access: bool,
    /// Do not record the first remote clone's working set nor push it to
    /// later clones ahead of their faults (to measure what it buys).
    #[arg(long)]
    no_working_set: bool,
    /// Internal: the address other hosts reach this one at (given by the
    /// daemon, with its peers and credentials, for clones on other hosts).
    #[arg(long, value_name = "IP", hide = true)]
    advertise: Option<std::net::IpAddr>,
    /// Internal: a peer daemon, ip:port (repeatable).
    #[arg(long = "peer", value_name = "IP:PORT", hide = true)]
    peers: Vec<String>,
    #[command(flatten)]
    sandbox: crate::sandbox_args::SandboxArgs,
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
            a.max_clones.map(|n| clamp_max_clones(Some(n))),
            a.placement.into(),
            a.prefetch_window,
            a.no_hints,
            crate::daemon::DaemonIo {
                // The daemon resolves each file by name in its image dir.
                inputs: a
                    .inputs
                    .iter()
                    .map(|i| {
                        let file = i.path.file_name().unwrap_or_default();
                        (i.name.clone(), file.to_string_lossy().into_owned())
                    })
                    .collect(),
                output: a.output.is_some(),
                output_cap: a.output.as_ref().map(|_| a.output_cap),
            },
            crate::daemon::RemoteKnobs {
                no_multicast: a.no_multicast,
                no_lockstep: a.no_lockstep,
                no_working_set: a.no_working_set,
            },
            a.net.then_some(sf_api::VmNet {
                host_access: a.net_host_access,
            }),
        );
    }
    let image = load_image(&a.guest)?;
    let max_clones = clamp_max_clones(a.max_clones);
    // Placement comes from the peer list the daemon gave: no VMM needs the
    // daemon's root-only socket, so every runner gives up root.
    let policy = a.sandbox.policy();
    // Without peers no clone leaves this host (placement has nowhere else
    // to put one): the runner gets no sockets.
    let has_peers = a.advertise.is_some() && !a.peers.is_empty();
    let remote = match a.advertise {
        Some(advertise) => Some(sf_vmm::clone::remote::RemoteLink {
            peers: a.peers.clone(),
            transport: a.tls.transport()?,
            advertise,
            placement: a.placement.into(),
            prefetch_window: a.prefetch_window,
            no_multicast: a.no_multicast,
            no_lockstep: a.no_lockstep,
            no_working_set: a.no_working_set,
        }),
        None => None,
    };
    let owner = policy.as_ref().and_then(|p| p.user).map(|c| (c.uid, c.gid));
    let output = match &a.output {
        Some(dir) => Some(sf_vmm::output::OutputDir::open(dir, a.output_cap, owner)?),
        None => None,
    };
    let cfg = VmConfig {
        mem_size: a.mem,
        vcpus: a.vcpus,
        timeout: (!a.timeout.is_zero()).then_some(a.timeout),
        boot: a.boot.into(),
        cmdline: a.args.join(" "),
        max_clones,
        remote,
        no_hints: a.no_hints,
        inputs: a.inputs.clone(),
        output,
    };
    // Refused before any of the family's devices exist (`Vm::add_nic`
    // refuses it too).
    if a.net && image.boot_mode(cfg.boot)? == sf_vmm::BootMode::Pvh {
        return Err(sf_vmm::ImageError::BootMode(
            sf_vmm::BootMode::Pvh,
            sf_vmm::image::NIC_NEEDS_DIRECT_BOOT,
        )
        .into());
    }
    // Before this process becomes a subreaper: the family's broker must
    // not end up as its child (see `net::start_family`).
    let family = if a.net {
        let peer = a
            .peers
            .first()
            .and_then(|p| p.parse::<std::net::SocketAddr>().ok());
        let advertise = a.advertise.filter(|_| has_peers);
        Some(crate::net::start_family(
            advertise,
            peer,
            a.net_host_access,
            max_clones,
        )?)
    } else {
        None
    };
    // This VMM reaps its whole family (orphans of killed clones included)
    // before it exits, instead of leaving zombies to PID 1.
    if let Err(e) = sf_vmm::clone::process::become_subreaper() {
        note(&format!(
            "snowflock: warning: cannot become the clones' reaper: {e}"
        ));
    }
    let mut vm = Vm::new(&cfg, &image).context("cannot start the VM")?;
    if let Some(fam) = family {
        crate::net::give_family(&mut vm, fam)?;
    }
    // Not std's stdout: its writers retry interrupted writes forever, and a
    // reader that stops reading must not stop the timeout. On a terminal the
    // guest's console is escaped (sf_vmm::sanitize says why); into a pipe or
    // file it stays byte for byte. (Asked before the sandbox: the terminal
    // check is an ioctl the runner's filter does not allow.)
    let console = sf_vmm::FdConsole::stdout();
    let mut out: Box<dyn Write> = if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        Box::new(sf_vmm::sanitize::TerminalWriter::new(console))
    } else {
        Box::new(console)
    };
    if let Some(p) = &policy {
        sf_vmm::sandbox::enter(sf_vmm::sandbox::Role::runner(has_peers), p)?;
    }
    if a.sandbox.sandbox_selftest {
        let e = sf_vmm::sandbox::selftest();
        anyhow::bail!("the sandbox let execve through (it failed only with: {e})");
    }
    let report = vm.run(&mut out)?;
    out.flush().ok();
    drop(out);
    if !report.outcome.is_clean_exit() {
        note(&format!("snowflock: {}", report.outcome));
    }
    if a.timings {
        let t = &report.timings;
        let first = t
            .first_instruction
            .map_or("n/a".into(), |d| format!("{:.3} ms", d.as_secs_f64() * 1e3));
        note(&format!(
            "snowflock: boot {} | VM create {:.3} ms | load {:.3} ms | first ring-3 instruction {first} | total {:.3} ms | {} exits, {} hypercalls",
            report.boot_mode,
            t.create_vm.as_secs_f64() * 1e3,
            t.load.as_secs_f64() * 1e3,
            t.total.as_secs_f64() * 1e3,
            t.exits,
            t.hypercalls
        ));
        for c in &report.clones {
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
            let firsts: Vec<f64> = c
                .clones
                .iter()
                .filter_map(|x| x.first_entry.map(ms))
                .collect();
            note(&format!(
                "snowflock: clone call ({} clones): parent resumed after {:.3} ms | first clone running after {:.3} ms | last {:.3} ms",
                c.granted,
                ms(c.request_to_resumed),
                firsts.iter().copied().fold(f64::INFINITY, f64::min),
                firsts.iter().copied().fold(0.0, f64::max)
            ));
        }
    }
    Ok(report.outcome.exit_code() as u8)
}

/// `--max-clones`, or the default, within [`sf_vmm::MAX_CLONES_LIMIT`]
/// (warning when cut).
pub fn clamp_max_clones(asked: Option<u32>) -> u32 {
    let limit = sf_vmm::MAX_CLONES_LIMIT;
    match asked {
        Some(n) if n > limit => {
            note(&format!(
                "snowflock: warning: --max-clones {n} is over the limit of {limit}; using {limit}"
            ));
            limit
        }
        Some(n) => n,
        None => sf_vmm::default_max_clones(),
    }
}

/// A line on stderr that cannot panic (a full disk must not read as exit 101).
fn note(line: &str) {
    sf_vmm::clone::process::note(line);
}
