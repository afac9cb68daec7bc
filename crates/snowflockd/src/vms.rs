//! The daemon's state: the VMM processes it started (VMs booted here and
//! clones received from peers), their consoles, logs and counters.
//!
//! Each VMM runs in its own cgroup, with its console capped by rotation in
//! the state directory, and dies with the daemon: `PR_SET_PDEATHSIG` is
//! set between fork and exec, so a `kill -9` of the daemon takes every VMM
//! with it, and a restarted daemon (which never reuses an ID) starts with
//! none running and no files of theirs touched.

use crate::api_error::bad;
pub use crate::api_error::ApiError;
use crate::cgroup::{self, Cgroups, VmCgroup};
use crate::config::Config;
use crate::state::StateDir;
use crate::validate;
use sf_api::{
    CloneAccepted, CloneMetrics, CloneRequest, CreateVm, FetchStats, Metrics, Placement, VmDetail,
    VmInfo, VmKind,
};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Entry {
    info: VmInfo,
    /// State files of this VM (console, its rotation, log, counters).
    files: Vec<String>,
    console: String,
    console_end: crate::console_file::ConsoleEnd,
    log: String,
    stats: Option<String>,
    ended: Option<Instant>,
}

pub struct Daemon {
    pub cfg: Config,
    state: StateDir,
    cgroups: Cgroups,
    vms: Mutex<BTreeMap<String, Entry>>,
    /// VMMs a request has taken from the host budget but not started
    /// yet (read and changed under the `vms` lock).
    reserved: AtomicUsize,
    clones_received: AtomicU64,
}

/// Places in the host budget held by one request while it starts its
/// VMMs; what it did not use goes back on drop. Starting a VMM awaits (the
/// clone request goes down a pipe), so without it concurrent requests
/// would all see the same free places.
struct Reservation<'a> {
    daemon: &'a Daemon,
    left: usize,
}

impl Reservation<'_> {
    /// One VMM started: its place is counted as running from now on.
    fn used_one(&mut self) {
        let _vms = self.daemon.vms.lock().expect("state lock");
        self.left -= 1;
        self.daemon.reserved.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let _vms = self.daemon.vms.lock().expect("state lock");
        self.daemon.reserved.fetch_sub(self.left, Ordering::Relaxed);
    }
}

/// Most clones one request may start here.
const MAX_CLONES_PER_REQUEST: usize = 256;
/// How long an exited VMM's console copier may take to drain the pipe
/// before the VM is reported exited anyway (a live clone may hold it).
const COPIER_DRAIN: Duration = Duration::from_secs(1);
/// How long a new VMM gets to fail fast (bad image, bad size) so the error
/// can go back in the API answer.
const EARLY_FAILURE_WINDOW: Duration = Duration::from_millis(300);
/// The console an API answer carries (its tail).
const CONSOLE_TAIL: u64 = 64 << 10;
/// The VMM log an API answer carries (its tail).
const LOG_TAIL: u64 = 16 << 10;
/// Disk reserved for each VMM's log at its start.
const LOG_RESERVE: i64 = 64 << 10;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Daemon {
    pub fn new(cfg: Config, state: StateDir, cgroups: Cgroups) -> Daemon {
        Daemon {
            cfg,
            state,
            cgroups,
            vms: Mutex::new(BTreeMap::new()),
            reserved: AtomicUsize::new(0),
            clones_received: AtomicU64::new(0),
        }
    }

    /// An I/O failure on the state directory as an answer: a full disk is
    /// named (507), anything else is the daemon's fault (500).
    fn io_error(&self, what: &str, e: std::io::Error) -> ApiError {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            ApiError(
                507,
                format!(
                    "cannot {what}: no space left on device in the state directory {}; free space there",
                    self.state.path().display()
                ),
            )
        } else {
            ApiError(500, format!("cannot {what}: {e}"))
        }
    }

    fn new_id(&self, kind: &str) -> Result<String, ApiError> {
        self.state
            .new_id(kind)
            .map_err(|e| self.io_error("record a new VM ID", e))
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

    /// 503 unless `n` more VMMs fit the host-wide budget; else holds
    /// their places until they run.
    fn reserve(&self, n: usize) -> Result<Reservation<'_>, ApiError> {
        let vms = self.vms.lock().expect("state lock");
        let running = vms.values().filter(|e| e.info.state == "running").count()
            + self.reserved.load(Ordering::Relaxed);
        if running + n > self.cfg.max_vms {
            return Err(ApiError(
                503,
                format!(
                    "this host runs {running} VMs, its budget is {} (--max-vms); {n} more do not fit: try again later or on another host",
                    self.cfg.max_vms
                ),
            ));
        }
        self.reserved.fetch_add(n, Ordering::Relaxed);
        drop(vms);
        Ok(Reservation {
            daemon: self,
            left: n,
        })
    }

    /// Spawns one VMM process with console and log files; a task records
    /// its exit. With `wait_early`, waits briefly so a VMM that cannot
    /// build the VM turns into an error answer; clones skip this (they
    /// report their own failures to their origin, and every millisecond of
    /// their start counts).
    #[allow(clippy::too_many_arguments)]
    async fn spawn(
        self: &Arc<Self>,
        id: String,
        kind: VmKind,
        guest: String,
        clone_id: Option<u32>,
        mut args: Vec<String>,
        guest_args: &[String],
        mut files: Vec<String>,
        stats: Option<String>,
        limits: (u64, u64),
        wait_early: bool,
        stdin: Option<Vec<u8>>,
        place: &mut Reservation<'_>,
    ) -> Result<VmInfo, ApiError> {
        let console = format!("{id}.console");
        let log = format!("{id}.log");
        self.state
            .create(&console)
            .map_err(|e| self.io_error("create the console file", e))?;
        files.extend([console.clone(), format!("{console}.1")]);
        let err = self
            .state
            .create(&log)
            .map_err(|e| self.io_error("create the log file", e))?;
        files.push(log.clone());
        // Reserve the log's first blocks now, so a VMM that later meets a
        // full disk (its console filled it) can still say so: without
        // them its error message is lost and the write failure panics it.
        // SAFETY: fallocate on a file this function just created.
        if unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&err),
                libc::FALLOC_FL_KEEP_SIZE,
                0,
                LOG_RESERVE,
            )
        } != 0
        {
            return Err(self.io_error(
                "reserve room for the VMM's log",
                std::io::Error::last_os_error(),
            ));
        }
        let console_file = crate::console_file::RotatingFile::open(
            &self.state.file(&console),
            self.cfg.console_cap,
        )
        .map_err(|e| self.io_error("open the console file", e))?;
        let copier_log = err
            .try_clone()
            .map_err(|e| self.io_error("share the log with the console copier", e))?;
        let (console_pipe, console_out) =
            std::io::pipe().map_err(|e| self.io_error("make the console pipe", e))?;
        if !guest_args.is_empty() || kind == VmKind::Vm {
            args.push("--".into());
            args.extend(guest_args.iter().cloned());
        }
        // The copier starts first: a VMM must never run with nobody
        // reading its console (nor untracked, if the thread cannot start).
        // Until the VMM has the pipe's write end, the command holds it, and
        // a VMM that does not start drops it, which ends the copier.
        let copier_id = id.clone();
        let console_end = crate::console_file::ConsoleEnd::default();
        let copier_end = console_end.clone();
        // Says when the copier has written the VMM's last console bytes, so
        // a VM is not reported exited with its console still in the pipe.
        let (copied_tx, copied_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("console-{id}"))
            .spawn(move || {
                crate::console_file::copy_console(
                    &copier_id,
                    console_pipe,
                    console_file,
                    copier_log,
                    copier_end,
                );
                let _ = copied_tx.send(());
            })
            .map_err(|e| self.io_error("start the console copier", e))?;
        let mut cg = self
            .cgroups
            .create(&format!("d{}.{id}", std::process::id()), limits.0, limits.1)
            .map_err(|e| ApiError(500, format!("cannot create the VM's cgroup: {e}")))?;
        let join = cg.join_fds();
        // SAFETY: getpid has no preconditions.
        let daemon = unsafe { libc::getpid() };
        let mut cmd = tokio::process::Command::new(&self.cfg.snowflock);
        cmd.args(&args)
            .current_dir(self.state.path())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::from(console_out))
            .stderr(Stdio::from(err));
        // SAFETY: between fork and exec the closure only makes
        // async-signal-safe system calls (prctl, getppid, write).
        unsafe {
            cmd.pre_exec(move || {
                // The VMM dies with the daemon. PDEATHSIG follows the
                // thread that forked: the daemon's runtime is one thread
                // (current_thread), which lives as long as the daemon.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The daemon may have died before the prctl took effect.
                // (No allocation between fork and exec: ESRCH, not a message.)
                if libc::getppid() != daemon {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                cgroup::join_in_child(&join)
            });
        }
        let spawned = cmd.spawn();
        // The command holds the pipe's write end: only the VMM (and its
        // clones) may keep it, or the copier would never see the end.
        drop(cmd);
        let mut child =
            spawned.map_err(|e| ApiError(500, format!("cannot start the VMM process: {e}")))?;
        cg.close_fds();
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
                files,
                console,
                console_end,
                log,
                stats,
                ended: None,
            },
        );
        place.used_one();
        tracing::info!(%id, pid, cgroup = ?cg.path(), ?args, "VMM started");
        let me = self.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            // The pipe ends when the VMM and any clone still holding it are
            // gone; clones are killed below, so wait a bounded time only.
            let _ = tokio::time::timeout(COPIER_DRAIN, copied_rx).await;
            let code = status.and_then(|s| {
                s.code()
                    .or_else(|| std::os::unix::process::ExitStatusExt::signal(&s).map(|s| 128 + s))
            });
            if let Some(e) = me.vms.lock().expect("state lock").get_mut(&id) {
                e.info.state = "exited".into();
                e.info.exit_code = code;
                e.ended = Some(Instant::now());
            }
            tracing::info!(%id, ?code, "VMM exited");
            if code == Some(128 + libc::SIGSYS) {
                // The VMM's sandbox killed it; its log has the call's name.
                let why = me.log_tail(&id, 4096);
                let line = why
                    .lines()
                    .rev()
                    .find(|l| l.contains("seccomp:"))
                    .unwrap_or("no seccomp line in its log");
                tracing::warn!(%id, "VMM killed by its seccomp sandbox: {line}");
            }
            let _ = done_tx.send(code);
            empty_and_remove(cg).await;
        });
        if !wait_early {
            return Ok(info);
        }
        let Ok(Ok(code)) = tokio::time::timeout(EARLY_FAILURE_WINDOW, done_rx).await else {
            return Ok(info);
        };
        // It ended at once. Only a VMM that could not build the VM is an
        // error answer; a guest that ran and exited is a finished VM.
        let log = self.log_tail(&info.id, LOG_TAIL);
        if code == Some(1) {
            if let Some(line) = log.lines().find(|l| is_build_failure(l)) {
                return Err(bad(line.trim_start_matches("error: ").to_string()));
            }
        }
        Ok(self
            .vms
            .lock()
            .expect("state lock")
            .get(&info.id)
            .map_or(info, |e| e.info.clone()))
    }

    pub async fn create_vm(self: &Arc<Self>, req: CreateVm) -> Result<VmInfo, ApiError> {
        let checked = validate::create_vm(
            &req,
            self.cfg.image_dir.as_deref(),
            self.cfg.output_dir.as_deref(),
        )?;
        let mut place = self.reserve(1)?;
        let id = self.new_id("vm")?;
        let max_clones = req
            .max_clones
            .or(self.cfg.max_clones)
            .unwrap_or_else(sf_vmm::default_max_clones)
            .min(validate::MAX_CLONES);
        let mut args = vec![
            "run".to_string(),
            checked.guest.clone(),
            "--mem".into(),
            format!("{}M", checked.mem >> 20),
            "--max-clones".into(),
            max_clones.to_string(),
        ];
        if let Some(t) = req.timeout_ms {
            args.extend(["--timeout".into(), format!("{t}ms")]);
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
        if req.no_hints {
            args.push("--no-hints".into());
        }
        for i in &checked.inputs {
            args.extend(["--input".into(), i.clone()]);
        }
        if let Some(dir) = self.cfg.output_dir.as_ref().filter(|_| req.output) {
            args.extend(["--output".into(), dir.join(&id).display().to_string()]);
        }
        if let Some(c) = checked.output_cap {
            args.extend(["--output-cap".into(), format!("{}K", c.div_ceil(1024))]);
        }
        if req.no_multicast {
            args.push("--no-multicast".into());
        }
        if req.no_lockstep {
            args.push("--no-lockstep".into());
        }
        if let Some(net) = &req.net {
            args.push("--net".into());
            if net.host_access {
                args.push("--net-host-access".into());
            }
        }
        if req.no_working_set {
            args.push("--no-working-set".into());
        }
        self.spawn(
            id,
            VmKind::Vm,
            req.guest,
            None,
            args,
            &req.args,
            Vec::new(),
            None,
            cgroup::limits(checked.mem, max_clones),
            true,
            None,
            &mut place,
        )
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
        validate::mem_bytes(req.mem_size)
            .map_err(|()| bad("`mem_size` must be a multiple of 2 MiB from 4 MiB to 64 GiB"))?;
        if let Some(t) = req.timeout_ms {
            validate::timeout_ms(t)?;
        }
        validate::max_clones(req.max_clones)?;
        validate::parent_path(&req.parent_path)?;
        validate::free_pages(&req.free_pages)?;
        if let Some(net) = &req.net {
            sf_vmm::net::remote::check(net, &req.ids, req.max_clones).map_err(bad)?;
        }
        if let Some(w) = req.prefetch_window {
            validate::prefetch_window(w)?;
        }
        for a in [&req.memory_server, &req.report_to] {
            a.parse::<std::net::SocketAddr>()
                .map_err(|_| bad(format!("{a:?} is not ip:port")))?;
        }
        let mut places = self.reserve(req.ids.len())?;
        // The request holds the group's token: it goes to each clone-host
        // VMM on its stdin, never into a file.
        let request = serde_json::to_vec(&req).expect("serializes");
        let limits = cgroup::limits(req.mem_size, req.max_clones);
        let mut vms = Vec::new();
        for &cid in &req.ids {
            match self
                .start_clone(&req, cid, &request, limits, &mut places)
                .await
            {
                Ok(id) => vms.push(id),
                Err(e) => {
                    // The sender counts the whole request as failed and
                    // tells its origin so: the clones already started here
                    // must not run on as ones nobody waits for.
                    for id in &vms {
                        let _ = self.kill(id);
                    }
                    return Err(e);
                }
            }
        }
        Ok(CloneAccepted { vms })
    }

    /// Starts the clone-host VMM of clone `cid` of `req`; its VM ID.
    async fn start_clone(
        self: &Arc<Self>,
        req: &CloneRequest,
        cid: u32,
        request: &[u8],
        limits: (u64, u64),
        places: &mut Reservation<'_>,
    ) -> Result<String, ApiError> {
        let id = self.new_id("clone")?;
        let stats = format!("{id}.stats.json");
        self.state
            .create(&stats)
            .map_err(|e| self.io_error("create the counters file", e))?;
        let files = vec![stats.clone()];
        let mut args = vec![
            "clone-host".to_string(),
            "--id".into(),
            cid.to_string(),
            "--stats".into(),
            self.state.file(&stats).display().to_string(),
        ];
        args.extend(self.tls_args());
        let info = self
            .spawn(
                id,
                VmKind::Clone,
                format!("clone of {}", req.report_to),
                Some(cid),
                args,
                &[],
                files,
                Some(stats),
                limits,
                false,
                Some(request.to_vec()),
                places,
            )
            .await?;
        self.clones_received.fetch_add(1, Ordering::Relaxed);
        Ok(info.id)
    }

    pub fn list(&self) -> Vec<VmInfo> {
        self.vms
            .lock()
            .expect("state lock")
            .values()
            .map(|e| e.info.clone())
            .collect()
    }

    /// The last `max` bytes of a VM's log. Reads only the tail: a file of
    /// any size costs one seek and at most `max` bytes.
    fn log_tail(&self, id: &str, max: u64) -> String {
        let Some(name) = self
            .vms
            .lock()
            .expect("state lock")
            .get(id)
            .map(|e| e.log.clone())
        else {
            return String::new();
        };
        String::from_utf8_lossy(&read_tail(&self.state, &name, max)).into_owned()
    }

    /// The last 64 KiB of a VM's console (with its previous rotation when
    /// the current file is short), and the count of console bytes they
    /// end at: the copier neither writes nor rotates meanwhile.
    fn console_tail(&self, id: &str) -> (String, u64) {
        let Some((name, end)) = self
            .vms
            .lock()
            .expect("state lock")
            .get(id)
            .map(|e| (e.console.clone(), e.console_end.clone()))
        else {
            return (String::new(), 0);
        };
        let end = end.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = read_tail(&self.state, &name, CONSOLE_TAIL);
        if (bytes.len() as u64) < CONSOLE_TAIL {
            let mut older = read_tail(
                &self.state,
                &format!("{name}.1"),
                CONSOLE_TAIL - bytes.len() as u64,
            );
            older.extend_from_slice(&bytes);
            bytes = older;
        }
        (String::from_utf8_lossy(&bytes).into_owned(), *end)
    }

    fn stats_of(&self, name: &Option<String>) -> Option<FetchStats> {
        let f = self.state.open_read(name.as_ref()?).ok()?;
        let mut bytes = Vec::new();
        f.take(64 << 10).read_to_end(&mut bytes).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn detail(&self, id: &str) -> Option<VmDetail> {
        let (info, stats) = {
            let vms = self.vms.lock().expect("state lock");
            let e = vms.get(id)?;
            (e.info.clone(), e.stats.clone())
        };
        let (console, console_end) = self.console_tail(id);
        Some(VmDetail {
            info,
            console,
            console_end,
            log: self.log_tail(id, LOG_TAIL),
            memory: self.stats_of(&stats),
        })
    }

    pub fn kill(&self, id: &str) -> Result<VmInfo, ApiError> {
        let vms = self.vms.lock().expect("state lock");
        let e = vms
            .get(id)
            .ok_or_else(|| ApiError(404, format!("no VM {id:?}")))?;
        if e.info.state == "running" && e.info.pid > 0 {
            // SAFETY: signals a VMM process this daemon started and has not
            // reaped (the entry says "running" until the reaper ran).
            unsafe { libc::kill(e.info.pid as i32, libc::SIGKILL) };
        }
        Ok(e.info.clone())
    }

    pub fn metrics(&self) -> Metrics {
        let clones: Vec<(String, u32, String, Option<String>)> = {
            let vms = self.vms.lock().expect("state lock");
            vms.values()
                .filter(|e| e.info.kind == VmKind::Clone)
                .map(|e| {
                    (
                        e.info.id.clone(),
                        e.info.clone_id.unwrap_or(0),
                        e.info.state.clone(),
                        e.stats.clone(),
                    )
                })
                .collect()
        };
        let vms = self.vms.lock().expect("state lock");
        let running = vms.values().filter(|e| e.info.state == "running").count() as u32;
        let total = vms.len() as u32;
        drop(vms);
        Metrics {
            host: self.cfg.host_name(),
            peers: self.peers(),
            vms_running: running,
            vms_total: total,
            clones_received: self.clones_received.load(Ordering::Relaxed) as u32,
            clones: clones
                .into_iter()
                .map(|(vm, clone_id, state, stats)| CloneMetrics {
                    vm,
                    clone_id,
                    state,
                    memory: self.stats_of(&stats).unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// Forgets VMs that ended more than the retention ago and removes their
    /// files, then any stale VM file nobody tracks. Returns how many VMs
    /// were forgotten.
    pub fn collect_garbage(&self) -> usize {
        let retention = self.cfg.retention;
        let gone: Vec<Entry> = {
            let mut vms = self.vms.lock().expect("state lock");
            let old: Vec<String> = vms
                .iter()
                .filter(|(_, e)| e.ended.is_some_and(|t| t.elapsed() >= retention))
                .map(|(id, _)| id.clone())
                .collect();
            old.iter().filter_map(|id| vms.remove(id)).collect()
        };
        for e in &gone {
            for f in &e.files {
                self.state.remove(f);
            }
        }
        let vms = self.vms.lock().expect("state lock");
        let group_live = |id: &str| {
            vms.values()
                .any(|e| e.files.iter().any(|f| f.split('.').next() == Some(id)))
        };
        self.state
            .collect_stale(retention, &|id| vms.contains_key(id) || group_live(id));
        gone.len()
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

/// A line of a VMM's log that says it could not build the VM (as opposed
/// to a guest that ran and exited 1).
fn is_build_failure(line: &str) -> bool {
    [
        "error: cannot start the VM",
        "error: cannot read guest image",
        "error: guest image",
        "error: no guest named",
    ]
    .iter()
    .any(|p| line.starts_with(p))
}

fn read_tail(state: &StateDir, name: &str, max: u64) -> Vec<u8> {
    let Ok(mut f) = state.open_read(name) else {
        return Vec::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    if f.seek(SeekFrom::Start(len.saturating_sub(max))).is_err() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let _ = f.take(max).read_to_end(&mut out);
    out
}

/// Once a VMM has exited: kills whatever of its family is left in its
/// cgroup (no orphans), then removes the cgroup.
async fn empty_and_remove(cg: VmCgroup) {
    for _ in 0..50 {
        let pids = cg.pids();
        if pids.is_empty() {
            break;
        }
        for p in pids {
            // SAFETY: signals a process inside this VM's own cgroup.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(cg);
}
