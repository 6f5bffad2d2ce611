//! The agent's HTTP API (see CONTRACT.md): `/v1/status`, `/v1/locks`,
//! `/metrics` and the dashboard page. A thin layer over the [`Mesh`]
//! handle: it owns no state of its own.

pub mod idempotency;
mod locks;

use std::future::Future;
use std::io;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::Serialize;

use crate::ids::{Epoch, Generation};
use crate::mesh::Mesh;
use crate::metrics::render_metric;

/// The `/v1/status` body.
#[derive(Debug, Serialize)]
pub struct StatusBody {
    /// This node.
    pub node_id: u64,
    /// The leader this node knows, if any.
    pub leader: Option<LeaderBody>,
    /// True when this node is, or has heard directly from, a leader with a
    /// valid lease.
    pub quorum: bool,
    /// The highest epoch this node has heard of.
    pub epoch: Epoch,
    /// True while this node is the leader with a valid lease.
    pub is_leader: bool,
    /// True while this voter recovers after its start (E7: it copies the
    /// cluster's state or resumes from its data directory, and fills in
    /// its idempotency records if it lost them): it neither promises nor
    /// acks meanwhile. Stop another voter only once none is recovering.
    pub recovering: bool,
    /// This node's voter set.
    pub voters: Vec<u64>,
    /// This incarnation's generation.
    pub generation: Generation,
    /// Every member this node knows, by id.
    pub members: Vec<MemberBody>,
}

/// A leader and its epoch.
#[derive(Debug, Serialize)]
pub struct LeaderBody {
    /// Leader id.
    pub id: u64,
    /// Its epoch.
    pub epoch: Epoch,
}

/// One member in `/v1/status`.
#[derive(Debug, Serialize)]
pub struct MemberBody {
    /// Node id.
    pub id: u64,
    /// `alive` or `dead`.
    pub state: &'static str,
    /// True when the member left gracefully (its `state` is then `dead`).
    pub left: bool,
    /// Incarnation.
    pub generation: Generation,
    /// Gossip address.
    pub gossip_addr: String,
    /// RPC address.
    pub rpc_addr: String,
    /// HTTP address.
    pub http_addr: String,
    /// In its voter set.
    pub voter: bool,
}

/// Builds the status body from the node's current view.
pub fn status(mesh: &Mesh) -> StatusBody {
    let view = mesh.membership();
    let leader = mesh.leader();
    StatusBody {
        node_id: mesh.id().0,
        leader: leader.map(|l| LeaderBody {
            id: l.id.0,
            epoch: l.epoch,
        }),
        // The known leader is either this node with a valid lease or one
        // heard from directly within the lease.
        quorum: leader.is_some(),
        epoch: mesh.epoch(),
        is_leader: mesh.is_leader(),
        recovering: mesh.is_recovering(),
        voters: mesh.config().voters.iter().map(|v| v.0).collect(),
        generation: mesh.generation(),
        members: view
            .members()
            .map(|m| MemberBody {
                id: m.id.0,
                state: m.state.as_contract_str(),
                left: m.state == crate::MemberState::Left,
                generation: m.generation,
                gossip_addr: m.gossip_addr.to_string(),
                rpc_addr: m.rpc_addr.to_string(),
                http_addr: m.http_addr.to_string(),
                voter: m.voter,
            })
            .collect(),
    }
}

/// The API's routes over a node. When the node's configuration holds an
/// [`HttpToken`](crate::config::HttpToken), every route but the dashboard
/// page (which holds no data; its requests carry the token) answers 401
/// `unauthorized` to a request without `Authorization: Bearer <token>`.
pub fn router(mesh: Mesh) -> Router {
    let access = Access::new(mesh.config().http_token.as_ref());
    Router::new()
        .route("/", get(dashboard))
        .route("/v1/status", get(get_status))
        .route("/metrics", get(get_metrics))
        .route("/v1/locks", get(locks::list))
        .route("/v1/locks/{name}", get(locks::get))
        .route("/v1/locks/{name}/acquire", post(locks::acquire))
        .route("/v1/locks/{name}/renew", post(locks::renew))
        .route("/v1/locks/{name}/release", post(locks::release))
        .route("/v1/idempotency/{key}", get(idempotency::get))
        .route("/v1/idempotency/{key}/begin", post(idempotency::begin))
        .route(
            "/v1/idempotency/{key}/complete",
            post(idempotency::complete).layer(axum::extract::DefaultBodyLimit::max(
                idempotency::BODY_BYTES_MAX,
            )),
        )
        .route("/v1/idempotency/{key}/abort", post(idempotency::abort))
        .route("/v1/idempotency/{key}/renew", post(idempotency::renew))
        .layer(axum::extract::DefaultBodyLimit::max(
            locks::LOCK_BODY_BYTES_MAX,
        ))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(access, authorize))
        .with_state(mesh)
}

/// What the API asks of a caller: nothing, or the bearer token whose
/// SHA-256 digest this is (the digests are compared, in constant time,
/// so neither the token's bytes nor its length show in the timing).
#[derive(Clone)]
struct Access {
    digest: Option<[u8; 32]>,
}

impl Access {
    fn new(token: Option<&crate::config::HttpToken>) -> Access {
        Access {
            digest: token.map(|t| sha256(t.expose().as_bytes())),
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lets a request through when the API is open, it asks for the
/// dashboard page, or it carries the token; otherwise 401.
async fn authorize(
    State(access): State<Access>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(expected) = access.digest else {
        return next.run(request).await;
    };
    if request.uri().path() == "/" {
        return next.run(request).await;
    }
    // RFC 7235: the scheme's name is case-insensitive.
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let refusal = match given {
        None => "this agent requires an Authorization: Bearer <token> header",
        Some(token) => {
            use subtle::ConstantTimeEq;
            if bool::from(sha256(token.as_bytes()).ct_eq(&expected)) {
                return next.run(request).await;
            }
            "the bearer token is not this agent's"
        }
    };
    let mut response = error(StatusCode::UNAUTHORIZED, "unauthorized", refusal);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"coordmesh\""),
    );
    response
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    mesh: Mesh,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, router(mesh))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn get_status(State(mesh): State<Mesh>) -> Json<StatusBody> {
    Json(status(&mesh))
}

async fn get_metrics(State(mesh): State<Mesh>) -> Response {
    let view = mesh.membership();
    let mut out = String::with_capacity(2048);
    render_metric(
        &mut out,
        "coordmesh_members_alive",
        "Members this node sees alive (itself included).",
        "gauge",
        view.alive().count() as u64,
    );
    render_metric(
        &mut out,
        "coordmesh_members_dead",
        "Members this node sees dead or left.",
        "gauge",
        view.not_alive().count() as u64,
    );
    mesh.metrics().render(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// 400 `bad_request`.
fn bad_request(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// 503 `no_quorum`.
fn no_quorum(message: &str) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "no_quorum", message)
}

/// A request's JSON body, or the 400 that says what is wrong with it.
fn body<T>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, Box<Response>> {
    body.map(|Json(b)| b)
        .map_err(|e| Box::new(bad_request(&e.body_text())))
}

/// The contract's error body: `{"error": code, "message": text}`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": code, "message": message})),
    )
        .into_response()
}
