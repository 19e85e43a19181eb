//! The daemon and its control socket: started on first use, one per home, safe socket handling,
//! version check, peer-uid check, and clean `kill`.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use crate::harness::{DEADLINE, Pm2rs, alive, eventually, wait_with_timeout};

#[test]
fn first_command_starts_the_daemon_and_kill_cleans_up() {
    let t = Pm2rs::new();
    assert!(!t.home().join("pm2rs.sock").exists());
    let out = t.ok(&["ping"]);
    assert!(out.contains("pong"), "{out}");

    let sock = std::fs::metadata(t.home().join("pm2rs.sock")).expect("socket exists");
    assert!(sock.file_type().is_socket());
    assert_eq!(sock.permissions().mode() & 0o777, 0o600, "socket mode");
    let home = std::fs::metadata(t.home()).expect("home");
    assert_eq!(home.permissions().mode() & 0o777, 0o700, "home mode");
    let pid = t.daemon_pid().expect("pid file written");
    assert!(alive(pid));
    assert!(
        out.contains(&pid.to_string()),
        "ping names the daemon pid: {out}"
    );

    // A second command talks to the same daemon.
    t.ok(&["list"]);
    assert_eq!(t.daemon_pid(), Some(pid));

    let out = t.ok(&["kill"]);
    assert!(out.contains("daemon"), "{out}");
    assert!(!alive(pid), "daemon still alive after kill");
    assert!(!t.home().join("pm2rs.sock").exists(), "socket left behind");
    assert!(!t.home().join("pm2rs.pid").exists(), "pid file left behind");
    // kill without a daemon is fine and does not start one.
    let out = t.ok(&["kill"]);
    assert!(out.contains("no daemon"), "{out}");
    assert!(!t.home().join("pm2rs.sock").exists());
}

#[test]
fn kill_returns_only_once_the_daemon_process_is_gone() {
    let t = Pm2rs::new();
    // A process in a session of its own keeps the app's stdout open: after replying to the kill,
    // the daemon waits (seconds) for that pipe before it exits. `kill` must wait that long too.
    let _escaped = t.start_escaping("escape");
    t.wait_online("escape", 1);
    let pid = t.daemon_pid().expect("daemon pid");
    let started = std::time::Instant::now();
    let out = t.ok(&["kill"]);
    assert!(out.contains("daemon"), "{out}");
    assert!(
        !alive(pid),
        "`kill` returned after {:?} with the daemon still running",
        started.elapsed()
    );
    assert!(!t.home().join("pm2rs.sock").exists(), "socket left behind");
}

#[test]
fn a_live_daemon_is_never_replaced_and_a_stale_socket_is() {
    let t = Pm2rs::new();
    // A stale socket file: bound once, nobody listening.
    std::fs::create_dir_all(t.home()).unwrap();
    let stale = std::os::unix::net::UnixListener::bind(t.home().join("pm2rs.sock")).unwrap();
    drop(stale);
    assert!(t.home().join("pm2rs.sock").exists());
    t.ok(&["ping"]);
    let pid = t.daemon_pid().expect("daemon pid");
    let inode = std::fs::metadata(t.home().join("pm2rs.sock"))
        .unwrap()
        .ino();

    // A second daemon for the same home refuses to start and leaves the socket alone.
    let r = t.run(&["daemon"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("already runs"), "{}", r.stderr);
    assert!(r.stderr.contains(&pid.to_string()), "{}", r.stderr);
    assert_eq!(
        std::fs::metadata(t.home().join("pm2rs.sock"))
            .unwrap()
            .ino(),
        inode
    );
    assert!(t.ok(&["ping"]).contains(&pid.to_string()));
}

#[test]
fn a_client_of_another_version_is_told_how_to_fix_it() {
    let t = Pm2rs::new();
    t.ok(&["ping"]);
    let mut s = UnixStream::connect(t.home().join("pm2rs.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /v1/processes HTTP/1.1\r\nhost: x\r\nx-pm2rs-version: 0.0.0-old\r\nconnection: close\r\n\r\n",
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 409"), "{resp}");
    assert!(resp.contains("run `pm2rs update` with this one"), "{resp}");
    assert!(resp.contains("version_mismatch"), "{resp}");
}

#[test]
fn requests_from_another_uid_are_refused() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("skipped: needs root to run a daemon as another user");
        return;
    }
    const NOBODY: u32 = 65534;
    let t = Pm2rs::new();
    let home = t.home().join("other");
    std::fs::create_dir(&home).unwrap();
    nix::unistd::chown(&home, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    std::fs::set_permissions(t.home(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut daemon = t.command(&["daemon"]);
    daemon
        .env("PM2RS_HOME", &home)
        .current_dir("/")
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = daemon.spawn().unwrap();
    // Kill it however the test ends.
    struct Guard(u32);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0 as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _guard = Guard(child.id());
    let mut line = [0u8; 5];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .expect("daemon as nobody became ready");
    assert_eq!(&line, b"ready");

    // Root can open the socket (file permissions do not stop root) but the daemon drops it.
    let r = t
        .command(&["list"])
        .env("PM2RS_HOME", &home)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_with_timeout(r, Duration::from_secs(20)).expect("list finished");
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let log = std::fs::read_to_string(home.join("pm2rs.log")).unwrap_or_default();
    assert!(
        eventually(DEADLINE, || std::fs::read_to_string(home.join("pm2rs.log"))
            .unwrap_or_default()
            .contains("refused a connection from another user")),
        "daemon log: {log}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_closed_stdout_is_a_quiet_success() {
    let t = Pm2rs::new();
    t.script("s.sh", "exec sleep 1000");
    t.ok(&["start", "s.sh", "-i", "3"]);
    // Read end closed before pm2rs writes: every write fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = t
        .command(&["list"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(20)).expect("list finished");
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // And literally through `| head -1` with pipefail.
    let bin = env!("CARGO_BIN_EXE_pm2rs");
    let child = std::process::Command::new("bash")
        .args(["-c", &format!("set -o pipefail; '{bin}' list | head -1")])
        .env("PM2RS_HOME", t.home())
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(20)).expect("pipeline finished");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sigterm_to_the_daemon_stops_every_app_then_the_daemon() {
    let t = Pm2rs::new();
    t.script("s.sh", "exec sleep 1000");
    t.ok(&["start", "s.sh", "-i", "2"]);
    let pids: Vec<u32> = t.wait_online("s", 2).iter().filter_map(|p| p.pid).collect();
    let daemon = t.daemon_pid().expect("daemon pid");
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(
        eventually(DEADLINE, || !alive(daemon)),
        "daemon survived SIGTERM"
    );
    for pid in pids {
        assert!(
            !alive(nix::unistd::Pid::from_raw(pid as i32)),
            "app {pid} survived the daemon's SIGTERM"
        );
    }
    assert!(!t.home().join("pm2rs.sock").exists(), "socket left behind");
    assert!(!t.home().join("pm2rs.pid").exists(), "pid file left behind");
}

#[test]
fn several_first_commands_at_once_share_one_daemon() {
    // Each call finds no daemon and starts one; one wins the home's lock, the others' daemons
    // exit at once ("already runs") and their CLIs must wait for the winner's socket. A shell
    // starts the calls within microseconds of each other, as `pm2rs ping & pm2rs ping` does.
    for round in 0..5 {
        let t = Pm2rs::new();
        let mut race = std::process::Command::new("sh");
        race.arg("-c")
            .arg(r#"p() { "$0" ping >/dev/null 2>err.$1 || cat err.$1; }; p 1 & p 2 & p 3 & p 4 & wait"#)
            .arg(env!("CARGO_BIN_EXE_pm2rs"))
            .env("PM2RS_HOME", t.home())
            .current_dir(t.work())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = wait_with_timeout(race.spawn().expect("sh"), Duration::from_secs(60))
            .expect("the pings end");
        let failed = String::from_utf8_lossy(&out.stdout);
        assert!(
            failed.trim().is_empty(),
            "round {round}: pings failed:\n{failed}"
        );
        let pid = t.daemon_pid().expect("one daemon");
        assert!(alive(pid));
        let out = t.ok(&["ping"]);
        assert!(out.contains(&pid.to_string()), "{out}");
    }
}

#[test]
fn a_command_racing_a_dying_daemon_waits_for_its_end_and_starts_the_next() {
    let t = Pm2rs::new();
    std::fs::create_dir_all(t.home()).unwrap();
    std::fs::set_permissions(t.home(), std::fs::Permissions::from_mode(0o700)).unwrap();
    // A daemon killed a moment ago: its main thread is a zombie while its last threads end, and
    // until they have, its socket still takes connections that nobody will answer.
    let mut zombie = std::process::Command::new("true").spawn().unwrap();
    let zombie_pid = zombie.id();
    let state = || {
        std::fs::read_to_string(format!("/proc/{zombie_pid}/stat"))
            .ok()
            .and_then(|s| {
                Some(
                    s[s.rfind(')')? + 1..]
                        .split_whitespace()
                        .next()?
                        .to_string(),
                )
            })
    };
    assert!(
        eventually(DEADLINE, || state().as_deref() == Some("Z")),
        "no zombie"
    );
    std::fs::write(t.home().join("pm2rs.pid"), format!("{zombie_pid}\n")).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(t.home().join("pm2rs.sock")).unwrap();
    let ping = t
        .command(&["ping"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The dying daemon's socket closes when its last thread ends.
    std::thread::sleep(Duration::from_millis(300));
    drop(listener);
    let out = wait_with_timeout(ping, DEADLINE).expect("ping ends");
    let _ = zombie.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("pong"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(t.daemon_pid().map(|p| p.as_raw() as u32), Some(zombie_pid));
    t.ok(&["kill"]);
}
