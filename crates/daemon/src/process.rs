//! Process control at the OS level: spawn an instance in its own process group (its output into
//! the pipes of [`crate::logs`]), signal its group safely, and read a process's figures from
//! `/proc`.
//!
//! The supervisor reaches this module only through [`crate::os::RealOs`], which also reaps each
//! instance itself (per pid): a pid the supervisor holds has not been reaped, so it cannot have
//! been reused by another process. The recorded start time is checked as well before any signal,
//! as a second guard. The sampler ([`crate::metrics`]) reads `/proc` through [`stat_sample`].

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::Stdio;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use pm2rs_proto::AppSpec;

use crate::cluster::handoff::{self, Handoff};
use crate::policy::ExitReason;

/// A running process we spawned: its pid (also its process-group id) and its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    pub pid: Pid,
    /// Start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`); 0 if unreadable.
    pub start_ticks: u64,
}

/// What an instance needs to be spawned, besides its app spec.
pub struct SpawnInput<'a> {
    pub spec: &'a AppSpec,
    /// Index of the instance within its app.
    pub instance: u32,
    /// Unique id of the instance.
    pub id: u32,
    /// Write ends of the pipes the daemon drains into the log files.
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Sockets, IPC channel and variables handed to the child (see [`crate::cluster::handoff`]).
    pub handoff: Option<&'a Handoff>,
}

/// Spawns one instance in a new process group, stdin from /dev/null, stdout and stderr to the
/// given pipes (closed in the daemon once the child has them).
pub fn spawn(input: SpawnInput<'_>) -> io::Result<Tracked> {
    let spec = input.spec;
    let mut cmd = handoff::command(spec, input.handoff);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .envs(instance_env(spec, input.instance, input.id))
        .envs(handoff::env(input.handoff))
        .stdin(Stdio::null())
        .stdout(Stdio::from(input.stdout))
        .stderr(Stdio::from(input.stderr))
        .process_group(0);
    let child = cmd.spawn();
    // Close our copies of the pipes' write ends now, so end of file comes when the child's go.
    drop(cmd);
    let child = child?;
    // We never wait on `child` through std: `os::RealOs` reaps it through its pidfd. Dropping a
    // std Child neither kills nor waits for it.
    let pid = Pid::from_raw(child.id() as i32);
    drop(child);
    Ok(Tracked {
        pid,
        start_ticks: start_ticks(pid).unwrap_or(0),
    })
}

/// The variables added to every instance's environment, over the daemon's own.
pub fn instance_env(spec: &AppSpec, instance: u32, id: u32) -> BTreeMap<String, String> {
    let mut env = spec.env.clone();
    env.insert(spec.instance_var.clone(), instance.to_string());
    env.insert("PM2RS_INSTANCE".into(), instance.to_string());
    // PM2's increment_var: the variable's number (from the app's env, else the daemon's, else
    // the first listen port for PORT) plus the instance index.
    if let Some(var) = &spec.increment_var {
        let base = spec
            .env
            .get(var)
            .cloned()
            .or_else(|| std::env::var(var).ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .or_else(|| {
                (var == "PORT")
                    .then(|| spec.listen.first().map(|a| u64::from(a.port())))
                    .flatten()
            });
        if let Some(base) = base {
            env.insert(var.clone(), (base + u64::from(instance)).to_string());
        }
    }
    env.insert("PM2RS_APP_NAME".into(), spec.name.clone());
    env.insert("PM2RS_ID".into(), id.to_string());
    env
}

/// Field `n` (1-based, as in proc(5); n ≥ 3) of `/proc/<pid>/stat`, or None if the process is gone.
fn stat_field(pid: Pid, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace()
        .nth(n.checked_sub(3)?)
        .map(str::to_owned)
}

/// The figures `metrics` needs from one read of `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatSample {
    /// User plus system CPU time, in clock ticks (fields 14 and 15).
    pub cpu_ticks: u64,
    /// Start time in clock ticks since boot (field 22): tells a reused pid apart.
    pub start_ticks: u64,
    /// Resident set size in pages (field 24).
    pub rss_pages: u64,
    /// Process group (field 5).
    pub pgid: u64,
}

/// Reads [`StatSample`] of `pid`, or None if the process is gone.
pub fn stat_sample(pid: Pid) -> Option<StatSample> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// [`StatSample`] from the text of a `/proc/<pid>/stat`.
pub fn parse_stat(stat: &str) -> Option<StatSample> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3, so field n is item n - 3.
    let fields: Vec<u64> = rest
        .split_whitespace()
        .take(22)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let field = |n: usize| fields.get(n - 3).copied();
    Some(StatSample {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
        rss_pages: field(24)?,
        pgid: field(5)?,
    })
}

/// The children of `pid`'s main thread (`/proc/<pid>/task/<pid>/children`): the processes it
/// forked and that have not been reparented. Empty when it has none or is gone.
pub fn children(pid: Pid) -> Vec<Pid> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|t| {
            t.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .map(Pid::from_raw)
                .collect()
        })
        .unwrap_or_default()
}

/// The parent of `pid` (field 4 of `/proc/<pid>/stat`), or None if the process is gone.
pub fn parent(pid: Pid) -> Option<Pid> {
    stat_field(pid, 4)?.parse().ok().map(Pid::from_raw)
}

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
pub fn start_ticks(pid: Pid) -> Option<u64> {
    stat_field(pid, 22)?.parse().ok()
}

/// Whether `pid` exists and is not a zombie (a zombie has exited; only its parent's reaping is left).
pub fn is_running(pid: Pid) -> bool {
    kill(pid, None).is_ok() && stat_field(pid, 3).is_some_and(|state| state != "Z" && state != "X")
}

/// Sends `signal` to the whole process group led by `tracked`, after checking that the leader is still
/// the process we started (its start time matches) or is gone (then only its group can remain, and the
/// kernel does not reuse a pid that is still some group's id).
pub fn signal_group(tracked: Tracked, signal: Signal) -> nix::Result<()> {
    if tracked.start_ticks != 0
        && let Some(now) = start_ticks(tracked.pid)
        && now != tracked.start_ticks
    {
        return Err(Errno::ESRCH);
    }
    match killpg(tracked.pid, signal) {
        Err(Errno::ESRCH) => {
            // The group is empty; the leader may still be a zombie outside it.
            kill(tracked.pid, signal).or(Ok(()))
        }
        other => other,
    }
}

/// Whether any process is left in the group `pgid`.
pub fn group_alive(pgid: Pid) -> bool {
    killpg(pgid, None).is_ok()
}

/// Human text for how a run ended, e.g. `exit code 1` or `signal SIGKILL`.
pub fn describe_exit(exit: ExitReason) -> String {
    match exit {
        ExitReason::Code(c) => format!("exit code {c}"),
        ExitReason::Signal(n) => match Signal::try_from(n) {
            Ok(s) => format!("signal {}", s.as_str()),
            Err(_) => format!("signal {n}"),
        },
        ExitReason::Unknown => "exit status unknown (not the daemon's child)".to_string(),
    }
}

/// Parses a signal name as stored in an [`AppSpec`] (`"SIGINT"`, `"INT"`); SIGINT if unknown.
pub fn parse_signal(name: &str) -> Signal {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse().unwrap_or(Signal::SIGINT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_sample_of_self_counts_cpu_and_memory() {
        let me = Pid::this();
        let before = stat_sample(me).unwrap();
        // Burn some CPU time so the tick count has to move (one tick is 10 ms at 100 Hz).
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = stat_sample(me).unwrap();
        assert!(after.cpu_ticks > before.cpu_ticks, "{before:?} {after:?}");
        assert_eq!(after.start_ticks, start_ticks(me).unwrap());
        assert!(after.rss_pages > 0);
        assert_eq!(stat_sample(Pid::from_raw(i32::MAX)), None);
    }

    #[test]
    fn start_ticks_of_self_is_stable_and_nonzero() {
        let me = Pid::this();
        let a = start_ticks(me).expect("own stat");
        assert!(a > 0);
        assert_eq!(start_ticks(me), Some(a));
    }

    #[test]
    fn running_means_alive_and_not_a_zombie() {
        assert!(is_running(Pid::this()));
        let child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = Pid::from_raw(child.id() as i32);
        // Unreaped after exit: a zombie, which does not count as running.
        let gone = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(2));
            !is_running(pid)
        });
        assert!(gone, "an exited, unreaped child still counts as running");
        assert_eq!(stat_field(pid, 3).as_deref(), Some("Z"));
        drop(child);
        let _ = nix::sys::wait::waitpid(pid, None);
        assert!(!is_running(pid));
    }

    #[test]
    fn signal_names_parse() {
        assert_eq!(parse_signal("SIGTERM"), Signal::SIGTERM);
        assert_eq!(parse_signal("term"), Signal::SIGTERM);
        assert_eq!(parse_signal("bogus"), Signal::SIGINT);
    }

    #[test]
    fn exits_describe_themselves() {
        assert_eq!(describe_exit(ExitReason::Code(3)), "exit code 3");
        assert_eq!(describe_exit(ExitReason::Signal(9)), "signal SIGKILL");
    }

    #[test]
    fn a_mismatched_start_time_is_never_signalled() {
        let fake = Tracked {
            pid: Pid::this(),
            start_ticks: 1, // not our real start time
        };
        assert_eq!(signal_group(fake, Signal::SIGKILL), Err(Errno::ESRCH));
    }
}
