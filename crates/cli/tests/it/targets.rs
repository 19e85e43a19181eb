//! What a command acts on, as PM2 users type it: `start <known app>` starts that app (never a
//! program of that name in PATH), several targets per command, and `reset`.

use std::collections::BTreeMap;

use pm2rs_proto::{Described, ProcessInfo, Status};

use crate::harness::{DEADLINE, Pm2rs};

/// The processes of `list`, by app name (first instance).
fn by_name(procs: &[ProcessInfo]) -> BTreeMap<String, ProcessInfo> {
    let mut out = BTreeMap::new();
    for p in procs {
        out.entry(p.name.clone()).or_insert_with(|| p.clone());
    }
    out
}

fn describe(t: &Pm2rs, target: &str) -> Vec<Described> {
    serde_json::from_str(&t.ok(&["describe", target, "--json"])).expect("describe --json")
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
    let d = describe(&t, "echo").remove(0);
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
    assert!(describe(&t, "echo")[0].spec.script.ends_with("srv.sh"));

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
