//! Listening sockets of cluster-mode apps: bound by the daemon, kept open while instances crash,
//! restart or reload (connections queue instead of being refused), closed on stop and delete.
//!
//! With [`ClusterSocket::Reuseport`] every instance slot (instance index) has its own SO_REUSEPORT
//! socket per address, so the kernel spreads connections evenly; with [`ClusterSocket::Shared`] one
//! socket per address is handed to every instance.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use pm2rs_proto::ClusterSocket;
use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections a listening socket may queue (the kernel caps it at `somaxconn`). Large,
/// because connections wait here while an instance restarts. The Node shim listens with it too
/// (`DAEMON_BACKLOG`), or Node would set its own default of 511 on the handed socket.
pub const BACKLOG: i32 = 4096;

/// The sockets of one app.
#[derive(Debug)]
pub struct AppSockets {
    addrs: Vec<SocketAddr>,
    mode: ClusterSocket,
    /// Slot (instance index, or 0 when shared) → one socket per address, in `addrs` order.
    slots: BTreeMap<u32, Vec<OwnedFd>>,
}

impl AppSockets {
    /// Binds `addrs` for a new app. Addresses in `held` are already ours (an app being changed)
    /// and are not probed. Fails with a sentence naming the address when someone else has it.
    pub fn bind(
        addrs: &[SocketAddr],
        mode: ClusterSocket,
        held: &[SocketAddr],
    ) -> Result<AppSockets, String> {
        for addr in addrs.iter().filter(|a| !held.contains(a)) {
            probe(*addr)?;
        }
        let mut sockets = AppSockets {
            addrs: addrs.to_vec(),
            mode,
            slots: BTreeMap::new(),
        };
        sockets.slot(0)?;
        Ok(sockets)
    }

    /// The addresses, in order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn mode(&self) -> ClusterSocket {
        self.mode
    }

    /// Every bound slot with its sockets (one per address, in `addrs` order).
    pub fn slots(&self) -> impl Iterator<Item = (u32, &[OwnedFd])> {
        self.slots.iter().map(|(slot, fds)| (*slot, fds.as_slice()))
    }

    /// Sockets bound by an earlier daemon (handed back by the fd keeper), as they were.
    pub fn from_slots(
        addrs: Vec<SocketAddr>,
        mode: ClusterSocket,
        slots: BTreeMap<u32, Vec<OwnedFd>>,
    ) -> AppSockets {
        AppSockets { addrs, mode, slots }
    }

    /// The sockets for instance `instance`, binding its slot's sockets on first use.
    pub fn fds_for(&mut self, instance: u32) -> Result<Vec<RawFd>, String> {
        let slot = match self.mode {
            ClusterSocket::Reuseport => instance,
            ClusterSocket::Shared => 0,
        };
        Ok(self.slot(slot)?.iter().map(AsRawFd::as_raw_fd).collect())
    }

    /// Closes the sockets of instance `instance`'s slot (scale down, or an instance that will not
    /// come back by itself), so the kernel stops routing connections to a socket nobody accepts
    /// on; shared sockets stay. The slot is bound again when an instance needs it.
    pub fn release(&mut self, instance: u32) {
        if self.mode == ClusterSocket::Reuseport {
            self.slots.remove(&instance);
        }
    }

    fn slot(&mut self, slot: u32) -> Result<&[OwnedFd], String> {
        if !self.slots.contains_key(&slot) {
            let mut fds = Vec::with_capacity(self.addrs.len());
            for addr in &self.addrs {
                fds.push(listen(*addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?);
            }
            self.slots.insert(slot, fds);
        }
        Ok(self.slots.get(&slot).map_or(&[][..], Vec::as_slice))
    }
}

/// Fails when another socket (of any process) listens on `addr`: a bind without SO_REUSEPORT
/// conflicts with every listener on that port, even one that uses SO_REUSEPORT (SO_REUSEADDR only
/// lets it past connections in TIME_WAIT).
fn probe(addr: SocketAddr) -> Result<(), String> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| format!("cannot create a socket for {addr}: {e}"))?;
    let _ = socket.set_reuse_address(true);
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(true);
    }
    match socket.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(format!(
            "port {} ({addr}) is already in use by another process; stop it or choose another port",
            addr.port()
        )),
        Err(e) => Err(format!("cannot bind {addr}: {e}")),
    }
}

/// A listening SO_REUSEPORT TCP socket on `addr`, close-on-exec (handed over by dup2 only).
fn listen(addr: SocketAddr) -> io::Result<OwnedFd> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn the_node_shim_listens_with_the_daemons_backlog() {
        let line = format!("const DAEMON_BACKLOG = {BACKLOG};");
        assert!(
            crate::cluster::NODE_SHIM.contains(&line),
            "node_shim.js must say `{line}`"
        );
    }

    fn free_addr() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[test]
    fn a_port_held_by_someone_else_is_a_clear_error() {
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = other.local_addr().unwrap();
        let err = AppSockets::bind(&[addr], ClusterSocket::Reuseport, &[]).unwrap_err();
        assert!(
            err.contains(&format!("port {} ({addr}) is already in use", addr.port())),
            "{err}"
        );
    }

    #[test]
    fn reuseport_slots_are_distinct_sockets_on_one_port_and_shared_is_one() {
        let addr = free_addr();
        let mut s = AppSockets::bind(&[addr], ClusterSocket::Reuseport, &[]).unwrap();
        let a = s.fds_for(0).unwrap();
        let b = s.fds_for(1).unwrap();
        assert_ne!(a, b);
        assert_eq!(s.fds_for(1).unwrap(), b, "a slot's socket is kept");
        // The daemon's sockets accept connections (they queue until an instance accepts).
        TcpStream::connect(addr).expect("connect while only the daemon holds the socket");
        // Our own sockets make the port busy for others, but not for a changed spec of ours.
        assert!(AppSockets::bind(&[addr], ClusterSocket::Reuseport, &[]).is_err());
        assert!(AppSockets::bind(&[addr], ClusterSocket::Reuseport, &[addr]).is_ok());

        let addr = free_addr();
        let mut s = AppSockets::bind(&[addr], ClusterSocket::Shared, &[]).unwrap();
        assert_eq!(s.fds_for(0).unwrap(), s.fds_for(3).unwrap());
        s.release(0);
        TcpStream::connect(addr).expect("a shared socket stays when one instance goes");
    }
}
