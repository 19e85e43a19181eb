//! `watch`: restarting apps when their files change. One task owns the daemon's single inotify
//! watcher (the `notify` crate's, on its own thread), watching recursively the union of the
//! paths of every app that has `watch` and is meant to run, as the supervisor publishes them
//! ([`Watched`]). A change under an app's path that no ignore glob matches (`ignore_watch`, plus
//! `node_modules` and `.git` always) starts that app's quiet time, `watch_delay`; every further
//! change restarts it, so a burst (a checkout, a build writing 100 files) ends in one restart,
//! reported to the supervisor as the app's name once the app's files have been quiet that long.
//! Reads (open, access, close without write) are not changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::supervisor::sleep_until;

/// What the supervisor wants watched: by app name.
pub type Watched = Arc<BTreeMap<String, WatchSpec>>;

/// One app's watch settings (from its `AppSpec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    pub paths: Vec<PathBuf>,
    pub ignore: Vec<String>,
    pub delay: Duration,
}

/// Capacity of the channel from the watcher's thread (its events) and of the one to the
/// supervisor (app names). The thread waits when the first is full: nothing is dropped.
pub const CHANGE_QUEUE: usize = 256;

/// An app's settings, compiled.
struct Compiled {
    paths: Vec<PathBuf>,
    ignore: GlobSet,
    delay: Duration,
}

fn compile(spec: &WatchSpec) -> Compiled {
    let mut builder = GlobSetBuilder::new();
    for g in pm2rs_proto::defaults::IGNORE_WATCH
        .iter()
        .copied()
        .chain(spec.ignore.iter().map(String::as_str))
    {
        // The config checked every glob; one that fails here is skipped, said once.
        match Glob::new(g) {
            Ok(glob) => {
                builder.add(glob);
            }
            Err(e) => warn!(glob = g, %e, "an ignore_watch glob is skipped"),
        }
    }
    Compiled {
        paths: spec.paths.clone(),
        ignore: builder.build().unwrap_or_else(|_| GlobSet::empty()),
        delay: spec.delay,
    }
}

impl Compiled {
    /// Whether a change of `path` counts for this app: under one of its paths and not ignored
    /// (a glob matching the path relative to that root, or any of its components).
    fn wants(&self, path: &Path) -> bool {
        self.paths.iter().any(|root| {
            let Ok(rel) = path.strip_prefix(root) else {
                return false;
            };
            if self.ignore.is_match(rel) {
                return false;
            }
            !rel.components()
                .any(|c| self.ignore.is_match(Path::new(c.as_os_str())))
        })
    }
}

/// Watches until `shutdown`, sending the name of each app whose files changed (once per burst).
pub async fn run(
    mut wanted: watch::Receiver<Watched>,
    changed: mpsc::Sender<String>,
    shutdown: CancellationToken,
) {
    let (events_tx, mut events) = mpsc::channel::<notify::Result<notify::Event>>(CHANGE_QUEUE);
    let mut watcher: Option<notify::RecommendedWatcher> = None;
    let mut watching: BTreeSet<PathBuf> = BTreeSet::new();
    let mut apps: HashMap<String, Compiled> = HashMap::new();
    // Apps with a change waiting for their quiet time to end.
    let mut due: HashMap<String, Instant> = HashMap::new();
    loop {
        let next = due.values().min().copied();
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed_set = wanted.changed() => {
                if changed_set.is_err() {
                    return;
                }
                let now: Watched = wanted.borrow_and_update().clone();
                apps = now.iter().map(|(name, spec)| (name.clone(), compile(spec))).collect();
                due.retain(|name, _| apps.contains_key(name));
                let paths: BTreeSet<PathBuf> =
                    apps.values().flat_map(|a| a.paths.iter().cloned()).collect();
                if watcher.is_none() && !paths.is_empty() {
                    let tx = events_tx.clone();
                    match notify::recommended_watcher(move |e| {
                        // On the watcher's own thread: wait for room rather than drop a change.
                        let _ = tx.blocking_send(e);
                    }) {
                        Ok(w) => watcher = Some(w),
                        Err(e) => {
                            warn!(%e, "cannot watch files: watch restarts nothing");
                            continue;
                        }
                    }
                }
                if let Some(w) = watcher.as_mut() {
                    for gone in watching.difference(&paths) {
                        let _ = w.unwatch(gone);
                    }
                    for new in paths.difference(&watching) {
                        match w.watch(new, RecursiveMode::Recursive) {
                            Ok(()) => debug!(path = %new.display(), "watching"),
                            Err(e) => warn!(path = %new.display(), %e, "cannot watch this path"),
                        }
                    }
                }
                watching = paths;
            }
            Some(event) = events.recv() => {
                let event = match event {
                    Ok(e) => e,
                    Err(e) => {
                        warn!(%e, "file watch error");
                        continue;
                    }
                };
                if matches!(event.kind, EventKind::Access(_)) {
                    continue;
                }
                for (name, app) in &apps {
                    if event.paths.iter().any(|p| app.wants(p)) {
                        due.insert(name.clone(), Instant::now() + app.delay);
                    }
                }
            }
            () = sleep_until(next) => {
                let now = Instant::now();
                let ready: Vec<String> = due
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in ready {
                    due.remove(&name);
                    info!(app = %name, "watch: files changed");
                    if changed.send(name).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_count_under_the_roots_unless_ignored() {
        let app = compile(&WatchSpec {
            paths: vec![PathBuf::from("/srv/app")],
            ignore: vec!["*.log".into(), "tmp/**".into()],
            delay: Duration::from_secs(1),
        });
        assert!(app.wants(Path::new("/srv/app/server.js")));
        assert!(app.wants(Path::new("/srv/app/lib/util.js")));
        assert!(!app.wants(Path::new("/srv/other/x.js")), "outside the root");
        assert!(!app.wants(Path::new("/srv/app/out.log")), "a glob");
        assert!(
            !app.wants(Path::new("/srv/app/logs/out.log")),
            "a glob on a component"
        );
        assert!(
            !app.wants(Path::new("/srv/app/tmp/a/b")),
            "a glob on the relative path"
        );
        assert!(
            !app.wants(Path::new("/srv/app/node_modules/x/index.js")),
            "always ignored"
        );
        assert!(
            !app.wants(Path::new("/srv/app/.git/HEAD")),
            "always ignored"
        );
    }
}
