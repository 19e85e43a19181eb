//! The cluster suite: requests/s of a Node hello-world through a 2-instance cluster, and failed
//! requests while `reload` replaces the instances under load. With `--compare pm2` the same runs
//! against PM2's cluster mode (PM2's Node `cluster` module behind its daemon); pm2rs runs the same
//! unmodified server with the port handed over by the daemon. The pm2rs runs also measure the same
//! server as one plain `node` process, the baseline.
//!
//! The load generator is here too: threads on plain `TcpStream`s sending `GET /` for a fixed time,
//! over keep-alive connections (reconnecting after `Connection: close`) or one connection per
//! request, counting answers and failures. It shares the machine's cores with the servers, so the
//! figures are comparative, not absolute.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::harness::{self, Harness, ProcId, Stdout, poll_until};
use super::manager::{Cli, Kind};
use super::report::{Measurement, Unit, ms};
use super::{Options, Scenario, Suite, WAIT};

/// The suite, listed in `bench::SUITES`.
pub const SUITE: Suite = Suite {
    name: "cluster",
    compare: true,
    scenarios: &[
        Scenario {
            name: "cluster throughput",
            run: throughput,
        },
        Scenario {
            name: "reload under load",
            run: reload_under_load,
        },
    ],
};

/// Name of the app, for both managers.
const APP: &str = "hello";
/// Instances of the cluster.
const INSTANCES: usize = 2;
/// Keep-alive connections of the throughput load.
const CONNECTIONS: usize = 8;
/// One request may take this long before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The hello-world server, unmodified Node `http` on a fixed port.
fn server_js(port: u16) -> String {
    format!(
        "const http = require('http');\n\
         http.createServer((req, res) => res.end('hello world')).listen({port});\n"
    )
}

fn load_time(o: &Options) -> Duration {
    Duration::from_secs(if o.quick { 2 } else { 5 })
}

/// The port of the cluster the throughput scenario started, for the reload scenario.
struct ClusterPort(u16);

/// Requests/s through the manager's 2-instance cluster (and, in pm2rs runs, of one plain process).
fn throughput(h: &mut Harness, o: &Options) -> Result<Vec<Measurement>> {
    let duration = load_time(o);
    let note = format!(
        "{CONNECTIONS} keep-alive connections for {}s from threads on the same machine; `GET /` of \
         an unmodified Node `http` hello-world",
        duration.as_secs()
    );
    let mut out = Vec::new();
    if h.kind() == Kind::Pm2rs {
        let port = free_port()?;
        let script = h.scratch().join("single.js");
        std::fs::write(&script, server_js(port)).context("writing single.js")?;
        let mut node = NodeProcess::spawn(&script)?;
        h.track(node.id);
        wait_answering(port)?;
        let rps = measure(port, duration)?;
        node.stop();
        out.push(
            Measurement::single(
                "Node hello-world, one plain process (no manager)",
                Unit::PerSec,
                rps,
                None,
            )
            .with_note(note.clone()),
        );
    }
    let port = start_cluster(h)?;
    let rps = measure(port, duration)?;
    h.stash.push(Box::new(ClusterPort(port)));
    let how = match h.kind() {
        Kind::Pm2rs => {
            "pm2rs: exec_mode = \"cluster\", port handed over by the daemon (SO_REUSEPORT per instance)"
        }
        Kind::Pm2 => {
            "PM2: `pm2 start server.js -i 2` (Node cluster module, round robin in PM2's daemon)"
        }
    };
    out.push(
        Measurement::single(
            format!("Node hello-world, {INSTANCES}-instance cluster"),
            Unit::PerSec,
            rps,
            None,
        )
        .with_note(format!("{note}; {how}")),
    );
    Ok(out)
}

/// Failed requests (target 0) while `reload` replaces every instance, clients running flat out.
fn reload_under_load(h: &mut Harness, _o: &Options) -> Result<Vec<Measurement>> {
    let port = h
        .stash
        .iter()
        .find_map(|b| b.downcast_ref::<ClusterPort>())
        .map(|p| p.0)
        .context("the throughput scenario did not start the cluster")?;
    let counts = failures_during(port, || {
        h.run(&["reload", APP], Stdout::Discard)?;
        Ok(())
    })?;
    Ok(vec![
        Measurement::single(
            "failed requests during `reload` under load",
            Unit::Requests,
            counts.failed as f64,
            Some(0.0),
        )
        .with_note(counts.describe()),
        Measurement::single(
            "`reload` of the 2-instance cluster under load",
            Unit::Ms,
            ms(counts.reload),
            None,
        ),
    ])
}

/// Starts the manager's cluster of the hello-world; returns its port once every instance is
/// online and it answers.
fn start_cluster(h: &mut Harness) -> Result<u16> {
    let port = free_port()?;
    let script = h.scratch().join("server.js");
    std::fs::write(&script, server_js(port)).context("writing server.js")?;
    let script = script.to_string_lossy().into_owned();
    match h.kind() {
        Kind::Pm2rs => {
            let eco = h.scratch().join("cluster.toml");
            std::fs::write(
                &eco,
                format!(
                    "# Written by `cargo xtask bench`.\n[[apps]]\nname = \"{APP}\"\n\
                     script = {script:?}\nexec_mode = \"cluster\"\ninstances = {INSTANCES}\n\
                     port = {port}\n"
                ),
            )
            .context("writing cluster.toml")?;
            h.cli(Cli::Start(&eco.to_string_lossy()), Stdout::Discard)?;
        }
        Kind::Pm2 => {
            let n = INSTANCES.to_string();
            h.run(
                &["start", &script, "--name", APP, "-i", &n],
                Stdout::Discard,
            )?;
        }
    }
    poll_until(
        "the cluster to be online",
        WAIT,
        Duration::from_millis(10),
        || {
            let list = h.instances()?;
            let mine: Vec<_> = list.iter().filter(|p| p.name == APP).collect();
            if let Some(p) = mine.iter().find(|p| p.errored.is_some()) {
                bail!("instance {} is errored: {:?}", p.id, p.errored);
            }
            Ok((mine.len() == INSTANCES && mine.iter().all(|p| p.online)).then_some(()))
        },
    )?;
    wait_answering(port)?;
    Ok(port)
}

/// A port nobody listens on right now.
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(l.local_addr()?.port())
}

fn wait_answering(port: u16) -> Result<()> {
    poll_until(
        &format!("a server to answer on port {port}"),
        WAIT,
        Duration::from_millis(10),
        || Ok(Client::connect(port).and_then(|mut c| c.get(false)).ok()),
    )
    .map(|_| ())
}

/// `node server.js` as a plain child.
struct NodeProcess {
    child: Child,
    id: ProcId,
}

impl NodeProcess {
    fn spawn(script: &Path) -> Result<NodeProcess> {
        let child = Command::new("node")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("running `node` (is Node.js installed?)")?;
        let id = ProcId::of(child.id()).context("node exited at once")?;
        Ok(NodeProcess { child, id })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Requests/s over [`CONNECTIONS`] keep-alive connections for `duration`.
fn measure(port: u16, duration: Duration) -> Result<f64> {
    let load = Load::start(port, CONNECTIONS, 0);
    let started = Instant::now();
    while started.elapsed() < duration {
        harness::interrupted()?;
        thread::sleep(Duration::from_millis(50));
    }
    let counts = load.finish();
    let secs = started.elapsed().as_secs_f64();
    if counts.failed > 0 {
        bail!(
            "{} requests failed during the throughput run on port {port}",
            counts.failed
        );
    }
    Ok(counts.ok as f64 / secs)
}

/// Runs `action` (a reload) with 2 keep-alive and 2 new-connection clients, plus 1 s after it.
fn failures_during(port: u16, action: impl FnOnce() -> Result<()>) -> Result<Counts> {
    let load = Load::start(port, 2, 2);
    thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let result = action();
    let took = started.elapsed();
    thread::sleep(Duration::from_secs(1));
    let mut counts = load.finish();
    counts.reload = took;
    result?;
    Ok(counts)
}

/// What a load produced.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    ok: u64,
    failed: u64,
    /// How long the reload command took.
    reload: Duration,
}

impl Counts {
    fn describe(&self) -> String {
        format!(
            "{} requests answered, {} failed, from 2 keep-alive and 2 new-connection-per-request \
             clients running from 0.5 s before the reload until 1 s after it returned; the reload \
             command took {:.0} ms",
            self.ok,
            self.failed,
            self.reload.as_secs_f64() * 1000.0
        )
    }
}

/// Client threads; stopped by [`Load::finish`].
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, keep_alive: usize, fresh: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = (0..keep_alive + fresh)
            .map(|i| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let reuse = i < keep_alive;
                thread::spawn(move || {
                    let mut conn: Option<Client> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let client = match conn.take() {
                            Some(c) => Ok(c),
                            None => Client::connect(port),
                        };
                        match client.and_then(|mut c| c.get(reuse).map(|again| (c, again))) {
                            Ok((c, again)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                if again {
                                    conn = Some(c);
                                }
                            }
                            Err(_) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    fn finish(mut self) -> Counts {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        Counts {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            reload: Duration::ZERO,
        }
    }
}

/// One HTTP/1.1 connection with a reusable receive buffer.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(port: u16) -> Result<Client> {
        let stream =
            TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), REQUEST_TIMEOUT)?;
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: Vec::with_capacity(1024),
        })
    }

    /// One `GET /` (asking to keep the connection when `reuse`); returns whether the connection
    /// may be used again.
    fn get(&mut self, reuse: bool) -> Result<bool> {
        let request: &[u8] = if reuse {
            b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
        } else {
            b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
        };
        self.stream.write_all(request)?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((true, close)) = parse_response(&self.buf)? {
                if !self.buf.starts_with(b"HTTP/1.1 200") {
                    bail!("not a 200 answer");
                }
                return Ok(reuse && !close);
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed before a complete answer");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// `None` until the headers are in; then whether the body is complete and whether the server
/// asked to close.
fn parse_response(buf: &[u8]) -> Result<Option<(bool, bool)>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .context("an answer without content-length")?;
    let close = head.lines().any(|l| l.trim() == "connection: close");
    Ok(Some((buf.len() >= end + 4 + length, close)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_incrementally() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
        assert_eq!(parse_response(&full[..10]).unwrap(), None);
        assert_eq!(
            parse_response(&full[..full.len() - 1]).unwrap(),
            Some((false, true))
        );
        assert_eq!(parse_response(full).unwrap(), Some((true, true)));
        let keep = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parse_response(keep).unwrap(), Some((true, false)));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }
}
