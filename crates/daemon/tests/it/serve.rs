//! `serve` in-process: bind the socket of a temporary home, run `serve` on a current-thread
//! runtime, start a real app over the API, see it online, `kill`, and check that `serve` returns
//! and the app is gone.

use std::cell::RefCell;
use std::path::Path;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use pm2rs_daemon::home::Home;
use pm2rs_daemon::logs::LogHub;
use pm2rs_proto::{
    ActionResponse, AppSpec, ListResponse, LogDefaults, PingResponse, StartRequest, StartResponse,
    Status, VERSION, VERSION_HEADER, routes,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

/// Longest wait for anything the test polls for.
const DEADLINE: Duration = Duration::from_secs(20);

/// SIGKILLs, when dropped, every pid (and its process group: each app leads its own) the test has
/// seen, so a failing test leaves no process behind.
#[derive(Default)]
struct Reaper {
    seen: RefCell<Vec<Pid>>,
}

impl Reaper {
    fn saw(&self, pid: Pid) {
        self.seen.borrow_mut().push(pid);
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in self.seen.borrow().iter() {
            let _ = killpg(*pid, Signal::SIGKILL);
            let _ = kill(*pid, Signal::SIGKILL);
        }
    }
}

/// HTTP/1.1 over the control socket, as the CLI's client speaks it.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    async fn connect(socket: &Path) -> Client {
        let stream = UnixStream::connect(socket)
            .await
            .expect("the control socket accepts connections");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Client { sender }
    }

    async fn get<R: DeserializeOwned>(&mut self, path: &str) -> R {
        self.send(Method::GET, path, Bytes::new()).await
    }

    async fn post<B: Serialize, R: DeserializeOwned>(&mut self, path: &str, body: &B) -> R {
        let body = serde_json::to_vec(body).expect("request body as JSON");
        self.send(Method::POST, path, Bytes::from(body)).await
    }

    /// Sends one request and decodes a successful reply; fails the test on any other.
    async fn send<R: DeserializeOwned>(&mut self, method: Method, path: &str, body: Bytes) -> R {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "pm2rs")
            .header("content-type", "application/json")
            .header(VERSION_HEADER, VERSION)
            .body(Full::new(body))
            .expect("a valid request");
        let resp = self.sender.send_request(req).await.expect("a reply");
        let status = resp.status();
        let version = resp.headers().get(VERSION_HEADER).cloned();
        let body = resp.into_body().collect().await.expect("a body").to_bytes();
        assert!(
            status.is_success(),
            "{path} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(
            version.as_ref().map(|v| v.as_bytes()),
            Some(VERSION.as_bytes()),
            "{path}: every reply carries the daemon's version"
        );
        serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{path}: undecodable reply ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        })
    }
}

/// Whether `pid` still exists, even as a zombie (`serve` reaps its apps, so a stopped one must not).
fn exists(pid: Pid) -> bool {
    kill(pid, None) != Err(Errno::ESRCH)
}

#[test]
fn serve_runs_an_app_and_returns_after_kill_with_nothing_left() {
    // Declared first, dropped last: after the runtime, even when the test panics inside it.
    let reaper = Reaper::default();
    let dir = tempfile::tempdir().expect("temp dir");
    let home = Home::new(dir.path().join("home"));
    home.prepare().expect("home prepared");
    let lock = home.lock().expect("pid-file lock");
    let logs = LogHub::new(
        home.logs_dir(),
        LogDefaults {
            max_size: 0,
            retain: 0,
            compress: false,
            max_line: 1 << 20,
        },
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listener = home.bind(&lock).expect("socket bound");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(pm2rs_daemon::serve(
            listener,
            home.clone(),
            logs,
            shutdown.clone(),
            CancellationToken::new(),
            pm2rs_daemon::Keeping::default(),
        ));
        let mut client = Client::connect(&home.socket()).await;

        let ping: PingResponse = client.get(routes::PING).await;
        assert_eq!(ping.pid, std::process::id(), "serve runs in this process");
        assert_eq!(ping.home, home.dir);

        let mut spec = AppSpec::new("sleeper", "/bin/sleep", dir.path());
        spec.args = vec!["1000".into()];
        let started: StartResponse = client
            .post(routes::START, &StartRequest { apps: vec![spec] })
            .await;
        assert_eq!(started.started, ["sleeper"]);

        let end = Instant::now() + DEADLINE;
        let (id, pid) = loop {
            let list: ListResponse = client.get(routes::LIST).await;
            for p in &list.processes {
                if let Some(pid) = p.pid {
                    reaper.saw(Pid::from_raw(pid as i32));
                }
            }
            if let [p] = list.processes.as_slice()
                && p.status == Status::Online
                && let Some(pid) = p.pid
            {
                break (p.id, Pid::from_raw(pid as i32));
            }
            assert!(
                Instant::now() < end,
                "sleeper not online within {DEADLINE:?}: {:?}",
                list.processes
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            cmdline.starts_with(b"/bin/sleep\0"),
            "pid {pid} is the app: {:?}",
            String::from_utf8_lossy(&cmdline)
        );

        let killed: ActionResponse = client.post(routes::KILL, &()).await;
        assert_eq!(killed.ids, [id]);
        let served = tokio::time::timeout(DEADLINE, server)
            .await
            .expect("serve returns after kill")
            .expect("serve does not panic");
        served.expect("serve ends without an error");
        assert!(shutdown.is_cancelled(), "kill cancels the shutdown token");

        let end = Instant::now() + DEADLINE;
        while exists(pid) {
            assert!(Instant::now() < end, "the app (pid {pid}) outlived serve");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}
