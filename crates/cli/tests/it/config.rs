//! Ecosystem files through the CLI: errors name file, line, column and key and change nothing;
//! profiles; PM2's JSON format; script mode.

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
    assert!(crate::harness::eventually(crate::harness::DEADLINE, || {
        std::fs::read_to_string(&path).is_ok_and(|s| s.trim() == "--port 80")
    }));
    let r = t.run(&["start", "nope.sh"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("nope.sh"), "{}", r.stderr);
}
