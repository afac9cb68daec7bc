//! The daemon's state: the VMM processes it started (VMs booted here and
//! clones received from peers), their consoles, logs and counters.

use crate::config::Config;
use sf_api::{
    CloneAccepted, CloneMetrics, CloneRequest, CreateVm, FetchStats, Metrics, Placement, VmDetail,
    VmInfo, VmKind,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An API error: HTTP status and message.
#[derive(Debug)]
pub struct ApiError(pub u16, pub String);

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(400, msg.into())
}

struct Entry {
    info: VmInfo,
    console: PathBuf,
    log: PathBuf,
    stats: Option<PathBuf>,
}

pub struct Daemon {
    pub cfg: Config,
    vms: Mutex<BTreeMap<String, Entry>>,
    next: AtomicU64,
    clones_received: AtomicU64,
}

/// Most clones one request may start here.
const MAX_CLONES_PER_REQUEST: usize = 256;
/// How long a new VMM gets to fail fast (bad image, bad size) so the error
/// can go back in the API answer.
const EARLY_FAILURE_WINDOW: Duration = Duration::from_millis(300);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn tail(path: &PathBuf, max: u64) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(max as usize);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

impl Daemon {
    pub fn new(cfg: Config) -> Daemon {
        Daemon {
            cfg,
            vms: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(1),
            clones_received: AtomicU64::new(0),
        }
    }

    fn new_id(&self, kind: &str) -> String {
        format!("{kind}-{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// The options that give a VMM this host's cluster credentials.
    fn tls_args(&self) -> Vec<String> {
        match &self.cfg.security {
            crate::config::PeerSecurity::Tls(p) => [
                ("--tls-ca", &p.ca),
                ("--tls-cert", &p.cert),
                ("--tls-key", &p.key),
            ]
            .into_iter()
            .flat_map(|(k, v)| [k.to_string(), v.display().to_string()])
            .collect(),
            crate::config::PeerSecurity::Insecure => vec!["--insecure-no-tls".into()],
        }
    }

    pub fn peers(&self) -> Vec<String> {
        self.cfg.peers.iter().map(|p| p.to_string()).collect()
    }

    /// Spawns one VMM process with console and log files; a task records
    /// its exit. With `wait_early`, waits briefly so a VMM that fails at
    /// once (bad image or size) turns into an error answer; clones skip this
    /// (they report their own failures to their origin, and every
    /// millisecond of their start counts).
    #[allow(clippy::too_many_arguments)]
    async fn spawn(
        self: &Arc<Self>,
        id: String,
        kind: VmKind,
        guest: String,
        clone_id: Option<u32>,
        args: Vec<String>,
        stats: Option<PathBuf>,
        wait_early: bool,
        stdin: Option<Vec<u8>>,
    ) -> Result<VmInfo, ApiError> {
        let console = self.cfg.state_dir.join(format!("{id}.console"));
        let log = self.cfg.state_dir.join(format!("{id}.log"));
        let io = |what: &str, e: std::io::Error| ApiError(500, format!("cannot {what}: {e}"));
        let out = std::fs::File::create(&console).map_err(|e| io("create the console file", e))?;
        let err = std::fs::File::create(&log).map_err(|e| io("create the log file", e))?;
        let mut child = tokio::process::Command::new(&self.cfg.snowflock)
            .args(&args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| io("start the VMM process", e))?;
        // What the VMM must know but no file may hold (a clone group's
        // token): handed over a pipe.
        if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use tokio::io::AsyncWriteExt;
            let _ = pipe.write_all(&bytes).await;
        }
        let pid = child.id().unwrap_or(0);
        let info = VmInfo {
            id: id.clone(),
            kind,
            guest,
            pid,
            state: "running".into(),
            exit_code: None,
            clone_id,
            started_unix_ms: now_ms(),
        };
        self.vms.lock().expect("state lock").insert(
            id.clone(),
            Entry {
                info: info.clone(),
                console,
                log,
                stats,
            },
        );
        tracing::info!(%id, pid, ?args, "VMM started");
        let me = self.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            let code = status.and_then(|s| {
                s.code()
                    .or_else(|| std::os::unix::process::ExitStatusExt::signal(&s).map(|s| 128 + s))
            });
            if let Some(e) = me.vms.lock().expect("state lock").get_mut(&id) {
                e.info.state = "exited".into();
                e.info.exit_code = code;
            }
            tracing::info!(%id, ?code, "VMM exited");
            let _ = done_tx.send(code);
        });
        // A VMM that cannot even start (bad image, bad size) ends at once:
        // report its error line in the answer.
        if !wait_early {
            return Ok(info);
        }
        if let Ok(Ok(Some(1))) = tokio::time::timeout(EARLY_FAILURE_WINDOW, done_rx).await {
            let log = tail(&self.vms.lock().expect("state lock")[&info.id].log, 4096);
            let line = log
                .lines()
                .find(|l| l.starts_with("error: "))
                .unwrap_or(log.trim());
            return Err(bad(line.trim_start_matches("error: ").to_string()));
        }
        Ok(info)
    }

    pub async fn create_vm(self: &Arc<Self>, req: CreateVm) -> Result<VmInfo, ApiError> {
        if req.guest.trim().is_empty() {
            return Err(bad("`guest` must name a shipped guest or an ELF path"));
        }
        let id = self.new_id("vm");
        let mut args = vec!["run".to_string(), req.guest.clone()];
        if let Some(m) = &req.mem {
            args.extend(["--mem".into(), m.clone()]);
        }
        if let Some(t) = req.timeout_ms {
            args.extend(["--timeout".into(), format!("{t}ms")]);
        }
        if let Some(n) = req.max_clones.or(self.cfg.max_clones) {
            args.extend(["--max-clones".into(), n.to_string()]);
        }
        if self.cfg.listen.is_some() {
            // Clones may go to the peers: the VMM places them itself and
            // talks to them with this host's credentials.
            args.extend(["--advertise".into(), self.cfg.advertise.to_string()]);
            for p in &self.cfg.peers {
                args.extend(["--peer".into(), p.to_string()]);
            }
            args.extend(self.tls_args());
        }
        let placement = match req.placement {
            Placement::Spread => "spread",
            Placement::Local => "local",
            Placement::Remote => "remote",
        };
        args.extend(["--placement".into(), placement.into()]);
        if let Some(w) = req.prefetch_window {
            args.extend(["--prefetch-window".into(), w.to_string()]);
        }
        args.push("--".into());
        args.extend(req.args.iter().cloned());
        self.spawn(id, VmKind::Vm, req.guest, None, args, None, true, None)
            .await
    }

    pub async fn receive_clones(
        self: &Arc<Self>,
        req: CloneRequest,
    ) -> Result<CloneAccepted, ApiError> {
        if req.ids.is_empty() || req.ids.len() > MAX_CLONES_PER_REQUEST {
            return Err(bad(format!(
                "a clone request carries 1..={MAX_CLONES_PER_REQUEST} clone IDs, not {}",
                req.ids.len()
            )));
        }
        if sf_api::from_hex(&req.token_hex).is_none_or(|t| t.len() != 16) {
            return Err(bad("token_hex must be 32 hex digits"));
        }
        let descriptor = sf_api::from_hex(&req.descriptor_hex)
            .ok_or_else(|| bad("descriptor_hex is not hex"))?;
        let desc = sf_vmm::descriptor::VmDescriptor::decode(&descriptor)
            .map_err(|e| bad(e.to_string()))?;
        if desc.mem_size != req.mem_size {
            return Err(bad(format!(
                "descriptor says {} bytes of RAM, request says {}",
                desc.mem_size, req.mem_size
            )));
        }
        for a in [&req.memory_server, &req.report_to] {
            a.parse::<std::net::SocketAddr>()
                .map_err(|_| bad(format!("{a:?} is not ip:port")))?;
        }
        // The request holds the group's token: it goes to each clone-host
        // VMM on its stdin, never into a file.
        let request = serde_json::to_vec(&req).expect("serializes");
        let mut vms = Vec::new();
        for &cid in &req.ids {
            let id = self.new_id("clone");
            let stats = self.cfg.state_dir.join(format!("{id}.stats.json"));
            let mut args = vec![
                "clone-host".to_string(),
                "--id".into(),
                cid.to_string(),
                "--stats".into(),
                stats.display().to_string(),
            ];
            args.extend(self.tls_args());
            let info = self
                .spawn(
                    id,
                    VmKind::Clone,
                    format!("clone of {}", req.report_to),
                    Some(cid),
                    args,
                    Some(stats),
                    false,
                    Some(request.clone()),
                )
                .await?;
            self.clones_received.fetch_add(1, Ordering::Relaxed);
            vms.push(info.id);
        }
        Ok(CloneAccepted { vms })
    }

    pub fn list(&self) -> Vec<VmInfo> {
        self.vms
            .lock()
            .expect("state lock")
            .values()
            .map(|e| e.info.clone())
            .collect()
    }

    fn stats_of(e: &Entry) -> Option<FetchStats> {
        let p = e.stats.as_ref()?;
        serde_json::from_slice(&std::fs::read(p).ok()?).ok()
    }

    pub fn detail(&self, id: &str) -> Option<VmDetail> {
        let vms = self.vms.lock().expect("state lock");
        let e = vms.get(id)?;
        Some(VmDetail {
            info: e.info.clone(),
            console: tail(&e.console, 64 << 10),
            log: tail(&e.log, 16 << 10),
            memory: Self::stats_of(e),
        })
    }

    pub fn kill(&self, id: &str) -> Result<VmInfo, ApiError> {
        let vms = self.vms.lock().expect("state lock");
        let e = vms
            .get(id)
            .ok_or_else(|| ApiError(404, format!("no VM {id:?}")))?;
        if e.info.state == "running" && e.info.pid > 0 {
            // SAFETY: signals a VMM process this daemon started and has not reaped.
            unsafe { libc::kill(e.info.pid as i32, libc::SIGKILL) };
        }
        Ok(e.info.clone())
    }

    pub fn metrics(&self) -> Metrics {
        let vms = self.vms.lock().expect("state lock");
        Metrics {
            host: self.cfg.host_name(),
            peers: self.peers(),
            vms_running: vms.values().filter(|e| e.info.state == "running").count() as u32,
            vms_total: vms.len() as u32,
            clones_received: self.clones_received.load(Ordering::Relaxed) as u32,
            clones: vms
                .values()
                .filter(|e| e.info.kind == VmKind::Clone)
                .map(|e| CloneMetrics {
                    vm: e.info.id.clone(),
                    clone_id: e.info.clone_id.unwrap_or(0),
                    state: e.info.state.clone(),
                    memory: Self::stats_of(e).unwrap_or_default(),
                })
                .collect(),
        }
    }

    pub async fn kill_all(&self) {
        let ids: Vec<String> = self
            .vms
            .lock()
            .expect("state lock")
            .keys()
            .cloned()
            .collect();
        for id in ids {
            let _ = self.kill(&id);
        }
    }
}
