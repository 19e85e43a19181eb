//! The shared bench harness: one process manager (the real `pm2rs` binary, or PM2 for `--compare
//! pm2`), one fresh home (`PM2RS_HOME` / `PM2_HOME`), and a guarantee that nothing it started
//! outlives it.
//!
//! [`Harness::cli`] runs a manager-neutral [`Cli`] action (spelled for the harness's manager);
//! [`Harness::run`] runs raw arguments (pm2rs-only suites use it). Both time one CLI command with a deadline and measures its wall time from just before
//! `spawn` to the moment the kernel reports the exit (`waitid` with `WNOWAIT`, so the measurement
//! includes neither pipe draining nor our own bookkeeping). Output goes to anonymous temp files, not
//! pipes: a daemon started by the CLI inherits them and would otherwise hold a pipe open forever.
//!
//! [`Children`] finds a daemon's app processes by scanning `/proc`, independently of either manager's
//! own bookkeeping, so "the new process runs" means the same thing for both.
//!
//! Cleanup happens in `Drop`, so it also runs on `?` and on panic: `<manager> kill`, then SIGKILL for
//! the daemon and for every instance pid the bench ever saw, if they are still alive. A pid is only
//! signalled if its start time still matches the one recorded when it was seen, so a reused pid is
//! never hit. SIGINT/SIGTERM only set a flag ([`interrupted`]) that the polling loops turn into an
//! error, so Ctrl-C also ends in the same cleanup.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Seek};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;
use pm2rs_proto::ProcessInfo;
use tempfile::TempDir;

use super::manager::{App, Cli, Instance, Kind, Manager};

/// How long one CLI command may take before it is killed and counted as a failure.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Set by SIGINT/SIGTERM; checked by every polling loop.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set a flag instead of killing the bench, so cleanup still runs.
/// Handlers are reset on `exec`, so the CLI, the daemon and the apps keep default dispositions.
pub fn catch_interrupts() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe { signal::sigaction(sig, &action) }
            .with_context(|| format!("installing a {sig} handler"))?;
    }
    Ok(())
}

/// Fails if SIGINT or SIGTERM arrived.
pub fn interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// The current wall clock in Unix microseconds (the clock of `ProcessInfo::started_at_us`).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Calls `probe` until it yields a value, failing after `timeout` (or on interrupt), sleeping
/// `interval` between attempts. The sleep only paces the polling; no figure is derived from it.
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        interrupted()?;
        if let Some(value) = probe()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        if !interval.is_zero() {
            thread::sleep(interval);
        }
    }
}

/// A process identified by pid *and* start time, so a reused pid is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcId {
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: start time in clock ticks since boot.
    start_ticks: u64,
}

impl ProcId {
    /// The process currently holding `pid`, if any.
    pub fn of(pid: u32) -> Option<ProcId> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let start_ticks = parse_start_ticks(&stat)?;
        Some(ProcId { pid, start_ticks })
    }

    /// Whether this very process still exists (a zombie counts).
    pub fn is_alive(self) -> bool {
        ProcId::of(self.pid) == Some(self)
    }

    /// Whether this very process still runs: it exists and is not a zombie (a killed daemon has
    /// released everything, its lock included, once it is a zombie; reaping it is its parent's
    /// business, or init's, and can take seconds in a container whose init reaps lazily).
    pub fn is_running(self) -> bool {
        self.is_alive()
            && std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).is_ok_and(|stat| {
                stat.rfind(')')
                    .and_then(|end| stat[end + 1..].split_whitespace().next())
                    .is_some_and(|state| state != "Z")
            })
    }

    /// SIGKILLs the process if it is still this one.
    pub fn kill_if_alive(self) {
        if self.is_alive() {
            let _ = signal::kill(pid_of(self.pid), Signal::SIGKILL);
        }
    }
}

/// Start time (field 22) from the text of `/proc/<pid>/stat`. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted after its last `)`.
fn parse_start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")" come fields 3 (state), 4, ...; field 22 is the 20th of them.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The fields of `/proc/<pid>/stat` that [`Children`] reads.
#[derive(Debug, PartialEq, Eq)]
struct StatFields<'a> {
    comm: &'a str,
    state: char,
    ppid: u32,
    start_ticks: u64,
}

fn parse_stat(stat: &str) -> Option<StatFields<'_>> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    let mut rest = stat[close + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(StatFields {
        comm,
        state,
        ppid,
        start_ticks: parse_start_ticks(stat)?,
    })
}

/// CPU time (`utime + stime`, fields 14 and 15 of `/proc/<pid>/stat`) of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).with_context(|| format!("no utime/stime in /proc/{pid}/stat"))
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    // After ")": field 3 is the first; utime (14) is the 12th, stime (15) the 13th.
    let utime: u64 = rest.nth(11)?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of [`cpu_ticks`].
pub fn clock_ticks_per_second() -> Result<u64> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .context("sysconf(_SC_CLK_TCK)")?
        .context("_SC_CLK_TCK is not defined")?;
    u64::try_from(ticks).context("negative _SC_CLK_TCK")
}

/// The live children of one process that run a given program, found by scanning `/proc` (the
/// kernel may not offer `/proc/<pid>/task/<tid>/children`). A child counts once its command name
/// is the program's, i.e. once it has `exec`ed it; zombies (killed, not yet reaped) don't count.
/// Processes known not to be children are remembered while their pid lives, so a scan only reads
/// the `stat` of processes it has not classified yet and of the children.
pub struct Children {
    parent: ProcId,
    comm: String,
    others: HashSet<u32>,
}

impl Children {
    /// Children of `parent` whose command name (`/proc/<pid>/comm`, at most 15 bytes) is `comm`.
    pub fn new(parent: ProcId, comm: &str) -> Children {
        Children {
            parent,
            comm: comm.chars().take(15).collect(),
            others: HashSet::new(),
        }
    }

    /// The matching children right now, with their start times, except the pids in `known`, which
    /// are skipped without reading their `stat` (the cheap scan for "has a new child appeared?").
    pub fn scan_except(&mut self, known: &HashSet<u32>) -> Result<Vec<ProcId>> {
        let mut found = Vec::new();
        let mut others = HashSet::with_capacity(self.others.len());
        for entry in fs::read_dir("/proc").context("listing /proc")? {
            let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            // A pid is classified once and trusted while it stays listed from one scan to the
            // next: pids are handed out in increasing order, so one that ends is not reused by
            // a new child of the daemon within the milliseconds between two scans.
            if self.others.contains(&pid) {
                others.insert(pid);
                continue;
            }
            if known.contains(&pid) {
                continue;
            }
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue; // it ended meanwhile
            };
            let Some(fields) = parse_stat(&stat) else {
                continue;
            };
            if fields.ppid != self.parent.pid {
                others.insert(pid);
            } else if fields.comm == self.comm && !matches!(fields.state, 'Z' | 'X') {
                found.push(ProcId {
                    pid,
                    start_ticks: fields.start_ticks,
                });
            }
        }
        self.others = others;
        Ok(found)
    }
}

/// Resident set size in bytes of `pid`, from `VmRSS` in `/proc/<pid>/status`.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS line in /proc/{pid}/status"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(value * 1024),
        Some(_) => None,
    }
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

/// What one CLI command did.
#[derive(Debug)]
pub struct Ran {
    pub status: ExitStatus,
    /// Empty when stdout was discarded.
    pub stdout: String,
    pub stderr: String,
    /// From just before `spawn` until the kernel reported the exit.
    pub elapsed: Duration,
}

/// Where a command's stdout goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdout {
    Capture,
    /// `/dev/null`, for timing commands whose output we don't need.
    Discard,
}

/// One manager with a fresh home, driven through its real CLI. Dropping it stops everything it
/// started.
pub struct Harness {
    manager: Manager,
    /// Holds `home/` and the scenarios' scratch files; removed on drop, after cleanup.
    dir: TempDir,
    home: PathBuf,
    /// The daemon, once [`Harness::daemon`] has seen it.
    daemon: Option<ProcId>,
    /// Every instance pid seen in a listing or a [`Children`] scan, for cleanup.
    seen: HashMap<u32, ProcId>,
    /// What a scenario leaves for later ones of its suite; dropped with the harness (after the
    /// cleanup above), so anything that stops a process on drop stops it then.
    pub stash: Vec<Box<dyn std::any::Any>>,
}

impl Harness {
    /// A harness for `manager` with an empty home (mode 0700, as pm2rs expects). Starts nothing.
    pub fn new(manager: &Manager) -> Result<Harness> {
        let dir = tempfile::Builder::new()
            .prefix("pm2rs-bench-")
            .tempdir()
            .context("creating the bench temp dir")?;
        let home = dir.path().join("home");
        fs::create_dir(&home).with_context(|| format!("creating {}", home.display()))?;
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", home.display()))?;
        Ok(Harness {
            manager: manager.clone(),
            dir,
            home,
            daemon: None,
            seen: HashMap::new(),
            stash: Vec::new(),
        })
    }

    /// A directory for scenario files (ecosystems, scripts); removed with the harness.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// The manager's home (`PM2RS_HOME` / `PM2_HOME`), for suites that read its files (logs).
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Which manager this harness drives.
    pub fn kind(&self) -> Kind {
        self.manager.kind
    }

    /// Runs a manager-neutral action, spelled for this harness's manager; like [`Harness::run`].
    pub fn cli(&self, action: Cli<'_>, stdout: Stdout) -> Result<Ran> {
        let args = self.manager.args(action);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args, stdout)
    }

    /// Writes `<stem>.toml` (pm2rs) or `<stem>.json` (PM2) starting `apps` in the scratch dir;
    /// returns its path.
    pub fn write_ecosystem(&self, stem: &str, apps: &[App<'_>]) -> Result<String> {
        let (extension, text) = self.manager.ecosystem(apps);
        let path = self.scratch().join(format!("{stem}.{extension}"));
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path.to_string_lossy().into_owned())
    }

    /// Every instance, from the manager's JSON listing ([`Cli::ListJson`]); remembers every pid it
    /// shows for cleanup.
    pub fn instances(&mut self) -> Result<Vec<Instance>> {
        let ran = self.cli(Cli::ListJson, Stdout::Capture)?;
        let list = self
            .manager
            .parse_instances(&ran.stdout)
            .with_context(|| format!("listing printed: {}", head(&ran.stdout, 300)))?;
        for pid in list.iter().filter_map(|p| p.pid) {
            self.remember(pid);
        }
        Ok(list)
    }

    /// The matching children of the daemon right now (see [`Children::scan_except`]); remembers them for cleanup.
    pub fn scan(&mut self, children: &mut Children) -> Result<Vec<ProcId>> {
        self.scan_except(children, &HashSet::new())
    }

    /// [`Children::scan_except`]; remembers what it finds for cleanup.
    pub fn scan_except(
        &mut self,
        children: &mut Children,
        known: &HashSet<u32>,
    ) -> Result<Vec<ProcId>> {
        let found = children.scan_except(known)?;
        for id in &found {
            self.seen.entry(id.pid).or_insert(*id);
        }
        Ok(found)
    }

    fn remember(&mut self, pid: u32) {
        if !self.seen.contains_key(&pid)
            && let Some(id) = ProcId::of(pid)
        {
            self.seen.insert(pid, id);
        }
    }

    /// Runs `pm2rs <args>` with this home and a deadline; fails if it can't run, times out, or exits
    /// non-zero (with its stderr in the error).
    pub fn run(&self, args: &[&str], stdout: Stdout) -> Result<Ran> {
        let ran = self.run_unchecked(args, stdout, COMMAND_TIMEOUT)?;
        // Ctrl-C reaches the CLI too; say so rather than blame the CLI.
        interrupted()?;
        if !ran.status.success() {
            bail!(
                "`{} {}` failed ({}): {}",
                self.manager.kind.label(),
                args.join(" "),
                ran.status,
                tail(&ran.stderr, 20)
            );
        }
        Ok(ran)
    }

    /// Like [`Harness::run`] but returns whatever the command did, success or not.
    pub fn run_unchecked(&self, args: &[&str], stdout: Stdout, timeout: Duration) -> Result<Ran> {
        let err_file = tempfile::tempfile_in(self.dir.path())?;
        let out_file = match stdout {
            Stdout::Capture => Some(tempfile::tempfile_in(self.dir.path())?),
            Stdout::Discard => None,
        };
        let mut command = Command::new(&self.manager.program);
        command
            .args(args)
            .env(self.manager.home_env(), &self.home)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stderr(err_file.try_clone()?)
            .stdout(match &out_file {
                Some(file) => Stdio::from(file.try_clone()?),
                None => Stdio::null(),
            });

        // The watchdog kills the child if it outlives `timeout`. It only ever signals an unreaped
        // child: we reap after joining it, so the pid cannot have been reused.
        let (tx, rx) = mpsc::channel::<Pid>();
        let watchdog = thread::spawn(move || {
            let Ok(pid) = rx.recv() else { return false };
            match rx.recv_timeout(timeout) {
                Err(RecvTimeoutError::Timeout) => {
                    let _ = signal::kill(pid, Signal::SIGKILL);
                    true
                }
                _ => false,
            }
        });

        let started = Instant::now();
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                drop(tx);
                let _ = watchdog.join();
                return Err(e)
                    .with_context(|| format!("running {}", self.manager.program.display()));
            }
        };
        let pid = pid_of(child.id());
        let _ = tx.send(pid);
        let waited = loop {
            match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Err(Errno::EINTR) => continue,
                other => break other,
            }
        };
        let elapsed = started.elapsed();
        drop(tx);
        let timed_out = watchdog.join().unwrap_or(false);
        let status = child.wait()?;
        waited.context("waiting for the CLI")?;
        let stderr = read_back(err_file)?;
        if timed_out {
            bail!(
                "`{} {}` did not finish within {timeout:?} and was killed: {}",
                self.manager.kind.label(),
                args.join(" "),
                tail(&stderr, 20)
            );
        }
        let stdout = match out_file {
            Some(file) => read_back(file)?,
            None => String::new(),
        };
        Ok(Ran {
            status,
            stdout,
            stderr,
            elapsed,
        })
    }

    /// `pm2rs list --json`, parsed, with every field pm2rs reports (pm2rs-only suites; a suite that
    /// also runs against PM2 uses [`Harness::instances`]); remembers every pid it shows for cleanup.
    #[allow(
        dead_code,
        reason = "harness API for the suites of other files (logs, cluster)"
    )]
    pub fn list_json(&mut self) -> Result<Vec<ProcessInfo>> {
        if self.manager.kind != Kind::Pm2rs {
            bail!("list_json is pm2rs-only; use Harness::instances");
        }
        let ran = self.run(&["list", "--json"], Stdout::Capture)?;
        let list: Vec<ProcessInfo> = serde_json::from_str(&ran.stdout).with_context(|| {
            format!(
                "`pm2rs list --json` did not print a JSON array of ProcessInfo: {}",
                head(&ran.stdout, 300)
            )
        })?;
        for pid in list.iter().filter_map(|p| p.pid) {
            self.remember(pid);
        }
        Ok(list)
    }

    /// The daemon, from its pid file in the home (waiting up to 5 s for the file to appear).
    pub fn daemon(&mut self) -> Result<ProcId> {
        let path = self.home.join(self.manager.pid_file());
        let pid = poll_until(
            &format!("{} to name a live process", path.display()),
            Duration::from_secs(5),
            Duration::from_millis(5),
            || Ok(read_pid(&path).and_then(ProcId::of)),
        )?;
        self.daemon = Some(pid);
        Ok(pid)
    }

    /// Records `id` for cleanup (a pid the bench is about to act on).
    #[allow(
        dead_code,
        reason = "harness API for the suites of other files (logs, cluster)"
    )]
    pub fn track(&mut self, id: ProcId) {
        self.seen.insert(id.pid, id);
    }

    /// Stops everything this harness may have started. Errors are printed, not returned: this runs
    /// from `Drop`, possibly while unwinding.
    fn cleanup(&mut self) {
        let pid_file = self.home.join(self.manager.pid_file());
        let mut daemons: Vec<ProcId> = self
            .daemon
            .into_iter()
            .chain(read_pid(&pid_file).and_then(ProcId::of))
            .collect();
        daemons.dedup();
        // Anything in the home means a CLI ran and may have started a daemon.
        let ever_started = !daemons.is_empty()
            || fs::read_dir(&self.home).is_ok_and(|mut entries| entries.next().is_some());
        if ever_started {
            let kill = self.manager.args(Cli::Kill);
            let kill: Vec<&str> = kill.iter().map(String::as_str).collect();
            match self.run_unchecked(&kill, Stdout::Discard, Duration::from_secs(30)) {
                Ok(ran) if ran.status.success() => {}
                Ok(ran) => eprintln!(
                    "bench cleanup: `{} kill` failed ({}): {}",
                    self.manager.kind.label(),
                    ran.status,
                    tail(&ran.stderr, 5)
                ),
                Err(e) => eprintln!(
                    "bench cleanup: `{} kill` failed: {e:#}",
                    self.manager.kind.label()
                ),
            }
        }
        // Give the daemon a moment to stop its apps and exit by itself, then insist.
        let deadline = Instant::now() + Duration::from_secs(5);
        while daemons.iter().any(|d| d.is_alive()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        for daemon in &daemons {
            if daemon.is_alive() {
                eprintln!(
                    "bench cleanup: daemon {} still alive after `{} kill`; sending SIGKILL",
                    daemon.pid,
                    self.manager.kind.label()
                );
                daemon.kill_if_alive();
            }
        }
        let survivors: Vec<&ProcId> = self.seen.values().filter(|p| p.is_alive()).collect();
        if !survivors.is_empty() {
            eprintln!(
                "bench cleanup: {} app process(es) outlived the daemon; sending SIGKILL",
                survivors.len()
            );
            for process in survivors {
                process.kill_if_alive();
            }
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// The pid in a pid file, if it holds one.
fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_back(mut file: File) -> Result<String> {
    file.rewind()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The last `lines` lines of `text`, trimmed, for error messages.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim().lines().collect();
    let text = all[all.len().saturating_sub(lines)..].join("\n");
    if text.is_empty() {
        "(no stderr)".to_string()
    } else {
        text
    }
}

/// At most `chars` characters of `text`, for error messages.
fn head(text: &str, chars: usize) -> String {
    let mut out: String = text.chars().take(chars).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    if out.trim().is_empty() {
        "(empty output)".to_string()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_are_counted_after_the_command_name() {
        let stat = "4242 (we ird) cmd)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_start_ticks(stat), Some(987_654));
        assert_eq!(parse_start_ticks("12 (x) S 1 2"), None);
    }

    #[test]
    fn stat_fields_and_cpu_time() {
        let stat = "4242 (sle ep)) Z 77 4242 4242 0 -1 4194560 100 0 0 0 13 8 0 0 20 0 1 0 987654 1000 200";
        let fields = parse_stat(stat).unwrap();
        assert_eq!(fields.comm, "sle ep)");
        assert_eq!((fields.state, fields.ppid), ('Z', 77));
        assert_eq!(fields.start_ticks, 987_654);
        assert_eq!(parse_cpu_ticks(stat), Some(21));
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn children_are_found_once_they_run_the_program() {
        let me = ProcId::of(std::process::id()).unwrap();
        let mut children = Children::new(me, "sleep");
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let found = poll_until(
            "the sleep child",
            Duration::from_secs(10),
            Duration::ZERO,
            || {
                Ok(children
                    .scan_except(&HashSet::new())?
                    .into_iter()
                    .find(|p| p.pid == pid))
            },
        );
        let _ = child.kill();
        // Killed but not reaped: a zombie, which must not count as running.
        let zombie = poll_until(
            "the zombie",
            Duration::from_secs(10),
            Duration::ZERO,
            || {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
                Ok((parse_stat(&stat).map(|f| f.state) == Some('Z')).then_some(()))
            },
        );
        let after = children.scan_except(&HashSet::new()).unwrap();
        let _ = child.wait();
        assert!(found.is_ok(), "{found:?}");
        assert!(zombie.is_ok(), "{zombie:?}");
        assert!(after.iter().all(|p| p.pid != pid), "{after:?}");
        assert!(cpu_ticks(me.pid).is_ok());
        assert!(clock_ticks_per_second().unwrap() > 0);
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tpm2rs\nVmPeak:\t  9000 kB\nVmRSS:\t    3072 kB\nThreads:\t2\n";
        assert_eq!(parse_vm_rss(status), Some(3072 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn our_own_process_is_alive_and_measurable() {
        let me = ProcId::of(std::process::id()).expect("own /proc entry");
        assert!(me.is_alive());
        assert!(rss_bytes(me.pid).unwrap() > 0);
    }
}
