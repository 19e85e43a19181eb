//! Memory limits (`max_memory_restart`): every sample of an instance's process group (see
//! [`crate::metrics`]; apps with a limit are sampled every [`crate::metrics::LIMIT_INTERVAL`]) is
//! compared with its app's limit, and an instance over it is restarted gracefully: a zero-downtime
//! reload for cluster apps and apps that signal readiness, else a stop with the app's kill signal
//! and kill timeout, then a start (also when such a reload ends without replacing the instance:
//! its replacement was never ready). It counts as a restart (↺), never as an unstable run, and the
//! new run shows why it was started (`ProcessInfo::restart_reason`) until the next start of any
//! other kind.

use pm2rs_proto::{ExecMode, Status};
use tokio::sync::watch;
use tracing::warn;

use super::{Pending, Supervisor, Then};
use crate::cluster::reload::Reload;
use crate::metrics::Samples;

/// The sampler's next figures; never resolves without a sampler (or once it is gone).
pub(super) async fn next_samples(samples: &mut Option<watch::Receiver<Samples>>) -> Samples {
    if let Some(rx) = samples {
        if rx.changed().await.is_ok() {
            return rx.borrow_and_update().clone();
        }
        *samples = None;
    }
    std::future::pending().await
}

/// `bytes` as PM2 users write limits: `162M`, `1.5G`.
pub(super) fn human(bytes: u64) -> String {
    const M: u64 = 1 << 20;
    const G: u64 = 1 << 30;
    if bytes >= G {
        format!("{:.1}G", bytes as f64 / G as f64)
    } else if bytes >= M {
        format!("{}M", bytes / M)
    } else {
        format!("{}K", bytes >> 10)
    }
}

impl Supervisor {
    /// Restarts every instance whose group is over its app's memory limit in `samples`.
    pub(super) fn check_limits(&mut self, samples: &Samples) {
        let mut over = Vec::new();
        for (&id, p) in &self.instances {
            if p.status != Status::Online || p.leftover || p.replaces.is_some() {
                continue;
            }
            // A reload under way is left to replace it. One asked for a limit that ended without
            // replacing the instance (its replacement was never ready) falls back to a plain
            // restart.
            if self.reloads.iter().any(|(job, _)| job.involves(id)) {
                continue;
            }
            let fallback = p.limit_restart;
            let Some(app) = self.apps.get(&p.app) else {
                continue;
            };
            let (Some(limit), Some(run)) = (app.spec.max_memory_restart, p.run) else {
                continue;
            };
            let Some(sample) = samples.get(&(run.tracked.pid.as_raw() as u32)) else {
                continue;
            };
            if sample.memory_bytes > limit {
                let graceful =
                    !fallback && (app.spec.exec_mode == ExecMode::Cluster || app.spec.wait_ready);
                let reason = format!(
                    "memory {} over limit {}",
                    human(sample.memory_bytes),
                    human(limit)
                );
                over.push((id, reason, graceful, sample.processes));
            }
        }
        for (id, reason, reload, processes) in over {
            let Some(p) = self.instances.get_mut(&id) else {
                continue;
            };
            let how = if reload { "reloading" } else { "restarting" };
            warn!(id, app = %p.app, processes, "{reason}: {how} the instance");
            p.limit_restart = true;
            p.restart_reason = Some(reason.clone());
            self.dirty = true;
            if reload {
                // Nobody waits for its end.
                self.reloads.push((Reload::new(vec![id], 1), None));
            } else {
                self.stop_ids(&[id]);
                self.pending
                    .push(Pending::new(vec![id], Then::Start(Some(reason))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn sizes_read_as_limits_are_written() {
        assert_eq!(human(150 << 20), "150M");
        assert_eq!(human((162 << 20) + 12345), "162M");
        assert_eq!(human(3 << 29), "1.5G");
        assert_eq!(human(512 << 10), "512K");
    }
}
