//! The one table of app keys: what pm2rs implements (with PM2's aliases), what it recognises from
//! PM2 but does not implement yet (and which values of those are harmless no-ops), and the
//! "did you mean" suggestion for everything else.

use crate::tree::{Entry, Value};

/// A key pm2rs implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Field {
    Name,
    Script,
    Args,
    Interpreter,
    InterpreterArgs,
    Cwd,
    Env,
    Instances,
    ExecMode,
    Autorestart,
    MaxRestarts,
    MinUptime,
    RestartDelay,
    ExpBackoffRestartDelay,
    StopExitCodes,
    KillSignal,
    KillTimeout,
    Namespace,
    Port,
    Listen,
    ClusterSocket,
    InstanceVar,
    IncrementVar,
    WaitReady,
    ListenTimeout,
    WatchdogTimeout,
    OutFile,
    ErrorFile,
    LogFile,
    MergeLogs,
    Time,
    LogDateFormat,
    LogType,
    LogMaxSize,
    LogRetain,
    LogCompress,
    DisableLogs,
    MaxMemoryRestart,
    Watch,
    IgnoreWatch,
    WatchDelay,
    CronRestart,
}

/// When a recognised-but-unimplemented key may stay in a file: its value changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Noop {
    /// Never: any value asks for behaviour pm2rs lacks.
    Never,
    /// Only this boolean.
    Bool(bool),
    /// Any boolean (the key only affects PM2's monitoring or other platforms).
    AnyBool,
    /// Any value (the key only matters together with a key that is refused anyway).
    Any,
    /// `false`, `""` or `[]`.
    FalseOrEmpty,
}

impl Noop {
    /// Whether `value` is harmless for this key.
    pub(crate) fn accepts(self, value: &Value) -> bool {
        match (self, value) {
            (Noop::Never, _) => false,
            (Noop::Bool(want), Value::Bool(got)) => want == *got,
            (Noop::AnyBool, Value::Bool(_)) | (Noop::Any, _) => true,
            (Noop::FalseOrEmpty, Value::Bool(false)) => true,
            (Noop::FalseOrEmpty, Value::Str(s)) => s.is_empty(),
            (Noop::FalseOrEmpty, Value::Array(a)) => a.is_empty(),
            _ => false,
        }
    }

    /// How to make the key acceptable, for the error message.
    pub(crate) fn hint(self) -> Option<String> {
        match self {
            Noop::Never | Noop::Any => None,
            Noop::Bool(b) => Some(format!("remove it or set it to {b}")),
            Noop::AnyBool => Some("remove it or set it to true or false".into()),
            Noop::FalseOrEmpty => Some("remove it or set it to false".into()),
        }
    }
}

/// What a key of an app table means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Implemented.
    Field(Field),
    /// Recognised from PM2, not implemented yet; accepted only with a no-op value.
    NotYet(Noop),
}

use Field as F;
use Kind::{Field as Is, NotYet};

/// Every key an app table may contain (besides `env_<profile>`), PM2 aliases included. The first
/// key naming a [`Field`] is its canonical name.
pub(crate) const KEYS: &[(&str, Kind)] = &[
    // Implemented, canonical names first.
    ("name", Is(F::Name)),
    ("script", Is(F::Script)),
    ("args", Is(F::Args)),
    ("interpreter", Is(F::Interpreter)),
    ("interpreter_args", Is(F::InterpreterArgs)),
    ("cwd", Is(F::Cwd)),
    ("env", Is(F::Env)),
    ("instances", Is(F::Instances)),
    ("exec_mode", Is(F::ExecMode)),
    ("autorestart", Is(F::Autorestart)),
    ("max_restarts", Is(F::MaxRestarts)),
    ("min_uptime", Is(F::MinUptime)),
    ("restart_delay", Is(F::RestartDelay)),
    ("exp_backoff_restart_delay", Is(F::ExpBackoffRestartDelay)),
    ("stop_exit_codes", Is(F::StopExitCodes)),
    ("kill_signal", Is(F::KillSignal)),
    ("kill_timeout", Is(F::KillTimeout)),
    ("namespace", Is(F::Namespace)),
    ("port", Is(F::Port)),
    ("listen", Is(F::Listen)),
    ("cluster_socket", Is(F::ClusterSocket)),
    ("instance_var", Is(F::InstanceVar)),
    ("increment_var", Is(F::IncrementVar)),
    ("wait_ready", Is(F::WaitReady)),
    ("listen_timeout", Is(F::ListenTimeout)),
    ("watchdog_timeout", Is(F::WatchdogTimeout)),
    ("out_file", Is(F::OutFile)),
    ("error_file", Is(F::ErrorFile)),
    ("log_file", Is(F::LogFile)),
    ("merge_logs", Is(F::MergeLogs)),
    ("time", Is(F::Time)),
    ("log_date_format", Is(F::LogDateFormat)),
    ("log_type", Is(F::LogType)),
    ("log_max_size", Is(F::LogMaxSize)),
    ("log_retain", Is(F::LogRetain)),
    ("log_compress", Is(F::LogCompress)),
    ("disable_logs", Is(F::DisableLogs)),
    ("max_memory_restart", Is(F::MaxMemoryRestart)),
    ("watch", Is(F::Watch)),
    ("ignore_watch", Is(F::IgnoreWatch)),
    ("watch_delay", Is(F::WatchDelay)),
    ("cron_restart", Is(F::CronRestart)),
    // PM2's aliases of implemented keys.
    ("exec", Is(F::Script)),
    ("exec_interpreter", Is(F::Interpreter)),
    ("node_args", Is(F::InterpreterArgs)),
    ("interpreterArgs", Is(F::InterpreterArgs)),
    ("output", Is(F::OutFile)),
    ("error", Is(F::ErrorFile)),
    ("combine_logs", Is(F::MergeLogs)),
    ("cron", Is(F::CronRestart)),
    // Recognised PM2 keys, not implemented yet.
    ("watch_options", NotYet(Noop::Any)),
    ("shutdown_with_message", NotYet(Noop::Bool(false))),
    ("pid_file", NotYet(Noop::Never)),
    ("autostart", NotYet(Noop::Bool(true))),
    ("treekill", NotYet(Noop::Bool(true))),
    ("kill_retry_time", NotYet(Noop::Never)),
    ("uid", NotYet(Noop::Never)),
    ("gid", NotYet(Noop::Never)),
    ("user", NotYet(Noop::Never)),
    ("append_env_to_name", NotYet(Noop::Bool(false))),
    ("filter_env", NotYet(Noop::FalseOrEmpty)),
    ("force", NotYet(Noop::Bool(false))),
    ("post_update", NotYet(Noop::Never)),
    // Monitoring / platform switches of PM2: no effect on how an app runs.
    ("source_map_support", NotYet(Noop::AnyBool)),
    ("disable_source_map_support", NotYet(Noop::AnyBool)),
    ("vizion", NotYet(Noop::AnyBool)),
    ("pmx", NotYet(Noop::AnyBool)),
    ("automation", NotYet(Noop::AnyBool)),
    ("trace", NotYet(Noop::Bool(false))),
    ("disable_trace", NotYet(Noop::AnyBool)),
    ("deep_monitoring", NotYet(Noop::Bool(false))),
    ("windowsHide", NotYet(Noop::AnyBool)),
];

/// Prefix of per-profile env tables (`env_production`).
pub(crate) const ENV_PROFILE_PREFIX: &str = "env_";

/// What `key` means, if it is in [`KEYS`].
pub(crate) fn lookup(key: &str) -> Option<Kind> {
    KEYS.iter().find(|(k, _)| *k == key).map(|(_, kind)| *kind)
}

/// The canonical name of a field.
pub(crate) fn canonical(field: Field) -> &'static str {
    KEYS.iter()
        .find(|(_, kind)| *kind == Kind::Field(field))
        .map_or("?", |(k, _)| k)
}

/// The closest known key to `key`, if any is close enough to be a likely typo: an exact match
/// after turning camelCase into snake_case, else the best Jaro-Winkler similarity ≥ 0.85.
pub(crate) fn suggest<'a>(
    key: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let snake = camel_to_snake(key);
    let candidates: Vec<&str> = candidates.into_iter().collect();
    if let Some(exact) = candidates.iter().find(|c| **c == snake) {
        return Some(exact);
    }
    let lower = key.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(&lower, c), *c))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// The string value of the first of `entries` whose key names `field` (an alias counts).
pub(crate) fn string_field(entries: &[Entry], field: Field) -> Option<&str> {
    entries
        .iter()
        .find_map(|e| match (&e.node.value, lookup(&e.key)) {
            (Value::Str(s), Some(Kind::Field(f))) if f == field => Some(s.as_str()),
            _ => None,
        })
}

/// Suggestion among the app keys of [`KEYS`].
pub(crate) fn suggest_app_key(key: &str) -> Option<&'static str> {
    suggest(key, KEYS.iter().map(|(k, _)| *k))
}

fn camel_to_snake(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_listed_once_and_every_field_has_a_name() {
        for (i, (key, _)) in KEYS.iter().enumerate() {
            assert!(
                KEYS[i + 1..].iter().all(|(k, _)| k != key),
                "{key} listed twice"
            );
        }
        assert_eq!(canonical(Field::MaxRestarts), "max_restarts");
        assert_eq!(canonical(Field::Script), "script");
        assert_eq!(canonical(Field::InterpreterArgs), "interpreter_args");
        assert_eq!(canonical(Field::CronRestart), "cron_restart");
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest_app_key("max_restart"), Some("max_restarts"));
        assert_eq!(suggest_app_key("maxRestarts"), Some("max_restarts"));
        assert_eq!(suggest_app_key("kill_sigal"), Some("kill_signal"));
        assert_eq!(suggest_app_key("instance"), Some("instances"));
        assert_eq!(suggest_app_key("zzzzzz"), None);
    }

    #[test]
    fn noop_values() {
        assert!(Noop::FalseOrEmpty.accepts(&Value::Bool(false)));
        assert!(!Noop::FalseOrEmpty.accepts(&Value::Bool(true)));
        assert!(Noop::FalseOrEmpty.accepts(&Value::Array(vec![])));
        assert!(Noop::Bool(true).accepts(&Value::Bool(true)));
        assert!(!Noop::Bool(true).accepts(&Value::Bool(false)));
        assert!(!Noop::Never.accepts(&Value::Bool(false)));
        assert!(Noop::AnyBool.accepts(&Value::Bool(true)));
        assert!(!Noop::AnyBool.accepts(&Value::Str("x".into())));
    }
}
