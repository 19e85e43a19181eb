//! The test environment: a temp home and work directory, a CLI runner with a timeout, polling with a
//! deadline, and a drop guard that leaves no process behind.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use pm2rs_proto::{Described, ProcessInfo, Status};
use tempfile::TempDir;

/// Longest any single CLI call may take before the test fails.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// Default deadline for polled conditions.
pub const DEADLINE: Duration = Duration::from_secs(15);

pub struct Pm2rs {
    home: TempDir,
    work: TempDir,
    /// Pids (and so process groups) seen in any listing: killed on drop if still alive.
    seen: std::cell::RefCell<Vec<u32>>,
}

/// What one CLI call produced.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Pm2rs {
    pub fn new() -> Self {
        Pm2rs {
            home: tempfile::Builder::new()
                .prefix("pm2rs-home")
                .tempdir()
                .expect("temp home"),
            work: tempfile::Builder::new()
                .prefix("pm2rs-work")
                .tempdir()
                .expect("temp work dir"),
            seen: Default::default(),
        }
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn work(&self) -> &Path {
        self.work.path()
    }

    /// A `pm2rs` command with this test's home, no colour, run in the work directory.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pm2rs"));
        cmd.args(args)
            .env("PM2RS_HOME", self.home())
            .env("NO_COLOR", "1")
            .env_remove("COLUMNS")
            .current_dir(self.work());
        cmd
    }

    /// Runs the CLI and returns its exit code and output; fails the test if it hangs.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_input(args, None)
    }

    /// [`Pm2rs::run`] with `input` on the CLI's standard input (`None`: /dev/null).
    pub fn run_with_input(&self, args: &[&str], input: Option<&str>) -> Run {
        let mut child = self
            .command(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pm2rs");
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            // Dropping `stdin` at the end of this block closes it: the CLI sees end of file.
            stdin
                .write_all(input.as_bytes())
                .expect("write the CLI's stdin");
        }
        let out = wait_with_timeout(child, CLI_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "`pm2rs {}` did not finish within {CLI_TIMEOUT:?}",
                args.join(" ")
            )
        });
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs the CLI and asserts it succeeded; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(
            r.code,
            0,
            "`pm2rs {}` failed\nstdout:\n{}\nstderr:\n{}",
            args.join(" "),
            r.stdout,
            r.stderr
        );
        r.stdout
    }

    /// `pm2rs list --json`.
    pub fn list(&self) -> Vec<ProcessInfo> {
        let out = self.ok(&["list", "--json"]);
        let procs: Vec<ProcessInfo> = serde_json::from_str(&out).expect("list --json is JSON");
        self.seen
            .borrow_mut()
            .extend(procs.iter().filter_map(|p| p.pid));
        procs
    }

    /// `pm2rs describe <target> --json`.
    pub fn describe(&self, target: &str) -> Vec<Described> {
        serde_json::from_str(&self.ok(&["describe", target, "--json"])).expect("describe --json")
    }

    /// Polls `list` until `cond` holds, failing the test with the last listing after `deadline`.
    pub fn wait_for(
        &self,
        what: &str,
        deadline: Duration,
        mut cond: impl FnMut(&[ProcessInfo]) -> bool,
    ) -> Vec<ProcessInfo> {
        let end = Instant::now() + deadline;
        loop {
            let procs = self.list();
            if cond(&procs) {
                return procs;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; last list: {procs:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every instance of `name` is online with a pid, `count` of them.
    pub fn wait_online(&self, name: &str, count: usize) -> Vec<ProcessInfo> {
        self.wait_for(
            &format!("{count} online instance(s) of {name}"),
            DEADLINE,
            |ps| {
                let mine: Vec<_> = ps.iter().filter(|p| p.name == name).collect();
                mine.len() == count
                    && mine
                        .iter()
                        .all(|p| p.status == Status::Online && p.pid.is_some())
            },
        )
        .into_iter()
        .filter(|p| p.name == name)
        .collect()
    }

    /// Writes a file in the work directory and returns its path.
    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let path = self.work().join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        std::fs::write(&path, content).expect("write file");
        path
    }

    /// Writes an executable shell script in the work directory.
    pub fn script(&self, rel: &str, body: &str) -> PathBuf {
        let path = self.write(rel, &format!("#!/bin/sh\n{body}\n"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    /// Starts app `name`, which prints `up` and leaves a process in a session of its own (out of
    /// the app's group: no group kill reaches it) holding the app's stdout open. Returns once that
    /// process's pid is known; the guard kills it.
    pub fn start_escaping(&self, name: &str) -> KillOnDrop {
        let script = format!("{name}.sh");
        let pid_file = format!("{name}.escaped.pid");
        self.script(
            &script,
            &format!("setsid sleep 1000 & echo $! > {pid_file}; echo up; exec sleep 1000"),
        );
        let escaped = KillOnDrop(self.work().join(pid_file));
        self.ok(&["start", &script, "--name", name]);
        assert!(
            eventually(DEADLINE, || escaped.pid().is_some()),
            "the escaping process of {name} never wrote its pid"
        );
        escaped
    }

    /// The daemon's pid from its pid file, if the file exists.
    pub fn daemon_pid(&self) -> Option<Pid> {
        let text = std::fs::read_to_string(self.home().join("pm2rs.pid")).ok()?;
        text.trim().parse().ok().map(Pid::from_raw)
    }

    /// The fd keeper's pid from its pid file, if the file exists.
    pub fn keeper_pid(&self) -> Option<Pid> {
        let text = std::fs::read_to_string(self.home().join("keeper.pid")).ok()?;
        text.trim().parse().ok().map(Pid::from_raw)
    }
}

impl Drop for Pm2rs {
    fn drop(&mut self) {
        let daemon = self.daemon_pid();
        // Graceful first: stops every app and the daemon (and the fd keeper; a daemon killed by
        // the test is replaced by one that takes its apps over, then stops them).
        if let Ok(child) = self
            .command(&["kill"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            let _ = wait_with_timeout(child, Duration::from_secs(20));
        }
        // Then by force, whatever is left.
        if let Some(pid) = daemon
            && alive(pid)
        {
            let _ = kill(pid, Signal::SIGKILL);
        }
        if let Some(pid) = self.keeper_pid()
            && alive(pid)
        {
            let _ = kill(pid, Signal::SIGKILL);
        }
        for pid in self.seen.borrow().iter() {
            let _ = killpg(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }
}

/// SIGKILLs the process whose pid a test's script wrote into this file (one the daemon's group
/// kill cannot reach, such as a process in a session of its own), however the test ends.
pub struct KillOnDrop(PathBuf);

impl KillOnDrop {
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.0).ok()?.trim().parse().ok()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Waits for `child` up to `timeout`; kills it and returns None when it takes longer.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> Option<Output> {
    let end = Instant::now() + timeout;
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let err_t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Some(Output {
                    status,
                    stdout: out_t.join().unwrap_or_default(),
                    stderr: err_t.join().unwrap_or_default(),
                });
            }
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(2)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Whether `pid` is a live (non-zombie) process.
pub fn alive(pid: Pid) -> bool {
    if kill(pid, None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// Live processes whose process group is `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(i) = stat.rfind(')') else { continue };
        let fields: Vec<&str> = stat[i + 1..].split_whitespace().collect();
        // fields[0] = state, fields[2] = pgrp
        if fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
            && fields.first().is_some_and(|s| *s != "Z" && *s != "X")
        {
            out.push(pid);
        }
    }
    out
}

/// Polls `cond` until it holds or `deadline` passes; returns whether it held.
pub fn eventually(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
