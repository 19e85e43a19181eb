//! The supervisor's side of cluster mode: readiness notices, `reload` jobs (the supervisor is their
//! [`Host`](reload::Host)), and closing an app's sockets once it is stopped. Kept apart from the
//! core event loop; every status change still goes through [`super::transition`].

use std::time::Duration;

use nix::unistd::Pid;
use pm2rs_proto::{ActionResponse, ErrorKind, ReloadRequest, Status};
use tracing::{debug, info, warn};

use super::exits::became_ready;
use super::snapshot::api_error;
use super::timers::TimerKind;
use super::{Counted, Instance, Reply, Supervisor};
use crate::cluster::reload::{self, NewState, Reload};
use crate::cluster::{Notice, ipc::NodeMessage};

impl Supervisor {
    /// A notice from an instance: readiness, status text, watchdog ping.
    pub(super) fn on_notice(&mut self, notice: Notice) {
        match notice {
            Notice::Notify { pid, message } => {
                let Some(id) = self.instance_of_pid(pid) else {
                    debug!(
                        pid = pid.as_raw(),
                        "notification from an unknown process ignored"
                    );
                    return;
                };
                let Some(p) = self.instances.get_mut(&id) else {
                    return;
                };
                let Some(app) = self.apps.get(&p.app) else {
                    return;
                };
                self.dirty = true;
                if let Some(status) = message.status {
                    p.notify_status = Some(status);
                }
                let mut watchdog = None;
                if message.ready && p.status == Status::Launching && !p.not_ready {
                    self.timers.cancel(super::TimerKey {
                        id,
                        kind: TimerKind::ListenTimeout,
                    });
                    watchdog = became_ready(p, &app.spec);
                }
                if message.watchdog && p.status == Status::Online {
                    watchdog = app.spec.watchdog_timeout_ms.map(Duration::from_millis);
                }
                if message.stopping {
                    info!(id, app = %p.app, "instance says it is stopping");
                }
                self.arm_watchdog(id, watchdog);
            }
            Notice::Node { pid, message } => {
                // By pid: a message from a process that is no longer an instance is stale.
                let Some(&id) = self.by_pid.get(&pid) else {
                    return;
                };
                let Some(p) = self.instances.get_mut(&id) else {
                    return;
                };
                let Some(app) = self.apps.get(&p.app) else {
                    return;
                };
                let ready = match message {
                    NodeMessage::Ready => true,
                    // With wait_ready only the app's own word counts.
                    NodeMessage::Listening => !app.spec.wait_ready,
                    NodeMessage::Listen { port, host } => {
                        self.cluster
                            .answer_listen(&app.spec, p.slot, pid, port, host);
                        false
                    }
                };
                if ready && p.status == Status::Launching && !p.not_ready {
                    self.dirty = true;
                    self.timers.cancel(super::TimerKey {
                        id,
                        kind: TimerKind::ListenTimeout,
                    });
                    let watchdog = became_ready(p, &app.spec);
                    self.arm_watchdog(id, watchdog);
                }
            }
        }
    }

    /// The instance whose process (or a process of its group) is `pid`.
    fn instance_of_pid(&self, pid: Pid) -> Option<u32> {
        if let Some(id) = self.by_pid.get(&pid) {
            return Some(*id);
        }
        let pgid = self.os.group_of(pid)?;
        self.by_pid.get(&pgid).copied()
    }

    /// `reload <target>`: replace the running instances of the target one batch at a time;
    /// stopped ones are just started.
    pub(super) fn reload(&mut self, request: ReloadRequest, reply: Reply<ActionResponse>) {
        let ids = match self.resolve(&request.target) {
            Ok(ids) => ids,
            Err(e) => {
                self.outbox.reply(reply, Err(e));
                return;
            }
        };
        // An instance already in a reload is left to that one.
        let busy = |id: &u32| self.reloads.iter().any(|(job, _)| job.involves(*id));
        if !ids.is_empty() && ids.iter().all(busy) {
            let error = api_error(
                ErrorKind::Failed,
                &format!(
                    "a reload of `{}` is already running; wait for it to finish",
                    request.target
                ),
            );
            self.outbox.reply(reply, Err(error));
            return;
        }
        let ids: Vec<u32> = ids.into_iter().filter(|id| !busy(id)).collect();
        let mut running = Vec::new();
        for id in ids {
            match self.instances.get(&id).map(|p| p.status) {
                Some(Status::Online | Status::Launching) => running.push(id),
                Some(Status::Stopped | Status::Errored) => {
                    self.start_instance(id, Counted::AsRestart)
                }
                _ => {}
            }
        }
        info!(target = %request.target, instances = running.len(), parallel = request.parallel, "reload");
        self.reloads
            .push((Reload::new(running, request.parallel), Some(reply)));
        self.advance_reloads();
    }

    /// Moves every reload forward; replies to the ones that are over.
    pub(super) fn advance_reloads(&mut self) {
        let mut i = 0;
        while i < self.reloads.len() {
            let (mut job, reply) = self.reloads.swap_remove(i);
            if job.advance(self) {
                let ids = job.replaced.clone();
                let result = match job.failure {
                    None => Ok(ActionResponse {
                        processes: self.infos(&ids),
                        ids,
                    }),
                    Some(why) => {
                        let done = if ids.is_empty() {
                            "no instance was replaced".to_string()
                        } else {
                            let list: Vec<String> = ids.iter().map(u32::to_string).collect();
                            format!("replaced so far: id {}", list.join(", "))
                        };
                        Err(api_error(
                            ErrorKind::Failed,
                            &format!(
                                "reload stopped: {why}; the old instance keeps serving ({done})"
                            ),
                        ))
                    }
                };
                match (reply, result) {
                    (Some(reply), result) => self.outbox.reply(reply, result),
                    (None, Err(e)) => warn!("cron_restart: {}", e.message),
                    (None, Ok(_)) => {}
                }
                self.dirty = true;
            } else {
                self.reloads.push((job, reply));
                let last = self.reloads.len() - 1;
                self.reloads.swap(i, last);
                i += 1;
            }
        }
    }

    /// After `stop`: the sockets of apps with no instance left running are closed, so new
    /// connections are refused instead of waiting for nobody; an app that still runs loses only
    /// the slots of its stopped instances (their connections go to the others).
    pub(super) fn close_stopped_apps(&mut self, ids: &[u32]) {
        for name in self.apps_of(ids) {
            if self.ids_of(&name).all(|id| self.instances[&id].settled()) {
                self.cluster.close(&name);
            }
        }
        for id in ids {
            if let Some(p) = self.instances.get(id)
                && p.settled()
            {
                self.cluster.release(&p.app, p.slot);
            }
        }
    }
}

impl reload::Host for Supervisor {
    fn start_replacement(&mut self, old: u32) -> Option<u32> {
        let (app, slot) = {
            let p = self.instances.get(&old)?;
            if !matches!(p.status, Status::Online | Status::Launching) {
                return None;
            }
            (p.app.clone(), p.slot)
        };
        let new = self.add_instance(&app);
        if let Some(p) = self.instances.get_mut(&new) {
            // Same slot, so the same listening socket.
            p.slot = slot;
            p.replaces = Some(old);
        }
        self.start_instance(new, Counted::AsStart);
        Some(new)
    }

    fn state(&self, new: u32) -> NewState {
        let Some(p) = self.instances.get(&new) else {
            return NewState::Failed(format!("new instance {new} disappeared"));
        };
        let pid = p
            .run
            .map_or_else(String::new, |r| format!(" (pid {})", r.tracked.pid));
        match p.status {
            Status::Online => NewState::Ready,
            Status::Launching if p.not_ready => NewState::Failed(format!(
                "new instance of `{}` #{}{pid} was not ready within listen_timeout",
                p.app, p.slot
            )),
            Status::Launching if p.restarts == 0 => NewState::Waiting,
            _ => NewState::Failed(format!(
                "new instance of `{}` #{} exited before it was ready ({})",
                p.app,
                p.slot,
                p.last_exit.as_deref().unwrap_or("could not start")
            )),
        }
    }

    fn stop(&mut self, id: u32) {
        self.stop_ids(&[id]);
    }

    fn settled(&self, id: u32) -> bool {
        self.instances.get(&id).is_none_or(Instance::settled)
    }

    fn running(&self, id: u32) -> bool {
        self.instances
            .get(&id)
            .is_some_and(|p| matches!(p.status, Status::Launching | Status::Online))
    }

    fn finish(&mut self, old: u32, new: u32) -> bool {
        if !self.instances.contains_key(&old) {
            // Deleted meanwhile (a scale-down, a changed spec): no place to take.
            return false;
        }
        let Some(mut p) = self.instances.remove(&new) else {
            return true;
        };
        let Some(gone) = self.instances.remove(&old) else {
            return true;
        };
        p.replaces = None;
        self.dirty = true;
        self.timers.cancel_all(old);
        self.draining.remove(&old);
        // The new instance takes the old one's id, as PM2's reload keeps ids, and with it
        // everything that names it: its timers, a stop it is in, commands waiting for it.
        self.timers.rename(new, old);
        if self.draining.remove(&new) {
            self.draining.insert(old);
        }
        for pending in &mut self.pending {
            for id in pending.ids.iter_mut().filter(|id| **id == new) {
                *id = old;
            }
            if pending.waiting.remove(&new) {
                pending.waiting.insert(old);
            }
        }
        p.id = old;
        p.restarts = gone.restarts + 1;
        // A reload the daemon asked for a limit: the new run shows why it was started.
        if gone.limit_restart {
            p.restart_reason = gone.restart_reason.clone();
        }
        if let Some(run) = p.run {
            self.by_pid.insert(run.tracked.pid, old);
        }
        super::adopt::update_kept(&self.keeper, &p);
        self.instances.insert(old, p);
        true
    }

    fn discard(&mut self, new: u32) {
        let app = self.instances.get(&new).map(|p| p.app.clone());
        self.instances.remove(&new);
        self.timers.cancel_all(new);
        self.draining.remove(&new);
        if let Some(app) = app {
            debug!(%app, id = new, "discarded a replacement that failed");
        }
        self.dirty = true;
    }
}
