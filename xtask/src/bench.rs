//! `cargo xtask bench [--compare pm2] [--quick] [--rounds N] [--suite NAME] [--bin PATH]`: measures the real
//! release binary against the "what fast means" targets of the design notes and, with `--compare
//! pm2`, side by side with PM2 in the same run.
//!
//! It builds `pm2rs` with `cargo build --release -p pm2rs` (or takes `--bin PATH`) and drives it as a
//! user would, through the CLI, against a daemon in a fresh temporary home. With `--compare pm2` it
//! also installs PM2 with npm into `target/bench/pm2/` (reused by later runs; nothing global, nothing
//! in the sources) and runs every comparable suite against both, each with its own temporary
//! `PM2_HOME`/`PM2RS_HOME`. Each suite runs `rounds` times per manager (3 by default, 1 with
//! `--quick`), alternating which manager goes first, so both see the same noise; figures are pooled
//! over the rounds (median, min–max). Figures come from clocks around real events (process exit as
//! reported by the kernel, a new process seen in `/proc`); waiting is always a poll with a deadline,
//! never a sleep standing in for a measurement. Output: a Markdown table on stdout and in
//! `target/bench/results.md`, everything (samples included) in `target/bench/results.json`.
//!
//! # Layout
//! - `harness`: [`harness::Harness`], one manager + one temp home + a `run` helper, the `/proc`
//!   scanner, and the cleanup guard that stops the daemon and every app process on drop (also on
//!   error, panic and Ctrl-C).
//! - `manager`: pm2rs and PM2 behind one vocabulary (CLI actions, listing, ecosystem files), and
//!   the npm install of PM2.
//! - `report`: figures, their pooling over rounds and managers, the Markdown table, the JSON.
//! - `core_suite`: the core suite (daemon footprint, start, list, crash, restart, idle CPU).
//! - `logs`: the log-capture suite (a 1,000,000-line flood captured by the manager, against a file
//!   and `| cat` in the same run).
//! - `cluster`: the cluster suite (req/s of a Node hello-world through a 2-instance cluster, failed
//!   requests while `reload` runs under load; against PM2's cluster mode with `--compare pm2`).
//! - `takeover`: pm2rs only: kill -9 of the daemon, and `update`, with 100 instances running →
//!   the next daemon serving with all of them taken over; the fd keeper's RSS and fds.
//! - `limits`: `max_memory_restart`: the reaction to a memory hog (`xtask memory-hog`) growing past
//!   its limit, the hog's RSS at the kill ÷ the limit, and idle CPU with 100 limited instances.
//! - This file: options, the list of suites, the rounds.
//!
//! # Adding a suite
//! Put it in its own file under `bench/` and list it in [`SUITES`] (one `mod` line, one entry). A
//! scenario is `fn(&mut Harness, &Options) -> Result<Vec<Measurement>>`; the scenarios of one suite
//! share one daemon and run in order, each building on the state the previous ones left; if one
//! fails the rest of its suite is skipped for that manager and round. Give every figure a name that
//! does not depend on the manager: figures of the same name are put side by side.
//!
//! # Supporting `--compare pm2`
//! Set `compare: true` on the suite, and write its scenarios with the manager-neutral parts of the
//! harness only: [`harness::Harness::cli`] with a [`manager::Cli`] action (not raw `run` arguments),
//! [`harness::Harness::write_ecosystem`] with [`manager::App`]s, [`harness::Harness::instances`]
//! (not `list_json`), [`harness::Harness::daemon`], and [`harness::Children`] to see app processes
//! in `/proc`. When the managers must differ (PM2's cluster mode, where PM2 writes its logs), match
//! on [`harness::Harness::kind`] and read [`harness::Harness::home`]; keep what is *measured* the
//! same for both. A `compare: false` suite runs against pm2rs only and may use everything.
//!
//! Exit status: 0 when every scenario ran, whether or not targets were met; 1 when a scenario (or
//! the build, or the PM2 install) could not run; 2 for bad arguments.

mod cluster;
mod core_suite;
mod harness;
mod limits;
mod logs;
mod manager;
mod report;
mod takeover;

pub use limits::memory_hog;
pub use logs::flood_writer;

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};

use harness::Harness;
use manager::{Kind, Manager};
use report::{Measurement, Problem, Report};

/// Command-line options of `cargo xtask bench`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Options {
    /// Fewer repetitions and shorter windows, for a fast check.
    pub quick: bool,
    /// Bench this binary instead of building `target/release/pm2rs` (e.g. a release artifact or an
    /// older build to compare with).
    pub bin: Option<PathBuf>,
    /// `--compare pm2`: also run every comparable suite against PM2.
    pub compare_pm2: bool,
    /// Runs of each suite per manager; default 3, or 1 with `--quick`.
    pub rounds: Option<usize>,
    /// Run only the suite of this name (`core`, `logs`, `cluster`, `takeover`, `limits`).
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
                "--compare" => match args.next().map(String::as_str) {
                    Some("pm2") => options.compare_pm2 = true,
                    Some(other) => {
                        return Err(format!("--compare: unknown manager `{other}` (known: pm2)"));
                    }
                    None => return Err("--compare needs a manager: pm2".to_string()),
                },
                "--rounds" => {
                    let n = args.next().ok_or("--rounds needs a number")?;
                    match n.parse::<usize>() {
                        Ok(n) if n > 0 => options.rounds = Some(n),
                        _ => return Err(format!("--rounds: `{n}` is not a positive number")),
                    }
                }
                other => return Err(format!("unknown bench option `{other}`")),
            }
        }
        Ok(options)
    }

    /// Runs of each suite per manager.
    pub fn rounds(&self) -> usize {
        self.rounds.unwrap_or(if self.quick { 1 } else { 3 })
    }

    /// `n` normally, `quick` with `--quick`: repetitions within one scenario run.
    pub fn reps(&self, n: usize, quick: usize) -> usize {
        if self.quick { quick } else { n }
    }

    /// The command line that reproduces this run.
    fn command(&self) -> String {
        let mut command = String::from("cargo xtask bench");
        if self.compare_pm2 {
            command.push_str(" --compare pm2");
        }
        if self.quick {
            command.push_str(" --quick");
        }
        if let Some(n) = self.rounds {
            command.push_str(&format!(" --rounds {n}"));
        }
        if let Some(suite) = &self.suite {
            command.push_str(&format!(" --suite {suite}"));
        }
        if let Some(bin) = &self.bin {
            command.push_str(&format!(" --bin {}", bin.display()));
        }
        command
    }
}

/// One measured step: it acts on the suite's daemon and returns its figures.
pub struct Scenario {
    pub name: &'static str,
    pub run: fn(&mut Harness, &Options) -> Result<Vec<Measurement>>,
}

/// Scenarios sharing one daemon in one fresh home, run in order.
pub struct Suite {
    pub name: &'static str,
    /// Runs against PM2 too with `--compare pm2` (see "Supporting `--compare pm2`" above).
    pub compare: bool,
    pub scenarios: &'static [Scenario],
}

/// Every suite, in the order they run.
const SUITES: &[Suite] = &[
    core_suite::SUITE,
    Suite {
        name: "logs",
        compare: true,
        scenarios: &[Scenario {
            name: "log flood",
            run: logs::flood,
        }],
    },
    cluster::SUITE,
    takeover::SUITE,
    limits::SUITE,
];

/// How long any "wait until the daemon shows X" may take before the scenario fails.
const WAIT: Duration = Duration::from_secs(30);

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

    let chosen: Vec<&Suite> = SUITES
        .iter()
        .filter(|s| options.suite.as_ref().is_none_or(|only| only == s.name))
        .collect();
    let mut managers = vec![Manager::pm2rs(&bin)];
    if options.compare_pm2 {
        if chosen.iter().any(|s| s.compare) {
            managers.push(Manager::pm2(&target.join("bench").join("pm2"))?);
        } else {
            eprintln!(
                "bench: --compare pm2: no chosen suite runs against PM2; measuring pm2rs only"
            );
        }
    }
    let rounds = options.rounds();
    let mut report = Report::new(options.command(), options.quick, rounds, &managers);
    for suite in &chosen {
        let mut taking_part: Vec<&Manager> = managers
            .iter()
            .filter(|m| suite.compare || m.kind == Kind::Pm2rs)
            .collect();
        for round in 0..rounds {
            for manager in &taking_part {
                run_suite(suite, manager, options, round, &mut report);
            }
            // The other manager goes first next round.
            taking_part.rotate_left(1);
        }
    }
    report.finish(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );

    println!();
    print!("{}", report.render());
    let dir = target.join("bench");
    let (json, markdown) = (dir.join("results.json"), dir.join("results.md"));
    report.write_json(&json)?;
    report.write_markdown(&markdown)?;
    println!(
        "\nresults written to {} and {}",
        markdown.display(),
        json.display()
    );
    Ok(report)
}

/// Runs one suite for one manager on a fresh harness; a failure skips the rest of the suite. The
/// harness (and so the daemon and its apps) is gone when this returns.
fn run_suite(
    suite: &Suite,
    manager: &Manager,
    options: &Options,
    round: usize,
    report: &mut Report,
) {
    let problem = |scenario: &str, outcome: &'static str, reason: String| Problem {
        suite: suite.name.to_string(),
        scenario: scenario.to_string(),
        manager: manager.kind,
        round,
        outcome,
        reason,
    };
    let mut harness = match Harness::new(manager) {
        Ok(harness) => Some(harness),
        Err(e) => {
            report.problem(problem("setup", "failed", format!("{e:#}")));
            None
        }
    };
    for scenario in suite.scenarios {
        if harness::interrupted().is_err() {
            harness = None;
        }
        let Some(h) = harness.as_mut() else {
            let why = if harness::interrupted().is_err() {
                "interrupted".to_string()
            } else {
                format!("an earlier step of the `{}` suite failed", suite.name)
            };
            report.problem(problem(scenario.name, "skipped", why));
            continue;
        };
        eprintln!(
            "bench: {} / {} ({}, round {}) …",
            suite.name,
            scenario.name,
            manager.kind.label(),
            round + 1
        );
        match (scenario.run)(h, options) {
            Ok(measurements) => report.add(suite.name, scenario.name, manager.kind, measurements),
            Err(e) => {
                eprintln!("bench: {} failed: {e:#}", scenario.name);
                // Later scenarios depend on this one's state: stop the daemon now, skip them.
                harness = None;
                report.problem(problem(scenario.name, "failed", format!("{e:#}")));
            }
        }
    }
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
        assert_eq!((quick.rounds(), quick.reps(50, 10)), (1, 10));
        assert_eq!(quick.command(), "cargo xtask bench --quick --bin x/pm2rs");
        let compare = Options::parse(&args(&["--compare", "pm2", "--rounds", "5"])).unwrap();
        assert!(compare.compare_pm2 && !compare.quick);
        assert_eq!((compare.rounds(), compare.reps(50, 10)), (5, 50));
        assert_eq!(
            compare.command(),
            "cargo xtask bench --compare pm2 --rounds 5"
        );
        assert_eq!(Options::default().rounds(), 3);
        for bad in [
            &["--fast"][..],
            &["--bin"],
            &["--compare"],
            &["--compare", "oxmgr"],
            &["--rounds", "0"],
            &["--rounds", "x"],
        ] {
            assert!(Options::parse(&args(bad)).is_err(), "{bad:?}");
        }
    }
}
