//! Ecosystem files through the CLI: errors name file, line, column and key and change nothing;
//! profiles; PM2's JSON, YAML and JavaScript formats, `start -` and `convert`; script mode.

use pm2rs_proto::Status;

use crate::harness::Pm2rs;

#[test]
fn a_bad_file_reports_every_problem_with_its_position_and_changes_nothing() {
    let t = Pm2rs::new();
    t.script("s.sh", "exec sleep 1000");
    t.write(
        "good.toml",
        "[[apps]]\nname = \"keep\"\nscript = \"s.sh\"\n",
    );
    t.ok(&["start", "good.toml"]);
    let before = t.wait_online("keep", 1);

    t.write(
        "bad.toml",
        "[[apps]]\nname = \"keep\"\nscript = \"s.sh\"\ninstances = 0\nmax_restart = 3\n\n[[apps]]\nname = \"new\"\nscript = \"missing.sh\"\n",
    );
    let r = t.run(&["start", "bad.toml"]);
    assert_eq!(r.code, 2, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    let err = r.stderr;
    assert!(
        err.contains("bad.toml:4:"),
        "instances error has file:line: {err}"
    );
    assert!(err.contains("instances"), "{err}");
    assert!(
        err.contains("bad.toml:5:"),
        "unknown key error has file:line: {err}"
    );
    assert!(err.contains("did you mean `max_restarts`"), "{err}");
    assert!(err.contains("missing.sh"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");

    let after = t.list();
    assert_eq!(after.len(), 1, "no app was added: {after:#?}");
    assert_eq!(
        after[0].pid, before[0].pid,
        "the running app was not touched"
    );
    assert_eq!(after[0].status, Status::Online);
}

#[test]
fn a_syntax_error_names_file_line_and_column() {
    let t = Pm2rs::new();
    t.write("broken.toml", "[[apps]]\nname = \"x\"\nscript = \n");
    let r = t.run(&["start", "broken.toml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("broken.toml:3:"), "{}", r.stderr);
}

#[test]
fn env_profiles_are_merged_over_env() {
    let t = Pm2rs::new();
    t.script(
        "dump.sh",
        r#"env > "env-$NODE_APP_INSTANCE.txt"; exec sleep 1000"#,
    );
    t.write(
        "eco.toml",
        r#"
[[apps]]
name = "api"
script = "dump.sh"
env = { MODE = "dev", KEEP = "yes" }
env_production = { MODE = "prod" }
"#,
    );
    t.ok(&["start", "eco.toml", "--env", "production"]);
    t.wait_online("api", 1);
    let path = t.work().join("env-0.txt");
    assert!(crate::harness::eventually(crate::harness::DEADLINE, || {
        std::fs::read_to_string(&path)
            .is_ok_and(|s| s.contains("MODE=prod") && s.contains("KEEP=yes"))
    }));
}

#[test]
fn a_pm2_json_ecosystem_is_accepted() {
    let t = Pm2rs::new();
    t.script("s.sh", "exec sleep 1000");
    t.write(
        "ecosystem.json",
        r#"{"apps": [{"name": "legacy", "script": "s.sh", "instances": 2, "exec_mode": "fork_mode", "watch": false}]}"#,
    );
    t.ok(&["start", "ecosystem.json"]);
    t.wait_online("legacy", 2);
}

#[test]
fn script_mode_takes_name_instances_and_arguments() {
    let t = Pm2rs::new();
    t.script(
        "args.sh",
        r#"echo "$@" > "args-$NODE_APP_INSTANCE.txt"; exec sleep 1000"#,
    );
    t.ok(&[
        "start", "args.sh", "--name", "worker", "-i", "2", "--", "--port", "80",
    ]);
    t.wait_online("worker", 2);
    let path = t.work().join("args-1.txt");
    wait_file(&path, |s| s.trim() == "--port 80");
    let r = t.run(&["start", "nope.sh"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("nope.sh"), "{}", r.stderr);
}

/// Waits until the file at `path` can be read and its text satisfies `cond`.
fn wait_file(path: &std::path::Path, cond: impl Fn(&str) -> bool) {
    let ok = crate::harness::eventually(crate::harness::DEADLINE, || {
        std::fs::read_to_string(path).is_ok_and(|s| cond(&s))
    });
    assert!(ok, "{} never held what was expected", path.display());
}

/// Fails the test (it never passes silently) when the machine has no `node`.
fn need_node() {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("node").is_file()));
    assert!(
        found,
        "this test needs Node.js and `node` is not in PATH: install it (e.g. `apt-get install nodejs`)"
    );
}

/// A PM2-style ecosystem.config.js: `require`, `__dirname`, an env value computed in JS.
const ECOSYSTEM_JS: &str = r#"const path = require('path');
module.exports = {
  apps: [{
    name: 'from-js',
    script: path.join(__dirname, 'env.sh'),
    instances: 2,
    watch: false,
    env: { GREETING: ['hello', 'from', 'js'].join('-') },
  }],
};
"#;

#[test]
fn start_and_convert_a_javascript_ecosystem() {
    need_node();
    let t = Pm2rs::new();
    t.script(
        "env.sh",
        r#"echo "$GREETING" > "greeting-$NODE_APP_INSTANCE.txt"; exec sleep 1000"#,
    );
    t.write("ecosystem.config.js", ECOSYSTEM_JS);
    t.ok(&["start", "ecosystem.config.js"]);
    t.wait_online("from-js", 2);
    let path = t.work().join("greeting-1.txt");
    wait_file(&path, |s| s.trim() == "hello-from-js");

    // `convert` prints TOML that starts the same app, with the value the JavaScript computed.
    let toml = t.ok(&["convert", "ecosystem.config.js"]);
    assert!(toml.contains("[[apps]]\nname = \"from-js\"\n"), "{toml}");
    t.write("converted.toml", &toml);
    t.ok(&["delete", "all"]);
    std::fs::remove_file(&path).unwrap();
    t.ok(&["start", "converted.toml"]);
    t.wait_online("from-js", 2);
    wait_file(&path, |s| s.trim() == "hello-from-js");

    // A key error names the key path, and the line of the key written once in the file.
    t.write(
        "bad.config.js",
        "module.exports = { apps: [{ name: 'from-js', script: 'env.sh', max_restarts: -1 }] };\n",
    );
    let r = t.run(&["start", "bad.config.js"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "bad.config.js:1:64: apps[0].max_restarts: `max_restarts` must not be negative"
        ),
        "{}",
        r.stderr
    );
}

#[test]
fn start_server_js_still_runs_the_script() {
    need_node();
    let t = Pm2rs::new();
    t.write(
        "server.js",
        "require('fs').writeFileSync('ran.txt', 'yes');\nsetInterval(() => {}, 1000);\n",
    );
    t.ok(&["start", "server.js"]);
    t.wait_online("server", 1);
    let path = t.work().join("ran.txt");
    wait_file(&path, |s| s == "yes");
}

#[test]
fn start_dash_reads_the_ecosystem_from_stdin() {
    let t = Pm2rs::new();
    t.script("s.sh", "exec sleep 1000");
    let toml = "[[apps]]\nname = \"piped-toml\"\nscript = \"s.sh\"\n";
    let r = t.run_with_input(&["start", "-"], Some(toml));
    assert_eq!(r.code, 0, "{}", r.stderr);
    t.wait_online("piped-toml", 1);
    let json = r#"{"apps": [{"name": "piped-json", "script": "s.sh", "instances": 2}]}"#;
    let r = t.run_with_input(&["start", "-"], Some(json));
    assert_eq!(r.code, 0, "{}", r.stderr);
    t.wait_online("piped-json", 2);

    let r = t.run_with_input(
        &["start", "-"],
        Some("[[apps]]\nscript = \"s.sh\"\ninstances = 0\n"),
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("<stdin>:3:13: apps[0].instances:"),
        "{}",
        r.stderr
    );
    assert_eq!(t.list().len(), 3, "nothing was added");
}

#[test]
fn a_yaml_ecosystem_starts_and_its_errors_have_lines() {
    let t = Pm2rs::new();
    t.script("s.sh", "exec sleep 1000");
    t.write(
        "ecosystem.yml",
        "apps:\n  - name: yml\n    script: s.sh\n    instances: 2\n",
    );
    t.ok(&["start", "ecosystem.yml"]);
    t.wait_online("yml", 2);
    t.write(
        "bad.yaml",
        "apps:\n  - name: y2\n    script: s.sh\n    pid_file: /run/y2.pid\n",
    );
    let r = t.run(&["start", "bad.yaml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("bad.yaml:4:5: apps[0].pid_file: `pid_file` is not supported yet"),
        "{}",
        r.stderr
    );
}
