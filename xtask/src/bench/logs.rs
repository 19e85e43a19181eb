//! The `logs` suite: a flood of 1,000,000 lines of 100 bytes captured by the manager (pm2rs, and
//! PM2 with `--compare pm2`), against the same app (a) writing straight to a file and (b) piped into
//! `cat > file`, in the same run.
//!
//! The app is this very executable (`xtask flood-writer`), run by either manager directly
//! (`interpreter "none"`, fork mode, no restart, no rotation): it builds its lines first, then
//! writes them (1,000 lines per `write`, or one line per `write`) and records, in a report file,
//! when its first write began and how long its writes took. "Wall" is from that first write until
//! every byte is in the file: for (a) the end of the writes, for (b) the exit of `cat`, for a
//! manager the moment its out log file reaches the full size (polled every millisecond, so up to
//! 1 ms late). The out log file is the manager's default one in its home: pm2rs
//! `$PM2RS_HOME/logs/<name>-out.log`, PM2 `$PM2_HOME/logs/<name>-out-<pm_id>.log` (PM2 adds the
//! id when `instances` is given; with default options it writes the app's bytes unchanged). Then
//! every line of the file is checked: lines lost = expected lines not found in order. Each run of
//! a write size does (a), (b) and the manager's flood, in an order that rotates from run to run.
//! Daemon peak RSS is `VmHWM` of the daemon (pm2rs's, or PM2's God Daemon) after all floods.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::harness::{Harness, Stdout, interrupted, poll_until, unix_micros};
use super::manager::{App, Cli, Kind};
use super::report::{Measurement, Unit, mib};
use super::{Options, WAIT};

/// Lines per flood and bytes per line (newline included).
const LINES: usize = 1_000_000;
const LINE_LEN: usize = 100;

/// Targets of the issue: pm2rs wall ≤ 1.2 × (b); daemon peak RSS ≤ 16 MiB; nothing lost.
const TARGET_RATIO: f64 = 1.2;
const TARGET_PEAK_RSS_MIB: f64 = 16.0;

/// The app's own figures, from its report file.
struct Report {
    first_write_us: u64,
    write_ms: f64,
}

/// `xtask flood-writer <lines> <lines-per-write> <report>`: the benchmark's app.
pub fn flood_writer(args: &[String]) -> Result<()> {
    let [lines, per_write, report] = args else {
        bail!("usage: xtask flood-writer <lines> <lines-per-write> <report-file>");
    };
    let lines: usize = lines.parse().context("lines")?;
    let per_write: usize = per_write.parse().context("lines per write")?;
    ensure!(per_write > 0, "lines per write must be at least 1");
    let mut data = Vec::with_capacity(lines * LINE_LEN);
    for i in 1..=lines {
        let start = data.len();
        write!(data, "{i:09} ")?;
        data.resize(start + LINE_LEN - 1, b'x');
        data.push(b'\n');
    }
    let first_write_us = unix_micros();
    let started = Instant::now();
    let mut out = std::io::stdout().lock();
    for chunk in data.chunks(per_write * LINE_LEN) {
        out.write_all(chunk)?;
    }
    out.flush()?;
    let write_ms = started.elapsed().as_secs_f64() * 1000.0;
    fs::write(report, format!("{first_write_us} {write_ms}\n"))?;
    Ok(())
}

fn read_report(path: &Path) -> Result<Report> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut words = text.split_whitespace();
    let first_write_us = words.next().context("empty report")?.parse()?;
    let write_ms = words.next().context("short report")?.parse()?;
    Ok(Report {
        first_write_us,
        write_ms,
    })
}

/// The writer command: this executable's `flood-writer` task.
fn writer(per_write: usize, report: &Path) -> Result<Command> {
    let exe = std::env::current_exe().context("finding the xtask executable")?;
    let mut c = Command::new(exe);
    c.arg("flood-writer")
        .arg(LINES.to_string())
        .arg(per_write.to_string())
        .arg(report);
    Ok(c)
}

/// Lines missing from `path` (expected `1..=LINES` in order, each intact).
fn lines_lost(path: &Path) -> Result<usize> {
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut expected = 1usize;
    let mut found = 0usize;
    for line in BufReader::with_capacity(1 << 20, file).split(b'\n') {
        let line = line?;
        let Some(n) = std::str::from_utf8(&line[..line.len().min(9)])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        if n >= expected && line.len() == LINE_LEN - 1 {
            found += 1;
            expected = n + 1;
        }
    }
    Ok(LINES - found)
}

struct Figures {
    own_ms: f64,
    wall_ms: f64,
}

/// How long one flood may take to land in the file (PM2 at one line per write is the slowest).
const FLOOD_WAIT: Duration = Duration::from_secs(120);

fn direct(scratch: &Path, per_write: usize) -> Result<Figures> {
    let out = scratch.join("direct.log");
    let report = scratch.join("direct.report");
    let status = writer(per_write, &report)?
        .stdout(fs::File::create(&out)?)
        .status()?;
    // Ctrl-C reaches the writer too; say so rather than blame it.
    interrupted()?;
    ensure!(status.success(), "the writer failed: {status}");
    let r = read_report(&report)?;
    let _ = fs::remove_file(&out);
    Ok(Figures {
        own_ms: r.write_ms,
        wall_ms: r.write_ms,
    })
}

fn via_cat(scratch: &Path, per_write: usize) -> Result<Figures> {
    let out = scratch.join("cat.log");
    let report = scratch.join("cat.report");
    let mut app = writer(per_write, &report)?.stdout(Stdio::piped()).spawn()?;
    let pipe = app.stdout.take().context("writer stdout")?;
    let status = Command::new("cat")
        .stdin(pipe)
        .stdout(fs::File::create(&out)?)
        .status()?;
    let done_us = unix_micros();
    let app_status = app.wait()?;
    interrupted()?;
    ensure!(
        app_status.success() && status.success(),
        "writer | cat failed"
    );
    let r = read_report(&report)?;
    let _ = fs::remove_file(&out);
    Ok(Figures {
        own_ms: r.write_ms,
        wall_ms: done_us.saturating_sub(r.first_write_us) as f64 / 1000.0,
    })
}

/// The out log file of app `name` in `logs`, once the manager has created it: `<name>-out.log`
/// (pm2rs) or `<name>-out-<id>.log` (PM2).
fn out_log(logs: &Path, name: &str) -> Option<PathBuf> {
    let prefix = format!("{name}-out");
    fs::read_dir(logs).ok()?.flatten().find_map(|entry| {
        let file = entry.file_name();
        let file = file.to_str()?;
        let rest = file.strip_prefix(&prefix)?.strip_suffix(".log")?;
        let id = rest.strip_prefix('-').unwrap_or(rest);
        id.bytes().all(|b| b.is_ascii_digit()).then(|| entry.path())
    })
}

/// One flood through the manager; returns figures and lines lost.
fn via_manager(h: &mut Harness, name: &str, per_write: usize) -> Result<(Figures, usize)> {
    let report = h.scratch().join(format!("{name}.report"));
    let report_arg = report.to_string_lossy().into_owned();
    let exe = std::env::current_exe().context("finding the xtask executable")?;
    let exe = exe.to_string_lossy().into_owned();
    let (lines, per_write) = (LINES.to_string(), per_write.to_string());
    let args = ["flood-writer", &lines, &per_write, &report_arg];
    let eco = h.write_ecosystem(
        name,
        &[App {
            name,
            script: &exe,
            args: &args,
            instances: 1,
            autorestart: false,
            rotate_logs: false,
            max_memory_restart: None,
        }],
    )?;
    h.cli(Cli::Start(&eco), Stdout::Discard)?;
    let logs = h.home().join("logs");
    let full = (LINES * LINE_LEN) as u64;
    let mut out = None;
    poll_until(
        &format!(
            "the out log of `{name}` in {} to reach {full} bytes",
            logs.display()
        ),
        FLOOD_WAIT,
        Duration::from_millis(1),
        || {
            if out.is_none() {
                out = out_log(&logs, name);
            }
            let size = out
                .as_ref()
                .map_or(0, |f| fs::metadata(f).map_or(0, |m| m.len()));
            Ok((size >= full).then_some(()))
        },
    )?;
    let done_us = unix_micros();
    let out = out.context("no out log")?;
    let r = poll_until(
        "the writer's report",
        WAIT,
        Duration::from_millis(5),
        || Ok(read_report(&report).ok()),
    )?;
    let lost = lines_lost(&out)?;
    h.cli(Cli::Delete(name), Stdout::Discard)?;
    let _ = fs::remove_file(&out);
    Ok((
        Figures {
            own_ms: r.write_ms,
            wall_ms: done_us.saturating_sub(r.first_write_us) as f64 / 1000.0,
        },
        lost,
    ))
}

/// The three ways one flood is written.
#[derive(Clone, Copy)]
enum Way {
    Direct,
    Cat,
    Manager,
}

/// The samples of one write size.
#[derive(Default)]
struct Samples {
    direct_wall: Vec<f64>,
    cat_wall: Vec<f64>,
    cat_own: Vec<f64>,
    managed_wall: Vec<f64>,
    managed_own: Vec<f64>,
    /// Manager wall ÷ (b) wall of the same run.
    ratio: Vec<f64>,
}

/// Where the manager's capture goes, for the note of its figures.
fn capture_note(kind: Kind) -> &'static str {
    match kind {
        Kind::Pm2rs => {
            "until `$PM2RS_HOME/logs/<name>-out.log` (`log_max_size = 0`: no rotation) has every \
             byte, polled every 1 ms"
        }
        Kind::Pm2 => {
            "until `$PM2_HOME/logs/<name>-out-<id>.log` (no rotation without pm2-logrotate) has \
             every byte, polled every 1 ms"
        }
    }
}

/// The scenario: both write sizes, three ways each, then the daemon's peak RSS.
pub fn flood(h: &mut Harness, options: &Options) -> Result<Vec<Measurement>> {
    h.cli(Cli::Ping, Stdout::Discard)?;
    let daemon = h.daemon()?;
    let kind = h.kind();
    let runs = options.reps(3, 1);
    let scratch: PathBuf = h.scratch().to_path_buf();
    let mut out = Vec::new();
    let mut total_lost = 0;
    for (label, per_write) in [("1000 lines/write", 1000), ("1 line/write", 1)] {
        let mut s = Samples::default();
        for run in 0..runs {
            // Rotate the order, so no way always runs right after the same other one.
            let mut order = [Way::Direct, Way::Cat, Way::Manager];
            order.rotate_left(run % 3);
            let (mut cat, mut managed) = (f64::NAN, f64::NAN);
            for way in order {
                interrupted()?;
                match way {
                    Way::Direct => s.direct_wall.push(direct(&scratch, per_write)?.wall_ms),
                    Way::Cat => {
                        let c = via_cat(&scratch, per_write)?;
                        cat = c.wall_ms;
                        s.cat_wall.push(c.wall_ms);
                        s.cat_own.push(c.own_ms);
                    }
                    Way::Manager => {
                        let name = format!("flood{per_write}x{run}");
                        let (m, lost) = via_manager(h, &name, per_write)?;
                        managed = m.wall_ms;
                        s.managed_wall.push(m.wall_ms);
                        s.managed_own.push(m.own_ms);
                        total_lost += lost;
                    }
                }
            }
            s.ratio.push(managed / cat);
        }
        let figure = |what: &str, samples: Vec<f64>, note: &str| {
            Measurement::repeated(format!("{label}: {what}"), Unit::Ms, samples, None)
                .with_note(note)
        };
        out.extend([
            figure(
                "(a) straight to a file",
                s.direct_wall,
                "the app's own write time, stdout a file: nothing captures it",
            ),
            figure(
                "(b) | cat > file, wall",
                s.cat_wall,
                "from the app's first write until `cat` exits",
            ),
            figure(
                "(b) | cat > file, the app's own write time",
                s.cat_own,
                "from its first write until its last returned",
            ),
            figure(
                "captured by the manager, wall until all lines are in its file",
                s.managed_wall,
                &format!("from the app's first write {}", capture_note(kind)),
            ),
            figure(
                "captured by the manager, the app's own write time",
                s.managed_own,
                "from its first write until its last returned (a full pipe blocks it)",
            ),
            Measurement::repeated(
                format!("{label}: captured wall ÷ (b) wall"),
                Unit::Ratio,
                s.ratio,
                Some(TARGET_RATIO),
            )
            .with_note("per run: the manager's wall divided by the wall of (b) in the same run"),
        ]);
    }
    let peak = vm_hwm(daemon.pid)?;
    out.push(
        Measurement::single(
            "daemon peak RSS during the floods",
            Unit::Mib,
            mib(peak),
            Some(TARGET_PEAK_RSS_MIB),
        )
        .with_note(match kind {
            Kind::Pm2rs => "VmHWM of the daemon (the pid in `pm2rs.pid`) after all floods",
            Kind::Pm2 => "VmHWM of the God Daemon (the pid in `pm2.pid`) after all floods",
        }),
    );
    out.push(
        Measurement::single(
            "lines lost (all floods)",
            Unit::Lines,
            total_lost as f64,
            Some(0.0),
        )
        .with_note(format!(
            "{LINES} lines of {LINE_LEN} bytes per flood, each checked in order"
        )),
    );
    Ok(out)
}

/// Peak resident set size (`VmHWM`) of `pid`, in bytes.
fn vm_hwm(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM line")?;
    let kb: u64 = line["VmHWM:".len()..]
        .split_whitespace()
        .next()
        .context("empty VmHWM")?
        .parse()?;
    Ok(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_out_log_is_found_under_either_managers_name() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path();
        assert_eq!(out_log(logs, "flood1x1"), None);
        for other in [
            "flood1x10-out.log",
            "flood1x1-error.log",
            "flood1x1-out-x.log",
            "flood1x1-out.log.1",
        ] {
            fs::write(logs.join(other), "").unwrap();
        }
        assert_eq!(out_log(logs, "flood1x1"), None);
        fs::write(logs.join("flood1x1-out-12.log"), "").unwrap();
        assert_eq!(
            out_log(logs, "flood1x1"),
            Some(logs.join("flood1x1-out-12.log"))
        );
        fs::write(logs.join("flood1000x0-out.log"), "").unwrap();
        assert_eq!(
            out_log(logs, "flood1000x0"),
            Some(logs.join("flood1000x0-out.log"))
        );
    }

    #[test]
    fn lost_lines_are_the_missing_truncated_and_out_of_order_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        let line = |i: usize| {
            let mut l = format!("{i:09} ");
            l.extend(std::iter::repeat_n('x', LINE_LEN - 1 - l.len()));
            l + "\n"
        };
        // 1, 2, 4 intact; 5 cut short; 3 after 4 (out of order); then 6.
        let text = [
            line(1),
            line(2),
            line(4),
            line(5)[..50].to_string() + "\n",
            line(3),
            line(6),
        ];
        fs::write(&path, text.concat()).unwrap();
        assert_eq!(lines_lost(&path).unwrap(), LINES - 4);
    }
}
