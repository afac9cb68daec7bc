//! `snowflockd`: the SnowFlock host daemon. One per host. It boots VMs
//! (each in its own VMM process, which it spawns and never forks itself),
//! receives clones sent by VMs on peer hosts, decides where a VM's clones go,
//! and reports state and metrics, over HTTP/JSON on a Unix socket (local
//! CLI) and on TCP (peer daemons and VMMs).

mod api;
mod cgroup;
mod config;
mod console_file;
mod http;
mod placement;
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
    let dir = state::StateDir::open(&cfg.state_dir)?;
    let cgroups = cgroup::Cgroups::detect();
    cgroups.collect_stale();
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
    let app = api::router(state.clone());

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
    let unix = tokio::net::UnixListener::bind(&cfg.socket)
        .with_context(|| format!("cannot listen on {}", cfg.socket.display()))?;
    tracing::info!(socket = %cfg.socket.display(), peers = ?cfg.peers, "snowflockd listening");
    let unix_server = http::serve(unix, app.clone(), cfg.http.clone(), http::plain);

    let tcp_server = match &cfg.listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(listen = %addr, advertise = %cfg.advertise, "peer API listening");
            Some(http::serve(l, app, cfg.http.clone(), http::plain))
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
