//! Human-readable rendering of daemon replies: the `pm2rs list` table, the `pm2rs describe` sheet,
//! and the small formatters they share (uptime, bytes, CPU, durations).
//!
//! Everything here is a pure function of its arguments. No I/O happens in this module: the caller
//! measures the terminal, decides whether colour is wanted (`NO_COLOR`, isatty) and reads the clock,
//! then passes all of that in through [`Style`] and `now_us`.
//!
//! Guarantees:
//! - With `style.color == false` the output contains no escape byte (0x1b), not even from text sent
//!   by the daemon: control characters in names, reasons, paths… are shown escaped (`\u{1b}`, `\n`).
//! - With `style.width == Some(w)` every line of the process table, of the errored-reason notes and
//!   of the describe sheet fits in `w` display columns for any realistic `w` (tested down to 24;
//!   below about 20 it is best effort, cells wrap). With `None` nothing is truncated or dropped.
//! - Returned strings have no trailing newline; print them with `println!`.

use std::borrow::Cow;

use comfy_table::{
    Attribute, Cell, Color, ContentArrangement, ContentLineStyle, LineStyle, Table, TableStyle,
};
use pm2rs_proto::{AppSpec, Described, ProcessInfo, Status};
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// How to render: the caller decides both fields from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Emit ANSI colours (the caller honours `NO_COLOR` and checks isatty).
    pub color: bool,
    /// Terminal width in columns; `None` = not a terminal: no truncation, all columns.
    pub width: Option<u16>,
}

/// PM2's look: single-line box drawing with a plain separator under the header.
const PM2_STYLE: TableStyle = TableStyle::new()
    .top_border(LineStyle::new('┌', '─', '┬', '┐'))
    .header_lines(ContentLineStyle::new('│', '│', '│'))
    .header_separator(LineStyle::new('├', '─', '┼', '┤'))
    .content_lines(ContentLineStyle::new('│', '│', '│'))
    .bottom_border(LineStyle::new('└', '─', '┴', '┘'));

/// Narrowest a name is ever truncated to (in display columns, including the `…`).
const MIN_NAME_WIDTH: usize = 4;

/// Hand-written SGR codes for the lines that are not table cells.
const RED_BOLD: &str = "\x1b[1;31m";
const RESET: &str = "\x1b[0m";
const CYAN_BOLD: &str = "\x1b[1;36m";

/// Columns of the process table, in display order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Col {
    Id,
    Name,
    Namespace,
    Mode,
    Pid,
    Uptime,
    Restarts,
    Status,
    Cpu,
    Mem,
    User,
}

const ALL_COLS: [Col; 11] = [
    Col::Id,
    Col::Name,
    Col::Namespace,
    Col::Mode,
    Col::Pid,
    Col::Uptime,
    Col::Restarts,
    Col::Status,
    Col::Cpu,
    Col::Mem,
    Col::User,
];

/// Columns dropped, in this order, until the table fits. Id, name and status always stay.
const DROP_ORDER: [Col; 8] = [
    Col::User,
    Col::Namespace,
    Col::Mode,
    Col::Cpu,
    Col::Pid,
    Col::Restarts,
    Col::Mem,
    Col::Uptime,
];

impl Col {
    fn header(self) -> &'static str {
        match self {
            Col::Id => "id",
            Col::Name => "name",
            Col::Namespace => "namespace",
            Col::Mode => "mode",
            Col::Pid => "pid",
            Col::Uptime => "uptime",
            Col::Restarts => "↺",
            Col::Status => "status",
            Col::Cpu => "cpu",
            Col::Mem => "mem",
            Col::User => "user",
        }
    }

    fn cell(self, p: &ProcessInfo, now_us: u64) -> String {
        match self {
            Col::Id => p.id.to_string(),
            Col::Name => clean(&p.name).into_owned(),
            Col::Namespace => clean(&p.namespace).into_owned(),
            Col::Mode => p.exec_mode.to_string(),
            Col::Pid => p.pid.map_or_else(|| "-".to_string(), |pid| pid.to_string()),
            Col::Uptime => uptime_of(p, now_us),
            Col::Restarts => p.restarts.to_string(),
            Col::Status => p.status.as_str().to_string(),
            Col::Cpu => p.cpu_percent.map_or_else(|| "-".to_string(), format_cpu),
            Col::Mem => p.memory_bytes.map_or_else(|| "-".to_string(), format_bytes),
            Col::User => p
                .user
                .as_deref()
                .map_or_else(|| "-".to_string(), |u| clean(u).into_owned()),
        }
    }
}

/// `total` of an instance's process group, with the leader's own figure when the group has more
/// than the leader: `162mb (3 processes; leader 100mb)`.
fn group_figure<T: Copy>(
    p: &ProcessInfo,
    total: Option<T>,
    leader: Option<T>,
    format: impl Fn(T) -> String,
) -> String {
    match (total, leader, p.group_processes) {
        (Some(t), Some(l), Some(n)) if n > 1 => {
            format!("{} ({n} processes; leader {})", format(t), format(l))
        }
        (Some(t), _, _) => format(t),
        _ => "-".to_string(),
    }
}

/// The `pm2rs list` output: a PM2-style table, then one note per instance the daemon restarted
/// for a limit and one per errored app that has a reason.
///
/// Uptime is shown only for instances that are online or launching with a start time; others show
/// `0`. Missing pid, CPU, memory or user show `-`. With `style.width` set, columns are dropped
/// (user, namespace, mode, cpu, pid, ↺, mem, uptime — in that order) until the table fits, then
/// names are truncated with `…`. An empty list gives a one-line hint instead of a table.
pub fn process_table(procs: &[ProcessInfo], style: &Style, now_us: u64) -> String {
    if procs.is_empty() {
        return "No apps. Start one with `pm2rs start <ecosystem.toml|script>`.".to_string();
    }
    let rows: Vec<Row> = procs.iter().map(|p| Row::new(p, now_us)).collect();

    let mut cols: Vec<Col> = ALL_COLS.to_vec();
    let mut name_max: Option<usize> = None;
    let mut out = match style.width {
        None => draw_list(&rows, &cols, None, style.color),
        Some(width) => {
            let width = usize::from(width);
            // Widths are computed, not measured on trial renders: one render of 100 rows costs
            // about as much as the rest of `pm2rs list` (see `table_width`).
            let fits =
                |cols: &[Col], name_max: Option<usize>| table_width(&rows, cols, name_max) <= width;
            for drop in DROP_ORDER {
                if fits(&cols, None) {
                    break;
                }
                cols.retain(|c| *c != drop);
            }
            let mut fallback = None;
            if !fits(&cols, None) {
                let excess = table_width(&rows, &cols, None) - width;
                let name_width = column_width(&rows, Col::Name, None);
                name_max = Some(name_width.saturating_sub(excess).max(MIN_NAME_WIDTH));
                if !fits(&cols, name_max) {
                    // A very narrow terminal: let comfy-table wrap cells as a last resort.
                    fallback = u16::try_from(width).ok();
                }
            }
            match fallback {
                None => draw_list(&rows, &cols, name_max, style.color),
                Some(_) => list_table(&rows, &cols, name_max, style.color, fallback).to_string(),
            }
        }
    };

    // Instances the daemon restarted for a limit say so under the table (until their next start).
    for p in procs.iter().filter(|p| p.status != Status::Errored) {
        let Some(why) = p.restart_reason.as_deref() else {
            continue;
        };
        let text = format!(
            "{} (id {}): restarted — {}",
            clean(&p.name),
            p.id,
            clean(why)
        );
        for line in wrap(&text, style.width.map(usize::from), "", "  ") {
            out.push('\n');
            out.push_str(&line);
        }
    }
    for p in procs.iter().filter(|p| p.status == Status::Errored) {
        let Some(reason) = p.reason.as_deref() else {
            continue;
        };
        let name = clean(&p.name);
        let prefix = format!("{name} (id {}): ", p.id);
        let text = format!("{prefix}errored — {}", clean(reason));
        for (i, line) in wrap(&text, style.width.map(usize::from), "", "  ")
            .into_iter()
            .enumerate()
        {
            out.push('\n');
            if i == 0 && style.color {
                // Only the word "errored" is coloured; it is on the first line unless the name is
                // absurdly long, in which case the line is left plain.
                match line.strip_prefix(prefix.as_str()) {
                    Some(rest) if rest.starts_with("errored") => {
                        out.push_str(&prefix);
                        out.push_str(RED_BOLD);
                        out.push_str("errored");
                        out.push_str(RESET);
                        out.push_str(&rest["errored".len()..]);
                    }
                    _ => out.push_str(&line),
                }
            } else {
                out.push_str(&line);
            }
        }
    }
    out
}

/// One instance's cells, in `ALL_COLS` order, with their display widths measured once.
struct Row {
    status: Status,
    cells: Vec<String>,
    widths: Vec<usize>,
}

impl Row {
    fn new(p: &ProcessInfo, now_us: u64) -> Row {
        let cells: Vec<String> = ALL_COLS.iter().map(|c| c.cell(p, now_us)).collect();
        let widths = cells.iter().map(|c| c.width()).collect();
        Row {
            status: p.status,
            cells,
            widths,
        }
    }

    /// Width of cell `idx` as drawn: names longer than `name_max` are truncated.
    fn width(&self, idx: usize, name_max: Option<usize>) -> usize {
        match name_max {
            Some(max) if idx == col_index(Col::Name) && self.widths[idx] > max => {
                truncate(&self.cells[idx], name_max).width()
            }
            _ => self.widths[idx],
        }
    }
}

/// Display width of one column of the list table: its widest cell or its header.
fn column_width(rows: &[Row], col: Col, name_max: Option<usize>) -> usize {
    let idx = col_index(col);
    rows.iter()
        .map(|row| row.width(idx, name_max))
        .chain([col.header().width()])
        .max()
        .unwrap_or(0)
}

/// Width of the widest line `list_table(rows, cols, name_max, _, None)` renders: each column is
/// its content plus one space of padding on each side and one border, plus the closing border.
fn table_width(rows: &[Row], cols: &[Col], name_max: Option<usize>) -> usize {
    1 + cols
        .iter()
        .map(|&c| column_width(rows, c, name_max) + 3)
        .sum::<usize>()
}

fn col_index(col: Col) -> usize {
    ALL_COLS.iter().position(|x| *x == col).unwrap_or(0)
}

/// Draws the list table with the given columns: the same text as `list_table(.., None)` renders
/// (a test holds them equal), written straight into one string. comfy-table builds a cell object,
/// a line vector and several strings per cell; for a 100-instance list that was about a third of
/// the whole `pm2rs list` run, so the common case is drawn here and comfy-table is kept for the
/// narrow-terminal case where cells have to wrap.
fn draw_list(rows: &[Row], cols: &[Col], name_max: Option<usize>, color: bool) -> String {
    let widths: Vec<usize> = cols
        .iter()
        .map(|&c| column_width(rows, c, name_max))
        .collect();
    // Box-drawing characters take 3 bytes; colour codes about 10 per cell.
    let line_len = 3 * (1 + widths.iter().map(|w| w + 3).sum::<usize>()) + 16 * cols.len();
    let mut out = String::with_capacity(line_len * (rows.len() + 4));
    let rule = |out: &mut String, [left, mid, right]: [char; 3]| {
        out.push(left);
        for (i, w) in widths.iter().enumerate() {
            if i > 0 {
                out.push(mid);
            }
            out.extend(std::iter::repeat_n('─', w + 2));
        }
        out.push(right);
        out.push('\n');
    };
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = (&str, usize, Option<&str>)>| {
        out.push('│');
        for ((text, text_width, sgr), w) in cells.zip(&widths) {
            out.push(' ');
            match sgr {
                Some(sgr) => {
                    out.push_str(sgr);
                    out.push_str(text);
                    out.push_str(RESET);
                }
                None => out.push_str(text),
            }
            out.extend(std::iter::repeat_n(' ', w - text_width + 1));
            out.push('│');
        }
        out.push('\n');
    };
    rule(&mut out, ['┌', '┬', '┐']);
    let header_sgr = color.then_some(CYAN_BOLD);
    line(
        &mut out,
        &mut cols
            .iter()
            .map(|c| (c.header(), c.header().width(), header_sgr)),
    );
    rule(&mut out, ['├', '┼', '┤']);
    for row in rows {
        let name = truncate(&row.cells[col_index(Col::Name)], name_max);
        line(
            &mut out,
            &mut cols.iter().map(|&c| {
                let idx = col_index(c);
                match c {
                    Col::Name => (name.as_ref(), row.width(idx, name_max), None),
                    Col::Status => (
                        row.status.as_str(),
                        row.widths[idx],
                        color.then(|| status_sgr(row.status)),
                    ),
                    _ => (row.cells[idx].as_str(), row.widths[idx], None),
                }
            }),
        );
    }
    rule(&mut out, ['└', '┴', '┘']);
    out.pop();
    out
}

/// SGR colour of a status word, the same colours as `status_cell`.
fn status_sgr(status: Status) -> &'static str {
    match status {
        Status::Online => "\x1b[32m",
        Status::Launching | Status::Stopping | Status::WaitingRestart => "\x1b[33m",
        Status::Errored => RED_BOLD,
        Status::Stopped => "\x1b[90m",
    }
}

/// Builds the list table with the given columns; `name_max` truncates names, `dynamic` lets
/// comfy-table wrap cells to that width.
fn list_table(
    rows: &[Row],
    cols: &[Col],
    name_max: Option<usize>,
    color: bool,
    dynamic: Option<u16>,
) -> Table {
    let mut table = new_table(color, dynamic);
    table.set_header(cols.iter().map(|c| {
        let cell = Cell::new(c.header());
        if color {
            cell.fg(Color::Cyan).add_attribute(Attribute::Bold)
        } else {
            cell
        }
    }));
    for row in rows {
        table.add_row(cols.iter().map(|c| {
            let text = &row.cells[col_index(*c)];
            match c {
                Col::Name => Cell::new(truncate(text, name_max).into_owned()),
                Col::Status => status_cell(row.status, color),
                _ => Cell::new(text),
            }
        }));
    }
    table
}

/// The rotation a describe page shows: each effective value and where it comes from, `10M,
/// keep 5 files, no gzip (daemon defaults)` or `1M (app config), keep 5 files (daemon default),
/// …`. Without the effective values (a daemon that did not send them) the daemon's defaults are
/// named, not shown.
fn log_rotation(l: &pm2rs_proto::LogSpec, effective: Option<pm2rs_proto::LogRotation>) -> String {
    let source = |set: bool| if set { "app config" } else { "daemon default" };
    let size = effective.map(|r| r.max_size).or(l.max_size);
    if size == Some(0) {
        return format!("off ({})", source(l.max_size.is_some()));
    }
    let size = size.map_or_else(
        || "daemon default size".to_string(),
        |b| match b {
            b if b % (1 << 20) == 0 => format!("{}M", b >> 20),
            b if b % (1 << 10) == 0 => format!("{}K", b >> 10),
            b => format!("{b} bytes"),
        },
    );
    let keep = match effective.map(|r| r.retain).or(l.retain) {
        Some(1) => "keep 1 file".to_string(),
        Some(n) => format!("keep {n} files"),
        None => "keep the daemon default count".to_string(),
    };
    let gzip = match effective.map(|r| r.compress).or(l.compress) {
        Some(true) => "gzip",
        Some(false) => "no gzip",
        None => "gzip per daemon default",
    };
    let parts = [
        (size, l.max_size.is_some()),
        (keep, l.retain.is_some()),
        (gzip.to_string(), l.compress.is_some()),
    ];
    if effective.is_none() {
        return parts.map(|(text, _)| text).join(", ");
    }
    if parts.iter().all(|(_, set)| *set == parts[0].1) {
        let all = if parts[0].1 {
            "app config"
        } else {
            "daemon defaults"
        };
        let texts = parts.map(|(text, _)| text);
        return format!("{} ({all})", texts.join(", "));
    }
    parts
        .map(|(text, set)| format!("{text} ({})", source(set)))
        .join(", ")
}

fn new_table(color: bool, dynamic: Option<u16>) -> Table {
    let mut table = Table::new();
    table.load_style(PM2_STYLE).force_no_tty();
    if color {
        table.enforce_styling();
    }
    match dynamic {
        Some(width) => {
            table
                .set_content_arrangement(ContentArrangement::Dynamic)
                .set_width(width);
        }
        None => {
            table.set_content_arrangement(ContentArrangement::Disabled);
        }
    }
    table
}

fn status_cell(status: Status, color: bool) -> Cell {
    let cell = Cell::new(status.as_str());
    if !color {
        return cell;
    }
    match status {
        Status::Online => cell.fg(Color::Green),
        Status::Launching | Status::Stopping | Status::WaitingRestart => cell.fg(Color::Yellow),
        Status::Errored => cell.fg(Color::Red).add_attribute(Attribute::Bold),
        Status::Stopped => cell.fg(Color::DarkGrey),
    }
}

/// Uptime cell: only while the instance is running and has a start time.
fn uptime_of(p: &ProcessInfo, now_us: u64) -> String {
    match (p.status, p.started_at_us) {
        (Status::Online | Status::Launching, Some(started)) => {
            format_uptime(now_us.saturating_sub(started) / 1000)
        }
        _ => "0".to_string(),
    }
}

/// The `pm2rs describe` output for one instance: a title line, a two-column key/value table, and
/// the env variable *names* (values may be secrets; `--json` shows them).
pub fn describe(d: &Described, style: &Style, now_us: u64) -> String {
    let p = &d.process;
    let s = &d.spec;
    let dash = || "-".to_string();
    let opt = |o: Option<&str>| o.map_or_else(dash, |v| clean(v).into_owned());
    let path = |p: &std::path::Path| clean(&p.display().to_string()).into_owned();

    let interpreter = match &s.interpreter {
        None => dash(),
        Some(i) => {
            let mut words = vec![i.clone()];
            words.extend(s.interpreter_args.iter().cloned());
            shell_join(&words)
        }
    };
    let started = p.started_at_us.map_or_else(dash, |us| {
        let ago = format_uptime(now_us.saturating_sub(us) / 1000);
        format!("{} ({ago} ago)", format_timestamp_utc(us))
    });
    let stop_codes = if s.stop_exit_codes.is_empty() {
        dash()
    } else {
        s.stop_exit_codes
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };

    let listen = if s.listen.is_empty() {
        dash()
    } else {
        let addrs: Vec<String> = s.listen.iter().map(ToString::to_string).collect();
        format!(
            "{} ({})",
            addrs.join(", "),
            clean(&format!("{:?}", s.cluster_socket)).to_lowercase()
        )
    };
    let rows: Vec<(&str, String)> = vec![
        ("status", p.status.as_str().to_string()),
        ("name", clean(&p.name).into_owned()),
        ("namespace", clean(&p.namespace).into_owned()),
        ("id", p.id.to_string()),
        ("instance", p.instance.to_string()),
        ("pid", p.pid.map_or_else(dash, |v| v.to_string())),
        ("script path", path(&s.script)),
        (
            "args",
            if s.args.is_empty() {
                dash()
            } else {
                shell_join(&s.args)
            },
        ),
        ("interpreter", interpreter),
        ("cwd", path(&s.cwd)),
        ("exec mode", p.exec_mode.to_string()),
        ("instances", s.instances.to_string()),
        ("restarts", p.restarts.to_string()),
        ("unstable restarts", p.unstable_restarts.to_string()),
        ("uptime", uptime_of(p, now_us)),
        ("started at", started),
        ("last exit", opt(p.last_exit.as_deref())),
        ("reason", opt(p.reason.as_deref())),
        ("restart reason", opt(p.restart_reason.as_deref())),
        (
            "cpu",
            group_figure(p, p.cpu_percent, p.leader_cpu_percent, format_cpu),
        ),
        (
            "memory",
            group_figure(p, p.memory_bytes, p.leader_memory_bytes, format_bytes),
        ),
        (
            "watch",
            if s.watch.is_empty() {
                "off".to_string()
            } else {
                let paths: Vec<String> = s.watch.iter().map(|p| path(p)).collect();
                format!(
                    "{} (ignoring {}; restart {} after the last change)",
                    paths.join(", "),
                    pm2rs_proto::defaults::IGNORE_WATCH
                        .iter()
                        .copied()
                        .chain(s.ignore_watch.iter().map(String::as_str))
                        .map(|g| clean(g).into_owned())
                        .collect::<Vec<_>>()
                        .join(", "),
                    format_duration(s.watch_delay_ms)
                )
            },
        ),
        (
            "max_memory_restart",
            s.max_memory_restart
                .map_or_else(|| "none".to_string(), format_bytes),
        ),
        ("notify status", opt(p.notify_status.as_deref())),
        ("autorestart", s.autorestart.to_string()),
        ("max_restarts", s.max_restarts.to_string()),
        ("min_uptime", format_duration(s.min_uptime_ms)),
        ("restart_delay", format_duration(s.restart_delay_ms)),
        (
            "exp_backoff",
            s.exp_backoff_restart_delay_ms
                .map_or_else(|| "off".to_string(), format_duration),
        ),
        ("stop_exit_codes", stop_codes),
        ("kill_signal", clean(&s.kill_signal).into_owned()),
        ("kill_timeout", format_duration(s.kill_timeout_ms)),
        ("listen", listen),
        ("wait_ready", s.wait_ready.to_string()),
        ("listen_timeout", format_duration(s.listen_timeout_ms)),
        ("cron_restart", cron_restart(s, d.cron_next_us, now_us)),
        ("out log path", path(&d.out_log)),
        ("error log path", path(&d.err_log)),
        (
            "combined log path",
            d.combined_log.as_deref().map_or_else(dash, path),
        ),
        ("log rotation", log_rotation(&s.logs, d.log_rotation)),
        (
            "log problems",
            if d.log_problems.is_empty() {
                "none".to_string()
            } else {
                clean(&d.log_problems.join("; ")).into_owned()
            },
        ),
        ("source file", s.source.as_deref().map_or_else(dash, path)),
        ("env profile", opt(s.env_profile.as_deref())),
    ];

    let mut table = new_table(style.color, style.width);
    for (key, value) in rows {
        let key_cell = Cell::new(key);
        let key_cell = if style.color {
            key_cell.add_attribute(Attribute::Bold)
        } else {
            key_cell
        };
        let value_cell = if key == "status" {
            status_cell(p.status, style.color)
        } else {
            Cell::new(value)
        };
        table.add_row(vec![key_cell, value_cell]);
    }

    let width = style.width.map(usize::from);
    let title = format!("Describing {} (id {})", clean(&p.name), p.id);
    let mut out = wrap(&title, width, "", "  ").join("\n");
    out.push('\n');
    out.push_str(&table.to_string());
    out.push_str("\n\nenv (values hidden; use --json)\n");
    let keys: Vec<Cow<'_, str>> = s.env.keys().map(|k| clean(k)).collect();
    let env_line = if keys.is_empty() {
        "(none)".to_string()
    } else {
        keys.join(", ")
    };
    out.push_str(&wrap(&env_line, width, "  ", "  ").join("\n"));
    out
}

/// The `cron_restart` row: the expression and its next run, or that it is off while the app is
/// stopped.
fn cron_restart(s: &AppSpec, next_us: Option<u64>, now_us: u64) -> String {
    let Some(expression) = s.cron_restart.as_deref() else {
        return "-".to_string();
    };
    let expression = clean(expression);
    match next_us {
        Some(us) => {
            let wait = format_uptime(us.saturating_sub(now_us) / 1000);
            format!(
                "{expression} (next {}, in {wait})",
                format_timestamp_utc(us)
            )
        }
        None => format!("{expression} (off until the app is started)"),
    }
}

/// PM2-like uptime: whole seconds, minutes, hours or days (`0s`, `45s`, `12m`, `3h`, `5D`).
pub fn format_uptime(ms: u64) -> String {
    let secs = ms / 1000;
    if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m", secs / 60)
    } else if secs < 86_400 {
        format!("{}h", secs / 3600)
    } else {
        format!("{}D", secs / 86_400)
    }
}

/// PM2-like memory size with binary units: `0b`, `512b`, `812.0kb`, `12.3mb`, `1.2gb`, `1.0tb`.
pub fn format_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["kb", "mb", "gb", "tb"];
    if b < 1024 {
        return format!("{b}b");
    }
    let mut value = b as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// CPU percent with at most one decimal, and none when it is whole: `0%`, `3%`, `12.5%`.
/// Negative or non-finite samples show as `0%`.
pub fn format_cpu(p: f32) -> String {
    if !p.is_finite() || p <= 0.0 {
        return "0%".to_string();
    }
    let tenths = (f64::from(p) * 10.0).round() as u64;
    match (tenths / 10, tenths % 10) {
        (whole, 0) => format!("{whole}%"),
        (whole, tenth) => format!("{whole}.{tenth}%"),
    }
}

/// A configured duration: `0ms`, `500ms`, `1.6s`, `10s`, `2m`, `1h`; exact (never rounded).
fn format_duration(ms: u64) -> String {
    // (`% d == 0` is spelled out as a match: `is_multiple_of` is newer than the MSRV, 1.85.)
    match (ms % 3_600_000, ms % 60_000, ms % 1000) {
        _ if ms < 1000 => format!("{ms}ms"),
        (0, _, _) => format!("{}h", ms / 3_600_000),
        (_, 0, _) => format!("{}m", ms / 60_000),
        (_, _, 0) => format!("{}s", ms / 1000),
        (_, _, frac) => format!(
            "{}.{}s",
            ms / 1000,
            format!("{frac:03}").trim_end_matches('0')
        ),
    }
}

/// `YYYY-MM-DD hh:mm:ss UTC` from Unix microseconds (no time zone database needed).
fn format_timestamp_utc(us: u64) -> String {
    let secs = us / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Joins words for display, single-quoting those a shell would split or interpret.
fn shell_join(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            let safe = !w.is_empty()
                && w.chars()
                    .all(|c| c.is_alphanumeric() || "-_./=:,+@%^".contains(c));
            if safe {
                clean(w).into_owned()
            } else {
                format!("'{}'", clean(&w.replace('\'', r"'\''")))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Makes text from the daemon safe to print: control characters (ESC, newlines…) are escaped.
fn clean(s: &str) -> Cow<'_, str> {
    if s.chars().any(char::is_control) {
        Cow::Owned(
            s.chars()
                .map(|c| {
                    if c.is_control() {
                        c.escape_default().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect(),
        )
    } else {
        Cow::Borrowed(s)
    }
}

/// Truncates to `max` display columns, ending with `…` when something was cut.
fn truncate(s: &str, max: Option<usize>) -> Cow<'_, str> {
    let Some(max) = max else {
        return Cow::Borrowed(s);
    };
    if s.width() <= max {
        return Cow::Borrowed(s);
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > max {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    Cow::Owned(out)
}

/// Word-wraps `text` to `width` display columns. The first line starts with `first`, continuation
/// lines with `indent`; words longer than a line are split. `None` returns one line.
fn wrap(text: &str, width: Option<usize>, first: &str, indent: &str) -> Vec<String> {
    let Some(width) = width else {
        return vec![format!("{first}{text}")];
    };
    let width = width.max(first.width() + 1).max(indent.width() + 1);
    let mut lines = Vec::new();
    let mut line = first.to_string();
    let mut used = first.width();
    let mut at_start = true;
    for word in text.split(' ') {
        let ww = word.width();
        let sep = usize::from(!at_start);
        if used + sep + ww <= width {
            if sep == 1 {
                line.push(' ');
            }
            line.push_str(word);
            used += sep + ww;
            at_start = false;
            continue;
        }
        if !at_start {
            lines.push(std::mem::take(&mut line));
            line.push_str(indent);
            used = indent.width();
        }
        for c in word.chars() {
            let cw = c.width().unwrap_or(0);
            if used + cw > width {
                lines.push(std::mem::take(&mut line));
                line.push_str(indent);
                used = indent.width();
            }
            line.push(c);
            used += cw;
        }
        at_start = false;
    }
    lines.push(line);
    lines
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use pm2rs_proto::{AppSpec, ExecMode};

    use super::*;

    fn max_line_width(text: &str) -> usize {
        text.lines().map(UnicodeWidthStr::width).max().unwrap_or(0)
    }

    const NOW_US: u64 = 1_700_000_000_000_000;

    fn proc_info(id: u32, name: &str, status: Status) -> ProcessInfo {
        let running = matches!(status, Status::Online | Status::Launching);
        ProcessInfo {
            id,
            name: name.to_string(),
            namespace: "production".to_string(),
            instance: 0,
            exec_mode: [ExecMode::Cluster, ExecMode::Fork][id as usize % 2],
            pid: running.then_some(400_000 + id),
            status,
            restarts: id * 7,
            unstable_restarts: 0,
            started_at_us: running.then_some(NOW_US - 3_723_000_000),
            cpu_percent: running.then_some(12.5),
            memory_bytes: running.then_some(123_456_789),
            leader_cpu_percent: running.then_some(2.5),
            leader_memory_bytes: running.then_some(23_456_789),
            group_processes: running.then_some(3),
            restart_reason: None,
            user: Some("deploy".to_string()),
            reason: (status == Status::Errored).then(|| "too many unstable restarts".to_string()),
            last_exit: None,
            notify_status: None,
        }
    }

    const STATUSES: [Status; 6] = [
        Status::Launching,
        Status::Online,
        Status::Stopping,
        Status::Stopped,
        Status::WaitingRestart,
        Status::Errored,
    ];

    fn twenty() -> Vec<ProcessInfo> {
        (0..20)
            .map(|i| {
                proc_info(
                    i,
                    &format!("billing-worker-{i:02}"),
                    STATUSES[i as usize % 6],
                )
            })
            .collect()
    }

    fn spec() -> AppSpec {
        AppSpec {
            args: vec!["--port".into(), "8080".into(), "hello world".into()],
            interpreter: Some("python3".into()),
            interpreter_args: vec!["-u".into()],
            env: BTreeMap::from([
                (
                    "DATABASE_URL".to_string(),
                    "postgres://u:hunter2@db".to_string(),
                ),
                ("TOKEN".to_string(), "s3cret-value".to_string()),
            ]),
            instances: 2,
            restart_delay_ms: 500,
            exp_backoff_restart_delay_ms: Some(100),
            stop_exit_codes: vec![0, 3],
            source: Some("/srv/app/ecosystem.toml".into()),
            logs: pm2rs_proto::LogSpec {
                max_size: Some(1 << 20),
                ..pm2rs_proto::LogSpec::unset()
            },
            ..AppSpec::new("api", "/srv/app/bin/api-server", "/srv/app")
        }
    }

    fn described() -> Described {
        let mut p = proc_info(3, "api", Status::Online);
        p.namespace = "default".into();
        Described {
            process: p,
            spec: spec(),
            out_log: "/home/deploy/.pm2rs/logs/api-out-3.log".into(),
            err_log: "/home/deploy/.pm2rs/logs/api-error-3.log".into(),
            combined_log: None,
            log_problems: vec!["/var/log/api.log: No space left on device (os error 28)".into()],
            log_rotation: Some(pm2rs_proto::LogRotation {
                max_size: 1 << 20,
                retain: 5,
                compress: false,
            }),
            cron_next_us: None,
        }
    }

    const PLAIN80: Style = Style {
        color: false,
        width: Some(80),
    };
    const PLAIN_WIDE: Style = Style {
        color: false,
        width: None,
    };

    fn assert_fits(text: &str, width: usize) {
        for line in text.lines() {
            assert!(
                line.width() <= width,
                "line of width {} exceeds {width}: {line:?}\n{text}",
                line.width()
            );
        }
    }

    fn header_line(text: &str) -> &str {
        text.lines().nth(1).expect("table has a header line")
    }

    #[test]
    fn twenty_processes_fit_in_80_columns() {
        let out = process_table(&twenty(), &PLAIN80, NOW_US);
        assert_fits(&out, 80);
        let header = header_line(&out);
        for kept in ["id", "name", "status"] {
            assert!(header.contains(kept), "{kept} dropped:\n{out}");
        }
        // Names of this length fit without truncation once low-priority columns are gone.
        assert!(out.contains("billing-worker-19"), "{out}");
        assert!(!out.contains('…'), "{out}");
        // Every status shows up.
        for s in STATUSES {
            assert!(out.contains(s.as_str()), "{s} missing:\n{out}");
        }
    }

    #[test]
    fn columns_are_dropped_in_priority_order() {
        let out = process_table(&twenty(), &PLAIN80, NOW_US);
        let header: Vec<&str> = header_line(&out)
            .split('│')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        // user, namespace, mode and cpu went first; the rest keep their order.
        assert_eq!(
            header,
            ["id", "name", "pid", "uptime", "↺", "status", "mem"],
            "{out}"
        );
    }

    #[test]
    fn colored_table_fits_too() {
        let style = Style {
            color: true,
            width: Some(80),
        };
        let out = process_table(&twenty(), &style, NOW_US);
        let stripped = strip_ansi(&out);
        assert_fits(&stripped, 80);
    }

    #[test]
    fn long_names_are_truncated_with_ellipsis() {
        let long = "a-really-long-application-name-that-goes-on-and-on-and-on-forever-and-ever";
        let procs = vec![proc_info(0, long, Status::Online)];
        let out = process_table(&procs, &PLAIN80, NOW_US);
        assert_fits(&out, 80);
        assert!(out.contains('…'), "{out}");
        assert!(!out.contains(long), "{out}");
        let header = header_line(&out);
        for kept in ["id", "name", "status"] {
            assert!(header.contains(kept), "{kept} dropped:\n{out}");
        }
    }

    #[test]
    fn narrow_terminal_still_fits() {
        let style = Style {
            color: false,
            width: Some(40),
        };
        let out = process_table(&twenty(), &style, NOW_US);
        assert_fits(&out, 40);
    }

    #[test]
    fn tiny_terminal_wraps_cells_as_a_last_resort() {
        let style = Style {
            color: false,
            width: Some(24),
        };
        let out = process_table(&twenty(), &style, NOW_US);
        assert_fits(&out, 24);
        assert!(out.contains("bil…"), "{out}");
    }

    #[test]
    fn wide_names_count_display_columns() {
        let procs = vec![proc_info(
            0,
            "サービス-ワーカー-日本語の名前-とても長い",
            Status::Online,
        )];
        let style = Style {
            color: false,
            width: Some(40),
        };
        let out = process_table(&procs, &style, NOW_US);
        assert_fits(&out, 40);
    }

    #[test]
    fn no_width_shows_all_columns_untruncated() {
        let long = "a-really-long-application-name-that-goes-on-and-on-and-on-forever-and-ever";
        let mut procs = twenty();
        procs.push(proc_info(20, long, Status::Online));
        let out = process_table(&procs, &PLAIN_WIDE, NOW_US);
        let header: Vec<&str> = header_line(&out)
            .split('│')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        assert_eq!(
            header,
            [
                "id",
                "name",
                "namespace",
                "mode",
                "pid",
                "uptime",
                "↺",
                "status",
                "cpu",
                "mem",
                "user"
            ]
        );
        assert!(out.contains(long));
        assert!(!out.contains('…'));
    }

    #[test]
    fn row_values_are_formatted() {
        let procs = vec![
            proc_info(1, "api", Status::Online),
            proc_info(2, "job", Status::Stopped),
        ];
        let out = process_table(&procs, &PLAIN_WIDE, NOW_US);
        let api = out.lines().find(|l| l.contains("api")).unwrap();
        let cells: Vec<&str> = api.split('│').map(str::trim).collect();
        // ["", id, name, namespace, mode, pid, uptime, ↺, status, cpu, mem, user, ""]
        assert_eq!(
            &cells[1..12],
            [
                "1",
                "api",
                "production",
                "fork",
                "400001",
                "1h",
                "7",
                "online",
                "12.5%",
                "117.7mb",
                "deploy"
            ]
        );
        let job = out.lines().find(|l| l.contains("job")).unwrap();
        let cells: Vec<&str> = job.split('│').map(str::trim).collect();
        assert_eq!(cells[5], "-", "pid of a stopped app");
        assert_eq!(cells[6], "0", "uptime of a stopped app");
    }

    #[test]
    fn uptime_is_zero_when_stopped_even_with_a_start_time() {
        let mut p = proc_info(1, "api", Status::Stopped);
        p.started_at_us = Some(NOW_US - 60_000_000);
        assert_eq!(uptime_of(&p, NOW_US), "0");
        p.status = Status::Online;
        assert_eq!(uptime_of(&p, NOW_US), "1m");
    }

    #[test]
    fn empty_list_is_a_friendly_line() {
        let out = process_table(&[], &PLAIN80, NOW_US);
        assert!(out.contains("pm2rs start"), "{out}");
        assert!(!out.contains('│'));
        assert_eq!(out.lines().count(), 1);
    }

    #[test]
    fn no_escape_bytes_without_color() {
        let mut procs = twenty();
        procs[0].name = "evil\x1b[31mname".into();
        procs[5].reason = Some("spawn failed:\x1b[2J\nsecond line".into());
        let out = process_table(&procs, &PLAIN80, NOW_US);
        assert!(!out.contains('\x1b'), "{out:?}");
        assert!(out.contains(r"\u{1b}"), "{out}");
        let wide = process_table(&procs, &PLAIN_WIDE, NOW_US);
        assert!(!wide.contains('\x1b'));
        let d = describe(&described(), &PLAIN80, NOW_US);
        assert!(!d.contains('\x1b'));
    }

    #[test]
    fn escapes_present_with_color() {
        let style = Style {
            color: true,
            width: Some(120),
        };
        let out = process_table(&twenty(), &style, NOW_US);
        assert!(out.contains('\x1b'), "{out}");
        assert!(out.contains(&format!("{RED_BOLD}errored{RESET}")), "{out}");
        let d = describe(&described(), &style, NOW_US);
        assert!(d.contains('\x1b'));
    }

    #[test]
    fn status_colors() {
        let style = Style {
            color: true,
            width: None,
        };
        let online = process_table(&[proc_info(0, "a", Status::Online)], &style, NOW_US);
        assert!(
            online.contains("\x1b[38;5;10m") || online.contains("\x1b[32m"),
            "{online:?}"
        );
        let errored = process_table(&[proc_info(0, "a", Status::Errored)], &style, NOW_US);
        let status_line = errored.lines().nth(3).unwrap_or_default();
        assert!(
            status_line.contains(&format!("{RED_BOLD}errored{RESET}")),
            "bold red: {errored:?}"
        );
    }

    #[test]
    fn errored_reason_lines() {
        let out = process_table(&twenty(), &PLAIN80, NOW_US);
        let notes: Vec<&str> = out.lines().filter(|l| l.contains(": errored — ")).collect();
        // Ids 5, 11 and 17 are errored.
        assert_eq!(
            notes,
            [
                "billing-worker-05 (id 5): errored — too many unstable restarts",
                "billing-worker-11 (id 11): errored — too many unstable restarts",
                "billing-worker-17 (id 17): errored — too many unstable restarts",
            ]
        );
        // After the table.
        let last_border = out.lines().position(|l| l.starts_with('└')).unwrap();
        let first_note = out.lines().position(|l| l.contains("errored —")).unwrap();
        assert!(first_note > last_border);
        // Errored without a reason: no note.
        let mut p = proc_info(3, "api", Status::Errored);
        p.reason = None;
        assert!(!process_table(&[p], &PLAIN80, NOW_US).contains('—'));
    }

    #[test]
    fn long_reason_wraps_within_width() {
        let mut p = proc_info(3, "api", Status::Errored);
        let reason = "could not spawn /srv/app/bin/some-very-long-binary-name-here: No such file or directory (os error 2); check the script path in /srv/app/ecosystem.toml";
        p.reason = Some(reason.into());
        let out = process_table(&[p], &PLAIN80, NOW_US);
        assert_fits(&out, 80);
        let joined: String = out
            .lines()
            .skip_while(|l| !l.starts_with("api (id 3)"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(joined.contains(reason), "{out}");
    }

    #[test]
    fn format_uptime_cases() {
        assert_eq!(format_uptime(0), "0s");
        assert_eq!(format_uptime(999), "0s");
        assert_eq!(format_uptime(45_000), "45s");
        assert_eq!(format_uptime(59_999), "59s");
        assert_eq!(format_uptime(60_000), "1m");
        assert_eq!(format_uptime(12 * 60_000 + 5_000), "12m");
        assert_eq!(format_uptime(3 * 3_600_000 + 1), "3h");
        assert_eq!(format_uptime(86_399_999), "23h");
        assert_eq!(format_uptime(5 * 86_400_000), "5D");
    }

    #[test]
    fn format_bytes_cases() {
        assert_eq!(format_bytes(0), "0b");
        assert_eq!(format_bytes(1023), "1023b");
        assert_eq!(format_bytes(1024), "1.0kb");
        assert_eq!(format_bytes(812 * 1024), "812.0kb");
        assert_eq!(format_bytes(12_897_485), "12.3mb");
        assert_eq!(format_bytes(1_288_490_189), "1.2gb");
        assert_eq!(format_bytes(1024u64.pow(4)), "1.0tb");
        assert_eq!(format_bytes(u64::MAX), "16777216.0tb");
    }

    #[test]
    fn format_cpu_cases() {
        assert_eq!(format_cpu(0.0), "0%");
        assert_eq!(format_cpu(12.5), "12.5%");
        assert_eq!(format_cpu(3.0), "3%");
        assert_eq!(format_cpu(12.46), "12.5%");
        assert_eq!(format_cpu(0.04), "0%");
        assert_eq!(format_cpu(250.0), "250%");
        assert_eq!(format_cpu(-1.0), "0%");
        assert_eq!(format_cpu(f32::NAN), "0%");
    }

    #[test]
    fn format_duration_cases() {
        assert_eq!(format_duration(0), "0ms");
        assert_eq!(format_duration(500), "500ms");
        assert_eq!(format_duration(1600), "1.6s");
        assert_eq!(format_duration(1650), "1.65s");
        assert_eq!(format_duration(1001), "1.001s");
        assert_eq!(format_duration(10_000), "10s");
        assert_eq!(format_duration(90_000), "90s");
        assert_eq!(format_duration(120_000), "2m");
        assert_eq!(format_duration(3_600_000), "1h");
    }

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(format_timestamp_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_timestamp_utc(NOW_US), "2023-11-14 22:13:20 UTC");
        assert_eq!(
            format_timestamp_utc(951_782_400_000_000),
            "2000-02-29 00:00:00 UTC"
        );
    }

    #[test]
    fn describe_shows_spec_and_hides_env_values() {
        let out = describe(&described(), &PLAIN80, NOW_US);
        assert_fits(&out, 80);
        for needle in [
            "/srv/app/bin/api-server",
            "--port 8080 'hello world'",
            "python3 -u",
            "/srv/app/ecosystem.toml",
            "api-out-3.log",
            "api-error-3.log",
            "1M (app config), keep 5 files",
            "No space left on device",
            "1.6s",
            "500ms",
            "100ms",
            "0, 3",
            "SIGINT",
            "online",
            "unstable restarts",
            "2023-11-14 21:11:17 UTC (1h ago)",
            "env (values hidden; use --json)",
            "DATABASE_URL, TOKEN",
        ] {
            assert!(out.contains(needle), "missing {needle:?}:\n{out}");
        }
        assert!(!out.contains("hunter2"), "{out}");
        assert!(!out.contains("s3cret-value"), "{out}");
    }

    /// The value of row `key` of a describe sheet drawn without wrapping.
    fn sheet_row(out: &str, key: &str) -> String {
        out.lines()
            .find_map(|l| {
                let cells: Vec<&str> = l.split('│').map(str::trim).collect();
                (cells.len() == 4 && cells[1] == key).then(|| cells[2].to_string())
            })
            .unwrap_or_else(|| panic!("no row {key}:\n{out}"))
    }

    #[test]
    fn describe_shows_the_effective_log_rotation_and_where_it_comes_from() {
        let rotation = |d: &Described| sheet_row(&describe(d, &PLAIN_WIDE, NOW_US), "log rotation");
        let mut d = described();
        assert_eq!(
            rotation(&d),
            "1M (app config), keep 5 files (daemon default), no gzip (daemon default)"
        );
        d.spec.logs.max_size = None;
        d.log_rotation = Some(pm2rs_proto::LogRotation {
            max_size: 10 << 20,
            retain: 5,
            compress: false,
        });
        assert_eq!(rotation(&d), "10M, keep 5 files, no gzip (daemon defaults)");
        d.spec.logs = pm2rs_proto::LogSpec {
            max_size: Some(1536),
            retain: Some(1),
            compress: Some(true),
            ..pm2rs_proto::LogSpec::unset()
        };
        d.log_rotation = Some(pm2rs_proto::LogRotation {
            max_size: 1536,
            retain: 1,
            compress: true,
        });
        assert_eq!(rotation(&d), "1536 bytes, keep 1 file, gzip (app config)");
        d.spec.logs.max_size = Some(0);
        d.log_rotation = d
            .log_rotation
            .map(|r| pm2rs_proto::LogRotation { max_size: 0, ..r });
        assert_eq!(rotation(&d), "off (app config)");
        // A reply without the effective values: the app's own, the daemon's named.
        d.spec.logs = pm2rs_proto::LogSpec::unset();
        d.log_rotation = None;
        assert_eq!(
            rotation(&d),
            "daemon default size, keep the daemon default count, gzip per daemon default"
        );
        let old: Described = serde_json::from_value({
            let mut v = serde_json::to_value(described()).unwrap();
            v.as_object_mut().unwrap().remove("log_rotation");
            v
        })
        .unwrap();
        assert_eq!(old.log_rotation, None);
    }

    #[test]
    fn describe_shows_the_cron_restart_and_its_next_run() {
        let row = |d: &Described| sheet_row(&describe(d, &PLAIN_WIDE, NOW_US), "cron_restart");
        let mut d = described();
        assert_eq!(row(&d), "-");
        d.spec.cron_restart = Some("0 3 * * *".into());
        d.cron_next_us = Some(NOW_US + 5 * 3_600_000_000);
        assert_eq!(
            row(&d),
            format!(
                "0 3 * * * (next {}, in 5h)",
                format_timestamp_utc(NOW_US + 5 * 3_600_000_000)
            )
        );
        d.cron_next_us = None;
        assert_eq!(row(&d), "0 3 * * * (off until the app is started)");
        // A daemon that did not say: off as far as the reply goes.
        let old: Described = serde_json::from_value({
            let mut v = serde_json::to_value(described()).unwrap();
            v.as_object_mut().unwrap().remove("cron_next_us");
            v
        })
        .unwrap();
        assert_eq!(old.cron_next_us, None);
    }

    #[test]
    fn describe_key_value_rows() {
        let out = describe(&described(), &PLAIN_WIDE, NOW_US);
        let row = |key: &str| sheet_row(&out, key);
        assert_eq!(row("status"), "online");
        assert_eq!(row("id"), "3");
        assert_eq!(row("pid"), "400003");
        assert_eq!(row("uptime"), "1h");
        assert_eq!(row("min_uptime"), "1s");
        assert_eq!(row("kill_timeout"), "1.6s");
        assert_eq!(row("exp_backoff"), "100ms");
        assert_eq!(row("last exit"), "-");
        assert_eq!(row("cwd"), "/srv/app");
    }

    #[test]
    fn describe_wraps_long_paths_at_80() {
        let mut d = described();
        d.spec.script = format!("/srv/{}/server.py", "deeply-nested-directory/".repeat(8)).into();
        d.spec.env = (0..40)
            .map(|i| (format!("SOME_ENV_VARIABLE_{i}"), "v".to_string()))
            .collect();
        let out = describe(&d, &PLAIN80, NOW_US);
        assert_fits(&out, 80);
        let wide = describe(&d, &PLAIN_WIDE, NOW_US);
        assert!(wide.contains(&d.spec.script.display().to_string()));
    }

    #[test]
    fn describe_without_env_or_optionals() {
        let mut d = described();
        d.spec.env.clear();
        d.spec.interpreter = None;
        d.spec.source = None;
        d.spec.exp_backoff_restart_delay_ms = None;
        let out = describe(&d, &PLAIN80, NOW_US);
        assert!(out.contains("(none)"), "{out}");
        assert!(out.contains("off"), "{out}");
    }

    #[test]
    fn computed_table_width_matches_the_rendered_table() {
        let mut procs = twenty();
        procs[3].name = "日本語の名前-worker".to_string();
        procs[4].user = None;
        let rows: Vec<Row> = procs.iter().map(|p| Row::new(p, NOW_US)).collect();
        let mut cols = ALL_COLS.to_vec();
        for drop in [None].into_iter().chain(DROP_ORDER.map(Some)) {
            cols.retain(|c| Some(*c) != drop);
            for name_max in [None, Some(4), Some(7), Some(12), Some(100)] {
                for color in [false, true] {
                    let text = list_table(&rows, &cols, name_max, color, None).to_string();
                    assert_eq!(
                        table_width(&rows, &cols, name_max),
                        max_line_width(&strip_ansi(&text)),
                        "{cols:?} {name_max:?}\n{text}"
                    );
                    let drawn = draw_list(&rows, &cols, name_max, color);
                    if color {
                        assert_eq!(strip_ansi(&drawn), strip_ansi(&text));
                    } else {
                        assert_eq!(drawn, text);
                    }
                }
            }
        }
    }

    #[test]
    fn truncate_and_wrap_helpers() {
        assert_eq!(truncate("abcdef", Some(4)), "abc…");
        assert_eq!(truncate("abcd", Some(4)), "abcd");
        assert_eq!(truncate("日本語", Some(4)), "日…");
        assert_eq!(wrap("aa bb cc", Some(5), "", " "), ["aa bb", " cc"]);
        assert_eq!(wrap("abcdefgh", Some(4), "", ""), ["abcd", "efgh"]);
        assert_eq!(wrap("aa bb", Some(5), "  ", "  "), ["  aa", "  bb"]);
        assert_eq!(wrap("aa bb", None, "  ", "  "), ["  aa bb"]);
    }

    fn strip_ansi(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }
}
