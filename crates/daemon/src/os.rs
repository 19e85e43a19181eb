//! The supervisor's seam to the operating system: spawn an instance, signal its process group, ask
//! whether a group is alive, and learn when a process exits. [`Os`] is that seam; [`RealOs`] is
//! Linux (it wraps [`crate::process`]); tests put a fake behind it (`os::fake`) that keeps a pid
//! table on tokio's paused clock, so the supervisor's timing is tested without real processes.
//!
//! # How exits are learnt
//! Every watched process gets a pidfd (`pidfd_open`) polled by the runtime; when it becomes
//! readable the process has ended, and `waitid(P_PIDFD)` reaps exactly that process and reads its
//! status. A process that is not the daemon's child (one a restarted daemon takes over) can be
//! watched the same way; `waitid` then fails with `ECHILD` and its status is
//! [`ExitReason::Unknown`]: only its parent could know it. Each exit is sent as an [`Exit`] on a
//! bounded channel to the supervisor.
//!
//! Reaping is per pid, never `waitpid(-1)`: a helper process the daemon runs for itself (a hook, a
//! `node` evaluating a config file, started with `std::process::Command`) keeps its exit status for
//! whoever waits on it. The daemon is still the child subreaper of its apps, so their orphaned
//! grandchildren are reparented to it; on SIGCHLD an orphan sweep reaps zombies that nobody else
//! waits for: not watched, and not in the daemon's own process group (where helpers run; an
//! instance and its descendants live in the instance's group, or in a session of their own).
//!
//! A kernel without `pidfd_open` (before Linux 5.3), or a pidfd that cannot be opened (no fd
//! left), falls back to `waitpid(pid, WNOHANG)` of each such child on SIGCHLD: still per pid.

#[cfg(test)]
pub mod fake;

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::policy::ExitReason;
use crate::process::{self, SpawnInput, Tracked};

/// Capacity of the exit channel; watchers wait when the supervisor is behind.
pub const EXIT_QUEUE: usize = 256;

/// A watched process has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: Pid,
    pub reason: ExitReason,
}

/// What the supervisor asks of the operating system. Exits of spawned and watched processes are
/// reported as [`Exit`]s on the channel the implementation was built with.
pub trait Os: Send {
    /// Spawns an instance in a process group of its own (see [`process::spawn`]) and watches it.
    fn spawn(&mut self, input: SpawnInput<'_>) -> io::Result<Tracked>;
    /// Watches a running process the daemon did not just spawn (one a restarted daemon takes
    /// over); a non-child's exit comes with [`ExitReason::Unknown`].
    fn watch(&mut self, tracked: Tracked) -> io::Result<()>;
    /// Sends `signal` to the group led by `tracked`, if its leader is still that process.
    fn signal_group(&mut self, tracked: Tracked, signal: Signal) -> nix::Result<()>;
    /// SIGKILLs whatever is left in group `pgid`, whose leader has exited.
    fn kill_group(&mut self, pgid: Pid);
    /// Whether any process is left in group `pgid`.
    fn group_alive(&self, pgid: Pid) -> bool;
    /// The process group of `pid`, if `pid` exists.
    fn group_of(&self, pid: Pid) -> Option<Pid>;
    /// The wall clock, what cron expressions are read against.
    fn wall_clock(&self) -> std::time::SystemTime {
        std::time::SystemTime::now()
    }
}

/// The real operating system (Linux).
pub struct RealOs {
    exits: mpsc::Sender<Exit>,
    reaper: Arc<Reaper>,
    /// False on a kernel without `pidfd_open`: every child is watched by `waitpid` on SIGCHLD.
    pidfds: bool,
}

/// What the exit watchers and the SIGCHLD task share.
struct Reaper {
    /// Pids whose exit has a watcher: the orphan sweep never reaps them. Held while forking, so no
    /// sweep can see a new child before it is registered, whatever the runtime flavour.
    watched: Mutex<Watched>,
    /// The daemon's own process group: its helper processes run there.
    own_pgid: Pid,
    /// Whether this process is a child subreaper: only then can orphans become its children,
    /// and only then does it sweep (a test binary, which is not one, never reaps another test's
    /// children).
    subreaper: bool,
    /// Orphans reaped so far, and sweeps made (for tests).
    orphans_reaped: AtomicU64,
    sweeps: AtomicU64,
}

#[derive(Default)]
struct Watched {
    /// Watched through a pidfd (their watcher task reaps them).
    by_pidfd: HashSet<Pid>,
    /// Children watched by `waitpid(pid, WNOHANG)` on SIGCHLD.
    by_waitpid: HashSet<Pid>,
}

impl Watched {
    fn contains(&self, pid: Pid) -> bool {
        self.by_pidfd.contains(&pid) || self.by_waitpid.contains(&pid)
    }
}

fn lock(m: &Mutex<Watched>) -> MutexGuard<'_, Watched> {
    // Plain sets: a panic while holding them cannot leave them half-changed.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The first and longest wait before sweeping again when a zombie that is not ours to reap (a
/// helper's, not yet waited for) hides the orphans behind it.
const SWEEP_RETRY_FIRST: Duration = Duration::from_millis(50);
const SWEEP_RETRY_MAX: Duration = Duration::from_secs(2);

impl RealOs {
    /// Registers for SIGCHLD and starts the task that reaps orphans (and, without pidfds, finds
    /// exits). Must be called inside the runtime, before any child is spawned, and after the
    /// process became a child subreaper if it is to be one.
    pub fn start(exits: mpsc::Sender<Exit>) -> io::Result<RealOs> {
        let pidfds = pidfds_supported();
        if !pidfds {
            warn!("this kernel has no pidfd_open; exits are found by waitpid on SIGCHLD");
        }
        Self::start_with(exits, pidfds)
    }

    fn start_with(exits: mpsc::Sender<Exit>, pidfds: bool) -> io::Result<RealOs> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Arc::new(Reaper {
            watched: Mutex::new(Watched::default()),
            own_pgid: nix::unistd::getpgrp(),
            subreaper: nix::sys::prctl::get_child_subreaper().unwrap_or(false),
            orphans_reaped: AtomicU64::new(0),
            sweeps: AtomicU64::new(0),
        });
        let task_reaper = reaper.clone();
        let task_exits = exits.clone();
        tokio::spawn(async move {
            let mut retry: Option<Duration> = None;
            loop {
                tokio::select! {
                    got = sigchld.recv() => if got.is_none() { return },
                    () = sleep_opt(retry) => {}
                }
                for exit in task_reaper.reap_waited() {
                    if task_exits.send(exit).await.is_err() {
                        return;
                    }
                }
                retry = if task_reaper.sweep() {
                    None
                } else {
                    Some(retry.map_or(SWEEP_RETRY_FIRST, |d| (d * 2).min(SWEEP_RETRY_MAX)))
                };
            }
        });
        Ok(RealOs {
            exits,
            reaper,
            pidfds,
        })
    }

    /// Orphans reaped so far.
    pub fn orphans_reaped(&self) -> u64 {
        self.reaper.orphans_reaped.load(Ordering::Relaxed)
    }

    /// Orphan sweeps made so far (each SIGCHLD, and each retry, makes one).
    pub fn sweeps(&self) -> u64 {
        self.reaper.sweeps.load(Ordering::Relaxed)
    }

    /// Starts watching `tracked` with the set already locked. `child`: whether it is our child
    /// (only a child can fall back to `waitpid`).
    fn watch_locked(&self, watched: &mut Watched, tracked: Tracked, child: bool) -> io::Result<()> {
        let pid = tracked.pid;
        let pidfd = if self.pidfds {
            open_pidfd(pid)
        } else {
            Err(io::Error::from(io::ErrorKind::Unsupported))
        };
        // A pid whose process started at another time is not the one we were told about (checked
        // once the pidfd, if any, pins the process: it cannot be reused after this check).
        if tracked.start_ticks != 0
            && process::start_ticks(pid).is_none_or(|t| t != tracked.start_ticks)
        {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        match pidfd {
            Ok(fd) => {
                watched.by_pidfd.insert(pid);
                tokio::spawn(wait_exit(fd, pid, self.exits.clone(), self.reaper.clone()));
                Ok(())
            }
            Err(e) if child => {
                if self.pidfds {
                    warn!(pid = pid.as_raw(), %e, "no pidfd for a child; watching it with waitpid");
                }
                watched.by_waitpid.insert(pid);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl Os for RealOs {
    fn spawn(&mut self, input: SpawnInput<'_>) -> io::Result<Tracked> {
        let reaper = self.reaper.clone();
        let mut watched = lock(&reaper.watched);
        let tracked = process::spawn(input)?;
        self.watch_locked(&mut watched, tracked, true)?;
        Ok(tracked)
    }

    fn watch(&mut self, tracked: Tracked) -> io::Result<()> {
        let reaper = self.reaper.clone();
        let mut watched = lock(&reaper.watched);
        let child = process::parent(tracked.pid) == Some(Pid::this());
        self.watch_locked(&mut watched, tracked, child)
    }

    fn signal_group(&mut self, tracked: Tracked, signal: Signal) -> nix::Result<()> {
        process::signal_group(tracked, signal)
    }

    fn kill_group(&mut self, pgid: Pid) {
        let _ = killpg(pgid, Signal::SIGKILL);
    }

    fn group_alive(&self, pgid: Pid) -> bool {
        process::group_alive(pgid)
    }

    fn group_of(&self, pid: Pid) -> Option<Pid> {
        nix::unistd::getpgid(Some(pid)).ok()
    }
}

impl Reaper {
    /// Reaps the children watched by `waitpid` that have exited.
    fn reap_waited(&self) -> Vec<Exit> {
        let mut watched = lock(&self.watched);
        let mut exits = Vec::new();
        watched
            .by_waitpid
            .retain(|&pid| match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => {
                    exits.push(Exit {
                        pid,
                        reason: ExitReason::Code(code),
                    });
                    false
                }
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    exits.push(Exit {
                        pid,
                        reason: ExitReason::Signal(sig as i32),
                    });
                    false
                }
                Err(Errno::ECHILD) => {
                    exits.push(Exit {
                        pid,
                        reason: ExitReason::Unknown,
                    });
                    false
                }
                _ => true,
            });
        exits
    }

    /// Reaps every zombie child nobody else waits for. False when a zombie that is not ours to
    /// reap (a helper's, or a watched one not yet reaped) stands first and may hide others: the
    /// caller sweeps again a little later.
    fn sweep(&self) -> bool {
        if !self.subreaper {
            return true;
        }
        let watched = lock(&self.watched);
        self.sweeps.fetch_add(1, Ordering::Relaxed);
        loop {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            match waitid(Id::All, flags) {
                Ok(status) => {
                    let Some(pid) = status.pid() else {
                        return true;
                    };
                    if watched.contains(pid) {
                        return false;
                    }
                    match nix::unistd::getpgid(Some(pid)) {
                        Ok(pgid) if pgid == self.own_pgid => return false,
                        _ => {}
                    }
                    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                        Ok(status) => {
                            self.orphans_reaped.fetch_add(1, Ordering::Relaxed);
                            debug!(pid = pid.as_raw(), ?status, "reaped an orphan");
                        }
                        Err(e) => debug!(pid = pid.as_raw(), %e, "orphan already gone"),
                    }
                }
                Err(Errno::ECHILD) => return true,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    warn!(%e, "waitid(P_ALL) failed; orphans are left for later");
                    return false;
                }
            }
        }
    }
}

/// Waits until the process behind `fd` ends, reaps it if it is our child, and reports it.
async fn wait_exit(fd: AsyncFd<OwnedFd>, pid: Pid, exits: mpsc::Sender<Exit>, reaper: Arc<Reaper>) {
    let reason = loop {
        let mut ready = match fd.readable().await {
            Ok(ready) => ready,
            Err(e) => {
                warn!(pid = pid.as_raw(), %e, "cannot poll a pidfd; the exit status is lost");
                break ExitReason::Unknown;
            }
        };
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG;
        match waitid(Id::PIDFd(fd.get_ref().as_fd()), flags) {
            Ok(WaitStatus::Exited(_, code)) => break ExitReason::Code(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => break ExitReason::Signal(sig as i32),
            // Not ended after all (or a state change we did not ask for): poll again.
            Ok(_) => ready.clear_ready(),
            Err(Errno::EINTR) => {}
            // Not our child: it has ended (the pidfd said so), its status is its parent's.
            Err(Errno::ECHILD) => break ExitReason::Unknown,
            Err(e) => {
                warn!(pid = pid.as_raw(), %e, "waitid on a pidfd failed; the exit status is lost");
                break ExitReason::Unknown;
            }
        }
    };
    lock(&reaper.watched).by_pidfd.remove(&pid);
    let _ = exits.send(Exit { pid, reason }).await;
}

fn open_pidfd(pid: Pid) -> io::Result<AsyncFd<OwnedFd>> {
    let raw = rustix::process::Pid::from_raw(pid.as_raw())
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let fd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::NONBLOCK)?;
    // SAFETY: an `OwnedFd` stays open, and is the same descriptor, for as long as the `AsyncFd`
    // owns it.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into_parts().1)
}

/// Whether this kernel has `pidfd_open` (tried on the daemon itself).
fn pidfds_supported() -> bool {
    match rustix::process::pidfd_open(
        rustix::process::getpid(),
        rustix::process::PidfdFlags::empty(),
    ) {
        Ok(_) => true,
        Err(e) => e != rustix::io::Errno::NOSYS,
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pm2rs_proto::AppSpec;
    use std::time::Instant;

    /// A child spawned through `os`, running `sh -c script`.
    fn spawn_sh(os: &mut RealOs, script: &str) -> Tracked {
        let mut spec = AppSpec::new("t", "/bin/sh", "/");
        spec.interpreter = None;
        spec.args = vec!["-c".into(), script.into()];
        let (_r1, w1) = nix::unistd::pipe().expect("pipe");
        let (_r2, w2) = nix::unistd::pipe().expect("pipe");
        os.spawn(SpawnInput {
            spec: &spec,
            instance: 0,
            id: 0,
            stdout: w1,
            stderr: w2,
            handoff: None,
        })
        .expect("spawn sh")
    }

    async fn next_exit(rx: &mut mpsc::Receiver<Exit>) -> Exit {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an exit within 10 s")
            .expect("channel open")
    }

    #[tokio::test]
    async fn a_childs_exit_status_arrives_through_its_pidfd_and_through_waitpid_without_one() {
        for pidfds in [true, false] {
            let (tx, mut rx) = mpsc::channel(8);
            let mut os = RealOs::start_with(tx, pidfds).expect("start");
            let code = spawn_sh(&mut os, "exit 7");
            let killed = spawn_sh(&mut os, "kill -TERM $$");
            let mut got = vec![next_exit(&mut rx).await, next_exit(&mut rx).await];
            got.sort_by_key(|e| e.pid);
            let mut want = vec![
                Exit {
                    pid: code.pid,
                    reason: ExitReason::Code(7),
                },
                Exit {
                    pid: killed.pid,
                    reason: ExitReason::Signal(libc_sigterm()),
                },
            ];
            want.sort_by_key(|e| e.pid);
            assert_eq!(got, want, "pidfds: {pidfds}");
            // Reaped: no zombie is left behind.
            assert!(!std::path::Path::new(&format!("/proc/{}", code.pid)).exists());
        }
    }

    fn libc_sigterm() -> i32 {
        Signal::SIGTERM as i32
    }

    #[tokio::test]
    async fn a_process_that_is_not_our_child_is_watched_with_an_unknown_status() {
        // `sh` starts a sleeper in the background and exits: the sleeper is nobody's child here.
        let out = std::process::Command::new("sh")
            .args(["-c", "sleep 1 >/dev/null 2>&1 & echo $!"])
            .output()
            .expect("sh");
        let pid: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a pid");
        let pid = Pid::from_raw(pid);
        let (tx, mut rx) = mpsc::channel(8);
        let mut os = RealOs::start_with(tx, true).expect("start");
        let tracked = Tracked {
            pid,
            start_ticks: process::start_ticks(pid).unwrap_or(0),
        };
        os.watch(tracked).expect("watch a non-child");
        let started = Instant::now();
        let exit = next_exit(&mut rx).await;
        assert_eq!(
            exit,
            Exit {
                pid,
                reason: ExitReason::Unknown
            }
        );
        assert!(started.elapsed() >= Duration::from_millis(100), "too early");
    }

    #[tokio::test]
    async fn a_helper_process_keeps_its_exit_status_for_its_own_waiter() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut os = RealOs::start_with(tx, true).expect("start");
        // A helper run the std way (in the daemon's own group), left unreaped for a while.
        let mut helper = std::process::Command::new("sh")
            .args(["-c", "exit 5"])
            .spawn()
            .expect("helper");
        let helper_pid = Pid::from_raw(helper.id() as i32);
        let deadline = Instant::now() + Duration::from_secs(10);
        while process::is_running(helper_pid) {
            assert!(Instant::now() < deadline, "helper never exited");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Instances come and go meanwhile: SIGCHLDs, sweeps, pidfd reaps.
        let instance = spawn_sh(&mut os, "exit 0");
        assert_eq!(next_exit(&mut rx).await.pid, instance.pid);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = helper.wait().expect("the helper's status is still there");
        assert_eq!(status.code(), Some(5));
    }
}
