//! Cluster mode with real servers on real sockets: the daemon binds the port and hands it to every
//! instance (Node through the preload shim, Python through LISTEN_FDS), readiness (sd_notify, Node
//! IPC), kill -9 under load, zero-downtime `reload`, a replacement that never becomes ready, a port
//! already in use.

use std::collections::BTreeSet;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pm2rs_proto::Status;

use std::process::Stdio;
use std::time::Instant;

use crate::harness::{DEADLINE, Pm2rs, alive, eventually, wait_with_timeout};
use crate::http::{Load, free_port, get_once};

/// An unmodified Node server on a fixed port, answering with its pid.
fn node_server(port: u16) -> String {
    format!(
        "const http = require('http');\n\
         http.createServer((req, res) => res.end(String(process.pid))).listen({port});\n"
    )
}

/// A Python server that serves the socket handed as fd 3 (checking LISTEN_PID is its own pid)
/// and says READY=1 on NOTIFY_SOCKET, unless the file `never-ready` exists. It also pings the
/// watchdog when `PING_WATCHDOG` is set.
pub const PY_SERVER: &str = r#"
import http.server, os, socket, socketserver, sys
if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
    sys.exit("bad LISTEN_PID/LISTEN_FDS: %r %r" % (os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS")))
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
srv = Server(("127.0.0.1", 0), Handler, bind_and_activate=False)
srv.socket.close()
srv.socket = socket.socket(fileno=3)
def notify(msg):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(msg, os.environ["NOTIFY_SOCKET"])
if not os.path.exists("never-ready"):
    notify(b"READY=1\nSTATUS=serving " + os.environ["PORT"].encode())
srv.serve_forever()
"#;

/// Writes `eco.toml` with one cluster-mode app (`extra` adds keys).
fn write_cluster(t: &Pm2rs, name: &str, script: &str, extra: &str) {
    t.write(
        "eco.toml",
        &format!(
            "[[apps]]\nname = \"{name}\"\nscript = \"{script}\"\nexec_mode = \"cluster\"\n{extra}\n"
        ),
    );
}

/// [`write_cluster`], then starts it.
fn start_cluster(t: &Pm2rs, name: &str, script: &str, extra: &str) {
    write_cluster(t, name, script, extra);
    t.ok(&["start", "eco.toml"]);
}

/// Starts [`PY_SERVER`] as the cluster app `py` on a free port of 127.0.0.1 (`extra` adds keys);
/// returns the port.
fn start_py(t: &Pm2rs, extra: &str) -> u16 {
    let port = free_port();
    t.write("server.py", PY_SERVER);
    start_cluster(
        t,
        "py",
        "server.py",
        &format!("listen = [\"127.0.0.1:{port}\"]\n{extra}"),
    );
    port
}

fn pid_set(t: &Pm2rs, name: &str) -> BTreeSet<String> {
    t.list()
        .iter()
        .filter(|p| p.name == name)
        .filter_map(|p| p.pid.map(|n| n.to_string()))
        .collect()
}

/// Sends requests on new connections until `n` different pids answered.
fn wait_for_pids(port: u16, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let ok = eventually(DEADLINE, || {
        if let Ok(pid) = get_once(port) {
            seen.insert(pid);
        }
        seen.len() >= n
    });
    assert!(ok, "only {seen:?} answered on port {port}");
    seen
}

#[test]
fn node_instances_share_a_fixed_port_without_code_changes() {
    let t = Pm2rs::new();
    let port = free_port();
    t.write("server.js", &node_server(port));
    start_cluster(
        &t,
        "web",
        "server.js",
        &format!("instances = 4\nport = {port}\n"),
    );
    let procs = t.wait_online("web", 4);
    let pids = wait_for_pids(port, 2);
    let listed = pid_set(&t, "web");
    assert!(pids.is_subset(&listed), "{pids:?} not in {listed:?}");
    // The shim ships inside the binary and is what makes listen() use the handed socket.
    assert!(t.home().join("node-shim.js").exists());
    assert_eq!(procs.len(), 4);
}

#[test]
fn a_raw_node_net_server_shares_its_port_too() {
    use std::io::Read;
    let t = Pm2rs::new();
    let port = free_port();
    // Not http: a plain TCP server that writes its pid and closes.
    t.write(
        "tcp.js",
        &format!("require('net').createServer(s => s.end(String(process.pid))).listen({port});\n"),
    );
    start_cluster(
        &t,
        "tcp",
        "tcp.js",
        &format!("instances = 2\nport = {port}\n"),
    );
    t.wait_online("tcp", 2);
    let mut seen = BTreeSet::new();
    let ok = eventually(DEADLINE, || {
        let mut pid = String::new();
        if let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port))
            && conn.set_read_timeout(Some(Duration::from_secs(5))).is_ok()
            && conn.read_to_string(&mut pid).is_ok()
            && !pid.is_empty()
        {
            seen.insert(pid);
        }
        seen.len() >= 2
    });
    assert!(ok, "only {seen:?} answered on port {port}");
    assert!(seen.is_subset(&pid_set(&t, "tcp")), "{seen:?}");
}

#[test]
fn start_node_script_with_i_shares_its_port_as_pm2_cluster_mode_does() {
    let t = Pm2rs::new();
    let port = free_port();
    t.write("server.js", &node_server(port));
    // No ecosystem, no --port: `-i` puts a Node script in cluster mode and the shim gets the port
    // it listens on from the daemon, so no instance dies of EADDRINUSE.
    t.ok(&["start", "server.js", "-i", "2"]);
    let procs = t.wait_online("server", 2);
    assert!(procs.iter().all(|p| p.restarts == 0), "{procs:#?}");
    let pids = wait_for_pids(port, 2);
    assert!(pids.is_subset(&pid_set(&t, "server")));
}

#[test]
fn the_node_cluster_tutorial_runs_unchanged_under_instances_max() {
    let t = Pm2rs::new();
    let port = free_port();
    // The pattern copied from Node's cluster docs: the primary forks, workers listen.
    t.write(
        "tutorial.js",
        &format!(
            "const cluster = require('node:cluster');\n\
             const http = require('node:http');\n\
             const numCPUs = require('node:os').availableParallelism();\n\
             if (cluster.isPrimary) {{\n\
               for (let i = 0; i < numCPUs; i++) cluster.fork();\n\
             }} else {{\n\
               http.createServer((req, res) => {{ res.writeHead(200); res.end(String(process.pid)); }}).listen({port});\n\
             }}\n"
        ),
    );
    start_cluster(
        &t,
        "tut",
        "tutorial.js",
        &format!("instances = \"max\"\nport = {port}\n"),
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let procs = t.wait_online("tut", cpus);
    let want = cpus.min(2);
    let pids = wait_for_pids(port, want);
    // Each instance is the worker itself: nobody forked a process tree of its own.
    let listed = pid_set(&t, "tut");
    assert!(pids.is_subset(&listed), "{pids:?} not in {listed:?}");
    for p in &procs {
        let members = crate::harness::group_members(p.pid.unwrap());
        assert_eq!(members, vec![p.pid.unwrap()], "instance {} forked", p.id);
    }
}

#[test]
fn a_python_server_gets_the_socket_by_listen_fds_and_is_ready_by_sd_notify() {
    let t = Pm2rs::new();
    // listen_timeout is far beyond the test's deadline: online can only come from READY=1.
    let port = start_py(&t, "instances = 2\nlisten_timeout = \"10m\"\n");
    let procs = t.wait_online("py", 2);
    assert!(
        procs
            .iter()
            .all(|p| p.notify_status.as_deref() == Some(&*format!("serving {port}"))),
        "{procs:#?}"
    );
    wait_for_pids(port, 2);
    // Scale up on the same port: the new slot gets its own socket.
    t.ok(&["scale", "py", "3"]);
    t.wait_online("py", 3);
    wait_for_pids(port, 3);
    // Stopping one instance closes its slot: every connection goes to the others, none waits.
    let stopped = t.list()[0].clone();
    t.ok(&["stop", &stopped.id.to_string()]);
    for _ in 0..30 {
        let pid = get_once(port).expect("an answer while one instance is stopped");
        assert_ne!(Some(pid), stopped.pid.map(|p| p.to_string()));
    }
    // Stop closes the sockets: new connections are refused again, nothing listens.
    t.ok(&["stop", "py"]);
    assert!(get_once(port).is_err(), "port still open after stop");
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("port free after stop");
}

#[test]
fn kill_9_of_an_instance_under_load_refuses_no_connection() {
    let t = Pm2rs::new();
    let port = start_py(&t, "instances = 2\n");
    let before = t.wait_online("py", 2);
    let clients = 4;
    let load = Load::start(port, clients, false);
    assert!(load.wait_more(200, DEADLINE), "{}", load.stats.summary());
    let victim = before[0].pid.unwrap();
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    t.wait_for("the killed instance replaced", DEADLINE, |ps| {
        ps.iter()
            .any(|p| p.id == before[0].id && p.status == Status::Online && p.pid != Some(victim))
    });
    assert!(load.wait_more(200, DEADLINE), "{}", load.stats.summary());
    let stats = load.stop();
    // Connections made while the instance was down waited in the daemon's socket.
    assert_eq!(
        stats
            .connect_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "{}",
        stats.summary()
    );
    // At most the requests the killed process had accepted (one per client) can be lost.
    assert!(stats.failed() <= clients as u64, "{}", stats.summary());
    assert!(!alive(Pid::from_raw(victim as i32)));
}

/// Starts `instances` of the Node server under load of both kinds, reloads, and checks that not
/// one request failed and every pid was replaced. With `declared`, the port is in the config;
/// without, the shim asks the daemon for it when the app listens.
fn reload_under_load(instances: u32, parallel: &str, declared: bool) {
    let t = Pm2rs::new();
    let port = free_port();
    t.write("server.js", &node_server(port));
    let port_key = if declared {
        format!("port = {port}\n")
    } else {
        String::new()
    };
    start_cluster(
        &t,
        "web",
        "server.js",
        &format!("instances = {instances}\n{port_key}"),
    );
    let before = t.wait_online("web", instances as usize);
    let old: BTreeSet<String> = pid_set(&t, "web");
    let keep_alive = Load::start(port, 2, true);
    let fresh = Load::start(port, 2, false);
    assert!(
        keep_alive.wait_more(100, DEADLINE),
        "{}",
        keep_alive.stats.summary()
    );
    assert!(fresh.wait_more(100, DEADLINE), "{}", fresh.stats.summary());

    let out = t.ok(&["reload", "web", "--parallel", parallel]);
    assert!(out.contains("reloaded web"), "{out}");
    let after = t.wait_online("web", instances as usize);
    let new: BTreeSet<String> = pid_set(&t, "web");
    assert!(
        old.is_disjoint(&new),
        "not every pid was replaced: {old:?} {new:?}"
    );
    // Ids stay, as with PM2.
    let ids = |ps: &[pm2rs_proto::ProcessInfo]| ps.iter().map(|p| p.id).collect::<BTreeSet<_>>();
    assert_eq!(ids(&before), ids(&after));
    // Both kinds of clients go on, now served by the new instances.
    assert!(
        keep_alive.wait_more(100, DEADLINE),
        "{}",
        keep_alive.stats.summary()
    );
    assert!(fresh.wait_more(100, DEADLINE), "{}", fresh.stats.summary());
    for (kind, load) in [("keep-alive", keep_alive), ("new-connection", fresh)] {
        let stats = load.stop();
        assert_eq!(stats.failed(), 0, "{kind} clients: {}", stats.summary());
        let served = stats.pids();
        assert!(
            !served.is_disjoint(&new),
            "{kind} clients never reached a new instance: {}",
            stats.summary()
        );
    }
}

#[test]
fn reload_under_load_fails_no_request_and_replaces_every_pid() {
    reload_under_load(2, "1", true);
}

#[test]
fn without_a_declared_port_node_instances_get_the_port_from_the_daemon_and_reload_in_parallel() {
    reload_under_load(2, "2", false);
}

#[test]
fn a_replacement_that_never_becomes_ready_aborts_the_reload_and_the_old_ones_keep_serving() {
    let t = Pm2rs::new();
    let port = start_py(
        &t,
        "instances = 2\nwait_ready = true\nlisten_timeout = \"1s\"\n",
    );
    t.wait_online("py", 2);
    let old = pid_set(&t, "py");
    t.write("never-ready", "");
    let first = t
        .command(&["reload", "py"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pm2rs reload");
    // While its replacement is launching, a second reload of the same app is refused.
    t.wait_for("a replacement launching", DEADLINE, |ps| ps.len() == 3);
    let second = t.run(&["reload", "py"]);
    assert_eq!(second.code, 1, "{}", second.stdout);
    assert!(
        second
            .stderr
            .contains("a reload of `py` is already running"),
        "{}",
        second.stderr
    );
    let out = wait_with_timeout(first, Duration::from_secs(30)).expect("reload finishes");
    let r = crate::harness::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("not ready within listen_timeout")
            && r.stderr.contains("the old instance keeps serving")
            && r.stderr.contains("`py` #"),
        "{}",
        r.stderr
    );
    // Exactly the old instances remain, online, and they answer.
    let procs = t.list();
    assert_eq!(procs.len(), 2, "{procs:#?}");
    assert!(procs.iter().all(|p| p.status == Status::Online));
    assert_eq!(pid_set(&t, "py"), old);
    let served = wait_for_pids(port, 1);
    assert!(served.is_subset(&old), "{served:?} vs {old:?}");
}

#[test]
fn a_port_in_use_by_another_process_is_a_clear_error_and_changes_nothing() {
    let t = Pm2rs::new();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = other.local_addr().unwrap().port();
    t.write("server.py", PY_SERVER);
    write_cluster(
        &t,
        "py",
        "server.py",
        &format!("listen = [\"127.0.0.1:{port}\"]\n"),
    );
    let r = t.run(&["start", "eco.toml"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "cannot start `py`: port {port} (127.0.0.1:{port}) is already in use by another process"
        )),
        "{}",
        r.stderr
    );
    assert!(t.list().is_empty());
    // All or nothing: with a second app whose port is free, that port is not kept either.
    let free = free_port();
    t.write(
        "eco.toml",
        &format!(
            "[[apps]]\nname = \"first\"\nscript = \"server.py\"\nexec_mode = \"cluster\"\n\
             listen = [\"127.0.0.1:{free}\"]\n\
             [[apps]]\nname = \"py\"\nscript = \"server.py\"\nexec_mode = \"cluster\"\n\
             listen = [\"127.0.0.1:{port}\"]\n"
        ),
    );
    let r = t.run(&["start", "eco.toml"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(t.list().is_empty());
    std::net::TcpListener::bind(("127.0.0.1", free)).expect("the first app's port was let go");
    drop(other);
}

#[test]
fn a_missed_watchdog_ping_restarts_the_instance() {
    let t = Pm2rs::new();
    start_py(&t, "watchdog_timeout = \"500ms\"\n");
    let procs = t.wait_for("a watchdog restart", DEADLINE, |ps| {
        ps.iter().any(|p| p.restarts >= 1)
    });
    let reason = procs[0].reason.as_deref().unwrap_or_default();
    assert!(reason.contains("watchdog"), "{procs:#?}");
}

#[test]
fn reload_in_fork_mode_starts_the_new_instance_before_stopping_the_old() {
    let t = Pm2rs::new();
    t.script("s.sh", "echo \"pid $$\"; exec sleep 1000");
    t.ok(&["start", "s.sh", "--name", "forky", "-i", "2"]);
    let before = t.wait_online("forky", 2);
    let old = pid_set(&t, "forky");
    t.ok(&["reload", "forky"]);
    let after = t.wait_online("forky", 2);
    let new = pid_set(&t, "forky");
    assert!(old.is_disjoint(&new), "{old:?} {new:?}");
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((b.id, b.instance), (a.id, a.instance));
        assert_eq!(a.restarts, b.restarts + 1);
    }
    for pid in &old {
        assert!(!alive(Pid::from_raw(pid.parse().unwrap())));
    }
    // A replacement writes to the log file of the instance it replaces (its id's), nowhere else.
    for p in &after {
        let log = t.home().join(format!("logs/forky-out-{}.log", p.id));
        let want = format!("pid {}", p.pid.unwrap());
        assert!(
            eventually(DEADLINE, || std::fs::read_to_string(&log)
                .is_ok_and(|s| s.contains(&want))),
            "{want} not in {}",
            log.display()
        );
    }
    let logs: Vec<String> = std::fs::read_dir(t.home().join("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("forky-out"))
        .collect();
    assert_eq!(logs.len(), 2, "{logs:?}");
}

#[test]
fn wait_ready_node_app_is_online_only_after_process_send_ready() {
    let t = Pm2rs::new();
    // Listens at once, says ready only when the file `go` exists.
    t.write(
        "app.js",
        "const fs = require('fs');\n\
         const timer = setInterval(() => {\n\
           if (fs.existsSync('go')) { process.send('ready'); clearInterval(timer); setInterval(() => {}, 1000); }\n\
         }, 20);\n",
    );
    t.write(
        "eco.toml",
        "[[apps]]\nname = \"waiter\"\nscript = \"app.js\"\nwait_ready = true\nlisten_timeout = \"10m\"\n",
    );
    t.ok(&["start", "eco.toml"]);
    let procs = t.wait_for("launching with a pid", DEADLINE, |ps| {
        ps.iter()
            .any(|p| p.status == Status::Launching && p.pid.is_some())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(t.list()[0].status, Status::Launching, "{procs:#?}");
    t.write("go", "");
    t.wait_online("waiter", 1);
}

#[test]
fn a_shared_socket_serves_from_every_instance() {
    let t = Pm2rs::new();
    let port = start_py(&t, "instances = 2\ncluster_socket = \"shared\"\n");
    t.wait_online("py", 2);
    let load = Load::start(port, 4, false);
    let ok = eventually(DEADLINE, || load.stats.pids().len() >= 2);
    let stats = load.stop();
    assert!(ok, "{}", stats.summary());
    assert_eq!(stats.failed(), 0, "{}", stats.summary());
}

#[test]
fn without_a_readiness_signal_an_instance_is_online_after_listen_timeout() {
    let t = Pm2rs::new();
    t.write("never-ready", "");
    let started = Instant::now();
    let port = start_py(&t, "listen_timeout = \"700ms\"\n");
    t.wait_online("py", 1);
    // A lower bound only: a slow machine makes it later, never earlier.
    assert!(started.elapsed() >= Duration::from_millis(700));
    get_once(port).expect("it serves all along");
}

#[test]
fn instance_var_and_increment_var_number_the_instances() {
    let t = Pm2rs::new();
    t.script("dump.sh", r#"env > "env-$INST.txt"; exec sleep 1000"#);
    t.write(
        "eco.toml",
        "[[apps]]\nname = \"num\"\nscript = \"dump.sh\"\ninstances = 2\n\
         instance_var = \"INST\"\nincrement_var = \"PORT\"\nenv = { PORT = 4000 }\n",
    );
    t.ok(&["start", "eco.toml"]);
    t.wait_online("num", 2);
    for i in 0..2 {
        let path = t.work().join(format!("env-{i}.txt"));
        assert!(eventually(DEADLINE, || std::fs::read_to_string(&path)
            .is_ok_and(|s| s.contains("PM2RS_INSTANCE"))));
        let env = std::fs::read_to_string(&path).unwrap();
        for want in [
            format!("INST={i}"),
            format!("PM2RS_INSTANCE={i}"),
            format!("PORT={}", 4000 + i),
        ] {
            assert!(env.lines().any(|l| l == want), "missing {want} in:\n{env}");
        }
        assert!(
            !env.lines().any(|l| l.starts_with("NODE_APP_INSTANCE=")),
            "instance_var replaces NODE_APP_INSTANCE:\n{env}"
        );
    }
}

#[test]
fn an_undeclared_port_in_use_elsewhere_is_the_node_apps_eaddrinuse() {
    let t = Pm2rs::new();
    let other = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = other.local_addr().unwrap().port();
    t.write("server.js", &node_server(port));
    start_cluster(&t, "web", "server.js", "max_restarts = 1\n");
    t.wait_for("errored", DEADLINE, |ps| {
        ps.iter().any(|p| p.status == Status::Errored)
    });
    let log = t.home().join("logs/web-error.log");
    assert!(
        eventually(DEADLINE, || std::fs::read_to_string(&log).is_ok_and(|s| s
            .contains("EADDRINUSE")
            && s.contains("already in use"))),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    drop(other);
}
