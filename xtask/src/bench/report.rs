//! Bench results: the figures scenarios return, their aggregation over rounds and managers, the
//! Markdown table (printed and written to `target/bench/results.md`) and `results.json`.
//!
//! A scenario returns [`Measurement`]s (a single value or repeated samples, an optional upper-bound
//! target, a note). [`Report::add`] pools them by (suite, scenario, figure name, manager) across
//! rounds into [`Row`]s, so a figure measured once per round becomes the median of the rounds.
//! Targets are pm2rs's own (from the design notes): only the pm2rs column gets a verdict. Missing a
//! target is reported, never an error; only a scenario that could not run is a [`Problem`].

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use super::manager::{Kind, Manager};

/// Unit of a figure and of its target. Every unit but [`Unit::PerSec`] reads "lower is better";
/// throughput has no target and is compared through the pm2rs/PM2 ratio (higher is better there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Milliseconds.
    Ms,
    /// Mebibytes (1024 × 1024 bytes); RSS targets are read as MiB.
    Mib,
    /// Percent of one CPU core.
    Percent,
    /// A count of lines.
    Lines,
    /// One time divided by another (`×`).
    Ratio,
    /// Requests per second (higher is better).
    PerSec,
    /// A count of requests (failed ones).
    Requests,
    /// A count of open file descriptors.
    Fds,
    /// A count of samples (failed ones).
    Samples,
}

impl Unit {
    fn suffix(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::Mib => "MiB",
            Unit::Percent => "% CPU",
            Unit::Lines => "lines",
            Unit::Ratio => "×",
            Unit::PerSec => "req/s",
            Unit::Requests => "requests",
            Unit::Fds => "fds",
            Unit::Samples => "samples",
        }
    }
}

/// Summary of repeated samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Every sample, in the order taken.
    pub samples: Vec<f64>,
}

impl Stats {
    /// `None` for no samples.
    pub fn of(samples: Vec<f64>) -> Option<Stats> {
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Some(Stats {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            samples,
        })
    }
}

/// One figure of one scenario run, as a scenario returns it.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// What was measured, as shown in the table; the same for every manager.
    pub name: String,
    pub unit: Unit,
    pub samples: Vec<f64>,
    /// pm2rs's median should be at most this; `None` for informational figures.
    pub target: Option<f64>,
    /// How it was measured (manager-specific details welcome), printed under the table.
    pub note: Option<String>,
}

impl Measurement {
    /// A single value.
    pub fn single(name: impl Into<String>, unit: Unit, value: f64, target: Option<f64>) -> Self {
        Measurement::repeated(name, unit, vec![value], target)
    }

    /// Repeated samples, summarised by their median.
    pub fn repeated(
        name: impl Into<String>,
        unit: Unit,
        samples: Vec<f64>,
        target: Option<f64>,
    ) -> Self {
        Measurement {
            name: name.into(),
            unit,
            samples,
            target,
            note: None,
        }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// A duration in (fractional) milliseconds.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Bytes in MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One manager's side of a [`Row`].
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub manager: Kind,
    /// Pooled over every round.
    pub stats: Stats,
    /// For pm2rs with a target: whether the median meets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One figure, side by side for every manager that measured it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub suite: String,
    pub scenario: String,
    pub name: String,
    pub unit: Unit,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<f64>,
    pub figures: Vec<Figure>,
    /// pm2rs median ÷ PM2 median, when both were measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
}

impl Row {
    fn figure(&self, kind: Kind) -> Option<&Figure> {
        self.figures.iter().find(|f| f.manager == kind)
    }

    fn figure_mut(&mut self, kind: Kind) -> &mut Figure {
        if let Some(i) = self.figures.iter().position(|f| f.manager == kind) {
            return &mut self.figures[i];
        }
        self.figures.push(Figure {
            manager: kind,
            stats: Stats {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                samples: Vec::new(),
            },
            pass: None,
            notes: Vec::new(),
        });
        self.figures.sort_by_key(|f| f.manager);
        let i = self.figures.iter().position(|f| f.manager == kind);
        &mut self.figures[i.unwrap_or_default()]
    }

    /// Recomputes the summaries after samples were added.
    fn summarise(&mut self) {
        for figure in &mut self.figures {
            if let Some(stats) = Stats::of(std::mem::take(&mut figure.stats.samples)) {
                figure.stats = stats;
            }
            figure.pass = match (figure.manager, self.target) {
                (Kind::Pm2rs, Some(target)) => Some(figure.stats.median <= target),
                _ => None,
            };
        }
        self.ratio = match (self.figure(Kind::Pm2rs), self.figure(Kind::Pm2)) {
            (Some(ours), Some(theirs)) if theirs.stats.median > 0.0 => {
                Some(ours.stats.median / theirs.stats.median)
            }
            _ => None,
        };
    }
}

/// A scenario that failed (or was skipped) for one manager in one round.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub suite: String,
    pub scenario: String,
    pub manager: Kind,
    pub round: usize,
    /// `failed` or `skipped`.
    pub outcome: &'static str,
    pub reason: String,
}

/// A manager as measured.
#[derive(Debug, Clone, Serialize)]
pub struct ManagerInfo {
    pub manager: Kind,
    pub program: PathBuf,
    pub version: Option<String>,
    pub runtime: Option<String>,
}

impl From<&Manager> for ManagerInfo {
    fn from(m: &Manager) -> ManagerInfo {
        ManagerInfo {
            manager: m.kind,
            program: m.program.clone(),
            version: m.version.clone(),
            runtime: m.runtime.clone(),
        }
    }
}

/// Everything one `cargo xtask bench` produced.
#[derive(Debug, Serialize)]
pub struct Report {
    /// How the run was invoked, to reproduce it.
    pub command: String,
    /// Unix seconds when the run finished.
    pub finished_at_unix: u64,
    pub quick: bool,
    /// Each suite ran this many times per manager, alternating which manager goes first.
    pub rounds: usize,
    pub host: Host,
    pub managers: Vec<ManagerInfo>,
    pub rows: Vec<Row>,
    pub problems: Vec<Problem>,
}

/// The machine the figures come from (they mean little without it).
#[derive(Debug, Serialize)]
pub struct Host {
    pub kernel: Option<String>,
    pub cpus: usize,
    pub cpu_model: Option<String>,
    /// `/proc/loadavg` when the run finished: how busy the machine was.
    pub load_average: Option<String>,
}

impl Host {
    pub fn detect() -> Host {
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|s| s.trim().to_string());
        let cpu_model = fs::read_to_string("/proc/cpuinfo").ok().and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        });
        let load_average = fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
        Host {
            kernel,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            load_average,
        }
    }
}

impl Report {
    pub fn new(command: String, quick: bool, rounds: usize, managers: &[Manager]) -> Report {
        Report {
            command,
            finished_at_unix: 0,
            quick,
            rounds,
            host: Host::detect(),
            managers: managers.iter().map(ManagerInfo::from).collect(),
            rows: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Pools one scenario run's figures into the rows.
    pub fn add(
        &mut self,
        suite: &str,
        scenario: &str,
        manager: Kind,
        measurements: Vec<Measurement>,
    ) {
        for m in measurements {
            let position = self
                .rows
                .iter()
                .position(|r| r.suite == suite && r.scenario == scenario && r.name == m.name);
            let row = match position {
                Some(i) => &mut self.rows[i],
                None => {
                    self.rows.push(Row {
                        suite: suite.to_string(),
                        scenario: scenario.to_string(),
                        name: m.name.clone(),
                        unit: m.unit,
                        target: m.target,
                        figures: Vec::new(),
                        ratio: None,
                    });
                    let last = self.rows.len() - 1;
                    &mut self.rows[last]
                }
            };
            let figure = row.figure_mut(manager);
            figure.stats.samples.extend(m.samples);
            if let Some(note) = m.note
                && !figure.notes.contains(&note)
            {
                figure.notes.push(note);
            }
        }
    }

    pub fn problem(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    /// Computes medians, verdicts and ratios; call once, after the last [`Report::add`].
    pub fn finish(&mut self, finished_at_unix: u64) {
        self.finished_at_unix = finished_at_unix;
        self.host = Host::detect();
        for row in &mut self.rows {
            row.summarise();
        }
    }

    /// Whether every scenario ran for every manager (targets may still be missed).
    pub fn all_ran(&self) -> bool {
        self.problems.is_empty()
    }

    fn kinds(&self) -> Vec<Kind> {
        self.managers.iter().map(|m| m.manager).collect()
    }

    /// The whole report as Markdown: context, the table, notes, problems.
    pub fn render(&self) -> String {
        let kinds = self.kinds();
        let compare = kinds.contains(&Kind::Pm2);
        let mut out = String::new();
        let _ = writeln!(out, "- date: {}", utc_date_time(self.finished_at_unix));
        let _ = writeln!(out, "- command: `{}`", self.command);
        let _ = writeln!(
            out,
            "- machine: {} CPU(s), {}, Linux {}; load average at the end: {}",
            self.host.cpus,
            self.host.cpu_model.as_deref().unwrap_or("unknown CPU"),
            self.host.kernel.as_deref().unwrap_or("?"),
            self.host.load_average.as_deref().unwrap_or("?")
        );
        for m in &self.managers {
            let _ = writeln!(
                out,
                "- {}: {}{}",
                m.manager.label(),
                m.version.as_deref().unwrap_or("version unknown"),
                m.runtime
                    .as_deref()
                    .map(|r| format!(" on {r}"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(
            out,
            "- rounds: {} per manager{}{}",
            self.rounds,
            if compare {
                ", alternating which manager goes first"
            } else {
                ""
            },
            if self.quick { "; quick mode" } else { "" }
        );
        out.push('\n');

        let mut header = vec!["figure".to_string(), "target".to_string()];
        header.extend(kinds.iter().map(|k| k.label().to_string()));
        if compare {
            header.push("pm2rs / PM2".to_string());
        }
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
        for row in &self.rows {
            let mut cells = vec![
                // A `|` would end the Markdown cell.
                row.name.replace('|', "\\|"),
                row.target
                    .map_or("-".to_string(), |t| format!("≤ {t} {}", row.unit.suffix())),
            ];
            for kind in &kinds {
                cells.push(match row.figure(*kind) {
                    Some(f) => figure_cell(f, row.unit),
                    None => "-".to_string(),
                });
            }
            if compare {
                cells.push(row.ratio.map_or("-".to_string(), ratio_text));
            }
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out.push_str(
            "\nFigures: median (min–max, n = samples pooled over all rounds). \
             PASS/MISS compares pm2rs's median with its target.\n",
        );

        let mut notes = Vec::new();
        for row in &self.rows {
            let mut texts: Vec<(Kind, &str)> = Vec::new();
            for f in &row.figures {
                for note in &f.notes {
                    texts.push((f.manager, note));
                }
            }
            let shared = texts.len() > 1 && texts.iter().all(|(_, n)| *n == texts[0].1);
            if shared {
                notes.push(format!("- {}: {}", row.name, texts[0].1));
            } else {
                for (kind, note) in texts {
                    notes.push(format!("- {} ({}): {note}", row.name, kind.label()));
                }
            }
        }
        if !notes.is_empty() {
            out.push_str("\nNotes:\n");
            out.push_str(&notes.join("\n"));
            out.push('\n');
        }
        if !self.problems.is_empty() {
            out.push_str("\nScenarios that could not run:\n");
            for p in &self.problems {
                let _ = writeln!(
                    out,
                    "- {} / {} ({}, round {}): {}: {}",
                    p.suite,
                    p.scenario,
                    p.manager.label(),
                    p.round + 1,
                    p.outcome,
                    p.reason
                );
            }
        }
        out
    }

    /// Writes the report as pretty JSON to `path`, creating its directory.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        write_file(path, json + "\n")
    }

    /// Writes [`Report::render`] to `path`, creating its directory.
    pub fn write_markdown(&self, path: &Path) -> Result<()> {
        write_file(path, format!("# pm2rs bench\n\n{}", self.render()))
    }
}

fn write_file(path: &Path, text: String) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A figure with enough digits for values from 0.05 to 50 000.
fn number(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn figure_cell(f: &Figure, unit: Unit) -> String {
    let s = &f.stats;
    let mut cell = format!("{} {}", number(s.median), unit.suffix());
    if s.samples.len() > 1 {
        let _ = write!(
            cell,
            " ({}–{}, n={})",
            number(s.min),
            number(s.max),
            s.samples.len()
        );
    }
    match f.pass {
        Some(true) => cell.push_str(" PASS"),
        Some(false) => cell.push_str(" MISS"),
        None => {}
    }
    cell
}

fn ratio_text(ratio: f64) -> String {
    if ratio < 0.1 {
        format!("{ratio:.3}")
    } else {
        format!("{ratio:.2}")
    }
}

/// An RFC 3339 UTC time (`2026-11-21T23:08:05Z`) for Unix seconds.
fn utc_date_time(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map_or_else(
            || format!("{unix} s after the Unix epoch"),
            |t| t.to_string(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(kind: Kind) -> Manager {
        Manager {
            kind,
            program: PathBuf::from("x"),
            version: Some("1.0".into()),
            runtime: None,
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        let odd = Stats::of(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((odd.median, odd.min, odd.max), (2.0, 1.0, 3.0));
        assert_eq!(odd.samples, vec![3.0, 1.0, 2.0]);
        let even = Stats::of(vec![4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(even.median, 2.5);
        assert!(Stats::of(Vec::new()).is_none());
    }

    #[test]
    fn rounds_are_pooled_per_manager_with_a_ratio() {
        let mut report = Report::new(
            "cargo xtask bench --compare pm2".into(),
            false,
            2,
            &[manager(Kind::Pm2rs), manager(Kind::Pm2)],
        );
        for (kind, rss) in [(Kind::Pm2rs, 3.0), (Kind::Pm2, 60.0), (Kind::Pm2rs, 5.0)] {
            report.add(
                "core",
                "idle daemon",
                kind,
                vec![Measurement::single(
                    "daemon RSS, idle",
                    Unit::Mib,
                    rss,
                    Some(4.0),
                )],
            );
        }
        report.add(
            "core",
            "list",
            Kind::Pm2,
            vec![
                Measurement::repeated("list | cat", Unit::Ms, vec![300.0, 200.0], None)
                    .with_note("ls"),
            ],
        );
        report.finish(1_795_301_672);
        assert_eq!(report.rows.len(), 2);
        let rss = &report.rows[0];
        let ours = rss.figure(Kind::Pm2rs).unwrap();
        assert_eq!((ours.stats.median, ours.stats.samples.len()), (4.0, 2));
        assert_eq!(ours.pass, Some(true));
        assert_eq!(rss.figure(Kind::Pm2).unwrap().pass, None);
        assert_eq!(rss.ratio, Some(4.0 / 60.0));
        assert_eq!(report.rows[1].ratio, None);
        assert!(report.all_ran());

        let text = report.render();
        assert!(
            text.contains("| figure | target | pm2rs | PM2 | pm2rs / PM2 |"),
            "{text}"
        );
        assert!(
            text.contains(
                "| daemon RSS, idle | ≤ 4 MiB | 4.00 MiB (3.00–5.00, n=2) PASS | 60.0 MiB | 0.067 |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| list \\| cat | - | - | 250 ms (200–300, n=2) | - |"),
            "{text}"
        );
        assert!(text.contains("- list | cat (PM2): ls"), "{text}");
        assert!(text.contains("2026-11-21T"), "{text}");
    }

    #[test]
    fn problems_fail_the_run_and_are_listed() {
        let mut report = Report::new("cargo xtask bench".into(), true, 1, &[manager(Kind::Pm2rs)]);
        report.problem(Problem {
            suite: "core".into(),
            scenario: "start".into(),
            manager: Kind::Pm2rs,
            round: 0,
            outcome: "failed",
            reason: "no daemon".into(),
        });
        report.finish(0);
        assert!(!report.all_ran());
        let text = report.render();
        assert!(!text.contains("PM2"), "{text}");
        assert!(
            text.contains("core / start (pm2rs, round 1): failed: no daemon"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["problems"][0]["reason"], "no daemon");
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc_date_time(951_782_400 + 3_661), "2000-02-29T01:01:01Z");
    }
}
