//! A tiny HTTP/1.1 load client for the cluster tests: threads that send `GET /` in a loop, either
//! over one keep-alive connection (reconnecting when the server says `Connection: close`) or with a
//! new connection per request, and count what happened. Test servers answer with their pid.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long one request may take before it counts as failed (connections queue while an instance
/// restarts, so this is generous).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// One `GET /` on a fresh connection; returns the body (the server's pid).
pub fn get_once(port: u16) -> Result<String, String> {
    let mut conn = Conn::connect(port)?;
    conn.get(false).map(|(body, _)| body)
}

/// Connection-level outcome counters, shared by the client threads.
#[derive(Default)]
pub struct Stats {
    pub ok: AtomicU64,
    /// connect() failed (refused, reset during handshake, timeout).
    pub connect_errors: AtomicU64,
    /// Connected, but the request got no complete answer.
    pub request_errors: AtomicU64,
    /// Pids that answered, in order of first appearance.
    pub pids: Mutex<Vec<String>>,
    /// The first few error texts, for the failure message.
    pub errors: Mutex<Vec<String>>,
}

impl Stats {
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.connect_errors.load(Ordering::Relaxed) + self.request_errors.load(Ordering::Relaxed)
    }

    pub fn pids(&self) -> BTreeSet<String> {
        self.pids.lock().unwrap().iter().cloned().collect()
    }

    fn record(&self, result: &Result<String, String>, connect: bool) {
        match result {
            Ok(pid) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                let mut pids = self.pids.lock().unwrap();
                if pids.last() != Some(pid) && !pids.contains(pid) {
                    pids.push(pid.clone());
                }
            }
            Err(e) => {
                if connect {
                    self.connect_errors.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.request_errors.fetch_add(1, Ordering::Relaxed);
                }
                let mut errors = self.errors.lock().unwrap();
                if errors.len() < 10 {
                    errors.push(e.clone());
                }
            }
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "ok {}, connect errors {}, request errors {}, pids {:?}, first errors {:?}",
            self.ok(),
            self.connect_errors.load(Ordering::Relaxed),
            self.request_errors.load(Ordering::Relaxed),
            self.pids(),
            self.errors.lock().unwrap()
        )
    }
}

/// Client threads hammering `127.0.0.1:port` until dropped or [`Load::stop`]ped.
pub struct Load {
    pub stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// `threads` clients; `keep_alive` reuses connections.
    pub fn start(port: u16, threads: usize, keep_alive: bool) -> Load {
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stats = stats.clone();
                let stop = stop.clone();
                std::thread::spawn(move || client(port, keep_alive, &stats, &stop))
            })
            .collect();
        Load {
            stats,
            stop,
            threads,
        }
    }

    /// Waits until `n` more requests succeeded (or `deadline` passes); returns whether they did.
    pub fn wait_more(&self, n: u64, deadline: Duration) -> bool {
        let target = self.stats.ok() + n;
        crate::harness::eventually(deadline, || self.stats.ok() >= target)
    }

    /// Stops the clients and waits for them.
    pub fn stop(mut self) -> Arc<Stats> {
        self.halt();
        self.stats.clone()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.halt();
    }
}

fn client(port: u16, keep_alive: bool, stats: &Stats, stop: &AtomicBool) {
    let mut conn: Option<Conn> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.take() {
            Some(c) => c,
            None => match Conn::connect(port) {
                Ok(c) => c,
                Err(e) => {
                    stats.record(&Err(e), true);
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            },
        };
        let mut c = c;
        let result = c.get(keep_alive);
        if let Ok((_, reusable)) = &result
            && *reusable
            && keep_alive
        {
            conn = Some(c);
        }
        stats.record(&result.map(|(body, _)| body), false);
    }
}

struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn connect(port: u16) -> Result<Conn, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    /// Sends one request; returns the body and whether the connection may be reused.
    fn get(&mut self, keep_alive: bool) -> Result<(String, bool), String> {
        let request = if keep_alive {
            "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
        } else {
            "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        };
        self.reader
            .get_mut()
            .write_all(request.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut status = String::new();
        match self.reader.read_line(&mut status) {
            Ok(0) => return Err("closed before the status line".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read status: {e}")),
        }
        if !status.starts_with("HTTP/1.1 200") {
            return Err(format!("status {}", status.trim()));
        }
        let mut length = None;
        let mut chunked = false;
        let mut close = false;
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return Err("closed inside the headers".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("read headers: {e}")),
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse::<usize>().ok();
            } else if lower == "connection: close" {
                close = true;
            } else if lower == "transfer-encoding: chunked" {
                chunked = true;
            }
        }
        let body = if chunked {
            self.read_chunked()?
        } else {
            let length = length.ok_or("no content-length")?;
            self.read_exact(length)?
        };
        Ok((String::from_utf8_lossy(&body).into_owned(), !close))
    }

    fn read_exact(&mut self, n: usize) -> Result<Vec<u8>, String> {
        let mut body = vec![0u8; n];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| format!("read body: {e}"))?;
        Ok(body)
    }

    /// A chunked body: hex size lines, each chunk followed by CRLF, ending with a 0 chunk.
    fn read_chunked(&mut self) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return Err("closed inside a chunked body".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("read chunk size: {e}")),
            }
            let size = usize::from_str_radix(line.trim(), 16)
                .map_err(|_| format!("bad chunk size {line:?}"))?;
            let mut chunk = self.read_exact(size + 2)?;
            chunk.truncate(size);
            body.extend_from_slice(&chunk);
            if size == 0 {
                return Ok(body);
            }
        }
    }
}
