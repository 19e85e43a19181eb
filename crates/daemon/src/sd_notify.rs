//! The daemon as a client of its own service manager's sd_notify protocol (systemd `Type=notify`):
//! it owns the daemon's `NOTIFY_SOCKET`, taken out of the environment at start so no app inherits it,
//! and [`notify`], which sends one datagram of `KEY=value` lines (`READY=1`, `STOPPING=1`, …) to it.
//! The other direction (apps notifying the daemon) is `cluster::notify`.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;

/// The variable a service manager sets (systemd's name).
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// The daemon's notify address, read once by [`take_from_env`]; `None` when it has none.
static ADDRESS: OnceLock<Option<SocketAddr>> = OnceLock::new();

/// Reads `NOTIFY_SOCKET` and removes it from the environment, so the apps the daemon starts never
/// inherit the service manager's socket (they get the daemon's own, or none). A value that is no
/// usable address (neither an absolute path nor `@` + an abstract name) is ignored, as
/// sd_notify(3) does. Call it once, first thing, while the process still has a single thread: it
/// changes the environment. Later calls change nothing.
pub fn take_from_env() {
    let value = std::env::var_os(NOTIFY_SOCKET);
    if value.is_some() {
        // SAFETY: documented precondition: the daemon calls this before it starts any thread, so
        // nothing reads the environment concurrently.
        unsafe { std::env::remove_var(NOTIFY_SOCKET) };
    }
    let _ = ADDRESS.set(value.and_then(|v| parse_address(&v.to_string_lossy())));
}

/// Sends `state` (newline-separated `KEY=value` lines) to the address taken by
/// [`take_from_env`]. `Ok(false)` when there is none (not run by a service manager), `Ok(true)`
/// once sent. Never blocks: the socket is non-blocking, so a receiver that does not read makes it
/// fail with `WouldBlock` instead.
pub fn notify(state: &str) -> io::Result<bool> {
    match ADDRESS.get().and_then(Option::as_ref) {
        Some(addr) => send(addr, state).map(|()| true),
        None => Ok(false),
    }
}

/// The socket address of a `NOTIFY_SOCKET` value: a file system path, or `@name` for an abstract
/// socket.
fn parse_address(value: &str) -> Option<SocketAddr> {
    if let Some(name) = value.strip_prefix('@') {
        abstract_address(name.as_bytes())
    } else if value.starts_with('/') {
        SocketAddr::from_pathname(value).ok()
    } else {
        None
    }
}

fn abstract_address(name: &[u8]) -> Option<SocketAddr> {
    SocketAddr::from_abstract_name(name).ok()
}

fn send(addr: &SocketAddr, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    socket.send_to_addr(state.as_bytes(), addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_and_an_abstract_name_are_addresses_anything_else_is_not() {
        let path = parse_address("/run/systemd/notify").expect("a path");
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        assert!(parse_address("@pm2rs-test").is_some());
        assert!(parse_address("relative/notify").is_none());
        assert!(parse_address("").is_none());
    }

    #[test]
    fn a_state_reaches_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let addr = parse_address(path.to_str().unwrap()).unwrap();
        send(&addr, "READY=1\nSTATUS=up").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");

        let name = format!("pm2rs-sd-notify-test-{}", std::process::id());
        let abstract_receiver =
            UnixDatagram::bind_addr(&abstract_address(name.as_bytes()).unwrap()).unwrap();
        send(&parse_address(&format!("@{name}")).unwrap(), "STOPPING=1").unwrap();
        let n = abstract_receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
