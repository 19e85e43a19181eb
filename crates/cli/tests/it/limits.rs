//! Resource limits with real processes: `max_memory_restart` restarts an instance whose process
//! group (the leader or a child of it) grows over the limit, counted as a restart (not an unstable
//! run) and with the reason shown in `list` and `describe`.

use pm2rs_proto::{ProcessInfo, Status};

use crate::harness::{DEADLINE, Pm2rs};

/// Grows by 2 MiB every 100 ms (20 MB/s, touched, so resident), and prints `crossed <unix ms>`
/// once its own resident set passes the limit given as its argument (bytes).
const HOG: &str = r#"import os, sys, time
limit = int(sys.argv[1])
page = os.sysconf("SC_PAGE_SIZE")
held, said = [], False
while True:
    held.append(b"x" * (2 << 20))
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * page
    if rss > limit and not said:
        print("crossed", int(time.time() * 1000), flush=True)
        said = True
    time.sleep(0.1)
"#;

const LIMIT: u64 = 50 << 20;

/// The first run of `name`'s instance, then the listing once the daemon restarted it for memory.
fn restarted_for_memory(t: &Pm2rs, name: &str) -> (ProcessInfo, ProcessInfo) {
    let first = t.wait_online(name, 1).remove(0);
    let after = t.wait_for("the hog restarted for its memory", DEADLINE, |list| {
        list.iter().any(|p| {
            p.name == name
                && p.restarts > first.restarts
                && p.pid != first.pid
                && p.status == Status::Online
                && p.restart_reason.is_some()
        })
    });
    let again = after.into_iter().find(|p| p.name == name).unwrap();
    (first, again)
}

/// When the run that ended last before `before` (unix ms) said it crossed the limit, from the
/// app's log (each run writes one `crossed` line).
fn crossed_before(t: &Pm2rs, name: &str, before: u64) -> u64 {
    let log = std::fs::read_to_string(t.home().join(format!("logs/{name}-out.log"))).unwrap();
    log.lines()
        .filter_map(|l| l.strip_prefix("crossed "))
        .filter_map(|ms| ms.trim().parse().ok())
        .filter(|&ms| ms <= before)
        .max()
        .unwrap_or_else(|| panic!("the hog never said it crossed its limit:\n{log}"))
}

#[test]
fn an_instance_over_its_memory_limit_is_restarted_within_a_second_and_a_half() {
    let t = Pm2rs::new();
    t.write("hog.py", HOG);
    t.write(
        "eco.toml",
        &format!(
            "[[apps]]\nname = \"hog\"\nscript = \"hog.py\"\ninterpreter = \"python3\"\nargs = [\"{LIMIT}\"]\nmax_memory_restart = \"50M\"\n"
        ),
    );
    t.ok(&["start", "eco.toml"]);
    let (first, again) = restarted_for_memory(&t, "hog");
    assert_eq!(again.id, first.id);
    // Counted (the hog grows back over its limit every few seconds: under load a second
    // restart may come before this listing).
    assert!(again.restarts > first.restarts, "counted: {again:?}");
    assert_eq!(again.unstable_restarts, 0, "not an unstable run");
    let reason = again.restart_reason.clone().unwrap();
    assert!(
        reason.starts_with("memory ") && reason.ends_with(" over limit 50M"),
        "{reason}"
    );
    // From the hog crossing its limit to the new run's start: the old one was signalled, stopped
    // (python ends on SIGINT at once) and a new one spawned.
    let started = again.started_at_us.unwrap() / 1000;
    let crossed = crossed_before(&t, "hog", started);
    assert!(
        started >= crossed && started - crossed <= 1500,
        "replaced {} ms after crossing the limit",
        started as i64 - crossed as i64
    );
    let list = t.ok(&["list"]);
    assert!(list.contains("hog (id 0): restarted — memory"), "{list}");
    let describe = t.ok(&["describe", "hog"]);
    assert!(describe.contains("over limit 50M"), "{describe}");
    assert!(describe.contains("max_memory_restart"), "{describe}");
}

#[test]
fn memory_in_a_child_process_counts_for_its_instance() {
    let t = Pm2rs::new();
    t.write("hog.py", HOG);
    // The leader is a shell that stays small; the hog is its child, in its process group.
    t.script("parent.sh", &format!("python3 hog.py {LIMIT} & wait"));
    t.write(
        "eco.toml",
        "[[apps]]\nname = \"family\"\nscript = \"parent.sh\"\nmax_memory_restart = \"50M\"\n",
    );
    t.ok(&["start", "eco.toml"]);
    let online = t.wait_for("the group is sampled", DEADLINE, |list| {
        list.iter()
            .any(|p| p.name == "family" && p.group_processes == Some(2))
    });
    let p = online.iter().find(|p| p.name == "family").unwrap();
    assert!(
        p.leader_memory_bytes.unwrap() < p.memory_bytes.unwrap(),
        "the group counts more than the leader: {p:?}"
    );
    let (first, again) = restarted_for_memory(&t, "family");
    assert!(again.restarts > first.restarts, "counted: {again:?}");
    // The daemon's log names the restart and its reason.
    let log = std::fs::read_to_string(t.home().join("pm2rs.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("over limit 50M: restarting the instance")),
        "{log}"
    );
}

/// [`HOG`], ready at once (sd_notify `READY=1`), as a cluster app's server is once it listens.
fn ready_hog() -> String {
    format!(
        "import os, socket\nsocket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b\"READY=1\", os.environ[\"NOTIFY_SOCKET\"])\n{HOG}"
    )
}

#[test]
fn a_cluster_instance_over_its_limit_is_replaced_by_a_reload() {
    let t = Pm2rs::new();
    t.write("hog.py", &ready_hog());
    let port = crate::http::free_port();
    t.write(
        "eco.toml",
        &format!(
            "[[apps]]\nname = \"web\"\nscript = \"hog.py\"\ninterpreter = \"python3\"\nargs = [\"{LIMIT}\"]\nexec_mode = \"cluster\"\nport = {port}\nwait_ready = true\nmax_memory_restart = \"50M\"\n"
        ),
    );
    t.ok(&["start", "eco.toml"]);
    let (first, again) = restarted_for_memory(&t, "web");
    assert_eq!(
        again.id, first.id,
        "the replacement takes the instance's id"
    );
    assert_eq!(again.restarts, 1);
    assert!(
        again
            .restart_reason
            .as_deref()
            .is_some_and(|r| r.ends_with("over limit 50M")),
        "{again:?}"
    );
    // A second crossing is caught as well: the limit applies to every run.
    let (_, third) = restarted_for_memory(&t, "web");
    assert!(third.restarts > again.restarts, "{third:?}");
    let log = std::fs::read_to_string(t.home().join("pm2rs.log")).unwrap();
    assert!(
        log.contains("over limit 50M: reloading the instance"),
        "replaced by a reload: {log}"
    );
}

#[test]
fn a_reload_for_a_limit_that_is_never_ready_falls_back_to_a_restart() {
    let t = Pm2rs::new();
    t.write("hog.py", HOG);
    // wait_ready, but it never says READY=1: the replacement fails its listen_timeout.
    t.write(
        "eco.toml",
        &format!(
            "[[apps]]\nname = \"mute\"\nscript = \"hog.py\"\ninterpreter = \"python3\"\nargs = [\"{LIMIT}\"]\nwait_ready = true\nlisten_timeout = \"500ms\"\nmax_memory_restart = \"50M\"\n"
        ),
    );
    t.ok(&["start", "eco.toml"]);
    let (first, again) = restarted_for_memory(&t, "mute");
    assert_eq!(again.id, first.id);
    assert!(again.restarts > first.restarts, "{again:?}");
}
