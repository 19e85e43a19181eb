//! The durable desired state through the real binary: `dump.json` written before each reply,
//! kept by `kill`, restored by `pm2rs daemon --resurrect` (as a boot unit runs it) and by
//! `pm2rs resurrect`, after a simulated reboot, and from the previous version when the file is
//! corrupt or torn.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Stdio};
use std::sync::mpsc;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use pm2rs_proto::{Described, ProcessInfo, Status};
use serde_json::Value;

use crate::harness::{DEADLINE, Pm2rs, alive, eventually};
use crate::http::free_port;

/// A `pm2rs daemon --resurrect` run in the background, as a boot unit would. On drop it gets
/// SIGTERM (it stops its apps, as a service manager stopping the unit), then SIGKILL if it is
/// still there after the deadline; the harness's own drop kills whatever app is left.
struct BootDaemon(Child);

impl Drop for BootDaemon {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.0.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let end = std::time::Instant::now() + DEADLINE;
        while std::time::Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `pm2rs daemon --resurrect` and waits for its `ready` line.
fn boot(t: &Pm2rs) -> BootDaemon {
    let mut child = t
        .command(&["daemon", "--resurrect"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pm2rs daemon --resurrect");
    let stdout = child.stdout.take().expect("daemon stdout");
    let guard = BootDaemon(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(DEADLINE)
        .expect("the daemon printed a line");
    assert!(line.starts_with("ready "), "daemon said {line:?}");
    guard
}

/// The apps of `dump.json` as (name, instances, stopped).
fn dumped(t: &Pm2rs) -> Vec<(String, u64, bool)> {
    let text = std::fs::read_to_string(t.home().join("dump.json")).expect("dump.json exists");
    let dump: Value = serde_json::from_str(&text).expect("dump.json is JSON");
    assert_eq!(dump["version"], 1);
    dump["apps"]
        .as_array()
        .expect("apps")
        .iter()
        .map(|a| {
            (
                a["spec"]["name"].as_str().unwrap().to_string(),
                a["spec"]["instances"].as_u64().unwrap(),
                a["stopped"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn names(t: &Pm2rs) -> Vec<String> {
    dumped(t).into_iter().map(|(n, _, _)| n).collect()
}

/// The warnings `pm2rs ping` prints.
fn ping_warnings(t: &Pm2rs) -> Vec<String> {
    t.ok(&["ping"])
        .lines()
        .filter_map(|l| l.strip_prefix("[pm2rs] warning: "))
        .map(str::to_string)
        .collect()
}

fn of<'a>(procs: &'a [ProcessInfo], name: &str) -> Vec<&'a ProcessInfo> {
    procs.iter().filter(|p| p.name == name).collect()
}

/// Starts the test's set: `pair` (3 instances scaled to 2), `web` (cluster mode on `port`),
/// `idle` (stopped by the user) and `prof` (started with `--env production`).
fn start_the_set(t: &Pm2rs, port: u16) {
    t.script("run.sh", "exec sleep 1000");
    t.script("prof.sh", "echo \"$MODE\" > mode.txt; exec sleep 1000");
    t.write(
        "eco.toml",
        "[[apps]]\nname = \"prof\"\nscript = \"prof.sh\"\nenv = { MODE = \"dev\" }\nenv_production = { MODE = \"prod\" }\n",
    );
    t.ok(&["start", "run.sh", "--name", "pair", "-i", "3"]);
    // Durable before the reply: the app is in the dump as soon as `start` returns.
    assert_eq!(names(t), ["pair"]);
    t.ok(&["scale", "pair", "2"]);
    assert_eq!(dumped(t), [("pair".to_string(), 2, false)]);
    t.ok(&[
        "start",
        "run.sh",
        "--name",
        "web",
        "--port",
        &port.to_string(),
    ]);
    t.ok(&["start", "run.sh", "--name", "idle"]);
    t.ok(&["stop", "idle"]);
    assert!(dumped(t).contains(&("idle".to_string(), 1, true)));
    t.ok(&["start", "eco.toml", "--env", "production"]);
    t.wait_online("pair", 2);
    t.wait_online("web", 1);
    t.wait_online("prof", 1);
    assert!(eventually(DEADLINE, || {
        std::fs::read_to_string(t.work().join("mode.txt")).is_ok_and(|m| m.trim() == "prod")
    }));
}

/// The set of [`start_the_set`] is back: counts as scaled, `idle` stopped, the profile applied.
fn check_the_set(t: &Pm2rs, port: u16) {
    t.wait_online("pair", 2);
    t.wait_online("web", 1);
    t.wait_online("prof", 1);
    let procs = t.list();
    let idle = of(&procs, "idle");
    assert_eq!(idle.len(), 1, "{procs:#?}");
    assert_eq!(idle[0].status, Status::Stopped);
    assert!(idle[0].pid.is_none());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "the cluster port {port} is bound again"
    );
    assert!(
        eventually(DEADLINE, || {
            std::fs::read_to_string(t.work().join("mode.txt")).is_ok_and(|m| m.trim() == "prod")
        }),
        "prof ran again with its production env"
    );
    let described: Vec<Described> =
        serde_json::from_str(&t.ok(&["describe", "prof", "--json"])).expect("describe --json");
    assert_eq!(described[0].spec.env_profile.as_deref(), Some("production"));
    assert!(t.ok(&["describe", "prof"]).contains("production"));
}

#[test]
fn kill_keeps_the_dump_and_the_boot_daemon_brings_the_set_back() {
    let t = Pm2rs::new();
    let port = free_port();
    start_the_set(&t, port);
    let dump = t.home().join("dump.json");
    let mode = std::fs::metadata(&dump).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "dump.json mode {mode:o}");
    let before = dumped(&t);

    let out = t.ok(&["kill"]);
    assert!(out.contains("pm2rs resurrect"), "{out}");
    // The apps were stopped, not forgotten.
    assert_eq!(dumped(&t), before);
    // Written atomically: no temp file left in the home.
    let leftovers: Vec<String> = std::fs::read_dir(t.home())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".dump"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let _daemon = boot_and_check_the_set(&t, port, &before);
}

/// Runs the boot daemon and checks that [`start_the_set`]'s set is back, dump unchanged.
fn boot_and_check_the_set(t: &Pm2rs, port: u16, before: &[(String, u64, bool)]) -> BootDaemon {
    std::fs::remove_file(t.work().join("mode.txt")).unwrap();
    let previous = std::fs::read(t.home().join("dump.json.1")).expect("dump.json.1");
    let daemon = boot(t);
    check_the_set(t, port);
    assert_eq!(dumped(t), before);
    // Restoring a good dump does not write it again, so the older versions stay as they were.
    assert_eq!(
        std::fs::read(t.home().join("dump.json.1")).unwrap(),
        previous
    );
    daemon
}

#[test]
fn a_reboot_brings_the_saved_set_back() {
    let t = Pm2rs::new();
    let port = free_port();
    start_the_set(&t, port);
    let before = dumped(&t);
    // A reboot: the daemon and every app process die at once, nothing stops gracefully.
    let pids: Vec<u32> = t.list().iter().filter_map(|p| p.pid).collect();
    let daemon = t.daemon_pid().expect("daemon pid");
    kill(daemon, Signal::SIGKILL).unwrap();
    for &pid in &pids {
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    assert!(eventually(DEADLINE, || !alive(daemon)
        && pids.iter().all(|&p| !alive(Pid::from_raw(p as i32)))));
    let _daemon = boot_and_check_the_set(&t, port, &before);
}

#[test]
fn a_corrupt_or_torn_dump_falls_back_to_the_previous_version_with_a_warning() {
    let t = Pm2rs::new();
    t.script("run.sh", "exec sleep 1000");
    t.ok(&["start", "run.sh", "--name", "a"]);
    t.ok(&["start", "run.sh", "--name", "b"]);
    t.ok(&["kill"]);
    // dump.json has a and b; dump.json.1, the version before, only a.
    assert_eq!(names(&t), ["a", "b"]);
    let dump = t.home().join("dump.json");
    let good = std::fs::read(&dump).unwrap();

    for (what, bad) in [
        ("garbage", b"\x00\xff not json {{{".to_vec()),
        ("torn", good[..good.len() / 2].to_vec()),
    ] {
        std::fs::write(&dump, &bad).unwrap();
        let daemon = boot(&t);
        let procs = t.wait_for("a restored", DEADLINE, |ps| {
            ps.iter()
                .any(|p| p.name == "a" && p.status == Status::Online)
        });
        assert!(of(&procs, "b").is_empty(), "{what}: {procs:#?}");
        let warnings = ping_warnings(&t);
        assert!(
            warnings.iter().any(|w| w.contains("unusable")),
            "{what}: {warnings:?}"
        );
        assert!(
            warnings.iter().any(|w| w.contains("previous good version")),
            "{what}: {warnings:?}"
        );
        assert!(t.ok(&["describe", "a"]).contains("warning: "));
        // The version used is written back as dump.json.
        assert!(
            eventually(DEADLINE, || std::fs::read_to_string(&dump).is_ok_and(
                |text| text.contains("\"name\": \"a\"") && !text.contains("\"name\": \"b\"")
            )),
            "{what}: dump.json written back"
        );
        // The bad file is kept aside, byte for byte.
        let aside: Vec<_> = std::fs::read_dir(t.home())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("dump.json.corrupt-"))
            .collect();
        assert!(
            aside.iter().any(|p| std::fs::read(p).unwrap() == bad),
            "{what}: {aside:?}"
        );
        for p in aside {
            std::fs::remove_file(p).unwrap();
        }
        t.ok(&["kill"]);
        drop(daemon);
        // Back to the set with a and b for the next round.
        std::fs::write(&dump, &good).unwrap();
    }
}

#[test]
fn a_bad_dump_with_no_previous_version_starts_empty_with_a_warning() {
    let t = Pm2rs::new();
    std::fs::write(t.home().join("dump.json"), b"{\"version\": 1, \"apps\": [").unwrap();
    let _daemon = boot(&t);
    assert!(t.list().is_empty());
    let warnings = ping_warnings(&t);
    assert!(
        warnings.iter().any(|w| w.contains("no good dump left")),
        "{warnings:?}"
    );
}

#[test]
fn save_and_resurrect_keep_their_pm2_meaning() {
    let t = Pm2rs::new();
    t.script("run.sh", "exec sleep 1000");
    t.ok(&["start", "run.sh", "--name", "a"]);
    t.ok(&["start", "run.sh", "--name", "b"]);
    t.ok(&["stop", "b"]);
    let out = t.ok(&["save"]);
    assert!(
        out.contains("saved 2 app(s)") && out.contains("dump.json"),
        "{out}"
    );
    t.ok(&["kill"]);
    // A plain CLI call starts an empty daemon, as PM2 does; `resurrect` loads the dump.
    assert!(t.list().is_empty());
    let out = t.ok(&["resurrect"]);
    assert!(
        out.contains("started a") && out.contains("restored b, stopped"),
        "{out}"
    );
    t.wait_online("a", 1);
    let procs = t.list();
    assert_eq!(of(&procs, "b")[0].status, Status::Stopped);
    // Apps already known are left alone.
    let again = t.ok(&["resurrect"]);
    assert!(again.contains("already known, left alone: a"), "{again}");
    assert_eq!(t.list().len(), 2);
    // A stopped app of the dump starts as usual.
    t.ok(&["start", "b"]);
    t.wait_online("b", 1);
    assert!(dumped(&t).contains(&("b".to_string(), 1, false)));
}

#[test]
fn delete_is_durable_before_its_reply() {
    let t = Pm2rs::new();
    t.script("run.sh", "exec sleep 1000");
    t.ok(&["start", "run.sh", "--name", "a"]);
    t.ok(&["start", "run.sh", "--name", "b"]);
    t.ok(&["delete", "a"]);
    assert_eq!(names(&t), ["b"]);
    t.ok(&["restart", "b"]);
    t.ok(&["stop", "b"]);
    assert_eq!(dumped(&t), [("b".to_string(), 1, true)]);
    t.ok(&["start", "b"]);
    assert_eq!(dumped(&t), [("b".to_string(), 1, false)]);
}

#[test]
fn sigterm_stops_the_apps_but_keeps_the_dump() {
    let t = Pm2rs::new();
    t.script("run.sh", "exec sleep 1000");
    t.ok(&["start", "run.sh", "--name", "a", "-i", "2"]);
    let pids: Vec<u32> = t.wait_online("a", 2).iter().filter_map(|p| p.pid).collect();
    let before = dumped(&t);
    let daemon = t.daemon_pid().expect("daemon pid");
    kill(daemon, Signal::SIGTERM).unwrap();
    assert!(eventually(DEADLINE, || !alive(daemon)));
    assert!(pids.iter().all(|&p| !alive(Pid::from_raw(p as i32))));
    assert_eq!(dumped(&t), before);
}

#[test]
fn a_dump_that_cannot_be_written_does_not_hang_replies_and_is_retried() {
    let t = Pm2rs::new();
    t.script("run.sh", "exec sleep 1000");
    t.ok(&["ping"]);
    // A directory where the file should be: every write fails (even as root).
    let dump = t.home().join("dump.json");
    std::fs::create_dir(&dump).unwrap();
    t.ok(&["start", "run.sh", "--name", "a"]);
    t.wait_online("a", 1);
    let warnings = ping_warnings(&t);
    assert!(
        warnings.iter().any(|w| w.contains("cannot write")),
        "{warnings:?}"
    );
    // Fixed: the retry writes it and the warning goes.
    std::fs::remove_dir(&dump).unwrap();
    assert!(
        eventually(DEADLINE, || dump.is_file() && ping_warnings(&t).is_empty()),
        "the dump was written again: {:?}",
        ping_warnings(&t)
    );
    assert_eq!(names(&t), ["a"]);
}

#[test]
fn a_port_taken_meanwhile_makes_only_that_app_errored() {
    let t = Pm2rs::new();
    let port = free_port();
    t.script("run.sh", "exec sleep 1000");
    t.ok(&[
        "start",
        "run.sh",
        "--name",
        "web",
        "--port",
        &port.to_string(),
    ]);
    t.ok(&["start", "run.sh", "--name", "other"]);
    t.ok(&["kill"]);
    // Someone else took the port while no daemon ran.
    let _squatter = std::net::TcpListener::bind(("0.0.0.0", port)).expect("take the port");
    let daemon = boot(&t);
    t.wait_online("other", 1);
    let procs = t.wait_for("web errored", DEADLINE, |ps| {
        ps.iter()
            .any(|p| p.name == "web" && p.status == Status::Errored)
    });
    let web = of(&procs, "web");
    let reason = web[0].reason.as_deref().unwrap_or_default();
    assert!(reason.contains(&port.to_string()), "{reason}");
    assert!(t.ok(&["ping"]).contains("pong"));
    drop(daemon);
}
