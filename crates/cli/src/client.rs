//! The CLI's connection to the daemon: HTTP/1.1 over the Unix socket, typed requests and replies,
//! starting the daemon in the background when nobody answers, and the version check.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use pm2rs_proto::{ApiError, ErrorKind, HOME_ENV, SOCKET_FILE, VERSION, VERSION_HEADER, routes};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

/// How long to wait for a freshly started daemon's ready line.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(10);

/// An error the daemon answered with; carries its kind so `main` can choose the exit code.
#[derive(Debug)]
pub struct DaemonError(pub ApiError);

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl std::error::Error for DaemonError {}

/// The daemon's home directory: `$PM2RS_HOME`, else the per-user data directory.
pub fn home_dir() -> anyhow::Result<PathBuf> {
    if let Some(h) = std::env::var_os(HOME_ENV).filter(|h| !h.is_empty()) {
        let h = PathBuf::from(h);
        return Ok(if h.is_absolute() {
            h
        } else {
            std::env::current_dir()?.join(h)
        });
    }
    directories::ProjectDirs::from("", "", "pm2rs")
        .map(|d| d.data_dir().to_path_buf())
        .ok_or_else(|| anyhow!("cannot find a home directory; set {HOME_ENV}"))
}

/// A connected client.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    home: PathBuf,
}

/// How long [`Client::connect`] waits for a dying daemon's socket to close.
const DYING_WAIT: Duration = Duration::from_secs(2);

impl Client {
    /// Connects to the daemon of `home`, starting it first when nobody answers.
    pub async fn connect_or_start(home: &Path) -> anyhow::Result<Client> {
        match Self::connect(home).await? {
            Some(c) => Ok(c),
            None => {
                start_daemon(home)?;
                // Our daemon answers at once (it said `ready` after binding). When another CLI's
                // daemon won the home's lock, ours exited and the winner may still be starting:
                // its socket answers once it is ready, within the start timeout.
                let deadline = Instant::now() + DAEMON_START_TIMEOUT;
                let mut pause = Duration::from_millis(1);
                loop {
                    if let Some(c) = Self::connect(home).await? {
                        return Ok(c);
                    }
                    if Instant::now() >= deadline {
                        return Err(anyhow!(
                            "the daemon started but its socket does not answer within {}s; see {}",
                            DAEMON_START_TIMEOUT.as_secs(),
                            home.join(pm2rs_proto::DAEMON_LOG_FILE).display()
                        ));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
    }

    /// Connects if a daemon answers; `Ok(None)` when none runs. A daemon that is dying (killed:
    /// its main thread is gone while its last threads end, so its socket still takes connections
    /// it will never answer) counts as none once its socket has closed.
    pub async fn connect(home: &Path) -> anyhow::Result<Option<Client>> {
        let deadline = Instant::now() + DYING_WAIT;
        loop {
            let Some(stream) = Self::open(home).await? else {
                return Ok(None);
            };
            if !daemon_dying(home) || Instant::now() >= deadline {
                return Self::handshake(home, stream).await.map(Some);
            }
            drop(stream);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The control socket's connection, `None` when nobody listens.
    async fn open(home: &Path) -> anyhow::Result<Option<UnixStream>> {
        let path = home.join(SOCKET_FILE);
        let stream = match UnixStream::connect(&path).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None);
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot connect to {}", path.display()));
            }
        };
        Ok(Some(stream))
    }

    async fn handshake(home: &Path, stream: UnixStream) -> anyhow::Result<Client> {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("handshake with the daemon failed")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Client {
            sender,
            home: home.to_path_buf(),
        })
    }

    /// GET `path` and decode the reply.
    pub async fn get<R: DeserializeOwned>(&mut self, path: &str) -> anyhow::Result<R> {
        self.send(Method::GET, path, Bytes::new()).await
    }

    /// POST `body` as JSON to `path` and decode the reply.
    pub async fn post<B: Serialize, R: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<R> {
        let bytes = serde_json::to_vec(body)?;
        self.send(Method::POST, path, Bytes::from(bytes)).await
    }

    /// GET `path` and return the body as it arrives (for streams such as the log stream).
    pub async fn stream(&mut self, path: &str) -> anyhow::Result<hyper::body::Incoming> {
        let resp = self.request(Method::GET, path, Bytes::new()).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.into_body().collect().await?.to_bytes();
            if let Ok(err) = serde_json::from_slice::<ApiError>(&body) {
                return Err(DaemonError(err).into());
            }
            bail!(
                "the daemon answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(resp.into_body())
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "pm2rs")
            .header("content-type", "application/json")
            .header(VERSION_HEADER, VERSION)
            .body(Full::new(body))?;
        let sent = self.sender.send_request(req).await;
        sent.with_context(|| match daemon_dying(&self.home) {
            true => "the daemon ended before it answered (see its log pm2rs.log); run the \
                     command again: the next daemon takes the running apps over"
                .to_string(),
            false => "the daemon closed the connection (it refuses clients running as another \
                      user; see its log pm2rs.log)"
                .to_string(),
        })
    }

    async fn send<R: DeserializeOwned>(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<R> {
        let resp = self.request(method, path, body).await?;
        let status = resp.status();
        let daemon_version = resp
            .headers()
            .get(VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            if let Ok(err) = serde_json::from_slice::<ApiError>(&body) {
                return Err(DaemonError(err).into());
            }
            bail!(
                "the daemon answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        // Ping, kill and handover work across versions: an old daemon can always be identified,
        // stopped or replaced.
        let exempt = [routes::PING, routes::KILL, routes::HANDOVER].contains(&path);
        if let Some(v) = daemon_version
            && v != VERSION
            && !exempt
        {
            return Err(DaemonError(ApiError {
                kind: ErrorKind::VersionMismatch,
                message: format!(
                    "this pm2rs CLI is version {VERSION} but the running daemon is version {v}; \
                     run `pm2rs update` to replace it with this version (apps keep running)"
                ),
            })
            .into());
        }
        serde_json::from_slice(&body).context("cannot decode the daemon's reply")
    }
}

/// Whether the daemon named by the home's pid file has ended or is ending (a zombie). The pid
/// file is written before the socket is bound, so it names whoever the socket leads to; no file or
/// no pid in it says nothing (`false`).
fn daemon_dying(home: &Path) -> bool {
    std::fs::read_to_string(home.join(pm2rs_proto::PID_FILE))
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        .is_some_and(|pid| !pm2rs_daemon::process::is_running(nix::unistd::Pid::from_raw(pid)))
}

/// Starts `pm2rs daemon --detached` in a new session and waits for its `ready` line (no fixed sleep).
/// Another CLI racing us to start the same daemon is fine: the loser's daemon reports "already runs"
/// and we use the winner's.
fn start_daemon(home: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the pm2rs executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("daemon")
        .arg("--detached")
        .env(HOME_ENV, home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().context("cannot start the pm2rs daemon")?;
    let stdout = child.stdout.take().context("daemon stdout")?;
    let mut stderr = child.stderr.take().context("daemon stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(DAEMON_START_TIMEOUT) {
        Ok(line) if line.starts_with("ready") => Ok(()),
        Ok(_) => {
            // The daemon exited before it was ready: its stderr says why.
            let mut why = String::new();
            let _ = stderr.read_to_string(&mut why);
            let _ = child.wait();
            if why.contains("already runs") {
                return Ok(());
            }
            bail!("the pm2rs daemon failed to start: {}", why.trim())
        }
        Err(_) => bail!(
            "the pm2rs daemon did not become ready within {}s; see {}",
            DAEMON_START_TIMEOUT.as_secs(),
            home.join(pm2rs_proto::DAEMON_LOG_FILE).display()
        ),
    }
}
