//! Runs of an instance: spawning one, what its end means (the restart policy, or the end of a
//! stop), and stops that wait until the process group is empty and the log pipes are drained.

use std::time::Duration;

use nix::sys::signal::Signal;
use pm2rs_proto::{AppSpec, Status};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::adopt::{KeptHandle, KeptRun, keep_run};
use super::timers::{DRAIN_RECHECK, TimerKind};
use super::{Draining, Event, Instance, Run, Supervisor, log_paths, transition};
use crate::cluster;
use crate::logs::Drained;
use crate::policy::{self, Decision, ExitReason};
use crate::process::{self, SpawnInput};

/// How long a stop waits, once the group is empty, for the instance's pipes to be drained while
/// nothing more gets written. The pipes close with the group's last member; only a process that
/// left the group (setsid) can keep them open, and it must not hold `stop` for long.
pub(super) const PIPE_GRACE: Duration = Duration::from_secs(1);

/// Timers that mean nothing once the run is over.
const RUN_TIMERS: [TimerKind; 3] = [
    TimerKind::KillTimeout,
    TimerKind::ListenTimeout,
    TimerKind::Watchdog,
];

impl Supervisor {
    /// Spawns the process of an instance that is `launching`.
    pub(super) fn spawn_instance(&mut self, id: u32) {
        let Some(p) = self.instances.get_mut(&id) else {
            return;
        };
        let Some(app) = self.apps.get(&p.app) else {
            return;
        };
        let spec = &app.spec;
        // A replacement writes where the instance it replaces does.
        let log_id = p.replaces.unwrap_or(p.id);
        let (out_log, err_log) = log_paths(&self.logs_dir, spec, log_id);
        let prepared = self.cluster.prepare(spec, p.slot);
        let os = &mut self.os;
        let keeper = &self.keeper;
        let started_at_us = pm2rs_proto::unix_micros();
        let result =
            match &prepared {
                Err(e) => Err(std::io::Error::other(e.clone())),
                Ok(prepared) => self.logs.capture(spec.clone(), log_id).and_then(
                    |(stdout, stderr, mut capture)| {
                        let input = SpawnInput {
                            spec,
                            instance: p.slot,
                            id: log_id,
                            stdout,
                            stderr,
                            handoff: Some(&prepared.handoff),
                        };
                        let tracked = os.spawn(input)?;
                        let kept_run = KeptRun {
                            id: p.id,
                            app: p.app.clone(),
                            slot: p.slot,
                            pid: tracked.pid.as_raw(),
                            start_ticks: tracked.start_ticks,
                            started_at_us,
                            restarts: p.restarts,
                            replaces: p.replaces,
                            ipc: prepared.ipc().is_some(),
                        };
                        let guard = keep_run(keeper, &kept_run, capture.fds(), prepared.ipc());
                        let kept = guard.map(|guard| {
                            capture.hold(guard.clone());
                            KeptHandle {
                                guard,
                                ipc: kept_run.ipc,
                            }
                        });
                        let drained = self.logs.start(capture, tracked.pid.as_raw() as u32);
                        Ok((tracked, drained, kept))
                    },
                ),
            };
        p.out_log = out_log;
        p.err_log = err_log;
        self.timers.cancel_all(id);
        self.dirty = true;
        match result {
            Ok((tracked, drained, kept)) => {
                p.pipes = Some(drained);
                p.kept = kept;
                p.run = Some(Run {
                    tracked,
                    started: Instant::now(),
                    started_at_us,
                });
                self.by_pid.insert(tracked.pid, id);
                transition(p, Event::Spawned);
                p.notify_status = None;
                p.not_ready = false;
                if let Ok(prepared) = prepared {
                    self.cluster.spawned(prepared, tracked.pid);
                }
                debug!(id, pid = tracked.pid.as_raw(), app = %p.app, "spawned");
                if cluster::waits_for_ready(spec) {
                    // `launching` until ready, bounded by listen_timeout.
                    let timeout = Duration::from_millis(spec.listen_timeout_ms);
                    self.timers.set_in(id, TimerKind::ListenTimeout, timeout);
                } else {
                    // Fork mode without wait_ready: a spawned process is online.
                    let watchdog = became_ready(p, spec);
                    self.arm_watchdog(id, watchdog);
                }
            }
            Err(e) => {
                let reason = format!("could not start {}: {e}", spec.script.display());
                warn!(id, app = %p.app, %reason);
                p.reason = Some(reason);
                transition(p, Event::SpawnFailed);
            }
        }
    }

    /// The leader of instance `id`'s run has ended.
    pub(super) fn on_exit(&mut self, id: u32, exit: ExitReason) {
        let Some(p) = self.instances.get_mut(&id) else {
            return;
        };
        let Some(run) = p.run.take() else { return };
        // The entry goes once the drains are done with the pipes too.
        p.kept = None;
        self.cluster.exited(run.tracked.pid);
        self.timers.cancel_kinds(id, &RUN_TIMERS);
        self.dirty = true;
        // The leader is gone: nothing of its group may outlive it (systemd's control-group rule).
        let group_left = self.os.group_alive(run.tracked.pid);
        if group_left {
            self.os.kill_group(run.tracked.pid);
        }
        let uptime = run.started.elapsed();
        p.last_exit = Some(process::describe_exit(exit));
        if p.status == Status::Stopping {
            let pipes_open = p.pipes.as_ref().is_some_and(|d| !d.is_done());
            if group_left || pipes_open {
                // Stopped only once the group is empty, so `stop` never returns with a member
                // alive, and once its output is in the log files.
                p.draining = Some(Draining {
                    pgid: run.tracked.pid,
                    written: p.pipes.as_ref().map_or(0, Drained::written),
                    progress_at: Instant::now(),
                });
                self.draining.insert(id);
                self.timers
                    .set_in(id, TimerKind::DrainRecheck, DRAIN_RECHECK);
            } else {
                transition(p, Event::StoppedExit);
                info!(id, app = %p.app, exit = ?exit, "stopped");
            }
            return;
        }
        let Some(app) = self.apps.get(&p.app) else {
            return;
        };
        let decision = policy::decide(&app.policy, &mut p.history, exit, uptime);
        info!(id, app = %p.app, exit = ?exit, uptime_ms = uptime.as_millis() as u64, ?decision, "exited");
        match decision {
            Decision::Restart { delay } => {
                transition(p, Event::ExitedRestart);
                if delay.is_zero() {
                    self.restart_now(id);
                } else {
                    self.timers.set_in(id, TimerKind::RestartDelay, delay);
                }
            }
            Decision::Stop { reason } => {
                p.reason = Some(reason);
                transition(p, Event::ExitedStop);
                self.cluster.release(&p.app, p.slot);
            }
            Decision::Errored { reason } => {
                p.reason = Some(reason);
                transition(p, Event::ExitedErrored);
                self.cluster.release(&p.app, p.slot);
            }
        }
    }

    /// The restart delay of instance `id` is over (or there was none): it is spawned again, and
    /// that is when its ↺ counter goes up (as PM2 counts: not while it waits).
    pub(super) fn restart_now(&mut self, id: u32) {
        let Some(p) = self.instances.get_mut(&id) else {
            return;
        };
        if transition(p, Event::DelayElapsed) {
            p.restarts += 1;
            p.restart_reason = None;
            self.spawn_instance(id);
        }
    }

    /// Finishes the stop of every draining instance whose process group has emptied and whose
    /// pipes are drained (or have made no progress for [`PIPE_GRACE`]).
    pub(super) fn check_draining(&mut self) {
        let mut done = Vec::new();
        for &id in &self.draining {
            let Some(p) = self.instances.get_mut(&id) else {
                done.push(id);
                continue;
            };
            let Some(draining) = p.draining.as_mut() else {
                done.push(id);
                continue;
            };
            if let Some(pipes) = &p.pipes
                && pipes.written() != draining.written
            {
                draining.written = pipes.written();
                draining.progress_at = Instant::now();
            }
            let pipes_done = p.pipes.as_ref().is_none_or(Drained::is_done);
            if !self.os.group_alive(draining.pgid)
                && (pipes_done || draining.progress_at.elapsed() >= PIPE_GRACE)
            {
                if !pipes_done {
                    warn!(id = p.id, app = %p.app, "a process outside the group keeps the log pipes open; stopped without waiting for them");
                }
                p.draining = None;
                transition(p, Event::StoppedExit);
                self.dirty = true;
                info!(id = p.id, app = %p.app, "stopped");
                done.push(id);
            }
        }
        for id in done {
            self.draining.remove(&id);
            self.timers.cancel(super::TimerKey {
                id,
                kind: TimerKind::DrainRecheck,
            });
        }
    }

    /// Last resort when the supervisor ends with processes still running: SIGKILL their groups.
    pub(super) fn stop_everything_now(&mut self) {
        for p in self.instances.values_mut() {
            if let Some(run) = p.run.take() {
                let _ = self.os.signal_group(run.tracked, Signal::SIGKILL);
                self.by_pid.remove(&run.tracked.pid);
                transition(p, Event::KilledAtExit);
                self.dirty = true;
            }
        }
    }
}

/// The instance is ready: `online`. Returns the watchdog timeout to arm, if its app has one.
pub(super) fn became_ready(p: &mut Instance, spec: &AppSpec) -> Option<Duration> {
    if transition(p, Event::Ready) {
        debug!(id = p.id, app = %p.app, "ready");
        spec.watchdog_timeout_ms.map(Duration::from_millis)
    } else {
        None
    }
}
