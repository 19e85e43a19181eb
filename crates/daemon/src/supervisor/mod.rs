//! The supervisor: the one task that owns every app and instance and makes every lifecycle move.
//!
//! # Inputs
//! Everything it reacts to is an [`Input`], each handled to completion before the next:
//! - `Command`: from an API handler, with a oneshot for the reply (channel of [`COMMAND_QUEUE`]);
//! - `Exited`: a watched process ended ([`crate::os`]'s exit watchers, [`crate::os::EXIT_QUEUE`]);
//! - `Notice`: an instance said something over sd_notify or Node IPC (the cluster readers,
//!   [`crate::cluster::NOTICE_QUEUE`]);
//! - `DrainEnded`: a log pipe reached end of file (the [`LogHub`]'s `Notify`, one stored wake-up);
//! - `Timer`: a timer of the [`timers`] queue is due (restart delay, kill timeout, listen
//!   timeout, watchdog, drain recheck; any number per instance; and one per app for its
//!   `cron_restart`);
//! - `Dumped`: the dump writer ([`crate::state::writer`]) wrote a generation of the desired state
//!   (or failed to).
//!
//! A new source (resource samples, file changes) is a new variant and a new branch of the
//! loop's `select!`; every other task only sends inputs. The operating system is behind
//! [`Os`](crate::os::Os), so this whole module runs against a fake in paused-time tests
//! (`tests.rs`).
//!
//! # One step
//! Handle the input → run every [`Pending`] continuation whose instances have settled → advance
//! the reloads → publish the [`Snapshot`] if anything changed → send the replies queued in the
//! outbox. Replies go out after the snapshot they describe is published, so a client that got its
//! reply and then asks for `list` sees the change, whatever the runtime flavour. While a change of
//! the desired state is not yet on disk, the step's replies are held until the writer reports it
//! written (`durable`).
//!
//! # Layout
//! - this file: the state types, [`Supervisor::run`] and the dispatch of inputs;
//! - `commands`: start, stop, restart, delete, reset, scale, kill, and the continuations that
//!   finish them;
//! - `exits`: spawning a run, what an exit means, stops that wait for the group and the pipes;
//! - `timers`: the timer queue and what each timer does when due;
//! - `cron`: `cron_restart`, an app's timer for its next scheduled restart;
//! - `snapshot`: the published [`Snapshot`], target resolution, the outbox of replies;
//! - `cluster_ops`: readiness notices, reload jobs, closing an app's sockets;
//! - `durable`: the desired state sent to the dump writer, replies held until it is written;
//! - `restore`: the apps of a dump brought back (at start with `--resurrect`, or `resurrect`).

mod adopt;
mod cluster_ops;
mod commands;
mod cron;
mod durable;
mod exits;
mod limits;
mod restore;
mod snapshot;
#[cfg(test)]
mod tests;
mod timers;
mod watching;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use nix::unistd::Pid;
use pm2rs_proto::{
    ActionResponse, AppSpec, HandoverResponse, ReloadRequest, ResurrectResponse, SaveResponse,
    ScaleRequest, StartResponse, Status,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::cluster::reload::Reload;
use crate::cluster::{Cluster, Notice};
use crate::keeper::{Keeper, Kept};
use crate::lifecycle::{self, Event};
use crate::logs::{Drained, LogHub};
use crate::os::{Exit, Os};
use crate::policy::{RestartHistory, RestartPolicy};
use crate::process::Tracked;
use crate::state::{Loaded, Written};

pub use durable::DumpLink;

pub use snapshot::{Snapshot, resolve_target, resolve_targets};
pub(crate) use timers::sleep_until;

use snapshot::Outbox;
use timers::{TimerKey, Timers};

/// A reply channel; the API handler holds the receiving end and drops it if the client goes away.
pub type Reply<T> = oneshot::Sender<Result<T, pm2rs_proto::ApiError>>;

/// Capacity of the command channel: senders wait (back-pressure) when the supervisor is behind.
pub const COMMAND_QUEUE: usize = 64;

/// Most exits handled in one step before the snapshot is published (a kill -9 of many instances
/// at once publishes once, not once per instance).
const EXIT_BATCH: usize = 64;

/// What API handlers ask of the supervisor.
#[derive(Debug)]
pub enum Command {
    Start {
        apps: Vec<AppSpec>,
        reply: Reply<StartResponse>,
    },
    /// Stop every instance the targets match (all of them must match something).
    Stop {
        targets: Vec<String>,
        reply: Reply<ActionResponse>,
    },
    Restart {
        targets: Vec<String>,
        reply: Reply<ActionResponse>,
    },
    Delete {
        targets: Vec<String>,
        reply: Reply<ActionResponse>,
    },
    /// Zero the restart counters (↺, unstable restarts) of the target's instances.
    Reset {
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
    /// Stop every app, reply, then end the daemon. The dump is left as it was.
    Kill { reply: Reply<ActionResponse> },
    /// Write the dump now (even if nothing changed); reply once it is on disk.
    Save { reply: Reply<SaveResponse> },
    /// Bring back the apps of this dump that the daemon does not know.
    Resurrect {
        loaded: Loaded,
        reply: Reply<ResurrectResponse>,
    },
    /// End the daemon leaving every app running, for a successor to take over (`update`).
    Handover { reply: Reply<HandoverResponse> },
}

/// How the supervisor ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every app was stopped (kill, a signal, or every command sender gone).
    Stopped,
    /// The apps were left running for a successor.
    HandedOver,
}

/// Everything the supervisor reacts to (see the module doc for where each comes from).
#[derive(Debug)]
pub enum Input {
    Command(Command),
    Exited(Exit),
    Notice(Notice),
    DrainEnded,
    Timer(TimerKey),
    Dumped(Written),
    /// New figures from the sampler: memory limits are checked against them.
    Sampled(crate::metrics::Samples),
    /// The files of this app changed (`watch`): restart it.
    FilesChanged(String),
}

/// What the supervisor is built from.
pub struct Parts {
    /// Pipes and files of every instance's output.
    pub logs: LogHub,
    /// Listening sockets, notify socket, Node shim; its readers send on the notice channel.
    pub cluster: Cluster,
    /// Spawning, signalling, exit watching; it sends on the exit channel.
    pub os: Box<dyn Os>,
    /// Receivers are the API handlers' clones; nobody listening is fine.
    pub snapshot: watch::Sender<Arc<Snapshot>>,
    /// Cancelled by the supervisor after `kill`, or by the daemon on a signal.
    pub shutdown: CancellationToken,
    /// The dump's apps, brought back before the first input (empty: start with no apps).
    pub restore: Loaded,
    /// The dump writer; `None` keeps no dump (replies are never held).
    pub dump: Option<DumpLink>,
    /// Holds every run's pipes and every app's sockets so they outlive the daemon
    /// ([`Keeper::none`]: they do not).
    pub keeper: Keeper,
    /// What a previous daemon left with the keeper, to be taken over.
    pub kept: Vec<Kept>,
    /// Told once `restore` and `kept` are brought back and published: every app of the dump is
    /// registered, its instances spawned or taken over (what `READY=1` waits for).
    pub restored: Option<tokio::sync::oneshot::Sender<()>>,
    /// Where the supervisor publishes what the file watcher watches ([`crate::watcher`]);
    /// `None`: no watcher, `watch` restarts nothing.
    pub watched: Option<watch::Sender<crate::watcher::Watched>>,
}

/// The receiving ends of the supervisor's input channels.
pub struct Inputs {
    /// Senders: the API handlers. All of them gone ends the supervisor.
    pub commands: mpsc::Receiver<Command>,
    /// Senders: the [`Os`]'s exit watchers.
    pub exits: mpsc::Receiver<Exit>,
    /// Senders: the cluster's notify and IPC readers.
    pub notices: mpsc::Receiver<Notice>,
    /// The sampler's figures (see [`crate::metrics`]); `None`: no sampler (tests), no limits.
    pub samples: Option<watch::Receiver<crate::metrics::Samples>>,
    /// The file watcher's changes: names of apps whose files changed.
    pub changes: Option<mpsc::Receiver<String>>,
}

/// One app: its spec and the policy derived from it.
struct App {
    spec: Arc<AppSpec>,
    policy: RestartPolicy,
    /// The user stopped every instance of it: it stays stopped when the dump is restored.
    stopped: bool,
    /// Its `cron_restart`, if it has one (on unless `stopped`).
    cron: Option<cron::CronRestart>,
}

/// The current run of an instance.
#[derive(Debug, Clone, Copy)]
struct Run {
    tracked: Tracked,
    started: Instant,
    started_at_us: u64,
}

/// A stop whose leader has exited, waiting for the rest of its group and for its pipes.
#[derive(Debug, Clone, Copy)]
struct Draining {
    pgid: Pid,
    /// Bytes the drains had written when last checked, and when that count last moved.
    written: u64,
    progress_at: Instant,
}

/// One instance of an app.
struct Instance {
    id: u32,
    app: String,
    /// Index within the app (`NODE_APP_INSTANCE`): picks the listening socket and log names.
    slot: u32,
    status: Status,
    run: Option<Run>,
    restarts: u32,
    history: RestartHistory,
    reason: Option<String>,
    last_exit: Option<String>,
    /// Set while stopping, after the leader exited, until its process group is empty and its
    /// output pipes are drained (bounded by `exits::PIPE_GRACE`).
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
    /// What the fd keeper holds of the current run.
    kept: Option<adopt::KeptHandle>,
    /// A run left by a previous daemon that the desired state has no place for, being stopped:
    /// not one of its app's instances, forgotten once stopped.
    leftover: bool,
    /// Why the daemon restarted the current run by itself for a limit (see [`limits`]).
    restart_reason: Option<String>,
    /// A limit restart of this instance is under way (asked, not yet started again).
    limit_restart: bool,
}

impl Instance {
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
    /// Forget them, replying to nobody (leftovers of a previous daemon, stopped).
    Forget,
    /// Start them again, replying to nobody (a cron, watch or limit restart, the latter with
    /// its reason for the new run); not those of an app the user stopped meanwhile.
    Start(Option<String>),
}

/// A command waiting for its instances to settle. Each instance counts once it has settled
/// (or is gone), even if something started it again meanwhile, so two continuations on the same
/// instance cannot starve each other.
struct Pending {
    ids: Vec<u32>,
    /// The ids that have not settled yet since the command was given.
    waiting: BTreeSet<u32>,
    then: Then,
}

impl Pending {
    fn new(ids: Vec<u32>, then: Then) -> Pending {
        Pending {
            waiting: ids.iter().copied().collect(),
            ids,
            then,
        }
    }
}

/// How a user-requested start counts in the instance's ↺ counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// A first start (new app, scale up, reload replacement): not a restart.
    AsStart,
    /// Started again (restart, start of a stopped app): one more restart.
    AsRestart,
}

/// The supervisor's state. Built by [`Supervisor::new`], consumed by [`Supervisor::run`].
pub struct Supervisor {
    logs_dir: PathBuf,
    logs: LogHub,
    os: Box<dyn Os>,
    apps: BTreeMap<String, App>,
    instances: BTreeMap<u32, Instance>,
    /// The instance of every running leader pid.
    by_pid: HashMap<Pid, u32>,
    next_id: u32,
    pending: Vec<Pending>,
    timers: Timers<TimerKey>,
    /// Instances whose stop waits for their group and pipes (checked on exits, drain ends and
    /// their recheck timer; never by scanning every instance).
    draining: BTreeSet<u32>,
    /// Replies to send once the step's snapshot is published.
    outbox: Outbox,
    user: Option<String>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    shutdown: CancellationToken,
    dirty: bool,
    cluster: Cluster,
    /// Reloads in progress, each with the reply its command waits for (none for a cron
    /// restart's).
    reloads: Vec<(Reload, Option<Reply<ActionResponse>>)>,
    /// The key of the next app cron timer (see `cron`).
    next_cron_key: u32,
    /// The dump writer and what was last sent to it.
    durable: durable::Durable,
    /// The apps to restore when the loop starts (taken by [`Supervisor::run`]).
    restore: Loaded,
    /// The fd keeper (see [`adopt`]).
    keeper: Keeper,
    /// What a previous daemon left, until the restore has taken it.
    take_over: adopt::TakeOver,
    /// Set by a handover: the supervisor ends without stopping anything.
    handed_over: bool,
    /// Runs of unknown apps a previous daemon left, SIGTERMed, by their `Retire` timer's id.
    retiring: BTreeMap<u32, Tracked>,
    /// See [`Parts::restored`]; taken by [`Supervisor::run`].
    restored: Option<tokio::sync::oneshot::Sender<()>>,
    /// See [`Parts::watched`].
    watched: Option<watch::Sender<crate::watcher::Watched>>,
}

impl Supervisor {
    /// A supervisor over `parts`. Must be called inside the runtime.
    pub fn new(parts: Parts) -> Self {
        let Parts {
            logs,
            cluster,
            os,
            snapshot,
            shutdown,
            restore,
            dump,
            keeper,
            kept,
            restored,
            watched,
        } = parts;
        let mut cluster = cluster;
        cluster.set_keeper(keeper.clone());
        let take_over = adopt::TakeOver::new(kept, &keeper);
        let user = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name);
        Supervisor {
            logs_dir: logs.logs_dir().to_path_buf(),
            logs,
            os,
            apps: BTreeMap::new(),
            instances: BTreeMap::new(),
            by_pid: HashMap::new(),
            next_id: 0,
            pending: Vec::new(),
            timers: Timers::default(),
            draining: BTreeSet::new(),
            outbox: Outbox::default(),
            user,
            snapshot,
            shutdown,
            dirty: true,
            cluster,
            reloads: Vec::new(),
            next_cron_key: 0,
            durable: durable::Durable::new(dump),
            restore,
            keeper,
            take_over,
            handed_over: false,
            retiring: BTreeMap::new(),
            restored,
            watched,
        }
    }

    /// Runs until a `kill` or `handover` command completes or every command sender is gone.
    pub async fn run(mut self, mut inputs: Inputs) -> Ending {
        let logs = self.logs.clone();
        let mut written = self.durable.written();
        let restore = std::mem::take(&mut self.restore);
        self.restore_at_start(restore);
        self.retire_leftovers();
        self.settle();
        if let Some(restored) = self.restored.take() {
            let _ = restored.send(());
        }
        loop {
            let due = self.timers.next();
            tokio::select! {
                biased;
                Some(exit) = inputs.exits.recv() => {
                    self.handle(Input::Exited(exit));
                    for _ in 1..EXIT_BATCH {
                        match inputs.exits.try_recv() {
                            Ok(exit) => self.handle(Input::Exited(exit)),
                            Err(_) => break,
                        }
                    }
                }
                Some(notice) = inputs.notices.recv() => self.handle(Input::Notice(notice)),
                done = durable::next_written(&mut written) => self.handle(Input::Dumped(done)),
                () = logs.drain_ended() => self.handle(Input::DrainEnded),
                samples = limits::next_samples(&mut inputs.samples) => {
                    self.handle(Input::Sampled(samples));
                }
                Some(app) = watching::next_change(&mut inputs.changes) => {
                    self.handle(Input::FilesChanged(app));
                }
                () = timers::sleep_until(due) => {
                    let now = Instant::now();
                    while let Some(key) = self.timers.pop_due(now) {
                        self.handle(Input::Timer(key));
                    }
                }
                cmd = inputs.commands.recv() => match cmd {
                    Some(cmd) => self.handle(Input::Command(cmd)),
                    None => break,
                },
            }
            self.settle();
            if self.shutdown.is_cancelled() && self.pending.is_empty() && !self.durable.waiting() {
                break;
            }
        }
        self.durable.freeze();
        if self.handed_over {
            // Everything is left as it is for the successor (the keeper holds it).
            self.settle();
            self.outbox.release_all();
            return Ending::HandedOver;
        }
        // Whatever is still running when the supervisor ends is stopped now; the dump keeps it.
        self.stop_everything_now();
        self.settle();
        self.outbox.release_all();
        Ending::Stopped
    }

    /// Handles one input to completion (without publishing: see [`Supervisor::settle`]).
    fn handle(&mut self, input: Input) {
        match input {
            Input::Command(cmd) => self.on_command(cmd),
            Input::Exited(exit) => match self.by_pid.remove(&exit.pid) {
                Some(id) => self.on_exit(id, exit.reason),
                None => {
                    debug!(pid = exit.pid.as_raw(), reason = ?exit.reason, "exit of an unknown process")
                }
            },
            Input::Notice(notice) => self.on_notice(notice),
            Input::DrainEnded => self.check_draining(),
            Input::Timer(key) => self.on_timer(key),
            Input::Dumped(written) => self.on_dumped(written),
            Input::Sampled(samples) => self.check_limits(&samples),
            Input::FilesChanged(app) => self.on_files_changed(&app),
        }
    }

    /// The end of every step: continuations, reloads, then publish, then the replies.
    fn settle(&mut self) {
        self.run_pending();
        self.advance_reloads();
        // With no app left, ids start from 0 again, as in PM2 (scripts and log names such as
        // `api-out-0.log` rely on it). Only when nothing waits on an old id.
        if self.instances.is_empty() && self.pending.is_empty() && self.reloads.is_empty() {
            self.next_id = 0;
        }
        self.sync_dump();
        self.cluster.sync_keeper();
        if self.dirty {
            // Apps are started, stopped or changed only in steps that change the snapshot.
            self.sync_watched();
            self.publish();
        }
        match self.durable.unwritten() {
            Some(generation) => self.outbox.hold(generation),
            None => self.outbox.flush(),
        }
    }
}

/// Applies a lifecycle event; logs and refuses an illegal one. Returns whether it was applied.
fn transition(p: &mut Instance, event: Event) -> bool {
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

/// The stdout and stderr files of an instance (see [`crate::logs::paths`]).
fn log_paths(logs_dir: &std::path::Path, spec: &AppSpec, id: u32) -> (PathBuf, PathBuf) {
    let paths = crate::logs::paths(logs_dir, spec, id);
    (paths.out, paths.err)
}
