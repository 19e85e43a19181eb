//! Validation of one app: a table of the located tree (from a file or built from the command line)
//! becomes an [`AppSpec`], or errors in the [`Diag`]. This is the one code path every app goes
//! through.
//!
//! Three steps: [`sort_keys`] maps each key to a [`Field`] (refusing unknown and not-yet-supported
//! keys); [`Draft::read`] type-checks every value into a [`Draft`] (the validated intermediate:
//! typed values, still unresolved paths); [`Draft::resolve`] applies defaults, makes paths absolute
//! and checks the file system.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use pm2rs_proto::{AppSpec, ClusterSocket, ExecMode, LogSpec, defaults};

use crate::error::{Diag, Loc};
use crate::keys::{self, ENV_PROFILE_PREFIX, Field, Kind};
use crate::names::{Ident, KillSignal};
use crate::resolve::{absolute, find_in_path, is_bare, is_executable};
use crate::shell::split_words;
use crate::tree::{Entry, Format, Node, Value};
use crate::units::{
    MAX_BACKOFF_MS, MAX_DURATION_MS, MAX_LOG_RETAIN, MAX_MAX_RESTARTS, MIN_LOG_MAX_SIZE,
    MIN_MEMORY_LIMIT, instances_from_int, parse_duration_ms, parse_instances, parse_size_bytes,
};

/// Interpreter chosen by script extension when `interpreter` is not set.
pub(crate) const DEFAULT_INTERPRETERS: &[(&str, &str)] = &[
    ("js", "node"),
    ("cjs", "node"),
    ("mjs", "node"),
    ("py", "python3"),
    ("sh", "bash"),
    ("rb", "ruby"),
];

/// What validation of one app needs to know about its surroundings.
#[derive(Debug, Clone)]
pub(crate) struct Ctx<'a> {
    /// Only for naming types in messages.
    pub(crate) format: Format,
    /// Absolute directory that relative `cwd`s (and the default cwd) refer to.
    pub(crate) base_dir: &'a Path,
    /// CPU count for `instances = "max"` and negative counts.
    pub(crate) cpus: u32,
    /// `--env <profile>`.
    pub(crate) profile: Option<&'a str>,
    /// Absolute path of the ecosystem file.
    pub(crate) source: Option<&'a Path>,
    /// `PATH` for program lookups when the app's env does not set one.
    pub(crate) path_var: Option<&'a OsStr>,
    /// Check the file system (scripts, interpreters, cwd); off for apps `--only` leaves out.
    pub(crate) check_files: bool,
}

/// A valid app and where its name was written (for duplicate-name messages).
#[derive(Debug)]
pub(crate) struct CheckedApp {
    pub(crate) spec: AppSpec,
    pub(crate) name_loc: Loc,
}

/// Validates the app table `node` found at key path `path` (e.g. `apps[0]`). Returns `None` when
/// any error was reported for it.
pub(crate) fn check_app(
    node: &Node,
    path: &str,
    ctx: &Ctx<'_>,
    diag: &mut Diag,
) -> Option<CheckedApp> {
    let before = diag.count();
    let Value::Table(entries) = &node.value else {
        diag.error(
            &node.loc,
            path,
            format!(
                "expected an app ({}), got {}",
                Value::Table(vec![]).type_name(ctx.format),
                node.value.type_name(ctx.format)
            ),
        );
        return None;
    };
    let keys = sort_keys(entries, path, diag);
    let draft = Draft::read(&keys, node, path, ctx, diag);
    let checked = draft.resolve(ctx, diag);
    if diag.count() == before {
        checked
    } else {
        None
    }
}

/// Where a key path goes below `path`.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// An app table's keys, sorted by meaning.
struct SortedKeys<'n> {
    fields: BTreeMap<Field, &'n Entry>,
    /// `env_<profile>` tables, by profile.
    profiles: Vec<(&'n str, &'n Entry)>,
}

/// Maps keys to fields; refuses unknown keys (with a suggestion), duplicates through aliases and
/// not-yet-supported keys whose value is not a no-op. `null` values count as absent.
fn sort_keys<'n>(entries: &'n [Entry], path: &str, diag: &mut Diag) -> SortedKeys<'n> {
    let mut sorted = SortedKeys {
        fields: BTreeMap::new(),
        profiles: Vec::new(),
    };
    for entry in entries {
        if matches!(entry.node.value, Value::Null) {
            continue;
        }
        let key = entry.key.as_str();
        let key_path = join(path, key);
        if let Some(profile) = key
            .strip_prefix(ENV_PROFILE_PREFIX)
            .filter(|p| !p.is_empty())
        {
            sorted.profiles.push((profile, entry));
            continue;
        }
        match keys::lookup(key) {
            Some(Kind::Field(field)) => {
                if let Some(first) = sorted.fields.get(&field) {
                    diag.error(
                        &entry.key_loc,
                        &key_path,
                        format!(
                            "`{key}` and `{}` both set `{}`; keep only one",
                            first.key,
                            keys::canonical(field)
                        ),
                    );
                } else {
                    sorted.fields.insert(field, entry);
                }
            }
            Some(Kind::NotYet(noop)) => {
                if !noop.accepts(&entry.node.value) {
                    let hint = noop.hint().map(|h| format!(" ({h})")).unwrap_or_default();
                    diag.error(
                        &entry.key_loc,
                        &key_path,
                        format!("`{key}` is not supported yet by pm2rs{hint}"),
                    );
                }
            }
            None => {
                let suggestion = keys::suggest_app_key(key)
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                diag.error(
                    &entry.key_loc,
                    &key_path,
                    format!("unknown key `{key}`{suggestion}"),
                );
            }
        }
    }
    sorted
}

/// The interpreter setting as written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Interpreter {
    /// `"none"`: run the script directly.
    Direct,
    /// A program name or path.
    Program(String),
}

/// A value and the node it was read from (to point errors at).
type At<'n, T> = (T, &'n Node);

/// The validated intermediate: every value has the right type and range; paths are not resolved
/// and defaults not applied yet. `None` = not set (or refused, with an error already reported).
#[derive(Debug, Default)]
struct Draft<'n> {
    /// Key path of the app, e.g. `apps[0]`.
    path: String,
    name: Option<At<'n, Ident>>,
    script: Option<At<'n, String>>,
    args: Option<Vec<String>>,
    interpreter: Option<At<'n, Interpreter>>,
    interpreter_args: Option<Vec<String>>,
    cwd: Option<At<'n, String>>,
    env: Option<BTreeMap<String, String>>,
    /// `env_<profile>` tables, valid ones only.
    profiles: BTreeMap<String, BTreeMap<String, String>>,
    instances: Option<u32>,
    exec_mode: Option<ExecMode>,
    autorestart: Option<bool>,
    max_restarts: Option<u32>,
    min_uptime_ms: Option<u64>,
    restart_delay_ms: Option<u64>,
    exp_backoff_restart_delay_ms: Option<u64>,
    stop_exit_codes: Option<Vec<i32>>,
    kill_signal: Option<KillSignal>,
    kill_timeout_ms: Option<u64>,
    namespace: Option<Ident>,
    port: Option<At<'n, u16>>,
    listen: Option<At<'n, Vec<SocketAddr>>>,
    cluster_socket: Option<ClusterSocket>,
    instance_var: Option<String>,
    increment_var: Option<String>,
    wait_ready: Option<bool>,
    listen_timeout_ms: Option<u64>,
    watchdog_timeout_ms: Option<u64>,
    max_memory_restart: Option<u64>,
    /// `Some(None)`: the app's cwd (`watch = true`); `Some(Some(paths))`: these (empty: off).
    watch: Option<Option<Vec<String>>>,
    ignore_watch: Option<Vec<String>>,
    watch_delay_ms: Option<u64>,
    /// `Some(None)`: written as off (`false` or `""`).
    cron_restart: Option<Option<String>>,
    logs: LogDraft<'n>,
}

/// The log keys of a [`Draft`].
#[derive(Debug, Default)]
struct LogDraft<'n> {
    out_file: Option<At<'n, String>>,
    error_file: Option<At<'n, String>>,
    log_file: Option<At<'n, String>>,
    merge_logs: Option<bool>,
    time: Option<bool>,
    log_date_format: Option<String>,
    log_json: Option<bool>,
    log_max_size: Option<u64>,
    log_retain: Option<u32>,
    log_compress: Option<bool>,
    disable_logs: Option<bool>,
}

/// Reads typed values out of nodes, reporting type and range errors.
struct Reader<'d> {
    format: Format,
    cpus: u32,
    diag: &'d mut Diag,
}

impl Reader<'_> {
    fn type_error(&mut self, node: &Node, path: &str, expected: &str) {
        let got = node.value.type_name(self.format);
        self.diag
            .error(&node.loc, path, format!("expected {expected}, got {got}"));
    }

    fn string<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n str> {
        match &node.value {
            Value::Str(s) => Some(s),
            _ => {
                self.type_error(node, path, "a string");
                None
            }
        }
    }

    /// A string that must not be empty.
    fn non_empty<'n>(&mut self, node: &'n Node, path: &str, key: &str) -> Option<&'n str> {
        let s = self.string(node, path)?;
        if s.is_empty() {
            self.diag
                .error(&node.loc, path, format!("`{key}` must not be empty"));
            return None;
        }
        Some(s)
    }

    fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.type_error(node, path, "a boolean (true or false)");
                None
            }
        }
    }

    fn ident(&mut self, node: &Node, path: &str, what: &str) -> Option<Ident> {
        let s = self.string(node, path)?;
        Ident::parse(s, what)
            .map_err(|e| self.diag.error(&node.loc, path, e))
            .ok()
    }

    /// A string (split like a shell would) or an array of scalars.
    fn words(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        const EXPECTED: &str = "a string or an array of strings";
        match &node.value {
            Value::Str(s) => split_words(s)
                .map_err(|e| self.diag.error(&node.loc, path, e))
                .ok(),
            Value::Array(items) => {
                let mut words = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match scalar_string(&item.value) {
                        Some(word) => words.push(word),
                        None => {
                            self.type_error(item, &format!("{path}[{i}]"), "a string");
                            ok = false;
                        }
                    }
                }
                ok.then_some(words)
            }
            _ => {
                self.type_error(node, path, EXPECTED);
                None
            }
        }
    }

    /// A table of environment variables; scalar values become strings, `null` ones are dropped.
    fn env(&mut self, node: &Node, path: &str) -> Option<BTreeMap<String, String>> {
        let Value::Table(entries) = &node.value else {
            let expected = format!(
                "{} of environment variables",
                Value::Table(vec![]).type_name(self.format)
            );
            self.type_error(node, path, &expected);
            return None;
        };
        let mut env = BTreeMap::new();
        let mut ok = true;
        for entry in entries {
            let var_path = join(path, &entry.key);
            let name = &entry.key;
            if name.is_empty() || name.contains(['=', '\0']) {
                self.diag.error(
                    &entry.key_loc,
                    &var_path,
                    format!(
                        "invalid environment variable name `{}`: it must be non-empty, without `=` or NUL",
                        name.escape_debug()
                    ),
                );
                ok = false;
                continue;
            }
            if matches!(entry.node.value, Value::Null) {
                continue;
            }
            match scalar_string(&entry.node.value) {
                Some(value) if value.contains('\0') => {
                    self.diag.error(
                        &entry.node.loc,
                        &var_path,
                        "environment values must not contain NUL characters",
                    );
                    ok = false;
                }
                Some(value) => {
                    env.insert(name.clone(), value);
                }
                None => {
                    self.type_error(&entry.node, &var_path, "a string, number or boolean");
                    ok = false;
                }
            }
        }
        ok.then_some(env)
    }

    /// A non-negative integer at most `max`.
    fn count(&mut self, node: &Node, path: &str, key: &str, max: u64) -> Option<u64> {
        let Some(n) = node.value.as_whole_int() else {
            self.type_error(node, path, "a whole number");
            return None;
        };
        let refusal = if n < 0 {
            format!("`{key}` must not be negative (got {n})")
        } else if n.unsigned_abs() > max {
            format!("`{key}` must be at most {max} (got {n})")
        } else {
            return Some(n.unsigned_abs());
        };
        self.diag.error(&node.loc, path, refusal);
        None
    }

    /// A duration in milliseconds, at most `max_ms`.
    fn duration(&mut self, node: &Node, path: &str, key: &str, max_ms: u64) -> Option<u64> {
        let ms = match &node.value {
            Value::Str(s) => parse_duration_ms(s),
            value => match value.as_whole_int() {
                Some(n) if n < 0 => Err(format!("`{key}` must not be negative (got {n})")),
                Some(n) => Ok(n.unsigned_abs()),
                None => {
                    self.type_error(node, path, "a duration like \"10s\" or milliseconds");
                    return None;
                }
            },
        };
        match ms {
            Ok(ms) if ms <= max_ms => Some(ms),
            Ok(ms) => {
                self.diag.error(
                    &node.loc,
                    path,
                    format!(
                        "`{key}` must be at most {} (got {})",
                        human_ms(max_ms),
                        human_ms(ms)
                    ),
                );
                None
            }
            Err(e) => {
                self.diag.error(&node.loc, path, e);
                None
            }
        }
    }

    fn instances(&mut self, node: &Node, path: &str) -> Option<u32> {
        let result = match &node.value {
            Value::Str(s) => parse_instances(s, self.cpus),
            value => match value.as_whole_int() {
                Some(n) => instances_from_int(n, self.cpus),
                None => {
                    self.type_error(
                        node,
                        path,
                        "a number of instances, \"max\" or a negative number (CPUs minus n)",
                    );
                    return None;
                }
            },
        };
        result.map_err(|e| self.diag.error(&node.loc, path, e)).ok()
    }

    fn exec_mode(&mut self, node: &Node, path: &str) -> Option<ExecMode> {
        match self.string(node, path)? {
            "fork" | "fork_mode" => Some(ExecMode::Fork),
            "cluster" | "cluster_mode" => Some(ExecMode::Cluster),
            other => {
                self.diag.error(
                    &node.loc,
                    path,
                    format!("invalid exec_mode `{other}`: expected \"fork\" or \"cluster\""),
                );
                None
            }
        }
    }

    fn exit_codes(&mut self, node: &Node, path: &str) -> Option<Vec<i32>> {
        let items = one_or_many(node, path);
        let mut codes = Vec::with_capacity(items.len());
        let mut ok = true;
        for (item, item_path) in items {
            match item.value.as_whole_int() {
                Some(code @ 0..=255) => codes.push(code as i32),
                Some(code) => {
                    self.diag.error(
                        &item.loc,
                        &item_path,
                        format!("exit codes are 0 to 255 (got {code})"),
                    );
                    ok = false;
                }
                None => {
                    self.type_error(item, &item_path, "an exit code or an array of exit codes");
                    ok = false;
                }
            }
        }
        ok.then_some(codes)
    }

    fn signal(&mut self, node: &Node, path: &str) -> Option<KillSignal> {
        let parsed = match &node.value {
            Value::Str(s) => KillSignal::parse(s),
            value => match value.as_whole_int() {
                Some(n) => KillSignal::from_number(n),
                None => {
                    self.type_error(node, path, "a signal name like \"SIGTERM\"");
                    return None;
                }
            },
        };
        parsed.map_err(|e| self.diag.error(&node.loc, path, e)).ok()
    }

    /// `watch`: `true` (the app's cwd), `false`, or a path or list of paths (relative to `cwd`).
    fn watch(&mut self, node: &Node, path: &str) -> Option<Option<Vec<String>>> {
        match &node.value {
            Value::Bool(true) => Some(None),
            Value::Bool(false) => Some(Some(vec![])),
            Value::Str(s) if s.is_empty() => Some(Some(vec![])),
            Value::Str(s) => Some(Some(vec![s.clone()])),
            Value::Array(_) => self.strings(node, path).map(Some),
            _ => {
                self.type_error(node, path, "true, false, a path or an array of paths");
                None
            }
        }
    }

    /// `ignore_watch`: a glob or an array of globs, each checked.
    fn globs(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        let globs = match &node.value {
            Value::Str(s) => vec![s.clone()],
            Value::Array(_) => self.strings(node, path)?,
            _ => {
                self.type_error(node, path, "a glob or an array of globs");
                return None;
            }
        };
        for g in &globs {
            if let Err(e) = globset::Glob::new(g) {
                self.diag
                    .error(&node.loc, path, format!("invalid glob `{g}`: {e}"));
                return None;
            }
        }
        Some(globs)
    }

    /// An array of strings (no splitting, unlike [`Self::words`]).
    fn strings(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        let Value::Array(items) = &node.value else {
            self.type_error(node, path, "an array of strings");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match &item.value {
                Value::Str(s) => out.push(s.clone()),
                _ => {
                    self.type_error(item, &format!("{path}[{i}]"), "a string");
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// A size: `"10M"`-style text or a number of bytes, then `check`ed (its error message when
    /// out of range). `example` is shown in the type error.
    fn size(
        &mut self,
        node: &Node,
        path: &str,
        key: &str,
        example: &str,
        check: impl FnOnce(u64) -> Result<u64, String>,
    ) -> Option<u64> {
        let bytes = match &node.value {
            Value::Str(s) => parse_size_bytes(s),
            value => match value.as_whole_int() {
                Some(n) if n < 0 => Err(format!("`{key}` must not be negative (got {n})")),
                Some(n) => Ok(n.unsigned_abs()),
                None => {
                    let expected = format!("a size like \"{example}\" or a number of bytes");
                    self.type_error(node, path, &expected);
                    return None;
                }
            },
        };
        bytes
            .and_then(check)
            .map_err(|e| self.diag.error(&node.loc, path, e))
            .ok()
    }

    /// `max_memory_restart`: `"150M"`, `"1G"` or bytes, at least [`MIN_MEMORY_LIMIT`] (a smaller
    /// limit is below what any program needs to start, so every run would be restarted).
    fn memory_limit(&mut self, node: &Node, path: &str, key: &str) -> Option<u64> {
        self.size(node, path, key, "150M", |b| match b >= MIN_MEMORY_LIMIT {
            true => Ok(b),
            false => Err(format!(
                "`{key}` must be at least 1M (got {b} bytes): no program runs in less"
            )),
        })
    }

    /// `log_max_size`: `"10M"` or bytes; 0 (no rotation) or at least [`MIN_LOG_MAX_SIZE`].
    fn log_size(&mut self, node: &Node, path: &str, key: &str) -> Option<u64> {
        self.size(node, path, key, "10M", |b| {
            match b == 0 || b >= MIN_LOG_MAX_SIZE {
                true => Ok(b),
                false => Err(format!(
                    "`{key}` must be 0 (never rotate) or at least {}K (got {b} bytes)",
                    MIN_LOG_MAX_SIZE / 1024
                )),
            }
        })
    }

    /// `log_type`: `"json"` (true) or `"raw"` (false).
    fn log_type(&mut self, node: &Node, path: &str) -> Option<bool> {
        match self.string(node, path)? {
            "json" => Some(true),
            "raw" => Some(false),
            other => {
                self.diag.error(
                    &node.loc,
                    path,
                    format!("invalid log_type `{other}`: expected \"json\" or \"raw\""),
                );
                None
            }
        }
    }

    fn date_format(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        crate::datefmt::date_format(s)
            .map_err(|e| self.diag.error(&node.loc, path, e))
            .ok()
    }

    fn port(&mut self, node: &Node, path: &str) -> Option<u16> {
        let n = match &node.value {
            Value::Str(s) => s.trim().parse::<i64>().ok(),
            value => value.as_whole_int(),
        };
        match n {
            Some(n @ 1..=65535) => u16::try_from(n).ok(),
            Some(n) => {
                self.diag.error(
                    &node.loc,
                    path,
                    format!("`port` must be 1 to 65535 (got {n})"),
                );
                None
            }
            None => {
                self.type_error(node, path, "a port number");
                None
            }
        }
    }

    /// `"127.0.0.1:3000"`, `"[::]:8443"`, or an array of those.
    fn listen(&mut self, node: &Node, path: &str) -> Option<Vec<SocketAddr>> {
        let items = one_or_many(node, path);
        let mut addrs = Vec::with_capacity(items.len());
        let mut ok = true;
        for (item, item_path) in items {
            let Value::Str(text) = &item.value else {
                self.type_error(item, &item_path, "an address like \"127.0.0.1:3000\"");
                ok = false;
                continue;
            };
            match text.trim().parse::<SocketAddr>() {
                Ok(addr) if addr.port() != 0 => addrs.push(addr),
                Ok(_) => {
                    self.diag.error(
                        &item.loc,
                        &item_path,
                        "the port of a `listen` address must not be 0",
                    );
                    ok = false;
                }
                Err(_) => {
                    self.diag.error(
                        &item.loc,
                        &item_path,
                        format!(
                            "invalid listen address `{}`: expected IP:port, e.g. \"127.0.0.1:3000\" or \"[::]:8443\"",
                            text.escape_debug()
                        ),
                    );
                    ok = false;
                }
            }
        }
        if ok && addrs.is_empty() {
            self.diag
                .error(&node.loc, path, "`listen` must name at least one address");
            ok = false;
        }
        ok.then_some(addrs)
    }

    fn cluster_socket(&mut self, node: &Node, path: &str) -> Option<ClusterSocket> {
        match self.string(node, path)? {
            "reuseport" => Some(ClusterSocket::Reuseport),
            "shared" => Some(ClusterSocket::Shared),
            other => {
                self.diag.error(
                    &node.loc,
                    path,
                    format!(
                        "invalid cluster_socket `{}`: expected \"reuseport\" (one socket per instance) or \"shared\"",
                        other.escape_debug()
                    ),
                );
                None
            }
        }
    }

    /// An environment variable name: letters, digits and `_`, not starting with a digit.
    fn var_name(&mut self, node: &Node, path: &str, key: &str) -> Option<String> {
        let s = self.non_empty(node, path, key)?;
        let valid = s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !s.as_bytes()[0].is_ascii_digit();
        if !valid {
            self.diag.error(
                &node.loc,
                path,
                format!(
                    "invalid `{key}` `{}`: a variable name is letters, digits and `_`",
                    s.escape_debug()
                ),
            );
            return None;
        }
        Some(s.to_string())
    }

    /// `cron_restart`: a cron expression of 5 fields (minute hour day-of-month month
    /// day-of-week) or 6 (seconds first), or a `@nickname`; `false` or `""` mean none, as
    /// PM2's no-op values.
    fn cron(&mut self, node: &Node, path: &str, key: &str) -> Option<Option<String>> {
        let text = match &node.value {
            Value::Bool(false) => return Some(None),
            Value::Str(s) if s.trim().is_empty() => return Some(None),
            Value::Str(s) => s.trim(),
            _ => {
                self.type_error(node, path, "a cron expression like \"0 3 * * *\"");
                return None;
            }
        };
        match crate::units::parse_cron(text) {
            Ok(()) => Some(Some(text.to_string())),
            Err(e) => {
                self.diag.error(
                    &node.loc,
                    path,
                    format!(
                        "invalid `{key}` `{}`: {e}; expected 5 fields (minute hour day month weekday) or 6 (seconds first), e.g. \"0 3 * * *\"",
                        text.escape_debug()
                    ),
                );
                None
            }
        }
    }

    fn interpreter(&mut self, node: &Node, path: &str) -> Option<Interpreter> {
        match self.string(node, path)? {
            "" => {
                self.diag.error(
                    &node.loc,
                    path,
                    "`interpreter` must not be empty (use \"none\" to run the script directly)",
                );
                None
            }
            "none" => Some(Interpreter::Direct),
            program => Some(Interpreter::Program(program.to_string())),
        }
    }
}

/// The items of an array with their key paths (`path[i]`), or the node itself when it is not an
/// array (keys that take one value or a list of them).
fn one_or_many<'n>(node: &'n Node, path: &str) -> Vec<(&'n Node, String)> {
    match &node.value {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| (item, format!("{path}[{i}]")))
            .collect(),
        _ => vec![(node, path.to_string())],
    }
}

/// Strings stay, numbers and booleans are written out; anything else is `None`.
fn scalar_string(value: &Value) -> Option<String> {
    match value {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `90000000` → `25h`, `1500` → `1500ms`: the largest unit that divides evenly.
fn human_ms(ms: u64) -> String {
    match ms {
        0 => "0ms".into(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

impl<'n> Draft<'n> {
    /// Type-checks every known field.
    fn read(
        keys: &SortedKeys<'n>,
        table: &'n Node,
        path: &str,
        ctx: &Ctx<'_>,
        diag: &mut Diag,
    ) -> Draft<'n> {
        let mut r = Reader {
            format: ctx.format,
            cpus: ctx.cpus,
            diag,
        };
        let mut d = Draft {
            path: path.to_string(),
            ..Draft::default()
        };
        for (field, entry) in &keys.fields {
            let node = &entry.node;
            let key = entry.key.as_str();
            let p = join(path, key);
            let p = p.as_str();
            match field {
                Field::Name => d.name = r.ident(node, p, "name").map(|n| (n, node)),
                Field::Namespace => d.namespace = r.ident(node, p, "namespace"),
                Field::Script => {
                    d.script = r.non_empty(node, p, key).map(|s| (s.to_string(), node));
                }
                Field::Args => d.args = r.words(node, p),
                Field::Interpreter => d.interpreter = r.interpreter(node, p).map(|i| (i, node)),
                Field::InterpreterArgs => d.interpreter_args = r.words(node, p),
                Field::Cwd => d.cwd = r.non_empty(node, p, key).map(|s| (s.to_string(), node)),
                Field::Env => d.env = r.env(node, p),
                Field::Instances => d.instances = r.instances(node, p),
                Field::ExecMode => d.exec_mode = r.exec_mode(node, p),
                Field::Autorestart => d.autorestart = r.bool(node, p),
                Field::MaxRestarts => {
                    d.max_restarts = r
                        .count(node, p, key, MAX_MAX_RESTARTS)
                        .and_then(|n| u32::try_from(n).ok());
                }
                Field::MinUptime => d.min_uptime_ms = r.duration(node, p, key, MAX_DURATION_MS),
                Field::RestartDelay => {
                    d.restart_delay_ms = r.duration(node, p, key, MAX_DURATION_MS);
                }
                Field::ExpBackoffRestartDelay => {
                    d.exp_backoff_restart_delay_ms = r.duration(node, p, key, MAX_BACKOFF_MS);
                }
                Field::StopExitCodes => d.stop_exit_codes = r.exit_codes(node, p),
                Field::KillSignal => d.kill_signal = r.signal(node, p),
                Field::KillTimeout => d.kill_timeout_ms = r.duration(node, p, key, MAX_DURATION_MS),
                Field::OutFile => {
                    d.logs.out_file = r.non_empty(node, p, key).map(|s| (s.into(), node))
                }
                Field::ErrorFile => {
                    d.logs.error_file = r.non_empty(node, p, key).map(|s| (s.into(), node));
                }
                Field::LogFile => {
                    d.logs.log_file = r.non_empty(node, p, key).map(|s| (s.into(), node))
                }
                Field::MergeLogs => d.logs.merge_logs = r.bool(node, p),
                Field::Time => d.logs.time = r.bool(node, p),
                Field::LogDateFormat => d.logs.log_date_format = r.date_format(node, p),
                Field::LogType => d.logs.log_json = r.log_type(node, p),
                Field::LogMaxSize => d.logs.log_max_size = r.log_size(node, p, key),
                Field::LogRetain => {
                    d.logs.log_retain = r
                        .count(node, p, key, MAX_LOG_RETAIN)
                        .and_then(|n| u32::try_from(n).ok());
                }
                Field::LogCompress => d.logs.log_compress = r.bool(node, p),
                Field::DisableLogs => d.logs.disable_logs = r.bool(node, p),
                Field::Port => d.port = r.port(node, p).map(|v| (v, node)),
                Field::Listen => d.listen = r.listen(node, p).map(|v| (v, node)),
                Field::ClusterSocket => d.cluster_socket = r.cluster_socket(node, p),
                Field::InstanceVar => d.instance_var = r.var_name(node, p, key),
                Field::IncrementVar => d.increment_var = r.var_name(node, p, key),
                Field::WaitReady => d.wait_ready = r.bool(node, p),
                Field::ListenTimeout => {
                    d.listen_timeout_ms = r.duration(node, p, key, MAX_DURATION_MS);
                }
                Field::WatchdogTimeout => {
                    d.watchdog_timeout_ms = r.duration(node, p, key, MAX_DURATION_MS);
                }
                Field::MaxMemoryRestart => d.max_memory_restart = r.memory_limit(node, p, key),
                Field::Watch => d.watch = r.watch(node, p),
                Field::IgnoreWatch => d.ignore_watch = r.globs(node, p),
                Field::WatchDelay => d.watch_delay_ms = r.duration(node, p, key, MAX_DURATION_MS),
                Field::CronRestart => d.cron_restart = r.cron(node, p, key),
            }
        }
        for (profile, entry) in &keys.profiles {
            if let Some(env) = r.env(&entry.node, &join(path, &entry.key)) {
                d.profiles.insert((*profile).to_string(), env);
            }
        }
        if d.script.is_none() && !keys.fields.contains_key(&Field::Script) {
            r.diag
                .error(&table.loc, path, "missing required key `script`");
        }
        d
    }

    /// Applies defaults, resolves paths and checks the file system.
    fn resolve(self, ctx: &Ctx<'_>, diag: &mut Diag) -> Option<CheckedApp> {
        let path = self.path.as_str();
        let (script, script_node) = self.script?;
        let script_path = join(path, "script");

        // Environment: env_<profile> over env.
        let mut env = self.env.unwrap_or_default();
        if let Some(profile_env) = ctx.profile.and_then(|p| self.profiles.get(p)) {
            env.extend(profile_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let env_path: Option<OsString> = env.get("PATH").map(OsString::from);
        let path_var = env_path.as_deref().or(ctx.path_var);

        // Name: as written, or the script's file stem.
        let (name, name_loc) = match self.name {
            Some((name, node)) => (Some(name), node.loc.clone()),
            None => {
                let stem = Path::new(&script)
                    .file_stem()
                    .and_then(OsStr::to_str)
                    .unwrap_or_default();
                let derived = Ident::parse(stem, "name").map_err(|e| {
                    diag.error(
                        &script_node.loc,
                        &script_path,
                        format!(
                            "cannot use the script's file name as the app name ({e}); set `name`"
                        ),
                    );
                });
                (derived.ok(), script_node.loc.clone())
            }
        };

        // Working directory.
        let cwd = match &self.cwd {
            Some((dir, node)) => {
                let abs = absolute(ctx.base_dir, Path::new(dir));
                if ctx.check_files && !abs.is_dir() {
                    let problem = if abs.exists() {
                        "is not a directory"
                    } else {
                        "does not exist"
                    };
                    diag.error(
                        &node.loc,
                        &join(path, "cwd"),
                        format!("working directory `{}` {problem}", abs.display()),
                    );
                    None
                } else {
                    Some(abs)
                }
            }
            None => Some(ctx.base_dir.to_path_buf()),
        };

        // Interpreter: as written, or chosen by extension.
        let interpreter: Option<(String, Option<&Node>)> = match self.interpreter {
            Some((Interpreter::Direct, _)) => None,
            Some((Interpreter::Program(p), node)) => Some((p, Some(node))),
            None => default_interpreter(&script).map(|p| (p.to_string(), None)),
        };
        let has_interpreter = interpreter.is_some();
        // `None` = refused (error reported); `Some(None)` = run directly.
        let interpreter: Option<Option<String>> = match (&interpreter, &cwd) {
            (Some((program, node)), Some(cwd)) if ctx.check_files => {
                let (loc, key_path) = match node {
                    Some(node) => (&node.loc, join(path, "interpreter")),
                    None => (&script_node.loc, script_path.clone()),
                };
                check_interpreter(program, node.is_none(), &script, cwd, path_var)
                    .map_err(|e| diag.error(loc, &key_path, e))
                    .ok()
                    .map(Some)
            }
            (Some((program, _)), _) => Some(Some(program.clone())),
            (None, _) => Some(None),
        };

        // Script.
        let script_abs = cwd.as_ref().and_then(|cwd| {
            if !ctx.check_files {
                return Some(absolute(cwd, Path::new(&script)));
            }
            check_script(&script, cwd, has_interpreter, path_var)
                .map_err(|e| diag.error(&script_node.loc, &script_path, e))
                .ok()
        });

        let logs = self.logs.resolve(path, cwd.as_deref(), ctx, diag);
        let exec_mode = self.exec_mode.unwrap_or_default();
        let listen = listen_addresses(self.port, self.listen, exec_mode, path, diag);

        let watch = match (&self.watch, &cwd) {
            (Some(None), Some(cwd)) => vec![cwd.clone()],
            (Some(Some(paths)), Some(cwd)) => {
                paths.iter().map(|p| absolute(cwd, Path::new(p))).collect()
            }
            _ => vec![],
        };
        let spec = AppSpec {
            name: name?.into_string(),
            namespace: self
                .namespace
                .map_or_else(|| defaults::NAMESPACE.to_string(), Ident::into_string),
            script: script_abs?,
            args: self.args.unwrap_or_default(),
            interpreter: interpreter?,
            interpreter_args: self.interpreter_args.unwrap_or_default(),
            cwd: cwd?,
            env,
            instances: self.instances.unwrap_or(defaults::INSTANCES),
            exec_mode,
            autorestart: self.autorestart.unwrap_or(defaults::AUTORESTART),
            max_restarts: self.max_restarts.unwrap_or(defaults::MAX_RESTARTS),
            min_uptime_ms: self.min_uptime_ms.unwrap_or(defaults::MIN_UPTIME_MS),
            restart_delay_ms: self.restart_delay_ms.unwrap_or(defaults::RESTART_DELAY_MS),
            exp_backoff_restart_delay_ms: self.exp_backoff_restart_delay_ms.filter(|&ms| ms > 0),
            stop_exit_codes: self.stop_exit_codes.unwrap_or_default(),
            kill_signal: self
                .kill_signal
                .unwrap_or(KillSignal::DEFAULT)
                .as_str()
                .to_string(),
            kill_timeout_ms: self.kill_timeout_ms.unwrap_or(defaults::KILL_TIMEOUT_MS),
            source: ctx.source.map(Path::to_path_buf),
            logs: logs?,
            listen: listen?,
            cluster_socket: self.cluster_socket.unwrap_or(ClusterSocket::Reuseport),
            instance_var: self
                .instance_var
                .unwrap_or_else(|| defaults::INSTANCE_VAR.to_string()),
            increment_var: self.increment_var,
            wait_ready: self.wait_ready.unwrap_or(false),
            listen_timeout_ms: self
                .listen_timeout_ms
                .unwrap_or(defaults::LISTEN_TIMEOUT_MS),
            watchdog_timeout_ms: self.watchdog_timeout_ms.filter(|&ms| ms > 0),
            cron_restart: self.cron_restart.flatten(),
            env_profile: ctx.profile.map(str::to_string),
            max_memory_restart: self.max_memory_restart,
            watch,
            ignore_watch: self.ignore_watch.unwrap_or_default(),
            watch_delay_ms: self.watch_delay_ms.unwrap_or(defaults::WATCH_DELAY_MS),
        };
        Some(CheckedApp { spec, name_loc })
    }
}

impl LogDraft<'_> {
    /// The log settings: file paths made absolute against the app's cwd (a directory is refused),
    /// `disable_logs` turning both outputs into `/dev/null`.
    fn resolve(
        self,
        path: &str,
        cwd: Option<&Path>,
        ctx: &Ctx<'_>,
        diag: &mut Diag,
    ) -> Option<LogSpec> {
        let before = diag.count();
        let mut file = |written: &Option<At<'_, String>>, key: &str| -> Option<PathBuf> {
            let (text, node) = written.as_ref()?;
            let abs = absolute(cwd.unwrap_or(ctx.base_dir), Path::new(text));
            if ctx.check_files && abs.is_dir() {
                diag.error(
                    &node.loc,
                    &join(path, key),
                    format!("`{key}` `{}` is a directory; name a file", abs.display()),
                );
            }
            Some(abs)
        };
        let mut out_file = file(&self.out_file, "out_file");
        let mut error_file = file(&self.error_file, "error_file");
        let log_file = file(&self.log_file, "log_file");
        if self.disable_logs == Some(true) {
            out_file = Some(PathBuf::from(DEV_NULL));
            error_file = Some(PathBuf::from(DEV_NULL));
        }
        (diag.count() == before).then(|| LogSpec {
            out_file,
            error_file,
            log_file,
            merge_logs: self.merge_logs.unwrap_or(false),
            time: self.time.unwrap_or(false) || self.log_date_format.is_some(),
            date_format: self.log_date_format,
            json: self.log_json.unwrap_or(false),
            max_size: self.log_max_size,
            retain: self.log_retain,
            compress: self.log_compress,
        })
    }
}

/// Where `disable_logs = true` sends output.
const DEV_NULL: &str = "/dev/null";

/// The addresses to bind: `port = N` is `0.0.0.0:N`, then every `listen` address; both need
/// cluster mode (in fork mode each instance binds its own port, see `increment_var`).
fn listen_addresses(
    port: Option<At<'_, u16>>,
    listen: Option<At<'_, Vec<SocketAddr>>>,
    exec_mode: ExecMode,
    path: &str,
    diag: &mut Diag,
) -> Option<Vec<SocketAddr>> {
    let mut addrs = Vec::new();
    let mut ok = true;
    for (key, node, given) in [
        port.map(|(p, n)| {
            (
                "port",
                n,
                vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), p)],
            )
        }),
        listen.map(|(l, n)| ("listen", n, l)),
    ]
    .into_iter()
    .flatten()
    {
        if exec_mode != ExecMode::Cluster {
            diag.error(
                &node.loc,
                &join(path, key),
                format!(
                    "`{key}` needs exec_mode = \"cluster\" (the daemon binds it and hands it to every instance); in fork mode let each instance bind its own port, e.g. with increment_var = \"PORT\""
                ),
            );
            ok = false;
            continue;
        }
        for addr in given {
            if addrs.contains(&addr) {
                diag.error(
                    &node.loc,
                    &join(path, key),
                    format!("address {addr} is listed twice"),
                );
                ok = false;
            } else {
                addrs.push(addr);
            }
        }
    }
    ok.then_some(addrs)
}

/// The interpreter [`DEFAULT_INTERPRETERS`] picks for `script`'s extension.
pub(crate) fn default_interpreter(script: &str) -> Option<&'static str> {
    let ext = Path::new(script).extension()?.to_str()?;
    DEFAULT_INTERPRETERS
        .iter()
        .find(|(e, _)| *e == ext)
        .map(|(_, program)| *program)
}

/// A bare interpreter name must be in `PATH` (and stays as written); a path is resolved against
/// `cwd`, must be an executable file, and becomes absolute.
fn check_interpreter(
    program: &str,
    by_extension: bool,
    script: &str,
    cwd: &Path,
    path_var: Option<&OsStr>,
) -> Result<String, String> {
    let chosen = if by_extension {
        let ext = Path::new(script)
            .extension()
            .and_then(OsStr::to_str)
            .unwrap_or_default();
        format!(" (chosen for `.{ext}` scripts)")
    } else {
        String::new()
    };
    let fix = if by_extension {
        "set `interpreter` to a full path, or to \"none\" to run the script directly"
    } else {
        "set `interpreter` to a full path"
    };
    if is_bare(program) {
        return match find_in_path(program, path_var) {
            Some(_) => Ok(program.to_string()),
            None => Err(format!(
                "interpreter `{program}`{chosen} not found in PATH; {fix}"
            )),
        };
    }
    let abs = absolute(cwd, Path::new(program));
    match std::fs::metadata(&abs) {
        Ok(meta) if meta.is_file() && is_executable(&meta) => {
            Ok(abs.to_string_lossy().into_owned())
        }
        Ok(_) => Err(format!(
            "interpreter `{}` is not an executable file",
            abs.display()
        )),
        Err(_) => Err(format!("interpreter `{}` does not exist", abs.display())),
    }
}

/// Resolves the script against `cwd`. Run directly, it must be executable, and a bare name that
/// is not in `cwd` is looked up in `PATH`. Run by an interpreter, it must be a file.
fn check_script(
    script: &str,
    cwd: &Path,
    has_interpreter: bool,
    path_var: Option<&OsStr>,
) -> Result<PathBuf, String> {
    let abs = absolute(cwd, Path::new(script));
    if !has_interpreter && is_bare(script) && !abs.exists() {
        return find_in_path(script, path_var).ok_or_else(|| {
            format!(
                "script `{script}` not found in `{}` nor in PATH",
                cwd.display()
            )
        });
    }
    let meta = std::fs::metadata(&abs)
        .map_err(|_| format!("script `{}` does not exist", abs.display()))?;
    if meta.is_dir() {
        return Err(format!("script `{}` is a directory", abs.display()));
    }
    if !has_interpreter && !is_executable(&meta) {
        return Err(format!(
            "script `{}` is not executable; make it executable (chmod +x) or set `interpreter`",
            abs.display()
        ));
    }
    Ok(abs)
}
