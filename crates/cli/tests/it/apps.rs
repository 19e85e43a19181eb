//! App lifecycle through the CLI: start from a file, list, environment, crash and replacement,
//! restart policy, stop (whole process group), delete, scale, restart, re-applying a changed file.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pm2rs_proto::Status;

use crate::harness::{DEADLINE, Pm2rs, alive, eventually, group_members};

/// A script that records its environment in `env-<instance>.txt`, then sleeps.
const ENV_DUMP: &str = r#"env > "env-$NODE_APP_INSTANCE.txt"; exec sleep 1000"#;

#[test]
fn start_from_file_lists_every_instance_with_its_environment() {
    let t = Pm2rs::new();
    t.script("apps/web.sh", ENV_DUMP);
    let eco = t.write(
        "ecosystem.toml",
        r#"
[[apps]]
name = "web"
script = "apps/web.sh"
cwd = "."
instances = 2
namespace = "front"
env = { GREETING = "hello", PORT = 3000 }
"#,
    );
    let out = t.ok(&["start", eco.to_str().unwrap()]);
    assert!(out.contains("started web"), "{out}");
    let procs = t.wait_online("web", 2);
    assert_ne!(procs[0].pid, procs[1].pid);
    let mut instances: Vec<u32> = procs.iter().map(|p| p.instance).collect();
    instances.sort();
    assert_eq!(instances, vec![0, 1]);
    assert!(procs.iter().all(|p| p.namespace == "front"));

    for i in 0..2 {
        let path = t.work().join(format!("env-{i}.txt"));
        assert!(eventually(DEADLINE, || std::fs::read_to_string(&path)
            .is_ok_and(|s| s.contains("PM2RS_APP_NAME"))));
        let env = std::fs::read_to_string(&path).unwrap();
        for want in [
            "GREETING=hello".to_string(),
            "PORT=3000".to_string(),
            format!("NODE_APP_INSTANCE={i}"),
            format!("PM2RS_INSTANCE={i}"),
            "PM2RS_APP_NAME=web".to_string(),
            // The daemon's own environment is inherited under the app's.
            format!("PM2RS_HOME={}", t.home().display()),
        ] {
            assert!(env.lines().any(|l| l == want), "missing {want} in:\n{env}");
        }
    }

    // The human table shows the app; `jlist` is list --json.
    let table = t.ok(&["ls"]);
    assert!(table.contains("web") && table.contains("online"), "{table}");
    let jl: Vec<pm2rs_proto::ProcessInfo> = serde_json::from_str(&t.ok(&["jlist"])).unwrap();
    assert_eq!(jl.len(), 2);
    // Targets by namespace work.
    t.ok(&["stop", "front"]);
    assert!(
        t.list()
            .iter()
            .all(|p| p.status == Status::Stopped && p.pid.is_none())
    );
}

#[test]
fn a_killed_instance_is_replaced_with_a_new_pid() {
    let t = Pm2rs::new();
    t.script("s.sh", "exec sleep 1000");
    t.ok(&["start", "s.sh", "--name", "victim"]);
    let before = t.wait_online("victim", 1)[0].clone();
    let old = before.pid.unwrap();
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    let after = t.wait_for("a new pid", DEADLINE, |ps| {
        ps.iter().any(|p| {
            p.id == before.id && p.status == Status::Online && p.pid.is_some_and(|n| n != old)
        })
    });
    let p = after.iter().find(|p| p.id == before.id).unwrap();
    assert_eq!(p.restarts, 1);
    assert_eq!(p.last_exit.as_deref(), Some("signal SIGKILL"));
    assert!(!alive(Pid::from_raw(old as i32)));
}

#[test]
fn a_crash_loop_ends_errored_after_max_restarts_with_the_reason_shown() {
    let t = Pm2rs::new();
    // It crashes until the file `healed` exists, so the restart below comes up for good and the
    // check that the reason was cleared cannot race a new crash loop.
    t.script(
        "crash.sh",
        "if [ -e healed ]; then exec sleep 1000; fi; echo boom >&2; exit 3",
    );
    t.write(
        "eco.toml",
        r#"
[[apps]]
name = "crashy"
script = "crash.sh"
max_restarts = 3
min_uptime = "5s"
"#,
    );
    t.ok(&["start", "eco.toml"]);
    let procs = t.wait_for("errored", DEADLINE, |ps| {
        ps.iter().any(|p| p.status == Status::Errored)
    });
    let p = &procs[0];
    assert_eq!(p.restarts, 3, "{p:#?}");
    assert_eq!(p.pid, None);
    assert_eq!(p.last_exit.as_deref(), Some("exit code 3"));
    let reason = p.reason.as_deref().unwrap_or_default();
    assert!(reason.contains("max_restarts is 3"), "{reason}");
    let table = t.ok(&["list"]);
    assert!(
        table.contains("errored") && table.contains("max_restarts is 3"),
        "{table}"
    );
    let desc = t.ok(&["describe", "crashy"]);
    assert!(desc.contains("max_restarts is 3"), "{desc}");
    // Its stderr went to its error log.
    let err_log = t.home().join("logs/crashy-error.log");
    assert!(std::fs::read_to_string(err_log).unwrap().contains("boom"));
    // Restarting it clears the error and its reason.
    t.write("healed", "");
    t.ok(&["restart", "crashy"]);
    let p = &t.wait_online("crashy", 1)[0];
    assert_eq!(p.reason, None, "restart clears the reason: {p:#?}");
    assert_eq!(p.status, Status::Online);
}

#[test]
fn stop_leaves_no_process_of_the_group_including_a_grandchild() {
    let t = Pm2rs::new();
    // The background sleep ignores SIGINT (sh does that for async commands), so only the group
    // SIGKILL after the leader's exit can end it.
    t.script(
        "parent.sh",
        r#"sleep 1000 & echo $! > grandchild.pid; wait"#,
    );
    t.ok(&["start", "parent.sh", "--name", "family"]);
    let leader = t.wait_online("family", 1)[0].pid.unwrap();
    let gc_file = t.work().join("grandchild.pid");
    assert!(eventually(DEADLINE, || std::fs::read_to_string(&gc_file)
        .is_ok_and(|s| s.ends_with('\n'))));
    let grandchild: i32 = std::fs::read_to_string(&gc_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(Pid::from_raw(grandchild)));
    assert!(group_members(leader).contains(&(grandchild as u32)));

    t.ok(&["stop", "family"]);
    // No waiting: when stop returns, the group is empty.
    assert!(!alive(Pid::from_raw(leader as i32)), "leader survived stop");
    assert!(
        !alive(Pid::from_raw(grandchild)),
        "grandchild survived stop"
    );
    assert_eq!(group_members(leader), Vec::<u32>::new());
    let p = &t.list()[0];
    assert_eq!(p.status, Status::Stopped);
    assert_eq!(p.pid, None);
}

#[test]
fn an_orphaned_grandchild_is_reaped_by_the_daemon_and_leaves_no_zombie() {
    let t = Pm2rs::new();
    // The subshell starts a short sleeper and exits at once: the sleeper is orphaned, and the
    // daemon (a child subreaper) becomes its parent. When it ends, only the daemon can reap it.
    t.script(
        "orphaner.sh",
        r#"(sleep 0.5 & echo $! > orphan.pid); exec sleep 1000"#,
    );
    t.ok(&["start", "orphaner.sh", "--name", "orphaner"]);
    t.wait_online("orphaner", 1);
    let daemon = t.daemon_pid().expect("daemon pid");
    let file = t.work().join("orphan.pid");
    assert!(eventually(DEADLINE, || std::fs::read_to_string(&file)
        .is_ok_and(|s| s.ends_with('\n'))));
    let orphan: i32 = std::fs::read_to_string(&file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let parent_of = |pid: i32| -> Option<Pid> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat[stat.rfind(')')? + 1..]
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
            .map(Pid::from_raw)
    };
    // Reparented to the daemon (while it lives, or as the zombie it becomes).
    assert!(
        eventually(DEADLINE, || parent_of(orphan) == Some(daemon)
            || !std::path::Path::new(&format!("/proc/{orphan}")).exists()),
        "the orphan was not reparented to the daemon"
    );
    // Gone entirely: not even a zombie is left.
    assert!(
        eventually(DEADLINE, || !std::path::Path::new(&format!(
            "/proc/{orphan}"
        ))
        .exists()),
        "the orphan {orphan} was left a zombie of the daemon"
    );
    // The instance itself is untouched.
    let p = &t.list()[0];
    assert_eq!((p.status, p.restarts), (Status::Online, 0));
}

#[test]
fn a_process_ignoring_the_kill_signal_is_killed_after_kill_timeout() {
    let t = Pm2rs::new();
    t.script("stubborn.sh", "trap '' INT TERM; while :; do sleep 1; done");
    t.write(
        "eco.toml",
        r#"
[[apps]]
name = "stubborn"
script = "stubborn.sh"
kill_timeout = "300ms"
"#,
    );
    t.ok(&["start", "eco.toml"]);
    let pid = t.wait_online("stubborn", 1)[0].pid.unwrap();
    let started = std::time::Instant::now();
    t.ok(&["stop", "stubborn"]);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "stop returned before kill_timeout"
    );
    assert!(!alive(Pid::from_raw(pid as i32)));
    let p = &t.list()[0];
    assert_eq!(p.status, Status::Stopped);
    assert_eq!(p.last_exit.as_deref(), Some("signal SIGKILL"));
}

#[test]
fn delete_forgets_the_app_and_kills_its_processes() {
    let t = Pm2rs::new();
    t.script("s.sh", "exec sleep 1000");
    t.ok(&["start", "s.sh", "--name", "a"]);
    t.ok(&["start", "s.sh", "--name", "b"]);
    let a = t.wait_online("a", 1)[0].pid.unwrap();
    t.wait_online("b", 1);
    t.ok(&["del", "a"]);
    let procs = t.list();
    assert_eq!(procs.len(), 1);
    assert_eq!(procs[0].name, "b");
    assert!(!alive(Pid::from_raw(a as i32)));
    let r = t.run(&["delete", "a"]);
    assert_eq!(r.code, 1, "deleting an unknown app fails");
    assert!(r.stderr.contains("no app"), "{}", r.stderr);
}

#[test]
fn scale_adds_and_removes_instances() {
    let t = Pm2rs::new();
    t.script("s.sh", "exec sleep 1000");
    t.ok(&["start", "s.sh", "--name", "pool"]);
    t.wait_online("pool", 1);
    t.ok(&["scale", "pool", "+2"]);
    let procs = t.wait_online("pool", 3);
    let mut idx: Vec<u32> = procs.iter().map(|p| p.instance).collect();
    idx.sort();
    assert_eq!(idx, vec![0, 1, 2]);

    let top = procs.iter().find(|p| p.instance == 2).unwrap().pid.unwrap();
    t.ok(&["scale", "pool", "-1"]);
    let procs = t.wait_online("pool", 2);
    assert!(
        !alive(Pid::from_raw(top as i32)),
        "scaled-down instance still alive"
    );
    assert!(procs.iter().all(|p| p.instance < 2));
    let described: Vec<pm2rs_proto::Described> =
        serde_json::from_str(&t.ok(&["describe", "pool", "--json"])).unwrap();
    assert!(
        described.iter().all(|d| d.spec.instances == 2),
        "stored instance count follows scale: {:?}",
        described
            .iter()
            .map(|d| d.spec.instances)
            .collect::<Vec<_>>()
    );

    t.ok(&["scale", "pool", "4"]);
    t.wait_online("pool", 4);
    t.ok(&["scale", "pool", "1"]);
    t.wait_online("pool", 1);

    let r = t.run(&["scale", "pool", "-5"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("cannot scale"), "{}", r.stderr);
    let r = t.run(&["scale", "pool", "lots"]);
    assert_eq!(r.code, 2);
    t.wait_online("pool", 1);
}

#[test]
fn restart_replaces_the_process_and_counts() {
    let t = Pm2rs::new();
    t.script("s.sh", "exec sleep 1000");
    t.ok(&["start", "s.sh", "--name", "r", "-i", "2"]);
    let before = t.wait_online("r", 2);
    t.ok(&["restart", "r"]);
    let after = t.wait_online("r", 2);
    for p in &after {
        let old = before.iter().find(|b| b.id == p.id).unwrap();
        assert_ne!(old.pid, p.pid);
        assert_eq!(p.restarts, 1);
        assert!(!alive(Pid::from_raw(old.pid.unwrap() as i32)));
    }
    // Restarting a stopped app starts it.
    t.ok(&["stop", "0"]);
    t.ok(&["restart", "0"]);
    t.wait_online("r", 2);
}

#[test]
fn starting_a_file_again_applies_changes_only_to_changed_apps() {
    let t = Pm2rs::new();
    t.script("dump.sh", ENV_DUMP);
    t.script("s.sh", "exec sleep 1000");
    let v1 = r#"
[[apps]]
name = "changing"
script = "dump.sh"
env = { COLOR = "blue" }

[[apps]]
name = "steady"
script = "s.sh"
"#;
    t.write("eco.toml", v1);
    t.ok(&["start", "eco.toml"]);
    let changing = t.wait_online("changing", 1)[0].pid;
    let steady = t.wait_online("steady", 1)[0].pid;
    let env0 = t.work().join("env-0.txt");
    assert!(eventually(DEADLINE, || std::fs::read_to_string(&env0)
        .is_ok_and(|s| s.contains("COLOR=blue"))));

    t.write(
        "eco.toml",
        &v1.replace("blue", "green")
            .replace("name = \"changing\"", "name = \"changing\"\ninstances = 2"),
    );
    let out = t.ok(&["start", "eco.toml"]);
    assert!(
        out.contains("applied changes to and restarted changing"),
        "{out}"
    );
    assert!(out.contains("unchanged: steady"), "{out}");
    let now = t.wait_online("changing", 2);
    assert!(now.iter().all(|p| p.pid != changing));
    assert_eq!(
        t.wait_online("steady", 1)[0].pid,
        steady,
        "an unchanged app is not restarted"
    );
    assert!(eventually(DEADLINE, || std::fs::read_to_string(&env0)
        .is_ok_and(|s| s.contains("COLOR=green"))));
}

#[test]
fn exit_codes_in_stop_exit_codes_and_autorestart_off_leave_the_app_stopped() {
    let t = Pm2rs::new();
    t.script("done.sh", "exit 0");
    t.script("fail.sh", "exit 7");
    t.write(
        "eco.toml",
        r#"
[[apps]]
name = "oneshot"
script = "done.sh"
stop_exit_codes = [0]

[[apps]]
name = "noauto"
script = "fail.sh"
autorestart = false
"#,
    );
    t.ok(&["start", "eco.toml"]);
    let procs = t.wait_for("both stopped", DEADLINE, |ps| {
        ps.len() == 2 && ps.iter().all(|p| p.status == Status::Stopped)
    });
    for p in &procs {
        assert_eq!(p.restarts, 0, "{p:#?}");
        assert!(p.reason.is_some(), "{p:#?}");
    }
}

#[test]
fn ids_start_from_zero_again_after_delete_all() {
    let t = Pm2rs::new();
    t.script("s.sh", "exec sleep 1000");
    t.ok(&["start", "s.sh", "--name", "first", "-i", "2"]);
    t.wait_online("first", 2);
    t.ok(&["delete", "all"]);
    t.ok(&["start", "s.sh", "--name", "second"]);
    let p = &t.wait_online("second", 1)[0];
    assert_eq!(
        p.id, 0,
        "ids start over once no app is left, as in PM2: {p:#?}"
    );
}

#[test]
fn a_restart_delay_shows_waiting_restart_then_comes_back() {
    let t = Pm2rs::new();
    t.script(
        "flaky.sh",
        r#"if [ -f ran ]; then exec sleep 1000; else touch ran; exit 1; fi"#,
    );
    t.write(
        "eco.toml",
        r#"
[[apps]]
name = "flaky"
script = "flaky.sh"
restart_delay = "1500ms"
"#,
    );
    t.ok(&["start", "eco.toml"]);
    let waiting = t.wait_for("waiting restart", DEADLINE, |ps| {
        ps[0].status == Status::WaitingRestart
    });
    // PM2 counts a restart when the new process starts, not while it waits.
    assert_eq!(waiting[0].restarts, 0, "{waiting:#?}");
    let table = t.ok(&["list"]);
    assert!(table.contains("waiting restart"), "{table}");
    let p = &t.wait_online("flaky", 1)[0];
    assert_eq!(p.restarts, 1);
}

#[test]
fn the_list_fits_an_80_column_terminal_by_dropping_columns() {
    let t = Pm2rs::new();
    t.script("s.sh", "exec sleep 1000");
    t.ok(&[
        "start",
        "s.sh",
        "--name",
        "a-rather-long-application-name",
        "--namespace",
        "payments",
        "-i",
        "3",
    ]);
    t.wait_online("a-rather-long-application-name", 3);
    let wide = t.ok(&["list"]);
    assert!(
        wide.contains("namespace") && wide.contains("user"),
        "all columns without a width: {wide}"
    );
    let out = t.command(&["list"]).env("COLUMNS", "80").output().unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    for line in table.lines() {
        assert!(
            line.chars().count() <= 80,
            "line wider than 80 columns: {line:?}\n{table}"
        );
    }
    assert!(table.contains("online") && table.contains("id"), "{table}");
}
