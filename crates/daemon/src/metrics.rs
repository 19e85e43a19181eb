//! CPU and memory sampling of managed processes, published for `list` and `describe` and for
//! the supervisor's memory limits (`max_memory_restart`).
//!
//! One task refreshes only the instances in the supervisor's latest snapshot, and only while there
//! is something to sample: every [`SAMPLE_INTERVAL`], and every [`LIMIT_INTERVAL`] the instances
//! of apps with a memory limit (an app growing 20 MB/s is then at most 5 MB past its limit when
//! the sample sees it). It runs the `/proc` reads on a blocking thread so the runtime never waits
//! on them. An instance's figures are its whole process group's: the leader (the process the
//! daemon started) and its descendants still in its group, found through each one's
//! `/proc/<pid>/task/<pid>/children` (children forked by other threads than a process's main
//! thread, and descendants reparented away, are not seen). Each member costs one read of
//! `/proc/<pid>/stat` and one of its children list (sysinfo's refresh opened five files per
//! process, and that was most of an idle daemon's CPU time).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::unistd::{Pid, SysconfVar, sysconf};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::process;
use crate::supervisor::Snapshot;

/// How often figures are refreshed.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// How often the instances of apps with a memory limit are sampled.
pub const LIMIT_INTERVAL: Duration = Duration::from_millis(250);

/// Most processes counted in one instance's group (a fork bomb is not walked to its end).
const MAX_GROUP: usize = 4096;

/// One instance's figures, by its leader's pid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Percent of one core since the previous sample, the whole group.
    pub cpu_percent: f32,
    /// Resident set size in bytes, the whole group (pages shared between members count once
    /// per member, as PM2 and `ps` count them).
    pub memory_bytes: u64,
    /// The leader's own CPU percent.
    pub leader_cpu_percent: f32,
    /// The leader's own resident set size.
    pub leader_memory_bytes: u64,
    /// Processes in the group, the leader included.
    pub processes: u32,
}

/// Every sampled instance, by leader pid.
pub type Samples = Arc<HashMap<u32, Sample>>;

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
    out: watch::Sender<Samples>,
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
    let mut tick = tokio::time::interval(LIMIT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_full: Option<Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let full = last_full.is_none_or(|at| at.elapsed() + LIMIT_INTERVAL / 2 >= SAMPLE_INTERVAL);
        let (all, limited) = {
            let snap = snapshot.borrow();
            let mut all = Vec::new();
            let mut limited = Vec::new();
            for p in &snap.processes {
                let Some(pid) = p.pid else { continue };
                all.push(pid);
                let has_limit = snap
                    .specs
                    .get(&p.name)
                    .is_some_and(|s| s.max_memory_restart.is_some());
                if has_limit {
                    limited.push(pid);
                }
            }
            (all, limited)
        };
        if all.is_empty() {
            seen.clear();
            if !out.borrow().is_empty() {
                out.send_replace(Arc::new(HashMap::new()));
            }
            continue;
        }
        if !full && limited.is_empty() {
            continue;
        }
        let leaders = if full { all.clone() } else { limited };
        let previous = std::mem::take(&mut seen);
        let sampled = tokio::task::spawn_blocking(move || {
            sample(
                &leaders,
                previous,
                !full,
                ticks_per_s as f64,
                page_size as u64,
            )
        })
        .await;
        let Ok((samples, now_seen)) = sampled else {
            continue;
        };
        seen = now_seen;
        let mut merged: HashMap<u32, Sample> = if full {
            HashMap::new()
        } else {
            // Instances not sampled this time keep their last figures.
            let live: HashSet<u32> = all.iter().copied().collect();
            out.borrow()
                .iter()
                .filter(|(pid, _)| live.contains(pid))
                .map(|(pid, s)| (*pid, *s))
                .collect()
        };
        merged.extend(samples);
        if full {
            last_full = Some(Instant::now());
        }
        out.send_replace(Arc::new(merged));
    }
}

/// Samples the group of each of `leaders`. CPU is the share of one core used since the previous
/// sample of the same process (0 on its first sample); memory is the resident set. `keep`: the
/// returned "seen" map keeps `previous`'s other entries (a partial sample); else it holds only
/// the processes seen now.
fn sample(
    leaders: &[u32],
    previous: HashMap<u32, Seen>,
    keep: bool,
    ticks_per_s: f64,
    page_size: u64,
) -> (HashMap<u32, Sample>, HashMap<u32, Seen>) {
    let mut samples = HashMap::with_capacity(leaders.len());
    let mut seen = if keep {
        previous.clone()
    } else {
        HashMap::with_capacity(leaders.len())
    };
    // One process's figures (cpu percent, resident bytes, process group), recorded in `seen`.
    let mut measure = |pid: u32| -> Option<(f32, u64, u64)> {
        let stat = process::stat_sample(Pid::from_raw(i32::try_from(pid).ok()?))?;
        let at = Instant::now();
        let cpu = match previous.get(&pid) {
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
        seen.insert(
            pid,
            Seen {
                start_ticks: stat.start_ticks,
                cpu_ticks: stat.cpu_ticks,
                at,
            },
        );
        Some((cpu, stat.rss_pages * page_size, stat.pgid))
    };
    for &leader in leaders {
        let Some((cpu, memory, _)) = measure(leader) else {
            continue;
        };
        let mut group = Sample {
            cpu_percent: cpu,
            memory_bytes: memory,
            leader_cpu_percent: cpu,
            leader_memory_bytes: memory,
            processes: 1,
        };
        // Descendants still in the leader's group (its pgid is its own pid).
        let mut queue: Vec<Pid> = process::children(Pid::from_raw(leader as i32));
        let mut visited = 1;
        while let Some(child) = queue.pop() {
            if visited >= MAX_GROUP {
                break;
            }
            visited += 1;
            let Ok(raw) = u32::try_from(child.as_raw()) else {
                continue;
            };
            let Some((cpu, memory, pgid)) = measure(raw) else {
                continue;
            };
            if pgid != u64::from(leader) {
                continue;
            }
            group.cpu_percent += cpu;
            group.memory_bytes += memory;
            group.processes += 1;
            queue.extend(process::children(child));
        }
        samples.insert(leader, group);
    }
    (samples, seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_the_share_of_a_core_since_the_previous_sample() {
        let me = std::process::id();
        let (first, seen) = sample(&[me, u32::MAX], HashMap::new(), false, 100.0, 4096);
        assert_eq!(first.len(), 1, "a missing pid is skipped");
        assert_eq!(first[&me].leader_cpu_percent, 0.0, "no previous sample");
        assert!(first[&me].memory_bytes > 0);
        // Spin until this process has used at least 5 more ticks of CPU time.
        let ticks = sysconf(SysconfVar::CLK_TCK).unwrap().unwrap() as f64;
        let target = seen[&me].cpu_ticks + 5;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut x = 0u64;
        // And a window long enough that whole clock ticks, counted per thread, are not most of it.
        let window = Instant::now() + Duration::from_millis(200);
        while process::stat_sample(Pid::from_raw(me as i32))
            .unwrap()
            .cpu_ticks
            < target
            || Instant::now() < window
        {
            assert!(Instant::now() < deadline, "no CPU time accounted");
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        let (second, _) = sample(&[me], seen.clone(), false, ticks, 4096);
        // The leader's own share: the test binary's group may hold other tests' children.
        let cpu = second[&me].leader_cpu_percent;
        // Other tests run in this process at the same time, so more than one core may be busy.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f32;
        assert!(cpu > 0.0 && cpu <= 150.0 * cores, "cpu {cpu}");
        // A different start time means another process under a reused pid: no percentage.
        let mut reused = seen.clone();
        reused.get_mut(&me).unwrap().start_ticks += 1;
        let (third, _) = sample(&[me], reused, false, ticks, 4096);
        assert_eq!(third[&me].leader_cpu_percent, 0.0);
    }

    /// Kills what a test started: the group, and the processes that left it.
    struct Reap(Vec<i32>);

    impl Drop for Reap {
        fn drop(&mut self) {
            for &pid in &self.0 {
                let _ =
                    nix::sys::signal::killpg(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                let _ =
                    nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }

    #[test]
    fn a_group_counts_its_descendants_in_the_group_and_not_those_that_left() {
        use std::os::unix::process::CommandExt;
        // sh, a child in its group with a grandchild, and a child in a session of its own.
        let mut leader = std::process::Command::new("sh")
            .args(["-c", "sh -c 'sleep 100 & wait' & setsid sleep 100 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = leader.id();
        let mut reap = Reap(vec![pid as i32]);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut all = Vec::new();
        while all.len() < 4 {
            assert!(Instant::now() < deadline, "the group never formed: {all:?}");
            all = vec![Pid::from_raw(pid as i32)];
            let mut i = 0;
            while i < all.len() {
                all.extend(process::children(all[i]));
                i += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        reap.0.extend(all.iter().map(|p| p.as_raw()));
        let (samples, _) = sample(&[pid], HashMap::new(), false, 100.0, 4096);
        let group = samples[&pid];
        assert_eq!(
            group.processes, 3,
            "sh, sh and its sleep; not the setsid one"
        );
        assert!(group.memory_bytes > group.leader_memory_bytes);
        drop(reap);
        let _ = leader.wait();
    }
}
