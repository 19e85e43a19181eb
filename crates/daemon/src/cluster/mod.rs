//! Cluster mode and readiness: what the supervisor needs to hand listening sockets to instances,
//! learn when they are ready, and replace them without dropping a connection.
//!
//! # Layout
//! - [`listeners`]: binding the app's sockets (SO_REUSEPORT per instance slot, or shared), the
//!   "port in use" check, keeping them open across restarts.
//! - [`handoff`]: the systemd socket-passing protocol at spawn (fds from 3, `LISTEN_*`).
//! - [`notify`]: the sd_notify datagram socket (`NOTIFY_SOCKET`).
//! - [`ipc`]: the Node IPC channel (`NODE_CHANNEL_FD`) for `process.send('ready')`.
//! - `node_shim.js`: the preload shim for unmodified Node servers, shipped inside the binary.
//! - [`reload`]: the rolling-reload state machine (start new → ready → stop old).
//!
//! [`Cluster`] ties them together for the supervisor, which stays the only owner of instance state:
//! everything here reports to it through [`Notice`]s on a bounded channel.

pub mod handoff;
pub mod ipc;
pub mod listeners;
pub mod notify;
pub mod reload;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::unistd::Pid;
use pm2rs_proto::{AppSpec, ClusterSocket, ExecMode};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use self::handoff::Handoff;
use self::listeners::AppSockets;
use crate::keeper::Keeper;

/// The preload shim for Node apps.
pub const NODE_SHIM: &str = include_str!("node_shim.js");

/// Most sockets one app may get by asking over IPC (each instance holds one per port): a runaway
/// app cannot make the daemon bind every port of the machine.
pub const MAX_REQUESTED_PORTS: usize = 16;

/// Capacity of the notice channel; readers wait when the supervisor is behind.
pub const NOTICE_QUEUE: usize = 256;

/// Something an instance said, for the supervisor.
#[derive(Debug)]
pub enum Notice {
    /// An sd_notify datagram from `pid` (any process; the supervisor finds its instance).
    Notify { pid: Pid, message: notify::Message },
    /// A message on the Node IPC channel of the instance process `pid`.
    Node { pid: Pid, message: ipc::NodeMessage },
}

/// Whether `spec` runs under Node (it then gets the IPC channel and the shim).
pub fn is_node(spec: &AppSpec) -> bool {
    spec.interpreter.as_deref().is_some_and(|i| {
        let name = Path::new(i)
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        name == "node" || name == "nodejs"
    })
}

/// Whether an instance of `spec` stays `launching` until it is ready (else it is online at once).
pub fn waits_for_ready(spec: &AppSpec) -> bool {
    spec.exec_mode == ExecMode::Cluster || spec.wait_ready
}

/// A prepared spawn: what to hand the child, and the daemon's end of its IPC channel.
pub struct Prepared {
    pub handoff: Handoff,
    ipc: Option<OwnedFd>,
}

impl Prepared {
    /// The daemon's end of the Node IPC channel, for the fd keeper to hold a duplicate of.
    pub fn ipc(&self) -> Option<BorrowedFd<'_>> {
        self.ipc.as_ref().map(AsFd::as_fd)
    }
}

/// The fd keeper's description of one app's sockets (its key: [`sockets_key`]); the fds follow
/// in the same order: group by group, slot by slot, one per address.
#[derive(Debug, Serialize, Deserialize)]
pub struct KeptSockets {
    groups: Vec<KeptGroup>,
}

#[derive(Debug, Serialize, Deserialize)]
struct KeptGroup {
    /// Bound on a Node instance's request, not declared with `listen`.
    requested: bool,
    addrs: Vec<SocketAddr>,
    mode: ClusterSocket,
    slots: Vec<u32>,
}

/// The fd keeper's key of `app`'s sockets.
pub fn sockets_key(app: &str) -> String {
    format!("sockets/{app}")
}

/// Sockets of every app, the notify socket and the shim file.
pub struct Cluster {
    sockets: HashMap<String, AppSockets>,
    /// Sockets bound on a Node instance's request (ports the config does not declare), by app and
    /// address; kept, closed and released like `sockets`.
    requested: HashMap<String, BTreeMap<SocketAddr, AppSockets>>,
    /// The daemon's end of each running Node instance's IPC channel (a copy of the reader's), for
    /// answers; by instance pid.
    ipc_out: HashMap<Pid, OwnedFd>,
    notify_path: Option<PathBuf>,
    shim_path: Option<PathBuf>,
    notices: mpsc::Sender<Notice>,
    /// Holds a copy of every app's sockets, so they outlive the daemon.
    keeper: Keeper,
    /// Apps whose sockets changed since the keeper was last told.
    changed: BTreeSet<String>,
}

impl Cluster {
    /// Binds the notify socket and writes the shim under `dir` (the daemon's home), and starts the
    /// notify reader; it and the IPC readers report on `tx` (a channel of [`NOTICE_QUEUE`]). Must
    /// run inside the runtime. Failures are logged and leave that feature off.
    pub fn start(dir: &Path, tx: mpsc::Sender<Notice>) -> Cluster {
        let notify_path = dir.join("notify.sock");
        let notify_path = match notify::bind(&notify_path) {
            Ok(socket) => {
                tokio::spawn(notify::run(socket, tx.clone()));
                Some(notify_path)
            }
            Err(e) => {
                warn!(%e, path = %notify_path.display(), "no NOTIFY_SOCKET: cannot bind it");
                None
            }
        };
        let shim_path = dir.join("node-shim.js");
        let tmp = dir.join(".node-shim.js.tmp");
        let shim_path = match std::fs::write(&tmp, NODE_SHIM)
            .and_then(|()| std::fs::rename(&tmp, &shim_path))
        {
            Ok(()) => Some(shim_path),
            Err(e) => {
                warn!(%e, "cannot write the Node shim; Node apps run without it");
                None
            }
        };
        Cluster {
            sockets: HashMap::new(),
            requested: HashMap::new(),
            ipc_out: HashMap::new(),
            notify_path,
            shim_path,
            notices: tx,
            keeper: Keeper::none(),
            changed: BTreeSet::new(),
        }
    }

    /// From now on the fd keeper holds a copy of every app's sockets.
    pub fn set_keeper(&mut self, keeper: Keeper) {
        self.keeper = keeper;
    }

    /// Tells the fd keeper about every app whose sockets changed (once per supervisor step).
    pub fn sync_keeper(&mut self) {
        for app in std::mem::take(&mut self.changed) {
            let mut groups = Vec::new();
            let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
            let configured = self.sockets.get(&app).map(|s| (false, s));
            let requested = self
                .requested
                .get(&app)
                .into_iter()
                .flat_map(|m| m.values())
                .map(|s| (true, s));
            for (requested, sockets) in configured.into_iter().chain(requested) {
                let mut slots = Vec::new();
                for (slot, held) in sockets.slots() {
                    slots.push(slot);
                    fds.extend(held.iter().map(AsFd::as_fd));
                }
                groups.push(KeptGroup {
                    requested,
                    addrs: sockets.addrs().to_vec(),
                    mode: sockets.mode(),
                    slots,
                });
            }
            let key = sockets_key(&app);
            if fds.is_empty() {
                self.keeper.remove(&key);
            } else if fds.len() > crate::keeper::MAX_FDS {
                warn!(%app, "too many sockets for the fd keeper; they will not outlive the daemon");
                self.keeper.remove(&key);
            } else {
                self.keeper.put(&key, &KeptSockets { groups }, &fds);
            }
        }
    }

    /// Takes back `app`'s sockets from an earlier daemon (as the fd keeper handed them back).
    pub fn adopt_sockets(&mut self, app: &str, kept: KeptSockets, fds: Vec<OwnedFd>) {
        let mut fds = fds.into_iter();
        for group in kept.groups {
            let mut slots = BTreeMap::new();
            for slot in group.slots {
                let held: Vec<OwnedFd> = fds.by_ref().take(group.addrs.len()).collect();
                if held.len() == group.addrs.len() {
                    slots.insert(slot, held);
                }
            }
            let first = group.addrs.first().copied();
            let sockets = AppSockets::from_slots(group.addrs, group.mode, slots);
            if group.requested {
                if let Some(addr) = first {
                    self.requested
                        .entry(app.to_string())
                        .or_default()
                        .insert(addr, sockets);
                }
            } else {
                self.sockets.insert(app.to_string(), sockets);
            }
        }
    }

    /// Whether `app` holds any socket.
    pub fn has_sockets(&self, app: &str) -> bool {
        self.sockets.contains_key(app) || self.requested.contains_key(app)
    }

    /// Reads the IPC channel of a Node instance taken over from an earlier daemon.
    pub fn adopted(&mut self, pid: Pid, ipc: OwnedFd) {
        if let Ok(out) = ipc.try_clone() {
            self.ipc_out.insert(pid, out);
        }
        tokio::spawn(ipc::run(ipc, pid, self.notices.clone()));
    }

    /// Binds the addresses of every spec of a `start` request before anything changes: all of
    /// them or none (a port in use by another process is the error, naming it). An app whose
    /// addresses did not change keeps its sockets.
    pub fn bind_all(&mut self, specs: &[AppSpec]) -> Result<(), String> {
        let mut bound = Vec::new();
        for spec in specs {
            let held: Vec<_> = self
                .sockets
                .get(&spec.name)
                .map(|s| s.addrs().to_vec())
                .unwrap_or_default();
            if held == spec.listen {
                continue;
            }
            let sockets = if spec.listen.is_empty() {
                None
            } else {
                Some(
                    AppSockets::bind(&spec.listen, spec.cluster_socket, &held)
                        .map_err(|e| format!("cannot start `{}`: {e}", spec.name))?,
                )
            };
            bound.push((spec.name.clone(), sockets));
        }
        for (name, sockets) in bound {
            self.changed.insert(name.clone());
            match sockets {
                Some(s) => self.sockets.insert(name, s),
                None => self.sockets.remove(&name),
            };
        }
        Ok(())
    }

    /// Binds `spec`'s addresses if they are not bound (an app started again after a stop).
    fn bind(&mut self, spec: &AppSpec) -> Result<(), String> {
        if !self.is_bound(spec) {
            let sockets = AppSockets::bind(&spec.listen, spec.cluster_socket, &[])?;
            self.sockets.insert(spec.name.clone(), sockets);
            self.changed.insert(spec.name.clone());
        }
        Ok(())
    }

    /// Whether `spec`'s addresses are bound (or it has none).
    fn is_bound(&self, spec: &AppSpec) -> bool {
        spec.listen.is_empty()
            || self
                .sockets
                .get(&spec.name)
                .is_some_and(|s| s.addrs() == spec.listen.as_slice())
    }

    /// What to hand instance `instance` of `spec`. Binds the app's sockets if they were closed
    /// (started again after a stop) and the instance slot's socket if it is new.
    pub fn prepare(&mut self, spec: &AppSpec, instance: u32) -> Result<Prepared, String> {
        self.bind(spec)?;
        let mut handoff = Handoff::default();
        if let Some(sockets) = self.sockets.get_mut(&spec.name) {
            let before = sockets.slots().count();
            handoff.listen = sockets.fds_for(instance)?;
            if sockets.slots().count() != before {
                self.changed.insert(spec.name.clone());
            }
            let names: Vec<String> = spec
                .listen
                .iter()
                .map(|a| format!("port-{}", a.port()))
                .collect();
            handoff
                .env
                .insert("LISTEN_FDS".into(), handoff.listen.len().to_string());
            handoff.env.insert("LISTEN_FDNAMES".into(), names.join(":"));
            if !spec.env.contains_key("PORT")
                && let Some(first) = spec.listen.first()
            {
                handoff.env.insert("PORT".into(), first.port().to_string());
            }
        }
        if let Some(path) = &self.notify_path {
            handoff
                .env
                .insert("NOTIFY_SOCKET".into(), path.to_string_lossy().into_owned());
        }
        if let Some(ms) = spec.watchdog_timeout_ms {
            handoff
                .env
                .insert("WATCHDOG_USEC".into(), (ms * 1000).to_string());
        }
        let mut ipc = None;
        if is_node(spec) {
            match ipc::pair() {
                Ok((daemon, child)) => {
                    handoff.ipc = Some(child);
                    handoff
                        .env
                        .insert("NODE_CHANNEL_FD".into(), handoff.ipc_fd().to_string());
                    handoff
                        .env
                        .insert("NODE_CHANNEL_SERIALIZATION_MODE".into(), "json".into());
                    ipc = Some(daemon);
                }
                Err(e) => warn!(%e, app = %spec.name, "no IPC channel for this Node instance"),
            }
            if let Some(shim) = &self.shim_path {
                handoff
                    .env
                    .insert("PM2RS_EXEC_MODE".into(), spec.exec_mode.to_string());
                let inherited = spec
                    .env
                    .get("NODE_OPTIONS")
                    .cloned()
                    .or_else(|| std::env::var("NODE_OPTIONS").ok())
                    .unwrap_or_default();
                let require = format!("--require \"{}\"", shim.display());
                let options = if inherited.trim().is_empty() {
                    require
                } else {
                    format!("{inherited} {require}")
                };
                handoff.env.insert("NODE_OPTIONS".into(), options);
                handoff
                    .env
                    .insert("PM2RS_KILL_SIGNAL".into(), spec.kill_signal.clone());
                handoff.env.insert(
                    "PM2RS_KILL_TIMEOUT_MS".into(),
                    spec.kill_timeout_ms.to_string(),
                );
            }
        }
        Ok(Prepared { handoff, ipc })
    }

    /// After a successful spawn: closes the child's end here and reads the IPC channel.
    pub fn spawned(&mut self, prepared: Prepared, pid: Pid) {
        drop(prepared.handoff);
        if let Some(end) = prepared.ipc {
            match end.try_clone() {
                Ok(out) => {
                    self.ipc_out.insert(pid, out);
                }
                Err(e) => warn!(%e, "cannot keep the IPC channel for answers"),
            }
            tokio::spawn(ipc::run(end, pid, self.notices.clone()));
        }
    }

    /// The process `pid` is gone: forget its IPC channel.
    pub fn exited(&mut self, pid: Pid) {
        self.ipc_out.remove(&pid);
    }

    /// Answers a Node instance's request for a socket on `port`: binds it for the app on first
    /// request (the same port is then shared by every instance, one slot each), and hands the
    /// instance's slot socket over the IPC channel; or tells it why not.
    pub fn answer_listen(
        &mut self,
        spec: &AppSpec,
        instance: u32,
        pid: Pid,
        port: u16,
        host: Option<IpAddr>,
    ) {
        let Some(end) = self.ipc_out.get(&pid) else {
            return;
        };
        let addr = SocketAddr::new(host.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), port);
        let result = if spec.exec_mode != ExecMode::Cluster {
            Err("not in cluster mode".to_string())
        } else {
            let bound = self.requested.entry(spec.name.clone()).or_default();
            let full = bound.len() >= MAX_REQUESTED_PORTS;
            let sockets = match bound.entry(addr) {
                std::collections::btree_map::Entry::Vacant(_) if full => Err(format!(
                    "an app may ask for at most {MAX_REQUESTED_PORTS} ports; declare them with `listen`"
                )),
                std::collections::btree_map::Entry::Occupied(e) => Ok(e.into_mut()),
                std::collections::btree_map::Entry::Vacant(e) => {
                    AppSockets::bind(&[addr], spec.cluster_socket, &[]).map(|s| e.insert(s))
                }
            };
            self.changed.insert(spec.name.clone());
            sockets.and_then(|s| s.fds_for(instance))
        };
        let sent = match result {
            Ok(fds) => match fds.first() {
                Some(fd) => ipc::send_socket(end, port, *fd),
                None => ipc::send_error(end, port, "no socket"),
            },
            Err(e) => {
                warn!(app = %spec.name, port, "{e}");
                ipc::send_error(end, port, &e)
            }
        };
        match sent {
            Ok(()) => debug!(app = %spec.name, instance, port, "socket handed over IPC"),
            Err(e) => warn!(app = %spec.name, %e, "cannot answer a socket request"),
        }
    }

    /// Closes the socket slot of instance `instance` of `app` (scale down).
    pub fn release(&mut self, app: &str, instance: u32) {
        self.changed.insert(app.to_string());
        if let Some(s) = self.sockets.get_mut(app) {
            s.release(instance);
        }
        for s in self
            .requested
            .get_mut(app)
            .into_iter()
            .flat_map(|m| m.values_mut())
        {
            s.release(instance);
        }
    }

    /// Closes every socket of `app` (stopped or deleted): new connections are refused again.
    pub fn close(&mut self, app: &str) {
        self.changed.insert(app.to_string());
        self.sockets.remove(app);
        self.requested.remove(app);
    }
}
