//! The pm2rs daemon: owns every managed process and serves the control API on a Unix socket.
//!
//! # Layout
//! - [`home`]: the home directory, the pid-file lock (one daemon per home), binding the socket.
//! - [`api`]: axum routes, version check, peer-uid check; handlers talk to the supervisor only.
//! - [`supervisor`]: the single task that owns app state and makes every lifecycle move.
//! - [`lifecycle`]: the table of allowed status transitions.
//! - [`policy`]: the restart policy, a pure function.
//! - [`os`]: the supervisor's seam to the OS ([`os::Os`]): spawn, signal a group, group alive,
//!   exit notification through pidfds, per-pid reaping, the orphan sweep.
//! - [`process`]: spawning in a process group, signalling groups safely, `/proc` figures.
//! - [`metrics`]: cpu/memory sampling of process groups, for `list` and memory limits.
//! - [`watcher`]: the file watcher behind `watch` (one inotify watcher for the daemon).
//! - [`cluster`]: listening sockets handed to instances, readiness (sd_notify, Node IPC, the Node
//!   shim), the rolling-reload state machine.
//! - [`logs`]: output capture: pipes drained into rotated files, followers, the daemon's own log.
//! - [`sd_notify`]: the daemon's own `NOTIFY_SOCKET` (systemd `Type=notify`): `READY=1`,
//!   `STOPPING=1`.
//! - [`state`]: the durable desired state (`dump.json`): atomic writes, versions, loading.
//!
//! [`serve`] is the in-process entry point (tests hand it a bound listener and a shutdown token, as
//! `tests/it/serve.rs` does); [`run_daemon`] is what `pm2rs daemon` calls.

pub mod api;
pub mod cluster;
pub mod home;
pub mod keeper;
pub mod lifecycle;
pub mod logs;
pub mod metrics;
pub mod os;
pub mod policy;
pub mod process;
pub mod sd_notify;
pub mod state;
pub mod supervisor;
pub mod watcher;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};
use tracing_subscriber::filter::LevelFilter;

use crate::api::{ApiState, PeerCheckedListener};
use crate::home::Home;
use crate::keeper::{Keeper, Kept};
use crate::logs::{DaemonLog, LogHub, Rotation};
use crate::os::RealOs;
use crate::state::Loaded;
use crate::supervisor::{Command, DumpLink, Inputs, Parts, Supervisor};

pub use crate::supervisor::Ending;

/// How `pm2rs daemon` was asked to run.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The daemon's home (`PM2RS_HOME`).
    pub home: PathBuf,
    /// Started by the CLI in the background: after the ready line, detach stdin/stdout/stderr.
    pub detached: bool,
    /// Daemon-wide log settings (rotation defaults, longest line).
    pub log_defaults: pm2rs_proto::LogDefaults,
    /// Start the apps of the dump (what the boot unit runs); otherwise start with none.
    pub resurrect: bool,
}

/// How many threads may write log files at once (each busy pipe has at most one write pending).
const LOG_WRITE_THREADS: usize = 8;
/// How long the daemon waits at exit for the last output of its apps to reach the files.
const LOG_DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the daemon in the foreground until `pm2rs kill`, SIGTERM or SIGINT (every app stopped), or
/// a handover to a successor (`pm2rs update`: every app left running). Prints `ready <pid>` on
/// stdout once the socket accepts connections (the CLI waits for that line). Once per process: the
/// pid-file lock it takes is held until the process exits.
pub fn run_daemon(opts: DaemonOptions) -> anyhow::Result<Ending> {
    // First, while the process has one thread: no app may inherit the service manager's socket.
    sd_notify::take_from_env();
    let home = Home::new(opts.home);
    home.prepare()?;
    let lock = home.lock()?;
    let hub = LogHub::new(home.logs_dir(), opts.log_defaults);
    init_tracing(&home, &hub)?;
    nix::sys::prctl::set_child_subreaper(true).context("cannot become a child subreaper")?;
    UNDER_SERVICE.store(
        !opts.detached && std::env::var_os("INVOCATION_ID").is_some(),
        std::sync::atomic::Ordering::Relaxed,
    );
    // The keeper of the apps' pipes and sockets, and what a previous daemon left with it.
    let (keeper, kept) =
        match Keeper::connect_or_start(&home.dir, std::path::Path::new("/proc/self/exe")) {
            Ok(k) => k,
            Err(e) => {
                error!(%e, "no fd keeper: apps will not outlive this daemon");
                (Keeper::none(), Vec::new())
            }
        };
    // Apps a previous daemon left running are taken over within the dump's desired state, so
    // the dump is restored then too, not only with `--resurrect`.
    let restore = if opts.resurrect || !kept.is_empty() {
        state::load(&home.dir)
    } else {
        Loaded::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(LOG_WRITE_THREADS)
        .build()
        .context("cannot start the async runtime")?;
    let serve_keeper = keeper.clone();
    let result = runtime.block_on(async {
        let listener = home.bind(&lock)?;
        let shutdown = CancellationToken::new();
        // Signals end the daemon the same way `pm2rs kill` does: stop every app first.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        // SIGUSR2 reopens every log file, for an external logrotate (as `pm2rs reload-logs`).
        let mut usr2 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())?;
        let reopen = hub.clone();
        tokio::spawn(async move {
            while usr2.recv().await.is_some() {
                reopen.reopen_all();
                info!("SIGUSR2: log files reopened");
            }
        });
        let signalled = shutdown.child_token();
        let on_signal = signalled.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM: stopping every app, then exiting"),
                _ = int.recv() => info!("SIGINT: stopping every app, then exiting"),
                () = on_signal.cancelled() => return,
            }
            on_signal.cancel();
        });
        announce_ready(opts.detached);
        // The service manager hears READY=1 once the socket serves and the dump's apps (and the
        // runs a previous daemon left) are back, so units ordered after pm2rs find them running.
        let (restored, restored_rx) = tokio::sync::oneshot::channel();
        let socket = home.socket();
        tokio::spawn(async move {
            if restored_rx.await.is_ok() {
                notify_service_manager(&format!(
                    "READY=1\nMAINPID={}\nSTATUS=serving {}",
                    std::process::id(),
                    socket.display()
                ));
            }
        });
        // Whether by a signal or `pm2rs kill`, the service manager hears that the stop began.
        let stopping = signalled.clone();
        tokio::spawn(async move {
            stopping.cancelled().await;
            notify_service_manager("STOPPING=1\nSTATUS=stopping every app");
        });
        info!(pid = std::process::id(), home = %home.dir.display(), "daemon ready");
        let kept = Keeping {
            keeper: serve_keeper,
            kept,
            restored: Some(restored),
        };
        serve_with(
            listener,
            home.clone(),
            hub,
            shutdown,
            signalled,
            restore,
            kept,
        )
        .await
    });
    match result {
        // Every app is stopped: the keeper has nothing left to keep.
        Ok(Ending::Stopped) => keeper.quit(),
        // Handed over, or failed: what the keeper holds is for the next daemon.
        _ => keeper.detach(),
    }
    // Blocking threads still writing log files finish before the daemon counts as gone.
    drop(runtime);
    home.cleanup();
    info!(ending = ?result.as_ref().ok(), "daemon exited");
    // The pid-file lock is released by the kernel as the process ends, not before: `pm2rs kill`
    // waits on it and reports the daemon gone once nothing of it runs any more.
    std::mem::forget(lock);
    result
}

/// Set when the daemon runs as a service's main process (systemd): a successor after a
/// handover is started by the service manager, not by the client.
static UNDER_SERVICE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the daemon runs as a service's main process.
pub fn under_service_manager() -> bool {
    UNDER_SERVICE.load(std::sync::atomic::Ordering::Relaxed)
}

/// The fd keeper a daemon works with, what a previous daemon left with it, and who is told once
/// that and the dump are brought back (see [`supervisor::Parts::restored`]).
#[derive(Default)]
pub struct Keeping {
    pub keeper: Keeper,
    pub kept: Vec<Kept>,
    pub restored: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Serves the API on `listener` and runs the supervisor until `shutdown` is cancelled (by `kill` or
/// a handover), or `stop_apps` is cancelled (by a signal: every app is stopped first, then the
/// daemon ends). `keeping`: the fd keeper and what a previous daemon left (the default: none).
pub async fn serve(
    listener: UnixListener,
    home: Home,
    logs: LogHub,
    shutdown: CancellationToken,
    stop_apps: CancellationToken,
    keeping: Keeping,
) -> anyhow::Result<Ending> {
    serve_with(
        listener,
        home,
        logs,
        shutdown,
        stop_apps,
        Loaded::default(),
        keeping,
    )
    .await
}

/// [`serve`], first restoring the apps of `restore` (a dump [`state::load`] read).
pub async fn serve_with(
    listener: UnixListener,
    home: Home,
    logs: LogHub,
    shutdown: CancellationToken,
    stop_apps: CancellationToken,
    restore: Loaded,
    keeping: Keeping,
) -> anyhow::Result<Ending> {
    let tracker = TaskTracker::new();
    // The dump writer ends once the supervisor (the sender) is gone, after its last write.
    let (desired_tx, desired_rx) = watch::channel(None);
    let (written_tx, written_rx) = watch::channel(state::Written::default());
    tracker.spawn(state::writer(home.dir.clone(), desired_rx, written_tx));
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::default());
    let (metrics_tx, metrics_rx) = watch::channel(Arc::new(HashMap::new()));
    let (watched_tx, watched_rx) = watch::channel(watcher::Watched::default());
    let (changes_tx, changes_rx) = mpsc::channel(watcher::CHANGE_QUEUE);
    let (cmd_tx, cmd_rx) = mpsc::channel(supervisor::COMMAND_QUEUE);
    let (exit_tx, exit_rx) = mpsc::channel(os::EXIT_QUEUE);
    let (notice_tx, notice_rx) = mpsc::channel(cluster::NOTICE_QUEUE);

    // SIGCHLD is registered here, before the supervisor can spawn anything.
    let os = RealOs::start(exit_tx).context("cannot watch child processes")?;
    let supervisor = Supervisor::new(Parts {
        logs: logs.clone(),
        cluster: cluster::Cluster::start(&home.dir, notice_tx),
        os: Box::new(os),
        snapshot: snapshot_tx,
        shutdown: shutdown.clone(),
        restore,
        dump: Some(DumpLink {
            desired: desired_tx,
            written: written_rx,
            path: state::dump_path(&home.dir),
        }),
        keeper: keeping.keeper.clone(),
        kept: keeping.kept,
        restored: keeping.restored,
        watched: Some(watched_tx),
    });
    let sup_done = shutdown.clone();
    // However the supervisor ends (a kill, or even a panic), the daemon ends with it rather than
    // serving an API nobody acts on.
    let supervisor = tokio::spawn(supervisor.run(Inputs {
        commands: cmd_rx,
        exits: exit_rx,
        notices: notice_rx,
        samples: Some(metrics_rx.clone()),
        changes: Some(changes_rx),
    }));
    let supervisor = tracker.spawn(async move {
        let ending = supervisor.await;
        sup_done.cancel();
        ending
    });
    tracker.spawn(watcher::run(watched_rx, changes_tx, shutdown.clone()));
    tracker.spawn(metrics::run(
        snapshot_rx.clone(),
        metrics_tx,
        shutdown.clone(),
    ));

    // A signal becomes a kill command, so apps are stopped gracefully before the daemon ends.
    let kill_tx = cmd_tx.clone();
    let on_stop = shutdown.clone();
    tracker.spawn(async move {
        tokio::select! {
            () = stop_apps.cancelled() => {
                let (reply, rx) = tokio::sync::oneshot::channel();
                if kill_tx.send(Command::Kill { reply }).await.is_ok() {
                    let _ = rx.await;
                }
                on_stop.cancel();
            }
            () = on_stop.cancelled() => {}
        }
    });

    let state = ApiState {
        commands: cmd_tx,
        snapshot: snapshot_rx,
        metrics: metrics_rx,
        started: Instant::now(),
        home: home.dir.clone(),
        logs: logs.clone(),
        shutdown: shutdown.clone(),
        keeper: keeping.keeper,
    };
    let listener = PeerCheckedListener {
        inner: listener,
        uid: nix::unistd::getuid().as_raw(),
    };
    let server_shutdown = shutdown.clone();
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(async move { server_shutdown.cancelled().await })
        .await
        .context("control socket server failed")?;
    tracker.close();
    tracker.wait().await;
    let ending = match supervisor.await {
        Ok(Ok(ending)) => ending,
        Ok(Err(e)) => anyhow::bail!(
            "the supervisor panicked: {e}; the apps are left running for the next daemon"
        ),
        Err(e) => anyhow::bail!("the supervisor task failed: {e}"),
    };
    match ending {
        // Every app is gone: let the drains write what is left in the pipes.
        Ending::Stopped => logs.finish(LOG_DRAIN_GRACE).await,
        // The apps run on: the drains stop after the write under way, leaving what they have not
        // written in the pipes for the successor.
        Ending::HandedOver => {
            logs.handover(LOG_DRAIN_GRACE).await;
        }
    }
    Ok(ending)
}

fn announce_ready(detached: bool) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready {}", std::process::id());
    let _ = out.flush();
    if detached
        && let Ok(devnull) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(&devnull);
        let _ = nix::unistd::dup2_stdout(&devnull);
        let _ = nix::unistd::dup2_stderr(&devnull);
    }
}

/// [`sd_notify::notify`], its failure logged: the service manager not hearing us is no reason to stop.
fn notify_service_manager(state: &str) {
    if let Err(e) = sd_notify::notify(state) {
        error!(%e, state, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// Sends tracing to `pm2rs.log`, rotated with the daemon-wide defaults and reopened with the apps'
/// logs.
fn init_tracing(home: &Home, hub: &LogHub) -> anyhow::Result<()> {
    let path = home.daemon_log();
    let d = hub.defaults();
    let rotation = Rotation {
        max_size: d.max_size,
        retain: d.retain,
        compress: d.compress,
    };
    let writer = DaemonLog::open(path.clone(), rotation, hub.generation())
        .with_context(|| format!("cannot open {}", path.display()))?;
    let level = std::env::var("PM2RS_LOG")
        .ok()
        .and_then(|v| log_level(&v))
        .unwrap_or(LevelFilter::INFO);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(writer)
        .try_init();
    Ok(())
}

/// The level asked for by `PM2RS_LOG`: a plain level (`debug`, `warn`, `off`, …). EnvFilter-style
/// directives (`pm2rs_daemon=debug,info`) are accepted too, and the most verbose level among them
/// applies to every target (a full `EnvFilter` would pull a regex engine into the daemon). `None`
/// when nothing in the value is a level.
fn log_level(value: &str) -> Option<LevelFilter> {
    value
        .split(',')
        .filter_map(|directive| {
            let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
            level.trim().parse::<LevelFilter>().ok()
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_level_reads_plain_levels_and_directives() {
        assert_eq!(log_level("debug"), Some(LevelFilter::DEBUG));
        assert_eq!(log_level("OFF"), Some(LevelFilter::OFF));
        assert_eq!(
            log_level("pm2rs_daemon=trace,warn"),
            Some(LevelFilter::TRACE)
        );
        assert_eq!(log_level("nonsense"), None);
        // Like an empty EnvFilter: errors only.
        assert_eq!(log_level(""), Some(LevelFilter::ERROR));
    }
}
