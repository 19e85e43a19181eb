//! The `pm2rs` executable: a thin client of the daemon, and (`pm2rs daemon`) the daemon itself.
//!
//! # Layout
//! - `main.rs`: the command line (clap), dispatch, and the mapping of errors to exit codes
//!   (0 ok, 1 operation failed, 2 usage or config error; a closed stdout pipe is success).
//! - [`client`]: HTTP over the Unix socket, starting the daemon on first use, version check.
//! - [`commands`]: one function per command: build the request, print the reply.
//! - [`render`]: tables and describe output for humans (pure functions).
//! - [`logs`]: `logs` (tail of the files, then the daemon's live stream), `flush`, `reload-logs`.
//! - [`startup`]: `startup` / `unstartup`, the boot-time service (systemd, launchd, OpenRC).

mod client;
mod commands;
mod logs;
mod render;
mod startup;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use pm2rs_proto::ErrorKind;

/// PM2-style process manager for apps in any language.
#[derive(Debug, Parser)]
#[command(name = "pm2rs", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

/// Exit code of a daemon that handed its apps over to a successor (`pm2rs update`).
pub const HANDED_OVER: u8 = 75;

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Start apps from an ecosystem file (.toml, or PM2's .json, .yml, *.config.js), from
    /// standard input (`-`), or one script.
    Start(StartArgs),
    /// Stop apps: one or more names, ids, namespaces or `all`, or an ecosystem file's apps.
    Stop(TargetsArgs),
    /// Stop then start apps again (several targets, or an ecosystem file whose changed settings
    /// are applied and whose apps not running are started).
    Restart {
        #[command(flatten)]
        targets: TargetsArgs,
        /// Accepted with an ecosystem file, whose env is always applied (as PM2 does).
        #[arg(long)]
        update_env: bool,
    },
    /// Replace instances without downtime: start a new one, wait until it is ready, then stop
    /// the old one gracefully; one instance at a time unless --parallel. With an ecosystem file,
    /// its apps: changed ones are restarted with their new settings, missing ones started.
    Reload {
        /// App name, id, namespace, `all`, or an ecosystem file.
        target: String,
        #[command(flatten)]
        file: FileArgs,
        /// Accepted with an ecosystem file, whose env is always applied (as PM2 does).
        #[arg(long)]
        update_env: bool,
        /// How many instances to replace at the same time.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
        parallel: u32,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Stop apps and forget them (several targets, or an ecosystem file's apps).
    #[command(alias = "del")]
    Delete(TargetsArgs),
    /// Zero the restart counters (↺ and unstable restarts) of the matching instances.
    Reset(TargetArgs),
    /// Change an app's instance count: N, +N or -N.
    Scale {
        /// App name.
        name: String,
        /// New count: `4`, `+2` or `-1`.
        #[arg(allow_hyphen_values = true)]
        count: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// List every managed instance.
    #[command(visible_alias = "ls", alias = "ps", alias = "status")]
    List(OutputArgs),
    /// List every managed instance as JSON (same as `list --json`).
    Jlist,
    /// Show everything about the matching instances.
    #[command(alias = "desc", alias = "show", alias = "info")]
    Describe(TargetArgs),
    /// Print the last lines of the matching apps' logs, then follow new lines.
    #[command(alias = "log")]
    Logs(LogsArgs),
    /// Empty the log files of the matching apps (default: all) and remove their rotated files.
    Flush {
        /// App name, id, namespace, or `all`.
        #[arg(default_value = "all")]
        target: String,
    },
    /// Reopen every log file (after an external logrotate moved them); SIGUSR2 does the same.
    ReloadLogs,
    /// Print the pm2rs TOML equivalent of an ecosystem file (PM2's *.config.js, .json, .yml),
    /// with comments for what is left out or means something else.
    Convert {
        /// The ecosystem file.
        file: std::path::PathBuf,
    },
    /// Check that the daemon answers (starting it if needed).
    Ping,
    /// Stop every app, then the daemon (the dump keeps them: `resurrect` brings them back).
    Kill,
    /// Write the dump now. It is kept current on every change anyway; `save` only forces it.
    Save,
    /// Start the apps of the dump that the daemon does not know yet (stopped ones stay stopped).
    Resurrect,
    /// Replace the running daemon with this pm2rs binary (after installing a new version):
    /// every app keeps running, same pids, no line of output lost.
    Update,
    /// Run the daemon in the foreground (what a service unit or container runs).
    Daemon {
        /// Used by the CLI when it starts the daemon in the background.
        #[arg(long, hide = true)]
        detached: bool,
        /// Start the apps of the dump (what the boot unit runs); otherwise start with none.
        #[arg(long)]
        resurrect: bool,
    },
    /// Print a boot-time service that runs `pm2rs daemon --resurrect` for this home (for this
    /// machine's init unless one is named); `--install` writes it.
    Startup(startup::StartupArgs),
    /// Remove the boot-time service `startup --install` wrote.
    Unstartup(startup::UnstartupArgs),
    /// The fd keeper the daemon starts: holds the apps' pipes and sockets across a daemon crash
    /// or update (internal).
    #[command(hide = true)]
    Keeper,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// An ecosystem file (.toml, .json, .yml/.yaml, *.config.js/.cjs/.mjs), `-` for an
    /// ecosystem on standard input (TOML, or JSON when it starts with `{`), or a script or
    /// program to run.
    pub what: String,
    /// App name (script mode; default: the script's file name without extension).
    #[arg(long)]
    pub name: Option<String>,
    /// Number of instances: N, `max`, or -N for "cores minus N" (script mode).
    #[arg(short = 'i', long = "instances", allow_hyphen_values = true)]
    pub instances: Option<String>,
    /// Interpreter for the script (`none` runs it directly).
    #[arg(long)]
    pub interpreter: Option<String>,
    /// Namespace of the app (script mode).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Port the daemon binds and shares among the instances (script mode; implies cluster mode).
    #[arg(long)]
    pub port: Option<String>,
    /// Online only once the app says it is ready: `READY=1` on NOTIFY_SOCKET or Node's
    /// `process.send('ready')` (script mode).
    #[arg(long)]
    pub wait_ready: bool,
    /// Restart the app at the times of this cron expression, e.g. "0 3 * * *" (5 fields, or 6
    /// with seconds first; script mode).
    #[arg(short = 'c', long = "cron-restart", visible_alias = "cron")]
    pub cron_restart: Option<String>,
    /// Restart the app when a file under the current directory changes (script mode;
    /// node_modules and .git ignored).
    #[arg(long)]
    pub watch: bool,
    /// Only start these apps of the ecosystem file (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Merge `env_<profile>` over `env` (ecosystem file mode).
    #[arg(long = "env")]
    pub env_profile: Option<String>,
    #[command(flatten)]
    pub out: OutputArgs,
    /// Arguments passed to the script (after `--`).
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// App name, id, namespace, or `all`.
    pub target: String,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct TargetsArgs {
    /// App names, ids, namespaces or `all` (an instance matched twice is acted on once), or one
    /// ecosystem file (.toml, .json, .yml/.yaml, *.config.js).
    #[arg(required = true)]
    pub targets: Vec<String>,
    #[command(flatten)]
    pub file: FileArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// Options that apply when the target is an ecosystem file.
#[derive(Debug, Args, Clone)]
pub struct FileArgs {
    /// Only these apps of the ecosystem file (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Merge `env_<profile>` over `env` (ecosystem file).
    #[arg(long = "env")]
    pub env_profile: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// App name, id, namespace, or `all`.
    #[arg(default_value = "all")]
    pub target: String,
    /// How many of the last lines of each file to print first.
    #[arg(long, default_value_t = 15)]
    pub lines: usize,
    /// Only stdout.
    #[arg(long)]
    pub out: bool,
    /// Only stderr.
    #[arg(long)]
    pub err: bool,
    /// Print lines without the `id|name|` prefix (and without colour).
    #[arg(long)]
    pub raw: bool,
    /// Print one JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Prefix each line with the time it is printed.
    #[arg(long)]
    pub timestamp: bool,
    /// Print the last lines and exit instead of following.
    #[arg(long)]
    pub nostream: bool,
}

#[derive(Debug, Args, Clone, Copy)]
pub struct OutputArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A usage or configuration error: exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Keeper = cli.command {
        return match client::home_dir().and_then(|home| pm2rs_daemon::keeper::run(&home)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    if let Cmd::Daemon {
        detached,
        resurrect,
    } = cli.command
    {
        let home = match client::home_dir() {
            Ok(h) => h,
            Err(e) => return fail(&e),
        };
        let log_defaults = match pm2rs_config::log_defaults(|k| std::env::var(k).ok()) {
            Ok(d) => d,
            Err(e) => return fail(&UsageError(e).into()),
        };
        return match pm2rs_daemon::run_daemon(pm2rs_daemon::DaemonOptions {
            home,
            detached,
            log_defaults,
            resurrect,
        }) {
            Ok(pm2rs_daemon::Ending::Stopped) => ExitCode::SUCCESS,
            // EX_TEMPFAIL: a service manager (Restart=on-failure) starts the successor.
            Ok(pm2rs_daemon::Ending::HandedOver) => ExitCode::from(HANDED_OVER),
            Err(e) => fail(&e),
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e.into()),
    };
    match runtime.block_on(commands::run(cli.command)) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

/// Prints an error and picks the exit code; a closed stdout (`pm2rs list | head -1`) is success.
fn fail(err: &anyhow::Error) -> ExitCode {
    if let Some(closed) = err.downcast_ref::<commands::StdoutClosed>() {
        return if closed.0.kind() == std::io::ErrorKind::BrokenPipe {
            ExitCode::SUCCESS
        } else {
            // Not a reader going away (e.g. a full disk): say so where it can still be seen.
            eprintln!("pm2rs: {closed}");
            ExitCode::FAILURE
        };
    }
    let code = if err.downcast_ref::<UsageError>().is_some()
        || err.downcast_ref::<pm2rs_config::ConfigErrors>().is_some()
    {
        2
    } else if let Some(d) = err.downcast_ref::<client::DaemonError>() {
        match d.0.kind {
            ErrorKind::BadRequest => 2,
            _ => 1,
        }
    } else {
        1
    };
    if err.downcast_ref::<pm2rs_config::ConfigErrors>().is_some() {
        eprintln!("pm2rs: the configuration has errors; nothing was changed:\n{err}");
    } else {
        eprintln!("pm2rs: {err:#}");
    }
    ExitCode::from(code)
}
