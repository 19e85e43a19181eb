//! The supervisor's side of `watch`: it publishes what the file watcher ([`crate::watcher`])
//! watches (every app with `watch` that is meant to run: `stop` of the whole app turns its watch
//! off until it is started again) and restarts an app whose files changed, as `cron_restart`
//! does (see [`Supervisor::restart_running`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Supervisor;
use crate::watcher::WatchSpec;

/// The watcher's next change; never resolves without a watcher (or once it is gone).
pub(super) async fn next_change(changes: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    if let Some(rx) = changes {
        if let Some(app) = rx.recv().await {
            return Some(app);
        }
        *changes = None;
    }
    std::future::pending().await
}

impl Supervisor {
    /// Publishes the watched apps if they changed (once per step).
    pub(super) fn sync_watched(&mut self) {
        let Some(tx) = &self.watched else {
            return;
        };
        let wanted: BTreeMap<String, WatchSpec> = self
            .apps
            .iter()
            .filter(|(_, app)| !app.spec.watch.is_empty() && !app.stopped)
            .map(|(name, app)| {
                let spec = WatchSpec {
                    paths: app.spec.watch.clone(),
                    ignore: app.spec.ignore_watch.clone(),
                    delay: Duration::from_millis(app.spec.watch_delay_ms),
                };
                (name.clone(), spec)
            })
            .collect();
        tx.send_if_modified(|now| {
            if **now == wanted {
                return false;
            }
            *now = Arc::new(wanted);
            true
        });
    }

    /// `app`'s files changed: its running instances are restarted, unless it is stopped.
    pub(super) fn on_files_changed(&mut self, app: &str) {
        let watching = self
            .apps
            .get(app)
            .is_some_and(|a| !a.spec.watch.is_empty() && !a.stopped);
        if watching {
            self.restart_running(app, "watch");
        }
    }
}
