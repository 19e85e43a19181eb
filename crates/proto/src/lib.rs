//! The wire contract between the pm2rs daemon and its clients.
//!
//! Everything that crosses the control socket is defined here, once, as typed structs that both sides
//! (de)serialize with serde_json. The daemon serves HTTP/1.1 on `$PM2RS_HOME/pm2rs.sock`; every route
//! lives under [`API_PREFIX`] and is named in [`routes`].
//!
//! # Layout
//! - [`AppSpec`]: one fully resolved app, as the ecosystem parser produces it and the daemon runs it.
//! - [`ProcessInfo`], [`Status`]: what `list` and `describe` show about one instance.
//! - Request structs ([`StartRequest`], [`TargetRequest`], [`TargetsRequest`], [`ScaleRequest`],
//!   [`ReloadRequest`], [`ResetRequest`]) and their replies ([`SaveResponse`] and
//!   [`ResurrectResponse`] for the dump).
//! - [`LogSpec`]: where and how an app's output is written.
//! - [`LogEvent`]: one line of the log stream (`pm2rs logs`), newline-delimited JSON; [`FileEnd`]:
//!   where its batch ends in its file.
//! - [`ApiError`]: the body of every non-2xx reply.
//! - [`unix_micros`]: the clock of every `*_us` field.
//!
//! # Versioning
//! Every request carries [`VERSION_HEADER`] with the client's [`VERSION`]; the daemon answers with its own.
//! A mismatch is refused with `409 Conflict` (except on [`routes::KILL`] and [`routes::PING`], so an old
//! daemon can always be asked for its version and stopped).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The crate version; the CLI and the daemon must agree on it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Header carrying [`VERSION`] on every request and reply.
pub const VERSION_HEADER: &str = "x-pm2rs-version";
/// Prefix of every route.
pub const API_PREFIX: &str = "/v1";
/// File name of the control socket inside `PM2RS_HOME`.
pub const SOCKET_FILE: &str = "pm2rs.sock";
/// File name of the daemon's pid file inside `PM2RS_HOME`.
pub const PID_FILE: &str = "pm2rs.pid";
/// File name of the daemon's own log inside `PM2RS_HOME`.
pub const DAEMON_LOG_FILE: &str = "pm2rs.log";
/// Environment variable that overrides the daemon's home directory.
pub const HOME_ENV: &str = "PM2RS_HOME";

/// Route paths, relative to the host (they already include [`API_PREFIX`]).
pub mod routes {
    /// `GET` → [`crate::PingResponse`].
    pub const PING: &str = "/v1/ping";
    /// `GET` → [`crate::ListResponse`].
    pub const LIST: &str = "/v1/processes";
    /// `POST` [`crate::StartRequest`] → [`crate::StartResponse`].
    pub const START: &str = "/v1/apps/start";
    /// `POST` [`crate::TargetsRequest`] → [`crate::ActionResponse`].
    pub const STOP: &str = "/v1/apps/stop";
    /// `POST` [`crate::TargetsRequest`] → [`crate::ActionResponse`].
    pub const RESTART: &str = "/v1/apps/restart";
    /// `POST` [`crate::TargetsRequest`] → [`crate::ActionResponse`].
    pub const DELETE: &str = "/v1/apps/delete";
    /// `POST` [`crate::ResetRequest`] → [`crate::ActionResponse`]: zeroes the instances'
    /// restart counters (↺ and unstable restarts), as PM2's `reset`.
    pub const RESET: &str = "/v1/apps/reset";
    /// `POST` [`crate::ScaleRequest`] → [`crate::ActionResponse`].
    pub const SCALE: &str = "/v1/apps/scale";
    /// `POST` [`crate::TargetRequest`] → [`crate::DescribeResponse`].
    pub const DESCRIBE: &str = "/v1/apps/describe";
    /// `POST` [`crate::ReloadRequest`] → [`crate::ActionResponse`]; rolling replacement.
    pub const RELOAD: &str = "/v1/apps/reload";
    /// `GET` with [`crate::LogStreamQuery`] → newline-delimited [`crate::LogEvent`]s until the
    /// client goes away or the daemon stops.
    pub const LOG_STREAM: &str = "/v1/logs/stream";
    /// `POST` [`crate::TargetRequest`] → [`crate::FlushResponse`]: empties the target's log files.
    pub const LOG_FLUSH: &str = "/v1/logs/flush";
    /// `POST` (empty body) → [`crate::FlushResponse`]: reopens every log file (after logrotate).
    pub const LOG_RELOAD: &str = "/v1/logs/reload";
    /// `POST` (empty body) → [`crate::ActionResponse`]; stops every app, then the daemon exits.
    /// The dump is left as it was, so `resurrect` brings the apps back.
    pub const KILL: &str = "/v1/kill";
    /// `POST` (empty body) → [`crate::SaveResponse`]: writes the dump now.
    pub const SAVE: &str = "/v1/save";
    /// `POST` (empty body) → [`crate::ResurrectResponse`]: starts the dump's apps the daemon
    /// does not know.
    pub const RESURRECT: &str = "/v1/resurrect";
    /// `POST` (empty body) → [`crate::HandoverResponse`]; the daemon exits leaving every app
    /// running, for a successor (`pm2rs update`) to take them over. Exempt from the version
    /// check, as kill and ping are.
    pub const HANDOVER: &str = "/v1/daemon/handover";
}

/// How an app's instances are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExecMode {
    /// Each instance is a plain child process.
    #[default]
    Fork,
    /// Instances share listening sockets handed over by the daemon.
    Cluster,
}

impl fmt::Display for ExecMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExecMode::Fork => "fork",
            ExecMode::Cluster => "cluster",
        })
    }
}

/// One app, fully resolved: every path absolute, every default applied, every duration in
/// milliseconds. The CLI builds it (from an ecosystem file or the command line) and the daemon runs it
/// without further interpretation.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSpec {
    /// Unique app name: non-empty, no `/`, not `.` or `..`.
    pub name: String,
    /// Group of apps that can be targeted together; `"default"` unless set.
    pub namespace: String,
    /// The program (or, with an interpreter, the script) to run: an absolute path.
    pub script: PathBuf,
    /// Arguments passed after the script.
    pub args: Vec<String>,
    /// Interpreter that runs `script`; `None` runs `script` directly.
    pub interpreter: Option<String>,
    /// Arguments passed to the interpreter before the script.
    pub interpreter_args: Vec<String>,
    /// Working directory (absolute).
    pub cwd: PathBuf,
    /// Variables set for every instance, over the daemon's own environment.
    pub env: BTreeMap<String, String>,
    /// Number of instances (at least 1).
    pub instances: u32,
    /// Fork or cluster.
    pub exec_mode: ExecMode,
    /// Restart an instance when it exits.
    pub autorestart: bool,
    /// Consecutive unstable runs after which the instance is `errored`.
    pub max_restarts: u32,
    /// A run shorter than this is unstable.
    pub min_uptime_ms: u64,
    /// Fixed delay before a restart.
    pub restart_delay_ms: u64,
    /// Initial delay of the exponential backoff; `None` = fixed `restart_delay_ms`.
    pub exp_backoff_restart_delay_ms: Option<u64>,
    /// Exit codes that mean "done, do not restart".
    pub stop_exit_codes: Vec<i32>,
    /// Signal sent to the process group on stop, e.g. `"SIGINT"`.
    pub kill_signal: String,
    /// Time between `kill_signal` and SIGKILL.
    pub kill_timeout_ms: u64,
    /// The ecosystem file this app came from, if any.
    pub source: Option<PathBuf>,
    /// Addresses the daemon binds and hands to every instance (cluster mode; `port = N` is
    /// `0.0.0.0:N`). Empty: nothing is handed over.
    pub listen: Vec<SocketAddr>,
    /// One listening socket per instance slot, or one shared by all.
    pub cluster_socket: ClusterSocket,
    /// Variable carrying the instance index (PM2's `instance_var`, default `NODE_APP_INSTANCE`).
    pub instance_var: String,
    /// Variable whose value (a number, from `env` or else `PORT`) is raised by the instance
    /// index, PM2's `increment_var`.
    pub increment_var: Option<String>,
    /// Online only on `READY=1` (sd_notify) or Node's `process.send('ready')`.
    pub wait_ready: bool,
    /// How long an instance may stay `launching` before it is taken as ready (or, in a reload,
    /// as failed).
    pub listen_timeout_ms: u64,
    /// An online instance that does not send `WATCHDOG=1` this often is restarted.
    pub watchdog_timeout_ms: Option<u64>,
    /// Restart the running instances at the times of this cron expression (5 fields, or 6 with
    /// seconds first; the system's time zone), PM2's `cron_restart`.
    #[serde(default)]
    pub cron_restart: Option<String>,
    /// Where and how the app's output is written.
    pub logs: LogSpec,
    /// The `--env <profile>` the app was started with (its `env_<profile>` is already merged into
    /// `env`), shown by `describe` and kept in the dump.
    #[serde(default)]
    pub env_profile: Option<String>,
    /// An instance whose process group's resident memory exceeds this many bytes is restarted
    /// gracefully (PM2's `max_memory_restart`).
    #[serde(default)]
    pub max_memory_restart: Option<u64>,
    /// Files and directories (absolute, watched recursively) whose changes restart the app;
    /// empty: not watched.
    #[serde(default)]
    pub watch: Vec<PathBuf>,
    /// Globs of paths under `watch` whose changes are ignored (beside `node_modules` and `.git`,
    /// always ignored), matched against the path relative to the watched root and each of its
    /// components.
    #[serde(default)]
    pub ignore_watch: Vec<String>,
    /// Quiet time after the last change before the restart: a burst restarts once.
    #[serde(default = "defaults::watch_delay_ms")]
    pub watch_delay_ms: u64,
}

/// How cluster-mode listening sockets are shared among instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterSocket {
    /// One SO_REUSEPORT socket per instance slot: the kernel balances connections evenly.
    Reuseport,
    /// One socket shared by every instance: whoever accepts first gets the connection.
    Shared,
}

/// How an app's output is captured: files, line format, rotation. Paths are absolute; `None`
/// means the daemon's choice (default file names under `$PM2RS_HOME/logs`, daemon-wide rotation
/// defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSpec {
    /// Stdout file (`/dev/null` discards); `None` = `<logs>/<name>-out.log`.
    pub out_file: Option<PathBuf>,
    /// Stderr file; `None` = `<logs>/<name>-error.log`.
    pub error_file: Option<PathBuf>,
    /// A third file receiving stdout and stderr together, if set.
    pub log_file: Option<PathBuf>,
    /// With several instances, all of them write to the same files (else one file per instance).
    pub merge_logs: bool,
    /// Prefix every line with a timestamp.
    pub time: bool,
    /// strftime format of that timestamp; `None` = RFC 3339 with milliseconds.
    pub date_format: Option<String>,
    /// Write one JSON object per line instead of the raw line.
    pub json: bool,
    /// Rotate a file when it would grow past this many bytes (0 = never); `None` = daemon default.
    pub max_size: Option<u64>,
    /// Rotated files kept per log file; `None` = daemon default.
    pub retain: Option<u32>,
    /// Gzip rotated files; `None` = daemon default.
    pub compress: Option<bool>,
}

/// PM2's defaults for the settings an ecosystem file may leave out.
pub mod defaults {
    pub const NAMESPACE: &str = "default";
    pub const INSTANCES: u32 = 1;
    pub const AUTORESTART: bool = true;
    pub const MAX_RESTARTS: u32 = 16;
    pub const MIN_UPTIME_MS: u64 = 1000;
    pub const RESTART_DELAY_MS: u64 = 0;
    /// `watch_delay`: a burst of file changes restarts once, this long after its last change.
    pub const WATCH_DELAY_MS: u64 = 1000;
    /// Paths never watched: dependencies and version control (as PM2 ignores them).
    pub const IGNORE_WATCH: [&str; 2] = ["node_modules", ".git"];

    /// [`WATCH_DELAY_MS`], for serde defaults.
    pub fn watch_delay_ms() -> u64 {
        WATCH_DELAY_MS
    }
    pub const KILL_SIGNAL: &str = "SIGINT";
    pub const KILL_TIMEOUT_MS: u64 = 1600;
    pub const LISTEN_TIMEOUT_MS: u64 = 3000;
    pub const INSTANCE_VAR: &str = "NODE_APP_INSTANCE";
}

impl AppSpec {
    /// An app that runs `script` directly (no interpreter) in `cwd`, with every other setting at
    /// its [`defaults`]: fork mode, one instance, no environment of its own, default log files.
    pub fn new(
        name: impl Into<String>,
        script: impl Into<PathBuf>,
        cwd: impl Into<PathBuf>,
    ) -> AppSpec {
        AppSpec {
            name: name.into(),
            namespace: defaults::NAMESPACE.into(),
            script: script.into(),
            args: vec![],
            interpreter: None,
            interpreter_args: vec![],
            cwd: cwd.into(),
            env: BTreeMap::new(),
            instances: defaults::INSTANCES,
            exec_mode: ExecMode::Fork,
            autorestart: defaults::AUTORESTART,
            max_restarts: defaults::MAX_RESTARTS,
            min_uptime_ms: defaults::MIN_UPTIME_MS,
            restart_delay_ms: defaults::RESTART_DELAY_MS,
            exp_backoff_restart_delay_ms: None,
            stop_exit_codes: vec![],
            kill_signal: defaults::KILL_SIGNAL.into(),
            kill_timeout_ms: defaults::KILL_TIMEOUT_MS,
            source: None,
            listen: vec![],
            cluster_socket: ClusterSocket::Reuseport,
            instance_var: defaults::INSTANCE_VAR.into(),
            increment_var: None,
            wait_ready: false,
            listen_timeout_ms: defaults::LISTEN_TIMEOUT_MS,
            watchdog_timeout_ms: None,
            cron_restart: None,
            logs: LogSpec::unset(),
            env_profile: None,
            max_memory_restart: None,
            watch: vec![],
            ignore_watch: vec![],
            watch_delay_ms: defaults::WATCH_DELAY_MS,
        }
    }
}

impl fmt::Debug for AppSpec {
    /// Hand-written so that env values (which may be secrets) never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSpec")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("script", &self.script)
            .field("args", &self.args)
            .field("interpreter", &self.interpreter)
            .field("interpreter_args", &self.interpreter_args)
            .field("cwd", &self.cwd)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("instances", &self.instances)
            .field("exec_mode", &self.exec_mode)
            .field("autorestart", &self.autorestart)
            .field("max_restarts", &self.max_restarts)
            .field("min_uptime_ms", &self.min_uptime_ms)
            .field("restart_delay_ms", &self.restart_delay_ms)
            .field(
                "exp_backoff_restart_delay_ms",
                &self.exp_backoff_restart_delay_ms,
            )
            .field("stop_exit_codes", &self.stop_exit_codes)
            .field("kill_signal", &self.kill_signal)
            .field("kill_timeout_ms", &self.kill_timeout_ms)
            .field("source", &self.source)
            .field("listen", &self.listen)
            .field("cluster_socket", &self.cluster_socket)
            .field("instance_var", &self.instance_var)
            .field("increment_var", &self.increment_var)
            .field("wait_ready", &self.wait_ready)
            .field("max_memory_restart", &self.max_memory_restart)
            .field("watch", &self.watch)
            .field("ignore_watch", &self.ignore_watch)
            .field("watch_delay_ms", &self.watch_delay_ms)
            .field("listen_timeout_ms", &self.listen_timeout_ms)
            .field("watchdog_timeout_ms", &self.watchdog_timeout_ms)
            .field("cron_restart", &self.cron_restart)
            .field("logs", &self.logs)
            .field("env_profile", &self.env_profile)
            .finish()
    }
}

impl LogSpec {
    /// Nothing set: default file names, raw lines, the daemon's rotation defaults.
    pub fn unset() -> LogSpec {
        LogSpec {
            out_file: None,
            error_file: None,
            log_file: None,
            merge_logs: false,
            time: false,
            date_format: None,
            json: false,
            max_size: None,
            retain: None,
            compress: None,
        }
    }
}

/// Daemon-wide log settings: the rotation defaults of apps that set none, the daemon's own log's
/// rotation, and the longest line kept whole. Read from the daemon's environment when it starts
/// (see `pm2rs_config::log_defaults`); never sent on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogDefaults {
    /// Rotate at this size (0 = never).
    pub max_size: u64,
    /// Rotated files kept.
    pub retain: u32,
    /// Gzip rotated files.
    pub compress: bool,
    /// A line longer than this is split into pieces of this size.
    pub max_line: usize,
}

/// Lifecycle status of one instance. The allowed moves between them are a table in the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Spawned, not yet ready.
    Launching,
    /// Running and ready.
    Online,
    /// Stop signal sent, waiting for the process group to exit.
    Stopping,
    /// Not running, by request or by policy.
    Stopped,
    /// Exited; a restart is scheduled after a delay.
    WaitingRestart,
    /// Gave up after too many unstable restarts (or could not be spawned).
    Errored,
}

impl Status {
    /// Human text as shown in tables, e.g. `waiting restart`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Launching => "launching",
            Status::Online => "online",
            Status::Stopping => "stopping",
            Status::Stopped => "stopped",
            Status::WaitingRestart => "waiting restart",
            Status::Errored => "errored",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One managed instance as seen by `list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Unique id of this instance (never reused while the daemon lives).
    pub id: u32,
    /// App name.
    pub name: String,
    /// App namespace.
    pub namespace: String,
    /// Index of the instance within its app (0-based; the value of `NODE_APP_INSTANCE`).
    pub instance: u32,
    /// Fork or cluster.
    pub exec_mode: ExecMode,
    /// Pid of the running process, if any.
    pub pid: Option<u32>,
    /// Lifecycle status.
    pub status: Status,
    /// Restarts since the instance was created (PM2's ↺).
    pub restarts: u32,
    /// Consecutive unstable runs (reset by a stable run).
    pub unstable_restarts: u32,
    /// When the current run started (Unix time, microseconds), if running.
    pub started_at_us: Option<u64>,
    /// CPU use in percent of one core, last sample, of the instance's whole process group.
    pub cpu_percent: Option<f32>,
    /// Resident memory in bytes, last sample, of the instance's whole process group.
    pub memory_bytes: Option<u64>,
    /// The group leader's own CPU use (the process the daemon started), last sample.
    #[serde(default)]
    pub leader_cpu_percent: Option<f32>,
    /// The group leader's own resident memory, last sample.
    #[serde(default)]
    pub leader_memory_bytes: Option<u64>,
    /// Processes in the group at the last sample, the leader included.
    #[serde(default)]
    pub group_processes: Option<u32>,
    /// Why the daemon restarted this instance last, when it did so by itself for a limit, e.g.
    /// `memory 162M over limit 150M`; cleared by any other start.
    #[serde(default)]
    pub restart_reason: Option<String>,
    /// User the process runs as.
    pub user: Option<String>,
    /// Why the instance is errored or stopped by policy, if it is.
    pub reason: Option<String>,
    /// How the last run ended, e.g. `exit code 1` or `signal SIGKILL`.
    pub last_exit: Option<String>,
    /// The last `STATUS=` the running process sent over NOTIFY_SOCKET, if any.
    pub notify_status: Option<String>,
}

/// `GET /v1/ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResponse {
    /// Daemon version.
    pub version: String,
    /// Daemon pid.
    pub pid: u32,
    /// The daemon's home directory.
    pub home: PathBuf,
    /// Daemon uptime in milliseconds.
    pub uptime_ms: u64,
    /// Problems the user should know of, e.g. a corrupt dump set aside or a dump that cannot
    /// be written.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The fd keeper's pid while it holds the apps' pipes and sockets, so they outlive the
    /// daemon; `None`: the apps would end with the daemon.
    #[serde(default)]
    pub keeper_pid: Option<u32>,
}

/// `GET /v1/processes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListResponse {
    /// Every instance, ordered by id.
    pub processes: Vec<ProcessInfo>,
}

/// `POST /v1/apps/start`: start (or apply changes to) these apps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRequest {
    /// Apps to start; an app already known by name is updated: restarted if its spec changed,
    /// started if stopped, left alone otherwise.
    pub apps: Vec<AppSpec>,
}

/// What `start` did with each app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartResponse {
    /// Apps that did not exist and were started.
    pub started: Vec<String>,
    /// Apps whose spec changed and were restarted with it.
    pub updated: Vec<String>,
    /// Apps that were stopped or errored and were started again (and, when the CLI's
    /// `start <known app>` builds this reply, running ones it restarted).
    pub restarted: Vec<String>,
    /// Apps that were already running with the same spec.
    pub unchanged: Vec<String>,
    /// Every instance of the apps named in the request, after the change.
    pub processes: Vec<ProcessInfo>,
}

/// A request naming a target: `all`, an instance id, an app name, or a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRequest {
    /// The target as the user typed it.
    pub target: String,
}

/// `POST /v1/apps/stop`, `restart`, `delete`: act on several targets at once. Every target must
/// match something, or nothing is done (the error names each one that matched nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetsRequest {
    /// The targets as the user typed them (each `all`, an id, an app name or a namespace); an
    /// instance matched by several is acted on once.
    pub targets: Vec<String>,
}

/// `POST /v1/apps/reset`: zero the restart counters of the target's instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetRequest {
    /// The target as the user typed it.
    pub target: String,
}

/// `POST /v1/apps/reload`: replace the target's instances one batch at a time, each new instance
/// ready before its old one is stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadRequest {
    /// The target as the user typed it.
    pub target: String,
    /// Instances replaced at the same time (at least 1).
    pub parallel: u32,
}

/// How to change an app's instance count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleTo {
    /// Exactly this many (at least 1).
    Exactly(u32),
    /// This many more (positive) or fewer (negative).
    Delta(i64),
}

/// `POST /v1/apps/scale`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleRequest {
    /// App name.
    pub name: String,
    /// New count.
    pub to: ScaleTo,
}

/// Reply of stop, restart, delete, reset, scale and kill: the instances affected, after the action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionResponse {
    /// Affected instances in their new state (empty for delete and kill).
    pub processes: Vec<ProcessInfo>,
    /// Ids of the instances that were acted on.
    pub ids: Vec<u32>,
}

/// Reply of handover: the daemon is about to exit, its apps left running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoverResponse {
    /// Instances left running for the successor.
    pub running: usize,
    /// Whether the daemon runs under a service manager (systemd) that starts the successor:
    /// the client then waits for it rather than starting one.
    #[serde(default)]
    pub service_manager: bool,
}

/// `POST /v1/apps/describe`: everything known about the matching instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DescribeResponse {
    /// One entry per matching instance.
    pub processes: Vec<Described>,
    /// The daemon's warnings (as in [`PingResponse`]).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// Reply of `POST /v1/save`: the dump was written now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaveResponse {
    /// The dump file.
    pub path: PathBuf,
    /// How many apps it holds.
    pub apps: usize,
}

/// Reply of `POST /v1/resurrect`: what was done with each app of the dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResurrectResponse {
    /// The dump file read.
    pub path: PathBuf,
    /// Apps started from the dump.
    #[serde(default)]
    pub started: Vec<String>,
    /// Apps the dump has as stopped: registered, not started.
    #[serde(default)]
    pub stopped: Vec<String>,
    /// Apps the daemon already knew: left alone.
    #[serde(default)]
    pub known: Vec<String>,
    /// Problems met reading the dump (a corrupt file set aside, an older version used).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One instance with the spec of its app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Described {
    /// The instance.
    pub process: ProcessInfo,
    /// The app it belongs to.
    pub spec: AppSpec,
    /// Where its stdout goes.
    pub out_log: PathBuf,
    /// Where its stderr goes.
    pub err_log: PathBuf,
    /// Where stdout and stderr go together, if the app sets `log_file`.
    #[serde(default)]
    pub combined_log: Option<PathBuf>,
    /// Current problems writing its logs (a full disk, a file that cannot be opened), if any.
    #[serde(default)]
    pub log_problems: Vec<String>,
    /// The rotation its files get: the app's own settings over the daemon's defaults (`None`
    /// from a daemon that did not say). Which values are the app's: those `spec.logs` sets.
    #[serde(default)]
    pub log_rotation: Option<LogRotation>,
    /// When the app's `cron_restart` next restarts it (Unix time, microseconds); `None` when it
    /// has none, or while it is off (the app is stopped).
    #[serde(default)]
    pub cron_next_us: Option<u64>,
}

/// How a log file is rotated, every value resolved (the app's, else the daemon's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRotation {
    /// Rotate before the file would exceed this many bytes; 0 = never.
    pub max_size: u64,
    /// Rotated files kept.
    pub retain: u32,
    /// Gzip rotated files.
    pub compress: bool,
}

/// Which output of a process a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Standard output.
    Out,
    /// Standard error.
    Err,
}

/// Query of `GET /v1/logs/stream`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStreamQuery {
    /// `all`, an instance id, an app name or a namespace; apps started later match too.
    pub target: String,
    /// Include stdout lines.
    pub out: bool,
    /// Include stderr lines.
    pub err: bool,
}

/// One event of the log stream: one line of newline-delimited JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogEvent {
    /// A line an instance wrote (invalid UTF-8 replaced by U+FFFD; the file keeps the bytes).
    Line {
        /// Instance id.
        id: u32,
        /// App name.
        name: String,
        /// Which output.
        stream: LogStream,
        /// The line, without its newline.
        line: String,
        /// When the daemon read it (Unix time, microseconds).
        at_us: u64,
        /// Where the batch of lines carrying this one ends in the stream's own log file, once
        /// written there; absent for a file that is not a regular file (`/dev/null`, a FIFO).
        /// A follower that read a file's tail up to some offset skips the lines whose batch
        /// ended at or before it: they were in that tail.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file_end: Option<FileEnd>,
    },
    /// This follower fell behind and `lines` lines were skipped (the files have them all).
    Skipped {
        /// How many lines (at least) were not sent.
        lines: u64,
    },
}

/// Now as Unix time in microseconds, the unit of every `*_us` field here (0 if the clock is set
/// before 1970).
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A position in a log file: the file (device and inode, so a rotation gives a new one) and a
/// byte offset into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEnd {
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
}

/// Reply of log flush and reload: the files acted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushResponse {
    /// The log files emptied or reopened.
    pub files: Vec<PathBuf>,
}

/// Machine-readable error kinds, so the CLI can pick an exit code and a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request was malformed or named nothing (exit code 2).
    BadRequest,
    /// The target matched no app (exit code 1).
    NotFound,
    /// CLI and daemon versions differ.
    VersionMismatch,
    /// The operation failed (exit code 1).
    Failed,
    /// The daemon is shutting down.
    ShuttingDown,
}

/// Body of every non-2xx reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What kind of error.
    pub kind: ErrorKind,
    /// A sentence for humans, with the next step where there is one.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_serializes_as_snake_case_and_displays_with_space() {
        let json = serde_json::to_string(&Status::WaitingRestart).unwrap();
        assert_eq!(json, "\"waiting_restart\"");
        assert_eq!(Status::WaitingRestart.to_string(), "waiting restart");
    }

    #[test]
    fn debug_of_spec_hides_env_values() {
        let spec = AppSpec {
            env: BTreeMap::from([("TOKEN".to_string(), "s3cret".to_string())]),
            ..AppSpec::new("api", "/bin/true", "/")
        };
        let text = format!("{spec:?}");
        assert!(text.contains("TOKEN"));
        assert!(!text.contains("s3cret"));
    }
}
