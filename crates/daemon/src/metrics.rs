//! CPU and memory sampling of managed processes, published for `list` and `describe`.
//!
//! One task refreshes only the pids in the supervisor's latest snapshot, every
//! [`SAMPLE_INTERVAL`], and only while there is something to sample. It runs the `/proc` reads on a
//! blocking thread so the runtime never waits on them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::supervisor::Snapshot;

/// How often figures are refreshed.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// One process's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Percent of one core since the previous sample.
    pub cpu_percent: f32,
    /// Resident set size in bytes.
    pub memory_bytes: u64,
}

/// Samples until `shutdown`, publishing on `out`.
pub async fn run(
    snapshot: watch::Receiver<Arc<Snapshot>>,
    out: watch::Sender<Arc<HashMap<u32, Sample>>>,
    shutdown: CancellationToken,
) {
    // Created on the first tick with pids to sample, so an idle daemon never holds one.
    let mut system: Option<Arc<Mutex<System>>> = None;
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let pids: Vec<Pid> = snapshot
            .borrow()
            .processes
            .iter()
            .filter_map(|p| p.pid)
            .map(Pid::from_u32)
            .collect();
        if pids.is_empty() {
            if !out.borrow().is_empty() {
                out.send_replace(Arc::new(HashMap::new()));
            }
            continue;
        }
        let system = match &system {
            Some(sys) => sys.clone(),
            None => match System::new() {
                Ok(sys) => system.insert(Arc::new(Mutex::new(sys))).clone(),
                Err(e) => {
                    tracing::error!(%e, "cannot sample process metrics; cpu and memory stay empty");
                    return;
                }
            },
        };
        let sampled = tokio::task::spawn_blocking(move || {
            let Ok(mut sys) = system.lock() else {
                return HashMap::new();
            };
            sys.refresh_processes_specifics(
                ProcessesToUpdate::Some(&pids),
                true,
                ProcessRefreshKind::nothing().with_cpu().with_memory(),
            );
            pids.iter()
                .filter_map(|pid| {
                    sys.process(*pid).map(|p| {
                        (
                            pid.as_u32(),
                            Sample {
                                cpu_percent: p.cpu_usage(),
                                memory_bytes: p.memory(),
                            },
                        )
                    })
                })
                .collect::<HashMap<_, _>>()
        })
        .await;
        if let Ok(map) = sampled {
            out.send_replace(Arc::new(map));
        }
    }
}
