//! Bench results: figures with their targets, the printed table, and `results.json`.
//!
//! A [`Measurement`] is one figure (a single value or the median of repeated samples) with an
//! optional upper-bound target. A [`ScenarioResult`] says whether a scenario ran, failed, or was
//! skipped, and carries its measurements. Missing a target is reported, never an error; only a
//! scenario that could not run makes the bench exit non-zero.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

/// Unit of a figure and of its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Milliseconds.
    Ms,
    /// Mebibytes (1024 × 1024 bytes); RSS targets are read as MiB.
    Mib,
    /// Requests per second.
    PerSec,
    /// A plain count (e.g. failed requests).
    Count,
    /// A count of lines.
    Lines,
}

impl Unit {
    fn suffix(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::Mib => "MiB",
            Unit::PerSec => "req/s",
            Unit::Count => "",
            Unit::Lines => "lines",
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

/// One figure of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// What was measured, as shown in the table.
    pub name: String,
    pub unit: Unit,
    /// The figure compared with the target: the single value, or the median of `stats`.
    pub value: f64,
    /// Present when the figure summarises repeated runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
    /// The figure should be at most this (at least, with `at_least`); `None` for informational
    /// figures.
    pub target: Option<f64>,
    /// The target is a floor (throughput), not a ceiling.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub at_least: bool,
    /// `Some(true)` if the target is met, `None` without a target.
    pub pass: Option<bool>,
    /// Context printed under the table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Measurement {
    /// A single value.
    pub fn single(name: impl Into<String>, unit: Unit, value: f64, target: Option<f64>) -> Self {
        Measurement {
            name: name.into(),
            unit,
            value,
            stats: None,
            target,
            at_least: false,
            pass: target.map(|t| value <= t),
            note: None,
        }
    }

    /// A single value that should be at least `target` (higher is better).
    pub fn at_least(name: impl Into<String>, unit: Unit, value: f64, target: Option<f64>) -> Self {
        Measurement {
            at_least: true,
            pass: target.map(|t| value >= t),
            ..Measurement::single(name, unit, value, None)
        }
        .with_target(target)
    }

    fn with_target(mut self, target: Option<f64>) -> Self {
        self.target = target;
        self
    }

    /// The median of repeated samples (at least one).
    pub fn repeated(
        name: impl Into<String>,
        unit: Unit,
        samples: Vec<f64>,
        target: Option<f64>,
    ) -> Self {
        let stats = Stats::of(samples).unwrap_or(Stats {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
            samples: Vec::new(),
        });
        Measurement {
            pass: target.map(|t| stats.median <= t),
            value: stats.median,
            stats: Some(stats),
            ..Measurement::single(name, unit, f64::NAN, target)
        }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    fn figure(&self) -> String {
        let unit = self.unit.suffix();
        match &self.stats {
            Some(s) => format!(
                "median {:.2} {unit} (min {:.2}, max {:.2}, n={})",
                s.median,
                s.min,
                s.max,
                s.samples.len()
            ),
            None => format!("{:.2} {unit}", self.value).trim_end().to_string(),
        }
    }

    fn target_text(&self) -> String {
        let text = match self.target {
            // Throughput floors are measured figures: whole requests per second.
            Some(t) if self.at_least => format!("≥ {t:.0} {}", self.unit.suffix()),
            Some(t) => format!("≤ {t} {}", self.unit.suffix()),
            None => "-".to_string(),
        };
        text.trim_end().to_string()
    }

    fn verdict(&self) -> &'static str {
        match self.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "info",
        }
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

/// How a scenario ended.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "snake_case")]
pub enum Outcome {
    Ran,
    /// It started and failed; the error chain.
    Failed(String),
    /// It did not start because an earlier scenario of its suite failed.
    Skipped(String),
}

/// One scenario's outcome and figures.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub scenario: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub measurements: Vec<Measurement>,
}

/// Everything one `cargo xtask bench` produced.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Unix seconds when the run finished.
    pub finished_at_unix: u64,
    pub quick: bool,
    /// The binary that was measured.
    pub binary: PathBuf,
    /// Output of `pm2rs --version`, when it answered.
    pub pm2rs_version: Option<String>,
    pub host: Host,
    pub scenarios: Vec<ScenarioResult>,
}

/// The machine the figures come from (they mean little without it).
#[derive(Debug, Serialize)]
pub struct Host {
    pub kernel: Option<String>,
    pub cpus: usize,
    pub cpu_model: Option<String>,
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
        Host {
            kernel,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
        }
    }
}

impl Report {
    /// Whether every scenario ran (targets may still be missed).
    pub fn all_ran(&self) -> bool {
        self.scenarios
            .iter()
            .all(|s| matches!(s.outcome, Outcome::Ran))
    }

    /// The human table plus notes and failures.
    pub fn render(&self) -> String {
        let header = ["scenario", "figure", "target", "result"];
        let rows: Vec<[String; 4]> = self
            .scenarios
            .iter()
            .flat_map(|s| &s.measurements)
            .map(|m| {
                [
                    m.name.clone(),
                    m.figure(),
                    m.target_text(),
                    m.verdict().to_string(),
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: [&str; 4]| {
            let mut text = String::new();
            for (cell, width) in cells.iter().zip(widths) {
                let pad = width - cell.chars().count();
                let _ = write!(text, "{cell}{}  ", " ".repeat(pad));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&mut out, header);
        let rule = widths.map(|w| "-".repeat(w));
        line(&mut out, [&rule[0], &rule[1], &rule[2], &rule[3]]);
        for row in &rows {
            line(&mut out, [&row[0], &row[1], &row[2], &row[3]]);
        }

        let notes: Vec<String> = self
            .scenarios
            .iter()
            .flat_map(|s| &s.measurements)
            .filter_map(|m| m.note.as_ref().map(|note| format!("- {}: {note}", m.name)))
            .collect();
        if !notes.is_empty() {
            out.push_str("\nnotes:\n");
            out.push_str(&notes.join("\n"));
            out.push('\n');
        }
        let problems: Vec<String> = self
            .scenarios
            .iter()
            .filter_map(|s| match &s.outcome {
                Outcome::Ran => None,
                Outcome::Failed(e) => Some(format!("- {}: FAILED: {e}", s.scenario)),
                Outcome::Skipped(why) => Some(format!("- {}: not run: {why}", s.scenario)),
            })
            .collect();
        if !problems.is_empty() {
            out.push_str("\nscenarios that could not run:\n");
            out.push_str(&problems.join("\n"));
            out.push('\n');
        }
        out
    }

    /// Writes the report as pretty JSON to `path`, creating its directory.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(self)?;
        fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn targets_compare_the_median() {
        let m = Measurement::repeated("list", Unit::Ms, vec![1.0, 1.5, 9.0], Some(2.0));
        assert_eq!(m.pass, Some(true));
        let m = Measurement::single("rss", Unit::Mib, 5.0, Some(4.0));
        assert_eq!(m.pass, Some(false));
        assert_eq!(Measurement::single("x", Unit::Ms, 1.0, None).pass, None);
        let m = Measurement::at_least("rps", Unit::PerSec, 900.0, Some(1000.0));
        assert_eq!(m.pass, Some(false));
        assert_eq!(m.target_text(), "≥ 1000 req/s");
        assert_eq!(
            Measurement::at_least("rps", Unit::PerSec, 1000.0, Some(1000.0)).pass,
            Some(true)
        );
    }

    #[test]
    fn table_shows_figures_and_failures() {
        let report = Report {
            finished_at_unix: 0,
            quick: true,
            binary: PathBuf::from("pm2rs"),
            pm2rs_version: None,
            host: Host::detect(),
            scenarios: vec![
                ScenarioResult {
                    scenario: "idle".into(),
                    outcome: Outcome::Ran,
                    measurements: vec![
                        Measurement::single("daemon RSS, idle", Unit::Mib, 3.25, Some(4.0))
                            .with_note("read after ping"),
                    ],
                },
                ScenarioResult {
                    scenario: "start".into(),
                    outcome: Outcome::Failed("no daemon".into()),
                    measurements: vec![],
                },
            ],
        };
        let text = report.render();
        assert!(text.contains("daemon RSS, idle"), "{text}");
        assert!(text.contains("3.25 MiB"), "{text}");
        assert!(text.contains("PASS"), "{text}");
        assert!(text.contains("start: FAILED: no daemon"), "{text}");
        assert!(!report.all_ran());
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["scenarios"][1]["outcome"], "failed");
        assert_eq!(json["scenarios"][1]["reason"], "no daemon");
    }
}
