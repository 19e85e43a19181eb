//! Log capture: children write to pipes, the daemon drains them into files, rotates them, and
//! streams new lines to followers (`pm2rs logs`).
//!
//! # Layout
//! - this file: [`LogHub`], the daemon-wide owner (open files by path, the followers' channel, the
//!   drain tasks, `flush` and `reload-logs`); [`paths`], which file each instance writes;
//!   [`Capture`], the pipes of one instance between spawn and drain; [`LineFormat`].
//! - `drain`: the task that drains one pipe, with bounded memory and back-pressure.
//! - `sink`: one file: writes of whole lines, size rotation, reopening, problems.
//! - `daemon_log`: the daemon's own log (`pm2rs.log`) as a rotated sink for tracing.
//!
//! Invariants: every byte a child writes reaches its file(s), in order per stream (one drain per
//! pipe, sequential writes); a drain holds at most one buffer of [`drain::CHUNK`] bytes (or one
//! line up to `max_line`), and reads nothing while a write is pending; file I/O runs on blocking
//! threads only; lines from several writers of one file (merged instances, stdout and stderr in
//! `log_file`) never interleave inside a line.

mod daemon_log;
mod drain;
mod sink;

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError, Weak};
use std::time::Duration;

use nix::fcntl::OFlag;
use pm2rs_proto::{AppSpec, FileEnd, LogDefaults, LogStream};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

pub use daemon_log::DaemonLog;
pub use sink::{Rotation, Sink};

use drain::Drain;

/// Batches kept for followers that fall behind; a slower follower is told how many it missed.
const FOLLOWER_BACKLOG: usize = 32;

/// Lines one drain read at once, as sent to followers (raw, before any formatting).
#[derive(Debug)]
pub struct Batch {
    pub id: u32,
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub stream: LogStream,
    pub at_us: u64,
    /// Whole lines; the last may lack its newline (end of file, a piece of an over-long line, or
    /// a partial line written after `drain::QUIET` without a new byte).
    pub lines: Vec<u8>,
    /// Where the stream's own file ended once these lines were written to it.
    pub file_end: Option<FileEnd>,
}

/// The files one instance writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPaths {
    pub out: PathBuf,
    pub err: PathBuf,
    /// `log_file`: stdout and stderr together.
    pub combined: Option<PathBuf>,
}

/// The files of instance `id` of `spec`: `out_file`/`error_file`/`log_file` if set, else
/// `<logs>/<name>-out.log` and `<name>-error.log`. With several instances and no `merge_logs`,
/// each instance gets its own files: `-<id>` goes before the extension (`api-out-3.log`).
pub fn paths(logs_dir: &Path, spec: &AppSpec, id: u32) -> LogPaths {
    let per_instance = spec.instances > 1 && !spec.logs.merge_logs;
    let name = |written: &Option<PathBuf>, stem: &str| -> PathBuf {
        let path = written
            .clone()
            .unwrap_or_else(|| logs_dir.join(format!("{}-{stem}.log", spec.name)));
        if per_instance {
            with_id(&path, id)
        } else {
            path
        }
    };
    LogPaths {
        out: name(&spec.logs.out_file, "out"),
        err: name(&spec.logs.error_file, "error"),
        combined: spec.logs.log_file.as_ref().map(|p| {
            if per_instance {
                with_id(p, id)
            } else {
                p.clone()
            }
        }),
    }
}

/// `dir/api-out.log` → `dir/api-out-3.log`; device files (`/dev/null`) stay as they are.
fn with_id(path: &Path, id: u32) -> PathBuf {
    if path.starts_with("/dev") {
        return path.to_path_buf();
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    let ext = path.extension().map(|e| e.to_string_lossy().into_owned());
    let file = match (stem, ext) {
        (Some(stem), Some(ext)) => format!("{stem}-{id}.{ext}"),
        (Some(stem), None) => format!("{stem}-{id}"),
        _ => return path.to_path_buf(),
    };
    path.with_file_name(file)
}

/// How lines are written: as they are, time-stamped, or as JSON objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineFormat {
    time: bool,
    json: bool,
    /// strftime; `None` = RFC 3339 with milliseconds, local time.
    date_format: Option<String>,
}

/// The default timestamp: RFC 3339, milliseconds, local offset.
const DEFAULT_DATE_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3f%:z";

impl LineFormat {
    pub fn of(spec: &AppSpec) -> LineFormat {
        LineFormat {
            time: spec.logs.time,
            json: spec.logs.json,
            date_format: spec.logs.date_format.clone(),
        }
    }

    fn timestamp(&self, at_us: u64) -> String {
        let ts =
            jiff::Timestamp::from_microsecond(at_us as i64).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let zoned = ts.to_zoned(jiff::tz::TimeZone::system());
        let format = self.date_format.as_deref().unwrap_or(DEFAULT_DATE_FORMAT);
        let mut out = String::new();
        if jiff::fmt::strtime::BrokenDownTime::from(&zoned)
            .format(format, &mut out)
            .is_err()
        {
            out = zoned.timestamp().to_string();
        }
        out
    }

    /// The bytes to write for `lines`, or `None` when they are written as they are (and end
    /// with a newline unless `needs_newline`).
    fn apply(&self, lines: &[u8], d: &Drain, needs_newline: bool, at_us: u64) -> Option<Vec<u8>> {
        if !self.time && !self.json {
            return None;
        }
        let stamp = self.timestamp(at_us);
        let body = lines.strip_suffix(b"\n").unwrap_or(lines);
        let _ = needs_newline;
        let count = body.iter().filter(|&&b| b == b'\n').count() + 1;
        let mut out = Vec::with_capacity(lines.len() + count * (stamp.len() + 80));
        for line in body.split(|&b| b == b'\n') {
            if self.json {
                let record = serde_json::json!({
                    "timestamp": stamp,
                    "app_name": &*d.name,
                    "process_id": d.id,
                    "pid": d.pid,
                    "type": match d.stream { LogStream::Out => "out", LogStream::Err => "err" },
                    "message": String::from_utf8_lossy(line),
                });
                let _ = serde_json::to_writer(&mut out, &record);
            } else {
                out.extend_from_slice(stamp.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(line);
            }
            out.push(b'\n');
        }
        Some(out)
    }
}

/// Whether one run's pipes are drained: both reached end of file and all they carried is written
/// (or given up on because the daemon is exiting).
#[derive(Debug, Clone)]
pub struct Drained {
    open: Arc<AtomicUsize>,
    written: Arc<AtomicU64>,
}

impl Drained {
    pub fn is_done(&self) -> bool {
        self.open.load(Ordering::Acquire) == 0
    }

    /// Bytes written to the log files so far: tells a drain still at work from a pipe that some
    /// escaped process keeps open without writing.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// The read ends of one instance's pipes, from before its spawn until its drains start.
pub struct Capture {
    out_read: OwnedFd,
    err_read: OwnedFd,
    spec: Arc<AppSpec>,
    id: u32,
    /// Held by both drains until their pipe ends (the fd keeper's entry of this run).
    hold: Option<Arc<dyn Send + Sync>>,
}

impl Capture {
    /// The read ends (stdout, stderr), for the fd keeper to hold duplicates of.
    pub fn fds(&self) -> [BorrowedFd<'_>; 2] {
        [self.out_read.as_fd(), self.err_read.as_fd()]
    }

    /// The read ends of a run's pipes that came from elsewhere (the fd keeper hands them to the
    /// daemon that takes the run over), made non-blocking.
    pub fn from_pipes(
        out_read: OwnedFd,
        err_read: OwnedFd,
        spec: Arc<AppSpec>,
        id: u32,
    ) -> io::Result<Capture> {
        for read in [&out_read, &err_read] {
            let flags = nix::fcntl::fcntl(read, nix::fcntl::FcntlArg::F_GETFL)?;
            let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
            nix::fcntl::fcntl(read, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        }
        Ok(Capture {
            out_read,
            err_read,
            spec,
            id,
            hold: None,
        })
    }

    /// Keeps `guard` alive until both pipes are drained.
    pub fn hold(&mut self, guard: Arc<dyn Send + Sync>) {
        self.hold = Some(guard);
    }
}

/// The daemon-wide log state. Cheap to clone; every clone is the same hub.
#[derive(Clone)]
pub struct LogHub {
    inner: Arc<Inner>,
}

struct Inner {
    logs_dir: PathBuf,
    defaults: LogDefaults,
    /// Open files by path; a file closes when its last drain ends.
    sinks: Mutex<HashMap<PathBuf, Weak<Mutex<Sink>>>>,
    /// Bumped by [`LogHub::reopen_all`]; every sink reopens at its next write.
    generation: Arc<AtomicU64>,
    /// Subscribers are the log-stream handlers; nobody listening is the common case.
    followers: broadcast::Sender<Arc<Batch>>,
    drains: TaskTracker,
    /// Woken whenever a drain ends, so the supervisor can finish stops waiting on it.
    drain_ended: Notify,
    /// Cancelled by [`LogHub::finish`]: drains stop retrying writes that keep failing.
    closing: CancellationToken,
    /// Pipes the drains have enlarged, now (`drain::BIG_PIPES_MAX` at most).
    big_pipes: Arc<AtomicUsize>,
    /// The scratch pipe every drain peeks through; `None` (it could not be made): plain reads.
    peeker: Option<Arc<drain::Peeker>>,
    /// Cancelled by [`LogHub::handover`]: drains stop, leaving unwritten bytes in their pipes.
    handover: CancellationToken,
    /// Files of runs started since the last creation job, to be created (see
    /// [`LogHub::create_files`]); at most the files of the runs started in one supervisor step.
    to_create: Mutex<Vec<Weak<Mutex<Sink>>>>,
    /// Whether a creation job is already scheduled.
    creating: AtomicBool,
}

impl LogHub {
    pub fn new(logs_dir: PathBuf, defaults: LogDefaults) -> LogHub {
        LogHub {
            inner: Arc::new(Inner {
                logs_dir,
                defaults,
                sinks: Mutex::new(HashMap::new()),
                generation: Arc::new(AtomicU64::new(0)),
                followers: broadcast::channel(FOLLOWER_BACKLOG).0,
                drains: TaskTracker::new(),
                drain_ended: Notify::new(),
                closing: CancellationToken::new(),
                big_pipes: Arc::new(AtomicUsize::new(0)),
                peeker: drain::Peeker::new()
                    .map(Arc::new)
                    .map_err(|e| warn!(%e, "no scratch pipe: log drains read their pipes"))
                    .ok(),
                handover: CancellationToken::new(),
                to_create: Mutex::new(Vec::new()),
                creating: AtomicBool::new(false),
            }),
        }
    }

    pub fn logs_dir(&self) -> &Path {
        &self.inner.logs_dir
    }

    pub fn defaults(&self) -> LogDefaults {
        self.inner.defaults
    }

    /// The counter that makes sinks reopen (shared with the daemon's own log).
    pub fn generation(&self) -> Arc<AtomicU64> {
        self.inner.generation.clone()
    }

    /// The rotation of `spec`'s files: its own settings over the daemon-wide defaults.
    pub fn rotation(&self, spec: &AppSpec) -> Rotation {
        let d = self.inner.defaults;
        Rotation {
            max_size: spec.logs.max_size.unwrap_or(d.max_size),
            retain: spec.logs.retain.unwrap_or(d.retain),
            compress: spec.logs.compress.unwrap_or(d.compress),
        }
    }

    /// The pipes for a new run of instance `id`: the write ends for the child's stdout and
    /// stderr (to be moved into the spawn, so the daemon keeps no copy), and the read ends
    /// (non-blocking; the child's ends stay blocking).
    pub fn capture(&self, spec: Arc<AppSpec>, id: u32) -> io::Result<(OwnedFd, OwnedFd, Capture)> {
        let (out_read, stdout) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (err_read, stderr) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let capture = Capture::from_pipes(out_read, err_read, spec, id)?;
        Ok((stdout, stderr, capture))
    }

    /// Starts draining a spawned instance's pipes (`pid` is its leader). The returned handle
    /// tells when both pipes have reached end of file and everything read is written.
    pub fn start(&self, capture: Capture, pid: u32) -> Drained {
        let Capture {
            out_read,
            err_read,
            spec,
            id,
            hold,
        } = capture;
        let files = paths(&self.inner.logs_dir, &spec, id);
        let rotation = self.rotation(&spec);
        let combined = files.combined.as_ref().map(|p| self.sink(p, rotation));
        let format = Arc::new(LineFormat::of(&spec));
        let name: Arc<str> = spec.name.as_str().into();
        let namespace: Arc<str> = spec.namespace.as_str().into();
        let drained = Drained {
            open: Arc::new(AtomicUsize::new(2)),
            written: Arc::new(AtomicU64::new(0)),
        };
        let mut created = Vec::with_capacity(3);
        for (read, path, stream) in [
            (out_read, &files.out, LogStream::Out),
            (err_read, &files.err, LogStream::Err),
        ] {
            let mut sinks = vec![self.sink(path, rotation)];
            sinks.extend(combined.clone());
            created.extend(sinks.iter().map(Arc::downgrade));
            let drain = Drain {
                id,
                pid,
                name: name.clone(),
                namespace: namespace.clone(),
                stream,
                sinks,
                format: format.clone(),
                max_line: self.inner.defaults.max_line,
                followers: self.inner.followers.clone(),
                closing: self.inner.closing.clone(),
                written: drained.written.clone(),
                big_pipes: self.inner.big_pipes.clone(),
                peeker: self.inner.peeker.clone(),
                handover: self.inner.handover.clone(),
            };
            let open = drained.open.clone();
            let inner = self.inner.clone();
            let hold = hold.clone();
            self.inner.drains.spawn(async move {
                drain.run(read).await;
                drop(hold);
                debug!(id, ?stream, "log pipe drained");
                open.fetch_sub(1, Ordering::Release);
                inner.drain_ended.notify_one();
            });
        }
        self.create_files(created);
        drained
    }

    /// Creates these files now, so they exist from the start even for an app that writes
    /// nothing (as PM2 does). One blocking job creates the files of every run started before it
    /// runs: it is spawned as a task, which runs once the supervisor's current step is over, so
    /// starting 100 instances costs one job, not 200. A file that cannot be created becomes its
    /// sink's problem (shown by `describe`) and is tried again at the first write.
    fn create_files(&self, sinks: Vec<Weak<Mutex<Sink>>>) {
        lock(&self.inner.to_create).extend(sinks);
        if self.inner.creating.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let sinks = std::mem::take(&mut *lock(&inner.to_create));
            inner.creating.store(false, Ordering::Release);
            let created = tokio::task::spawn_blocking(move || {
                for sink in sinks.iter().filter_map(Weak::upgrade) {
                    if let Err(e) = lock_sink(&sink).open_now() {
                        debug!(%e, "a log file could not be created at start");
                    }
                }
            })
            .await;
            if created.is_err() {
                debug!("log files not created: the blocking pool is shutting down");
            }
        });
    }

    /// Resolves when some drain has ended since the last call (a stored wake-up counts).
    pub async fn drain_ended(&self) {
        self.inner.drain_ended.notified().await;
    }

    /// The sink of `path`, shared with every other writer of that file.
    fn sink(&self, path: &Path, rotation: Rotation) -> Arc<Mutex<Sink>> {
        let mut sinks = lock(&self.inner.sinks);
        sinks.retain(|_, s| s.strong_count() > 0);
        if let Some(existing) = sinks.get(path).and_then(Weak::upgrade) {
            return existing;
        }
        let sink = Arc::new(Mutex::new(Sink::new(
            path.to_path_buf(),
            rotation,
            self.inner.generation.clone(),
        )));
        sinks.insert(path.to_path_buf(), Arc::downgrade(&sink));
        sink
    }

    /// Current write problems of these files (only files being written have any).
    pub fn problems(&self, paths: &[&Path]) -> Vec<String> {
        let sinks: Vec<Arc<Mutex<Sink>>> = {
            let map = lock(&self.inner.sinks);
            paths
                .iter()
                .filter_map(|p| map.get(*p).and_then(Weak::upgrade))
                .collect()
        };
        // `try_lock`: a sink busy writing (perhaps stuck on a slow disk) is skipped, never awaited.
        sinks
            .iter()
            .filter_map(|s| try_lock_sink(s)?.problem().map(str::to_owned))
            .collect()
    }

    /// Every live sink's path.
    pub fn open_files(&self) -> Vec<PathBuf> {
        let map = lock(&self.inner.sinks);
        let mut files: Vec<PathBuf> = map
            .iter()
            .filter(|(_, s)| s.strong_count() > 0)
            .map(|(p, _)| p.clone())
            .collect();
        files.sort();
        files
    }

    /// Makes every log file (and the daemon's own) reopen at its next write.
    pub fn reopen_all(&self) {
        self.inner.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Empties these files and removes their rotated files. Blocking: call on a blocking thread.
    pub fn flush_blocking(&self, files: &[(PathBuf, u32)]) -> Vec<String> {
        let mut errors = Vec::new();
        for (path, retain) in files {
            let sink = lock(&self.inner.sinks).get(path).and_then(Weak::upgrade);
            let result = match sink {
                Some(s) => lock_sink(&s).flush(),
                None => sink::flush_path(path, *retain),
            };
            if let Err(e) = result {
                errors.push(format!("{}: {e}", path.display()));
            }
        }
        errors
    }

    /// A receiver of every batch of lines read from now on.
    pub fn follow(&self) -> broadcast::Receiver<Arc<Batch>> {
        self.inner.followers.subscribe()
    }

    /// Stops every drain for a successor daemon: each finishes the write it has under way,
    /// takes out of its pipe only what it wrote, and ends without reading more, so what is left
    /// stays in the pipes for the drains the next daemon starts on them. A write that keeps
    /// failing is given up (its bytes stay in the pipe). Resolves once every drain has stopped,
    /// or after `deadline`: false then (some drain is still writing; an abandoned write may reach
    /// its file too, so the next daemon can write those lines a second time, never lose them).
    pub async fn handover(&self, deadline: Duration) -> bool {
        self.inner.drains.close();
        self.inner.handover.cancel();
        let stopped = tokio::time::timeout(deadline, self.inner.drains.wait())
            .await
            .is_ok();
        if !stopped {
            warn!("some log drains did not stop in time for the handover");
        }
        stopped
    }

    /// Waits for every drain to reach end of file, at most `grace` (a pipe kept open by an
    /// escaped process must not hold the daemon forever).
    pub async fn finish(&self, grace: Duration) {
        self.inner.drains.close();
        self.inner.closing.cancel();
        if tokio::time::timeout(grace, self.inner.drains.wait())
            .await
            .is_err()
        {
            warn!("some log pipes were still open at exit; their last output may be missing");
        }
    }
}

/// Locks a mutex that no holder can leave poisoned in a harmful way (plain maps and files).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Locks a log file, even one whose lock a panicking writer poisoned: refusing it would drop
/// every later byte of that file, while the panic can have spoilt at most the write it was in.
fn lock_sink(sink: &Mutex<Sink>) -> MutexGuard<'_, Sink> {
    sink.lock()
        .unwrap_or_else(|poisoned| recover_sink(sink, poisoned))
}

/// [`lock_sink`] without waiting: `None` while another thread holds the lock.
fn try_lock_sink(sink: &Mutex<Sink>) -> Option<MutexGuard<'_, Sink>> {
    match sink.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(poisoned)) => Some(recover_sink(sink, poisoned)),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// Takes a poisoned sink's guard, says so once (the poison is cleared, so the next lock is
/// ordinary until another panic), and hands the guard on.
fn recover_sink<'a>(
    sink: &Mutex<Sink>,
    poisoned: PoisonError<MutexGuard<'a, Sink>>,
) -> MutexGuard<'a, Sink> {
    let guard = poisoned.into_inner();
    warn!(
        path = %guard.path().display(),
        "a log file's lock was poisoned by a panic while writing it; writing on"
    );
    sink.clear_poison();
    guard
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(instances: u32, merge: bool, out: Option<&str>) -> AppSpec {
        let mut s = AppSpec {
            instances,
            ..AppSpec::new("api", "/bin/true", "/")
        };
        s.logs.log_file = Some(PathBuf::from("/var/log/all.log"));
        s.logs.merge_logs = merge;
        s.logs.out_file = out.map(PathBuf::from);
        s
    }

    #[test]
    fn paths_per_instance_unless_merged_and_dev_files_stay() {
        let dir = Path::new("/h/logs");
        let one = paths(dir, &spec(1, false, None), 7);
        assert_eq!(one.out, Path::new("/h/logs/api-out.log"));
        assert_eq!(one.err, Path::new("/h/logs/api-error.log"));
        let many = paths(dir, &spec(3, false, Some("/srv/out.txt")), 7);
        assert_eq!(many.out, Path::new("/srv/out-7.txt"));
        assert_eq!(many.err, Path::new("/h/logs/api-error-7.log"));
        assert_eq!(
            many.combined.as_deref(),
            Some(Path::new("/var/log/all-7.log"))
        );
        let merged = paths(dir, &spec(3, true, Some("/dev/null")), 7);
        assert_eq!(merged.out, Path::new("/dev/null"));
        assert_eq!(merged.err, Path::new("/h/logs/api-error.log"));
        let null = paths(dir, &spec(3, false, Some("/dev/null")), 7);
        assert_eq!(null.out, Path::new("/dev/null"));
    }
}
