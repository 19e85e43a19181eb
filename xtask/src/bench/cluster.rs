//! The cluster suite: HTTP throughput of a Node hello-world through a 2-instance pm2rs cluster
//! against the same server as one plain process and, when PM2 is available, against PM2's cluster
//! mode in the same run; then failed requests while `reload` runs under load, for both.
//!
//! PM2 is found through `$PM2RS_BENCH_PM2` (path of its `pm2` script), else `pm2` in `PATH`, else
//! installed with `npm install pm2` under `target/bench/pm2` (never in the repository); it runs with
//! its own `PM2_HOME` inside the suite's temp dir and is killed when the suite ends. Without Node the
//! suite fails; without PM2 (and npm) its PM2 figures are left out with a note.
//!
//! The load generator is here too: threads on plain `TcpStream`s sending `GET /` for a fixed time,
//! over keep-alive connections (reconnecting after `Connection: close`) or one connection per
//! request, counting answers and failures. It shares the machine's cores with the servers, so the
//! figures are comparative, not absolute.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::harness::{self, Harness, ProcId, Stdout, poll_until};
use super::report::{Measurement, Unit};
use super::{Options, Scenario, Suite, WAIT, fail_if_errored, is_up, target_dir, workspace_root};

/// The suite, listed in `bench::SUITES`.
pub const SUITE: Suite = Suite {
    name: "cluster",
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

/// Name of the pm2rs app (and of the PM2 one).
const APP: &str = "hello";
/// Instances in both clusters.
const INSTANCES: u32 = 2;
/// Keep-alive connections of the throughput load.
const CONNECTIONS: usize = 8;
/// One request may take this long before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The hello-world server; its port comes from `BENCH_PORT`.
const SERVER_JS: &str = "const http = require('http');\n\
    http.createServer((req, res) => res.end('hello world')).listen(Number(process.env.BENCH_PORT));\n";

fn load_time(o: &Options) -> Duration {
    Duration::from_secs(if o.quick { 2 } else { 5 })
}

/// What the throughput scenario leaves running for the reload scenario.
struct Clusters {
    /// Port of the pm2rs cluster.
    port: u16,
    pm2: Option<Pm2>,
}

/// Requests/s of the three set-ups, each on its own port.
fn throughput(h: &mut Harness, o: &Options) -> Result<Vec<Measurement>> {
    let script = h.scratch().join("server.js");
    std::fs::write(&script, SERVER_JS).context("writing server.js")?;
    let duration = load_time(o);

    // The same server as one plain process.
    let port = free_port()?;
    let single = {
        let mut node = NodeProcess::spawn(&script, port)?;
        h.track(node.id);
        wait_answering(port)?;
        let rps = measure(port, duration)?;
        node.stop();
        rps
    };

    let port = start_pm2rs(h, &script)?;
    let ours = measure(port, duration)?;

    let pm2 = match Pm2::find_or_install(h.scratch()) {
        Ok(Some(mut pm2)) => {
            let port = pm2.start(&script)?;
            let rps = measure(port, duration)?;
            Some((rps, pm2))
        }
        Ok(None) => None,
        Err(e) => {
            eprintln!("bench: PM2 not available: {e:#}");
            None
        }
    };
    let note = format!(
        "{CONNECTIONS} keep-alive connections for {}s from threads on the same machine; `GET /` of a \
         Node `http` hello-world",
        duration.as_secs()
    );
    let mut out = vec![
        Measurement::at_least("Node hello-world, one process", Unit::PerSec, single, None)
            .with_note(note.clone()),
        Measurement::at_least(
            format!("pm2rs cluster, {INSTANCES} instances"),
            Unit::PerSec,
            ours,
            pm2.as_ref().map(|(rps, _)| *rps),
        )
        .with_note(format!(
            "target: PM2's cluster mode in the same run{}",
            if pm2.is_none() {
                " (PM2 not available)"
            } else {
                ""
            }
        )),
    ];
    let pm2 = pm2.map(|(rps, pm2)| {
        out.push(
            Measurement::at_least(
                format!("PM2 cluster, {INSTANCES} instances"),
                Unit::PerSec,
                rps,
                None,
            )
            .with_note(format!("PM2 {} from {}", pm2.version(), pm2.bin.display())),
        );
        pm2
    });
    // Both clusters stay up for the reload scenario.
    h.stash.push(Box::new(Clusters { port, pm2 }));
    Ok(out)
}

/// Failed requests while `reload` replaces both instances, with clients running flat out.
fn reload_under_load(h: &mut Harness, _o: &Options) -> Result<Vec<Measurement>> {
    let h: &Harness = h;
    let clusters = h
        .stash
        .iter()
        .find_map(|b| b.downcast_ref::<Clusters>())
        .context("the throughput scenario did not start the clusters")?;
    let ours = failures_during(clusters.port, || {
        h.run(&["reload", APP], Stdout::Discard)?;
        Ok(())
    })?;
    let mut out = vec![
        Measurement::single(
            "pm2rs reload under load: failed requests",
            Unit::Count,
            ours.failed as f64,
            Some(0.0),
        )
        .with_note(ours.describe()),
    ];
    if let Some(pm2) = &clusters.pm2 {
        let theirs = failures_during(pm2.port, || pm2.reload())?;
        out.push(
            Measurement::single(
                "PM2 reload under load: failed requests",
                Unit::Count,
                theirs.failed as f64,
                None,
            )
            .with_note(theirs.describe()),
        );
    }
    Ok(out)
}

/// Starts the pm2rs cluster of `script`; returns its port once both instances are online and it
/// answers.
fn start_pm2rs(h: &mut Harness, script: &Path) -> Result<u16> {
    let port = free_port()?;
    let eco = h.scratch().join("cluster.toml");
    std::fs::write(
        &eco,
        format!(
            "# Written by `cargo xtask bench`.\n[[apps]]\nname = \"{APP}\"\nscript = \"{}\"\n\
             exec_mode = \"cluster\"\ninstances = {INSTANCES}\nport = {port}\n\
             env = {{ BENCH_PORT = \"{port}\" }}\n",
            script.display()
        ),
    )
    .context("writing cluster.toml")?;
    h.run(&["start", &eco.to_string_lossy()], Stdout::Discard)?;
    poll_until(
        "the pm2rs cluster to be online",
        WAIT,
        Duration::from_millis(10),
        || {
            let list = h.list_json()?;
            let mine: Vec<_> = list.iter().filter(|p| p.name == APP).collect();
            for p in &mine {
                fail_if_errored(p)?;
            }
            Ok((mine.len() == INSTANCES as usize && mine.iter().all(|p| is_up(p))).then_some(()))
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
    fn spawn(script: &Path, port: u16) -> Result<NodeProcess> {
        let child = Command::new("node")
            .arg(script)
            .env("BENCH_PORT", port.to_string())
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

/// PM2, driven through its CLI with a private `PM2_HOME`; killed on drop.
pub struct Pm2 {
    bin: PathBuf,
    home: PathBuf,
    port: u16,
}

impl Pm2 {
    /// `None` when PM2 is not found and npm is not there to install it.
    fn find_or_install(scratch: &Path) -> Result<Option<Pm2>> {
        let home = scratch.join("pm2-home");
        let make = |bin: PathBuf| Pm2 {
            bin,
            home: home.clone(),
            port: 0,
        };
        if let Some(bin) = std::env::var_os("PM2RS_BENCH_PM2") {
            return Ok(Some(make(PathBuf::from(bin))));
        }
        if let Some(bin) = in_path("pm2") {
            return Ok(Some(make(bin)));
        }
        let prefix = target_dir(&workspace_root()).join("bench").join("pm2");
        let bin = prefix.join("node_modules").join(".bin").join("pm2");
        if bin.is_file() {
            return Ok(Some(make(bin)));
        }
        let Some(npm) = in_path("npm") else {
            return Ok(None);
        };
        eprintln!("bench: npm install pm2 into {}", prefix.display());
        std::fs::create_dir_all(&prefix)?;
        let status = Command::new(npm)
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&prefix)
            .arg("pm2")
            .stdin(Stdio::null())
            .status()
            .context("running npm")?;
        if !status.success() || !bin.is_file() {
            bail!("`npm install pm2` failed ({status})");
        }
        Ok(Some(make(bin)))
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("PM2_HOME", &self.home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, args: &[&str], env: &[(&str, String)]) -> Result<()> {
        let out = self
            .command()
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .with_context(|| format!("running {}", self.bin.display()))?;
        if !out.status.success() {
            bail!(
                "`pm2 {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Starts the cluster; returns its port once it answers.
    fn start(&mut self, script: &Path) -> Result<u16> {
        self.port = free_port()?;
        let script = script.to_string_lossy();
        self.run(
            &[
                "start",
                &script,
                "--name",
                APP,
                "-i",
                &INSTANCES.to_string(),
            ],
            &[("BENCH_PORT", self.port.to_string())],
        )?;
        wait_answering(self.port)?;
        Ok(self.port)
    }

    fn reload(&self) -> Result<()> {
        self.run(&["reload", APP], &[])
    }

    fn version(&self) -> String {
        Command::new(&self.bin)
            .arg("--version")
            .env("PM2_HOME", &self.home)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "(version unknown)".into())
    }
}

impl Drop for Pm2 {
    fn drop(&mut self) {
        let _ = self.command().arg("kill").output();
    }
}

fn in_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
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
