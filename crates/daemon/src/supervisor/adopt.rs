//! Instances that outlive the daemon: what the fd keeper is told about each run, so that the next
//! daemon can take it over, and taking over the runs a previous daemon left.
//!
//! Every spawned run is given to the keeper (key [`run_key`]) with the read ends of its pipes and
//! its IPC end; the entry is removed once the run has exited and both pipes are drained (a
//! [`Guard`] held by the instance's run and by both drains). A reload's replacement that takes the
//! old instance's id updates its entry.
//!
//! A new daemon gets every entry back ([`TakeOver::new`]). While restoring the desired state, each
//! instance slot of an app that is to run takes the kept run of that slot ([`Supervisor::take_kept`]
//! then [`Supervisor::take_over`]): same id, same pid, online since when it started, its pipes
//! drained from where the previous daemon stopped. A kept run whose process is gone is taken
//! over all the same and ends at once with an unknown exit (the exit status went to whoever reaped
//! it): the restart policy applies. Runs the desired state has no place for (an app stopped or
//! unknown, a slot beyond the count, a reload's replacement) are stopped gracefully, their output
//! still drained ([`Supervisor::retire_leftovers`]).

use std::collections::BTreeSet;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use pm2rs_proto::Status;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};

use super::timers::TimerKind;
use super::{Event, Instance, Pending, Run, Supervisor, Then, transition};
use crate::cluster::{KeptSockets, sockets_key};
use crate::keeper::{Guard, Keeper, Kept};
use crate::logs::Capture;
use crate::policy::ExitReason;
use crate::process::Tracked;

/// The fd keeper's description of one run; its fds are the read ends of stdout and stderr, then
/// the daemon's end of the Node IPC channel when `ipc`. Fields added later need serde defaults:
/// a daemon reads what an older one wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeptRun {
    pub id: u32,
    pub app: String,
    pub slot: u32,
    pub pid: i32,
    pub start_ticks: u64,
    pub started_at_us: u64,
    #[serde(default)]
    pub restarts: u32,
    /// Set for a reload's replacement that has not taken its instance's place yet.
    #[serde(default)]
    pub replaces: Option<u32>,
    #[serde(default)]
    pub ipc: bool,
}

/// The fd keeper's key of the run of `pid`.
pub fn run_key(pid: Pid) -> String {
    format!("run/{}", pid.as_raw())
}

/// What a previous daemon left with the keeper, sorted out.
#[derive(Default)]
pub struct TakeOver {
    runs: Vec<(KeptRun, Vec<OwnedFd>)>,
    sockets: Vec<(String, KeptSockets, Vec<OwnedFd>)>,
}

impl TakeOver {
    /// Sorts the keeper's entries; one it cannot read is removed from the keeper.
    pub fn new(kept: Vec<Kept>, keeper: &Keeper) -> TakeOver {
        let mut t = TakeOver::default();
        for Kept { key, meta, fds } in kept {
            if key.starts_with("run/") {
                match serde_json::from_value::<KeptRun>(meta) {
                    Ok(run) if fds.len() >= 2 => t.runs.push((run, fds)),
                    _ => {
                        warn!(%key, "an entry of the fd keeper cannot be read; dropped");
                        keeper.remove(&key);
                    }
                }
            } else if let Some(app) = key.strip_prefix("sockets/") {
                match serde_json::from_value::<KeptSockets>(meta) {
                    Ok(s) => t.sockets.push((app.to_string(), s, fds)),
                    Err(_) => keeper.remove(&key),
                }
            } else {
                warn!(%key, "unknown entry in the fd keeper; dropped");
                keeper.remove(&key);
            }
        }
        // Lowest id first: among two runs of one slot, the older instance wins.
        t.runs
            .sort_by_key(|(run, _)| (run.replaces.is_some(), run.id));
        t
    }

    /// The highest instance id of the kept runs.
    fn max_id(&self) -> Option<u32> {
        self.runs.iter().map(|(r, _)| r.id).max()
    }
}

impl Supervisor {
    /// Starts a take-over: sockets of the apps in `running` are taken back (the others are let
    /// go, so their ports are free), and new instance ids are given above the kept ones.
    pub(super) fn begin_take_over(&mut self, running: &BTreeSet<String>) {
        if let Some(max) = self.take_over.max_id() {
            self.next_id = self.next_id.max(max + 1);
        }
        for (app, kept, fds) in std::mem::take(&mut self.take_over.sockets) {
            if running.contains(&app) {
                self.cluster.adopt_sockets(&app, kept, fds);
            } else {
                self.keeper.remove(&sockets_key(&app));
            }
        }
    }

    /// The kept run of `app`'s `slot`, if there is one (not a reload's replacement).
    pub(super) fn take_kept(&mut self, app: &str, slot: u32) -> Option<(KeptRun, Vec<OwnedFd>)> {
        let at = self
            .take_over
            .runs
            .iter()
            .position(|(r, _)| r.app == app && r.slot == slot && r.replaces.is_none())?;
        Some(self.take_over.runs.remove(at))
    }

    /// The id to give a taken-over run: its own, unless taken.
    pub(super) fn free_id(&mut self, wanted: u32) -> u32 {
        if self.instances.contains_key(&wanted) {
            let id = self.next_id;
            self.next_id += 1;
            id
        } else {
            wanted
        }
    }

    /// Makes the kept `run` the current run of instance `id` (stopped, of `run.app`, registered).
    pub(super) fn take_over(&mut self, id: u32, run: KeptRun, fds: Vec<OwnedFd>) {
        let Some(app) = self.apps.get(&run.app) else {
            return;
        };
        let spec = app.spec.clone();
        let Some(p) = self.instances.get_mut(&id) else {
            return;
        };
        let pid = Pid::from_raw(run.pid);
        let tracked = Tracked {
            pid,
            start_ticks: run.start_ticks,
        };
        let mut fds = fds.into_iter();
        let (Some(out), Some(err)) = (fds.next(), fds.next()) else {
            return;
        };
        let ipc = if run.ipc { fds.next() } else { None };
        let guard = self.keeper.guard(run_key(pid));
        let (out_log, err_log) = super::log_paths(&self.logs_dir, &spec, id);
        let drained = match Capture::from_pipes(out, err, spec.clone(), id) {
            Ok(mut capture) => {
                capture.hold(guard.clone());
                Some(self.logs.start(capture, run.pid as u32))
            }
            Err(e) => {
                warn!(id, %e, "cannot read the log pipes of a taken-over instance");
                None
            }
        };
        let alive = self.os.watch(tracked).is_ok();
        let now_us = pm2rs_proto::unix_micros();
        let age = Duration::from_micros(now_us.saturating_sub(run.started_at_us));
        let now = Instant::now();
        p.out_log = out_log;
        p.err_log = err_log;
        p.pipes = drained;
        p.restarts = run.restarts;
        p.run = Some(Run {
            tracked,
            started: now.checked_sub(age).unwrap_or(now),
            started_at_us: run.started_at_us,
        });
        p.kept = Some(KeptHandle {
            guard,
            ipc: ipc.is_some(),
        });
        transition(p, Event::TakenOver);
        self.by_pid.insert(pid, id);
        self.dirty = true;
        if let Some(ipc) = ipc {
            self.cluster.adopted(pid, ipc);
        }
        if alive {
            info!(id, pid = run.pid, app = %run.app, "taken over");
            if let Some(ms) = spec.watchdog_timeout_ms {
                self.arm_watchdog(id, Some(Duration::from_millis(ms)));
            }
        } else {
            info!(id, pid = run.pid, app = %run.app, "ended while no daemon ran");
            self.by_pid.remove(&pid);
            self.on_exit(id, ExitReason::Unknown);
        }
    }

    /// Stops every kept run that no instance took: gracefully (the app's kill signal and
    /// timeout, then SIGKILL), its output still drained into its files. A run of an app the
    /// desired state does not know at all gets SIGTERM, then SIGKILL after the default timeout.
    pub(super) fn retire_leftovers(&mut self) {
        for (run, fds) in std::mem::take(&mut self.take_over.runs) {
            if self.apps.contains_key(&run.app) {
                let id = self.free_id(run.id);
                self.insert_instance(id, &run.app, run.slot, true);
                self.take_over(id, run.clone(), fds);
                if self
                    .instances
                    .get(&id)
                    .is_some_and(|p| p.status == Status::Online)
                {
                    info!(id, pid = run.pid, app = %run.app, "stopping a run the desired state has no place for");
                    self.stop_ids(&[id]);
                }
                self.pending.push(Pending::new(vec![id], Then::Forget));
            } else {
                warn!(pid = run.pid, app = %run.app, "a run of an unknown app was left by the previous daemon; stopping it");
                let tracked = Tracked {
                    pid: Pid::from_raw(run.pid),
                    start_ticks: run.start_ticks,
                };
                if self.os.signal_group(tracked, Signal::SIGTERM).is_ok() {
                    // Ids from the top down: never an instance's.
                    let id = u32::MAX - self.retiring.len() as u32;
                    self.retiring.insert(id, tracked);
                    let grace = Duration::from_millis(pm2rs_proto::defaults::KILL_TIMEOUT_MS);
                    self.timers.set_in(id, TimerKind::Retire, grace);
                }
                self.keeper.remove(&run_key(tracked.pid));
                drop(fds);
            }
        }
    }

    /// The grace of retiring run `id` is over: SIGKILL whatever is left of its group.
    pub(super) fn retire_now(&mut self, id: u32) {
        if let Some(tracked) = self.retiring.remove(&id)
            && self.os.group_alive(tracked.pid)
        {
            warn!(
                pid = tracked.pid.as_raw(),
                "a left-over run outlived SIGTERM; sending SIGKILL"
            );
            // The leader, if it is still that process, and its group; else what is left of it.
            if self.os.signal_group(tracked, Signal::SIGKILL).is_err() {
                self.os.kill_group(tracked.pid);
            }
        }
    }
}

/// Gives the fd keeper the run just spawned (its pipes' read ends and IPC end); the returned
/// guard removes it once the run has exited and its pipes are drained. `None` without a keeper.
pub(super) fn keep_run(
    keeper: &Keeper,
    run: &KeptRun,
    pipes: [BorrowedFd<'_>; 2],
    ipc: Option<BorrowedFd<'_>>,
) -> Option<Arc<Guard>> {
    if !keeper.is_active() {
        return None;
    }
    let key = run_key(Pid::from_raw(run.pid));
    let mut fds = pipes.to_vec();
    fds.extend(ipc);
    keeper.put(&key, run, &fds);
    Some(keeper.guard(key))
}

/// What an instance's current run has in the fd keeper.
pub(super) struct KeptHandle {
    /// Removes the entry once dropped here and by both drains.
    pub guard: Arc<Guard>,
    /// Whether the entry holds an IPC end.
    pub ipc: bool,
}

/// Tells the keeper the new description of `p`'s current run (a reload's replacement took its
/// instance's id).
pub(super) fn update_kept(keeper: &Keeper, p: &Instance) {
    if let Some(kept) = &p.kept
        && let Some(run) = kept_run_of(p, kept.ipc)
    {
        keeper.update(kept.guard.key(), &run);
    }
}

/// The keeper's description of `p`'s current run.
pub(super) fn kept_run_of(p: &Instance, ipc: bool) -> Option<KeptRun> {
    let run = p.run?;
    Some(KeptRun {
        id: p.id,
        app: p.app.clone(),
        slot: p.slot,
        pid: run.tracked.pid.as_raw(),
        start_ticks: run.tracked.start_ticks,
        started_at_us: run.started_at_us,
        restarts: p.restarts,
        replaces: p.replaces,
        ipc,
    })
}
