//! Ecosystem files (TOML, or PM2's JSON, YAML and JavaScript) and `pm2rs start <script>` options,
//! parsed and validated into fully resolved [`AppSpec`]s; and [`convert_ecosystem`], which
//! rewrites a PM2 file as pm2rs TOML.
//!
//! Every problem is reported at once, each with the file, 1-based line:column, the key path (such
//! as `apps[1].instances`) and a message: see [`ConfigErrors`]. Nothing here panics on user input.
//! (A JavaScript file is evaluated to JSON first, so its errors carry the key path but no line.)
//! The keys, their defaults and the PM2 compatibility rules are documented in
//! `docs/configuration.md`.
//!
//! # Layout
//! - `lib.rs`: the public API ([`load_ecosystem`], [`load_ecosystem_stdin`],
//!   [`convert_ecosystem`], [`app_from_script`], [`is_ecosystem_path`] and their options) and
//!   re-exports.
//! - `error`: [`ConfigError`], [`ConfigErrors`], the error collector and byte offset → line:column.
//! - `tree`: the located value tree every input becomes (TOML is converted here).
//! - `json`: PM2 JSON → located tree, with spans for every key and value.
//! - `yaml`: PM2 YAML → located tree (saphyr-parser's events), with spans likewise.
//! - `js`: PM2 JavaScript → JSON, by the machine's `node` in a child process with a deadline
//!   (`js_eval.mjs` is the script it runs).
//! - `ecosystem`: one input (a file or standard input): reading, syntax by name, the `apps`
//!   array, duplicate names, `--env`, `--only`.
//! - `convert`: the located tree of any input → pm2rs TOML with comments.
//! - `script`: command-line options → located tree, validated like a file's app.
//! - `app`: one app: key sorting, typed reading into a draft (the validated intermediate),
//!   defaults, path resolution.
//! - `keys`: the one table of app keys: implemented, PM2 aliases, not supported yet (and which
//!   values of those are harmless); "did you mean" suggestions.
//! - `datefmt`: `log_date_format` (strftime, or PM2's moment.js style translated).
//! - `names`: app names / namespaces and kill signals as validated types.
//! - `units`: durations, sizes, instance counts, and the limits on absurd values.
//! - `shell`: shell-like splitting of `args` strings.
//! - `resolve`: absolute paths, executable checks, `PATH` lookup.
//!
//! # Interpreter in the result
//! [`AppSpec::interpreter`] keeps a bare interpreter name as written (`"node"`; it was checked to
//! be in `PATH`, the app's `env.PATH` if it sets one, else the caller's), so the daemon finds it
//! in the PATH it gives the app. An interpreter written as a path is made absolute (against the
//! app's cwd). [`AppSpec::script`] is always absolute.

mod app;
mod convert;
mod datefmt;
mod ecosystem;
mod error;
mod js;
mod json;
mod keys;
mod names;
mod resolve;
mod script;
mod shell;
mod tree;
mod units;
mod yaml;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{ConfigError, ConfigErrors};
pub use js::DEFAULT_JS_TIMEOUT;
pub use names::MAX_NAME_LEN;
pub use pm2rs_proto::{AppSpec, LogDefaults};
pub use units::{
    LOG_LINE_RANGE, MAX_BACKOFF_MS, MAX_DURATION_MS, MAX_INSTANCES, MAX_LOG_RETAIN,
    MAX_MAX_RESTARTS, MIN_LOG_MAX_SIZE, parse_duration_ms, parse_instances, parse_size_bytes,
};

/// How to load an ecosystem file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// `--env <profile>`: merge each app's `env_<profile>` over its `env`. It is an error when no
    /// app of the file defines that profile.
    pub env_profile: Option<String>,
    /// `--only a,b` (already split): keep only these apps; each must exist in the file. Apps left
    /// out are still checked, except for files on disk (scripts, interpreters, cwd).
    pub only: Vec<String>,
    /// CPU count for `instances = "max"` and negative counts (0 = ask the system).
    pub cpus: u32,
    /// How long `node` may take to evaluate a JavaScript file (`None`: [`DEFAULT_JS_TIMEOUT`]).
    pub js_timeout: Option<Duration>,
}

/// `pm2rs start <script>` options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptOptions {
    /// `--name`; default: the script's file stem.
    pub name: Option<String>,
    /// `-i` / `--instances`: a number, `max` or a negative number.
    pub instances: Option<String>,
    /// Arguments after `--`.
    pub args: Vec<String>,
    /// `--interpreter` (`none` runs the script directly); default: chosen by extension.
    pub interpreter: Option<String>,
    /// `--namespace`; default `default`.
    pub namespace: Option<String>,
    /// `--port`: bind this port in the daemon and share it among the instances (cluster mode).
    pub port: Option<String>,
    /// `--wait-ready`: online only once the app says it is ready.
    pub wait_ready: bool,
    /// `--cron-restart`: restart the app at the times of this cron expression.
    pub cron_restart: Option<String>,
    /// `--watch`: restart the app when a file under its cwd changes.
    pub watch: bool,
    /// The CLI's working directory: the script is resolved against it and the app runs in it
    /// (empty = the process's current directory).
    pub cwd: PathBuf,
    /// CPU count for `-i max` and negative counts (0 = ask the system).
    pub cpus: u32,
}

/// Loads and validates the ecosystem file at `path`: TOML, or by its name PM2 JSON (`.json`),
/// YAML (`.yml`, `.yaml`) or JavaScript (`*.config.js`, `.config.cjs`, `.config.mjs`, evaluated
/// with the `node` found in `PATH`). Returns the apps in file order, or every problem found.
pub fn load_ecosystem(path: &Path, opts: &LoadOptions) -> Result<Vec<AppSpec>, ConfigErrors> {
    ecosystem::load_with(path, opts, std::env::var_os("PATH").as_deref())
}

/// Loads and validates an ecosystem read from standard input (`pm2rs start -`): PM2 JSON when
/// its first non-blank character is `{`, else TOML. Relative paths refer to `cwd`; errors name
/// the input `<stdin>`.
pub fn load_ecosystem_stdin(
    input: Vec<u8>,
    cwd: &Path,
    opts: &LoadOptions,
) -> Result<Vec<AppSpec>, ConfigErrors> {
    stdin_with(input, cwd, opts, std::env::var_os("PATH").as_deref())
}

fn stdin_with(
    input: Vec<u8>,
    cwd: &Path,
    opts: &LoadOptions,
    path_var: Option<&std::ffi::OsStr>,
) -> Result<Vec<AppSpec>, ConfigErrors> {
    let source = ecosystem::read_stdin(input, cwd)?;
    let root = ecosystem::parse(&source)?;
    ecosystem::validate(&source, &root, opts, path_var, true)
}

/// The pm2rs TOML equivalent of the ecosystem file at `path` (any format [`load_ecosystem`]
/// reads), with `#` comments for what was left out or means something else than in PM2. The
/// apps are validated as [`load_ecosystem`] does, except for files on disk; the result loads
/// as the same apps when saved next to the original.
pub fn convert_ecosystem(path: &Path, opts: &LoadOptions) -> Result<String, ConfigErrors> {
    convert::convert_file(path, opts, std::env::var_os("PATH").as_deref())
}

/// Builds and validates the app of `pm2rs start <script> [options] [-- args]`. Errors have no file
/// or line; their key is the flag at fault (e.g. `--instances`), or `script`.
pub fn app_from_script(script: &str, opts: &ScriptOptions) -> Result<AppSpec, ConfigErrors> {
    script::app_from_script_with(script, opts, std::env::var_os("PATH").as_deref())
}

/// Whether `p` names an ecosystem file rather than a script, by the end of its name:
/// `.toml`, `.json` (PM2 style, e.g. `ecosystem.json`, `app.config.json`), `.yml`/`.yaml`, or
/// PM2's JavaScript `.config.js` / `.config.cjs` / `.config.mjs` (`server.js` is a script).
pub fn is_ecosystem_path(p: &Path) -> bool {
    ecosystem::FileKind::of(p).is_some()
}

/// `cpus`, or the system's count when 0.
pub(crate) fn effective_cpus(cpus: u32) -> u32 {
    if cpus > 0 {
        return cpus;
    }
    std::thread::available_parallelism()
        .map_or(1, |n| u32::try_from(n.get()).unwrap_or(MAX_INSTANCES))
}

/// The daemon-wide log settings and the environment variables that set them.
pub mod log_env {
    /// Rotation size of apps that set no `log_max_size`, and of the daemon's own log.
    pub const MAX_SIZE: &str = "PM2RS_LOG_MAX_SIZE";
    /// Rotated files kept when an app sets no `log_retain`.
    pub const RETAIN: &str = "PM2RS_LOG_RETAIN";
    /// Gzip rotated files when an app sets no `log_compress` (`true`/`false`).
    pub const COMPRESS: &str = "PM2RS_LOG_COMPRESS";
    /// Longest line kept whole; longer lines are split (never dropped).
    pub const MAX_LINE: &str = "PM2RS_LOG_MAX_LINE";
}

/// Reads the daemon-wide log settings from `var` (the daemon's environment): unset variables
/// take the defaults (10M, 5 files, no gzip, 1M lines). The error names the variable.
pub fn log_defaults(var: impl Fn(&str) -> Option<String>) -> Result<LogDefaults, String> {
    let mut d = LogDefaults {
        max_size: 10 << 20,
        retain: 5,
        compress: false,
        max_line: 1 << 20,
    };
    let bad = |name: &str, value: &str, why: String| format!("{name}={value:?}: {why}");
    if let Some(v) = var(log_env::MAX_SIZE) {
        let n = parse_size_bytes(&v).map_err(|e| bad(log_env::MAX_SIZE, &v, e))?;
        if n != 0 && n < MIN_LOG_MAX_SIZE {
            let why = format!("must be 0 (never rotate) or at least {MIN_LOG_MAX_SIZE} bytes");
            return Err(bad(log_env::MAX_SIZE, &v, why));
        }
        d.max_size = n;
    }
    if let Some(v) = var(log_env::RETAIN) {
        d.retain = v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| u64::from(*n) <= MAX_LOG_RETAIN)
            .ok_or_else(|| {
                bad(
                    log_env::RETAIN,
                    &v,
                    format!("expected a whole number from 0 to {MAX_LOG_RETAIN}"),
                )
            })?;
    }
    if let Some(v) = var(log_env::COMPRESS) {
        d.compress = match v.trim() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err(bad(log_env::COMPRESS, &v, "expected true or false".into())),
        };
    }
    if let Some(v) = var(log_env::MAX_LINE) {
        let n = parse_size_bytes(&v).map_err(|e| bad(log_env::MAX_LINE, &v, e))?;
        let (lo, hi) = LOG_LINE_RANGE;
        if !(lo..=hi).contains(&n) {
            let why = format!("must be from {}K to {}M", lo >> 10, hi >> 20);
            return Err(bad(log_env::MAX_LINE, &v, why));
        }
        d.max_line = n as usize;
    }
    Ok(d)
}
