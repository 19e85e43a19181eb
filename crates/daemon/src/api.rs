//! The control API: axum routes over the Unix socket, the version check, and the peer-uid check.
//!
//! Handlers never touch app state. Reads (`list`, `describe`, `ping`) are served from the supervisor's
//! latest [`Snapshot`] plus the metrics sampler's latest figures; writes are sent to the supervisor as a
//! [`Command`] and the handler awaits its reply. The log routes (stream, flush, reload) talk to the
//! [`LogHub`] directly: log files are not app state.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pm2rs_proto::{
    ActionResponse, ApiError, DescribeResponse, ErrorKind, FlushResponse, HandoverResponse,
    ListResponse, LogEvent, LogStreamQuery, PingResponse, ReloadRequest, ResetRequest,
    ResurrectResponse, SaveResponse, ScaleRequest, StartRequest, StartResponse, TargetRequest,
    TargetsRequest, VERSION, VERSION_HEADER, routes,
};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::keeper::Keeper;
use crate::logs::{self, Batch, LogHub};
use crate::metrics::Sample;
use crate::supervisor::{Command, Reply, Snapshot};

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    /// To the supervisor; it holds the receiver until it ends.
    pub commands: mpsc::Sender<Command>,
    /// The supervisor's latest published state.
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    /// The sampler's latest cpu/memory figures, by pid.
    pub metrics: watch::Receiver<Arc<HashMap<u32, Sample>>>,
    pub started: Instant,
    pub home: PathBuf,
    /// Log files and the followers' channel.
    pub logs: LogHub,
    /// Cancelled when the daemon ends: open log streams end with it.
    pub shutdown: CancellationToken,
    /// The fd keeper, for `ping` ([`Keeper::none`] in a daemon without one).
    pub keeper: Keeper,
}

/// The router with every route and the version middleware.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route(routes::PING, get(ping))
        .route(routes::LIST, get(list))
        .route(routes::START, post(start))
        .route(routes::STOP, post(stop))
        .route(routes::RESTART, post(restart))
        .route(routes::DELETE, post(delete))
        .route(routes::RESET, post(reset))
        .route(routes::SCALE, post(scale))
        .route(routes::RELOAD, post(reload))
        .route(routes::DESCRIBE, post(describe))
        .route(routes::KILL, post(kill))
        .route(routes::SAVE, post(save))
        .route(routes::RESURRECT, post(resurrect))
        .route(routes::HANDOVER, post(handover))
        .route(routes::LOG_STREAM, get(log_stream))
        .route(routes::LOG_FLUSH, post(log_flush))
        .route(routes::LOG_RELOAD, post(log_reload))
        .layer(middleware::from_fn(check_version))
        .with_state(state)
}

/// Refuses requests from a client of another version (except ping, kill and handover, so an old
/// daemon can always be identified, stopped or replaced), and stamps every reply with the
/// daemon's version.
async fn check_version(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let exempt = path == routes::PING || path == routes::KILL || path == routes::HANDOVER;
    if let Some(client) = req.headers().get(VERSION_HEADER)
        && client.as_bytes() != VERSION.as_bytes()
        && !exempt
    {
        let client = String::from_utf8_lossy(client.as_bytes()).into_owned();
        return error_response(ApiError {
            kind: ErrorKind::VersionMismatch,
            message: format!(
                "this pm2rs CLI is version {client} but the running daemon is version {VERSION}; \
                 use a pm2rs CLI of the daemon's version, or run `pm2rs update` with this one to \
                 replace the daemon by this version (apps keep running)"
            ),
        });
    }
    let mut resp = next.run(req).await;
    resp.headers_mut()
        .insert(VERSION_HEADER, HeaderValue::from_static(VERSION));
    resp
}

fn error_response(err: ApiError) -> Response {
    let status = match err.kind {
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::VersionMismatch => StatusCode::CONFLICT,
        ErrorKind::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorKind::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(err)).into_response()
}

/// A handler's result: JSON on success, [`ApiError`] with the matching status otherwise.
type ApiResult<T> = Result<Json<T>, ApiFailure>;

/// Wrapper so `ApiError` (a proto type) can be returned from handlers.
pub struct ApiFailure(ApiError);

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        error_response(self.0)
    }
}

fn shutting_down() -> ApiFailure {
    ApiFailure(ApiError {
        kind: ErrorKind::ShuttingDown,
        message: "the daemon is shutting down; retry in a moment".into(),
    })
}

/// Sends a command built around a fresh reply channel and awaits the supervisor's answer.
async fn ask<T>(state: &ApiState, make: impl FnOnce(Reply<T>) -> Command) -> ApiResult<T> {
    let (tx, rx) = oneshot::channel();
    state
        .commands
        .send(make(tx))
        .await
        .map_err(|_| shutting_down())?;
    match rx.await {
        Ok(Ok(v)) => Ok(Json(v)),
        Ok(Err(e)) => Err(ApiFailure(e)),
        Err(_) => Err(shutting_down()),
    }
}

async fn ping(State(state): State<ApiState>) -> Json<PingResponse> {
    Json(PingResponse {
        version: VERSION.to_string(),
        pid: std::process::id(),
        home: state.home.clone(),
        uptime_ms: state.started.elapsed().as_millis() as u64,
        warnings: state.snapshot.borrow().warnings.clone(),
        keeper_pid: state
            .keeper
            .is_active()
            .then(|| state.keeper.pid())
            .flatten(),
    })
}

async fn list(State(state): State<ApiState>) -> Json<ListResponse> {
    let snapshot = state.snapshot.borrow().clone();
    let metrics = state.metrics.borrow().clone();
    let processes = snapshot
        .processes
        .iter()
        .cloned()
        .map(|mut p| {
            if let Some(s) = p.pid.and_then(|pid| metrics.get(&pid)) {
                with_sample(&mut p, s);
            }
            p
        })
        .collect();
    Json(ListResponse { processes })
}

/// Puts the sampler's figures of `p`'s process group into `p`.
fn with_sample(p: &mut pm2rs_proto::ProcessInfo, s: &Sample) {
    p.cpu_percent = Some(s.cpu_percent);
    p.memory_bytes = Some(s.memory_bytes);
    p.leader_cpu_percent = Some(s.leader_cpu_percent);
    p.leader_memory_bytes = Some(s.leader_memory_bytes);
    p.group_processes = Some(s.processes);
}

async fn describe(
    State(state): State<ApiState>,
    Json(req): Json<TargetRequest>,
) -> ApiResult<DescribeResponse> {
    let snapshot = state.snapshot.borrow().clone();
    let metrics = state.metrics.borrow().clone();
    let mut resp = snapshot.describe(&req.target).map_err(ApiFailure)?;
    for d in &mut resp.processes {
        if let Some(s) = d.process.pid.and_then(|pid| metrics.get(&pid)) {
            with_sample(&mut d.process, s);
        }
        let files = logs::paths(state.logs.logs_dir(), &d.spec, d.process.id);
        let mut paths = vec![files.out.as_path(), files.err.as_path()];
        paths.extend(files.combined.as_deref());
        d.log_problems = state.logs.problems(&paths);
        d.combined_log = files.combined;
        d.log_rotation = Some(state.logs.rotation(&d.spec));
    }
    Ok(Json(resp))
}

/// `GET /v1/logs/stream`: every line read from now on by a matching instance (apps started later
/// included), as newline-delimited JSON, until the client leaves or the daemon stops.
async fn log_stream(State(state): State<ApiState>, Query(q): Query<LogStreamQuery>) -> Response {
    let follow = Follow {
        rx: state.logs.follow(),
        query: q,
        shutdown: state.shutdown.clone(),
    };
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        let chunk = f.next().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), f))
    });
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}

/// One follower's state.
struct Follow {
    rx: broadcast::Receiver<Arc<Batch>>,
    query: LogStreamQuery,
    shutdown: CancellationToken,
}

impl Follow {
    /// The next chunk of NDJSON to send, `None` when the stream ends.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            let received = tokio::select! {
                () = self.shutdown.cancelled() => return None,
                r = self.rx.recv() => r,
            };
            match received {
                Ok(batch) if self.wants(&batch) => return Some(ndjson(&batch)),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let mut line = serde_json::to_vec(&LogEvent::Skipped { lines: n }).ok()?;
                    line.push(b'\n');
                    return Some(Bytes::from(line));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    fn wants(&self, b: &Batch) -> bool {
        let q = &self.query;
        let stream_ok = match b.stream {
            pm2rs_proto::LogStream::Out => q.out,
            pm2rs_proto::LogStream::Err => q.err,
        };
        let target = q.target.trim();
        stream_ok
            && (target == "all"
                || target.parse::<u32>() == Ok(b.id)
                || *b.name == *target
                || *b.namespace == *target)
    }
}

/// A batch as NDJSON `line` events.
fn ndjson(b: &Batch) -> Bytes {
    let mut out = Vec::with_capacity(b.lines.len() + 128);
    let body = b.lines.strip_suffix(b"\n").unwrap_or(&b.lines);
    for line in body.split(|&c| c == b'\n') {
        let event = LogEvent::Line {
            id: b.id,
            name: b.name.to_string(),
            stream: b.stream,
            line: String::from_utf8_lossy(line).into_owned(),
            at_us: b.at_us,
            file_end: b.file_end,
        };
        if serde_json::to_writer(&mut out, &event).is_ok() {
            out.push(b'\n');
        }
    }
    Bytes::from(out)
}

/// `POST /v1/logs/flush`: empties the target's log files and removes their rotated files.
async fn log_flush(
    State(state): State<ApiState>,
    Json(req): Json<TargetRequest>,
) -> ApiResult<FlushResponse> {
    let snapshot = state.snapshot.borrow().clone();
    let ids = crate::supervisor::resolve_target(
        &req.target,
        snapshot
            .processes
            .iter()
            .map(|p| (p.id, &*p.name, &*p.namespace)),
    )
    .map_err(ApiFailure)?;
    let mut files: Vec<(PathBuf, u32)> = Vec::new();
    for p in snapshot.processes.iter().filter(|p| ids.contains(&p.id)) {
        let Some(spec) = snapshot.specs.get(&p.name) else {
            continue;
        };
        let retain = state.logs.rotation(spec).retain;
        let f = logs::paths(state.logs.logs_dir(), spec, p.id);
        for path in [Some(f.out), Some(f.err), f.combined].into_iter().flatten() {
            if !files.iter().any(|(known, _)| *known == path) {
                files.push((path, retain));
            }
        }
    }
    let hub = state.logs.clone();
    let list = files.clone();
    let errors = tokio::task::spawn_blocking(move || hub.flush_blocking(&list))
        .await
        .unwrap_or_else(|e| vec![e.to_string()]);
    if !errors.is_empty() {
        return Err(ApiFailure(ApiError {
            kind: ErrorKind::Failed,
            message: format!("could not empty every log file: {}", errors.join("; ")),
        }));
    }
    info!(target = %req.target, files = files.len(), "logs flushed");
    Ok(Json(FlushResponse {
        files: files.into_iter().map(|(p, _)| p).collect(),
    }))
}

/// `POST /v1/logs/reload`: every log file is reopened at its next write.
async fn log_reload(State(state): State<ApiState>) -> Json<FlushResponse> {
    state.logs.reopen_all();
    info!("log files reopened on request");
    Json(FlushResponse {
        files: state.logs.open_files(),
    })
}

async fn start(
    State(state): State<ApiState>,
    Json(req): Json<StartRequest>,
) -> ApiResult<StartResponse> {
    if req.apps.is_empty() {
        return Err(ApiFailure(ApiError {
            kind: ErrorKind::BadRequest,
            message: "no apps to start".into(),
        }));
    }
    ask(&state, |reply| Command::Start {
        apps: req.apps,
        reply,
    })
    .await
}

async fn stop(state: State<ApiState>, req: Json<TargetsRequest>) -> ApiResult<ActionResponse> {
    on_targets(state, req, |targets, reply| Command::Stop {
        targets,
        reply,
    })
    .await
}

async fn restart(state: State<ApiState>, req: Json<TargetsRequest>) -> ApiResult<ActionResponse> {
    on_targets(state, req, |targets, reply| Command::Restart {
        targets,
        reply,
    })
    .await
}

async fn delete(state: State<ApiState>, req: Json<TargetsRequest>) -> ApiResult<ActionResponse> {
    on_targets(state, req, |targets, reply| Command::Delete {
        targets,
        reply,
    })
    .await
}

/// The shared body of the routes that act on targets.
async fn on_targets(
    State(state): State<ApiState>,
    Json(req): Json<TargetsRequest>,
    make: fn(Vec<String>, Reply<ActionResponse>) -> Command,
) -> ApiResult<ActionResponse> {
    ask(&state, |reply| make(req.targets, reply)).await
}

async fn reset(
    State(state): State<ApiState>,
    Json(req): Json<ResetRequest>,
) -> ApiResult<ActionResponse> {
    ask(&state, |reply| Command::Reset {
        target: req.target,
        reply,
    })
    .await
}

async fn scale(
    State(state): State<ApiState>,
    Json(request): Json<ScaleRequest>,
) -> ApiResult<ActionResponse> {
    ask(&state, |reply| Command::Scale { request, reply }).await
}

async fn reload(
    State(state): State<ApiState>,
    Json(request): Json<ReloadRequest>,
) -> ApiResult<ActionResponse> {
    ask(&state, |reply| Command::Reload { request, reply }).await
}

async fn kill(State(state): State<ApiState>) -> ApiResult<ActionResponse> {
    ask(&state, |reply| Command::Kill { reply }).await
}

async fn save(State(state): State<ApiState>) -> ApiResult<SaveResponse> {
    ask(&state, |reply| Command::Save { reply }).await
}

/// `POST /v1/resurrect`: reads the dump on a blocking thread, then the supervisor starts what it
/// does not know.
async fn resurrect(State(state): State<ApiState>) -> ApiResult<ResurrectResponse> {
    let home = state.home.clone();
    let loaded = tokio::task::spawn_blocking(move || crate::state::load(&home))
        .await
        .map_err(|e| {
            ApiFailure(ApiError {
                kind: ErrorKind::Failed,
                message: format!("cannot read the dump: {e}"),
            })
        })?;
    ask(&state, |reply| Command::Resurrect { loaded, reply }).await
}

async fn handover(State(state): State<ApiState>) -> ApiResult<HandoverResponse> {
    ask(&state, |reply| Command::Handover { reply }).await
}

/// A Unix listener that drops connections from any uid other than `uid` (checked with SO_PEERCRED).
pub struct PeerCheckedListener {
    pub inner: UnixListener,
    pub uid: u32,
}

impl axum::serve::Listener for PeerCheckedListener {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            match stream.peer_cred() {
                Ok(cred) if cred.uid() == self.uid => return (stream, addr),
                Ok(cred) => warn!(
                    peer_uid = cred.uid(),
                    peer_pid = cred.pid(),
                    "refused a connection from another user"
                ),
                Err(e) => warn!(%e, "refused a connection: cannot read peer credentials"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}
