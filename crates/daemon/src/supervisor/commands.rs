//! The API's commands: start (new, unchanged or changed apps), stop, restart, delete, reset,
//! scale and kill, and the [`Pending`] continuations that finish a command once its instances have settled.
//! Every reply goes through the outbox, so it leaves after the snapshot is published.

use std::sync::Arc;
use std::time::Duration;

use pm2rs_proto::{
    ActionResponse, AppSpec, ErrorKind, ScaleRequest, ScaleTo, StartResponse, Status,
};
use tracing::{debug, info};

use super::snapshot::api_error;
use super::timers::TimerKind;
use super::{App, Command, Counted, Event, Instance, Pending, Reply, Supervisor, Then, transition};
use crate::policy::{RestartHistory, RestartPolicy};
use crate::process;

/// Timers that a stop makes meaningless.
const STOP_CANCELS: [TimerKind; 3] = [
    TimerKind::RestartDelay,
    TimerKind::ListenTimeout,
    TimerKind::Watchdog,
];

impl Supervisor {
    pub(super) fn on_command(&mut self, cmd: Command) {
        debug!(?cmd, "command");
        match cmd {
            Command::Start { apps, reply } => self.start(apps, reply),
            Command::Stop { targets, reply } => {
                self.mark_stopped(&targets);
                self.with_targets(&targets, reply, Then::Reply)
            }
            Command::Restart { targets, reply } => {
                self.with_targets(&targets, reply, Then::Restart)
            }
            Command::Delete { targets, reply } => self.with_targets(&targets, reply, Then::Delete),
            Command::Reset { target, reply } => self.reset(&target, reply),
            Command::Scale { request, reply } => self.scale(request, reply),
            Command::Reload { request, reply } => self.reload(request, reply),
            Command::Save { reply } => self.save(reply),
            Command::Resurrect { loaded, reply } => self.resurrect(loaded, reply),
            Command::Kill { reply } => {
                // The apps are stopped, not forgotten: the dump keeps them for `resurrect`.
                self.durable.freeze();
                let names: Vec<String> = self.apps.keys().cloned().collect();
                for name in names {
                    self.disarm_cron(&name);
                }
                let ids: Vec<u32> = self.instances.keys().copied().collect();
                self.stop_ids(&ids);
                self.pending.push(Pending::new(ids, Then::Kill(reply)));
            }
            Command::Handover { reply } => self.handover(reply),
        }
    }

    /// Ends the supervisor leaving every app running: the fd keeper keeps what they need, and
    /// nothing is removed from it from now on. Refused while a command is still under way (a
    /// stop, a restart, a reload): its end would be lost with this daemon.
    fn handover(&mut self, reply: Reply<pm2rs_proto::HandoverResponse>) {
        if !self.pending.is_empty() || !self.reloads.is_empty() {
            let error = api_error(
                ErrorKind::Failed,
                "a stop, restart or reload is still under way; retry once it is done",
            );
            self.outbox.reply(reply, Err(error));
            return;
        }
        if !self.keeper.is_active() {
            let error = api_error(
                ErrorKind::Failed,
                "this daemon has no fd keeper, so its apps cannot outlive it (see pm2rs.log); \
                 `pm2rs kill` then `pm2rs resurrect` restarts them with the new version",
            );
            self.outbox.reply(reply, Err(error));
            return;
        }
        self.keeper.detach();
        self.handed_over = true;
        let running = self.instances.values().filter(|p| p.run.is_some()).count();
        info!(running, "handing over to a successor");
        self.outbox.reply(
            reply,
            Ok(pm2rs_proto::HandoverResponse {
                running,
                service_manager: crate::under_service_manager(),
            }),
        );
        self.shutdown.cancel();
    }

    fn with_targets(
        &mut self,
        targets: &[String],
        reply: Reply<ActionResponse>,
        then: fn(Reply<ActionResponse>) -> Then,
    ) {
        match self.resolve_all(targets) {
            Ok(ids) => {
                self.stop_ids(&ids);
                self.pending.push(Pending::new(ids, then(reply)));
            }
            Err(e) => self.outbox.reply(reply, Err(e)),
        }
    }

    /// The apps every instance of which `targets` match are stopped by the user: the dump keeps
    /// them stopped. (A stop of some instances of an app leaves it running in the dump.)
    fn mark_stopped(&mut self, targets: &[String]) {
        let Ok(ids) = self.resolve_all(targets) else {
            return;
        };
        for name in self.apps_of(&ids) {
            let all = self.counted_ids_of(&name).all(|id| ids.contains(&id));
            if let Some(app) = self.apps.get_mut(&name)
                && all
            {
                app.stopped = true;
                self.disarm_cron(&name);
            }
        }
    }

    /// `reset <target>`: zero the ↺ and unstable-restart counts, as PM2's `reset`; nothing else
    /// changes (a running instance keeps running, a backoff in progress keeps its delay).
    fn reset(&mut self, target: &str, reply: Reply<ActionResponse>) {
        let ids = match self.resolve(target) {
            Ok(ids) => ids,
            Err(e) => {
                self.outbox.reply(reply, Err(e));
                return;
            }
        };
        for id in &ids {
            if let Some(p) = self.instances.get_mut(id) {
                p.restarts = 0;
                p.history.unstable_restarts = 0;
            }
        }
        self.dirty = true;
        info!(%target, instances = ids.len(), "counters reset");
        let processes = self.infos(&ids);
        self.outbox
            .reply(reply, Ok(ActionResponse { processes, ids }));
    }

    fn start(&mut self, specs: Vec<AppSpec>, reply: Reply<StartResponse>) {
        let mut response = StartResponse {
            started: vec![],
            updated: vec![],
            restarted: vec![],
            unchanged: vec![],
            processes: vec![],
        };
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        // Bind every new or changed address first: a port in use changes nothing.
        if let Err(e) = self.cluster.bind_all(&specs) {
            let error = api_error(ErrorKind::Failed, &format!("{e}; nothing was changed"));
            self.outbox.reply(reply, Err(error));
            return;
        }
        let mut changed = Vec::new();
        let mut to_stop = Vec::new();
        for spec in specs {
            match self.apps.get(&spec.name) {
                None => {
                    response.started.push(spec.name.clone());
                    self.add_app(spec);
                }
                Some(app) if *app.spec == spec => {
                    let ids: Vec<u32> = self
                        .counted_ids_of(&spec.name)
                        .filter(|id| self.instances[id].settled())
                        .collect();
                    if ids.is_empty() {
                        response.unchanged.push(spec.name.clone());
                    } else {
                        response.restarted.push(spec.name.clone());
                        for id in ids {
                            self.start_instance(id, Counted::AsRestart);
                        }
                    }
                }
                Some(_) => {
                    response.updated.push(spec.name.clone());
                    to_stop.extend(self.ids_of(&spec.name));
                    changed.push(spec);
                }
            }
        }
        if changed.is_empty() {
            response.processes = self.infos_of_apps(&names);
            self.outbox.reply(reply, Ok(response));
            return;
        }
        self.stop_ids(&to_stop);
        self.pending.push(Pending::new(
            to_stop,
            Then::Apply {
                specs: changed,
                response,
                names,
                reply,
            },
        ));
    }

    fn scale(&mut self, request: ScaleRequest, reply: Reply<ActionResponse>) {
        let Some(app) = self.apps.get(&request.name) else {
            let error = api_error(
                ErrorKind::NotFound,
                &format!("no app named `{}`; see `pm2rs list`", request.name),
            );
            self.outbox.reply(reply, Err(error));
            return;
        };
        let mut ids: Vec<u32> = self.counted_ids_of(&request.name).collect();
        ids.sort_by_key(|id| self.instances[id].slot);
        let current = ids.len() as i64;
        let wanted = match request.to {
            ScaleTo::Exactly(n) => i64::from(n),
            ScaleTo::Delta(d) => current.saturating_add(d),
        };
        if !(1..=1024).contains(&wanted) {
            let error = api_error(
                ErrorKind::BadRequest,
                &format!(
                    "cannot scale `{}` to {wanted} instances (it has {current}); the count must be \
                     1 to 1024 — use `pm2rs stop` or `pm2rs delete` to remove an app",
                    request.name
                ),
            );
            self.outbox.reply(reply, Err(error));
            return;
        }
        let mut spec = (*app.spec).clone();
        spec.instances = wanted as u32;
        let spec = Arc::new(spec);
        if let Some(app) = self.apps.get_mut(&request.name) {
            app.spec = spec;
        }
        if wanted >= current {
            let mut new_ids = Vec::new();
            for _ in current..wanted {
                new_ids.push(self.add_instance(&request.name));
            }
            for &id in &new_ids {
                self.start_instance(id, Counted::AsStart);
            }
            ids.extend(new_ids);
            let processes = self.infos(&ids);
            self.outbox
                .reply(reply, Ok(ActionResponse { processes, ids }));
        } else {
            let remove = ids.split_off(wanted as usize);
            self.stop_ids(&remove);
            self.pending.push(Pending::new(remove, Then::Delete(reply)));
        }
    }

    /// Registers a new app and spawns its instances.
    fn add_app(&mut self, spec: AppSpec) {
        let name = spec.name.clone();
        let count = spec.instances;
        self.register_app(spec, false);
        for _ in 0..count {
            let id = self.add_instance(&name);
            self.start_instance(id, Counted::AsStart);
        }
        info!(app = %name, instances = count, "app added");
    }

    /// The apps of these instances, each once per run of neighbours (ids come in app order).
    pub(super) fn apps_of(&self, ids: &[u32]) -> Vec<String> {
        let mut names: Vec<String> = ids
            .iter()
            .filter_map(|id| self.instances.get(id).map(|p| p.app.clone()))
            .collect();
        names.dedup();
        names
    }

    /// Registers an app, with no instance yet (`stopped`: the user stopped it); its cron
    /// restart is on unless it is stopped.
    pub(super) fn register_app(&mut self, spec: AppSpec, stopped: bool) {
        let name = spec.name.clone();
        self.disarm_cron(&name);
        self.apps.insert(
            name.clone(),
            App {
                policy: RestartPolicy::from(&spec),
                spec: Arc::new(spec),
                stopped,
                cron: None,
            },
        );
        self.set_cron(&name);
        self.dirty = true;
    }

    /// Creates a stopped instance of `app` in the lowest free slot.
    pub(super) fn add_instance(&mut self, app: &str) -> u32 {
        let used: Vec<u32> = self
            .counted_ids_of(app)
            .map(|id| self.instances[&id].slot)
            .collect();
        let slot = (0..).find(|i| !used.contains(i)).unwrap_or(0);
        let id = self.next_id;
        self.next_id += 1;
        self.insert_instance(id, app, slot, false);
        id
    }

    /// Creates stopped instance `id` of `app` in `slot`; a `leftover` does not count as one of
    /// the app's instances (see [`super::adopt`]).
    pub(super) fn insert_instance(&mut self, id: u32, app: &str, slot: u32, leftover: bool) {
        self.next_id = self.next_id.max(id + 1);
        self.instances.insert(
            id,
            Instance {
                id,
                app: app.to_string(),
                slot,
                status: Status::Stopped,
                run: None,
                restarts: 0,
                history: RestartHistory::default(),
                reason: None,
                last_exit: None,
                draining: None,
                pipes: None,
                out_log: Default::default(),
                err_log: Default::default(),
                notify_status: None,
                replaces: None,
                not_ready: false,
                kept: None,
                leftover,
                restart_reason: None,
                limit_restart: false,
            },
        );
        self.dirty = true;
    }

    /// The instances of `app` that count as its instances: not a reload's replacement, which
    /// belongs to the reload until it takes the old instance's place (or is discarded).
    pub(super) fn counted_ids_of<'a>(&'a self, app: &'a str) -> impl Iterator<Item = u32> + 'a {
        self.instances
            .values()
            .filter(move |p| p.app == app && p.replaces.is_none() && !p.leftover)
            .map(|p| p.id)
    }

    /// Every instance of `app`, replacements included (what a stop must reach).
    pub(super) fn ids_of<'a>(&'a self, app: &'a str) -> impl Iterator<Item = u32> + 'a {
        self.instances
            .values()
            .filter(move |p| p.app == app)
            .map(|p| p.id)
    }

    /// Starts a settled instance at the user's request.
    pub(super) fn start_instance(&mut self, id: u32, counted: Counted) {
        let Some(p) = self.instances.get_mut(&id) else {
            return;
        };
        if !p.settled() {
            return;
        }
        let mut arm = None;
        if let Some(app) = self.apps.get_mut(&p.app) {
            app.stopped = false;
            arm = Some(p.app.clone());
        }
        if counted == Counted::AsRestart {
            p.restarts += 1;
        }
        p.restart_reason = None;
        p.history = RestartHistory::default();
        p.reason = None;
        if transition(p, Event::StartRequested) {
            self.spawn_instance(id);
        }
        if let Some(name) = arm {
            self.arm_cron(&name);
        }
    }

    /// Asks these instances to stop: running ones get their kill signal and a kill timeout.
    pub(super) fn stop_ids(&mut self, ids: &[u32]) {
        for &id in ids {
            let Some(p) = self.instances.get_mut(&id) else {
                continue;
            };
            let Some(app) = self.apps.get(&p.app) else {
                continue;
            };
            let was_running = matches!(p.status, Status::Launching | Status::Online);
            if !transition(p, Event::StopRequested) {
                continue;
            }
            self.dirty = true;
            self.timers.cancel_kinds(id, &STOP_CANCELS);
            if was_running && let Some(run) = p.run {
                let sig = process::parse_signal(&app.spec.kill_signal);
                if let Err(e) = self.os.signal_group(run.tracked, sig) {
                    debug!(id, %e, "stop signal not delivered");
                }
                let timeout = Duration::from_millis(app.spec.kill_timeout_ms);
                self.timers.set_in(id, TimerKind::KillTimeout, timeout);
            }
        }
    }

    /// Runs every pending continuation whose instances have all settled. First every
    /// continuation notes which of its instances are settled now, then the complete ones run (one
    /// may start an instance again that another was waiting for: that one has seen it settle).
    pub(super) fn run_pending(&mut self) {
        let instances = &self.instances;
        for pending in &mut self.pending {
            pending
                .waiting
                .retain(|id| instances.get(id).is_some_and(|p| !p.settled()));
        }
        let (done, waiting): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.waiting.is_empty());
        self.pending = waiting;
        for pending in done {
            self.complete(pending);
        }
    }

    fn complete(&mut self, Pending { ids, then, .. }: Pending) {
        self.dirty = true;
        match then {
            Then::Reply(reply) => {
                self.close_stopped_apps(&ids);
                let processes = self.infos(&ids);
                self.outbox
                    .reply(reply, Ok(ActionResponse { processes, ids }));
            }
            Then::Restart(reply) => {
                for &id in &ids {
                    self.start_instance(id, Counted::AsRestart);
                }
                let processes = self.infos(&ids);
                self.outbox
                    .reply(reply, Ok(ActionResponse { processes, ids }));
            }
            Then::Delete(reply) => {
                self.remove(&ids);
                self.outbox.reply(reply, Ok(removed(ids)));
            }
            Then::Apply {
                specs,
                mut response,
                names,
                reply,
            } => {
                for spec in specs {
                    self.apply_changed(spec);
                }
                response.processes = self.infos_of_apps(&names);
                self.outbox.reply(reply, Ok(response));
            }
            Then::Kill(reply) => {
                self.remove(&ids);
                self.outbox.reply(reply, Ok(removed(ids)));
                self.shutdown.cancel();
            }
            Then::Forget => self.remove(&ids),
            Then::Start(reason) => {
                for &id in &ids {
                    let stopped = self
                        .instances
                        .get(&id)
                        .and_then(|p| self.apps.get(&p.app))
                        .is_none_or(|app| app.stopped);
                    if let Some(p) = self.instances.get_mut(&id) {
                        p.limit_restart = false;
                    }
                    if stopped {
                        continue;
                    }
                    self.start_instance(id, Counted::AsRestart);
                    if let Some(p) = self.instances.get_mut(&id) {
                        p.restart_reason.clone_from(&reason);
                    }
                }
            }
        }
    }

    /// Replaces a (stopped) app's spec, adjusts its instance count and starts it again.
    fn apply_changed(&mut self, spec: AppSpec) {
        let name = spec.name.clone();
        let wanted = spec.instances as usize;
        let Some(app) = self.apps.get_mut(&name) else {
            // Deleted meanwhile: treat it as new.
            self.add_app(spec);
            return;
        };
        app.policy = RestartPolicy::from(&spec);
        app.spec = Arc::new(spec);
        let mut ids: Vec<u32> = self.counted_ids_of(&name).collect();
        ids.sort_by_key(|id| self.instances[id].slot);
        if ids.len() > wanted {
            let extra = ids.split_off(wanted);
            self.remove(&extra);
        }
        while ids.len() < wanted {
            ids.push(self.add_instance(&name));
        }
        for id in ids {
            self.start_instance(id, Counted::AsRestart);
        }
        self.set_cron(&name);
        info!(app = %name, "app updated");
    }

    /// Forgets these (settled) instances. An app's instance count is derived from what remains; an
    /// app with none left is forgotten too.
    pub(super) fn remove(&mut self, ids: &[u32]) {
        let mut apps = Vec::new();
        for &id in ids {
            let Some(p) = self.instances.remove(&id) else {
                continue;
            };
            self.timers.cancel_all(id);
            self.draining.remove(&id);
            if let Some(run) = p.run {
                // Not settled (should not happen): never leave a process behind.
                let _ = self
                    .os
                    .signal_group(run.tracked, nix::sys::signal::Signal::SIGKILL);
                self.by_pid.remove(&run.tracked.pid);
            }
            if self
                .ids_of(&p.app)
                .all(|other| self.instances[&other].slot != p.slot)
            {
                self.cluster.release(&p.app, p.slot);
            }
            if !apps.contains(&p.app) {
                apps.push(p.app);
            }
        }
        for name in apps {
            let left = self.counted_ids_of(&name).count() as u32;
            if left == 0 {
                self.cluster.close(&name);
                self.disarm_cron(&name);
                self.apps.remove(&name);
                info!(app = %name, "app deleted");
            } else if let Some(app) = self.apps.get_mut(&name)
                && app.spec.instances != left
            {
                let mut spec = (*app.spec).clone();
                spec.instances = left;
                app.spec = Arc::new(spec);
            }
        }
        self.dirty = true;
    }
}

/// The reply to a command that removed instances.
fn removed(ids: Vec<u32>) -> ActionResponse {
    ActionResponse {
        processes: vec![],
        ids,
    }
}
