//! The Node IPC channel the daemon opens for Node apps (`NODE_CHANNEL_FD`, JSON serialization: one
//! JSON value per line). It carries `process.send('ready')` and the preload shim's `listening`
//! event to the supervisor. The daemon only reads; a line longer than [`MAX_LINE`] is skipped, so a
//! chatty child cannot grow the daemon's memory.

use std::os::fd::OwnedFd;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
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
}

/// Reads one line of the channel; `None` for anything we do not act on.
pub fn parse(line: &[u8]) -> Option<NodeMessage> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    match &value {
        serde_json::Value::String(s) if s == "ready" => Some(NodeMessage::Ready),
        serde_json::Value::Object(o) => match o.get("pm2rs").and_then(|v| v.as_str()) {
            Some("listening") => Some(NodeMessage::Listening),
            Some("ready") => Some(NodeMessage::Ready),
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

/// Reads the daemon end until the child closes it (it exited), forwarding messages of instance `id`
/// (running as `pid`).
pub async fn run(end: OwnedFd, id: u32, pid: Pid, notices: mpsc::Sender<Notice>) {
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
                    debug!(id, pid = pid.as_raw(), ?message, "node ipc");
                    if notices
                        .send(Notice::Node { id, pid, message })
                        .await
                        .is_err()
                    {
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
        assert_eq!(parse(b"\"online\""), None);
        assert_eq!(parse(b"{\"cmd\":\"NODE_HANDLE_ACK\"}"), None);
        assert_eq!(parse(b"not json"), None);
    }

    #[tokio::test]
    async fn lines_are_forwarded_and_overlong_ones_dropped() {
        let (daemon, child) = pair().unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(run(daemon, 7, Pid::this(), tx));
        let mut child = std::os::unix::net::UnixStream::from(child);
        child.set_nonblocking(false).unwrap();
        use std::io::Write;
        let long = format!("\"{}\"\n", "x".repeat(MAX_LINE + 10));
        child.write_all(long.as_bytes()).unwrap();
        child.write_all(b"\"ready\"\n").unwrap();
        drop(child);
        match rx.recv().await {
            Some(Notice::Node { id, message, .. }) => {
                assert_eq!((id, message), (7, NodeMessage::Ready));
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
