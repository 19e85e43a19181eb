//! The apps of a dump brought back: at start (`pm2rs daemon --resurrect`, through
//! [`Parts::restore`](super::Parts)) and on `pm2rs resurrect`. Each app is restored by one
//! function that first registers the app, then creates its instances one by one, each started
//! unless the user had stopped the app; an app the daemon already knows is left alone. A port
//! that cannot be bound makes that app's instances errored with the reason (their spawn fails),
//! never the daemon. A slot whose run a previous daemon left running (handed back by the fd
//! keeper) takes that run over instead of starting a new one (see `adopt`).

use pm2rs_proto::{ErrorKind, ResurrectResponse};
use tracing::info;

use super::snapshot::api_error;
use super::{Counted, Reply, Supervisor};
use crate::state::{DumpedApp, Loaded};

impl Supervisor {
    /// The dump given at start, before the loop handles any input. Restored from a good
    /// `dump.json`, the state is already on disk: it is not written again (a boot does not push
    /// the older versions out); restored from an older version, it is written back.
    pub(super) fn restore_at_start(&mut self, loaded: Loaded) {
        if loaded.source.is_none() && loaded.warnings.is_empty() {
            return;
        }
        let clean = loaded.warnings.is_empty();
        let done = self.restore(loaded);
        if clean {
            self.dump_in_sync();
        }
        info!(
            started = done.started.len(),
            stopped = done.stopped.len(),
            "dump restored"
        );
    }

    /// `resurrect`: the dump's apps the daemon does not know yet.
    pub(super) fn resurrect(&mut self, loaded: Loaded, reply: Reply<ResurrectResponse>) {
        if self.durable.is_frozen() {
            let error = api_error(ErrorKind::ShuttingDown, "the daemon is shutting down");
            self.outbox.reply(reply, Err(error));
            return;
        }
        let done = self.restore(loaded);
        info!(started = ?done.started, stopped = ?done.stopped, known = ?done.known, "resurrected");
        self.outbox.reply(reply, Ok(done));
    }

    /// Restores every app of `loaded` the daemon does not know and says what it did.
    fn restore(&mut self, loaded: Loaded) -> ResurrectResponse {
        let mut done = ResurrectResponse {
            path: loaded.source.clone().unwrap_or_default(),
            started: vec![],
            stopped: vec![],
            known: vec![],
            warnings: loaded.warnings.clone(),
        };
        self.durable.load_warnings = loaded.warnings;
        self.dirty = true;
        // What a previous daemon left running: the sockets of the apps to run are taken back
        // before anything binds (see `adopt`).
        let running = loaded
            .apps
            .iter()
            .filter(|a| !a.stopped && !self.apps.contains_key(&a.spec.name))
            .map(|a| a.spec.name.clone())
            .collect();
        self.begin_take_over(&running);
        for app in loaded.apps {
            let name = app.spec.name.clone();
            if self.apps.contains_key(&name) {
                done.known.push(name);
                continue;
            }
            if app.stopped {
                done.stopped.push(name);
            } else {
                done.started.push(name);
            }
            self.restore_app(app);
        }
        done
    }

    /// One app: registered first, then its instances created (and started unless stopped).
    fn restore_app(&mut self, app: DumpedApp) {
        let DumpedApp { mut spec, stopped } = app;
        spec.instances = spec.instances.max(1);
        let name = spec.name.clone();
        let count = spec.instances;
        self.register_app(spec, stopped);
        for slot in 0..count {
            // A run of this slot that a previous daemon left keeps running, taken over.
            if !stopped && let Some((run, fds)) = self.take_kept(&name, slot) {
                let id = self.free_id(run.id);
                self.insert_instance(id, &name, slot, false);
                self.take_over(id, run, fds);
                continue;
            }
            let id = self.add_instance(&name);
            if !stopped {
                self.restore_instance(id);
            }
        }
    }

    /// Brings one instance of a restored app back: a new run.
    fn restore_instance(&mut self, id: u32) {
        self.start_instance(id, Counted::AsStart);
    }
}
