//! The Node IPC channel the daemon opens for Node apps (`NODE_CHANNEL_FD`, JSON serialization: one
//! JSON value per line). It carries `process.send('ready')`, the preload shim's `listening` event,
//! and the shim's request for a listening socket, which the daemon answers the way Node passes a
//! handle to a child: a `NODE_HANDLE` message with the fd attached (SCM_RIGHTS). A line longer than
//! [`MAX_LINE`] is skipped, so a chatty child cannot grow the daemon's memory.

use std::io::IoSlice;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tracing::debug;

use super::Notice;

/// Longest message line read; longer ones are dropped.
pub const MAX_LINE: usize = 64 * 1024;

/// What a Node instance told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeMessage {
    /// `process.send('ready')`.
    Ready,
    /// The shim saw a server start listening.
    Listening,
    /// The shim asks for a socket listening on `port` (on `host`, if the app named one): an app in
    /// cluster mode that listens on a port its config does not declare.
    Listen { port: u16, host: Option<IpAddr> },
}

/// Reads one line of the channel; `None` for anything we do not act on.
pub fn parse(line: &[u8]) -> Option<NodeMessage> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    match &value {
        serde_json::Value::String(s) if s == "ready" => Some(NodeMessage::Ready),
        serde_json::Value::Object(o) => match o.get("pm2rs").and_then(|v| v.as_str()) {
            Some("listening") => Some(NodeMessage::Listening),
            Some("ready") => Some(NodeMessage::Ready),
            Some("listen") => {
                let port = o
                    .get("port")?
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())?;
                let host = o
                    .get("host")
                    .and_then(|h| h.as_str())
                    .and_then(|h| h.parse().ok());
                (port > 0).then_some(NodeMessage::Listen { port, host })
            }
            _ => None,
        },
        _ => None,
    }
}

/// A connected pair: (daemon end, child end), both close-on-exec (the child end is `dup2`ed into
/// place, which clears the flag there).
pub fn pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(std::io::Error::from)
}

/// Hands `socket` to the child for its request of `port`, as Node's `child.send(msg, handle)`
/// would (`net.Native`: the shim gets the raw handle with the message).
pub fn send_socket(end: &OwnedFd, port: u16, socket: RawFd) -> std::io::Result<()> {
    let line = format!(
        "{}\n",
        serde_json::json!({
            "cmd": "NODE_HANDLE",
            "type": "net.Native",
            "msg": { "pm2rs": "socket", "port": port },
        })
    );
    let fds = [socket];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    send_all(end, line.as_bytes(), &cmsg)
}

/// Tells the child its request for `port` failed (e.g. the port is in use by someone else).
pub fn send_error(end: &OwnedFd, port: u16, message: &str) -> std::io::Result<()> {
    let line = format!(
        "{}\n",
        serde_json::json!({ "pm2rs": "socket-error", "port": port, "message": message })
    );
    send_all(end, line.as_bytes(), &[])
}

/// One `sendmsg` of a short message. The channel is non-blocking and these messages are tiny and
/// rare, so a full buffer (a child that never reads) is an error, not a wait.
fn send_all(end: &OwnedFd, bytes: &[u8], cmsgs: &[ControlMessage<'_>]) -> std::io::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let sent = sendmsg::<()>(end.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(std::io::Error::from)?;
    if sent != bytes.len() {
        return Err(std::io::Error::other("the IPC message was cut short"));
    }
    Ok(())
}

/// Reads the daemon end until the child closes it (it exited), forwarding the messages of the
/// process `pid`.
pub async fn run(end: OwnedFd, pid: Pid, notices: mpsc::Sender<Notice>) {
    let Ok(stream) = UnixStream::from_std(std::os::unix::net::UnixStream::from(end)) else {
        return;
    };
    let mut stream = stream;
    let mut line: Vec<u8> = Vec::new();
    let mut skipping = false;
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        for chunk in buf[..n].split_inclusive(|b| *b == b'\n') {
            let complete = chunk.ends_with(b"\n");
            if !skipping {
                line.extend_from_slice(chunk);
                if line.len() > MAX_LINE {
                    line.clear();
                    skipping = !complete;
                    continue;
                }
            }
            if complete {
                if !skipping && let Some(message) = parse(&line) {
                    debug!(pid = pid.as_raw(), ?message, "node ipc");
                    if notices.send(Notice::Node { pid, message }).await.is_err() {
                        return;
                    }
                }
                line.clear();
                skipping = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_messages_parse() {
        assert_eq!(parse(b"\"ready\"\n"), Some(NodeMessage::Ready));
        assert_eq!(
            parse(br#"{"pm2rs":"listening","port":3000}"#),
            Some(NodeMessage::Listening)
        );
        assert_eq!(
            parse(br#"{"pm2rs":"listen","port":8085,"host":"127.0.0.1"}"#),
            Some(NodeMessage::Listen {
                port: 8085,
                host: Some("127.0.0.1".parse().unwrap())
            })
        );
        assert_eq!(
            parse(br#"{"pm2rs":"listen","port":8085,"host":"localhost"}"#),
            Some(NodeMessage::Listen {
                port: 8085,
                host: None
            })
        );
        assert_eq!(parse(br#"{"pm2rs":"listen","port":0}"#), None);
        assert_eq!(parse(br#"{"pm2rs":"listen","port":70000}"#), None);
        assert_eq!(parse(b"\"online\""), None);
        assert_eq!(parse(b"{\"cmd\":\"NODE_HANDLE_ACK\"}"), None);
        assert_eq!(parse(b"not json"), None);
    }

    #[tokio::test]
    async fn lines_are_forwarded_and_overlong_ones_dropped() {
        let (daemon, child) = pair().unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(run(daemon, Pid::this(), tx));
        let mut child = std::os::unix::net::UnixStream::from(child);
        child.set_nonblocking(false).unwrap();
        use std::io::Write;
        let long = format!("\"{}\"\n", "x".repeat(MAX_LINE + 10));
        child.write_all(long.as_bytes()).unwrap();
        child.write_all(b"\"ready\"\n").unwrap();
        drop(child);
        match rx.recv().await {
            Some(Notice::Node { pid, message }) => {
                assert_eq!((pid, message), (Pid::this(), NodeMessage::Ready));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            rx.recv().await.is_none(),
            "the reader ends when the child closes"
        );
        task.await.unwrap();
    }
}
