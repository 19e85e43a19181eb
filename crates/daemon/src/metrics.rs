//! CPU and memory sampling of managed processes, published for `list` and `describe`.
//!
//! One task refreshes only the pids in the supervisor's latest snapshot, every
//! [`SAMPLE_INTERVAL`], and only while there is something to sample. It runs the `/proc` reads on a
//! blocking thread so the runtime never waits on them. Each sample is one read of
//! `/proc/<pid>/stat` per process (sysinfo's refresh opened five files per process, and that was
//! most of an idle daemon's CPU time).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::unistd::{Pid, SysconfVar, sysconf};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::process;
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

/// What the previous sample of one pid saw, to turn CPU ticks into a percentage.
#[derive(Debug, Clone, Copy)]
struct Seen {
    start_ticks: u64,
    cpu_ticks: u64,
    at: Instant,
}

/// Samples until `shutdown`, publishing on `out`.
pub async fn run(
    snapshot: watch::Receiver<Arc<Snapshot>>,
    out: watch::Sender<Arc<HashMap<u32, Sample>>>,
    shutdown: CancellationToken,
) {
    let conf = |var| sysconf(var).ok().flatten().filter(|v| *v > 0);
    let (Some(ticks_per_s), Some(page_size)) =
        (conf(SysconfVar::CLK_TCK), conf(SysconfVar::PAGE_SIZE))
    else {
        tracing::error!("cannot read the clock tick or page size; cpu and memory stay empty");
        return;
    };
    let mut seen: HashMap<u32, Seen> = HashMap::new();
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let pids: Vec<u32> = snapshot
            .borrow()
            .processes
            .iter()
            .filter_map(|p| p.pid)
            .collect();
        if pids.is_empty() {
            seen.clear();
            if !out.borrow().is_empty() {
                out.send_replace(Arc::new(HashMap::new()));
            }
            continue;
        }
        let previous = std::mem::take(&mut seen);
        let sampled = tokio::task::spawn_blocking(move || {
            sample(&pids, &previous, ticks_per_s as f64, page_size as u64)
        })
        .await;
        if let Ok((samples, now_seen)) = sampled {
            seen = now_seen;
            out.send_replace(Arc::new(samples));
        }
    }
}

/// One `/proc/<pid>/stat` read per pid. CPU is the share of one core used since the previous
/// sample of the same process (0 on its first sample); memory is the resident set.
fn sample(
    pids: &[u32],
    previous: &HashMap<u32, Seen>,
    ticks_per_s: f64,
    page_size: u64,
) -> (HashMap<u32, Sample>, HashMap<u32, Seen>) {
    let mut samples = HashMap::with_capacity(pids.len());
    let mut seen = HashMap::with_capacity(pids.len());
    for &pid in pids {
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        let Some(stat) = process::stat_sample(Pid::from_raw(raw)) else {
            continue;
        };
        let at = Instant::now();
        let cpu_percent = match previous.get(&pid) {
            Some(prev) if prev.start_ticks == stat.start_ticks => {
                let secs = at.duration_since(prev.at).as_secs_f64();
                let used = stat.cpu_ticks.saturating_sub(prev.cpu_ticks) as f64 / ticks_per_s;
                if secs > 0.0 {
                    (used / secs * 100.0) as f32
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        samples.insert(
            pid,
            Sample {
                cpu_percent,
                memory_bytes: stat.rss_pages * page_size,
            },
        );
        seen.insert(
            pid,
            Seen {
                start_ticks: stat.start_ticks,
                cpu_ticks: stat.cpu_ticks,
                at,
            },
        );
    }
    (samples, seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_the_share_of_a_core_since_the_previous_sample() {
        let me = std::process::id();
        let (first, seen) = sample(&[me, u32::MAX], &HashMap::new(), 100.0, 4096);
        assert_eq!(first.len(), 1, "a missing pid is skipped");
        assert_eq!(first[&me].cpu_percent, 0.0, "no previous sample");
        assert!(first[&me].memory_bytes > 0);
        // Spin until this process has used at least 5 more ticks of CPU time.
        let ticks = sysconf(SysconfVar::CLK_TCK).unwrap().unwrap() as f64;
        let target = seen[&me].cpu_ticks + 5;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut x = 0u64;
        while process::stat_sample(Pid::from_raw(me as i32))
            .unwrap()
            .cpu_ticks
            < target
        {
            assert!(Instant::now() < deadline, "no CPU time accounted");
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        let (second, _) = sample(&[me], &seen, ticks, 4096);
        let cpu = second[&me].cpu_percent;
        // Other tests run in this process at the same time, so more than one core may be busy.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f32;
        assert!(cpu > 0.0 && cpu <= 100.0 * cores + 10.0, "cpu {cpu}");
        // A different start time means another process under a reused pid: no percentage.
        let mut reused = seen.clone();
        reused.get_mut(&me).unwrap().start_ticks += 1;
        let (third, _) = sample(&[me], &reused, ticks, 4096);
        assert_eq!(third[&me].cpu_percent, 0.0);
    }
}
