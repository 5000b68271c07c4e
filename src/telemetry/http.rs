//! The HTTP side of a running job: `GET /metrics` for Prometheus, `GET
//! /status` (the same JSON as `pacer status --json`), and `POST /pause`,
//! `POST /resume` that act like the CLI commands.
//!
//! The control API can stop a production job, so anything but a loopback
//! address needs a bearer token (`PACER_CONTROL_TOKEN`) and the server
//! refuses to start without one. `/metrics` stays open: scrapers rarely
//! carry tokens and the numbers hold no secrets.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::hub::Exposition;
use super::metrics::{CLASSIC_CONTENT_TYPE, CONTENT_TYPE};
use super::redact;

/// Environment variable holding the control token.
pub const TOKEN_ENV: &str = "PACER_CONTROL_TOKEN";
/// Shortest token accepted: a guessable token is no protection.
pub const MIN_TOKEN_LEN: usize = 16;
use crate::store::control::{MAX_BY, MAX_REASON};
use crate::text::operator_text;

/// A pause or resume request as the API received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlRequest {
    pub reason: String,
    /// Who asked: the request's `by`, or `api@<peer address>`.
    pub by: String,
}

/// What the server asks of the job. The run loop implements it with the
/// store (the control row that `pacer pause` also writes), so the API and
/// the CLI act the same way. Errors become 500 responses with the
/// (redacted) message.
pub trait Control: Send + Sync + 'static {
    /// The JSON `pacer status --json` prints.
    fn status(&self) -> BoxFuture<'_, anyhow::Result<Value>>;
    fn pause(&self, req: ControlRequest) -> BoxFuture<'_, anyhow::Result<Value>>;
    fn resume(&self, req: ControlRequest) -> BoxFuture<'_, anyhow::Result<Value>>;
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("[http] listen = {listen:?}: cannot resolve the address: {source}")]
    Resolve {
        listen: String,
        source: std::io::Error,
    },
    #[error(
        "[http] listen = {listen:?} is not a loopback address, so the control API needs a token: set {TOKEN_ENV} \
         (at least {MIN_TOKEN_LEN} characters; clients send `Authorization: Bearer <token>`) or listen on 127.0.0.1"
    )]
    TokenRequired { listen: String },
    #[error(
        "{TOKEN_ENV} is too short ({len} characters): use at least {MIN_TOKEN_LEN}, e.g. `openssl rand -hex 24`"
    )]
    WeakToken { len: usize },
    #[error("[http] listen = {listen:?}: cannot listen on {addr}: {source}")]
    Bind {
        listen: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The token from `PACER_CONTROL_TOKEN`; unset or blank means none.
pub fn token_from_env() -> Option<String> {
    std::env::var(TOKEN_ENV)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// A running server; dropping it does not stop it, `shutdown` does.
pub struct HttpServer {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl HttpServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Finish in-flight requests and stop. A request still waiting after
    /// a few seconds (`/status` reads the database, whose path may be
    /// silent) is dropped rather than allowed to hold the process's exit.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let HttpServer { stop, mut task, .. } = self;
        let _ = stop.send(());
        match tokio::time::timeout(std::time::Duration::from_secs(5), &mut task).await {
            Ok(r) => r??,
            Err(_) => task.abort(),
        }
        Ok(())
    }
}

struct AppState {
    metrics: Arc<dyn Exposition>,
    control: Arc<dyn Control>,
    /// SHA-256 of the token: compared in constant time.
    token: Option<[u8; 32]>,
}

impl HttpError {
    /// As a command's error: exit 2 for a configuration the operator must
    /// change (no token for a non-loopback address, weak token,
    /// unresolvable name), 3 when the address is in use.
    pub fn into_fail(self, listen: &str) -> anyhow::Error {
        match self {
            HttpError::Bind { .. } => crate::store::Fail::failed(self.to_string()),
            HttpError::WeakToken { .. } => {
                crate::store::Fail::invalid(format!("[http] listen = {listen:?}: {self}"))
            }
            _ => crate::store::Fail::invalid(self.to_string()),
        }
    }
}

/// Bind `listen` and serve until `shutdown`. Refuses a non-loopback address
/// without a token, and a token shorter than `MIN_TOKEN_LEN`.
pub async fn serve(
    listen: &str,
    token: Option<String>,
    metrics: Arc<dyn Exposition>,
    control: Arc<dyn Control>,
) -> Result<HttpServer, HttpError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(listen)
        .await
        .map_err(|source| HttpError::Resolve {
            listen: listen.to_string(),
            source,
        })?
        .collect();
    let Some(addr) = addrs.first().copied() else {
        return Err(HttpError::Resolve {
            listen: listen.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
        });
    };
    if let Some(t) = &token
        && t.chars().count() < MIN_TOKEN_LEN
    {
        return Err(HttpError::WeakToken {
            len: t.chars().count(),
        });
    }
    if token.is_none() && !addrs.iter().all(|a| a.ip().is_loopback()) {
        return Err(HttpError::TokenRequired {
            listen: listen.to_string(),
        });
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind {
            listen: listen.to_string(),
            addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| HttpError::Bind {
        listen: listen.to_string(),
        addr,
        source,
    })?;
    let state = Arc::new(AppState {
        metrics,
        control,
        token: token.map(|t| Sha256::digest(t.as_bytes()).into()),
    });
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/status", get(status_handler))
        .route("/pause", post(pause_handler))
        .route("/resume", post(resume_handler))
        .with_state(state);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .await
    });
    tracing::info!(target: "pacer::http", %addr, "serving /metrics, /status, /pause and /resume on http://{addr}");
    Ok(HttpServer { addr, stop, task })
}

/// OpenMetrics for clients that ask for it (Prometheus does), the classic
/// text format for everyone else (curl, promtool).
async fn metrics_handler(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let open = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if open {
        ([(header::CONTENT_TYPE, CONTENT_TYPE)], s.metrics.encode()).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, CLASSIC_CONTENT_TYPE)],
            s.metrics.encode_classic(),
        )
            .into_response()
    }
}

/// `None` when the request may proceed, or the 401 to send.
fn unauthorized(s: &AppState, headers: &HeaderMap) -> Option<Response> {
    let want = s.token?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| <[u8; 32]>::from(Sha256::digest(t.trim().as_bytes())));
    let ok = given.is_some_and(|g| {
        g.iter()
            .zip(want.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    });
    if ok {
        return None;
    }
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(
                json!({"error": format!("missing or wrong bearer token (see {TOKEN_ENV})")}),
            ),
        )
            .into_response(),
    )
}

fn reply(result: anyhow::Result<Value>) -> Response {
    match result {
        Ok(mut v) => {
            redact::json(&mut v);
            axum::Json(v).into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": crate::text::message_line(&redact::error(&e))})),
        )
            .into_response(),
    }
}

async fn status_handler(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    reply(s.control.status().await)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlBody {
    reason: Option<String>,
    by: Option<String>,
}

/// The reason and requester from a JSON body (`{"reason": "...", "by":
/// "..."}`) or the query string (`?reason=...`), or why the request is bad.
fn control_request(
    peer: SocketAddr,
    query: &std::collections::HashMap<String, String>,
    body: &Bytes,
) -> Result<ControlRequest, String> {
    let parsed: ControlBody = if body.iter().all(u8::is_ascii_whitespace) {
        ControlBody::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| format!("body must be JSON like {{\"reason\": \"sale starts\"}}: {e}"))?
    };
    let reason = parsed
        .reason
        .or_else(|| query.get("reason").cloned())
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            "a reason is required: send {\"reason\": \"...\"} or ?reason=...".to_string()
        })?;
    if reason.chars().count() > MAX_REASON {
        return Err(format!("reason is longer than {MAX_REASON} characters"));
    }
    let by = parsed
        .by
        .or_else(|| query.get("by").cloned())
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| format!("api@{}", peer.ip()));
    if by.chars().count() > MAX_BY {
        return Err(format!("by is longer than {MAX_BY} characters"));
    }
    // Newlines and escapes would forge log lines and repaint terminals:
    // they are shown as escapes from here on (logs, store, /status).
    Ok(ControlRequest {
        reason: operator_text(&reason, MAX_REASON),
        by: operator_text(&by, MAX_BY),
    })
}

type QueryMap = Query<std::collections::HashMap<String, String>>;

async fn pause_handler(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): QueryMap,
    body: Bytes,
) -> Response {
    switch(&s, peer, &headers, &q, &body, true).await
}

async fn resume_handler(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): QueryMap,
    body: Bytes,
) -> Response {
    switch(&s, peer, &headers, &q, &body, false).await
}

/// POST /pause and /resume: authorise, parse who and why, flip the switch.
async fn switch(
    s: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    q: &std::collections::HashMap<String, String>,
    body: &Bytes,
    pause: bool,
) -> Response {
    if let Some(r) = unauthorized(s, headers) {
        return r;
    }
    match control_request(peer, q, body) {
        Ok(req) => {
            let what = if pause { "pause" } else { "resume" };
            tracing::info!(target: "pacer::http", by = req.by.as_str(), reason = req.reason.as_str(), "{what} requested over HTTP by {}: {}", req.by, req.reason);
            reply(if pause {
                s.control.pause(req).await
            } else {
                s.control.resume(req).await
            })
        }
        Err(msg) => (StatusCode::BAD_REQUEST, axum::Json(json!({"error": msg}))).into_response(),
    }
}
