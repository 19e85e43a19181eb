//! The control API: axum routes over the Unix socket, the version check, and the peer-uid check.
//!
//! Handlers never touch app state. Reads (`list`, `describe`, `ping`) are served from the supervisor's
//! latest [`Snapshot`] plus the metrics sampler's latest figures; writes are sent to the supervisor as a
//! [`Command`] and the handler awaits its reply.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pm2rs_proto::{
    ActionResponse, ApiError, DescribeResponse, ErrorKind, ListResponse, PingResponse,
    ReloadRequest, ScaleRequest, StartRequest, StartResponse, TargetRequest, VERSION,
    VERSION_HEADER, routes,
};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

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
        .route(routes::SCALE, post(scale))
        .route(routes::RELOAD, post(reload))
        .route(routes::DESCRIBE, post(describe))
        .route(routes::KILL, post(kill))
        .layer(middleware::from_fn(check_version))
        .with_state(state)
}

/// Refuses requests from a client of another version (except ping and kill, so an old daemon can
/// always be identified and stopped), and stamps every reply with the daemon's version.
async fn check_version(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let exempt = path == routes::PING || path == routes::KILL;
    if let Some(client) = req.headers().get(VERSION_HEADER)
        && client.as_bytes() != VERSION.as_bytes()
        && !exempt
    {
        let client = String::from_utf8_lossy(client.as_bytes()).into_owned();
        return error_response(ApiError {
            kind: ErrorKind::VersionMismatch,
            message: format!(
                "this pm2rs CLI is version {client} but the running daemon is version {VERSION}; \
                 run `pm2rs kill`, then retry (apps are restarted from your ecosystem file)"
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
                p.cpu_percent = Some(s.cpu_percent);
                p.memory_bytes = Some(s.memory_bytes);
            }
            p
        })
        .collect();
    Json(ListResponse { processes })
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
            d.process.cpu_percent = Some(s.cpu_percent);
            d.process.memory_bytes = Some(s.memory_bytes);
        }
    }
    Ok(Json(resp))
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

async fn stop(state: State<ApiState>, req: Json<TargetRequest>) -> ApiResult<ActionResponse> {
    on_target(state, req, |target, reply| Command::Stop { target, reply }).await
}

async fn restart(state: State<ApiState>, req: Json<TargetRequest>) -> ApiResult<ActionResponse> {
    on_target(state, req, |target, reply| Command::Restart {
        target,
        reply,
    })
    .await
}

async fn delete(state: State<ApiState>, req: Json<TargetRequest>) -> ApiResult<ActionResponse> {
    on_target(state, req, |target, reply| Command::Delete {
        target,
        reply,
    })
    .await
}

/// The shared body of the routes that act on a target.
async fn on_target(
    State(state): State<ApiState>,
    Json(req): Json<TargetRequest>,
    make: fn(String, Reply<ActionResponse>) -> Command,
) -> ApiResult<ActionResponse> {
    ask(&state, |reply| make(req.target, reply)).await
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
