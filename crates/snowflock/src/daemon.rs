//! The CLI's side of the host daemon: run a VM under it and follow the
//! console, list VMs, kill one, show metrics; and the hidden `clone-host`
//! command a daemon runs for each clone it receives.

use anyhow::{bail, Context};
use sf_api::{Client, CloneRequest, CreateVm, Endpoint, Metrics, Placement, VmDetail, VmInfo};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Inputs and outputs of a VM run under a daemon: input files by their
/// name inside the daemon's `--image-dir`, outputs kept in the daemon's
/// `--output-dir` under the VM's ID.
pub struct DaemonIo {
    pub inputs: std::collections::BTreeMap<String, String>,
    pub output: bool,
    pub output_cap: Option<u64>,
}

fn client(sock: &Path) -> Client {
    Client::new(Endpoint::Unix(sock.to_path_buf()))
}

/// `snowflock run --daemon SOCKET`: create the VM there, stream its
/// console, exit with its exit code.
/// How a VM's remote clones get their memory (`snowflock run` knobs).
#[derive(Clone, Copy, Default)]
pub struct RemoteKnobs {
    pub no_multicast: bool,
    pub no_lockstep: bool,
    pub no_working_set: bool,
}

#[allow(clippy::too_many_arguments)]
pub fn run_remote(
    sock: &Path,
    guest: &str,
    args: &[String],
    mem: u64,
    timeout: Duration,
    max_clones: Option<u32>,
    placement: Placement,
    prefetch_window: Option<u32>,
    no_hints: bool,
    io: DaemonIo,
    knobs: RemoteKnobs,
    net: Option<sf_api::VmNet>,
) -> anyhow::Result<u8> {
    let guest = if Path::new(guest).exists() {
        std::fs::canonicalize(guest)?.display().to_string()
    } else {
        guest.to_string()
    };
    let req = CreateVm {
        guest,
        args: args.to_vec(),
        mem: Some(format!("{}M", mem >> 20)),
        timeout_ms: (!timeout.is_zero()).then_some(timeout.as_millis() as u64),
        max_clones,
        placement,
        prefetch_window,
        no_hints,
        inputs: io.inputs,
        output: io.output,
        output_cap: io.output_cap.map(|c| format!("{}K", c.div_ceil(1024))),
        no_multicast: knobs.no_multicast,
        no_lockstep: knobs.no_lockstep,
        net,
        no_working_set: knobs.no_working_set,
    };
    let c = client(sock);
    let info: VmInfo = c
        .post("/v1/vms", &req)
        .context("the daemon did not start the VM")?;
    eprintln!(
        "snowflock: VM {} started by the daemon at {} (pid {})",
        info.id,
        sock.display(),
        info.pid
    );
    // Console bytes printed so far, counted as the daemon counts them.
    let mut shown = 0u64;
    // Guest text on a terminal is escaped, as `snowflock run` does.
    let mut out: Box<dyn Write> = if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        Box::new(sf_vmm::sanitize::TerminalWriter::new(std::io::stdout()))
    } else {
        Box::new(std::io::stdout())
    };
    loop {
        let d: VmDetail = c.get(&format!("/v1/vms/{}", info.id))?;
        // Each look carries the console's last 64 KiB, ending at byte
        // `console_end` of the whole console: print what is new.
        let console = d.console.as_bytes();
        let new = d.console_end.saturating_sub(shown);
        if new > 0 {
            let skipped = new.saturating_sub(console.len() as u64);
            if skipped > 0 {
                eprintln!(
                    "snowflock: {skipped} bytes of console output were skipped (more than the daemon's 64 KiB answer was written between two looks; the VM's console file in the daemon's state directory keeps more)"
                );
            }
            out.write_all(&console[console.len() - (new - skipped) as usize..])?;
            out.flush()?;
            shown = d.console_end;
        }
        if d.info.state != "running" {
            let log: Vec<&str> = d
                .log
                .lines()
                .filter(|l| l.starts_with("snowflock: ") || l.starts_with("error: "))
                .collect();
            for l in log {
                eprintln!("{l}");
            }
            return Ok(d.info.exit_code.unwrap_or(1).clamp(0, 255) as u8);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `--daemon SOCKET` option of the commands that ask a daemon.
#[derive(clap::Args)]
pub struct DaemonSocket {
    /// The daemon's Unix socket.
    #[arg(long = "daemon", value_name = "SOCKET", default_value = sf_api::DEFAULT_SOCKET)]
    path: PathBuf,
}

#[derive(clap::Args)]
pub struct VmsArgs {
    #[command(flatten)]
    daemon: DaemonSocket,
}

pub fn vms(a: VmsArgs) -> anyhow::Result<u8> {
    let list: Vec<VmInfo> = client(&a.daemon.path).get("/v1/vms")?;
    println!(
        "{:<10} {:<6} {:>7} {:<8} {:>5}  GUEST",
        "ID", "KIND", "PID", "STATE", "EXIT"
    );
    for v in list {
        let kind = format!("{:?}", v.kind).to_lowercase();
        let exit = v.exit_code.map_or("-".into(), |c| c.to_string());
        println!(
            "{:<10} {:<6} {:>7} {:<8} {:>5}  {}",
            v.id, kind, v.pid, v.state, exit, v.guest
        );
    }
    Ok(0)
}

#[derive(clap::Args)]
pub struct KillArgs {
    /// The VM's ID (see `snowflock vms`).
    id: String,
    #[command(flatten)]
    daemon: DaemonSocket,
}

pub fn kill(a: KillArgs) -> anyhow::Result<u8> {
    let v: VmInfo =
        client(&a.daemon.path).call::<(), _>("DELETE", &format!("/v1/vms/{}", a.id), None)?;
    println!("killed {} (pid {})", v.id, v.pid);
    Ok(0)
}

#[derive(clap::Args)]
pub struct MetricsArgs {
    #[command(flatten)]
    daemon: DaemonSocket,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
}

pub fn metrics(a: MetricsArgs) -> anyhow::Result<u8> {
    let m: Metrics = client(&a.daemon.path).get("/v1/metrics")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
        return Ok(0);
    }
    println!(
        "host {}: {} VMs running of {}, {} clones received; peers: {}",
        m.host,
        m.vms_running,
        m.vms_total,
        m.clones_received,
        m.peers.join(", ")
    );
    println!(
        "{:<10} {:>5} {:<8} {:>8} {:>8} {:>8} {:>10} {:>8} {:>8} {:>8}",
        "VM", "CLONE", "STATE", "FAULTS", "PAGES", "ZERO", "BYTES", "P50 us", "P99 us", "MCAST"
    );
    for c in m.clones {
        let s = c.memory;
        println!(
            "{:<10} {:>5} {:<8} {:>8} {:>8} {:>8} {:>10} {:>8} {:>8} {:>8}",
            c.vm,
            c.clone_id,
            c.state,
            s.faults,
            s.pages_fetched,
            s.zero_pages,
            s.bytes_received,
            s.fault_latency_p50_us,
            s.fault_latency_p99_us,
            s.multicast_pages
        );
    }
    Ok(0)
}

#[derive(clap::Args)]
pub struct CloneHostArgs {
    /// Which clone of the request to run.
    #[arg(long)]
    id: u32,
    /// Where to keep the memory counters (JSON).
    #[arg(long)]
    stats: Option<PathBuf>,
    #[command(flatten)]
    sandbox: crate::sandbox_args::SandboxArgs,
    #[command(flatten)]
    tls: crate::cluster::TlsArgs,
}

/// Largest clone request read from the daemon (a descriptor is ~10 KB of hex).
const MAX_REQUEST: u64 = 1 << 20;

/// The clone request comes on stdin from the daemon, never from a file:
/// it holds the group's token, which must not touch the disk.
pub fn clone_host(a: CloneHostArgs) -> anyhow::Result<u8> {
    use std::io::Read;
    let transport = a.tls.transport()?;
    let mut text = Vec::new();
    std::io::stdin()
        .take(MAX_REQUEST)
        .read_to_end(&mut text)
        .context("cannot read the clone request on stdin")?;
    let req: CloneRequest =
        serde_json::from_slice(&text).context("the clone request is not valid JSON")?;
    if !req.ids.contains(&a.id) {
        bail!("clone {} is not part of this request", a.id);
    }
    // The family's network: join its segment on this host (bridge and
    // VXLAN through the family's broker) before the VMM sandboxes itself,
    // and keep the clone's TAP and broker connection while it runs.
    let family_lease = match &req.net {
        Some(net) => {
            let family = sf_vmm::net::remote::check(net, &req.ids, req.max_clones)
                .map_err(anyhow::Error::msg)?;
            let origin: std::net::SocketAddr = req
                .memory_server
                .parse()
                .context("the clone request's memory_server is not ip:port")?;
            let exe = std::env::current_exe()?;
            Some(
                sf_vmm::net::remote::join(&exe, net, family, origin.ip())
                    .context("cannot join the family's network on this host")?,
            )
        }
        None => None,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let policy = a.sandbox.policy();
    let code = sf_vmm::clone::host::run(
        &req,
        a.id,
        a.stats.as_deref(),
        &mut out,
        policy.as_ref(),
        &transport,
        family_lease,
    )?;
    Ok(code as u8)
}
