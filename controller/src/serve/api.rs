//! The HTTP API: bearer tokens (stored hashed), roles `viewer` and
//! `operator`, every `/v1` call in the audit log, bodies validated and at
//! most [`BODY_LIMIT`] bytes; refusals rate-limited per address
//! ([`super::guard`]).
//!
//! | route | role |
//! |---|---|
//! | `GET /healthz` | none |
//! | `GET /readyz` (the state store answers) | none |
//! | `GET /metrics` | none, or viewer with `serve.metrics_token: true` |
//! | `GET /v1/tenants`, `GET /v1/drills`, `GET /v1/drills/{id}` | viewer |
//! | `POST /v1/drills`, `POST /v1/drills/{id}/approve` | operator |
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::guard::{Guard, Refusal};
use super::metrics as m;
use super::monitor::TenantView;
use super::Tasks;
use crate::config::{ControllerConfig, Role};
use crate::context::Controller;
use crate::drill::report;
use crate::model::Mode;
use crate::runbook;
use crate::state::Store;

#[derive(Clone)]
pub struct Api {
    pub controller: Arc<Controller>,
    pub store: Arc<Mutex<Store>>,
    pub view: Arc<RwLock<Vec<TenantView>>>,
    /// Drills the API starts run in the service's tasks.
    pub tasks: Tasks,
    pub guard: Arc<Guard>,
    /// With a shared state: every replica's view of its tenants.
    pub fleet: Option<Arc<crate::state::fleet::Fleet>>,
}

/// The largest request body read; a larger one is answered 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The client's address, as the listener saw it.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub IpAddr);

/// What a handler knows of a call: for the token, the audit and the limit.
pub struct Call {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    peer: IpAddr,
}

impl<S: Send + Sync> FromRequestParts<S> for Call {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<Peer>>().map(|c| c.0 .0).unwrap_or(IpAddr::from([0, 0, 0, 0]));
        Ok(Call { method: parts.method.clone(), uri: parts.uri.clone(), headers: parts.headers.clone(), peer })
    }
}

/// An error answer: a status and a message, as JSON.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert("www-authenticate", "Bearer".parse().expect("header value"));
        }
        if self.0 == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut().insert("retry-after", super::guard::WINDOW.as_secs().into());
        }
        r
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// A body that is not the JSON expected: 400 with serde's words, or 413.
fn rejected(e: JsonRejection) -> ApiError {
    match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over {BODY_LIMIT} bytes")),
        _ => bad(e.body_text()),
    }
}

/// The token's holder and role; `Err` for no token or an unknown one.
fn authenticate(cfg: &ControllerConfig, headers: &HeaderMap) -> Result<(String, Role), ApiError> {
    let unauthorized = |m: &str| ApiError(StatusCode::UNAUTHORIZED, m.into());
    let value = headers.get("authorization").ok_or_else(|| unauthorized("an `Authorization: Bearer TOKEN` header is required"))?;
    let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).ok_or_else(|| unauthorized("expected `Bearer TOKEN`"))?;
    let hash = blake3::hash(token.trim().as_bytes());
    for t in &cfg.serve.tokens {
        let stored = t.hash.strip_prefix("blake3:").and_then(|h| blake3::Hash::from_hex(h).ok());
        // blake3::Hash compares in constant time
        if stored == Some(hash) {
            return Ok((t.name.clone(), t.role));
        }
    }
    Err(unauthorized("unknown token"))
}

/// The audit line of a call: `GET /v1/drills → 401: unknown token`.
fn audit_line(call: &Call, status: StatusCode, detail: &str) -> String {
    format!(
        "{} {} → {}{}",
        call.method,
        call.uri.path(),
        status.as_u16(),
        if detail.is_empty() { String::new() } else { format!(": {detail}") }
    )
}

impl Api {
    fn audit(&self, who: &str, call: &Call, status: StatusCode, detail: &str) {
        if let Err(e) = self.store().audit(None, &format!("api:{who}"), "api", &audit_line(call, status, detail)) {
            tracing::error!(error = format!("{e:#}"), "Cannot write the audit log");
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks the caller has `role`; refusals go through the guard (audited
    /// in its next batch, or 429 once the address had its share).
    fn allow(&self, call: &Call, role: Role) -> Result<String, ApiError> {
        let (who, e) = match authenticate(&self.controller.config, &call.headers) {
            Ok((who, have)) if have >= role => return Ok(who),
            Ok((who, _)) => {
                let e = ApiError(StatusCode::FORBIDDEN, format!("{who}: this needs the {role:?} role").to_lowercase());
                (who, e)
            }
            Err(e) => ("anonymous".to_string(), e),
        };
        let detail = if e.0 == StatusCode::FORBIDDEN { String::new() } else { e.1.clone() };
        match self.guard.refuse(call.peer, &format!("api:{who}"), audit_line(call, e.0, &detail)) {
            Refusal::Answered => Err(e),
            Refusal::Limited => {
                Err(ApiError(StatusCode::TOO_MANY_REQUESTS, format!("too many refused requests from {}: retry later", call.peer)))
            }
        }
    }
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/tenants", get(tenants))
        .route("/v1/drills", get(list_drills).post(start_drill))
        .route("/v1/drills/{id}", get(get_drill))
        .route("/v1/drills/{id}/approve", post(approve))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(count_requests))
        .with_state(api)
}

async fn count_requests(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = req.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or("unmatched".into());
    let r = next.run(req).await;
    m::API_REQUESTS.with_label_values(&[&route, r.status().as_str()]).inc();
    r
}

async fn metrics(State(api): State<Api>, call: Call) -> Result<Response, ApiError> {
    if api.controller.config.serve.metrics_token {
        api.allow(&call, Role::Viewer)?;
    }
    Ok(([("content-type", "text/plain; version=0.0.4")], m::render()).into_response())
}

async fn tenants(State(api): State<Api>, call: Call) -> Result<Response, ApiError> {
    let who = api.allow(&call, Role::Viewer)?;
    api.audit(&who, &call, StatusCode::OK, "");
    let view = match &api.fleet {
        None => api.view.read().unwrap_or_else(|e| e.into_inner()).clone(),
        // whichever replica watches a tenant, every replica shows it
        Some(f) => f
            .views()
            .map_err(|e| {
                tracing::error!(error = format!("{e:#}"), "Cannot read the tenants' views from the state store");
                ApiError(StatusCode::SERVICE_UNAVAILABLE, "the state store does not answer (see the log)".into())
            })?
            .into_iter()
            .filter_map(|(tenant, v, holder)| match serde_json::from_str::<TenantView>(&v) {
                Ok(view) => Some(view),
                Err(e) => {
                    tracing::warn!(tenant = %tenant, holder = %holder, error = %e, "A tenant's view in the state store does not parse; left out");
                    None
                }
            })
            .collect(),
    };
    Ok(Json(view).into_response())
}

/// Ready when the state store answers (a replica without it can neither
/// hold a tenant nor record a drill).
async fn ready(State(api): State<Api>) -> Response {
    match api.store().audit_head() {
        Ok(_) => "ready\n".into_response(),
        Err(e) => {
            // the details (host, role, certificate) go to the log, not to whoever asks
            tracing::error!(error = format!("{e:#}"), "Not ready: the state store does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "the state store does not answer (see the log)\n").into_response()
        }
    }
}

async fn list_drills(State(api): State<Api>, call: Call) -> Result<Response, ApiError> {
    let who = api.allow(&call, Role::Viewer)?;
    let drills = api.store().drills().map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    let out: Vec<_> = drills
        .iter()
        .map(|d| {
            json!({
                "id": d.id, "runbook": d.runbook, "mode": d.mode, "status": d.status,
                "started_by": d.started_by, "started_at": d.started_at, "finished_at": d.finished_at,
                "rto_seconds": d.measures.rto.map(|v| v.as_secs_f64()), "rpo_seconds": d.measures.rpo.map(|v| v.as_secs_f64()),
            })
        })
        .collect();
    api.audit(&who, &call, StatusCode::OK, "");
    Ok(Json(out).into_response())
}

async fn get_drill(State(api): State<Api>, Path(id): Path<i64>, call: Call) -> Result<Response, ApiError> {
    let who = api.allow(&call, Role::Viewer)?;
    let r = report::build(&api.store(), id).map_err(|e| ApiError(StatusCode::NOT_FOUND, format!("{e:#}")))?;
    api.audit(&who, &call, StatusCode::OK, "");
    Ok(Json(r).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartDrill {
    /// A runbook of `serve.runbooks_dir`, by file name without `.yaml`.
    pub runbook: String,
    #[serde(default = "drill_mode")]
    pub mode: Mode,
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

fn drill_mode() -> Mode {
    Mode::Drill
}

async fn start_drill(State(api): State<Api>, call: Call, body: Result<Json<StartDrill>, JsonRejection>) -> Result<Response, ApiError> {
    let who = api.allow(&call, Role::Operator)?;
    let result = async {
        let Json(req) = body.map_err(rejected)?;
        let id = start(&api, &req, &format!("api:{who}")).await?;
        Ok::<_, ApiError>((id, req.runbook))
    }
    .await;
    match result {
        Ok((id, runbook)) => {
            api.audit(&who, &call, StatusCode::ACCEPTED, &format!("drill {id} of {runbook}"));
            Ok((StatusCode::ACCEPTED, Json(json!({ "id": id, "status": format!("/v1/drills/{id}") }))).into_response())
        }
        Err(e) => {
            api.audit(&who, &call, e.0, &e.1);
            Err(e)
        }
    }
}

/// Validates the request, records the drill and starts it in the background.
async fn start(api: &Api, req: &StartDrill, actor: &str) -> Result<i64, ApiError> {
    let cfg = &api.controller.config;
    let dir = cfg.serve.runbooks_dir.as_ref().ok_or_else(|| bad("serve.runbooks_dir is not set: the API can start no runbook"))?;
    if req.runbook.is_empty() || !req.runbook.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(bad(format!("runbook {:?}: a file name of {} without .yaml (letters, digits, - and _)", req.runbook, dir.display())));
    }
    let file = dir.join(format!("{}.yaml", req.runbook));
    if !file.is_file() {
        return Err(bad(format!("no runbook {:?} in {}", req.runbook, dir.display())));
    }
    let loaded = runbook::load(&file).map_err(|e| bad(e.to_string()))?;
    for (k, v) in &req.vars {
        if loaded.check_var(k).is_err() {
            return Err(bad(format!("vars.{k}: the runbook has no such variable")));
        }
        loaded.check_value(k, v).map_err(|e| bad(format!("vars.{e}")))?;
    }
    // a secret that cannot be resolved is the runbook's, not the caller's: a 400 all the same
    runbook::step::resolve_secrets(&loaded).map_err(|e| bad(format!("{e:#}")))?;
    let vars: Vec<(String, String)> = req.vars.clone().into_iter().collect();
    let started = crate::drill::start(&api.controller, Arc::new(loaded), req.mode, &vars, actor)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    let id = started.id;
    super::schedule::spawn_drill(&api.tasks, started);
    Ok(id)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approve {
    pub step: String,
    #[serde(default)]
    pub reject: bool,
}

async fn approve(
    State(api): State<Api>,
    Path(id): Path<i64>,
    call: Call,
    body: Result<Json<Approve>, JsonRejection>,
) -> Result<Response, ApiError> {
    let who = api.allow(&call, Role::Operator)?;
    let result = (|| {
        let Json(req) = body.map_err(rejected)?;
        let mut store = api.store();
        let d = store.drill(id).map_err(|e| ApiError(StatusCode::NOT_FOUND, format!("{e:#}")))?;
        if d.finished() {
            return Err(ApiError(StatusCode::CONFLICT, format!("drill {id} is over ({})", d.status)));
        }
        let l = runbook::load(std::path::Path::new(&d.runbook_file)).map_err(|e| bad(e.to_string()))?;
        if !l.has_approval(&req.step) {
            return Err(bad(format!("drill {id} has no approval step {:?}", req.step)));
        }
        crate::drill::may_answer(&l, d.mode, &d.started_by, !req.reject, &format!("api:{who}"))
            .map_err(|e| ApiError(StatusCode::FORBIDDEN, e))?;
        let fresh = store
            .answer(id, &req.step, !req.reject, &format!("api:{who}"))
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
        if !fresh {
            return Err(ApiError(StatusCode::CONFLICT, format!("step {} was already answered", req.step)));
        }
        Ok(req)
    })();
    match result {
        Ok(req) => {
            api.audit(&who, &call, StatusCode::OK, &format!("{} {}", req.step, if req.reject { "rejected" } else { "approved" }));
            Ok(Json(json!({ "drill": id, "step": req.step, "approved": !req.reject })).into_response())
        }
        Err(e) => {
            api.audit(&who, &call, e.0, &e.1);
            Err(e)
        }
    }
}
