//! The daemon's home directory: its layout, permissions, the pid-file lock that makes one daemon per
//! home, and binding the control socket without ever stealing a live daemon's.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use pm2rs_proto::{DAEMON_LOG_FILE, PID_FILE, SOCKET_FILE};
use tokio::net::UnixListener;

/// Longest path a Unix socket address can hold on Linux (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Why the daemon could not take its home.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("another pm2rs daemon (pid {pid}) already runs for {home}")]
    AlreadyRunning { pid: String, home: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "socket path {0} is longer than the {MAX_SOCKET_PATH} bytes Unix allows; \
         set PM2RS_HOME to a shorter directory"
    )]
    SocketPathTooLong(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> HomeError + '_ {
    move |source| HomeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Paths inside one home.
#[derive(Debug, Clone)]
pub struct Home {
    pub dir: PathBuf,
}

impl Home {
    pub fn new(dir: PathBuf) -> Self {
        Home { dir }
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join(SOCKET_FILE)
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join(PID_FILE)
    }
    pub fn daemon_log(&self) -> PathBuf {
        self.dir.join(DAEMON_LOG_FILE)
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Creates the home (mode 0700) and its logs directory.
    pub fn prepare(&self) -> Result<(), HomeError> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(&self.dir))?;
        let logs = self.logs_dir();
        fs::create_dir_all(&logs).map_err(io_err(&logs))?;
        Ok(())
    }

    /// Takes the exclusive lock on the pid file and writes our pid into it. The lock is held as long as
    /// the returned value lives, so a second daemon for the same home refuses to start.
    pub fn lock(&self) -> Result<Flock<File>, HomeError> {
        let path = self.pid_file();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, _)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(HomeError::AlreadyRunning {
                    pid: pid.trim().to_string(),
                    home: self.dir.clone(),
                });
            }
        };
        lock.set_len(0).map_err(io_err(&path))?;
        lock.rewind().map_err(io_err(&path))?;
        writeln!(lock, "{}", std::process::id()).map_err(io_err(&path))?;
        lock.sync_all().map_err(io_err(&path))?;
        Ok(lock)
    }

    /// Binds the control socket (mode 0600). Call with the pid-file lock held: holding it proves no
    /// live daemon owns the socket, so any socket file left there is stale and is replaced.
    pub fn bind(&self, _lock: &Flock<File>) -> Result<UnixListener, HomeError> {
        let path = self.socket();
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(HomeError::SocketPathTooLong(path));
        }
        match fs::remove_file(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "removed a stale socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        // The home is 0700 already; the umask closes the window before chmod too.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(&path);
        nix::sys::stat::umask(old);
        let listener = bound.map_err(io_err(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(io_err(&path))?;
        Ok(listener)
    }

    /// Removes the socket and pid file (on clean exit).
    pub fn cleanup(&self) {
        let _ = fs::remove_file(self.socket());
        let _ = fs::remove_file(self.pid_file());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_the_same_home_is_refused_and_names_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("h"));
        home.prepare().unwrap();
        let mode = fs::metadata(&home.dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let _first = home.lock().unwrap();
        match home.lock() {
            Err(HomeError::AlreadyRunning { pid, .. }) => {
                assert_eq!(pid, std::process::id().to_string())
            }
            other => panic!("expected AlreadyRunning, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_and_new_one_is_0600() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().to_path_buf());
        home.prepare().unwrap();
        fs::write(home.socket(), b"stale").unwrap();
        let lock = home.lock().unwrap();
        let _listener = home.bind(&lock).unwrap();
        let meta = fs::metadata(home.socket()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        use std::os::unix::fs::FileTypeExt;
        assert!(meta.file_type().is_socket());
    }
}
