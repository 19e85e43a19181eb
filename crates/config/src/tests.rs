//! End-to-end tests of the public API on real files in temporary directories. `PATH` is never
//! taken from the test process: each test passes its own, pointing at fake programs it created
//! (the tests of JavaScript files add the directory of the machine's real `node`).
//!
//! `formats`: JavaScript, YAML, standard input and `convert`.

mod formats;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use pm2rs_proto::{AppSpec, ClusterSocket, ExecMode, LogSpec};
use tempfile::TempDir;

use crate::ecosystem::load_with;
use crate::script::app_from_script_with;
use crate::{ConfigErrors, LoadOptions, ScriptOptions};

/// A temporary project directory with a `bin/` of fake programs (`node`, `python3`, `mytool`)
/// that is the only entry of the test's `PATH`.
struct Fixture {
    dir: TempDir,
    path_var: OsString,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for program in ["node", "python3", "mytool"] {
            make_executable(&bin.join(program));
        }
        let path_var = std::env::join_paths([&bin]).unwrap();
        let fixture = Fixture { dir, path_var };
        fixture.file("app.js", "console.log('hi')\n");
        fixture
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `name` (relative to the root) and returns its path.
    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.root().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn load(
        &self,
        name: &str,
        contents: &str,
        opts: &LoadOptions,
    ) -> Result<Vec<AppSpec>, ConfigErrors> {
        let path = self.file(name, contents);
        load_with(&path, opts, Some(&self.path_var))
    }

    fn load_ok(&self, contents: &str) -> Vec<AppSpec> {
        match self.load("ecosystem.toml", contents, &opts()) {
            Ok(apps) => apps,
            Err(e) => panic!("expected success, got:\n{e}"),
        }
    }

    /// Loads `ecosystem.toml` and returns its errors with the file's directory cut from the start
    /// of each line, so that they read `ecosystem.toml:7:13: ...`.
    fn errors(&self, contents: &str) -> Vec<String> {
        self.errors_with("ecosystem.toml", contents, &opts())
    }

    fn errors_with(&self, name: &str, contents: &str, opts: &LoadOptions) -> Vec<String> {
        match self.load(name, contents, opts) {
            Ok(apps) => panic!("expected errors, got {apps:?}"),
            Err(e) => self.strip(&e),
        }
    }

    fn strip(&self, errors: &ConfigErrors) -> Vec<String> {
        let prefix = format!("{}/", self.root().display());
        errors
            .to_string()
            .lines()
            .map(|l| l.strip_prefix(&prefix).unwrap_or(l).to_string())
            .collect()
    }

    fn script_opts(&self) -> ScriptOptions {
        ScriptOptions {
            cwd: self.root().to_path_buf(),
            cpus: 4,
            ..ScriptOptions::default()
        }
    }

    fn start_script(&self, script: &str, opts: &ScriptOptions) -> Result<AppSpec, ConfigErrors> {
        app_from_script_with(script, opts, Some(&self.path_var))
    }
}

fn make_executable(path: &Path) {
    std::fs::write(path, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn opts() -> LoadOptions {
    LoadOptions {
        cpus: 8,
        ..LoadOptions::default()
    }
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn full_toml_app_becomes_the_expected_spec() {
    let fx = Fixture::new();
    fx.file("srv/api/server.py", "print('x')\n");
    let apps = fx.load_ok(
        r#"
[[apps]]
name = "api"
namespace = "backend"
script = "server.py"
cwd = "srv/api"
args = "--port 8080 --msg 'hello world'"
interpreter_args = ["-u", "-X", "dev"]
env = { PORT = 8080, DEBUG = true, NAME = "api" }
instances = 3
exec_mode = "cluster"
autorestart = false
max_restarts = 5
min_uptime = "2s"
restart_delay = 250
exp_backoff_restart_delay = "100ms"
stop_exit_codes = [0, 3]
kill_signal = "TERM"
kill_timeout = "5s"
port = 8080
listen = ["127.0.0.1:9000", "[::1]:9001"]
cluster_socket = "shared"
instance_var = "INSTANCE_ID"
increment_var = "METRICS_PORT"
wait_ready = true
listen_timeout = "10s"
watchdog_timeout = "30s"
max_memory_restart = "150M"
watch = ["src", "../../shared"]
ignore_watch = "*.tmp"
watch_delay = "500ms"
cron_restart = "0 3 * * *"
"#,
    );
    let expected = AppSpec {
        name: "api".into(),
        namespace: "backend".into(),
        script: fx.root().join("srv/api/server.py"),
        args: vec![
            "--port".into(),
            "8080".into(),
            "--msg".into(),
            "hello world".into(),
        ],
        interpreter: Some("python3".into()),
        interpreter_args: vec!["-u".into(), "-X".into(), "dev".into()],
        cwd: fx.root().join("srv/api"),
        env: env(&[("DEBUG", "true"), ("NAME", "api"), ("PORT", "8080")]),
        instances: 3,
        exec_mode: ExecMode::Cluster,
        autorestart: false,
        max_restarts: 5,
        min_uptime_ms: 2000,
        restart_delay_ms: 250,
        exp_backoff_restart_delay_ms: Some(100),
        stop_exit_codes: vec![0, 3],
        kill_signal: "SIGTERM".into(),
        kill_timeout_ms: 5000,
        source: Some(fx.root().join("ecosystem.toml")),
        listen: vec![
            "0.0.0.0:8080".parse().unwrap(),
            "127.0.0.1:9000".parse().unwrap(),
            "[::1]:9001".parse().unwrap(),
        ],
        cluster_socket: ClusterSocket::Shared,
        instance_var: "INSTANCE_ID".into(),
        increment_var: Some("METRICS_PORT".into()),
        wait_ready: true,
        listen_timeout_ms: 10_000,
        watchdog_timeout_ms: Some(30_000),
        cron_restart: Some("0 3 * * *".into()),
        logs: LogSpec::unset(),
        env_profile: None,
        max_memory_restart: Some(150 << 20),
        watch: vec![fx.root().join("srv/api/src"), fx.root().join("shared")],
        ignore_watch: vec!["*.tmp".into()],
        watch_delay_ms: 500,
    };
    assert_eq!(apps, vec![expected]);
}

#[test]
fn defaults_are_pm2s() {
    let fx = Fixture::new();
    let apps = fx.load_ok("[[apps]]\nscript = \"app.js\"\n");
    let app = &apps[0];
    assert_eq!(app.name, "app", "name defaults to the script's file stem");
    assert_eq!(app.namespace, "default");
    assert_eq!(app.script, fx.root().join("app.js"));
    assert_eq!(
        app.interpreter.as_deref(),
        Some("node"),
        ".js runs with node"
    );
    assert_eq!(app.cwd, fx.root(), "cwd defaults to the file's directory");
    assert!(app.args.is_empty() && app.interpreter_args.is_empty());
    assert!(app.env.is_empty());
    assert_eq!(app.instances, 1);
    assert_eq!(app.exec_mode, ExecMode::Fork);
    assert!(app.autorestart);
    assert_eq!(app.max_restarts, 16);
    assert_eq!(app.min_uptime_ms, 1000);
    assert_eq!(app.restart_delay_ms, 0);
    assert_eq!(app.exp_backoff_restart_delay_ms, None);
    assert!(app.stop_exit_codes.is_empty());
    assert!(app.listen.is_empty());
    assert_eq!(app.cluster_socket, ClusterSocket::Reuseport);
    assert_eq!(app.instance_var, "NODE_APP_INSTANCE");
    assert_eq!(app.increment_var, None);
    assert!(!app.wait_ready);
    assert_eq!(app.listen_timeout_ms, 3000);
    assert_eq!(app.watchdog_timeout_ms, None);
    assert_eq!(app.cron_restart, None);
    assert_eq!(app.kill_signal, "SIGINT");
    assert_eq!(app.kill_timeout_ms, 1600);
    assert_eq!(app.source, Some(fx.root().join("ecosystem.toml")));
}

#[test]
fn interpreter_is_chosen_by_extension_or_none() {
    let fx = Fixture::new();
    fx.file("job.py", "");
    fx.file("lib.mjs", "");
    make_executable(&fx.root().join("run"));
    let apps = fx.load_ok(
        r#"
[[apps]]
script = "job.py"
[[apps]]
script = "lib.mjs"
[[apps]]
script = "run"
"#,
    );
    let interpreters: Vec<Option<&str>> = apps.iter().map(|a| a.interpreter.as_deref()).collect();
    assert_eq!(interpreters, [Some("python3"), Some("node"), None]);
}

#[test]
fn env_profile_is_merged_over_env() {
    let fx = Fixture::new();
    let text = r#"
[[apps]]
script = "app.js"
env = { PORT = "3000", MODE = "dev" }
env_production = { MODE = "prod", EXTRA = 1 }
"#;
    let plain = fx.load("ecosystem.toml", text, &opts()).unwrap();
    assert_eq!(plain[0].env, env(&[("MODE", "dev"), ("PORT", "3000")]));

    let production = LoadOptions {
        env_profile: Some("production".into()),
        ..opts()
    };
    let merged = fx.load("ecosystem.toml", text, &production).unwrap();
    assert_eq!(
        merged[0].env,
        env(&[("EXTRA", "1"), ("MODE", "prod"), ("PORT", "3000")])
    );
    // The profile is remembered (describe shows it, the dump keeps it).
    assert_eq!(merged[0].env_profile.as_deref(), Some("production"));
    assert_eq!(plain[0].env_profile, None);

    let staging = LoadOptions {
        env_profile: Some("staging".into()),
        ..opts()
    };
    let errors = fx.errors_with("ecosystem.toml", text, &staging);
    assert_eq!(
        errors,
        [
            "ecosystem.toml: --env: no app in this file defines `env_staging` (requested with --env staging)"
        ]
    );
}

#[test]
fn instances_max_and_negative_use_the_cpu_count() {
    let fx = Fixture::new();
    let apps = fx.load_ok(
        r#"
[[apps]]
name = "a"
script = "app.js"
instances = "max"
[[apps]]
name = "b"
script = "app.js"
instances = -2
[[apps]]
name = "c"
script = "app.js"
instances = "-1"
[[apps]]
name = "d"
script = "app.js"
instances = "4"
"#,
    );
    let counts: Vec<u32> = apps.iter().map(|a| a.instances).collect();
    assert_eq!(counts, [8, 6, 7, 4]);
}

#[test]
fn instances_out_of_range_are_refused() {
    let fx = Fixture::new();
    let errors = fx.errors(
        r#"[[apps]]
name = "a"
script = "app.js"
instances = 0
[[apps]]
name = "b"
script = "app.js"
instances = 5000
[[apps]]
name = "c"
script = "app.js"
instances = true
"#,
    );
    assert_eq!(
        errors,
        [
            "ecosystem.toml:4:13: apps[0].instances: instances must be at least 1 (got 0)",
            "ecosystem.toml:8:13: apps[1].instances: instances must be at most 1024 (got 5000); that many processes is surely a mistake",
            "ecosystem.toml:12:13: apps[2].instances: expected a number of instances, \"max\" or a negative number (CPUs minus n), got a boolean",
        ]
    );
}

#[test]
fn durations_accept_units_and_milliseconds_and_refuse_absurd_values() {
    let fx = Fixture::new();
    let apps = fx.load_ok(
        r#"
[[apps]]
script = "app.js"
min_uptime = "1m"
restart_delay = "500ms"
kill_timeout = 3000
exp_backoff_restart_delay = 0
"#,
    );
    assert_eq!(apps[0].min_uptime_ms, 60_000);
    assert_eq!(apps[0].restart_delay_ms, 500);
    assert_eq!(apps[0].kill_timeout_ms, 3000);
    assert_eq!(
        apps[0].exp_backoff_restart_delay_ms, None,
        "0 means no backoff"
    );

    let errors = fx.errors(
        r#"[[apps]]
script = "app.js"
kill_timeout = "25h"
min_uptime = -5
restart_delay = "soon"
exp_backoff_restart_delay = "16m"
max_restarts = 2000000
autorestart = "yes"
"#,
    );
    assert_eq!(
        errors,
        [
            "ecosystem.toml:3:16: apps[0].kill_timeout: `kill_timeout` must be at most 24h (got 25h)",
            "ecosystem.toml:4:14: apps[0].min_uptime: `min_uptime` must not be negative (got -5)",
            "ecosystem.toml:5:17: apps[0].restart_delay: invalid duration `soon`: expected a whole number with an optional unit ms, s, m or h (e.g. \"10s\")",
            "ecosystem.toml:6:29: apps[0].exp_backoff_restart_delay: `exp_backoff_restart_delay` must be at most 15m (got 16m)",
            "ecosystem.toml:7:16: apps[0].max_restarts: `max_restarts` must be at most 1000000 (got 2000000)",
            "ecosystem.toml:8:15: apps[0].autorestart: expected a boolean (true or false), got a string",
        ]
    );
}

#[test]
fn log_keys_resolve_against_cwd_and_translate_pm2_dates() {
    let fx = Fixture::new();
    fx.file("srv/app.js", "");
    let apps = fx.load_ok(
        r#"
[[apps]]
name = "a"
script = "app.js"
cwd = "srv"
out_file = "logs/out.log"
error = "/dev/null"
log_file = "/var/tmp/all.log"
combine_logs = true
log_date_format = "YYYY-MM-DD HH:mm"
log_type = "json"
log_max_size = "1M"
log_retain = 3
log_compress = true

[[apps]]
name = "b"
script = "app.js"
disable_logs = true
time = true
log_max_size = 0
"#,
    );
    let a = &apps[0].logs;
    assert_eq!(a.out_file, Some(fx.root().join("srv/logs/out.log")));
    assert_eq!(a.error_file, Some(PathBuf::from("/dev/null")));
    assert_eq!(a.log_file, Some(PathBuf::from("/var/tmp/all.log")));
    assert!(a.merge_logs && a.json && a.time);
    assert_eq!(a.date_format.as_deref(), Some("%Y-%m-%d %H:%M"));
    assert_eq!(
        (a.max_size, a.retain, a.compress),
        (Some(1 << 20), Some(3), Some(true))
    );
    let b = &apps[1].logs;
    assert_eq!(b.out_file, Some(PathBuf::from("/dev/null")));
    assert_eq!(b.error_file, Some(PathBuf::from("/dev/null")));
    assert!(b.time && !b.json && b.date_format.is_none());
    assert_eq!(b.max_size, Some(0));
}

#[test]
fn bad_log_values_are_refused_with_the_key() {
    let fx = Fixture::new();
    let errors = fx.errors(
        r#"[[apps]]
script = "app.js"
log_type = "xml"
log_max_size = "12"
log_retain = -1
log_date_format = "%Y %!"
out_file = ""
time = "yes"
"#,
    );
    assert_eq!(errors.len(), 6, "{errors:#?}");
    assert!(errors[0].starts_with("ecosystem.toml:3:12: apps[0].log_type: invalid log_type `xml`"));
    assert!(
        errors[1].contains(
            "apps[0].log_max_size: `log_max_size` must be 0 (never rotate) or at least 1K"
        )
    );
    assert!(errors[2].contains("apps[0].log_retain: `log_retain` must not be negative"));
    assert!(errors[3].contains("apps[0].log_date_format: invalid log_date_format `%Y %!`"));
    assert!(errors[4].contains("apps[0].out_file: `out_file` must not be empty"));
    assert!(errors[5].contains("apps[0].time: expected a boolean"));
    let dir = fx.errors("[[apps]]\nscript = \"app.js\"\nout_file = \".\"\n");
    assert!(
        dir[0].contains("`out_file`") && dir[0].contains("is a directory"),
        "{dir:?}"
    );
}

#[test]
fn daemon_log_defaults_come_from_the_environment() {
    let none = crate::log_defaults(|_| None).unwrap();
    assert_eq!(
        (none.max_size, none.retain, none.compress, none.max_line),
        (10 << 20, 5, false, 1 << 20)
    );
    let set = crate::log_defaults(|k| {
        Some(
            match k {
                "PM2RS_LOG_MAX_SIZE" => "2M",
                "PM2RS_LOG_RETAIN" => "2",
                "PM2RS_LOG_COMPRESS" => "true",
                _ => "4K",
            }
            .to_string(),
        )
    })
    .unwrap();
    assert_eq!(
        (set.max_size, set.retain, set.compress, set.max_line),
        (2 << 20, 2, true, 4096)
    );
    let err = crate::log_defaults(|k| (k == "PM2RS_LOG_RETAIN").then(|| "many".to_string()));
    assert!(err.unwrap_err().starts_with("PM2RS_LOG_RETAIN=\"many\""));
}

#[test]
fn wrong_duration_type_says_what_was_expected() {
    let fx = Fixture::new();
    let errors = fx.errors("[[apps]]\nscript = \"app.js\"\nkill_timeout = true\n");
    assert_eq!(
        errors,
        [
            "ecosystem.toml:3:16: apps[0].kill_timeout: expected a duration like \"10s\" or milliseconds, got a boolean"
        ]
    );
}

#[test]
fn unknown_key_gets_a_suggestion() {
    let fx = Fixture::new();
    let errors = fx.errors("[[apps]]\nscript = \"app.js\"\nmax_restart = 3\nfrobnicate = 1\n");
    assert_eq!(
        errors,
        [
            "ecosystem.toml:3:1: apps[0].max_restart: unknown key `max_restart`; did you mean `max_restarts`?",
            "ecosystem.toml:4:1: apps[0].frobnicate: unknown key `frobnicate`",
        ]
    );
}

#[test]
fn all_errors_of_a_file_are_reported_at_once_in_file_order() {
    let fx = Fixture::new();
    let errors = fx.errors(
        r#"[[apps]]
name = "api"
script = "app.js"
instances = 0
max_restart = 3

[[apps]]
name = "a/b"
script = "app.js"
env = { PORT = [1, 2] }
kill_timeout = true
"#,
    );
    assert_eq!(
        errors,
        [
            "ecosystem.toml:4:13: apps[0].instances: instances must be at least 1 (got 0)",
            "ecosystem.toml:5:1: apps[0].max_restart: unknown key `max_restart`; did you mean `max_restarts`?",
            "ecosystem.toml:8:8: apps[1].name: invalid name `a/b`: must not contain `/`",
            "ecosystem.toml:10:16: apps[1].env.PORT: expected a string, number or boolean, got an array",
            "ecosystem.toml:11:16: apps[1].kill_timeout: expected a duration like \"10s\" or milliseconds, got a boolean",
        ]
    );
}

#[test]
fn errors_carry_structured_fields() {
    let fx = Fixture::new();
    let path = fx.file("eco.toml", "[[apps]]\nscript = \"app.js\"\ninstances = 0\n");
    let errors = load_with(&path, &opts(), Some(&fx.path_var)).unwrap_err();
    assert_eq!(errors.errors.len(), 1);
    let e = &errors.errors[0];
    assert_eq!(e.file.as_deref(), Some(path.as_path()));
    assert_eq!((e.line, e.column), (Some(3), Some(13)));
    assert_eq!(e.key.as_deref(), Some("apps[0].instances"));
    assert_eq!(e.message, "instances must be at least 1 (got 0)");
}

#[test]
fn duplicate_names_are_refused_on_the_second_occurrence() {
    let fx = Fixture::new();
    let errors = fx.errors(
        r#"[[apps]]
name = "app"
script = "app.js"

[[apps]]
script = "app.js"

[[apps]]
name = "app"
script = "app.js"
"#,
    );
    assert_eq!(
        errors,
        [
            "ecosystem.toml:6:10: apps[1].name: duplicate app name `app` (first defined at line 2)",
            "ecosystem.toml:9:8: apps[2].name: duplicate app name `app` (first defined at line 2)",
        ]
    );
}

#[test]
fn bad_names_and_namespaces_are_refused() {
    let fx = Fixture::new();
    let errors = fx.errors(
        r#"[[apps]]
name = ".."
script = "app.js"
[[apps]]
name = "x"
namespace = "my space"
script = "app.js"
[[apps]]
name = ""
script = "app.js"
"#,
    );
    assert_eq!(
        errors,
        [
            "ecosystem.toml:2:8: apps[0].name: invalid name `..`: must not be `.` or `..`",
            "ecosystem.toml:6:13: apps[1].namespace: invalid namespace `my space`: must not contain whitespace or control characters",
            "ecosystem.toml:9:8: apps[2].name: invalid name ``: must not be empty",
        ]
    );
}

#[test]
fn missing_script_key_and_missing_script_file() {
    let fx = Fixture::new();
    let errors =
        fx.errors("[[apps]]\nname = \"a\"\n\n[[apps]]\nname = \"b\"\nscript = \"nope.js\"\n");
    let missing = fx.root().join("nope.js");
    assert_eq!(
        errors,
        [
            "ecosystem.toml:1:1: apps[0]: missing required key `script`".to_string(),
            format!(
                "ecosystem.toml:6:10: apps[1].script: script `{}` does not exist",
                missing.display()
            ),
        ]
    );
}

#[test]
fn script_run_directly_must_be_executable() {
    let fx = Fixture::new();
    fx.file("run.sh", "#!/bin/sh\n");
    // Through bash (the default for .sh) it need not be executable...
    let apps = fx.load_ok("[[apps]]\nscript = \"run.sh\"\ninterpreter = \"/bin/sh\"\n");
    assert_eq!(apps[0].interpreter.as_deref(), Some("/bin/sh"));
    // ...but run directly it must be.
    let errors = fx.errors("[[apps]]\nscript = \"run.sh\"\ninterpreter = \"none\"\n");
    assert_eq!(
        errors,
        [format!(
            "ecosystem.toml:2:10: apps[0].script: script `{}` is not executable; make it executable (chmod +x) or set `interpreter`",
            fx.root().join("run.sh").display()
        )]
    );
    make_executable(&fx.root().join("run.sh"));
    let apps = fx.load_ok("[[apps]]\nscript = \"run.sh\"\ninterpreter = \"none\"\n");
    assert_eq!(apps[0].interpreter, None);
    assert_eq!(apps[0].script, fx.root().join("run.sh"));
}

#[test]
fn bare_program_names_are_looked_up_in_path() {
    let fx = Fixture::new();
    let apps = fx.load_ok("[[apps]]\nscript = \"mytool\"\nargs = \"60\"\n");
    assert_eq!(apps[0].script, fx.root().join("bin/mytool"));
    assert_eq!(apps[0].name, "mytool");
    assert_eq!(apps[0].args, ["60"]);

    // A file of that name in cwd wins over PATH.
    make_executable(&fx.root().join("mytool"));
    let apps = fx.load_ok("[[apps]]\nscript = \"mytool\"\n");
    assert_eq!(apps[0].script, fx.root().join("mytool"));

    let errors = fx.errors("[[apps]]\nscript = \"no-such-tool\"\n");
    assert_eq!(
        errors,
        [format!(
            "ecosystem.toml:2:10: apps[0].script: script `no-such-tool` not found in `{}` nor in PATH",
            fx.root().display()
        )]
    );
}

#[test]
fn the_apps_own_env_path_is_used_for_lookups() {
    let fx = Fixture::new();
    let other = fx.root().join("other-bin");
    std::fs::create_dir(&other).unwrap();
    make_executable(&other.join("special"));
    let text = format!(
        "[[apps]]\nscript = \"special\"\nenv = {{ PATH = \"{}\" }}\n",
        other.display()
    );
    let apps = fx.load_ok(&text);
    assert_eq!(apps[0].script, other.join("special"));
}

#[test]
fn missing_interpreter_is_explained() {
    let fx = Fixture::new();
    fx.file("tool.rb", "");
    let errors = fx.errors(
        "[[apps]]\nscript = \"tool.rb\"\n\n[[apps]]\nname = \"b\"\nscript = \"app.js\"\ninterpreter = \"bun\"\n",
    );
    assert_eq!(
        errors,
        [
            "ecosystem.toml:2:10: apps[0].script: interpreter `ruby` (chosen for `.rb` scripts) not found in PATH; set `interpreter` to a full path, or to \"none\" to run the script directly",
            "ecosystem.toml:7:15: apps[1].interpreter: interpreter `bun` not found in PATH; set `interpreter` to a full path",
        ]
    );
}

#[test]
fn cwd_is_relative_to_the_file_and_must_exist() {
    let fx = Fixture::new();
    fx.file("sub/app.js", "");
    let apps = fx.load_ok("[[apps]]\nscript = \"app.js\"\ncwd = \"./sub/../sub\"\n");
    assert_eq!(apps[0].cwd, fx.root().join("sub"));
    assert_eq!(apps[0].script, fx.root().join("sub/app.js"));

    let errors = fx.errors("[[apps]]\nscript = \"app.js\"\ncwd = \"missing\"\n");
    assert_eq!(
        errors,
        [format!(
            "ecosystem.toml:3:7: apps[0].cwd: working directory `{}` does not exist",
            fx.root().join("missing").display()
        )]
    );
}

#[test]
fn not_yet_supported_keys_are_refused_unless_harmless() {
    let fx = Fixture::new();
    let apps = fx.load_ok(
        r#"
[[apps]]
script = "app.js"
watch = false
ignore_watch = ["node_modules"]
vizion = false
source_map_support = true
merge_logs = false
autostart = true
"#,
    );
    assert_eq!(apps.len(), 1);

    let errors = fx.errors(
        r#"[[apps]]
script = "app.js"
watch = true
max_memory_restart = "200M"
treekill = false
"#,
    );
    assert_eq!(
        errors,
        [
            "ecosystem.toml:5:1: apps[0].treekill: `treekill` is not supported yet by pm2rs (remove it or set it to true)",
        ]
    );
}

#[test]
fn cron_restart_takes_5_or_6_fields_and_refuses_the_rest_with_the_key() {
    let fx = Fixture::new();
    let apps = fx.load_ok(
        r#"
[[apps]]
name = "five"
script = "app.js"
cron_restart = "0 3 * * *"
[[apps]]
name = "six"
script = "app.js"
cron = " */10 * * * * * "
[[apps]]
name = "nickname"
script = "app.js"
cron_restart = "@daily"
[[apps]]
name = "off"
script = "app.js"
cron_restart = false
[[apps]]
name = "empty"
script = "app.js"
cron = ""
"#,
    );
    let crons: Vec<Option<&str>> = apps.iter().map(|a| a.cron_restart.as_deref()).collect();
    assert_eq!(
        crons,
        [
            Some("0 3 * * *"),
            Some("*/10 * * * * *"),
            Some("@daily"),
            None,
            None
        ]
    );

    let errors = fx.errors(
        r#"[[apps]]
script = "app.js"
cron_restart = "every day"
[[apps]]
name = "b"
script = "app.js"
cron = "61 * * * *"
[[apps]]
name = "c"
script = "app.js"
cron_restart = "0 0 0 1 1 * 2030"
[[apps]]
name = "d"
script = "app.js"
cron_restart = "0 0 30 2 *"
[[apps]]
name = "e"
script = "app.js"
cron_restart = true
[[apps]]
name = "f"
script = "app.js"
cron_restart = "* * * * *"
cron = "* * * * *"
"#,
    );
    let hint = "expected 5 fields (minute hour day month weekday) or 6 (seconds first), e.g. \"0 3 * * *\"";
    assert_eq!(
        errors,
        [
            format!("ecosystem.toml:3:16: apps[0].cron_restart: invalid `cron_restart` `every day`: it has 2 fields; {hint}"),
            format!("ecosystem.toml:7:8: apps[1].cron: invalid `cron` `61 * * * *`: number out of bounds (seconds and minutes are 0-59, hours 0-23, days 1-31, months 1-12, weekdays 0-7); {hint}"),
            format!("ecosystem.toml:11:16: apps[2].cron_restart: invalid `cron_restart` `0 0 0 1 1 * 2030`: it has 7 fields; {hint}"),
            format!("ecosystem.toml:15:16: apps[3].cron_restart: invalid `cron_restart` `0 0 30 2 *`: it matches no date; {hint}"),
            "ecosystem.toml:19:16: apps[4].cron_restart: expected a cron expression like \"0 3 * * *\", got a boolean".to_string(),
            "ecosystem.toml:24:1: apps[5].cron: `cron` and `cron_restart` both set `cron_restart`; keep only one".to_string(),
        ]
    );
}

#[test]
fn args_signals_exit_codes_and_exec_modes() {
    let fx = Fixture::new();
    let apps = fx.load_ok(
        r#"
[[apps]]
name = "a"
script = "app.js"
args = ["--n", 3, true]
kill_signal = 15
stop_exit_codes = 0
exec_mode = "cluster_mode"
[[apps]]
name = "b"
script = "app.js"
args = 'say "hi there"'
kill_signal = "sigusr2"
exec_mode = "fork_mode"
"#,
    );
    assert_eq!(apps[0].args, ["--n", "3", "true"]);
    assert_eq!(apps[0].kill_signal, "SIGTERM");
    assert_eq!(apps[0].stop_exit_codes, [0]);
    assert_eq!(apps[0].exec_mode, ExecMode::Cluster);
    assert_eq!(apps[1].args, ["say", "hi there"]);
    assert_eq!(apps[1].kill_signal, "SIGUSR2");
    assert_eq!(apps[1].exec_mode, ExecMode::Fork);

    let errors = fx.errors(
        r#"[[apps]]
script = "app.js"
kill_signal = "SIGNOPE"
stop_exit_codes = [1, 300]
exec_mode = "pool"
args = "unterminated 'quote"
"#,
    );
    assert_eq!(
        errors,
        [
            "ecosystem.toml:3:15: apps[0].kill_signal: `SIGNOPE` is not a signal name (expected e.g. \"SIGINT\", \"SIGTERM\" or \"SIGUSR2\")",
            "ecosystem.toml:4:23: apps[0].stop_exit_codes[1]: exit codes are 0 to 255 (got 300)",
            "ecosystem.toml:5:13: apps[0].exec_mode: invalid exec_mode `pool`: expected \"fork\" or \"cluster\"",
            "ecosystem.toml:6:8: apps[0].args: unterminated ' quote in `unterminated 'quote`",
        ]
    );
}

#[test]
fn aliases_work_but_not_together_with_their_canonical_key() {
    let fx = Fixture::new();
    let apps = fx.load_ok("[[apps]]\nexec = \"app.js\"\nnode_args = \"--inspect\"\n");
    assert_eq!(apps[0].interpreter_args, ["--inspect"]);
    let errors =
        fx.errors("[[apps]]\nscript = \"app.js\"\ninterpreter_args = \"-a\"\nnode_args = \"-b\"\n");
    assert_eq!(
        errors,
        [
            "ecosystem.toml:4:1: apps[0].node_args: `node_args` and `interpreter_args` both set `interpreter_args`; keep only one"
        ]
    );
}

#[test]
fn toml_syntax_errors_name_the_position() {
    let fx = Fixture::new();
    let errors = fx.errors("[[apps]]\nscript = \"app.js\"\ninstances = = 3\n\n[[apps\n");
    assert!(
        errors[0].starts_with("ecosystem.toml:3:13: extra `=`"),
        "{errors:?}"
    );
    assert!(
        errors.last().unwrap().starts_with("ecosystem.toml:5:"),
        "later syntax errors are reported too: {errors:?}"
    );
}

#[test]
fn file_level_mistakes() {
    let fx = Fixture::new();
    assert_eq!(
        fx.errors("script = \"app.js\"\n"),
        [
            "ecosystem.toml:1:1: script: unknown top-level key `script`: app settings go inside an `[[apps]]` table",
            "ecosystem.toml: no apps: add an `[[apps]]` table with a `script`",
        ]
    );
    assert_eq!(
        fx.errors("[apps]\nscript = \"app.js\"\n"),
        ["ecosystem.toml:1:1: apps: expected an array of apps (`[[apps]]` tables), got a table"]
    );
    assert_eq!(
        fx.errors("app = []\n"),
        [
            "ecosystem.toml:1:1: app: unknown top-level key `app` (only `apps` is allowed); did you mean `apps`?",
            "ecosystem.toml: no apps: add an `[[apps]]` table with a `script`",
        ]
    );
    assert_eq!(
        fx.errors("apps = []\n"),
        ["ecosystem.toml:1:8: apps: no apps defined"]
    );
}

#[test]
fn pm2_json_ecosystem_is_accepted() {
    let fx = Fixture::new();
    let text = r#"{
  "apps": [
    {
      "name": "web",
      "script": "app.js",
      "instances": "max",
      "exec_mode": "cluster_mode",
      "node_args": "--max-old-space-size=512",
      "watch": false,
      "merge_logs": false,
      "max_restarts": 10,
      "min_uptime": "5s",
      "kill_timeout": 3000,
      "env": { "NODE_ENV": "development", "PORT": 3000 },
      "env_production": { "NODE_ENV": "production" },
      "cron_restart": null
    }
  ]
}"#;
    let production = LoadOptions {
        env_profile: Some("production".into()),
        ..opts()
    };
    let apps = fx.load("ecosystem.json", text, &production).unwrap();
    assert_eq!(apps.len(), 1);
    let web = &apps[0];
    assert_eq!(web.name, "web");
    assert_eq!(web.instances, 8);
    assert_eq!(web.exec_mode, ExecMode::Cluster);
    assert_eq!(web.interpreter.as_deref(), Some("node"));
    assert_eq!(web.interpreter_args, ["--max-old-space-size=512"]);
    assert_eq!(web.max_restarts, 10);
    assert_eq!(web.min_uptime_ms, 5000);
    assert_eq!(web.kill_timeout_ms, 3000);
    assert_eq!(
        web.env,
        env(&[("NODE_ENV", "production"), ("PORT", "3000")])
    );
    assert_eq!(web.source, Some(fx.root().join("ecosystem.json")));

    // A bare array of apps (PM2's older process.json) works too.
    let apps = fx
        .load("process.json", r#"[{"script": "app.js"}]"#, &opts())
        .unwrap();
    assert_eq!(apps[0].name, "app");
}

#[test]
fn pm2_json_errors_have_line_and_column() {
    let fx = Fixture::new();
    let text = r#"{
  "apps": [
    {
      "name": "web",
      "script": "app.js",
      "instances": 0,
      "max_restart": 3,
      "max_memory_restart": "300M"
    },
    { "name": "web", "script": "app.js", "env": { "A": { "deep": 1 } } }
  ],
  "deploy": {}
}"#;
    let errors = fx.errors_with("ecosystem.json", text, &opts());
    assert_eq!(
        errors,
        [
            "ecosystem.json:6:20: apps[0].instances: instances must be at least 1 (got 0)",
            "ecosystem.json:7:7: apps[0].max_restart: unknown key `max_restart`; did you mean `max_restarts`?",
            "ecosystem.json:10:56: apps[1].env.A: expected a string, number or boolean, got an object",
            "ecosystem.json:12:3: deploy: `deploy` (PM2 deployments) is not supported yet by pm2rs; remove it",
        ]
    );
}

#[test]
fn pm2_json_duplicate_names_point_at_both_lines() {
    let fx = Fixture::new();
    let text = "{\"apps\": [\n  {\"name\": \"w\", \"script\": \"app.js\"},\n  {\"name\": \"w\", \"script\": \"app.js\"}\n]}";
    assert_eq!(
        fx.errors_with("ecosystem.json", text, &opts()),
        ["ecosystem.json:3:12: apps[1].name: duplicate app name `w` (first defined at line 2)"]
    );
}

#[test]
fn pm2_json_syntax_error_has_a_position() {
    let fx = Fixture::new();
    let text = "{\n  \"apps\": [\n    { \"script\": \"app.js\" \"name\": \"x\" }\n  ]\n}";
    let errors = fx.errors_with("ecosystem.json", text, &opts());
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("ecosystem.json:3:"),
        "no position: {errors:?}"
    );
    assert!(errors[0].contains("expected `,` or `}`"), "{errors:?}");
}

#[test]
fn only_keeps_the_named_apps_and_checks_names() {
    let fx = Fixture::new();
    let text = r#"
[[apps]]
name = "a"
script = "app.js"
[[apps]]
name = "b"
script = "app.js"
[[apps]]
name = "c"
script = "not-built-yet.js"
"#;
    let only = LoadOptions {
        only: vec!["b".into(), "a".into()],
        ..opts()
    };
    let apps = fx.load("ecosystem.toml", text, &only).unwrap();
    let names: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        ["a", "b"],
        "file order, unselected app's missing script ignored"
    );

    let unknown = LoadOptions {
        only: vec!["a".into(), "zz".into()],
        ..opts()
    };
    assert_eq!(
        fx.errors_with("ecosystem.toml", text, &unknown),
        ["ecosystem.toml: --only: no app named `zz` in this file (its apps: a, b, c)"]
    );
}

#[test]
fn unreadable_and_non_utf8_files() {
    let fx = Fixture::new();
    let missing = fx.root().join("absent.toml");
    let errors = load_with(&missing, &opts(), Some(&fx.path_var)).unwrap_err();
    assert!(
        errors
            .to_string()
            .contains("cannot read the ecosystem file"),
        "{errors}"
    );
    let path = fx.root().join("bad.toml");
    std::fs::write(&path, b"[[apps]]\nscript = \"\xff\"\n").unwrap();
    let errors = load_with(&path, &opts(), Some(&fx.path_var)).unwrap_err();
    assert_eq!(errors.errors[0].line, Some(2));
    assert_eq!(errors.errors[0].column, Some(11));
}

#[test]
fn app_from_script_builds_the_same_spec() {
    let fx = Fixture::new();
    let opts = ScriptOptions {
        name: Some("api".into()),
        instances: Some("max".into()),
        args: vec!["a".into(), "b c".into()],
        namespace: Some("web".into()),
        cron_restart: Some("0 3 * * *".into()),
        ..fx.script_opts()
    };
    let app = fx.start_script("app.js", &opts).unwrap();
    assert_eq!(app.name, "api");
    assert_eq!(app.cron_restart.as_deref(), Some("0 3 * * *"));
    assert_eq!(app.namespace, "web");
    assert_eq!(app.instances, 4);
    assert_eq!(app.args, ["a", "b c"]);
    assert_eq!(app.script, fx.root().join("app.js"));
    assert_eq!(app.interpreter.as_deref(), Some("node"));
    assert_eq!(app.cwd, fx.root());
    assert_eq!(app.source, None);
    assert_eq!(app.kill_timeout_ms, 1600);

    let direct = fx.start_script("mytool", &fx.script_opts()).unwrap();
    assert_eq!(direct.script, fx.root().join("bin/mytool"));
    assert_eq!(direct.name, "mytool");
    assert_eq!(direct.interpreter, None);
}

#[test]
fn app_from_script_errors_are_keyed_by_flag_and_all_reported() {
    let fx = Fixture::new();
    let opts = ScriptOptions {
        name: Some("a/b".into()),
        instances: Some("0".into()),
        interpreter: Some("deno".into()),
        cron_restart: Some("* * *".into()),
        ..fx.script_opts()
    };
    let errors = fx.start_script("app.js", &opts).unwrap_err();
    assert!(
        errors
            .errors
            .iter()
            .all(|e| e.file.is_none() && e.line.is_none())
    );
    assert_eq!(
        fx.strip(&errors),
        [
            "--name: invalid name `a/b`: must not contain `/`",
            "--instances: instances must be at least 1 (got 0)",
            "--cron-restart: invalid `cron_restart` `* * *`: it has 3 fields; expected 5 fields (minute hour day month weekday) or 6 (seconds first), e.g. \"0 3 * * *\"",
            "--interpreter: interpreter `deno` not found in PATH; set `interpreter` to a full path",
        ]
    );

    let errors = fx
        .start_script("missing.js", &fx.script_opts())
        .unwrap_err();
    assert_eq!(
        fx.strip(&errors),
        [format!(
            "script: script `{}` does not exist",
            fx.root().join("missing.js").display()
        )]
    );
    let errors = fx.start_script("my app.js", &fx.script_opts()).unwrap_err();
    assert!(
        errors
            .to_string()
            .starts_with("script: cannot use the script's file name as the app name"),
        "{errors}"
    );
}

#[test]
fn cluster_keys_are_checked_with_file_line_and_key() {
    let fx = Fixture::new();
    let errors = fx.errors(
        r#"[[apps]]
name = "a"
script = "app.js"
port = 3000
[[apps]]
name = "b"
script = "app.js"
exec_mode = "cluster"
port = 70000
listen = ["localhost:80", 3, "0.0.0.0:0"]
cluster_socket = "balanced"
instance_var = "1BAD"
increment_var = "A-B"
wait_ready = "yes"
[[apps]]
name = "c"
script = "app.js"
exec_mode = "cluster"
port = 3000
listen = "0.0.0.0:3000"
"#,
    );
    assert_eq!(
        errors,
        [
            "ecosystem.toml:4:8: apps[0].port: `port` needs exec_mode = \"cluster\" (the daemon binds it and hands it to every instance); in fork mode let each instance bind its own port, e.g. with increment_var = \"PORT\"",
            "ecosystem.toml:9:8: apps[1].port: `port` must be 1 to 65535 (got 70000)",
            "ecosystem.toml:10:11: apps[1].listen[0]: invalid listen address `localhost:80`: expected IP:port, e.g. \"127.0.0.1:3000\" or \"[::]:8443\"",
            "ecosystem.toml:10:27: apps[1].listen[1]: expected an address like \"127.0.0.1:3000\", got an integer",
            "ecosystem.toml:10:30: apps[1].listen[2]: the port of a `listen` address must not be 0",
            "ecosystem.toml:11:18: apps[1].cluster_socket: invalid cluster_socket `balanced`: expected \"reuseport\" (one socket per instance) or \"shared\"",
            "ecosystem.toml:12:16: apps[1].instance_var: invalid `instance_var` `1BAD`: a variable name is letters, digits and `_`",
            "ecosystem.toml:13:17: apps[1].increment_var: invalid `increment_var` `A-B`: a variable name is letters, digits and `_`",
            "ecosystem.toml:14:14: apps[1].wait_ready: expected a boolean (true or false), got a string",
            "ecosystem.toml:20:10: apps[2].listen: address 0.0.0.0:3000 is listed twice",
        ]
    );
}

#[test]
fn port_on_the_command_line_means_cluster_mode() {
    let fx = Fixture::new();
    let opts = ScriptOptions {
        cwd: fx.root().to_path_buf(),
        instances: Some("2".into()),
        port: Some("8085".into()),
        ..ScriptOptions::default()
    };
    let app = app_from_script_with("app.js", &opts, Some(&fx.path_var)).unwrap();
    assert_eq!(app.exec_mode, ExecMode::Cluster);
    assert_eq!(app.listen, vec!["0.0.0.0:8085".parse().unwrap()]);
    // As with PM2, `-i` alone puts a Node script in cluster mode, not other scripts.
    let node = ScriptOptions {
        port: None,
        ..opts.clone()
    };
    let app = app_from_script_with("app.js", &node, Some(&fx.path_var)).unwrap();
    assert_eq!((app.exec_mode, app.listen.len()), (ExecMode::Cluster, 0));
    fx.file("tool.py", "print(1)\n");
    let app = app_from_script_with("tool.py", &node, Some(&fx.path_var)).unwrap();
    assert_eq!(app.exec_mode, ExecMode::Fork);
    let bad = ScriptOptions {
        port: Some("http".into()),
        ..opts
    };
    let err = app_from_script_with("app.js", &bad, Some(&fx.path_var)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "--port: expected a port number, got a string"
    );
}

#[test]
fn max_memory_restart_takes_sizes_and_refuses_what_cannot_be_a_limit() {
    let fx = Fixture::new();
    let apps = fx.load_ok(
        "[[apps]]\nname = \"a\"\nscript = \"app.js\"\nmax_memory_restart = \"1G\"\n\n[[apps]]\nname = \"b\"\nscript = \"app.js\"\nmax_memory_restart = 104857600\n",
    );
    assert_eq!(apps[0].max_memory_restart, Some(1 << 30));
    assert_eq!(apps[1].max_memory_restart, Some(100 << 20));
    let errors = fx.errors(
        "[[apps]]\nname = \"a\"\nscript = \"app.js\"\nmax_memory_restart = \"100K\"\n\n[[apps]]\nname = \"b\"\nscript = \"app.js\"\nmax_memory_restart = \"lots\"\n\n[[apps]]\nname = \"c\"\nscript = \"app.js\"\nmax_memory_restart = true\n",
    );
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors[0].starts_with("ecosystem.toml:4:")
            && errors[0].contains("apps[0].max_memory_restart")
            && errors[0].contains("at least 1M"),
        "{errors:?}"
    );
    assert!(
        errors[1].starts_with("ecosystem.toml:9:") && errors[1].contains("invalid size `lots`"),
        "{errors:?}"
    );
    assert!(
        errors[2].starts_with("ecosystem.toml:14:") && errors[2].contains("a size like"),
        "{errors:?}"
    );
}

#[test]
fn watch_takes_true_paths_and_globs_and_refuses_bad_ones() {
    let fx = Fixture::new();
    let apps = fx.load_ok(
        "[[apps]]\nname = \"a\"\nscript = \"app.js\"\nwatch = true\n\n[[apps]]\nname = \"b\"\nscript = \"app.js\"\nwatch = \"lib\"\nignore_watch = [\"*.log\", \"tmp/**\"]\n\n[[apps]]\nname = \"c\"\nscript = \"app.js\"\nwatch = false\n",
    );
    assert_eq!(apps[0].watch, vec![apps[0].cwd.clone()]);
    assert_eq!(apps[0].watch_delay_ms, 1000, "PM2's default quiet time");
    assert_eq!(apps[1].watch, vec![apps[1].cwd.join("lib")]);
    assert_eq!(apps[1].ignore_watch, ["*.log", "tmp/**"]);
    assert!(apps[2].watch.is_empty());
    let errors = fx.errors(
        "[[apps]]\nname = \"a\"\nscript = \"app.js\"\nwatch = 5\n\n[[apps]]\nname = \"b\"\nscript = \"app.js\"\nignore_watch = \"[oops\"\n",
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].starts_with("ecosystem.toml:4:") && errors[0].contains("apps[0].watch"),
        "{errors:?}"
    );
    assert!(
        errors[1].starts_with("ecosystem.toml:9:") && errors[1].contains("invalid glob `[oops`"),
        "{errors:?}"
    );
}
