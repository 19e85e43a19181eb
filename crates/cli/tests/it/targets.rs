//! What a command acts on, as PM2 users type it: several targets per command, and `reset`.

use std::collections::BTreeMap;

use pm2rs_proto::{ProcessInfo, Status};

use crate::harness::Pm2rs;

/// The processes of `list`, by app name (first instance).
fn by_name(procs: &[ProcessInfo]) -> BTreeMap<String, ProcessInfo> {
    let mut out = BTreeMap::new();
    for p in procs {
        out.entry(p.name.clone()).or_insert_with(|| p.clone());
    }
    out
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
