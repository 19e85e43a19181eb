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
//! thread, and descendants reparented away, are not seen). Each member costs one `pread` of its
//! `/proc/<pid>/stat`, kept open, per sample, and one of its children list every
//! [`CHILDREN_EVERY`] samples (every sample when sampled fast); sysinfo's refresh opened five
//! files per process, and that was most of an idle daemon's CPU time.

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

/// A process being sampled: its `/proc` files, kept open and read again from their start (one
/// `pread` each per sample instead of open, read, read, close; a process that has ended makes
/// them fail, so a reused pid is never read through them), and what its previous sample saw, to
/// turn CPU ticks into a percentage.
struct Known {
    /// `None`: not kept open (over [`kept_files_budget`]), opened again each time.
    stat: Option<std::fs::File>,
    /// `/proc/<pid>/task/<pid>/children`; `None` if not kept open.
    children: Option<std::fs::File>,
    cpu_ticks: u64,
    at: Instant,
    /// Its children at the last read of their list, and the samples since.
    children_seen: Vec<Pid>,
    children_age: u32,
}

/// A process's children list is read again every this many samples (a new child of an idle
/// instance counts within that many seconds); every sample for an instance sampled fast (near
/// its memory limit), whose new child must count at once.
const CHILDREN_EVERY: u32 = 5;

/// How many `/proc` files the sampler keeps open: a quarter of the daemon's soft limit of open
/// files (whose rest its instances' pipes, pidfds and sockets need), at most 2048.
fn kept_files_budget() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    usize::try_from(soft / 4).unwrap_or(usize::MAX).min(2048)
}

/// Reads `path` into `buf`; false if it cannot be read.
fn read_path(path: &str, buf: &mut Vec<u8>) -> bool {
    match std::fs::File::open(path) {
        Ok(file) => read_again(&file, buf),
        Err(_) => false,
    }
}

/// Reads `file` from its start into `buf` (grown as needed); false if it cannot be read.
fn read_again(file: &std::fs::File, buf: &mut Vec<u8>) -> bool {
    use std::os::unix::fs::FileExt;
    buf.clear();
    let mut chunk = [0u8; 1024];
    loop {
        match file.read_at(&mut chunk, buf.len() as u64) {
            Ok(0) => return true,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if n < chunk.len() {
                    return true;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
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
    let mut seen: HashMap<u32, Known> = HashMap::new();
    let budget = kept_files_budget();
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
            let last = out.borrow();
            for p in &snap.processes {
                let Some(pid) = p.pid else { continue };
                all.push(pid);
                let limit = snap.specs.get(&p.name).and_then(|s| s.max_memory_restart);
                // Sampled fast only while within half of its limit: an instance far below it
                // cannot cross it before the next full sample.
                let near = |limit: u64| last.get(&pid).is_none_or(|s| s.memory_bytes > limit / 2);
                if limit.is_some_and(near) {
                    limited.push(pid);
                }
            }
            drop(last);
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
                (ticks_per_s as f64, page_size as u64),
                budget,
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
/// returned map keeps `previous`'s other processes (a partial sample); else it holds only the
/// processes seen now (the files of the others are closed).
fn sample(
    leaders: &[u32],
    mut previous: HashMap<u32, Known>,
    keep: bool,
    (ticks_per_s, page_size): (f64, u64),
    budget: usize,
) -> (HashMap<u32, Sample>, HashMap<u32, Known>) {
    let mut samples = HashMap::with_capacity(leaders.len());
    let mut seen: HashMap<u32, Known> = HashMap::with_capacity(leaders.len());
    let mut buf = Vec::with_capacity(1024);
    // Files kept open, two per process, within the budget.
    let mut open_files = previous.values().filter(|k| k.stat.is_some()).count() * 2;
    // One process's figures (cpu percent, resident bytes, process group) and its children.
    let mut measure = |pid: u32, buf: &mut Vec<u8>| -> Option<(f32, u64, u64, Vec<Pid>)> {
        let at = Instant::now();
        let stat_path = || format!("/proc/{pid}/stat");
        let mut known = previous.remove(&pid);
        let read = match known.as_ref().map(|k| k.stat.as_ref()) {
            Some(Some(file)) => read_again(file, buf),
            Some(None) => read_path(&stat_path(), buf),
            None => false,
        };
        if !read {
            // New, or ended (its kept files fail): open again, which fails if it is gone.
            if known.take().is_some_and(|k| k.stat.is_some()) {
                open_files = open_files.saturating_sub(2);
            }
            let stat = std::fs::File::open(stat_path()).ok()?;
            if !read_again(&stat, buf) {
                return None;
            }
            let kept = open_files + 2 <= budget;
            if kept {
                open_files += 2;
            }
            known = Some(Known {
                stat: kept.then_some(stat),
                children: kept
                    .then(|| std::fs::File::open(format!("/proc/{pid}/task/{pid}/children")).ok())
                    .flatten(),
                cpu_ticks: u64::MAX,
                at,
                children_seen: Vec::new(),
                children_age: u32::MAX,
            });
        }
        let mut k = known?;
        let stat = process::parse_stat(std::str::from_utf8(buf).ok()?)?;
        let cpu = if k.cpu_ticks == u64::MAX {
            0.0
        } else {
            let secs = at.duration_since(k.at).as_secs_f64();
            let used = stat.cpu_ticks.saturating_sub(k.cpu_ticks) as f64 / ticks_per_s;
            if secs > 0.0 {
                (used / secs * 100.0) as f32
            } else {
                0.0
            }
        };
        k.cpu_ticks = stat.cpu_ticks;
        k.at = at;
        if keep || k.children_age >= CHILDREN_EVERY - 1 {
            let listed = match (&k.children, &k.stat) {
                (Some(file), _) => read_again(file, buf),
                (None, None) => read_path(&format!("/proc/{pid}/task/{pid}/children"), buf),
                (None, Some(_)) => false,
            };
            k.children_seen = match listed {
                true => std::str::from_utf8(buf)
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .map(Pid::from_raw)
                    .collect(),
                false => Vec::new(),
            };
            k.children_age = 0;
        } else {
            k.children_age += 1;
        }
        let children = k.children_seen.clone();
        seen.insert(pid, k);
        Some((cpu, stat.rss_pages * page_size, stat.pgid, children))
    };
    for &leader in leaders {
        let Some((cpu, memory, _, children)) = measure(leader, &mut buf) else {
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
        let mut queue = children;
        let mut visited = 1;
        while let Some(child) = queue.pop() {
            if visited >= MAX_GROUP {
                break;
            }
            visited += 1;
            let Ok(raw) = u32::try_from(child.as_raw()) else {
                continue;
            };
            let Some((cpu, memory, pgid, grandchildren)) = measure(raw, &mut buf) else {
                continue;
            };
            if pgid != u64::from(leader) {
                continue;
            }
            group.cpu_percent += cpu;
            group.memory_bytes += memory;
            group.processes += 1;
            queue.extend(grandchildren);
        }
        samples.insert(leader, group);
    }
    if keep {
        seen.extend(previous);
    }
    (samples, seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_the_share_of_a_core_since_the_previous_sample() {
        let me = std::process::id();
        let (first, seen) = sample(&[me, u32::MAX], HashMap::new(), false, (100.0, 4096), 64);
        assert_eq!(first.len(), 1, "a missing pid is skipped");
        assert_eq!(first[&me].leader_cpu_percent, 0.0, "no previous sample");
        assert!(first[&me].memory_bytes > 0);
        // Spin until this process has used at least 5 more ticks of CPU time.
        let ticks = sysconf(SysconfVar::CLK_TCK).unwrap().unwrap() as f64;
        let target = seen[&me].cpu_ticks + 5;
        let seen_again = |seen: &HashMap<u32, Known>| -> HashMap<u32, Known> {
            seen.iter()
                .map(|(pid, k)| {
                    let known = Known {
                        stat: k.stat.as_ref().map(|f| f.try_clone().unwrap()),
                        children: k.children.as_ref().map(|c| c.try_clone().unwrap()),
                        cpu_ticks: k.cpu_ticks,
                        at: k.at,
                        children_seen: k.children_seen.clone(),
                        children_age: k.children_age,
                    };
                    (*pid, known)
                })
                .collect()
        };
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
        let (second, _) = sample(&[me], seen_again(&seen), false, (ticks, 4096), 64);
        // The leader's own share: the test binary's group may hold other tests' children.
        let cpu = second[&me].leader_cpu_percent;
        // Other tests run in this process at the same time, so more than one core may be busy.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f32;
        assert!(cpu > 0.0 && cpu <= 150.0 * cores, "cpu {cpu}");
        // A process seen for the first time (its files newly opened) has no percentage yet.
        let (third, _) = sample(&[me], HashMap::new(), false, (ticks, 4096), 64);
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
        let (samples, _) = sample(&[pid], HashMap::new(), false, (100.0, 4096), 64);
        let group = samples[&pid];
        assert_eq!(
            group.processes, 3,
            "sh, sh and its sleep; not the setsid one"
        );
        assert!(group.memory_bytes > group.leader_memory_bytes);
        // Beyond the budget of open files, the same figures from files opened each time.
        let (unkept, known) = sample(&[pid], HashMap::new(), false, (100.0, 4096), 0);
        assert_eq!(unkept[&pid].processes, 3);
        assert!(
            known
                .values()
                .all(|k| k.stat.is_none() && k.children.is_none())
        );
        let (again, _) = sample(&[pid], known, false, (100.0, 4096), 0);
        assert_eq!(
            again[&pid].processes, 3,
            "a process not kept open is read again"
        );
        drop(reap);
        let _ = leader.wait();
    }
}
