//! The fd keeper: a tiny process (`pm2rs keeper`, the same binary) that holds a duplicate of
//! every file descriptor the apps depend on and the daemon would otherwise be the only one to
//! hold (the read ends of their log pipes, their Node IPC channels, the cluster apps' listening
//! sockets), so those outlive the daemon. When the daemon is killed (kill -9, the OOM killer, a
//! panic) or replaced (`pm2rs update`), the apps keep running: their pipes stay open (an app
//! writing a lot blocks on its full pipe, it loses nothing), their ports keep accepting
//! connections into the listening sockets' backlog. The next daemon connects to the keeper, gets
//! every entry back over SCM_RIGHTS and takes the instances over.
//!
//! # Protocol
//! `$PM2RS_HOME/keeper.sock`, a Unix SOCK_SEQPACKET socket (mode 0600, in the 0700 home): one
//! message per request, each a JSON [`Request`] plus up to [`MAX_FDS`] descriptors. The keeper
//! serves one daemon at a time (the home's lock makes one daemon per home) and answers only
//! `hello` and `take`; `put`, `update`, `remove` are one-way, so a daemon never waits on it while
//! running. Entries are a key, an opaque JSON value (the daemon's description of what the fds
//! are) and the fds; the keeper understands none of it. [`PROTOCOL`] is bumped on any change that
//! an older keeper could not serve: a daemon of a later version still talks to the keeper an older
//! one started (after `pm2rs update`, the keeper is the old binary).
//!
//! # Lifetime
//! Started by the daemon (in a session of its own, so a terminal's signals do not reach it) when
//! none answers. It exits on `quit` (the daemon stopped every app and is ending), or when its daemon
//! went away while it held nothing. While it holds entries and no daemon is connected it waits for
//! the next one, however long: what it holds is an app's unread output and its port.
//!
//! # Layout
//! - this file: the wire format (shared by both sides), and [`run`], the keeper process itself;
//! - `client`: the daemon's side, [`Keeper`].

mod client;

pub use client::{Guard, Keeper, Kept};

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use serde::{Deserialize, Serialize};

/// Version of the keeper protocol (see the module doc).
pub const PROTOCOL: u32 = 1;

/// Most descriptors in one entry.
pub const MAX_FDS: usize = 32;

/// Largest message (the JSON part).
const MAX_MESSAGE: usize = 64 * 1024;

/// The keeper's socket and lock file in a home.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join("keeper.sock")
}

/// Whether a keeper listens in `home` (it then holds what a daemon left, or serves one).
pub fn answers(home: &Path) -> bool {
    client::connect(&socket_path(home)).is_ok()
}

fn lock_path(home: &Path) -> PathBuf {
    home.join("keeper.pid")
}

/// What the daemon asks.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Answered with [`Reply::Hello`].
    Hello { protocol: u32 },
    /// Keep these fds under `key` (replacing what `key` held).
    Put {
        key: String,
        meta: serde_json::Value,
    },
    /// Replace the description of `key`, keeping its fds.
    Update {
        key: String,
        meta: serde_json::Value,
    },
    /// Close what `key` holds and forget it.
    Remove { key: String },
    /// Send every entry (the keeper keeps its copies), then [`Reply::End`].
    Take,
    /// Close everything and exit.
    Quit,
}

/// What the keeper answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Reply {
    Hello {
        protocol: u32,
        pid: u32,
    },
    /// One entry, its fds in the same message.
    Entry {
        key: String,
        meta: serde_json::Value,
    },
    End {
        entries: usize,
    },
}

/// Sends one message with `fds` attached. `flags` as for sendmsg (the daemon's runtime side
/// never blocks: `MSG_DONTWAIT`).
fn send<T: Serialize>(
    sock: BorrowedFd<'_>,
    msg: &T,
    fds: &[BorrowedFd<'_>],
    flags: MsgFlags,
) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if body.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
        return Err(io::Error::other("keeper message too large"));
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    let iov = [IoSlice::new(&body)];
    loop {
        match socket::sendmsg::<()>(
            sock.as_raw_fd(),
            &iov,
            cmsgs,
            flags | MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message and its fds (close-on-exec). `Ok(None)` at end of stream.
fn recv<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut body = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut body)];
        match socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        // SAFETY: the kernel just installed these descriptors in this process
                        // for us; nothing else owns them.
                        fds.extend(
                            raw.into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                if msg
                    .flags
                    .contains(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
                {
                    return Err(io::Error::other("keeper message truncated"));
                }
                break (msg.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    };
    if len == 0 {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&body[..len]).map_err(io::Error::other)?;
    Ok(Some((msg, fds)))
}

/// One kept entry, in the keeper.
struct Entry {
    meta: serde_json::Value,
    fds: Vec<OwnedFd>,
}

/// The keeper process: `pm2rs keeper` (with `PM2RS_HOME` set by the daemon). Prints `ready` on
/// stdout once it listens, then detaches its stdio. Returns when it should exit.
pub fn run(home: &Path) -> anyhow::Result<()> {
    let listening = Listening::open(home)?;
    ignore_signals();
    raise_fd_limit();
    let mut out = io::stdout();
    writeln!(out, "ready {}", std::process::id())?;
    out.flush()?;
    detach_stdio();
    listening.serve()
}

/// A keeper's lock and listening socket.
struct Listening {
    listener: OwnedFd,
    path: PathBuf,
    lock_file: PathBuf,
    _lock: Flock<std::fs::File>,
}

impl Listening {
    /// Takes the keeper's lock of `home` (one keeper per home) and listens on its socket.
    fn open(home: &Path) -> anyhow::Result<Listening> {
        let lock_file = lock_path(home);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_file)
            .with_context(|| format!("cannot open {}", lock_file.display()))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err(_) => anyhow::bail!("another keeper already runs for {}", home.display()),
        };
        lock.set_len(0)?;
        writeln!(lock, "{}", std::process::id())?;
        let path = socket_path(home);
        // Holding the lock proves the socket file, if any, is a dead keeper's.
        let _ = std::fs::remove_file(&path);
        let listener = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixAddr::new(&path).and_then(|addr| socket::bind(listener.as_raw_fd(), &addr));
        nix::sys::stat::umask(old);
        bound.with_context(|| format!("cannot bind {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        socket::listen(&listener, Backlog::new(4).unwrap_or(Backlog::MAXCONN))?;
        Ok(Listening {
            listener,
            path,
            lock_file,
            _lock: lock,
        })
    }

    /// Serves one daemon after the other until told to quit, or until a daemon went away while
    /// nothing was kept.
    fn serve(self) -> anyhow::Result<()> {
        let uid = nix::unistd::getuid();
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        loop {
            let conn = match socket::accept4(self.listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 returned a new descriptor that nothing else owns.
                Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => continue,
                Err(e) => return Err(e).context("keeper: accept failed"),
            };
            // Only the daemon's user may talk to the keeper (the socket is 0600 already).
            let peer = socket::getsockopt(&conn, socket::sockopt::PeerCredentials);
            if !peer.is_ok_and(|c| c.uid() == uid.as_raw()) {
                continue;
            }
            match serve(conn.as_fd(), &mut entries) {
                Served::Quit => break,
                Served::Gone if entries.is_empty() => break,
                Served::Gone => {}
            }
        }
        drop(entries);
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.lock_file);
        Ok(())
    }
}

enum Served {
    /// The daemon asked the keeper to exit.
    Quit,
    /// The daemon disconnected (it ended, or died).
    Gone,
}

/// Serves one daemon until it disconnects or says `quit`.
fn serve(conn: BorrowedFd<'_>, entries: &mut BTreeMap<String, Entry>) -> Served {
    loop {
        let (request, fds) = match recv::<Request>(conn) {
            Ok(Some(m)) => m,
            Ok(None) => return Served::Gone,
            // A malformed message from our own user's daemon: drop the connection, keep
            // everything.
            Err(_) => return Served::Gone,
        };
        let answered = match request {
            Request::Hello { .. } => send(
                conn,
                &Reply::Hello {
                    protocol: PROTOCOL,
                    pid: std::process::id(),
                },
                &[],
                MsgFlags::empty(),
            ),
            Request::Put { key, meta } => {
                entries.insert(key, Entry { meta, fds });
                Ok(())
            }
            Request::Update { key, meta } => {
                if let Some(e) = entries.get_mut(&key) {
                    e.meta = meta;
                }
                Ok(())
            }
            Request::Remove { key } => {
                entries.remove(&key);
                Ok(())
            }
            Request::Take => take(conn, entries),
            Request::Quit => return Served::Quit,
        };
        if answered.is_err() {
            return Served::Gone;
        }
    }
}

fn take(conn: BorrowedFd<'_>, entries: &BTreeMap<String, Entry>) -> io::Result<()> {
    for (key, e) in entries {
        let fds: Vec<BorrowedFd<'_>> = e.fds.iter().map(AsFd::as_fd).collect();
        let reply = Reply::Entry {
            key: key.clone(),
            meta: e.meta.clone(),
        };
        send(conn, &reply, &fds, MsgFlags::empty())?;
    }
    send(
        conn,
        &Reply::End {
            entries: entries.len(),
        },
        &[],
        MsgFlags::empty(),
    )
}

/// A terminal's hang-up or Ctrl-C must not end the keeper (it runs in a session of its own
/// anyway); a write to a daemon that just died must not either.
fn ignore_signals() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    for sig in [Signal::SIGHUP, Signal::SIGINT, Signal::SIGPIPE] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
}

/// The keeper holds a few fds per instance: the soft limit (often 1,024) goes up to the hard one.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn detach_stdio() {
    if let Ok(devnull) = OpenOptions::new().read(true).write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&devnull);
        let _ = nix::unistd::dup2_stdout(&devnull);
        let _ = nix::unistd::dup2_stderr(&devnull);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A keeper serving on a thread of the test process, in a temp home.
    fn keeper_thread(home: &Path) -> std::thread::JoinHandle<anyhow::Result<()>> {
        let listening = Listening::open(home).expect("keeper listens");
        std::thread::spawn(move || listening.serve())
    }

    fn connect(home: &Path) -> (Keeper, Vec<Kept>) {
        // The keeper answers, so nothing is started: a program that cannot run proves it.
        Keeper::connect_or_start(home, Path::new("/nonexistent/pm2rs")).expect("connected")
    }

    #[test]
    fn entries_outlive_a_daemon_and_come_back_with_their_fds() {
        let dir = tempfile::tempdir().unwrap();
        let thread = keeper_thread(dir.path());
        let (read, mut write) = std::io::pipe().unwrap();
        let read: OwnedFd = read.into();
        {
            let (keeper, kept) = connect(dir.path());
            assert!(kept.is_empty());
            keeper.put("run/1", &serde_json::json!({"id": 1}), &[read.as_fd()]);
            keeper.put("run/2", &serde_json::json!({"id": 2}), &[]);
            keeper.update("run/1", &serde_json::json!({"id": 7}));
            keeper.remove("run/2");
            // The daemon goes away (as if killed): the keeper keeps what it holds.
        }
        drop(read);
        write.write_all(b"written while no daemon ran\n").unwrap();
        drop(write);
        let (keeper, mut kept) = connect(dir.path());
        assert_eq!(kept.len(), 1, "{kept:?}");
        let entry = kept.remove(0);
        assert_eq!(entry.key, "run/1");
        assert_eq!(entry.meta, serde_json::json!({"id": 7}));
        assert_eq!(entry.fds.len(), 1);
        let mut text = String::new();
        std::fs::File::from(entry.fds.into_iter().next().unwrap())
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "written while no daemon ran\n");
        keeper.quit();
        thread.join().unwrap().unwrap();
        assert!(
            !socket_path(dir.path()).exists(),
            "the socket is removed at exit"
        );
    }

    #[test]
    fn a_keeper_left_with_nothing_exits_when_its_daemon_goes() {
        let dir = tempfile::tempdir().unwrap();
        let thread = keeper_thread(dir.path());
        let (keeper, _) = connect(dir.path());
        keeper.put("run/1", &serde_json::json!({}), &[]);
        keeper.remove("run/1");
        drop(keeper);
        thread.join().unwrap().unwrap();
    }

    #[test]
    fn a_detached_daemon_removes_nothing_and_a_second_keeper_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let thread = keeper_thread(dir.path());
        assert!(Listening::open(dir.path()).is_err(), "one keeper per home");
        {
            let (keeper, _) = connect(dir.path());
            keeper.put("run/1", &serde_json::json!({}), &[]);
            let guard = keeper.guard("run/1".into());
            keeper.detach();
            drop(guard);
            keeper.quit();
        }
        let (keeper, kept) = connect(dir.path());
        assert_eq!(kept.len(), 1, "a handover keeps every entry: {kept:?}");
        let guard = keeper.guard("run/1".into());
        drop(guard);
        keeper.quit();
        thread.join().unwrap().unwrap();
    }
}
