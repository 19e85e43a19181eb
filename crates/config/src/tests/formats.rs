//! PM2's other formats: JavaScript (evaluated by the machine's real `node`), YAML, an ecosystem on
//! standard input, and `convert` (whose output must load as the same apps).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pm2rs_proto::{AppSpec, ExecMode};

use super::{Fixture, env, make_executable, opts};
use crate::convert::convert_file;
use crate::ecosystem::load_with;
use crate::resolve::find_in_path;
use crate::{ConfigErrors, LoadOptions, is_ecosystem_path, stdin_with};

/// The directory of the machine's `node`. A test that needs it fails (never passes) without it.
fn real_node_dir() -> PathBuf {
    find_in_path("node", std::env::var_os("PATH").as_deref())
        .and_then(|node| node.parent().map(Path::to_path_buf))
        .expect(
            "this test needs Node.js and `node` is not in PATH: install it (e.g. `apt-get install nodejs`)",
        )
}

impl Fixture {
    /// The real node's directory, then the fixture's fake programs.
    fn js_path(&self) -> OsString {
        std::env::join_paths([real_node_dir(), self.root().join("bin")]).unwrap()
    }

    fn load_js(
        &self,
        name: &str,
        contents: &str,
        opts: &LoadOptions,
    ) -> Result<Vec<AppSpec>, ConfigErrors> {
        let path = self.file(name, contents);
        load_with(&path, opts, Some(&self.js_path()))
    }

    fn js_errors(&self, name: &str, contents: &str, opts: &LoadOptions) -> Vec<String> {
        match self.load_js(name, contents, opts) {
            Ok(apps) => panic!("expected errors, got {apps:?}"),
            Err(e) => self.strip(&e),
        }
    }

    /// `contents` as `name`, and the same apps written as TOML, both loaded: the specs must be
    /// equal but for their source file.
    fn assert_same_as_toml(&self, name: &str, contents: &str, toml: &str) -> Vec<AppSpec> {
        let apps = self
            .load_js(name, contents, &opts())
            .unwrap_or_else(|e| panic!("{name} did not load:\n{e}"));
        let expected = self.load_js("expected.toml", toml, &opts()).unwrap();
        assert_eq!(
            without_source(apps.clone()),
            without_source(expected),
            "{name}"
        );
        assert_eq!(apps[0].source, Some(self.root().join(name)));
        apps
    }
}

fn without_source(mut apps: Vec<AppSpec>) -> Vec<AppSpec> {
    for app in &mut apps {
        app.source = None;
    }
    apps
}

/// The TOML twin of [`SEED_JS`].
const SEED_TOML: &str = r#"
[[apps]]
name = "api"
script = "app.js"
cwd = "sub"
args = ["--color", "red"]
instances = 2
exec_mode = "cluster"
max_restarts = 5
kill_timeout = 3000
env = { NODE_ENV = "development", PORT = 3000, FROM_ENV = "fallback" }
env_production = { NODE_ENV = "production" }

[[apps]]
name = "worker"
script = "app.js"
interpreter_args = "--max-old-space-size=128"
cron_restart = "0 3 * * *"
"#;

/// A PM2 ecosystem as people write them: `require`, `__dirname`, `process.env` with a default,
/// a harmless `watch: false`, aliases, and a helper function that is called, not exported.
const SEED_JS: &str = r#"const path = require('path');
const port = () => 3000;
module.exports = {
  apps: [
    {
      name: 'api',
      script: 'app.js',
      cwd: path.join(__dirname, 'sub'),
      args: ['--color', 'red'],
      instances: 2,
      exec_mode: 'cluster',
      max_restarts: 5,
      kill_timeout: 3000,
      watch: false,
      env: { NODE_ENV: 'development', PORT: port(), FROM_ENV: process.env.PM2RS_TEST_UNSET_VAR || 'fallback' },
      env_production: { NODE_ENV: 'production' },
    },
    { name: 'worker', script: 'app.js', node_args: '--max-old-space-size=128', cron: '0 3 * * *' },
  ],
};
"#;

#[test]
fn commonjs_ecosystem_config_js_gives_the_same_apps_as_toml() {
    let fx = Fixture::new();
    fx.file("sub/app.js", "");
    let apps = fx.assert_same_as_toml("ecosystem.config.js", SEED_JS, SEED_TOML);
    assert_eq!(apps[0].cwd, fx.root().join("sub"));
    assert_eq!(apps[0].env["PORT"], "3000");
    // `--env` and `--only` work as for any file.
    let production = LoadOptions {
        env_profile: Some("production".into()),
        only: vec!["api".into()],
        ..opts()
    };
    let apps = fx
        .load_js("ecosystem.config.js", SEED_JS, &production)
        .unwrap();
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0].env["NODE_ENV"], "production");
}

#[test]
fn esm_export_default_in_mjs_and_in_a_module_package() {
    let fx = Fixture::new();
    let toml = "[[apps]]\nname = \"esm\"\nscript = \"app.js\"\ninstances = 3\n";
    let esm = "import { join } from 'node:path';\nconst apps = [{ name: 'esm', script: join('.', 'app.js'), instances: 3 }];\nexport default { apps };\n";
    fx.assert_same_as_toml("ecosystem.config.mjs", esm, toml);
    // A `.js` in a `"type": "module"` package is ESM too (PM2 #4540, #5953: `require` fails there).
    fx.file("pkg/package.json", r#"{"type": "module"}"#);
    fx.file("pkg/app.js", "");
    let apps = fx
        .load_js("pkg/pm2.config.js", esm, &opts())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(apps[0].instances, 3);
    assert_eq!(apps[0].script, fx.root().join("pkg/app.js"));
    // Named exports only: `export const apps`.
    let named = "export const apps = [{ name: 'esm', script: 'app.js', instances: 3 }];\n";
    fx.assert_same_as_toml("named.config.mjs", named, toml);
}

#[test]
fn cjs_config_loads() {
    let fx = Fixture::new();
    let cjs = "module.exports = { apps: [{ name: 'c', script: 'app.js', max_restarts: 2 }] };\n";
    fx.assert_same_as_toml(
        "ecosystem.config.cjs",
        cjs,
        "[[apps]]\nname = \"c\"\nscript = \"app.js\"\nmax_restarts = 2\n",
    );
}

#[test]
fn a_config_that_throws_shows_nodes_message_and_the_file() {
    let fx = Fixture::new();
    let errors = fx.js_errors(
        "ecosystem.config.js",
        "const x = 1;\nthrow new Error('boom ' + x);\n",
        &opts(),
    );
    let text = errors.join("\n");
    assert!(
        text.starts_with("ecosystem.config.js: node could not evaluate the file:"),
        "{text}"
    );
    assert!(text.contains("Error: boom 1"), "{text}");
    assert!(
        text.contains("ecosystem.config.js:2"),
        "node's location is kept: {text}"
    );
    assert!(
        !text.contains("node:internal"),
        "node's internal frames are left out: {text}"
    );

    let errors = fx.js_errors(
        "ecosystem.config.js",
        "module.exports = {\n  apps: [{ name: 'a' script: 'app.js' }]\n};\n",
        &opts(),
    );
    let text = errors.join("\n");
    assert!(text.contains("SyntaxError"), "{text}");
    assert!(text.contains("ecosystem.config.js:2"), "{text}");

    // console.log is kept apart from the result; a write to fd 1 itself cannot be.
    let logs = "console.log('loading');\nmodule.exports = { apps: [{ script: 'app.js' }] };\n";
    assert_eq!(
        fx.load_js("ecosystem.config.js", logs, &opts())
            .unwrap()
            .len(),
        1
    );
    let raw = "require('fs').writeSync(1, 'hello\\n');\nmodule.exports = { apps: [] };\n";
    assert_eq!(
        fx.js_errors("ecosystem.config.js", raw, &opts()),
        [
            "ecosystem.config.js: node printed something else than the configuration on stdout (does the file write to file descriptor 1 itself?)"
        ]
    );
}

#[test]
fn a_config_that_never_ends_is_stopped_at_the_deadline_with_what_it_started() {
    let fx = Fixture::new();
    let pid_file = fx.root().join("child.pid");
    let js = format!(
        "const {{ spawn }} = require('child_process');\n\
         const child = spawn('sleep', ['1000'], {{ stdio: 'inherit' }});\n\
         require('fs').writeFileSync({:?}, String(child.pid));\n\
         while (true) {{}}\n",
        pid_file.display()
    );
    let quick = LoadOptions {
        js_timeout: Some(Duration::from_millis(1500)),
        ..opts()
    };
    let started = Instant::now();
    let errors = fx.js_errors("ecosystem.config.js", &js, &quick);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(
            "ecosystem.config.js: node did not finish evaluating the file within 1.5 s"
        ),
        "{errors:?}"
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("the config ran and started its child")
        .trim()
        .parse()
        .unwrap();
    let gone = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone() {
        assert!(
            Instant::now() < deadline,
            "the config's child {pid} is still running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn values_json_cannot_carry_and_key_errors_are_keyed_by_path_and_located_when_unambiguous() {
    let fx = Fixture::new();
    let js = "module.exports = { apps: [{\n  script: () => 'app.js',\n  env: { DB: process.env.PM2RS_TEST_UNSET_VAR, N: NaN },\n}] };\n";
    assert_eq!(
        fx.js_errors("ecosystem.config.js", js, &opts()),
        [
            "ecosystem.config.js:2:3: apps[0].script: the value is a function; an ecosystem holds data only (strings, numbers, booleans, arrays and objects)",
            "ecosystem.config.js:3:10: apps[0].env.DB: the value is undefined (an unset process.env variable?); give it a value, or null to leave the key unset",
            "ecosystem.config.js:3:48: apps[0].env.N: the value is NaN, not a finite number",
        ]
    );
    let js = "const a = { script: 'app.js', when: new Date(0) };\na.self = { a };\nmodule.exports = { apps: [a] };\n";
    assert_eq!(
        fx.js_errors("ecosystem.config.js", js, &opts()),
        [
            "ecosystem.config.js:1:31: apps[0].when: the value is a Date, not plain data; write a string, number, array or { ... } object",
            // `a` is never written as `a:` (shorthand): no line.
            "ecosystem.config.js: apps[0].self.a: the value contains itself (a circular reference)",
        ]
    );
    // Validation errors: the key path and the message of any format; the line of the key
    // when it is written once, none when it is written twice.
    let js = "const shared = { max_restarts: -1 };\nmodule.exports = {\n  apps: [\n    { ...shared, script: 'app.js', watch: true, instancez: 2 },\n    { ...shared, script: 'app.js', 'instancez': 3 },\n  ],\n};\n";
    assert_eq!(
        fx.js_errors("ecosystem.config.js", js, &opts()),
        [
            "ecosystem.config.js:1:18: apps[0].max_restarts: `max_restarts` must not be negative (got -1)",
            "ecosystem.config.js: apps[0].instancez: unknown key `instancez`; did you mean `instances`?",
            "ecosystem.config.js:1:18: apps[1].max_restarts: `max_restarts` must not be negative (got -1)",
            "ecosystem.config.js: apps[1].instancez: unknown key `instancez`; did you mean `instances`?",
        ]
    );
    let js = "module.exports = { apps: [{ name: 'w', script: 'app.js' }, { name: 'w', script: 'app.js' }] };\n";
    assert_eq!(
        fx.js_errors("ecosystem.config.js", js, &opts()),
        ["ecosystem.config.js: apps[1].name: duplicate app name `w` (first defined at apps[0])"]
    );
}

#[test]
fn a_missing_node_is_explained() {
    let fx = Fixture::new();
    let path = fx.file("ecosystem.config.js", "module.exports = { apps: [] };\n");
    let empty = fx.root().join("empty-bin");
    std::fs::create_dir(&empty).unwrap();
    let errors = load_with(&path, &opts(), Some(empty.as_os_str())).unwrap_err();
    let text = fx.strip(&errors).join("\n");
    assert!(text.starts_with("ecosystem.config.js: "), "{text}");
    assert!(
        text.contains("`node` was not found in PATH; install Node.js"),
        "{text}"
    );
}

#[test]
fn config_file_names_as_pm2_recognises_them() {
    for name in [
        "ecosystem.config.js",
        "pm2.config.js",
        "dir/app.config.cjs",
        "x.config.mjs",
        "APP.CONFIG.JS",
        "ecosystem.json",
        "ecosystem.yml",
        "deploy/app.yaml",
        "ecosystem.toml",
    ] {
        assert!(is_ecosystem_path(Path::new(name)), "{name} is a config");
    }
    for name in [
        "server.js",
        "server.mjs",
        "worker.cjs",
        "ecosystem.js",
        "config.js",
        "toml",
    ] {
        assert!(!is_ecosystem_path(Path::new(name)), "{name} is a script");
    }
}

const SEED_YAML: &str = "apps:\n  - name: api\n    script: app.js\n    cwd: sub\n    args: [--color, red]\n    instances: 2\n    exec_mode: cluster\n    max_restarts: 5\n    kill_timeout: 3000\n    watch: false\n    env:\n      NODE_ENV: development\n      PORT: 3000\n      FROM_ENV: fallback\n    env_production:\n      NODE_ENV: production\n  - name: worker\n    script: app.js\n    node_args: --max-old-space-size=128\n    cron_restart: \"0 3 * * *\"\n";

#[test]
fn yaml_ecosystem_gives_the_same_apps_as_toml() {
    let fx = Fixture::new();
    fx.file("sub/app.js", "");
    fx.assert_same_as_toml("ecosystem.yml", SEED_YAML, SEED_TOML);
    // A bare list and `.yaml` too.
    let apps = fx
        .load(
            "process.yaml",
            "- script: app.js\n  exec_mode: fork_mode\n",
            &opts(),
        )
        .unwrap();
    assert_eq!(apps[0].name, "app");
    assert_eq!(apps[0].exec_mode, ExecMode::Fork);
    // Anchors and merge keys, as PM2's js-yaml reads them.
    let text = "apps:\n  - &base\n    name: one\n    script: app.js\n    env: {MODE: a}\n  - <<: *base\n    name: two\n";
    let apps = fx.load("ecosystem.yaml", text, &opts()).unwrap();
    assert_eq!(apps[1].name, "two");
    assert_eq!(apps[1].env, env(&[("MODE", "a")]));
    assert_eq!(apps[1].script, fx.root().join("app.js"));
}

#[test]
fn yaml_errors_have_line_and_column() {
    let fx = Fixture::new();
    let text = "apps:\n  - name: web\n    script: app.js\n    instances: 0\n    max_memory_restart: 300M\n    env: {A: [1]}\n  - name: web\n    script: app.js\ndeploy: {}\n";
    assert_eq!(
        fx.errors_with("ecosystem.yml", text, &opts()),
        [
            "ecosystem.yml:4:16: apps[0].instances: instances must be at least 1 (got 0)",
            "ecosystem.yml:6:14: apps[0].env.A: expected a string, number or boolean, got a list",
            "ecosystem.yml:9:1: deploy: `deploy` (PM2 deployments) is not supported yet by pm2rs; remove it",
        ]
    );
    assert_eq!(
        fx.errors_with(
            "ecosystem.yml",
            "- {name: w, script: app.js}\n- name: w\n  script: app.js\n",
            &opts()
        ),
        ["ecosystem.yml:2:9: [1].name: duplicate app name `w` (first defined at line 1)"]
    );
    let errors = fx.errors_with(
        "ecosystem.yaml",
        "apps:\n  - script: app.js\n   name: x\n",
        &opts(),
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("ecosystem.yaml:3:"), "{errors:?}");
    assert_eq!(
        fx.errors_with("ecosystem.yml", "app:\n  - script: app.js\n", &opts()),
        [
            "ecosystem.yml:1:1: app: unknown top-level key `app` (only `apps` is allowed); did you mean `apps`?",
            "ecosystem.yml: no `apps` list: add `apps:` with an entry `- script: ...`",
        ]
    );
}

#[test]
fn stdin_is_toml_or_json_and_errors_name_it() {
    let fx = Fixture::new();
    let path = Some(fx.path_var.as_os_str());
    let toml = b"[[apps]]\nname = \"t\"\nscript = \"app.js\"\n".to_vec();
    let apps = stdin_with(toml, fx.root(), &opts(), path).unwrap();
    assert_eq!(apps[0].name, "t");
    assert_eq!(apps[0].script, fx.root().join("app.js"));
    assert_eq!(apps[0].source, None);
    let json = b"  {\"apps\": [{\"name\": \"j\", \"script\": \"app.js\"}]}".to_vec();
    assert_eq!(
        stdin_with(json, fx.root(), &opts(), path).unwrap()[0].name,
        "j"
    );
    let bad = b"[[apps]]\nscript = \"app.js\"\ninstances = 0\n".to_vec();
    let errors = stdin_with(bad, fx.root(), &opts(), path).unwrap_err();
    assert_eq!(
        errors.to_string(),
        "<stdin>:3:13: apps[0].instances: instances must be at least 1 (got 0)"
    );
    let bad = b"{\"apps\": [{\"script\": \"app.js\",}]}".to_vec();
    let errors = stdin_with(bad, fx.root(), &opts(), path).unwrap_err();
    assert!(errors.to_string().starts_with("<stdin>:1:"), "{errors}");
}

impl Fixture {
    /// Converts `name`, saves the result as `converted.toml` next to it and loads both: the
    /// specs must be equal but for their source file. Returns the TOML.
    fn assert_round_trip(&self, name: &str, contents: &str) -> String {
        let original = self.file(name, contents);
        let js_path = self.js_path();
        let toml = convert_file(&original, &opts(), Some(&js_path))
            .unwrap_or_else(|e| panic!("{name} did not convert:\n{e}"));
        let converted = self.file("converted.toml", &toml);
        let from_toml = load_with(&converted, &opts(), Some(&js_path))
            .unwrap_or_else(|e| panic!("the conversion of {name} does not load:\n{e}\n{toml}"));
        let from_original = load_with(&original, &opts(), Some(&js_path)).unwrap();
        assert_eq!(
            without_source(from_toml),
            without_source(from_original),
            "{toml}"
        );
        toml
    }
}

#[test]
fn convert_round_trips_js_json_and_yaml() {
    let fx = Fixture::new();
    fx.file("sub/app.js", "");
    let toml = fx.assert_round_trip("ecosystem.config.js", SEED_JS);
    assert!(
        toml.contains("\ninterpreter_args = \"--max-old-space-size=128\"\n"),
        "aliases become canonical:\n{toml}"
    );
    assert!(
        toml.contains("\ncron_restart = \"0 3 * * *\"\n"),
        "cron is carried over as cron_restart:\n{toml}"
    );
    assert!(toml.contains("\nwatch = false\n"), "{toml}");
    assert!(toml.contains("evaluated with node"), "{toml}");
    let yaml = fx.assert_round_trip("ecosystem.yml", SEED_YAML);
    assert!(
        yaml.contains(
            "env = { NODE_ENV = \"development\", PORT = 3000, FROM_ENV = \"fallback\" }\n"
        ),
        "{yaml}"
    );
    let json = r#"{"apps": [{"name": "web", "script": "app.js", "instances": "max", "exec_mode": "cluster_mode", "kill_timeout": 1600.0, "args": "--msg 'hi there'", "env": {"A": "x\"y", "N": null}, "merge_logs": true, "stop_exit_codes": [0, 3], "log_date_format": "YYYY-MM-DD"}]}"#;
    fx.assert_round_trip("ecosystem.json", json);
}

#[test]
fn convert_comments_out_what_pm2rs_does_not_support_and_what_means_otherwise() {
    let fx = Fixture::new();
    make_executable(&fx.root().join("tool.run"));
    let yaml = "apps:\n  - name: api\n    script: app.js\n    instances: 4\n    max_memory_restart: 200M\n    watch: [src]\n  - name: tool\n    script: tool.run\ndeploy:\n  production: {user: me}\n";
    let path = fx.file("ecosystem.yml", yaml);
    let toml = convert_file(&path, &opts(), Some(&fx.path_var)).unwrap();
    for expected in [
        "# `deploy` left out: PM2 deployments are not supported by pm2rs.\n",
        "max_memory_restart = \"200M\"\n",
        "watch = [\"src\"]\n",
        "add exec_mode = \"cluster\" for PM2's behaviour.\n",
        "add interpreter = \"node\" if it is\n# a Node script.\n",
    ] {
        assert!(toml.contains(expected), "missing {expected:?} in:\n{toml}");
    }
    let converted = fx.file("converted.toml", &toml);
    let apps = load_with(&converted, &opts(), Some(&fx.path_var))
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    assert_eq!(apps.len(), 2);
    assert_eq!(apps[0].max_memory_restart, Some(200 << 20));
    assert_eq!(
        apps[0].exec_mode,
        ExecMode::Fork,
        "the meaning pm2rs gives is kept"
    );
    assert_eq!(apps[0].env, env(&[]));

    // Real mistakes are refused with the original file's positions, and nothing is printed.
    let bad = fx.file(
        "bad.yml",
        "apps:\n  - script: app.js\n    instances: many\n",
    );
    let errors = convert_file(&bad, &opts(), Some(&fx.path_var)).unwrap_err();
    assert!(
        fx.strip(&errors)[0].starts_with("bad.yml:3:16: apps[0].instances: "),
        "{errors}"
    );
}
