//! The sd_notify protocol: a datagram Unix socket (`NOTIFY_SOCKET`) on which any instance may send
//! `READY=1`, `STATUS=…`, `STOPPING=1` and `WATCHDOG=1` (newline-separated `KEY=value` lines). The
//! kernel tells us the sender's pid (SCM_CREDENTIALS), which the supervisor maps to an instance.

use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, setsockopt, sockopt,
};
use nix::unistd::Pid;
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::Notice;

/// Largest datagram read; longer ones are truncated (systemd's limit is similar).
const MAX_DATAGRAM: usize = 4096;

/// What one notification said. Unknown keys are ignored, as systemd does.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Message {
    pub ready: bool,
    pub stopping: bool,
    pub watchdog: bool,
    pub status: Option<String>,
}

impl Message {
    /// Parses the `KEY=value` lines of one datagram.
    pub fn parse(text: &str) -> Message {
        let mut m = Message::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("READY", "1")) => m.ready = true,
                Some(("STOPPING", "1")) => m.stopping = true,
                Some(("WATCHDOG", "1")) => m.watchdog = true,
                Some(("STATUS", s)) => m.status = Some(s.chars().take(200).collect()),
                _ => {}
            }
        }
        m
    }
}

/// Binds the notify socket at `path` (replacing a stale one) with SO_PASSCRED on.
pub fn bind(path: &Path) -> std::io::Result<UnixDatagram> {
    let _ = std::fs::remove_file(path);
    let socket = UnixDatagram::bind(path)?;
    setsockopt(&socket, sockopt::PassCred, &true).map_err(std::io::Error::from)?;
    Ok(socket)
}

/// Reads notifications until the supervisor goes away, forwarding each with its sender's pid.
pub async fn run(socket: UnixDatagram, notices: mpsc::Sender<Notice>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        let got = socket.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!(UnixCredentials);
            let msg = recvmsg::<()>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_DONTWAIT,
            )
            .map_err(std::io::Error::from)?;
            let pid = msg.cmsgs().ok().and_then(|mut c| {
                c.find_map(|m| match m {
                    ControlMessageOwned::ScmCredentials(cred) => Some(Pid::from_raw(cred.pid())),
                    _ => None,
                })
            });
            Ok((msg.bytes, pid))
        });
        match got {
            Ok((len, Some(pid))) => {
                let text = String::from_utf8_lossy(&buf[..len.min(buf.len())]);
                let message = Message::parse(&text);
                debug!(pid = pid.as_raw(), ?message, "notify");
                if notices.send(Notice::Notify { pid, message }).await.is_err() {
                    return;
                }
            }
            Ok((_, None)) => debug!("notification without credentials ignored"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                warn!(%e, "reading the notify socket failed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_like_sd_notify() {
        let m = Message::parse("READY=1\nSTATUS=serving on 3000\nBOGUS=2\n");
        assert!(m.ready && !m.stopping && !m.watchdog);
        assert_eq!(m.status.as_deref(), Some("serving on 3000"));
        let m = Message::parse("WATCHDOG=1");
        assert!(m.watchdog && !m.ready);
        assert!(!Message::parse("READY=0\nSTOPPING=1").ready);
        assert!(Message::parse("STOPPING=1").stopping);
    }

    #[tokio::test]
    async fn a_datagram_arrives_with_the_senders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = bind(&path).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(run(socket, tx));
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        sender.send_to(b"READY=1\nSTATUS=hi", &path).unwrap();
        match rx.recv().await {
            Some(Notice::Notify { pid, message }) => {
                assert_eq!(pid, Pid::this());
                assert!(message.ready);
                assert_eq!(message.status.as_deref(), Some("hi"));
            }
            other => panic!("unexpected {other:?}"),
        }
        task.abort();
    }
}
