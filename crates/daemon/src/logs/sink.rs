//! One log file: appends whole lines, rotates by size, reopens on request (`reload-logs`,
//! SIGUSR2) or when the file or its directory vanished, and remembers the current problem (a full
//! disk, a directory it cannot create) for `describe`.
//!
//! Everything here blocks (file I/O): callers run it on a blocking thread, never on the runtime.
//!
//! Rotation naming: `<file>.1` is the newest rotated file, `<file>.<retain>` the oldest; with
//! gzip they are `<file>.1.gz` and so on. A rotation happens on a line boundary before a write
//! would make the file exceed `max_size` (a single line longer than `max_size` gets a file of its
//! own), so no line is ever split across files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pm2rs_proto::FileEnd;
use tracing::{info, warn};

/// How a file is rotated (the wire's type: `describe` shows it as it is).
pub use pm2rs_proto::LogRotation as Rotation;

/// How often a write checks that the path still leads to the open file.
const PATH_CHECK: Duration = Duration::from_secs(1);

/// An open (or to-be-opened) log file.
pub struct Sink {
    path: PathBuf,
    rotation: Rotation,
    file: Option<File>,
    /// Bytes in the current file.
    size: u64,
    /// Device and inode of the current file, when it is a regular file.
    file_id: Option<(u64, u64)>,
    /// Rotation and path checks apply only to regular files (not `/dev/null`, a FIFO, a tty).
    regular: bool,
    last_check: Instant,
    /// Bumped by `reload-logs`; the file is reopened at the next write when it moved on.
    generation: Arc<AtomicU64>,
    seen_generation: u64,
    problem: Option<String>,
    /// Report nothing through tracing (this sink is the daemon's own log).
    quiet: bool,
}

impl Sink {
    /// A sink for `path`; the file is opened (created, with its directory) by [`Sink::open_now`]
    /// or at the first write.
    pub fn new(path: PathBuf, rotation: Rotation, generation: Arc<AtomicU64>) -> Sink {
        let seen_generation = generation.load(Ordering::Relaxed);
        Sink {
            path,
            rotation,
            file: None,
            size: 0,
            file_id: None,
            regular: true,
            last_check: Instant::now(),
            generation,
            seen_generation,
            problem: None,
            quiet: false,
        }
    }

    /// Stops this sink from logging its problems through tracing.
    pub fn set_quiet(&mut self) {
        self.quiet = true;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the open file ends (this sink being its only writer), if it is a regular file.
    pub fn end(&self) -> Option<FileEnd> {
        let (dev, ino) = self.file_id.filter(|_| self.file.is_some())?;
        Some(FileEnd {
            dev,
            ino,
            offset: self.size,
        })
    }

    /// The current problem writing this file, if any.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// Appends `data` (whole lines), rotating as needed. On failure returns how many bytes were
    /// written before it and the error; the caller retries the rest later. The problem is logged
    /// once when it appears and once when it clears.
    pub fn write(&mut self, data: &[u8]) -> Result<(), (usize, io::Error)> {
        let mut done = 0;
        let result = self.write_inner(data, &mut done);
        self.note(&result);
        result.map_err(|e| (done, e))
    }

    /// Creates the file (and its directory) now if it is not open yet, so it exists before
    /// anything is written (people `tail -f` it right after `start`). A failure is the sink's
    /// current problem, exactly as a failed write's; the next write tries again.
    pub fn open_now(&mut self) -> io::Result<()> {
        let result = self.check_open();
        self.note(&result);
        result
    }

    /// Records the outcome of an attempt to open or write the file as the current problem (or its
    /// end), logged once when it appears and once when it clears.
    fn note(&mut self, result: &io::Result<()>) {
        match result {
            Ok(()) => {
                if let Some(old) = self.problem.take()
                    && !self.quiet
                {
                    info!(path = %self.path.display(), problem = %old, "log file writable again");
                }
            }
            Err(e) => {
                let text = format!("{}: {e}", self.path.display());
                if self.problem.as_deref() != Some(&text) && !self.quiet {
                    warn!(problem = %text, "cannot write a log file; the app is held until it can");
                }
                self.problem = Some(text);
            }
        }
    }

    fn write_inner(&mut self, data: &[u8], done: &mut usize) -> io::Result<()> {
        self.check_open()?;
        while *done < data.len() {
            let rest = &data[*done..];
            let take = self.fits(rest);
            if take == 0 {
                self.rotate()?;
                continue;
            }
            let file = self
                .file
                .as_mut()
                .ok_or_else(|| io::Error::other("log file not open"))?;
            let n = match file.write(&rest[..take]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            *done += n;
            self.size += n as u64;
        }
        Ok(())
    }

    /// How many bytes of `rest` go into the current file before a rotation (0 = rotate first).
    fn fits(&self, rest: &[u8]) -> usize {
        let max = self.rotation.max_size;
        if max == 0 || !self.regular {
            return rest.len();
        }
        let room = max.saturating_sub(self.size) as usize;
        if rest.len() <= room {
            return rest.len();
        }
        // The longest run of whole lines that fits.
        if let Some(nl) = memchr::memrchr(b'\n', &rest[..room]) {
            return nl + 1;
        }
        if self.size > 0 {
            return 0;
        }
        // An empty file and a line longer than max_size: that line alone.
        rest.iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |nl| nl + 1)
    }

    /// Opens the file if needed, or reopens it after `reload-logs` or when its path no longer
    /// leads to it (deleted, moved away, its directory removed).
    fn check_open(&mut self) -> io::Result<()> {
        let generation = self.generation.load(Ordering::Relaxed);
        if generation != self.seen_generation {
            self.seen_generation = generation;
            self.file = None;
        }
        if self.file.is_some() && self.regular && self.last_check.elapsed() >= PATH_CHECK {
            self.last_check = Instant::now();
            if !self.path_is_open_file() {
                if !self.quiet {
                    warn!(path = %self.path.display(), "log file was removed or replaced; reopening it");
                }
                self.file = None;
            }
        }
        if self.file.is_none() {
            self.open()?;
        }
        Ok(())
    }

    fn path_is_open_file(&self) -> bool {
        let (Some(file), Ok(on_disk)) = (&self.file, fs::metadata(&self.path)) else {
            return false;
        };
        file.metadata()
            .is_ok_and(|open| open.dev() == on_disk.dev() && open.ino() == on_disk.ino())
    }

    fn open(&mut self) -> io::Result<()> {
        if let Some(dir) = self.path.parent()
            && !dir.as_os_str().is_empty()
        {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let meta = file.metadata()?;
        self.regular = meta.is_file();
        self.size = if self.regular { meta.len() } else { 0 };
        self.file_id = self.regular.then(|| (meta.dev(), meta.ino()));
        self.last_check = Instant::now();
        self.file = Some(file);
        Ok(())
    }

    /// Shifts `<file>.k` to `<file>.k+1` (dropping the oldest), moves the file to `<file>.1`
    /// (gzipped if asked), and opens a fresh file.
    fn rotate(&mut self) -> io::Result<()> {
        let Rotation {
            retain, compress, ..
        } = self.rotation;
        let ext = if compress { ".gz" } else { "" };
        self.file = None;
        if retain == 0 {
            remove_if_exists(&self.path)?;
        } else {
            remove_if_exists(&rotated(&self.path, retain, ext))?;
            for k in (1..retain).rev() {
                rename_if_exists(
                    &rotated(&self.path, k, ext),
                    &rotated(&self.path, k + 1, ext),
                )?;
            }
            let first = rotated(&self.path, 1, "");
            fs::rename(&self.path, &first)?;
            if compress {
                gzip(&first, &rotated(&self.path, 1, ext))?;
            }
        }
        self.open()
    }

    /// Empties the file and removes its rotated files (`pm2rs flush`).
    pub fn flush(&mut self) -> io::Result<()> {
        flush_path(&self.path, self.rotation.retain)?;
        self.size = 0;
        Ok(())
    }
}

/// Empties `path` if it is a regular file and removes up to `retain` rotated files of it.
pub fn flush_path(path: &Path, retain: u32) -> io::Result<()> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_file() => {
            OpenOptions::new().write(true).open(path)?.set_len(0)?;
        }
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    for k in 1..=retain.max(1) {
        for ext in ["", ".gz"] {
            remove_if_exists(&rotated(path, k, ext))?;
        }
    }
    Ok(())
}

/// `<path>.<k><ext>`.
pub fn rotated(path: &Path, k: u32, ext: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{k}{ext}"));
    PathBuf::from(name)
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Compresses `from` into `to` and removes `from`.
fn gzip(from: &Path, to: &Path) -> io::Result<()> {
    let mut input = File::open(from)?;
    let out = File::create(to)?;
    let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    io::copy(&mut input, &mut encoder)?;
    encoder.finish()?.sync_all()?;
    fs::remove_file(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(dir: &Path, max_size: u64, retain: u32, compress: bool) -> Sink {
        Sink::new(
            dir.join("sub/app.log"),
            Rotation {
                max_size,
                retain,
                compress,
            },
            Arc::new(AtomicU64::new(0)),
        )
    }

    #[test]
    fn rotation_keeps_retain_files_whole_lines_and_the_newest_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path(), 1024, 3, false);
        let all: Vec<String> = (0..1000).map(|i| format!("line {i:05}\n")).collect();
        for chunk in all.chunks(37) {
            s.write(chunk.concat().as_bytes()).unwrap();
        }
        let base = dir.path().join("sub/app.log");
        assert!(!rotated(&base, 4, "").exists());
        let mut kept = String::new();
        for k in (1..=3).rev() {
            let text = fs::read_to_string(rotated(&base, k, "")).unwrap();
            assert!(text.len() <= 1024 && text.ends_with('\n'));
            kept.push_str(&text);
        }
        kept.push_str(&fs::read_to_string(&base).unwrap());
        assert!(
            all.concat().ends_with(&kept),
            "kept lines are not the newest, in order"
        );
        assert!(kept.len() > 3 * 1000, "too little kept: {}", kept.len());
    }

    #[test]
    fn gzip_rotation_and_a_line_longer_than_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path(), 1024, 2, true);
        let long = format!("{}\n", "x".repeat(3000));
        s.write(b"short\n").unwrap();
        s.write(long.as_bytes()).unwrap();
        s.write(b"after\n").unwrap();
        let base = dir.path().join("sub/app.log");
        assert_eq!(fs::read_to_string(&base).unwrap(), "after\n");
        let mut text = String::new();
        let gz = File::open(rotated(&base, 1, ".gz")).unwrap();
        io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gz), &mut text).unwrap();
        assert_eq!(text, long);
        assert!(rotated(&base, 2, ".gz").exists());
        assert!(!rotated(&base, 1, "").exists());
    }

    #[test]
    fn a_full_device_is_reported_then_cleared_and_a_deleted_dir_recreated() {
        let mut full = Sink::new(
            PathBuf::from("/dev/full"),
            Rotation {
                max_size: 1024,
                retain: 1,
                compress: false,
            },
            Arc::new(AtomicU64::new(0)),
        );
        let (done, err) = full.write(b"hello\n").unwrap_err();
        assert_eq!(done, 0);
        assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC));
        assert!(full.problem().unwrap().contains("/dev/full"));

        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path(), 0, 0, false);
        s.write(b"one\n").unwrap();
        fs::remove_dir_all(dir.path().join("sub")).unwrap();
        s.last_check = Instant::now() - PATH_CHECK;
        s.write(b"two\n").unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("sub/app.log")).unwrap(),
            "two\n"
        );
        assert!(s.problem().is_none());
    }

    #[test]
    fn a_new_generation_reopens_and_flush_empties() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path(), 0, 2, false);
        s.write(b"before\n").unwrap();
        let base = dir.path().join("sub/app.log");
        fs::rename(&base, dir.path().join("moved.log")).unwrap();
        s.generation.fetch_add(1, Ordering::Relaxed);
        s.write(b"after\n").unwrap();
        assert_eq!(fs::read_to_string(&base).unwrap(), "after\n");
        s.flush().unwrap();
        assert_eq!(fs::read_to_string(&base).unwrap(), "");
    }
}
