//! A clone that runs on this host for a VM on another host: empty guest RAM
//! filled on demand from the origin's memory holder, a VM built from the
//! descriptor, heartbeats and the final report over one connection to the
//! origin. Both connections use the VMM's [`Transport`]: mutual TLS, where
//! the holder and the origin must prove they own the addresses the clone
//! request named.

use super::origin_link::OriginLink;
use super::remote::HEARTBEAT_EVERY;
use super::report::CloneReport;
use super::wire::Frame;
use super::{CloneHost, Reporter, Role};
use crate::descriptor::VmDescriptor;
use crate::hints::FreePages;
use crate::memory::GuestRam;
use crate::remote::{FetchConfig, RemoteMemory};
use crate::vm::Vm;
use crate::{Error, Outcome};
use sf_api::CloneRequest;
use sf_tls::Transport;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("clone request is malformed: {0}")]
    Request(String),
    #[error("cannot open the counters file {path}: {source}")]
    Counters {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn parse(req: &CloneRequest) -> Result<([u8; 16], SocketAddr, SocketAddr, Vec<u8>), HostError> {
    let token: [u8; 16] = sf_api::from_hex(&req.token_hex)
        .and_then(|t| t.try_into().ok())
        .ok_or_else(|| HostError::Request("token_hex is not 32 hex digits".into()))?;
    let mem = req.memory_server.parse().map_err(|_| {
        HostError::Request(format!(
            "memory_server {:?} is not ip:port",
            req.memory_server
        ))
    })?;
    let rep = req
        .report_to
        .parse()
        .map_err(|_| HostError::Request(format!("report_to {:?} is not ip:port", req.report_to)))?;
    let desc = sf_api::from_hex(&req.descriptor_hex)
        .ok_or_else(|| HostError::Request("descriptor_hex is not hex".into()))?;
    Ok((token, mem, rep, desc))
}

/// Runs clone `id` of `req` to its end; returns the process exit code. The
/// guest console goes to `console`; memory counters are written to `stats`
/// (JSON) every heartbeat and at the end. With `sandbox`, set-up ends
/// (privileges dropped, the clone host's seccomp filter installed) just
/// before the vCPU first runs.
pub fn run(
    req: &CloneRequest,
    id: u32,
    stats: Option<&Path>,
    console: &mut dyn Write,
    sandbox: Option<&crate::sandbox::Policy>,
    transport: &Transport,
    family: Option<crate::net::broker::Lease>,
) -> Result<i32, HostError> {
    // Everything made from here on (the link to the origin, remote
    // memory's fault handler, the host's page receiver, heartbeats) runs
    // ahead of vCPUs; this thread drops back before it runs the vCPU.
    crate::thread_priority::serve_first();
    // Opened now: after set-up the sandbox opens no files.
    let stats = match stats {
        Some(path) => Some(Arc::new(crate::stats_file::StatsFile::open(path).map_err(
            |source| HostError::Counters {
                path: path.into(),
                source,
            },
        )?)),
        None => None,
    };
    // Latencies count from the parent's request where the clocks allow.
    let since_request = req
        .requested_unix_ns
        .map(|t| Duration::from_nanos(super::remote::unix_ns().saturating_sub(t)));
    let start = since_request
        .and_then(|d| Instant::now().checked_sub(d))
        .unwrap_or_else(Instant::now);
    let (token, mem_addr, report_addr, desc_bytes) = parse(req)?;
    // The origin answers the handshake only when it looks: connect in the
    // background and start the clone now.
    let conn = OriginLink::connect(transport.clone(), report_addr, Frame::Hello { token, id });
    let mut reporter = Reporter::Tcp(conn.clone());
    // Said here and reported to the origin; the process then exits 1.
    let fail = |reporter: &mut Reporter, e: &dyn std::fmt::Display| {
        eprintln!("snowflock: clone {id} could not start: {e}");
        let r = CloneReport {
            id,
            outcome: Outcome::HostError {
                message: e.to_string(),
            },
            result: Vec::new(),
            first_entry_us: 0,
            rss_bytes: 0,
            private_bytes: 0,
            memory: None,
        };
        let _ = reporter.send(r);
        Ok(1)
    };
    let desc = match VmDescriptor::decode(&desc_bytes) {
        Ok(d) => d,
        Err(e) => return fail(&mut reporter, &e),
    };
    let vm = build(req, id, desc, token, mem_addr, start, transport).and_then(|mut vm| {
        // The family network: this clone's number and its TAP (leased
        // before the sandbox), then the devices take the clone's identity.
        let index = req.ids.iter().position(|&i| i == id);
        if let (Some(net), Some(lease), Some(index)) = (&req.net, family, index) {
            vm.join_family_remote(net, index, id, lease.tap, lease.conn);
        }
        let path = vm.clones.path.clone();
        vm.devices_on_clone(id, &path)?;
        Ok(vm)
    });
    let vm = vm.map(|mut vm| {
        vm.clones.role = Role::Clone {
            id,
            reporter: Reporter::Tcp(conn.clone()),
        };
        vm.stats_file = stats.clone();
        if let Some(cap) = req.output_cap {
            vm.outputs = crate::output::Outputs::to_origin(conn.clone(), cap);
        }
        vm
    });
    let mut vm = match vm {
        Ok(vm) => vm,
        Err(e) => return fail(&mut reporter, &e),
    };
    let conn_for_console = conn.clone();
    spawn_heartbeats(conn, vm.memory_stats_source(), stats);
    crate::thread_priority::become_vcpu();
    if let Some(policy) = sandbox {
        if let Err(e) = crate::sandbox::enter(crate::sandbox::Role::CloneHost, policy) {
            return fail(&mut reporter, &e);
        }
    }
    // A clone's run reports to the origin and ends the process itself.
    let mut tee = ToOrigin {
        local: console,
        conn: conn_for_console,
    };
    let _ = vm.run(&mut tee);
    Ok(1)
}

fn build(
    req: &CloneRequest,
    id: u32,
    mut desc: VmDescriptor,
    token: [u8; 16],
    mem_addr: SocketAddr,
    start: Instant,
    transport: &Transport,
) -> Result<Vm, Error> {
    desc.boot_vcpu_mut().regs.rax = id as u64;
    let ram = GuestRam::new(desc.mem_size)?;
    let vcpu_thread = crate::remote::current_thread_kicker();
    let mut cfg = FetchConfig {
        on_failure: Some(std::sync::Arc::new(
            move |_: &crate::remote::RemoteError| vcpu_thread.kick(),
        )),
        transport: transport.clone(),
        // Untrusted (the guest's, via the network): clamped to this RAM.
        free_pages: Arc::new(FreePages::from_ranges(
            req.free_pages.clone(),
            desc.mem_size / crate::remote::PAGE_SIZE as u64,
        )),
        release_hinted_blocks: huge_pages_possible(),
        // Off unless asked for (`1` in the clone host daemon's
        // environment): on this machine it has not paid yet (see
        // `remote::huge`).
        huge_blocks: std::env::var_os(HUGE_BLOCKS_ENV).is_some_and(|v| v == "1")
            && huge_pages_possible(),
        // Test knob, set in the clone-host daemon's environment: this host
        // loses every page pushed to it.
        drop_pushes: std::env::var_os(DROP_PUSHES_ENV).is_some_and(|v| v == "1"),
        // The clone host runs as `snowflock clone-host`; the same program's
        // `page-receiver` is the host's one receiver of the group's pushes.
        page_receiver: std::env::current_exe().ok(),
        ..FetchConfig::default()
    };
    cfg.multicast = req
        .multicast
        .as_deref()
        .and_then(|g| g.parse().ok())
        .zip(local_v4_towards(mem_addr));
    if std::env::var_os(MAP_HOST_CACHE_ENV).is_some_and(|v| v == "1") {
        // SAFETY: `ram` is this process's new guest RAM, untouched; no Rust
        // reference points into it, and the Vm built below owns it.
        cfg = unsafe { cfg.mapping_host_cache() };
    }
    if let Some(w) = req.prefetch_window {
        cfg.max_window_pages = w.clamp(1, crate::remote::MAX_BATCH_PAGES);
    }
    let memory = RemoteMemory::attach(
        ram.host_base() as *mut u8,
        ram.size() as usize,
        mem_addr,
        token,
        cfg,
    )
    .map_err(Error::Remote)?;
    let path = if req.parent_path.is_empty() {
        id.to_string()
    } else {
        format!("{}.{id}", req.parent_path)
    };
    let timeout = req.timeout_ms.map(Duration::from_millis);
    let mut vm = Vm::from_descriptor(&desc, ram, memory, timeout, req.max_clones, start)?;
    vm.clones = CloneHost::new(req.max_clones);
    vm.clones.path = path.clone();
    // The origin refuses a result over the cap; the guest learns it here.
    if let Some(cap) = req.result_cap {
        let most = (sf_abi::clone::RESULT_FLOOR + sf_abi::clone::RESULTS_HELD_MAX) as u64;
        vm.clones.result_cap = cap.min(most);
    }
    vm.console.set_prefix(format!("[clone {path}] "));
    Ok(vm)
}

/// Heartbeats to the origin, plus the counters file for the daemon, from
/// a thread of their own: the vCPU thread may be blocked on a page that is
/// still on its way. (Kill orders are watched by the link's own thread.)
fn spawn_heartbeats(
    conn: Arc<OriginLink>,
    stats: crate::remote::StatsSource,
    stats_file: Option<Arc<crate::stats_file::StatsFile>>,
) {
    std::thread::spawn(move || {
        // Fork safety: parked in its sleep (see `clone::park`).
        let helper = super::park::register("heartbeat");
        loop {
            helper.idle(|| std::thread::sleep(HEARTBEAT_EVERY));
            if let Some(f) = &stats_file {
                let _ = f.publish(&stats.get());
            }
            if conn.heartbeat().is_err() {
                return;
            }
        }
    });
}

/// Test knob: `1` in a clone host's environment drops every page pushed to
/// its clones (they then fault and fall back to unicast).
pub const DROP_PUSHES_ENV: &str = "SNOWFLOCK_TEST_DROP_PUSHES";

/// `1` in a clone host daemon's environment: its clones install each whole
/// 2 MiB block that arrives at once as one huge page.
pub const HUGE_BLOCKS_ENV: &str = "SNOWFLOCK_HUGE_BLOCKS";

/// `1` in a clone host daemon's environment: its clones' guest RAM maps
/// the host's cache of pushed pages (see `FetchConfig::map_host_cache`).
pub const MAP_HOST_CACHE_ENV: &str = "SNOWFLOCK_MAP_HOST_CACHE";

/// Whether guest RAM (MADV_HUGEPAGE) can get transparent huge pages here:
/// then hinted 2 MiB blocks are faster filled by the kernel than by the
/// fault handler (see `release_hinted_blocks` in the remote handler).
fn huge_pages_possible() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| s.contains("[always]") || s.contains("[madvise]"))
}

/// This host's address on the route to `peer` (the interface to join the
/// clone group's multicast on).
fn local_v4_towards(peer: SocketAddr) -> Option<std::net::Ipv4Addr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect(peer).ok()?;
    match s.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(ip) => Some(ip),
        std::net::IpAddr::V6(_) => None,
    }
}

/// The clone's console: kept on this host (the daemon's console file) and
/// sent to the origin, which shows it on the parent's console.
struct ToOrigin<'a> {
    local: &'a mut dyn Write,
    conn: Arc<OriginLink>,
}

impl Write for ToOrigin<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.local.write_all(buf)?;
        // The origin may be gone; the clone's own report says what matters.
        self.conn.console(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.local.flush()
    }
}
