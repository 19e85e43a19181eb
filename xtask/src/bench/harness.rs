//! The shared bench harness: one real `pm2rs` binary, one fresh `PM2RS_HOME`, and a guarantee that
//! nothing it started outlives it.
//!
//! [`Harness::run`] runs one CLI command with a deadline and measures its wall time from just before
//! `spawn` to the moment the kernel reports the exit (`waitid` with `WNOWAIT`, so the measurement
//! includes neither pipe draining nor our own bookkeeping). Output goes to anonymous temp files, not
//! pipes: a daemon started by the CLI inherits them and would otherwise hold a pipe open forever.
//!
//! Cleanup happens in `Drop`, so it also runs on `?` and on panic: `pm2rs kill`, then SIGKILL for
//! the daemon and for every instance pid the bench ever saw, if they are still alive. A pid is only
//! signalled if its start time still matches the one recorded when it was seen, so a reused pid is
//! never hit. SIGINT/SIGTERM only set a flag ([`interrupted`]) that the polling loops turn into an
//! error, so Ctrl-C also ends in the same cleanup.

use std::collections::HashMap;
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
use pm2rs_proto::{HOME_ENV, PID_FILE, ProcessInfo, SOCKET_FILE};
use tempfile::TempDir;

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

/// One fresh `PM2RS_HOME` driven through the real binary. Dropping it stops everything it started.
pub struct Harness {
    bin: PathBuf,
    /// Holds `home/` and the scenarios' scratch files; removed on drop, after cleanup.
    dir: TempDir,
    home: PathBuf,
    /// The daemon, once [`Harness::daemon`] has seen it.
    daemon: Option<ProcId>,
    /// Every instance pid seen in `list --json`, for cleanup.
    seen: HashMap<u32, ProcId>,
    /// What a scenario leaves for later ones of its suite; dropped with the harness (after the
    /// cleanup above), so anything that stops a process on drop stops it then.
    pub stash: Vec<Box<dyn std::any::Any>>,
}

impl Harness {
    /// A harness for `bin` with an empty home (mode 0700, as the daemon expects). Starts nothing.
    pub fn new(bin: &Path) -> Result<Harness> {
        let dir = tempfile::Builder::new()
            .prefix("pm2rs-bench-")
            .tempdir()
            .context("creating the bench temp dir")?;
        let home = dir.path().join("home");
        fs::create_dir(&home).with_context(|| format!("creating {}", home.display()))?;
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", home.display()))?;
        Ok(Harness {
            bin: bin.to_path_buf(),
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

    /// Runs `pm2rs <args>` with this home and a deadline; fails if it can't run, times out, or exits
    /// non-zero (with its stderr in the error).
    pub fn run(&self, args: &[&str], stdout: Stdout) -> Result<Ran> {
        let ran = self.run_unchecked(args, stdout, COMMAND_TIMEOUT)?;
        // Ctrl-C reaches the CLI too; say so rather than blame the CLI.
        interrupted()?;
        if !ran.status.success() {
            bail!(
                "`pm2rs {}` failed ({}): {}",
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
        let mut command = Command::new(&self.bin);
        command
            .args(args)
            .env(HOME_ENV, &self.home)
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
                return Err(e).with_context(|| format!("running {}", self.bin.display()));
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
                "`pm2rs {}` did not finish within {timeout:?} and was killed: {}",
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

    /// `pm2rs list --json`, parsed; remembers every pid it shows for cleanup.
    pub fn list_json(&mut self) -> Result<Vec<ProcessInfo>> {
        let ran = self.run(&["list", "--json"], Stdout::Capture)?;
        let list: Vec<ProcessInfo> = serde_json::from_str(&ran.stdout).with_context(|| {
            format!(
                "`pm2rs list --json` did not print a JSON array of ProcessInfo: {}",
                head(&ran.stdout, 300)
            )
        })?;
        for pid in list.iter().filter_map(|p| p.pid) {
            if !self.seen.contains_key(&pid)
                && let Some(id) = ProcId::of(pid)
            {
                self.seen.insert(pid, id);
            }
        }
        Ok(list)
    }

    /// The daemon, from `$PM2RS_HOME/pm2rs.pid` (waiting up to 5 s for the file to appear).
    pub fn daemon(&mut self) -> Result<ProcId> {
        let path = self.home.join(PID_FILE);
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
    pub fn track(&mut self, id: ProcId) {
        self.seen.insert(id.pid, id);
    }

    /// Stops everything this harness may have started. Errors are printed, not returned: this runs
    /// from `Drop`, possibly while unwinding.
    fn cleanup(&mut self) {
        let pid_file = self.home.join(PID_FILE);
        let mut daemons: Vec<ProcId> = self
            .daemon
            .into_iter()
            .chain(read_pid(&pid_file).and_then(ProcId::of))
            .collect();
        daemons.dedup();
        let ever_started = !daemons.is_empty() || self.home.join(SOCKET_FILE).exists();
        if ever_started {
            match self.run_unchecked(&["kill"], Stdout::Discard, Duration::from_secs(15)) {
                Ok(ran) if ran.status.success() => {}
                Ok(ran) => eprintln!(
                    "bench cleanup: `pm2rs kill` failed ({}): {}",
                    ran.status,
                    tail(&ran.stderr, 5)
                ),
                Err(e) => eprintln!("bench cleanup: `pm2rs kill` failed: {e:#}"),
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
                    "bench cleanup: daemon {} still alive after `pm2rs kill`; sending SIGKILL",
                    daemon.pid
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
