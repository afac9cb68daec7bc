//! `snowflockd`: the SnowFlock host daemon. One per host. It boots VMs
//! (each in its own VMM process, which it spawns and never forks itself),
//! receives clones sent by VMs on peer hosts, decides where a VM's clones go,
//! and reports state and metrics. The administrative API is on a Unix
//! socket (mode 0600); other hosts get only the peer API on TCP, over
//! mutual TLS under the cluster CA.

mod api;
mod api_error;
mod cgroup;
mod config;
mod console_file;
mod http;
mod peer_listener;
mod state;
mod validate;
mod vms;

use anyhow::Context;
use clap::Parser;
use std::sync::Arc;
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SNOWFLOCK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(config::Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snowflockd: error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(args: config::Args) -> anyhow::Result<()> {
    let mut cfg = config::Config::from_args(args)?;
    let creds = match &cfg.security {
        config::PeerSecurity::Tls(p) => Some(Arc::new(
            sf_tls::Credentials::load(p).context("cannot load the cluster credentials")?,
        )),
        config::PeerSecurity::Insecure => None,
    };
    let dir = state::StateDir::open(&cfg.state_dir)?;
    let cgroups = cgroup::Cgroups::detect();
    cgroups.collect_stale();
    // Bridges, VXLAN devices and TAPs of clone families whose broker died
    // (SIGKILL, a crash of this host) go before new families arrive.
    match sf_vmm::net::links::sweep() {
        Ok(gone) if !gone.is_empty() => {
            tracing::info!(?gone, "removed dead families' network devices")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot sweep dead families' network devices: {e}"),
    }
    let listeners = 1 + usize::from(cfg.listen.is_some());
    cfg.http.max_connections =
        http::fit_connections(cfg.http.max_connections, listeners, cfg.max_vms);
    tracing::info!(
        state_dir = %cfg.state_dir.display(),
        cgroups = cgroups.describe(),
        max_vms = cfg.max_vms,
        max_connections = cfg.http.max_connections,
        "snowflockd starting"
    );
    let state = Arc::new(vms::Daemon::new(cfg.clone(), dir, cgroups));
    // Files of a previous run past the retention go at once; the rest
    // when their time comes.
    state.collect_garbage();
    let gc = state.clone();
    tokio::spawn(async move {
        let every = (gc.cfg.retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            tokio::time::sleep(every).await;
            let n = gc.collect_garbage();
            if n > 0 {
                tracing::info!(vms = n, "forgot ended VMs past the retention");
            }
        }
    });

    if cfg.socket.exists() {
        // A socket file left by a daemon that is gone; a live one answers.
        if std::os::unix::net::UnixStream::connect(&cfg.socket).is_ok() {
            anyhow::bail!(
                "another snowflockd already listens on {}",
                cfg.socket.display()
            );
        }
        std::fs::remove_file(&cfg.socket)
            .with_context(|| format!("cannot remove stale socket {}", cfg.socket.display()))?;
    }
    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let unix = bind_private(&cfg.socket)?;
    tracing::info!(socket = %cfg.socket.display(), peers = ?cfg.peers, "snowflockd listening");
    let unix_server = http::serve(
        unix,
        api::admin_router(state.clone()),
        cfg.http.clone(),
        http::plain,
    );

    let tcp_server = match &cfg.listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            match &creds {
                Some(_) => {
                    tracing::info!(listen = %addr, advertise = %cfg.advertise, "peer API listening (mutual TLS under the cluster CA)")
                }
                None => tracing::warn!(
                    listen = %addr,
                    "INSECURE: --insecure-no-tls: the peer API is plain TCP with NO authentication; \
                     anyone who reaches {addr} can start clones here and read clone groups' memory"
                ),
            }
            Some(http::serve(
                l,
                api::peer_router(state.clone()),
                cfg.http.clone(),
                peer_listener::handshake(creds.clone()),
            ))
        }
        None => None,
    };
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    };
    tokio::select! {
        r = unix_server => r.context("the Unix-socket server stopped")?,
        r = async { match tcp_server { Some(s) => s.await, None => std::future::pending().await } } => r.context("the TCP server stopped")?,
        _ = shutdown => tracing::info!("shutting down"),
    }
    state.kill_all().await;
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}

/// Binds the admin socket with mode 0600 from the start (umask around the
/// bind, so there is no moment where others may connect), and checks it.
fn bind_private(path: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: umask only changes this process's file creation mask; the
    // daemon creates no other files while it is tightened (one thread
    // runs here, before the servers start).
    let old = unsafe { libc::umask(0o177) };
    let l = tokio::net::UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let l = l.with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private (0600)", path.display()))?;
    Ok(l)
}
