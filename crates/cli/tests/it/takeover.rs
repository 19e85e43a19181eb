//! The daemon dies or is replaced, the apps do not: after a kill -9 of the daemon, or `pm2rs
//! update`, the next daemon takes the running instances over (same pids, no restart, no
//! duplicate), no line of their output is lost, and a cluster port never refuses a connection.

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pm2rs_proto::{ProcessInfo, Status};

use crate::harness::{DEADLINE, Pm2rs, alive, eventually, wait_with_timeout};
use crate::http::{Load, free_port};

/// Prints 0, 1, 2… one line every 2 ms, flushed, until stopped.
const WRITER: &str = "import itertools, time\nfor i in itertools.count():\n    print(i, flush=True)\n    time.sleep(0.002)\n";

/// Three apps: `writer` (fork, 2 instances, numbered lines), `web` (cluster, 2 instances of the
/// Python server on `port`), `idle` (stopped). Returns the port.
fn start_three(t: &Pm2rs) -> u16 {
    let port = free_port();
    t.write("writer.py", WRITER);
    t.write("server.py", crate::cluster::PY_SERVER);
    t.write(
        "eco.toml",
        &format!(
            "[[apps]]\nname = \"writer\"\nscript = \"writer.py\"\ninterpreter = \"python3\"\ninstances = 2\n\n\
             [[apps]]\nname = \"web\"\nscript = \"server.py\"\ninterpreter = \"python3\"\nexec_mode = \"cluster\"\n\
             instances = 2\nlisten = \"127.0.0.1:{port}\"\n\n\
             [[apps]]\nname = \"idle\"\nscript = \"writer.py\"\ninterpreter = \"python3\"\n"
        ),
    );
    t.ok(&["start", "eco.toml"]);
    t.wait_online("writer", 2);
    t.wait_online("web", 2);
    t.wait_online("idle", 1);
    t.ok(&["stop", "idle"]);
    port
}

/// Each instance's id → (pid, started_at) of the listing.
fn runs(list: &[ProcessInfo]) -> BTreeMap<u32, (Option<u32>, Option<u64>, Status, String)> {
    list.iter()
        .map(|p| (p.id, (p.pid, p.started_at_us, p.status, p.name.clone())))
        .collect()
}

/// Live processes running one of the test's scripts (the apps' instances, nothing else).
fn script_processes(t: &Pm2rs) -> Vec<u32> {
    let work = t.work().to_string_lossy().into_owned();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let script = cmdline.contains("writer.py") || cmdline.contains("server.py");
        if script
            && (cmdline.contains(&work) || cwd_is(pid, &work))
            && alive(Pid::from_raw(pid as i32))
        {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

fn cwd_is(pid: u32, dir: &str) -> bool {
    std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|p| p.to_string_lossy() == dir)
}

/// Every number from 0 to the last one written is in instance `id`'s out log of `writer`.
fn assert_complete(t: &Pm2rs, id: u32) -> u64 {
    let path = t.home().join(format!("logs/writer-out-{id}.log"));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let numbers: Vec<u64> = text
        .lines()
        .map(|l| {
            l.trim()
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {l:?}"))
        })
        .collect();
    let max = numbers.iter().copied().max().expect("some lines");
    let seen: std::collections::BTreeSet<u64> = numbers.iter().copied().collect();
    let missing: Vec<u64> = (0..=max).filter(|n| !seen.contains(n)).take(10).collect();
    assert!(
        missing.is_empty(),
        "{}: lines missing (first ones): {missing:?} of 0..={max}",
        path.display()
    );
    max
}

/// kill -9 the daemon, or `update`, with three apps running under a client loop; then checks
/// the take-over.
fn survives(how: &str) {
    let t = Pm2rs::new();
    let port = start_three(&t);
    let load = Load::start(port, 2, false);
    assert!(load.wait_more(20, DEADLINE), "the client loop gets answers");
    let before = runs(&t.list());
    let processes = script_processes(&t);
    assert_eq!(processes.len(), 4, "2 writers and 2 servers: {processes:?}");
    let daemon = t.daemon_pid().expect("daemon pid");
    let keeper = t.keeper_pid().expect("the fd keeper runs");
    match how {
        "kill -9" => {
            kill(daemon, Signal::SIGKILL).unwrap();
            assert!(eventually(DEADLINE, || !alive(daemon)), "daemon gone");
            // Output keeps being written while no daemon runs, and the port keeps serving.
            assert!(
                load.wait_more(20, DEADLINE),
                "the port serves while no daemon runs"
            );
        }
        _ => {
            let out = t.ok(&["update"]);
            assert!(out.contains("daemon replaced"), "{out}");
        }
    }
    let after = runs(&t.list());
    assert_eq!(before, after, "same instances, same pids, same start times");
    assert_ne!(t.daemon_pid(), Some(daemon), "a new daemon serves");
    assert_eq!(t.keeper_pid(), Some(keeper), "the same keeper holds on");
    let ping = t.ok(&["ping"]);
    assert!(ping.contains(&format!("fd keeper pid {keeper} ")), "{ping}");
    assert!(load.wait_more(20, DEADLINE), "the client loop gets answers");
    // Nothing restarts behind our back, and nothing was duplicated.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(runs(&t.list()), before, "still the same runs");
    assert_eq!(
        script_processes(&t),
        processes,
        "no extra process, none lost"
    );
    let stats = load.stop();
    assert_eq!(
        stats.failed(),
        0,
        "no refused connection: {}",
        stats.summary()
    );
    // The stream written across the change is whole.
    t.ok(&["stop", "writer"]);
    for id in t.list().iter().filter(|p| p.name == "writer").map(|p| p.id) {
        let max = assert_complete(&t, id);
        assert!(max > 100, "instance {id} wrote {max} lines only");
    }
}

#[test]
fn apps_outlive_a_daemon_killed_with_sigkill() {
    survives("kill -9");
}

#[test]
fn update_replaces_the_daemon_and_every_app_keeps_its_pid() {
    survives("update");
}

#[test]
fn an_instance_that_ended_while_no_daemon_ran_is_restarted_by_the_next() {
    let t = Pm2rs::new();
    t.write("writer.py", WRITER);
    t.ok(&[
        "start",
        "writer.py",
        "--interpreter",
        "python3",
        "-i",
        "2",
        "--name",
        "writer",
    ]);
    let before = t.wait_online("writer", 2);
    let daemon = t.daemon_pid().expect("daemon pid");
    kill(daemon, Signal::SIGKILL).unwrap();
    assert!(eventually(DEADLINE, || !alive(daemon)), "daemon gone");
    let victim = Pid::from_raw(before[0].pid.expect("pid") as i32);
    kill(victim, Signal::SIGKILL).unwrap();
    assert!(eventually(DEADLINE, || !alive(victim)), "instance gone");
    let after = t.wait_for("the ended instance restarted", DEADLINE, |list| {
        list.iter().filter(|p| p.status == Status::Online).count() == 2
            && list.iter().any(|p| p.id == before[0].id && p.restarts == 1)
    });
    let kept = after.iter().find(|p| p.id == before[1].id).unwrap();
    assert_eq!(kept.pid, before[1].pid, "the other one was taken over");
    assert_eq!(kept.restarts, 0);
    let restarted = after.iter().find(|p| p.id == before[0].id).unwrap();
    assert_ne!(restarted.pid, before[0].pid);

    // The end of an instance taken over (not the new daemon's child) is noticed too.
    let taken = Pid::from_raw(kept.pid.expect("pid") as i32);
    kill(taken, Signal::SIGKILL).unwrap();
    let last = t.wait_for("the taken-over instance restarted", DEADLINE, |list| {
        list.iter()
            .any(|p| p.id == before[1].id && p.restarts == 1 && p.status == Status::Online)
    });
    let again = last.iter().find(|p| p.id == before[1].id).unwrap();
    assert_ne!(again.pid, kept.pid);
}

/// A `pm2rs daemon` run in the foreground, as a service manager runs it; killed when dropped.
struct ServiceMain(std::process::Child);

impl ServiceMain {
    /// Starts `pm2rs daemon` of `t` with systemd's INVOCATION_ID set, and waits until it serves.
    fn start(t: &Pm2rs) -> ServiceMain {
        let child = t
            .command(&["daemon"])
            .env("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pm2rs daemon");
        let main = ServiceMain(child);
        let socket = t.home().join("pm2rs.sock");
        assert!(
            eventually(DEADLINE, || UnixStream::connect(&socket).is_ok()
                && t.daemon_pid() == Some(main.pid())),
            "the daemon never served"
        );
        main
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.0.id() as i32)
    }
}

impl Drop for ServiceMain {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn update_under_a_service_manager_leaves_the_successor_to_it() {
    let t = Pm2rs::new();
    let mut first = ServiceMain::start(&t);
    t.script("idle.sh", "exec sleep 1000");
    t.ok(&["start", "idle.sh", "--name", "idle"]);
    let before = t.wait_online("idle", 1);

    let update = t
        .command(&["update"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pm2rs update");
    // The old daemon hands over and exits with EX_TEMPFAIL, which Restart=on-failure restarts.
    let status = wait_exit(&mut first.0).expect("the old daemon exits after the handover");
    assert_eq!(status.code(), Some(75), "{status:?}");
    // The manager restarts it after its RestartSec; meanwhile `update` must not start one itself.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        UnixStream::connect(t.home().join("pm2rs.sock")).is_err()
            && t.daemon_pid().is_none_or(|pid| pid == first.pid()),
        "a daemon was started outside the unit: {:?}",
        t.daemon_pid()
    );
    let second = ServiceMain::start(&t);

    let out = wait_with_timeout(update, DEADLINE).expect("pm2rs update ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("(pid {})", second.pid())),
        "the successor is the manager's daemon: {stdout}"
    );
    let after = t.wait_online("idle", 1);
    assert_eq!(after[0].pid, before[0].pid, "the app kept running");
    t.ok(&["kill"]);
}

/// Waits for `child` to exit, at most [`DEADLINE`].
fn wait_exit(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    let mut status = None;
    eventually(DEADLINE, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status
}
