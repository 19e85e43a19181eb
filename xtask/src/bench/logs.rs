//! The `logs` suite: a flood of 1,000,000 lines of 100 bytes through the daemon, against the same
//! app (a) writing straight to a file and (b) piped into `cat > file`, in the same run.
//!
//! The app is this very executable (`xtask flood-writer`): it builds its lines first, then writes
//! them (1,000 lines per `write`, or one line per `write`) and records, in a report file, when
//! its first write began and how long its writes took. "Wall" is from that first write until
//! every byte is in the file: for (a) the end of the writes, for (b) the exit of `cat`, for pm2rs
//! the moment the file reaches its full size (polled every millisecond, so up to 1 ms late).
//! Then every line of the pm2rs file is checked: lines lost = expected lines not found in order.
//! Daemon peak RSS is `VmHWM` of the daemon after the floods.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::harness::{Harness, Stdout, poll_until, unix_micros};
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

fn direct(scratch: &Path, per_write: usize) -> Result<Figures> {
    let out = scratch.join("direct.log");
    let report = scratch.join("direct.report");
    let status = writer(per_write, &report)?
        .stdout(fs::File::create(&out)?)
        .status()?;
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
    ensure!(
        app.wait()?.success() && status.success(),
        "writer | cat failed"
    );
    let r = read_report(&report)?;
    let _ = fs::remove_file(&out);
    Ok(Figures {
        own_ms: r.write_ms,
        wall_ms: done_us.saturating_sub(r.first_write_us) as f64 / 1000.0,
    })
}

/// One flood through the daemon; returns figures and lines lost.
fn via_pm2rs(h: &mut Harness, name: &str, per_write: usize) -> Result<(Figures, usize)> {
    let scratch = h.scratch().to_path_buf();
    let out = scratch.join(format!("{name}.log"));
    let report = scratch.join(format!("{name}.report"));
    let exe = std::env::current_exe()?;
    let eco = scratch.join(format!("{name}.toml"));
    fs::write(
        &eco,
        format!(
            "[[apps]]\nname = \"{name}\"\nscript = {exe:?}\ninterpreter = \"none\"\n\
             args = [\"flood-writer\", \"{LINES}\", \"{per_write}\", {report:?}]\n\
             autorestart = false\nout_file = {out:?}\nlog_max_size = 0\n",
            exe = exe.display().to_string(),
            report = report.display().to_string(),
            out = out.display().to_string(),
        ),
    )?;
    h.run(&["start", &eco.to_string_lossy()], Stdout::Discard)?;
    let full = (LINES * LINE_LEN) as u64;
    poll_until(
        &format!("{} to reach {full} bytes", out.display()),
        WAIT,
        Duration::from_millis(1),
        || Ok((fs::metadata(&out).map_or(0, |m| m.len()) >= full).then_some(())),
    )?;
    let done_us = unix_micros();
    let r = poll_until(
        "the writer's report",
        WAIT,
        Duration::from_millis(5),
        || Ok(read_report(&report).ok()),
    )?;
    let lost = lines_lost(&out)?;
    h.run(&["delete", name], Stdout::Discard)?;
    let _ = fs::remove_file(&out);
    Ok((
        Figures {
            own_ms: r.write_ms,
            wall_ms: done_us.saturating_sub(r.first_write_us) as f64 / 1000.0,
        },
        lost,
    ))
}

/// The scenario: both write sizes, three ways each, then the daemon's peak RSS.
pub fn flood(h: &mut Harness, options: &Options) -> Result<Vec<Measurement>> {
    h.run(&["ping"], Stdout::Discard)?;
    let daemon = h.daemon()?;
    let runs = if options.quick { 1 } else { 3 };
    let scratch: PathBuf = h.scratch().to_path_buf();
    let mut out = Vec::new();
    let mut total_lost = 0;
    for (label, per_write) in [("1000 lines/write", 1000), ("1 line/write", 1)] {
        let (mut d_wall, mut c_wall, mut p_wall, mut c_own, mut p_own) =
            (vec![], vec![], vec![], vec![], vec![]);
        for run in 0..runs {
            super::harness::interrupted()?;
            d_wall.push(direct(&scratch, per_write)?.wall_ms);
            let c = via_cat(&scratch, per_write)?;
            c_wall.push(c.wall_ms);
            c_own.push(c.own_ms);
            let (p, lost) = via_pm2rs(h, &format!("flood{per_write}x{run}"), per_write)?;
            p_wall.push(p.wall_ms);
            p_own.push(p.own_ms);
            total_lost += lost;
        }
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let ratio = median(&p_wall) / median(&c_wall);
        out.push(Measurement::repeated(
            format!("{label}: (a) straight to a file"),
            Unit::Ms,
            d_wall,
            None,
        ));
        out.push(
            Measurement::repeated(
                format!("{label}: (b) | cat > file, wall"),
                Unit::Ms,
                c_wall,
                None,
            )
            .with_note(format!(
                "the app's own write time: median {:.0} ms",
                median(&c_own)
            )),
        );
        out.push(
            Measurement::repeated(
                format!("{label}: pm2rs, wall until all lines are in the file"),
                Unit::Ms,
                p_wall,
                None,
            )
            .with_note(format!(
                "the app's own write time: median {:.0} ms; median wall is {ratio:.2}× (b) \
                 (target ≤ {TARGET_RATIO}×)",
                median(&p_own)
            )),
        );
    }
    let peak = vm_hwm(daemon.pid)?;
    out.push(
        Measurement::single(
            "daemon peak RSS during the floods",
            Unit::Mib,
            mib(peak),
            Some(TARGET_PEAK_RSS_MIB),
        )
        .with_note(format!("VmHWM of pid {}", daemon.pid)),
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
