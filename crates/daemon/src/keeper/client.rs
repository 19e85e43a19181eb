//! The daemon's side of the fd keeper: connect (starting a keeper when none answers), take back
//! what a previous daemon left, then keep the keeper current with one-way messages that never
//! wait on it for long.

use std::io::{self, BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use serde::Serialize;
use tracing::{debug, info, warn};

use super::{PROTOCOL, Reply, Request, recv, send, socket_path};

/// How long a starting daemon waits for a keeper to start or to hand its entries back.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a message may wait for room in the socket's buffer (the keeper reads at once; only a
/// burst of hundreds of spawns in one step can fill it) before it is given up, with a warning.
const SEND_WAIT: Duration = Duration::from_millis(200);

/// An entry a previous daemon left with the keeper.
#[derive(Debug)]
pub struct Kept {
    pub key: String,
    pub meta: serde_json::Value,
    pub fds: Vec<OwnedFd>,
}

/// The connection to the keeper; cheap to clone. [`Keeper::none`] is a daemon without one (the
/// in-process tests, or a keeper that could not start): every call does nothing.
#[derive(Clone, Default)]
pub struct Keeper {
    conn: Option<Arc<Conn>>,
}

struct Conn {
    sock: OwnedFd,
    /// Set once a successor is to take over (`update`), or the daemon is failing: from then on
    /// nothing is removed from the keeper.
    detached: AtomicBool,
    /// Set when a message could not be sent: the keeper is gone or stuck (said once).
    lost: AtomicBool,
    pid: u32,
}

impl Keeper {
    /// No keeper: apps do not outlive this daemon.
    pub fn none() -> Keeper {
        Keeper { conn: None }
    }

    /// Connects to `home`'s keeper, or starts one (`exe keeper`, in a session of its own), and
    /// takes back every entry a previous daemon left. Call with the home's lock held.
    pub fn connect_or_start(home: &Path, exe: &Path) -> anyhow::Result<(Keeper, Vec<Kept>)> {
        let path = socket_path(home);
        let sock = match connect(&path) {
            Ok(sock) => sock,
            Err(e) => {
                debug!(%e, "no keeper answers; starting one");
                start(home, exe)?;
                connect(&path).with_context(|| format!("cannot connect to {}", path.display()))?
            }
        };
        let timeout = nix::sys::time::TimeVal::new(START_TIMEOUT.as_secs() as i64, 0);
        socket::setsockopt(&sock, socket::sockopt::ReceiveTimeout, &timeout)?;
        send(
            sock.as_fd(),
            &Request::Hello { protocol: PROTOCOL },
            &[],
            MsgFlags::empty(),
        )?;
        let pid = match recv::<Reply>(sock.as_fd())? {
            Some((Reply::Hello { protocol, pid }, _)) if protocol == PROTOCOL => pid,
            Some((Reply::Hello { protocol, pid }, _)) => anyhow::bail!(
                "the fd keeper (pid {pid}) speaks protocol {protocol}, this daemon {PROTOCOL}"
            ),
            other => anyhow::bail!("the fd keeper answered {other:?} to hello"),
        };
        send(sock.as_fd(), &Request::Take, &[], MsgFlags::empty())?;
        let mut kept = Vec::new();
        loop {
            match recv::<Reply>(sock.as_fd())? {
                Some((Reply::Entry { key, meta }, fds)) => kept.push(Kept { key, meta, fds }),
                Some((Reply::End { .. }, _)) => break,
                other => anyhow::bail!("the fd keeper sent {other:?} while handing entries back"),
            }
        }
        info!(pid, entries = kept.len(), "fd keeper connected");
        let conn = Conn {
            sock,
            detached: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            pid,
        };
        Ok((
            Keeper {
                conn: Some(Arc::new(conn)),
            },
            kept,
        ))
    }

    /// The keeper's pid, when there is one.
    pub fn pid(&self) -> Option<u32> {
        self.conn.as_ref().map(|c| c.pid)
    }

    /// Whether fds given now would outlive the daemon.
    pub fn is_active(&self) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| !c.lost.load(Ordering::Relaxed))
    }

    /// Keeps `fds` under `key` with its description.
    pub fn put(&self, key: &str, meta: &impl Serialize, fds: &[BorrowedFd<'_>]) {
        let Ok(meta) = serde_json::to_value(meta) else {
            return;
        };
        self.send(
            &Request::Put {
                key: key.to_string(),
                meta,
            },
            fds,
        );
    }

    /// Replaces the description of `key`.
    pub fn update(&self, key: &str, meta: &impl Serialize) {
        let Ok(meta) = serde_json::to_value(meta) else {
            return;
        };
        self.send(
            &Request::Update {
                key: key.to_string(),
                meta,
            },
            &[],
        );
    }

    /// Closes what `key` holds in the keeper (unless a successor is to take over).
    pub fn remove(&self, key: &str) {
        if self
            .conn
            .as_ref()
            .is_some_and(|c| c.detached.load(Ordering::Relaxed))
        {
            return;
        }
        self.send(
            &Request::Remove {
                key: key.to_string(),
            },
            &[],
        );
    }

    /// A guard that removes `key` when the last clone is dropped: held by whatever needs the
    /// entry (an instance's run, its log drains).
    pub fn guard(&self, key: String) -> Arc<Guard> {
        Arc::new(Guard {
            keeper: self.clone(),
            key,
        })
    }

    /// From now on nothing is removed: what the keeper holds is for the next daemon.
    pub fn detach(&self) {
        if let Some(c) = &self.conn {
            c.detached.store(true, Ordering::Relaxed);
        }
    }

    /// Asks the keeper to close everything and exit (every app is stopped).
    pub fn quit(&self) {
        if self
            .conn
            .as_ref()
            .is_some_and(|c| !c.detached.load(Ordering::Relaxed))
        {
            self.send(&Request::Quit, &[]);
        }
    }

    fn send(&self, request: &Request, fds: &[BorrowedFd<'_>]) {
        let Some(conn) = &self.conn else { return };
        if conn.lost.load(Ordering::Relaxed) {
            return;
        }
        let deadline = Instant::now() + SEND_WAIT;
        let sent = loop {
            match send(conn.sock.as_fd(), request, fds, MsgFlags::MSG_DONTWAIT) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    // The keeper is reading; wait for room, briefly.
                    let mut pfd = [PollFd::new(conn.sock.as_fd(), PollFlags::POLLOUT)];
                    let _ = poll(&mut pfd, PollTimeout::from(10u8));
                }
                other => break other,
            }
        };
        if let Err(e) = sent
            && !conn.lost.swap(true, Ordering::Relaxed)
        {
            warn!(
                %e,
                pid = conn.pid,
                "lost the fd keeper: apps started from now on will not outlive this daemon"
            );
        }
    }
}

/// Removes its key from the keeper when dropped, unless the daemon is handing over or a panic is
/// unwinding (the next daemon takes the entry over then).
pub struct Guard {
    keeper: Keeper,
    key: String,
}

impl Guard {
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.keeper.remove(&self.key);
        }
    }
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Guard").field(&self.key).finish()
    }
}

pub(super) fn connect(path: &Path) -> io::Result<OwnedFd> {
    let sock = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    socket::connect(sock.as_raw_fd(), &addr)?;
    Ok(sock)
}

/// Starts `exe keeper` in a session of its own and waits for its `ready` line.
fn start(home: &Path, exe: &Path) -> anyhow::Result<()> {
    let mut cmd = Command::new(exe);
    cmd.arg0("pm2rs")
        .arg("keeper")
        .env("PM2RS_HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches nothing of the parent's.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start the fd keeper ({} keeper)", exe.display()))?;
    let stdout = child.stdout.take().context("no stdout from the keeper")?;
    let mut pfd = [PollFd::new(stdout.as_fd(), PollFlags::POLLIN)];
    let ms = u16::try_from(START_TIMEOUT.as_millis()).unwrap_or(u16::MAX);
    let ready = poll(&mut pfd, PollTimeout::from(ms)).unwrap_or(0) > 0;
    let mut line = String::new();
    if ready {
        let _ = BufReader::new(stdout).read_line(&mut line);
    }
    if !line.starts_with("ready") {
        let _ = child.kill();
        let _ = child.wait();
        anyhow::bail!(
            "the fd keeper did not start within {}s",
            START_TIMEOUT.as_secs()
        );
    }
    // Not waited for: it outlives this daemon. The orphan sweep reaps it if it ends first.
    drop(child);
    Ok(())
}
