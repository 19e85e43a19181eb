//! What a command acts on, as PM2 users type it: `start <known app>` starts that app (never a
//! program of that name in PATH), several targets per command, an ecosystem file as the target of
//! stop/restart/reload/delete, and `reset`.

use std::collections::BTreeMap;

use pm2rs_proto::{ProcessInfo, Status};

use crate::harness::{DEADLINE, Pm2rs, eventually};

/// The processes of `list`, by app name (first instance).
fn by_name(procs: &[ProcessInfo]) -> BTreeMap<String, ProcessInfo> {
    let mut out = BTreeMap::new();
    for p in procs {
        out.entry(p.name.clone()).or_insert_with(|| p.clone());
    }
    out
}

fn status_of(t: &Pm2rs, name: &str) -> Option<Status> {
    by_name(&t.list()).get(name).map(|p| p.status)
}

#[test]
fn start_of_a_known_app_starts_it_instead_of_a_program_of_that_name() {
    let t = Pm2rs::new();
    t.script("srv.sh", "exec sleep 1000");
    // `echo` is also /usr/bin/echo, which exits at once: taking the word for it would
    // replace the app's script and crash-loop it.
    t.ok(&["start", "srv.sh", "--name", "echo", "--namespace", "web"]);
    t.wait_online("echo", 1);
    t.ok(&["stop", "echo"]);
    let out = t.ok(&["start", "echo"]);
    assert!(out.contains("started again echo"), "{out}");
    let p = t.wait_online("echo", 1).remove(0);
    assert_eq!(p.restarts, 1, "{p:?}");
    let d = t.describe("echo").remove(0);
    assert!(d.spec.script.ends_with("srv.sh"), "{:?}", d.spec.script);

    // By id and by namespace too, and `all`; a running app is restarted, as PM2 does.
    t.ok(&["stop", "0"]);
    t.ok(&["start", "0"]);
    t.ok(&["stop", "web"]);
    t.ok(&["start", "web"]);
    let before = t.wait_online("echo", 1).remove(0);
    t.ok(&["start", "all"]);
    let after = t.wait_for("a restart by `start all`", DEADLINE, |ps| {
        ps.iter()
            .any(|p| p.status == Status::Online && p.pid.is_some() && p.pid != before.pid)
    });
    assert_eq!(by_name(&after)["echo"].restarts, before.restarts + 1);
    assert!(t.describe("echo")[0].spec.script.ends_with("srv.sh"));

    // Script options with a known app's name are refused, nothing changes.
    let pid = t.wait_online("echo", 1)[0].pid;
    let r = t.run(&["start", "echo", "--name", "other"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("`echo` names a known app"),
        "{}",
        r.stderr
    );
    let now = t.list();
    assert_eq!((now.len(), now[0].pid), (1, pid), "{now:#?}");

    // A word that names no app is still a program in PATH.
    t.ok(&["start", "sleep", "--", "1000"]);
    t.wait_online("sleep", 1);
}

#[test]
fn several_targets_are_acted_on_together_and_an_unknown_one_changes_nothing() {
    let t = Pm2rs::new();
    t.script("s.sh", "exec sleep 1000");
    for name in ["a", "b", "c"] {
        t.ok(&["start", "s.sh", "--name", name]);
        t.wait_online(name, 1);
    }
    let out = t.ok(&["stop", "a", "c", "a"]);
    assert!(out.contains("stopped a c a (id 0, 2)"), "{out}");
    let ps = by_name(&t.list());
    assert_eq!(
        (ps["a"].status, ps["b"].status, ps["c"].status),
        (Status::Stopped, Status::Online, Status::Stopped)
    );

    let r = t.run(&["restart", "a", "nope", "b", "9"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("`nope`, `9`") && r.stderr.contains("nothing was done"),
        "{}",
        r.stderr
    );
    let ps = by_name(&t.list());
    assert_eq!((ps["a"].status, ps["b"].restarts), (Status::Stopped, 0));

    t.ok(&["restart", "a", "c"]);
    t.wait_online("a", 1);
    t.wait_online("c", 1);
    t.ok(&["delete", "a", "b"]);
    let left: Vec<String> = t.list().into_iter().map(|p| p.name).collect();
    assert_eq!(left, vec!["c".to_string()]);
}

#[test]
fn an_ecosystem_file_is_the_target_of_stop_restart_reload_and_delete() {
    let t = Pm2rs::new();
    t.script(
        "dump.sh",
        r#"env > "env-$PM2RS_APP_NAME.txt"; exec sleep 1000"#,
    );
    let eco = |greeting: &str| {
        format!(
            r#"
[[apps]]
name = "web"
script = "dump.sh"
listen_timeout = 100
env = {{ MODE = "dev", GREETING = "{greeting}" }}
env_production = {{ MODE = "prod" }}

[[apps]]
name = "worker"
script = "dump.sh"
listen_timeout = 100
env = {{ MODE = "dev" }}
"#
        )
    };
    t.write("eco.toml", &eco("hi"));
    let env_has = |name: &str, want: &str| {
        let path = t.work().join(format!("env-{name}.txt"));
        eventually(DEADLINE, || {
            std::fs::read_to_string(&path).is_ok_and(|s| s.lines().any(|l| l == want))
        })
    };
    t.ok(&["start", "eco.toml"]);
    t.wait_online("web", 1);
    t.wait_online("worker", 1);

    // --only narrows the file's apps.
    t.ok(&["stop", "eco.toml", "--only", "web"]);
    assert_eq!(status_of(&t, "web"), Some(Status::Stopped));
    assert_eq!(status_of(&t, "worker"), Some(Status::Online));

    // restart applies the file (here its production profile): the stopped app, changed by the
    // profile, is started with it; worker, unchanged (no env_production), is restarted.
    let worker_pid = by_name(&t.list())["worker"].pid;
    let out = t.ok(&["restart", "eco.toml", "--env", "production", "--update-env"]);
    assert!(
        out.contains("applied changes to and restarted web"),
        "{out}"
    );
    assert!(out.contains("restarted worker"), "{out}");
    t.wait_online("web", 1);
    let worker = t.wait_online("worker", 1).remove(0);
    assert_ne!(worker.pid, worker_pid);
    assert_eq!(worker.restarts, 1, "{worker:?}");
    assert!(env_has("web", "MODE=prod") && env_has("web", "GREETING=hi"));
    assert!(env_has("worker", "MODE=dev"));
    let out = t.ok(&["restart", "eco.toml", "--env", "production"]);
    assert!(out.contains("restarted web worker"), "{out}");
    let again = t.wait_online("worker", 1).remove(0);
    assert_eq!(again.restarts, worker.restarts + 1, "{again:?}");
    // --json: every instance of the file's apps, and the ids acted on.
    let json: pm2rs_proto::ActionResponse =
        serde_json::from_str(&t.ok(&["restart", "eco.toml", "--env", "production", "--json"]))
            .expect("restart --json");
    assert_eq!((json.processes.len(), json.ids.len()), (2, 2), "{json:?}");
    let again = t.wait_online("worker", 1).remove(0);

    // reload applies a changed file too; an unchanged app is reloaded (new pid, same id).
    t.write("eco.toml", &eco("hello"));
    let web_before = by_name(&t.list())["web"].clone();
    let out = t.ok(&["reload", "eco.toml", "--env", "production"]);
    assert!(
        out.contains("applied changes to and restarted web"),
        "{out}"
    );
    assert!(out.contains("reloaded worker"), "{out}");
    assert!(env_has("web", "GREETING=hello"));
    let web = t.wait_online("web", 1).remove(0);
    assert_eq!(web.id, web_before.id);
    let reloaded = t.wait_online("worker", 1).remove(0);
    assert_ne!(reloaded.pid, again.pid);

    // A bad file gets start's errors and changes nothing.
    t.write(
        "bad.toml",
        "[[apps]]\nname = \"web\"\nscript = \"dump.sh\"\ninstances = 0\n",
    );
    let r = t.run(&["restart", "bad.toml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("bad.toml:4:") && r.stderr.contains("nothing was changed"),
        "{}",
        r.stderr
    );
    assert_eq!(by_name(&t.list())["web"].pid, web.pid);
    // --env and --only belong to a file; --update-env with a name is refused, not ignored.
    let r = t.run(&["stop", "web", "--only", "web"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = t.run(&["restart", "web", "--update-env"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not supported yet"), "{}", r.stderr);
    assert_eq!(by_name(&t.list())["web"].pid, web.pid);

    // delete forgets the file's apps; an app of the file the daemon does not have is skipped.
    t.ok(&["delete", "worker"]);
    let out = t.ok(&["delete", "eco.toml"]);
    assert!(out.contains("worker: no such app, skipped"), "{out}");
    assert!(t.list().is_empty());
}

#[test]
fn reset_zeroes_the_restart_counters_and_leaves_the_process_alone() {
    let t = Pm2rs::new();
    t.script("s.sh", "exec sleep 1000");
    t.ok(&["start", "s.sh", "--name", "busy", "-i", "2"]);
    t.wait_online("busy", 2);
    t.ok(&["restart", "busy"]);
    t.ok(&["restart", "busy"]);
    let before = t.wait_online("busy", 2);
    assert!(before.iter().all(|p| p.restarts == 2), "{before:#?}");
    let out = t.ok(&["reset", "busy"]);
    assert!(
        out.contains("reset the counters of busy (id 0, 1)"),
        "{out}"
    );
    let after = t.wait_online("busy", 2);
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((a.restarts, a.unstable_restarts), (0, 0), "{a:?}");
        assert_eq!(a.pid, b.pid);
    }
    let r = t.run(&["reset", "nope"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("`nope`"), "{}", r.stderr);
}
