//! The `limits` suite: how fast a manager reacts to an app over its `max_memory_restart`, and what
//! the limits cost an idle daemon; written once for pm2rs and PM2 alike.
//!
//! **Memory hog.** The app is this very executable (`xtask memory-hog <limit-bytes> <report>`), run
//! directly by either manager (`interpreter "none"`, fork mode) with `max_memory_restart = "100M"`
//! and default settings otherwise (pm2rs samples apps with a limit every 250 ms; PM2 checks every
//! 30 s, its `worker_interval`, left untuned). The hog grows its resident memory by 20 MiB/s
//! (touching every page), reads its own RSS (`/proc/self/statm`, the figure both managers read)
//! every 2 ms, stamps the instant it first exceeds the limit, and rewrites its report (pid,
//! crossing instant, current RSS) every 10 ms; it grows until it is killed. The bench polls `/proc`
//! every millisecond for the hog's pid to end (gone or a zombie): "reaction" is from the hog's
//! crossing instant to that moment (both wall clocks of this machine), and "RSS at the kill" is the
//! last RSS the hog reported, divided by the limit. The manager then replaces the hog (it is an
//! ordinary restart for both), and the next sample is taken on the replacement. A reaction that
//! has not come 90 s after the crossing is a failed sample: the bench kills that hog itself and
//! goes on with the next one.
//!
//! **Idle CPU.** 100 `sleep` instances with `max_memory_restart = "1G"` each (never reached), the
//! daemon's CPU over the same idle window as the core suite's.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::core_suite::{idle_window, wait_online, wait_running};
use super::harness::{self, Children, ProcId, Stdout, poll_until, unix_micros};
use super::manager::{App, Cli, Kind};
use super::report::{Measurement, Unit};
use super::{Harness, Options, Scenario, Suite, WAIT};

pub const SUITE: Suite = Suite {
    name: "limits",
    compare: true,
    scenarios: &[
        Scenario {
            name: "memory hog over its limit",
            run: memory_reaction,
        },
        Scenario {
            name: "idle CPU, 100 instances with limits",
            run: idle_with_limits,
        },
    ],
};

const HOG: &str = "hog";
/// The hog's limit, as both ecosystems spell it, and in bytes (both managers read `M` as MiB).
const HOG_LIMIT: &str = "100M";
const HOG_LIMIT_BYTES: u64 = 100 << 20;
/// How fast the hog grows.
const GROWTH_BYTES_PER_SEC: f64 = 20.0 * 1024.0 * 1024.0;
/// The hog's pace: one growth step and one look at its own RSS per tick.
const HOG_TICK: Duration = Duration::from_millis(2);
/// How often the hog rewrites its report.
const HOG_REPORT_EVERY: Duration = Duration::from_millis(10);
/// Safety nets, so a hog nobody kills cannot take the machine: it stops growing at this many times
/// its limit (reached only past [`REACTION_WAIT`]) and exits after [`HOG_LIFETIME`], or as soon as
/// its parent (the manager's daemon) is gone.
const HOG_CAP_FACTOR: u64 = 20;
const HOG_LIFETIME: Duration = Duration::from_secs(600);
/// How long after the crossing a reaction may take before the sample counts as failed.
const REACTION_WAIT: Duration = Duration::from_secs(90);

/// Targets of the issue: median reaction ≤ 1 s; RSS at the kill ≤ 1.2 × the limit.
const TARGET_REACTION_MS: f64 = 1000.0;
const TARGET_RSS_RATIO: f64 = 1.2;
/// The idle cost: at most 0.1 % of one core with 100 idle instances.
const TARGET_IDLE_CPU_PERCENT: f64 = 0.1;

const IDLER: &str = "limited";
const IDLE_INSTANCES: usize = 100;
const IDLE_LIMIT: &str = "1G";

/// `xtask memory-hog <limit-bytes> <report-file>`: the benchmark's app (see the module doc).
pub fn memory_hog(args: &[String]) -> Result<()> {
    let [limit, report] = args else {
        bail!("usage: xtask memory-hog <limit-bytes> <report-file>");
    };
    let limit: u64 = limit.parse().context("limit in bytes")?;
    let report = PathBuf::from(report);
    let pid = std::process::id();
    let scratch = report.with_extension(format!("{pid}.tmp"));
    let parent = nix::unistd::getppid();
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .context("sysconf(_SC_PAGESIZE)")?
        .map_or(4096, |p| usize::try_from(p).unwrap_or(4096))
        .max(1);
    let cap = limit.saturating_mul(HOG_CAP_FACTOR);

    let started = Instant::now();
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut grown: u64 = 0;
    let mut crossed_us: u64 = 0;
    let mut reported: Option<Instant> = None;
    loop {
        let due = (started.elapsed().as_secs_f64() * GROWTH_BYTES_PER_SEC) as u64;
        let due = due.min(cap);
        if due > grown {
            let size = usize::try_from(due - grown)?;
            let mut chunk = vec![0u8; size];
            // Fresh zeroed memory is not resident until written: touch every page of it.
            for offset in (0..size).step_by(page) {
                // SAFETY: `offset < size`, so the pointer is inside the chunk.
                unsafe { std::ptr::write_volatile(chunk.as_mut_ptr().add(offset), 1) };
            }
            chunks.push(chunk);
            grown = due;
        }
        let rss = own_rss(page)?;
        let now_us = unix_micros();
        let just_crossed = crossed_us == 0 && rss > limit;
        if just_crossed {
            crossed_us = now_us;
        }
        if just_crossed || reported.is_none_or(|at| at.elapsed() >= HOG_REPORT_EVERY) {
            fs::write(&scratch, format!("{pid} {crossed_us} {rss} {now_us}\n"))
                .with_context(|| format!("writing {}", scratch.display()))?;
            fs::rename(&scratch, &report).with_context(|| {
                format!("renaming {} to {}", scratch.display(), report.display())
            })?;
            reported = Some(Instant::now());
        }
        if nix::unistd::getppid() != parent {
            bail!("the manager that started the hog is gone; exiting");
        }
        if started.elapsed() >= HOG_LIFETIME {
            bail!("nobody killed the hog in {HOG_LIFETIME:?}; exiting");
        }
        thread::sleep(HOG_TICK);
    }
}

/// This process's resident set in bytes: `/proc/self/statm`'s second field, in pages.
fn own_rss(page: usize) -> Result<u64> {
    let statm = fs::read_to_string("/proc/self/statm").context("reading /proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .context("no resident field in /proc/self/statm")?
        .parse()
        .context("resident field of /proc/self/statm")?;
    Ok(pages * page as u64)
}

/// One report of the hog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HogReport {
    pid: u32,
    /// When its RSS first exceeded the limit (Unix µs); `None` until then.
    crossed_us: Option<u64>,
    rss: u64,
    /// When `rss` was read (Unix µs).
    at_us: u64,
}

fn parse_report(text: &str) -> Option<HogReport> {
    let mut words = text.split_whitespace().map(str::parse::<u64>);
    let pid = u32::try_from(words.next()?.ok()?).ok()?;
    let crossed_us = words.next()?.ok()?;
    let rss = words.next()?.ok()?;
    let at_us = words.next()?.ok()?;
    Some(HogReport {
        pid,
        crossed_us: (crossed_us != 0).then_some(crossed_us),
        rss,
        at_us,
    })
}

/// The hog's report, if there is one (a missing or partial file reads as none).
fn read_report(path: &Path) -> Option<HogReport> {
    parse_report(&fs::read_to_string(path).ok()?)
}

/// The command name (`/proc/<pid>/comm`) the hog runs under: this executable's file name.
fn hog_comm(exe: &Path) -> Result<String> {
    Ok(exe
        .file_name()
        .context("the xtask executable has no file name")?
        .to_string_lossy()
        .into_owned())
}

/// What one sample gave.
enum Sample {
    Reacted {
        reaction_ms: f64,
        rss_ratio: f64,
    },
    /// No reaction within [`REACTION_WAIT`]; the bench killed the hog.
    TimedOut,
    /// The hog was gone before the bench started watching it (the figure would be meaningless).
    Missed,
}

/// Scenario 1: `samples` reactions of the manager to the hog (5, 2 with `--quick`).
fn memory_reaction(h: &mut Harness, options: &Options) -> Result<Vec<Measurement>> {
    let samples = options.reps(5, 2);
    h.cli(Cli::Ping, Stdout::Discard)?;
    let daemon = h.daemon()?;
    let exe = std::env::current_exe().context("finding the xtask executable")?;
    let mut children = Children::new(daemon, &hog_comm(&exe)?);
    let report = h.scratch().join("hog.report");
    let exe_arg = exe.to_string_lossy().into_owned();
    let (limit_arg, report_arg) = (
        HOG_LIMIT_BYTES.to_string(),
        report.to_string_lossy().into_owned(),
    );
    let args = ["memory-hog", limit_arg.as_str(), report_arg.as_str()];
    let ecosystem = h.write_ecosystem(
        HOG,
        &[App {
            name: HOG,
            script: &exe_arg,
            args: &args,
            instances: 1,
            autorestart: true,
            rotate_logs: true,
            max_memory_restart: Some(HOG_LIMIT),
        }],
    )?;
    h.cli(Cli::Start(&ecosystem), Stdout::Discard)?;

    let (mut reactions, mut ratios, mut replaced) = (Vec::new(), Vec::new(), Vec::new());
    let (mut timed_out, mut missed) = (0usize, 0usize);
    let mut done: HashSet<u32> = HashSet::new();
    let mut reasons_missing = 0usize;
    for _ in 0..samples {
        let hog = poll_until(
            "a running hog under the daemon",
            WAIT,
            Duration::from_millis(1),
            || Ok(h.scan_except(&mut children, &done)?.first().copied()),
        )?;
        done.insert(hog.pid);
        match sample(hog, &report)? {
            (
                Sample::Reacted {
                    reaction_ms,
                    rss_ratio,
                },
                crossed_us,
            ) => {
                reactions.push(reaction_ms);
                ratios.push(rss_ratio);
                // The replacement, seen in /proc: the next sample's hog.
                let next = poll_until(
                    &format!("a replacement for the hog (pid {})", hog.pid),
                    WAIT,
                    Duration::from_millis(1),
                    || Ok(h.scan_except(&mut children, &done)?.first().copied()),
                )?;
                replaced.push(unix_micros().saturating_sub(crossed_us) as f64 / 1000.0);
                if h.kind() == Kind::Pm2rs && !restarted_for_memory(h, next.pid)? {
                    reasons_missing += 1;
                }
            }
            (Sample::TimedOut, _) => timed_out += 1,
            (Sample::Missed, _) => missed += 1,
        }
    }
    h.cli(Cli::Delete(HOG), Stdout::Discard)?;
    poll_until(
        "the hog to be gone after `delete`",
        WAIT,
        Duration::from_millis(5),
        || Ok(h.scan(&mut children)?.is_empty().then_some(())),
    )?;

    let how = match h.kind() {
        Kind::Pm2rs => "pm2rs samples apps with a limit every 250 ms",
        Kind::Pm2 => "PM2 checks every 30 s (its default worker_interval, not tuned)",
    };
    let mut figures = Vec::new();
    if !reactions.is_empty() {
        figures.push(
            Measurement::repeated(
                "memory limit crossed → hog killed",
                Unit::Ms,
                reactions,
                Some(TARGET_REACTION_MS),
            )
            .with_note(format!(
                "max_memory_restart = {HOG_LIMIT:?}, the hog (`xtask memory-hog`, run directly) \
                 growing 20 MiB/s; from the instant the hog saw its own RSS over the limit \
                 (checked every 2 ms) until its pid is gone or a zombie in /proc (polled every \
                 1 ms by the bench); {how}; {samples} samples per round"
            )),
        );
        figures.push(
            Measurement::repeated(
                "hog RSS at the kill ÷ limit",
                Unit::Ratio,
                ratios,
                Some(TARGET_RSS_RATIO),
            )
            .with_note(
                "the last RSS the hog reported (it rewrites it every 10 ms) before it died, \
                 divided by the limit (100 MiB)",
            ),
        );
    }
    if !replaced.is_empty() {
        let mut note = String::from(
            "from the crossing instant until the manager's replacement hog is seen running \
             under the daemon in /proc",
        );
        if reasons_missing > 0 {
            note.push_str(&format!(
                "; {reasons_missing} replacement(s) did not show a memory restart reason in \
                 `pm2rs list --json`"
            ));
        }
        figures.push(
            Measurement::repeated(
                "memory limit crossed → replacement running",
                Unit::Ms,
                replaced,
                None,
            )
            .with_note(note),
        );
    }
    figures.push(
        Measurement::single(
            "memory-limit samples failed",
            Unit::Samples,
            (timed_out + missed) as f64,
            Some(0.0),
        )
        .with_note(format!(
            "{timed_out} with no reaction within {} s of the crossing (the bench then killed the \
             hog), {missed} where the hog was gone before the bench watched it, of {samples} per \
             round",
            REACTION_WAIT.as_secs()
        )),
    );
    Ok(figures)
}

/// Waits for `hog` to cross the limit, then for it to die; returns the sample and the crossing
/// instant (Unix µs).
fn sample(hog: ProcId, report: &Path) -> Result<(Sample, u64)> {
    let crossing = Duration::from_secs_f64(HOG_LIMIT_BYTES as f64 / GROWTH_BYTES_PER_SEC);
    let crossed = poll_until(
        &format!("the hog (pid {}) to report crossing its limit", hog.pid),
        crossing + WAIT,
        Duration::from_millis(1),
        || {
            let r = read_report(report).filter(|r| r.pid == hog.pid);
            if r.is_none() && !hog.is_running() {
                bail!(
                    "the hog (pid {}) ended before it reported crossing its limit",
                    hog.pid
                );
            }
            Ok(r.and_then(|r| r.crossed_us))
        },
    )?;
    if !hog.is_running() {
        return Ok((Sample::Missed, crossed));
    }
    let deadline = Instant::now() + REACTION_WAIT;
    // The hog's last report, kept as it comes: its replacement writes the same file, maybe
    // before this loop sees the death.
    let mut last = None;
    let died_us = loop {
        harness::interrupted()?;
        if let Some(r) = read_report(report).filter(|r| r.pid == hog.pid) {
            last = Some(r);
        }
        if !hog.is_running() {
            break unix_micros();
        }
        if Instant::now() >= deadline {
            eprintln!(
                "bench: no reaction to the hog (pid {}) within {REACTION_WAIT:?}; killing it",
                hog.pid
            );
            hog.kill_if_alive();
            poll_until(
                &format!("the hog (pid {}) killed by the bench to end", hog.pid),
                WAIT,
                Duration::from_millis(5),
                || Ok((!hog.is_running()).then_some(())),
            )?;
            return Ok((Sample::TimedOut, crossed));
        }
        thread::sleep(Duration::from_millis(1));
    };
    let last =
        last.with_context(|| format!("the hog (pid {}) never reported while it ran", hog.pid))?;
    ensure!(
        last.at_us <= died_us,
        "the hog's last report is later than its death"
    );
    Ok((
        Sample::Reacted {
            reaction_ms: died_us.saturating_sub(crossed) as f64 / 1000.0,
            rss_ratio: last.rss as f64 / HOG_LIMIT_BYTES as f64,
        },
        crossed,
    ))
}

/// Whether pm2rs's listing shows the instance running `pid` as restarted for its memory.
fn restarted_for_memory(h: &mut Harness, pid: u32) -> Result<bool> {
    let list = poll_until(
        &format!("pm2rs to list the replacement hog (pid {pid})"),
        WAIT,
        Duration::from_millis(5),
        || {
            let list = h.list_json()?;
            Ok(list.iter().any(|p| p.pid == Some(pid)).then_some(list))
        },
    )?;
    Ok(list.iter().any(|p| {
        p.pid == Some(pid)
            && p.restart_reason
                .as_deref()
                .is_some_and(|why| why.contains("memory"))
    }))
}

/// Scenario 2: daemon CPU over the idle window with 100 `sleep` instances, each with a limit.
fn idle_with_limits(h: &mut Harness, options: &Options) -> Result<Vec<Measurement>> {
    let daemon = h.daemon()?;
    let mut children = Children::new(daemon, "sleep");
    let ecosystem = h.write_ecosystem(
        IDLER,
        &[App {
            name: IDLER,
            script: "sleep",
            args: &["100000"],
            instances: IDLE_INSTANCES,
            autorestart: true,
            rotate_logs: true,
            max_memory_restart: Some(IDLE_LIMIT),
        }],
    )?;
    h.cli(Cli::Start(&ecosystem), Stdout::Capture)?;
    wait_running(h, &mut children, IDLE_INSTANCES)?;
    wait_online(h, IDLER, IDLE_INSTANCES)?;
    let mut figures = idle_window(
        h,
        &mut children,
        IDLE_INSTANCES,
        &format!("{IDLE_INSTANCES} idle instances, max_memory_restart = {IDLE_LIMIT:?} on each"),
        options,
    )?;
    if let Some(cpu) = figures.first_mut() {
        cpu.target = Some(TARGET_IDLE_CPU_PERCENT);
    }
    h.cli(Cli::Delete(IDLER), Stdout::Discard)?;
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hog_reports_are_parsed() {
        assert_eq!(
            parse_report("42 0 1048576 1700000000000000\n"),
            Some(HogReport {
                pid: 42,
                crossed_us: None,
                rss: 1 << 20,
                at_us: 1_700_000_000_000_000,
            })
        );
        assert_eq!(
            parse_report("42 17 5 18").and_then(|r| r.crossed_us),
            Some(17)
        );
        assert_eq!(parse_report(""), None);
        assert_eq!(parse_report("42 17 5"), None);
        assert_eq!(parse_report("x 17 5 18"), None);
    }

    #[test]
    fn own_rss_is_read() {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .unwrap()
            .unwrap() as usize;
        assert!(own_rss(page).unwrap() > 0);
    }
}
