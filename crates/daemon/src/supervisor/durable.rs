//! The supervisor's side of the dump: after every step it compares the desired state (each app's
//! spec and whether the user stopped it) with what it last sent to the dump writer, sends a new
//! generation when they differ, and holds the step's replies until the writer reports that
//! generation written (`Input::Dumped`). A failed write releases them too (with a warning in the
//! snapshot, and the writer retrying): a full disk must not hang the CLI. After `kill` or a signal
//! the state is frozen, so stopping the apps on the way out never empties the dump.

use std::collections::BTreeMap;
use std::future::pending;
use std::path::PathBuf;
use std::sync::Arc;

use pm2rs_proto::{AppSpec, ErrorKind, SaveResponse};
use tokio::sync::watch;

use super::snapshot::api_error;
use super::{Reply, Supervisor};
use crate::state::{Desired, DumpFile, DumpedApp, SCHEMA, Written};

/// The channels to the dump writer task ([`crate::state::writer`]).
pub struct DumpLink {
    /// The latest desired state (the writer takes only the newest).
    pub desired: watch::Sender<Option<Arc<Desired>>>,
    /// What the writer last did.
    pub written: watch::Receiver<Written>,
    /// The dump file, for replies.
    pub path: PathBuf,
}

/// What was sent to the writer, and what it answered.
pub(super) struct Durable {
    link: Option<DumpLink>,
    /// Each app's spec and stopped flag as last sent.
    sent: BTreeMap<String, (Arc<AppSpec>, bool)>,
    /// The last generation sent, and the last the writer is done with.
    generation: u64,
    done: u64,
    /// `save` asked for a write even if nothing changed.
    force: bool,
    /// Set by `kill` and at the end of the loop: nothing more is sent.
    frozen: bool,
    /// The writer's last error, until a write succeeds.
    error: Option<String>,
    /// Problems met loading the last dump read.
    pub(super) load_warnings: Vec<String>,
}

impl Durable {
    pub(super) fn new(link: Option<DumpLink>) -> Durable {
        Durable {
            link,
            sent: BTreeMap::new(),
            generation: 0,
            done: 0,
            force: false,
            frozen: false,
            error: None,
            load_warnings: Vec::new(),
        }
    }

    /// A receiver of the writer's reports, for the loop's `select!`.
    pub(super) fn written(&self) -> Option<watch::Receiver<Written>> {
        self.link.as_ref().map(|l| l.written.clone())
    }

    /// The generation the step's replies must wait for, if one is not written yet.
    pub(super) fn unwritten(&self) -> Option<u64> {
        (self.generation > self.done).then_some(self.generation)
    }

    pub(super) fn waiting(&self) -> bool {
        self.unwritten().is_some()
    }

    /// No more changes reach the dump (the daemon is ending: its apps are stopped, not removed).
    pub(super) fn freeze(&mut self) {
        self.frozen = true;
    }

    pub(super) fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// The warnings to show in `ping` and `describe`.
    pub(super) fn warnings(&self) -> Vec<String> {
        let mut all = self.load_warnings.clone();
        all.extend(self.error.clone());
        all
    }

    pub(super) fn path(&self) -> Option<PathBuf> {
        self.link.as_ref().map(|l| l.path.clone())
    }
}

/// The writer's next report (never, without a writer or once it is gone).
pub(super) async fn next_written(rx: &mut Option<watch::Receiver<Written>>) -> Written {
    if let Some(rx) = rx
        && rx.changed().await.is_ok()
    {
        return rx.borrow_and_update().clone();
    }
    pending().await
}

impl Supervisor {
    /// Sends the desired state to the writer if it changed since last sent (or `save` asked).
    pub(super) fn sync_dump(&mut self) {
        let d = &mut self.durable;
        if d.frozen || d.link.is_none() || self.shutdown.is_cancelled() {
            d.force = false;
            return;
        }
        let same =
            d.sent.len() == self.apps.len()
                && self.apps.iter().zip(&d.sent).all(
                    |((name, app), (sent_name, (spec, stopped)))| {
                        name == sent_name
                            && app.stopped == *stopped
                            && (Arc::ptr_eq(&app.spec, spec) || app.spec == *spec)
                    },
                );
        if same && !d.force {
            return;
        }
        d.force = false;
        self.dump_in_sync();
        let d = &mut self.durable;
        d.generation += 1;
        let dump = DumpFile {
            version: SCHEMA,
            apps: self
                .apps
                .values()
                .map(|app| DumpedApp {
                    spec: (*app.spec).clone(),
                    stopped: app.stopped,
                })
                .collect(),
        };
        if let Some(link) = &d.link {
            link.desired.send_replace(Some(Arc::new(Desired {
                generation: d.generation,
                dump,
            })));
        }
    }

    /// Takes the current desired state as the one on disk (sent, or just read from it).
    pub(super) fn dump_in_sync(&mut self) {
        self.durable.sent = self
            .apps
            .iter()
            .map(|(name, app)| (name.clone(), (app.spec.clone(), app.stopped)))
            .collect();
    }

    /// The writer is done with a generation: the replies waiting for it (and older ones) go.
    pub(super) fn on_dumped(&mut self, written: Written) {
        let d = &mut self.durable;
        d.done = d.done.max(written.generation);
        self.outbox
            .release(written.generation, written.error.as_deref());
        if d.error != written.error {
            d.error = written.error;
            self.dirty = true;
        }
    }

    /// `save`: write the dump now, reply once it is on disk (or with the write's error).
    pub(super) fn save(&mut self, reply: Reply<SaveResponse>) {
        let Some(path) = self.durable.path() else {
            let error = api_error(ErrorKind::Failed, "this daemon keeps no dump");
            self.outbox.reply(reply, Err(error));
            return;
        };
        if self.durable.frozen {
            let error = api_error(ErrorKind::ShuttingDown, "the daemon is shutting down");
            self.outbox.reply(reply, Err(error));
            return;
        }
        self.durable.force = true;
        let response = SaveResponse {
            path,
            apps: self.apps.len(),
        };
        self.outbox.reply_when_written(reply, response);
    }
}
