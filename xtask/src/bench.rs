//! `cargo xtask bench [--quick] [--bin PATH] [--suite NAME]`: measures the real release binary against the "what
//! fast means" targets of the design notes.
//!
//! It builds `pm2rs` with `cargo build --release -p pm2rs` (or takes `--bin PATH`), then drives
//! the release `pm2rs` as a user would, through the CLI, against a daemon in a fresh temporary `PM2RS_HOME`. Figures come from
//! clocks around real events (process exit as reported by the kernel, `started_at_us` reported by
//! the daemon); waiting is always a poll with a deadline, never a sleep standing in for a measurement.
//!
//! # Layout
//! - `harness`: [`harness::Harness`], one temp home + the binary + a `run` helper, and the cleanup
//!   guard that stops the daemon and every app process on drop (also on error, panic and Ctrl-C).
//! - `report`: figures, targets, the printed table and `target/bench/results.json`.
//! - `logs`: the log-capture suite (a 1,000,000-line flood against a file and `| cat`).
//! - `cluster`: the cluster suite (Node hello-world req/s through pm2rs, one process and PM2; failed
//!   requests during reload under load).
//! - This file: the scenarios, grouped in [`Suite`]s.
//!
//! # Adding a scenario
//! Write `fn my_scenario(h: &mut Harness, o: &Options) -> Result<Vec<Measurement>>` and list it in a
//! suite. Scenarios of one suite share one daemon and run in order, each building on the state the
//! previous ones left (the core suite's later scenarios use the 100 instances started earlier); if
//! one fails the rest of its suite is skipped. A scenario that needs a clean daemon (a log flood,
//! cluster HTTP, a side-by-side run with PM2) goes in a suite of its own, which gets its own home.
//!
//! Exit status: 0 when every scenario ran, whether or not targets were met; 1 when a scenario (or
//! the build) could not run; 2 for bad arguments.

mod cluster;
mod harness;
mod logs;
mod report;

pub use logs::flood_writer;

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use pm2rs_proto::{ProcessInfo, Status};

use harness::{Harness, ProcId, Stdout, poll_until, rss_bytes, unix_micros};
use report::{Host, Measurement, Outcome, Report, ScenarioResult, Unit, mib, ms};

/// How long any "wait until the daemon shows X" may take before the scenario fails.
const WAIT: Duration = Duration::from_secs(30);

/// Name and size of the app the core suite starts.
const APP: &str = "sleeper";
const INSTANCES: usize = 100;

/// Targets, from the design notes.
const TARGET_LIST_MS: f64 = 2.0;
const TARGET_IDLE_RSS_MIB: f64 = 4.0;
const TARGET_LOADED_RSS_MIB: f64 = 8.0;
const TARGET_START_100_MS: f64 = 200.0;
const TARGET_CRASH_MS: f64 = 3.0;

/// Command-line options of `cargo xtask bench`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Options {
    /// Fewer repetitions of the timed scenarios, for a fast check.
    pub quick: bool,
    /// Bench this binary instead of building the release `pm2rs` (e.g. a release artifact or an
    /// older build to compare with).
    pub bin: Option<PathBuf>,
    /// Run only the suite of this name (`core`, `logs`, `cluster`).
    pub suite: Option<String>,
}

impl Options {
    /// Parses the arguments after `bench`.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--suite" => {
                    let name = args.next().ok_or("--suite needs a name")?;
                    if !SUITES.iter().any(|s| s.name == name) {
                        return Err(format!("unknown suite `{name}`"));
                    }
                    options.suite = Some(name.clone());
                }
                "--bin" => {
                    let path = args.next().ok_or("--bin needs a path")?;
                    options.bin = Some(PathBuf::from(path));
                }
                other => return Err(format!("unknown bench option `{other}`")),
            }
        }
        Ok(options)
    }

    /// Repetitions of the `list` round trip.
    fn list_runs(&self) -> usize {
        if self.quick { 10 } else { 50 }
    }

    /// Repetitions of kill -9 → replacement.
    fn crash_runs(&self) -> usize {
        if self.quick { 5 } else { 20 }
    }
}

/// One measured step: it acts on the suite's daemon and returns its figures.
struct Scenario {
    name: &'static str,
    run: fn(&mut Harness, &Options) -> Result<Vec<Measurement>>,
}

/// Scenarios sharing one daemon in one fresh home, run in order.
struct Suite {
    name: &'static str,
    scenarios: &'static [Scenario],
}

/// Every suite, in the order they run.
const SUITES: &[Suite] = &[
    Suite {
        name: "core",
        scenarios: &[
            Scenario {
                name: "idle daemon",
                run: idle_daemon,
            },
            Scenario {
                name: "start 100 instances",
                run: start_instances,
            },
            Scenario {
                name: "RSS with 100 instances",
                run: loaded_daemon,
            },
            Scenario {
                name: "list round trip",
                run: list_round_trip,
            },
            Scenario {
                name: "crash → new pid",
                run: crash_replacement,
            },
        ],
    },
    Suite {
        name: "logs",
        scenarios: &[Scenario {
            name: "log flood",
            run: logs::flood,
        }],
    },
    cluster::SUITE,
];

/// Runs the bench, prints the table, writes the JSON; returns the process exit status.
pub fn main(options: &Options) -> ExitCode {
    match run(options) {
        Ok(report) => {
            if report.all_ran() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: &Options) -> Result<Report> {
    harness::catch_interrupts()?;
    let root = workspace_root();
    let target = target_dir(&root);
    let bin = match &options.bin {
        Some(bin) => env::current_dir()?.join(bin),
        None => build(&root)?,
    };
    ensure!(bin.is_file(), "{} does not exist", bin.display());

    let pm2rs_version = version(&bin);
    let mut scenarios = Vec::new();
    for suite in SUITES {
        if options
            .suite
            .as_ref()
            .is_some_and(|only| only != suite.name)
        {
            continue;
        }
        scenarios.extend(run_suite(suite, &bin, options));
    }
    let report = Report {
        finished_at_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        quick: options.quick,
        binary: bin.clone(),
        pm2rs_version,
        host: Host::detect(),
        scenarios,
    };

    println!();
    println!(
        "pm2rs bench{} — {}",
        if options.quick { " (quick)" } else { "" },
        report.pm2rs_version.as_deref().unwrap_or("version unknown")
    );
    println!();
    print!("{}", report.render());
    let json = target.join("bench").join("results.json");
    report.write_json(&json)?;
    println!("\nresults written to {}", json.display());
    Ok(report)
}

/// Runs one suite on a fresh harness; a failure skips the rest of the suite. The harness (and so
/// the daemon and its apps) is gone when this returns.
fn run_suite(suite: &Suite, bin: &Path, options: &Options) -> Vec<ScenarioResult> {
    let mut results = Vec::new();
    let mut harness = match Harness::new(bin) {
        Ok(harness) => Some(harness),
        Err(e) => {
            results.push(ScenarioResult {
                scenario: format!("{}: setup", suite.name),
                outcome: Outcome::Failed(format!("{e:#}")),
                measurements: Vec::new(),
            });
            None
        }
    };
    for scenario in suite.scenarios {
        if harness::interrupted().is_err() {
            harness = None;
        }
        let Some(h) = harness.as_mut() else {
            results.push(ScenarioResult {
                scenario: scenario.name.to_string(),
                outcome: Outcome::Skipped(if harness::interrupted().is_err() {
                    "interrupted".to_string()
                } else {
                    format!("an earlier step of the `{}` suite failed", suite.name)
                }),
                measurements: Vec::new(),
            });
            continue;
        };
        eprintln!("bench: {} …", scenario.name);
        let result = match (scenario.run)(h, options) {
            Ok(measurements) => ScenarioResult {
                scenario: scenario.name.to_string(),
                outcome: Outcome::Ran,
                measurements,
            },
            Err(e) => {
                eprintln!("bench: {} failed: {e:#}", scenario.name);
                // Later scenarios depend on this one's state: stop the daemon now, skip them.
                harness = None;
                ScenarioResult {
                    scenario: scenario.name.to_string(),
                    outcome: Outcome::Failed(format!("{e:#}")),
                    measurements: Vec::new(),
                }
            }
        };
        results.push(result);
    }
    drop(harness);
    results
}

/// The workspace root (the parent of `xtask/`).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` if set, else `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// `cargo build --release -p pm2rs`, diagnostics shown as they happen; returns the path of the
/// built executable as cargo reports it (the directory depends on the configured target).
fn build(root: &Path) -> Result<PathBuf> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    eprintln!("bench: cargo build --release -p pm2rs");
    let output = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "-p",
            "pm2rs",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", cargo.to_string_lossy()))?;
    if !output.status.success() {
        bail!(
            "`cargo build --release -p pm2rs` failed ({})",
            output.status
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "pm2rs")
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .context("cargo built no `pm2rs` executable")
}

/// `pm2rs --version`, if it answers.
fn version(bin: &Path) -> Option<String> {
    let harness = Harness::new(bin).ok()?;
    let ran = harness
        .run_unchecked(&["--version"], Stdout::Capture, Duration::from_secs(5))
        .ok()?;
    let text = ran.stdout.trim();
    (ran.status.success() && !text.is_empty()).then(|| text.to_string())
}

/// The instances of [`APP`] in a listing.
fn app_instances(list: &[ProcessInfo]) -> impl Iterator<Item = &ProcessInfo> {
    list.iter().filter(|p| p.name == APP)
}

fn is_up(p: &ProcessInfo) -> bool {
    p.status == Status::Online && p.pid.is_some()
}

/// Fails on an errored instance instead of waiting out the deadline for it.
fn fail_if_errored(p: &ProcessInfo) -> Result<()> {
    if p.status == Status::Errored {
        bail!(
            "instance {} ({}) is errored: {}",
            p.id,
            p.name,
            p.reason
                .as_deref()
                .or(p.last_exit.as_deref())
                .unwrap_or("no reason given")
        );
    }
    Ok(())
}

/// Starts the daemon with `pm2rs ping` and reads its RSS right away.
fn idle_daemon(h: &mut Harness, _options: &Options) -> Result<Vec<Measurement>> {
    let ping = h.run(&["ping"], Stdout::Capture)?;
    let daemon = h.daemon()?;
    let rss = rss_bytes(daemon.pid)?;
    Ok(vec![
        Measurement::single(
            "first `ping` (starts the daemon)",
            Unit::Ms,
            ms(ping.elapsed),
            None,
        ),
        Measurement::single(
            "daemon RSS, idle",
            Unit::Mib,
            mib(rss),
            Some(TARGET_IDLE_RSS_MIB),
        )
        .with_note(format!(
            "VmRSS of pid {} read right after the first `ping`",
            daemon.pid
        )),
    ])
}

/// `pm2rs start ecosystem.toml` with 100 `sleep` instances, timed until `list --json` shows all of
/// them online.
fn start_instances(h: &mut Harness, _options: &Options) -> Result<Vec<Measurement>> {
    let ecosystem = h.scratch().join("ecosystem.toml");
    fs::write(
        &ecosystem,
        format!(
            "# Written by `cargo xtask bench`.\n\
             [[apps]]\n\
             name = \"{APP}\"\n\
             script = \"sleep\"\n\
             args = [\"100000\"]\n\
             interpreter = \"none\"\n\
             instances = {INSTANCES}\n"
        ),
    )
    .with_context(|| format!("writing {}", ecosystem.display()))?;
    let path = ecosystem.to_string_lossy().into_owned();

    let invoked = Instant::now();
    let invoked_us = unix_micros();
    let start = h.run(&["start", &path], Stdout::Capture)?;
    let mut polls = 0_u32;
    let list = poll_until(
        &format!("{INSTANCES} instances of `{APP}` to be online"),
        WAIT,
        Duration::ZERO,
        || {
            polls += 1;
            let list = h.list_json()?;
            for p in app_instances(&list) {
                fail_if_errored(p)?;
            }
            let up = app_instances(&list).filter(|p| is_up(p)).count();
            Ok((up >= INSTANCES).then_some(list))
        },
    )?;
    let all_online = invoked.elapsed();
    let last_start = app_instances(&list).filter_map(|p| p.started_at_us).max();

    let mut note = format!(
        "`start` itself returned after {:.1} ms; online observed by polling `list --json` (polls: {polls}, \
         each a CLI round trip, so the figure is an upper bound)",
        ms(start.elapsed)
    );
    if let Some(last) = last_start {
        let spawn_ms = (last as f64 - invoked_us as f64) / 1000.0;
        note.push_str(&format!(
            "; the last instance started {spawn_ms:.1} ms after `start` was invoked (started_at_us)"
        ));
    }
    Ok(vec![
        Measurement::single(
            format!("start {INSTANCES} instances → all online"),
            Unit::Ms,
            ms(all_online),
            Some(TARGET_START_100_MS),
        )
        .with_note(note),
    ])
}

/// Daemon RSS with the 100 instances running.
fn loaded_daemon(h: &mut Harness, _options: &Options) -> Result<Vec<Measurement>> {
    let before = h.daemon()?;
    let list = h.list_json()?;
    let up = app_instances(&list).filter(|p| is_up(p)).count();
    ensure!(
        up == INSTANCES,
        "expected {INSTANCES} online instances, found {up}"
    );
    let daemon = h.daemon()?;
    ensure!(
        daemon == before,
        "the daemon changed (pid {} → {}) while measuring",
        before.pid,
        daemon.pid
    );
    let rss = rss_bytes(daemon.pid)?;
    Ok(vec![Measurement::single(
        format!("daemon RSS, {INSTANCES} instances"),
        Unit::Mib,
        mib(rss),
        Some(TARGET_LOADED_RSS_MIB),
    )])
}

/// `pm2rs list` (the human table, stdout to /dev/null) with the 100 instances loaded.
fn list_round_trip(h: &mut Harness, options: &Options) -> Result<Vec<Measurement>> {
    let runs = options.list_runs();
    // One unmeasured run, so the first sample doesn't pay for cold page caches.
    h.run(&["list"], Stdout::Discard)?;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        harness::interrupted()?;
        samples.push(ms(h.run(&["list"], Stdout::Discard)?.elapsed));
    }
    Ok(vec![
        Measurement::repeated(
            format!("`list` round trip, {INSTANCES} instances"),
            Unit::Ms,
            samples,
            Some(TARGET_LIST_MS),
        )
        .with_note(
            "spawn of the CLI until its exit, human table to /dev/null, one warm-up run not counted",
        ),
    ])
}

/// kill -9 of an online instance → its replacement online. The latency is the replacement's
/// `started_at_us` minus the wall clock taken just before the `kill` syscall; how long the CLI took
/// to *see* the replacement is reported too.
fn crash_replacement(h: &mut Harness, options: &Options) -> Result<Vec<Measurement>> {
    let runs = options.crash_runs();
    let mut latencies = Vec::with_capacity(runs);
    let mut observed = Vec::with_capacity(runs);
    let mut restart_counter_mismatches = 0;
    for round in 0..runs {
        let list = h.list_json()?;
        let up: Vec<&ProcessInfo> = app_instances(&list).filter(|p| is_up(p)).collect();
        ensure!(!up.is_empty(), "no online instance of `{APP}` to kill");
        // A different instance each round, so no instance's restart policy sees a crash loop.
        let victim = up[round % up.len()];
        let (id, old_pid, old_restarts) =
            (victim.id, victim.pid.unwrap_or_default(), victim.restarts);
        let process = ProcId::of(old_pid)
            .with_context(|| format!("pid {old_pid} of instance {id} is not running"))?;
        h.track(process);

        let killed = Instant::now();
        let killed_us = unix_micros();
        signal::kill(Pid::from_raw(i32::try_from(old_pid)?), Signal::SIGKILL)
            .with_context(|| format!("kill -9 {old_pid}"))?;

        let replacement = poll_until(
            &format!("instance {id} to be back online after kill -9 of pid {old_pid}"),
            WAIT,
            Duration::ZERO,
            || {
                let list = h.list_json()?;
                let p = list
                    .into_iter()
                    .find(|p| p.id == id)
                    .with_context(|| format!("instance {id} vanished from the list"))?;
                fail_if_errored(&p)?;
                Ok((is_up(&p) && p.pid != Some(old_pid)).then_some(p))
            },
        )?;
        observed.push(ms(killed.elapsed()));
        let started = replacement
            .started_at_us
            .with_context(|| format!("instance {id} is online without started_at_us"))?;
        latencies.push((started as f64 - killed_us as f64) / 1000.0);
        if replacement.restarts != old_restarts + 1 {
            restart_counter_mismatches += 1;
        }
    }

    let mut crash = Measurement::repeated(
        "kill -9 → new pid started",
        Unit::Ms,
        latencies,
        Some(TARGET_CRASH_MS),
    )
    .with_note(
        "replacement's started_at_us minus the wall clock just before kill(2); each round kills a \
         different instance",
    );
    if restart_counter_mismatches > 0 {
        crash = crash.with_note(format!(
            "replacement's started_at_us minus the wall clock just before kill(2); in \
             {restart_counter_mismatches} of {runs} rounds `restarts` did not grow by exactly 1"
        ));
    }
    Ok(vec![
        crash,
        Measurement::repeated(
            "kill -9 → replacement seen by `list --json`",
            Unit::Ms,
            observed,
            None,
        )
        .with_note("includes the round trips of the polling CLI, so it is an upper bound"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(Options::parse(&[]), Ok(Options::default()));
        let quick = Options::parse(&args(&["--quick", "--bin", "x/pm2rs"])).unwrap();
        assert!(quick.quick);
        assert_eq!(quick.bin, Some(PathBuf::from("x/pm2rs")));
        assert_eq!(quick.list_runs(), 10);
        assert_eq!(Options::default().crash_runs(), 20);
        assert!(Options::parse(&args(&["--fast"])).is_err());
        assert!(Options::parse(&args(&["--bin"])).is_err());
        let one = Options::parse(&args(&["--suite", "cluster"])).unwrap();
        assert_eq!(one.suite.as_deref(), Some("cluster"));
        assert!(Options::parse(&args(&["--suite", "nope"])).is_err());
    }
}
