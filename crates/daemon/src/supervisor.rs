//! The supervisor: the one task that owns every app and instance and makes every lifecycle move.
//!
//! API handlers send it a [`Command`] (with a oneshot for the reply) over a bounded channel and read
//! the [`Snapshot`] it publishes on a `watch` channel after each change, so `list` never waits on it.
//! It reacts to three kinds of events, each handled to completion before the next:
//! - a command from the API;
//! - SIGCHLD: it reaps every exited child itself (nobody else calls `waitpid`), which keeps a pid it
//!   holds from ever being reused under it, and applies the restart policy;
//! - the earliest deadline among instances: a restart delay ending, a stop's `kill_timeout`, a
//!   `listen_timeout` or a missed watchdog ping;
//! - a [`Notice`] from an instance (sd_notify or the Node IPC channel): readiness, status, watchdog.
//!
//! Listening sockets, readiness channels and the reload state machine live in [`crate::cluster`];
//! `reload` jobs are advanced after every event, like pending continuations.
//!
//! Commands that must wait for processes to exit (stop, restart, delete, scale down, a changed spec,
//! kill) register a [`Pending`] continuation that runs once all its instances have settled.
//!
//! Replies are sent while an event is handled, and the snapshot is published after it, before the
//! supervisor next awaits. The daemon's runtime is current-thread, so no API handler runs in between:
//! a client that got its reply and then asks for `list` sees the change. On a multi-thread runtime
//! that would no longer hold (`run` checks the flavour in debug builds).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use pm2rs_proto::{
    ActionResponse, ApiError, AppSpec, DescribeResponse, Described, ErrorKind, ProcessInfo,
    ReloadRequest, ScaleRequest, ScaleTo, StartResponse, Status,
};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::cluster::reload::{self, NewState, Reload};
use crate::cluster::{self, Cluster, Notice, ipc::NodeMessage};
use crate::lifecycle::{self, Event};
use crate::logs::{Drained, LogHub};
use crate::policy::{self, Decision, ExitReason, RestartHistory, RestartPolicy};
use crate::process::{self, SpawnInput, Tracked};

mod cluster_ops;

/// A reply channel; the API handler holds the receiving end and drops it if the client goes away.
pub type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

/// Capacity of the command channel: senders wait (back-pressure) when the supervisor is behind.
pub const COMMAND_QUEUE: usize = 64;

/// What API handlers ask of the supervisor.
#[derive(Debug)]
pub enum Command {
    Start {
        apps: Vec<AppSpec>,
        reply: Reply<StartResponse>,
    },
    Stop {
        target: String,
        reply: Reply<ActionResponse>,
    },
    Restart {
        target: String,
        reply: Reply<ActionResponse>,
    },
    Delete {
        target: String,
        reply: Reply<ActionResponse>,
    },
    Scale {
        request: ScaleRequest,
        reply: Reply<ActionResponse>,
    },
    Reload {
        request: ReloadRequest,
        reply: Reply<ActionResponse>,
    },
    /// Stop every app, reply, then end the daemon.
    Kill { reply: Reply<ActionResponse> },
}

/// What the supervisor publishes after every change. Cheap to clone (behind an `Arc`).
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every instance, ordered by id (cpu/memory are filled in by the API from the sampler).
    pub processes: Vec<ProcessInfo>,
    /// Every app's spec, by name.
    pub specs: BTreeMap<String, Arc<AppSpec>>,
    /// Log file paths by instance id: (stdout, stderr).
    pub logs: BTreeMap<u32, (PathBuf, PathBuf)>,
}

impl Snapshot {
    /// Describes the instances matching `target`.
    pub fn describe(&self, target: &str) -> Result<DescribeResponse, ApiError> {
        let ids = resolve_target(
            target,
            self.processes
                .iter()
                .map(|p| (p.id, &*p.name, &*p.namespace)),
        )?;
        let mut out = Vec::with_capacity(ids.len());
        for p in self.processes.iter().filter(|p| ids.contains(&p.id)) {
            let (Some(spec), Some((out_log, err_log))) =
                (self.specs.get(&p.name), self.logs.get(&p.id))
            else {
                continue;
            };
            out.push(Described {
                process: p.clone(),
                spec: (**spec).clone(),
                out_log: out_log.clone(),
                err_log: err_log.clone(),
                combined_log: None,
                log_problems: Vec::new(),
            });
        }
        Ok(DescribeResponse { processes: out })
    }
}

/// Resolves a user-typed target against `(id, name, namespace)` triples: `all`, an id, an app name,
/// or a namespace, in that order of precedence.
pub fn resolve_target<'a>(
    target: &str,
    procs: impl Iterator<Item = (u32, &'a str, &'a str)> + Clone,
) -> Result<Vec<u32>, ApiError> {
    let target = target.trim();
    if target.is_empty() {
        return Err(api_error(
            ErrorKind::BadRequest,
            "empty target: name an app, an id, a namespace or `all`",
        ));
    }
    let ids: Vec<u32> = if target == "all" {
        procs.map(|(id, _, _)| id).collect()
    } else if let Ok(id) = target.parse::<u32>() {
        procs
            .filter(|(i, _, _)| *i == id)
            .map(|(id, _, _)| id)
            .collect()
    } else {
        let by_name: Vec<u32> = procs
            .clone()
            .filter(|(_, n, _)| *n == target)
            .map(|(id, _, _)| id)
            .collect();
        if by_name.is_empty() {
            procs
                .filter(|(_, _, ns)| *ns == target)
                .map(|(id, _, _)| id)
                .collect()
        } else {
            by_name
        }
    };
    if ids.is_empty() && target != "all" {
        return Err(api_error(
            ErrorKind::NotFound,
            &format!("no app, id or namespace matches `{target}`; see `pm2rs list`"),
        ));
    }
    Ok(ids)
}

fn api_error(kind: ErrorKind, message: &str) -> ApiError {
    ApiError {
        kind,
        message: message.to_string(),
    }
}

/// One app: its spec and the policy derived from it.
struct App {
    spec: Arc<AppSpec>,
    policy: RestartPolicy,
}

/// The current run of an instance.
#[derive(Debug, Clone, Copy)]
struct Run {
    tracked: Tracked,
    started: Instant,
    started_at_us: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeadlineKind {
    /// The restart delay ends: spawn again.
    Restart,
    /// `kill_timeout` after the stop signal: SIGKILL the group.
    Kill,
    /// The leader exited during a stop but its group had members left: check again.
    Drain,
    /// `listen_timeout` after the spawn of an instance that is still launching.
    ListenTimeout,
    /// `watchdog_timeout` since the last `WATCHDOG=1` of an online instance.
    Watchdog,
}

/// How often a draining group is checked when no SIGCHLD tells us first.
const DRAIN_RECHECK: Duration = Duration::from_millis(20);

/// How long a stop waits, once the group is empty, for the instance's pipes to be drained while
/// nothing more gets written. The pipes close with the group's last member; only a process that
/// left the group (setsid) can keep them open, and it must not hold `stop` for long.
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// A stop whose leader has exited, waiting for the rest of its group and for its pipes.
#[derive(Debug, Clone, Copy)]
struct Draining {
    pgid: Pid,
    /// Bytes the drains had written when last checked, and when that count last moved.
    written: u64,
    progress_at: Instant,
}

/// One instance.
struct Proc {
    id: u32,
    app: String,
    instance: u32,
    status: Status,
    run: Option<Run>,
    restarts: u32,
    history: RestartHistory,
    reason: Option<String>,
    last_exit: Option<String>,
    deadline: Option<(Instant, DeadlineKind)>,
    /// Set while stopping, after the leader exited, until its process group is empty and its
    /// output pipes are drained (bounded by [`PIPE_GRACE`]).
    draining: Option<Draining>,
    /// The log pipes of the current (or last) run.
    pipes: Option<Drained>,
    out_log: PathBuf,
    err_log: PathBuf,
    /// The last `STATUS=` of the current run.
    notify_status: Option<String>,
    /// Started by a reload to replace the instance of this id (whose id, log files and
    /// `PM2RS_ID` it takes): `listen_timeout` fails it instead of making it online.
    replaces: Option<u32>,
    /// A replacement that was not ready within `listen_timeout`.
    not_ready: bool,
}

impl Proc {
    fn settled(&self) -> bool {
        matches!(self.status, Status::Stopped | Status::Errored)
    }
}

/// What to do once a set of instances has settled (stopped or errored).
enum Then {
    /// Reply with the instances' state.
    Reply(Reply<ActionResponse>),
    /// Start them again, then reply.
    Restart(Reply<ActionResponse>),
    /// Remove them, then reply.
    Delete(Reply<ActionResponse>),
    /// Apply these changed specs (their old instances are the ones that settled), then reply.
    Apply {
        specs: Vec<AppSpec>,
        response: StartResponse,
        names: Vec<String>,
        reply: Reply<StartResponse>,
    },
    /// Reply, then end the daemon.
    Kill(Reply<ActionResponse>),
}

struct Pending {
    ids: Vec<u32>,
    then: Then,
}

/// The supervisor's state. Built by [`Supervisor::new`], consumed by [`Supervisor::run`].
pub struct Supervisor {
    logs_dir: PathBuf,
    /// Pipes and files of every instance's output.
    logs: LogHub,
    apps: BTreeMap<String, App>,
    procs: BTreeMap<u32, Proc>,
    by_pid: HashMap<Pid, u32>,
    next_id: u32,
    pending: Vec<Pending>,
    user: Option<String>,
    /// Receivers are the API handlers' clones; nobody listening is fine.
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// Cancelled by the supervisor after `kill`, or by the daemon on a signal.
    shutdown: CancellationToken,
    dirty: bool,
    /// Listening sockets, notify socket, Node shim.
    cluster: Cluster,
    /// Held until `run` starts; the senders are the notify reader and the IPC readers.
    notices: Option<mpsc::Receiver<Notice>>,
    /// Reloads in progress, each with the reply its command waits for.
    reloads: Vec<(Reload, Reply<ActionResponse>)>,
}

impl Supervisor {
    /// A supervisor capturing output through `logs`, publishing on `snapshot`, with its notify
    /// socket and Node shim in `runtime_dir`. Must be called inside the runtime.
    pub fn new(
        logs: LogHub,
        runtime_dir: &std::path::Path,
        snapshot: watch::Sender<Arc<Snapshot>>,
        shutdown: CancellationToken,
    ) -> Self {
        let (cluster, notices) = Cluster::start(runtime_dir);
        let user = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name);
        Supervisor {
            logs_dir: logs.logs_dir().to_path_buf(),
            logs,
            apps: BTreeMap::new(),
            procs: BTreeMap::new(),
            by_pid: HashMap::new(),
            next_id: 0,
            pending: Vec::new(),
            user,
            snapshot,
            shutdown,
            dirty: true,
            cluster,
            notices: Some(notices),
            reloads: Vec::new(),
        }
    }

    /// Runs until a `kill` command completes or `commands` closes. The SIGCHLD stream must have been
    /// registered before any child is spawned, which is why it is created here, first.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) -> std::io::Result<()> {
        debug_assert_eq!(
            tokio::runtime::Handle::current().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread,
            "replies go out before the snapshot is published: see the module doc"
        );
        let mut sigchld = signal(SignalKind::child())?;
        let mut notices = self.notices.take().unwrap_or_else(|| mpsc::channel(1).1);
        let logs = self.logs.clone();
        // Reap anything that exited before we were listening (e.g. adopted orphans).
        self.reap_all();
        loop {
            if self.dirty {
                self.publish();
            }
            let deadline = self.next_deadline();
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => break,
                },
                _ = sigchld.recv() => self.reap_all(),
                () = logs.drain_ended() => self.check_draining(),
                () = sleep_until_opt(deadline) => self.fire_deadlines(),
                Some(notice) = notices.recv() => self.on_notice(notice),
            }
            self.run_pending();
            self.advance_reloads();
            if self.shutdown.is_cancelled() && self.pending.is_empty() {
                break;
            }
        }
        // Whatever is still running when the command channel closes is stopped now.
        self.stop_everything_now();
        self.publish();
        Ok(())
    }

    fn handle(&mut self, cmd: Command) {
        debug!(?cmd, "command");
        match cmd {
            Command::Start { apps, reply } => self.start(apps, reply),
            Command::Stop { target, reply } => self.with_targets(&target, reply, Then::Reply),
            Command::Restart { target, reply } => self.with_targets(&target, reply, Then::Restart),
            Command::Delete { target, reply } => self.with_targets(&target, reply, Then::Delete),
            Command::Scale { request, reply } => self.scale(request, reply),
            Command::Reload { request, reply } => self.reload(request, reply),
            Command::Kill { reply } => {
                let ids: Vec<u32> = self.procs.keys().copied().collect();
                self.stop_ids(&ids);
                self.pending.push(Pending {
                    ids,
                    then: Then::Kill(reply),
                });
            }
        }
    }

    fn with_targets(
        &mut self,
        target: &str,
        reply: Reply<ActionResponse>,
        then: fn(Reply<ActionResponse>) -> Then,
    ) {
        match self.resolve(target) {
            Ok(ids) => {
                self.stop_ids(&ids);
                self.pending.push(Pending {
                    ids,
                    then: then(reply),
                });
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn resolve(&self, target: &str) -> Result<Vec<u32>, ApiError> {
        resolve_target(
            target,
            self.procs.values().map(|p| {
                let ns = self
                    .apps
                    .get(&p.app)
                    .map_or("default", |a| a.spec.namespace.as_str());
                (p.id, p.app.as_str(), ns)
            }),
        )
    }

    fn start(&mut self, specs: Vec<AppSpec>, reply: Reply<StartResponse>) {
        let mut response = StartResponse {
            started: vec![],
            updated: vec![],
            restarted: vec![],
            unchanged: vec![],
            processes: vec![],
        };
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        // Bind every new or changed address first: a port in use changes nothing.
        if let Err(e) = self.cluster.bind_all(&specs) {
            let _ = reply.send(Err(api_error(
                ErrorKind::Failed,
                &format!("{e}; nothing was changed"),
            )));
            return;
        }
        let mut changed = Vec::new();
        let mut to_stop = Vec::new();
        for spec in specs {
            match self.apps.get(&spec.name) {
                None => {
                    response.started.push(spec.name.clone());
                    self.add_app(spec);
                }
                Some(app) if *app.spec == spec => {
                    let ids: Vec<u32> = self
                        .ids_of(&spec.name)
                        .filter(|id| self.procs[id].settled())
                        .collect();
                    if ids.is_empty() {
                        response.unchanged.push(spec.name.clone());
                    } else {
                        response.restarted.push(spec.name.clone());
                        for id in ids {
                            self.start_proc(id, true);
                        }
                    }
                }
                Some(_) => {
                    response.updated.push(spec.name.clone());
                    to_stop.extend(self.ids_of(&spec.name));
                    changed.push(spec);
                }
            }
        }
        if changed.is_empty() {
            response.processes = self.infos_of_apps(&names);
            let _ = reply.send(Ok(response));
            return;
        }
        self.stop_ids(&to_stop);
        self.pending.push(Pending {
            ids: to_stop,
            then: Then::Apply {
                specs: changed,
                response,
                names,
                reply,
            },
        });
    }

    fn scale(&mut self, request: ScaleRequest, reply: Reply<ActionResponse>) {
        let Some(app) = self.apps.get(&request.name) else {
            let _ = reply.send(Err(api_error(
                ErrorKind::NotFound,
                &format!("no app named `{}`; see `pm2rs list`", request.name),
            )));
            return;
        };
        let mut ids: Vec<u32> = self.ids_of(&request.name).collect();
        ids.sort_by_key(|id| self.procs[id].instance);
        let current = ids.len() as i64;
        let wanted = match request.to {
            ScaleTo::Exactly(n) => i64::from(n),
            ScaleTo::Delta(d) => current.saturating_add(d),
        };
        if !(1..=1024).contains(&wanted) {
            let _ = reply.send(Err(api_error(
                ErrorKind::BadRequest,
                &format!(
                    "cannot scale `{}` to {wanted} instances (it has {current}); the count must be \
                     1 to 1024 — use `pm2rs stop` or `pm2rs delete` to remove an app",
                    request.name
                ),
            )));
            return;
        }
        let mut spec = (*app.spec).clone();
        spec.instances = wanted as u32;
        let spec = Arc::new(spec);
        if let Some(app) = self.apps.get_mut(&request.name) {
            app.spec = spec;
        }
        if wanted >= current {
            let mut new_ids = Vec::new();
            for _ in current..wanted {
                new_ids.push(self.add_proc(&request.name));
            }
            for &id in &new_ids {
                self.start_proc(id, false);
            }
            ids.extend(new_ids);
            let processes = self.infos(&ids);
            let _ = reply.send(Ok(ActionResponse { processes, ids }));
        } else {
            let remove = ids.split_off(wanted as usize);
            self.stop_ids(&remove);
            self.pending.push(Pending {
                ids: remove,
                then: Then::Delete(reply),
            });
        }
    }

    /// Registers a new app and spawns its instances.
    fn add_app(&mut self, spec: AppSpec) {
        let name = spec.name.clone();
        let count = spec.instances;
        self.apps.insert(
            name.clone(),
            App {
                policy: RestartPolicy::from(&spec),
                spec: Arc::new(spec),
            },
        );
        for _ in 0..count {
            let id = self.add_proc(&name);
            self.start_proc(id, false);
        }
        info!(app = %name, instances = count, "app added");
    }

    /// Creates a stopped instance of `app` with the lowest free instance index.
    fn add_proc(&mut self, app: &str) -> u32 {
        let used: Vec<u32> = self
            .ids_of(app)
            .map(|id| self.procs[&id].instance)
            .collect();
        let instance = (0..).find(|i| !used.contains(i)).unwrap_or(0);
        let id = self.next_id;
        self.next_id += 1;
        self.procs.insert(
            id,
            Proc {
                id,
                app: app.to_string(),
                instance,
                status: Status::Stopped,
                run: None,
                restarts: 0,
                history: RestartHistory::default(),
                reason: None,
                last_exit: None,
                deadline: None,
                draining: None,
                pipes: None,
                out_log: PathBuf::new(),
                err_log: PathBuf::new(),
                notify_status: None,
                replaces: None,
                not_ready: false,
            },
        );
        self.dirty = true;
        id
    }

    fn ids_of<'a>(&'a self, app: &'a str) -> impl Iterator<Item = u32> + 'a {
        self.procs
            .values()
            .filter(move |p| p.app == app)
            .map(|p| p.id)
    }

    /// Starts a settled instance (user request); `count_restart` adds to its ↺ counter.
    fn start_proc(&mut self, id: u32, count_restart: bool) {
        let Some(p) = self.procs.get_mut(&id) else {
            return;
        };
        if !p.settled() {
            return;
        }
        if count_restart {
            p.restarts += 1;
        }
        p.history = RestartHistory::default();
        p.reason = None;
        if transition(p, Event::StartRequested) {
            self.spawn_proc(id);
        }
    }

    /// Spawns the process of an instance that is `launching`.
    fn spawn_proc(&mut self, id: u32) {
        let Some(p) = self.procs.get_mut(&id) else {
            return;
        };
        let Some(app) = self.apps.get(&p.app) else {
            return;
        };
        let spec = &app.spec;
        // A replacement writes where the instance it replaces does.
        let log_id = p.replaces.unwrap_or(p.id);
        let (out_log, err_log) = log_paths(&self.logs_dir, spec, log_id);
        let prepared = self.cluster.prepare(spec, p.instance);
        let result = match &prepared {
            Err(e) => Err(std::io::Error::other(e.clone())),
            Ok(prepared) => {
                self.logs
                    .capture(spec.clone(), log_id)
                    .and_then(|(stdout, stderr, capture)| {
                        let input = SpawnInput {
                            spec,
                            instance: p.instance,
                            id: log_id,
                            stdout,
                            stderr,
                            handoff: Some(&prepared.handoff),
                        };
                        let tracked = process::spawn(input)?;
                        let drained = self.logs.start(capture, tracked.pid.as_raw() as u32);
                        Ok((tracked, drained))
                    })
            }
        };
        p.out_log = out_log;
        p.err_log = err_log;
        p.deadline = None;
        self.dirty = true;
        match result {
            Ok((tracked, drained)) => {
                p.pipes = Some(drained);
                p.run = Some(Run {
                    tracked,
                    started: Instant::now(),
                    started_at_us: pm2rs_proto::unix_micros(),
                });
                self.by_pid.insert(tracked.pid, id);
                transition(p, Event::Spawned);
                p.notify_status = None;
                p.not_ready = false;
                if let Ok(prepared) = prepared {
                    self.cluster.spawned(prepared, tracked.pid);
                }
                if cluster::waits_for_ready(spec) {
                    // `launching` until ready, bounded by listen_timeout.
                    let timeout = Duration::from_millis(spec.listen_timeout_ms);
                    p.deadline = Some((Instant::now() + timeout, DeadlineKind::ListenTimeout));
                } else {
                    // Fork mode without wait_ready: a spawned process is online.
                    became_ready(p, spec);
                }
                debug!(id, pid = tracked.pid.as_raw(), app = %p.app, "spawned");
            }
            Err(e) => {
                let reason = format!("could not start {}: {e}", spec.script.display());
                warn!(id, app = %p.app, %reason);
                p.reason = Some(reason);
                transition(p, Event::SpawnFailed);
            }
        }
    }

    /// Asks these instances to stop: running ones get their kill signal and a kill deadline.
    fn stop_ids(&mut self, ids: &[u32]) {
        for id in ids {
            let Some(p) = self.procs.get_mut(id) else {
                continue;
            };
            let Some(app) = self.apps.get(&p.app) else {
                continue;
            };
            let was_running = matches!(p.status, Status::Launching | Status::Online);
            if !transition(p, Event::StopRequested) {
                continue;
            }
            self.dirty = true;
            p.deadline = None;
            if was_running && let Some(run) = p.run {
                let sig = process::parse_signal(&app.spec.kill_signal);
                if let Err(e) = process::signal_group(run.tracked, sig) {
                    debug!(id, %e, "stop signal not delivered");
                }
                let timeout = Duration::from_millis(app.spec.kill_timeout_ms);
                p.deadline = Some((Instant::now() + timeout, DeadlineKind::Kill));
            }
        }
    }

    /// Reaps every exited child and applies the restart policy to managed ones.
    fn reap_all(&mut self) {
        loop {
            match process::reap_one() {
                Ok(Some((pid, exit))) => match self.by_pid.remove(&pid) {
                    Some(id) => self.on_exit(id, exit),
                    None => debug!(pid = pid.as_raw(), ?exit, "reaped an orphan"),
                },
                Ok(None) => break,
                Err(e) => {
                    error!(%e, "waitpid failed");
                    break;
                }
            }
        }
        self.check_draining();
    }

    /// Finishes the stop of every instance whose process group has emptied.
    fn check_draining(&mut self) {
        for p in self.procs.values_mut() {
            let Some(draining) = p.draining.as_mut() else {
                continue;
            };
            if let Some(pipes) = &p.pipes
                && pipes.written() != draining.written
            {
                draining.written = pipes.written();
                draining.progress_at = Instant::now();
            }
            let pipes_done = p.pipes.as_ref().is_none_or(Drained::is_done);
            if !process::group_alive(draining.pgid)
                && (pipes_done || draining.progress_at.elapsed() >= PIPE_GRACE)
            {
                if !pipes_done {
                    warn!(id = p.id, app = %p.app, "a process outside the group keeps the log pipes open; stopped without waiting for them");
                }
                p.draining = None;
                p.deadline = None;
                transition(p, Event::StoppedExit);
                self.dirty = true;
                info!(id = p.id, app = %p.app, "stopped");
            }
        }
    }

    fn on_exit(&mut self, id: u32, exit: ExitReason) {
        let Some(p) = self.procs.get_mut(&id) else {
            return;
        };
        let Some(run) = p.run.take() else { return };
        self.cluster.exited(run.tracked.pid);
        self.dirty = true;
        // The leader is gone: nothing of its group may outlive it (systemd's control-group rule).
        let group_left = process::group_alive(run.tracked.pid);
        if group_left {
            let _ = process::signal_group(run.tracked, Signal::SIGKILL);
        }
        let uptime = run.started.elapsed();
        p.last_exit = Some(process::describe_exit(exit));
        if p.status == Status::Stopping {
            let pipes_open = p.pipes.as_ref().is_some_and(|d| !d.is_done());
            if group_left || pipes_open {
                // Stopped only once the group is empty, so `stop` never returns with a member
                // alive, and once its output is in the log files.
                p.draining = Some(Draining {
                    pgid: run.tracked.pid,
                    written: p.pipes.as_ref().map_or(0, Drained::written),
                    progress_at: Instant::now(),
                });
                p.deadline = Some((Instant::now() + DRAIN_RECHECK, DeadlineKind::Drain));
            } else {
                p.deadline = None;
                transition(p, Event::StoppedExit);
                info!(id, app = %p.app, exit = ?exit, "stopped");
            }
            return;
        }
        let Some(app) = self.apps.get(&p.app) else {
            return;
        };
        let decision = policy::decide(&app.policy, &mut p.history, exit, uptime);
        info!(id, app = %p.app, exit = ?exit, uptime_ms = uptime.as_millis() as u64, ?decision, "exited");
        match decision {
            Decision::Restart { delay } => {
                transition(p, Event::ExitedRestart);
                p.restarts += 1;
                if delay.is_zero() {
                    transition(p, Event::DelayElapsed);
                    self.spawn_proc(id);
                } else {
                    p.deadline = Some((Instant::now() + delay, DeadlineKind::Restart));
                }
            }
            Decision::Stop { reason } => {
                p.reason = Some(reason);
                transition(p, Event::ExitedStop);
                self.cluster.release(&p.app, p.instance);
            }
            Decision::Errored { reason } => {
                p.reason = Some(reason);
                transition(p, Event::ExitedErrored);
                self.cluster.release(&p.app, p.instance);
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.procs
            .values()
            .filter_map(|p| p.deadline.map(|(at, _)| at))
            .min()
    }

    fn fire_deadlines(&mut self) {
        let now = Instant::now();
        let due: Vec<(u32, DeadlineKind)> = self
            .procs
            .values()
            .filter_map(|p| {
                p.deadline
                    .filter(|(at, _)| *at <= now)
                    .map(|(_, k)| (p.id, k))
            })
            .collect();
        for (id, kind) in due {
            let Some(p) = self.procs.get_mut(&id) else {
                continue;
            };
            p.deadline = None;
            self.dirty = true;
            match kind {
                DeadlineKind::Restart => {
                    if transition(p, Event::DelayElapsed) {
                        self.spawn_proc(id);
                    }
                }
                DeadlineKind::Kill => {
                    if let Some(run) = p.run {
                        warn!(id, app = %p.app, "kill_timeout elapsed; sending SIGKILL to the group");
                        let _ = process::signal_group(run.tracked, Signal::SIGKILL);
                    }
                }
                DeadlineKind::Drain => {
                    if let Some(Draining { pgid, .. }) = p.draining {
                        let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
                        p.deadline = Some((now + DRAIN_RECHECK, DeadlineKind::Drain));
                    }
                }
                DeadlineKind::ListenTimeout => {
                    let Some(app) = self.apps.get(&p.app) else {
                        continue;
                    };
                    if p.replaces.is_some() {
                        // A reload does not hand traffic to an instance that never said so.
                        p.not_ready = true;
                    } else {
                        info!(id, app = %p.app, "not ready within listen_timeout; online anyway");
                        became_ready(p, &app.spec);
                    }
                }
                DeadlineKind::Watchdog => {
                    if let Some(run) = p.run {
                        let reason = "watchdog: no WATCHDOG=1 within watchdog_timeout; restarted";
                        warn!(id, app = %p.app, "{reason}");
                        p.reason = Some(reason.into());
                        let _ = process::signal_group(run.tracked, Signal::SIGKILL);
                    }
                }
            }
        }
        self.check_draining();
    }

    /// Runs every pending continuation whose instances have all settled.
    fn run_pending(&mut self) {
        let mut i = 0;
        while i < self.pending.len() {
            let done = self.pending[i]
                .ids
                .iter()
                .all(|id| self.procs.get(id).is_none_or(Proc::settled));
            if done {
                let pending = self.pending.swap_remove(i);
                self.complete(pending);
            } else {
                i += 1;
            }
        }
    }

    fn complete(&mut self, Pending { ids, then }: Pending) {
        self.dirty = true;
        match then {
            Then::Reply(reply) => {
                self.close_stopped_apps(&ids);
                let processes = self.infos(&ids);
                let _ = reply.send(Ok(ActionResponse { processes, ids }));
            }
            Then::Restart(reply) => {
                for &id in &ids {
                    self.start_proc(id, true);
                }
                let processes = self.infos(&ids);
                let _ = reply.send(Ok(ActionResponse { processes, ids }));
            }
            Then::Delete(reply) => {
                self.remove(&ids);
                let _ = reply.send(Ok(ActionResponse {
                    processes: vec![],
                    ids,
                }));
            }
            Then::Apply {
                specs,
                mut response,
                names,
                reply,
            } => {
                for spec in specs {
                    self.apply_changed(spec);
                }
                response.processes = self.infos_of_apps(&names);
                let _ = reply.send(Ok(response));
            }
            Then::Kill(reply) => {
                self.remove(&ids);
                let _ = reply.send(Ok(ActionResponse {
                    processes: vec![],
                    ids,
                }));
                self.shutdown.cancel();
            }
        }
    }

    /// Replaces a (stopped) app's spec, adjusts its instance count and starts it again.
    fn apply_changed(&mut self, spec: AppSpec) {
        let name = spec.name.clone();
        let wanted = spec.instances as usize;
        let Some(app) = self.apps.get_mut(&name) else {
            // Deleted meanwhile: treat it as new.
            self.add_app(spec);
            return;
        };
        app.policy = RestartPolicy::from(&spec);
        app.spec = Arc::new(spec);
        let mut ids: Vec<u32> = self.ids_of(&name).collect();
        ids.sort_by_key(|id| self.procs[id].instance);
        if ids.len() > wanted {
            let extra = ids.split_off(wanted);
            self.remove(&extra);
        }
        while ids.len() < wanted {
            ids.push(self.add_proc(&name));
        }
        for id in ids {
            self.start_proc(id, true);
        }
        info!(app = %name, "app updated");
    }

    /// Forgets these (settled) instances. An app's instance count is derived from what remains; an
    /// app with none left is forgotten too.
    fn remove(&mut self, ids: &[u32]) {
        let mut apps = Vec::new();
        for id in ids {
            if let Some(p) = self.procs.remove(id) {
                if let Some(run) = p.run {
                    // Not settled (should not happen): never leave a process behind.
                    let _ = process::signal_group(run.tracked, Signal::SIGKILL);
                    self.by_pid.remove(&run.tracked.pid);
                }
                if self
                    .ids_of(&p.app)
                    .all(|other| self.procs[&other].instance != p.instance)
                {
                    self.cluster.release(&p.app, p.instance);
                }
                if !apps.contains(&p.app) {
                    apps.push(p.app);
                }
            }
        }
        for name in apps {
            let left = self.ids_of(&name).count() as u32;
            if left == 0 {
                self.cluster.close(&name);
                self.apps.remove(&name);
                info!(app = %name, "app deleted");
            } else if let Some(app) = self.apps.get_mut(&name)
                && app.spec.instances != left
            {
                let mut spec = (*app.spec).clone();
                spec.instances = left;
                app.spec = Arc::new(spec);
            }
        }
        self.dirty = true;
    }

    /// Last resort when the supervisor ends with processes still running: SIGKILL their groups.
    fn stop_everything_now(&mut self) {
        for p in self.procs.values_mut() {
            if let Some(run) = p.run.take() {
                let _ = process::signal_group(run.tracked, Signal::SIGKILL);
                p.status = Status::Stopped;
            }
        }
        self.reap_all();
    }

    fn info(&self, p: &Proc) -> ProcessInfo {
        let (namespace, exec_mode) = self
            .apps
            .get(&p.app)
            .map(|a| (a.spec.namespace.clone(), a.spec.exec_mode))
            .unwrap_or_default();
        ProcessInfo {
            id: p.id,
            name: p.app.clone(),
            namespace,
            instance: p.instance,
            exec_mode,
            pid: p.run.map(|r| r.tracked.pid.as_raw() as u32),
            status: p.status,
            restarts: p.restarts,
            unstable_restarts: p.history.unstable_restarts,
            started_at_us: p.run.map(|r| r.started_at_us),
            cpu_percent: None,
            memory_bytes: None,
            user: self.user.clone(),
            reason: p.reason.clone(),
            last_exit: p.last_exit.clone(),
            notify_status: p.notify_status.clone(),
        }
    }

    fn infos(&self, ids: &[u32]) -> Vec<ProcessInfo> {
        ids.iter()
            .filter_map(|id| self.procs.get(id))
            .map(|p| self.info(p))
            .collect()
    }

    fn infos_of_apps(&self, names: &[String]) -> Vec<ProcessInfo> {
        self.procs
            .values()
            .filter(|p| names.contains(&p.app))
            .map(|p| self.info(p))
            .collect()
    }

    fn publish(&mut self) {
        let snapshot = Snapshot {
            processes: self.procs.values().map(|p| self.info(p)).collect(),
            specs: self
                .apps
                .iter()
                .map(|(n, a)| (n.clone(), a.spec.clone()))
                .collect(),
            logs: self
                .procs
                .values()
                .map(|p| {
                    let paths = match self.apps.get(&p.app) {
                        Some(a) if p.out_log.as_os_str().is_empty() => {
                            log_paths(&self.logs_dir, &a.spec, p.id)
                        }
                        _ => (p.out_log.clone(), p.err_log.clone()),
                    };
                    (p.id, paths)
                })
                .collect(),
        };
        self.snapshot.send_replace(Arc::new(snapshot));
        self.dirty = false;
    }
}

/// Applies a lifecycle event; logs and refuses an illegal one. Returns whether it was applied.
fn transition(p: &mut Proc, event: Event) -> bool {
    match lifecycle::next(p.status, event) {
        Some(to) => {
            p.status = to;
            true
        }
        None => {
            warn!(id = p.id, from = ?p.status, ?event, "illegal lifecycle transition ignored");
            false
        }
    }
}

/// The instance is ready: `online`, with its watchdog armed.
fn became_ready(p: &mut Proc, spec: &AppSpec) {
    if transition(p, Event::Ready) {
        p.deadline = spec.watchdog_timeout_ms.map(|ms| {
            (
                Instant::now() + Duration::from_millis(ms),
                DeadlineKind::Watchdog,
            )
        });
        debug!(id = p.id, app = %p.app, "ready");
    }
}

/// The stdout and stderr files of an instance (see [`crate::logs::paths`]).
fn log_paths(logs_dir: &std::path::Path, spec: &AppSpec, id: u32) -> (PathBuf, PathBuf) {
    let paths = crate::logs::paths(logs_dir, spec, id);
    (paths.out, paths.err)
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triples() -> Vec<(u32, &'static str, &'static str)> {
        vec![
            (0, "api", "web"),
            (1, "api", "web"),
            (2, "worker", "jobs"),
            (3, "web", "other"),
        ]
    }

    #[test]
    fn targets_resolve_by_all_id_name_then_namespace() {
        let t = triples();
        assert_eq!(
            resolve_target("all", t.iter().copied()).unwrap(),
            vec![0, 1, 2, 3]
        );
        assert_eq!(resolve_target("2", t.iter().copied()).unwrap(), vec![2]);
        assert_eq!(
            resolve_target("api", t.iter().copied()).unwrap(),
            vec![0, 1]
        );
        assert_eq!(resolve_target("jobs", t.iter().copied()).unwrap(), vec![2]);
        // A name wins over a namespace of the same name.
        assert_eq!(resolve_target("web", t.iter().copied()).unwrap(), vec![3]);
        let err = resolve_target("nope", t.iter().copied()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert_eq!(
            resolve_target(" ", t.iter().copied()).unwrap_err().kind,
            ErrorKind::BadRequest
        );
    }
}
