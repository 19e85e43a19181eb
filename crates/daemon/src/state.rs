//! The durable desired state: `$PM2RS_HOME/dump.json`, what the user last asked the daemon to run.
//!
//! # The file
//! A [`DumpFile`]: a schema version ([`SCHEMA`]) and every app the daemon knows ([`DumpedApp`]):
//! its resolved `AppSpec` (instance count as scaled, env profile included) and whether the user
//! stopped it. Every field added later has a serde default, so a file written by this version
//! loads in later ones (`tests/fixtures/dump-v1.json` is today's format, kept as a test).
//!
//! # Writing
//! [`write`] is atomic: a temp file in the same directory (mode 0600), write, fsync, rename over
//! `dump.json`, fsync of the directory. Before that the previous versions are rotated:
//! `dump.json.1` … `dump.json.3` ([`KEPT`]), the newest being a hard link to the file about to be
//! replaced, so `dump.json` itself is never missing. [`writer`] is the task that writes: it
//! receives the latest state over a watch channel (newer states replace older ones never written,
//! nothing queues), writes on a blocking thread and reports each generation written (or the
//! error) back over another watch channel; a failed write is retried with a backoff.
//!
//! # Loading
//! [`load`] tries `dump.json`, then the older versions, newest first. A file that cannot be
//! parsed (torn, garbage, or a newer schema) is renamed `<file>.corrupt-<unix time>` and the
//! next one is tried; each such step is a warning that the daemon logs and shows in `ping` and
//! `describe`. No file at all is an empty state, without a warning.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pm2rs_proto::AppSpec;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

/// File name of the dump inside `PM2RS_HOME`.
pub const DUMP_FILE: &str = "dump.json";
/// The schema this version writes and the newest it reads.
pub const SCHEMA: u32 = 1;
/// Previous versions kept (`dump.json.1` is the newest of them).
pub const KEPT: u32 = 3;
/// First and longest wait between retries of a failed write.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The content of `dump.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpFile {
    /// Schema version ([`SCHEMA`] when written by this version).
    pub version: u32,
    /// Every app, in name order.
    #[serde(default)]
    pub apps: Vec<DumpedApp>,
}

/// One app of the dump.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpedApp {
    /// The app as resolved at start (its `instances` is the count after `scale`).
    pub spec: AppSpec,
    /// The user stopped it: it is restored stopped.
    #[serde(default)]
    pub stopped: bool,
}

/// What [`load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub apps: Vec<DumpedApp>,
    /// The file the apps come from, if any.
    pub source: Option<PathBuf>,
    /// Files set aside or unreadable, and which version was used instead.
    pub warnings: Vec<String>,
}

/// `dump.json` in `dir`.
pub fn dump_path(dir: &Path) -> PathBuf {
    dir.join(DUMP_FILE)
}

/// `dump.json.<n>` in `dir` (`n` = 0 is `dump.json` itself).
fn version_path(dir: &Path, n: u32) -> PathBuf {
    if n == 0 {
        dump_path(dir)
    } else {
        dir.join(format!("{DUMP_FILE}.{n}"))
    }
}

/// Reads the newest good dump in `dir`, setting aside every bad one met first (see the module
/// doc). Blocking: call it off the runtime.
pub fn load(dir: &Path) -> Loaded {
    let mut loaded = Loaded::default();
    for n in 0..=KEPT {
        let path = version_path(dir, n);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                loaded
                    .warnings
                    .push(format!("cannot read {}: {e}", path.display()));
                continue;
            }
        };
        match parse(&bytes) {
            Ok(dump) => {
                if !loaded.warnings.is_empty() {
                    loaded.warnings.push(format!(
                        "using the previous good version {} ({} app(s))",
                        path.display(),
                        dump.apps.len()
                    ));
                }
                loaded.apps = dump.apps;
                loaded.source = Some(path);
                break;
            }
            Err(problem) => {
                let aside = set_aside(&path);
                loaded.warnings.push(format!(
                    "{} is unusable ({problem}); kept as {}",
                    path.display(),
                    aside.display()
                ));
            }
        }
    }
    if loaded.source.is_none() && !loaded.warnings.is_empty() {
        loaded
            .warnings
            .push("no good dump left: starting with no apps".to_string());
    }
    for w in &loaded.warnings {
        warn!("dump: {w}");
    }
    loaded
}

/// Parses a dump, refusing a schema newer than [`SCHEMA`] with a message saying so.
fn parse(bytes: &[u8]) -> Result<DumpFile, String> {
    #[derive(Deserialize)]
    struct Head {
        version: u32,
    }
    let head: Head = serde_json::from_slice(bytes).map_err(|e| format!("not a dump: {e}"))?;
    if head.version > SCHEMA {
        return Err(format!(
            "written by a newer pm2rs (schema {}; this one reads up to {SCHEMA})",
            head.version
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| format!("not a dump: {e}"))
}

/// Renames a bad file to `<file>.corrupt-<unix time>` (with a counter if that exists); returns
/// where it is now (its old path if it could not be moved).
fn set_aside(path: &Path) -> PathBuf {
    let secs = pm2rs_proto::unix_micros() / 1_000_000;
    let base = format!("{}.corrupt-{secs}", path.display());
    let mut aside = PathBuf::from(&base);
    let mut i = 1;
    while aside.exists() {
        aside = PathBuf::from(format!("{base}-{i}"));
        i += 1;
    }
    match fs::rename(path, &aside) {
        Ok(()) => aside,
        Err(e) => {
            warn!(path = %path.display(), %e, "cannot set a bad dump aside");
            path.to_path_buf()
        }
    }
}

/// Writes `dump` to `dir/dump.json` atomically, after rotating the previous versions. Blocking.
pub fn write(dir: &Path, dump: &DumpFile) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(dump).map_err(io::Error::other)?;
    bytes.push(b'\n');
    let mut tmp = tempfile::Builder::new()
        .prefix(".dump.json.")
        .tempfile_in(dir)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o600))?;
    tmp.write_all(&bytes)?;
    tmp.as_file().sync_all()?;
    rotate(dir)?;
    tmp.persist(dump_path(dir)).map_err(|e| e.error)?;
    fs::File::open(dir)?.sync_all()
}

/// Shifts `dump.json.1..` up by one (the oldest falls off) and makes `dump.json.1` a hard link to
/// the current `dump.json`, which stays in place until the new one is renamed over it.
fn rotate(dir: &Path) -> io::Result<()> {
    for n in (1..KEPT).rev() {
        match fs::rename(version_path(dir, n), version_path(dir, n + 1)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let newest = version_path(dir, 1);
    match fs::remove_file(&newest) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    match fs::hard_link(dump_path(dir), &newest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => fs::copy(dump_path(dir), &newest).map(drop),
        Ok(()) => Ok(()),
    }
}

/// One state to write: its generation (raised by the supervisor for every change) and content.
#[derive(Debug)]
pub struct Desired {
    pub generation: u64,
    pub dump: DumpFile,
}

/// What the writer last did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// The newest generation the writer is done with (written, or failed once).
    pub generation: u64,
    /// Why that generation is not on disk, if it is not (it is being retried).
    pub error: Option<String>,
}

/// The writer task: writes every state sent on `desired` (only the latest, when several came in
/// during a write) and reports on `written`. Ends when the sender is gone.
pub async fn writer(
    dir: PathBuf,
    mut desired: watch::Receiver<Option<Arc<Desired>>>,
    written: watch::Sender<Written>,
) {
    while desired.changed().await.is_ok() {
        let mut delay = RETRY_FIRST;
        loop {
            let Some(state) = desired.borrow_and_update().clone() else {
                break;
            };
            let to = dir.clone();
            let job = state.clone();
            let result = tokio::task::spawn_blocking(move || write(&to, &job.dump))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)));
            match result {
                Ok(()) => {
                    written.send_replace(Written {
                        generation: state.generation,
                        error: None,
                    });
                    break;
                }
                Err(e) => {
                    let error = format!(
                        "cannot write {}: {e} (retrying; the apps keep running)",
                        dump_path(&dir).display()
                    );
                    warn!("{error}");
                    written.send_replace(Written {
                        generation: state.generation,
                        error: Some(error),
                    });
                    // Retry after the delay, or at once with a newer state.
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        changed = desired.changed() => if changed.is_err() { return },
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }
    info!("dump writer ended");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(names: &[&str]) -> DumpFile {
        DumpFile {
            version: SCHEMA,
            apps: names
                .iter()
                .map(|n| DumpedApp {
                    spec: AppSpec::new(*n, "/bin/true", "/"),
                    stopped: false,
                })
                .collect(),
        }
    }

    fn names(apps: &[DumpedApp]) -> Vec<&str> {
        apps.iter().map(|a| a.spec.name.as_str()).collect()
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_rotate_the_last_versions_and_leave_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b", "c", "d", "e"] {
            write(dir.path(), &dump(&[name])).unwrap();
        }
        assert_eq!(
            entries(dir.path()),
            ["dump.json", "dump.json.1", "dump.json.2", "dump.json.3"]
        );
        let read = |n| parse(&fs::read(version_path(dir.path(), n)).unwrap()).unwrap();
        assert_eq!(names(&read(0).apps), ["e"]);
        assert_eq!(names(&read(1).apps), ["d"]);
        assert_eq!(names(&read(2).apps), ["c"]);
        assert_eq!(names(&read(3).apps), ["b"]);
        let mode = fs::metadata(dump_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The newest previous version is a file of its own, not the same inode as dump.json.
        write(dir.path(), &dump(&["f"])).unwrap();
        assert_eq!(names(&read(1).apps), ["e"]);
    }

    #[test]
    fn a_corrupt_or_torn_file_is_set_aside_and_the_previous_version_used() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &dump(&["old"])).unwrap();
        write(dir.path(), &dump(&["new"])).unwrap();
        let good = fs::read(dump_path(dir.path())).unwrap();

        // Torn: the first half of a good file.
        fs::write(dump_path(dir.path()), &good[..good.len() / 2]).unwrap();
        let loaded = load(dir.path());
        assert_eq!(names(&loaded.apps), ["old"]);
        assert_eq!(loaded.source, Some(version_path(dir.path(), 1)));
        assert!(
            loaded.warnings[0].contains("unusable"),
            "{:?}",
            loaded.warnings
        );
        assert!(loaded.warnings[1].contains("previous good version"));
        let aside: Vec<String> = entries(dir.path())
            .into_iter()
            .filter(|e| e.starts_with("dump.json.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "{:?}", entries(dir.path()));
        assert_eq!(
            fs::read(dir.path().join(&aside[0])).unwrap(),
            &good[..good.len() / 2]
        );

        // Garbage everywhere: nothing usable, an empty state and a warning.
        for n in 0..=KEPT {
            fs::write(version_path(dir.path(), n), b"\x00\xffgarbage").unwrap();
        }
        let loaded = load(dir.path());
        assert!(loaded.apps.is_empty() && loaded.source.is_none());
        assert!(
            loaded
                .warnings
                .last()
                .unwrap()
                .contains("no good dump left"),
            "{:?}",
            loaded.warnings
        );
        assert!(!version_path(dir.path(), 0).exists());
    }

    #[test]
    fn a_newer_schema_is_not_read_but_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &dump(&["mine"])).unwrap();
        fs::write(dump_path(dir.path()), br#"{"version": 2, "apps": []}"#).unwrap();
        let loaded = load(dir.path());
        assert!(loaded.apps.is_empty());
        assert!(
            loaded.warnings[0].contains("newer pm2rs (schema 2"),
            "{:?}",
            loaded.warnings
        );
        // No older version here (the first write had nothing to rotate): empty, with a warning.
        assert!(
            loaded
                .warnings
                .last()
                .unwrap()
                .contains("no good dump left")
        );
    }

    #[test]
    fn no_file_is_an_empty_state_without_warning() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = load(dir.path());
        assert!(loaded.apps.is_empty() && loaded.warnings.is_empty());
    }

    #[test]
    fn todays_format_still_loads() {
        let fixture = include_bytes!("../tests/fixtures/dump-v1.json");
        let dump = parse(fixture).expect("the v1 fixture loads");
        assert_eq!(dump.version, 1);
        assert_eq!(names(&dump.apps), ["api", "worker"]);
        assert_eq!(dump.apps[0].spec.instances, 2);
        assert_eq!(dump.apps[0].spec.env_profile.as_deref(), Some("production"));
        assert!(dump.apps[1].stopped);
    }

    #[tokio::test]
    async fn the_writer_reports_a_failure_and_retries_until_it_succeeds() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("home");
        let (tx, rx) = watch::channel(None);
        let (written_tx, mut written) = watch::channel(Written::default());
        let task = tokio::spawn(writer(dir.clone(), rx, written_tx));
        tx.send_replace(Some(Arc::new(Desired {
            generation: 1,
            dump: dump(&["a"]),
        })));
        written.changed().await.unwrap();
        let first = written.borrow_and_update().clone();
        assert_eq!(first.generation, 1);
        assert!(first.error.unwrap().contains("cannot write"));
        // The directory appears: the retry writes it.
        fs::create_dir(&dir).unwrap();
        let done = tokio::time::timeout(
            Duration::from_secs(10),
            written.wait_for(|w| w.error.is_none()),
        )
        .await
        .expect("retried within 10 s")
        .unwrap()
        .clone();
        assert_eq!(done.generation, 1);
        assert_eq!(names(&load(&dir).apps), ["a"]);
        drop(tx);
        task.await.unwrap();
    }
}
