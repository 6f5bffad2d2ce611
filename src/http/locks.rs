//! `/v1/locks/{name}/…`: the lock API of CONTRACT.md. Any agent answers;
//! requests travel to the leader over RPC.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{bad_request, body, error};
use crate::ids::Token;
use crate::locks::{LockError, LockReply, LockRequest, check_name};
use crate::mesh::Mesh;

/// Largest body the lock endpoints read.
pub(super) const LOCK_BODY_BYTES_MAX: usize = 16 * 1024;
/// How long a renew, release or status waits for the leader's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// A token as a JSON number or a decimal string (2^53 and above lose
/// precision as JSON numbers in many clients).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum TokenValue {
    Number(u64),
    Text(String),
}

impl TokenValue {
    pub(super) fn get(&self) -> Option<Token> {
        match self {
            TokenValue::Number(n) => Some(Token(*n)),
            TokenValue::Text(s) => s.trim().parse().ok().map(Token),
        }
    }
}

/// The acquire body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AcquireBody {
    ttl_ms: u64,
    #[serde(default)]
    wait_ms: u64,
    #[serde(default)]
    request_id: Option<String>,
}

/// The renew and release body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenBody {
    token: TokenValue,
}

/// The 503 of a lock request.
fn no_quorum() -> Response {
    super::no_quorum("no leader with a quorum answered; retry (a held lock is kept)")
}

fn lost() -> Response {
    error(
        StatusCode::GONE,
        "lock_lost",
        "this token does not hold the lock",
    )
}

fn checked_name(name: &str) -> Result<(), Box<Response>> {
    check_name(name).map_err(|e| Box::new(bad_request(&e.to_string())))
}

/// `POST /v1/locks/{name}/acquire`.
pub(super) async fn acquire(
    State(mesh): State<Mesh>,
    Path(name): Path<String>,
    json: Result<Json<AcquireBody>, JsonRejection>,
) -> Response {
    let b = match body(json) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let mut builder = mesh
        .lock(name.clone())
        .ttl(Duration::from_millis(b.ttl_ms))
        .wait(Duration::from_millis(b.wait_ms));
    if let Some(id) = b.request_id {
        builder = builder.request_id(id);
    }
    match builder.acquire_token().await {
        Ok(grant) => {
            let ttl_ms = grant.ttl.as_millis() as u64;
            Json(json!({
                "name": name,
                "token": grant.token,
                "token_str": grant.token.to_string(),
                "ttl_ms": ttl_ms,
            }))
            .into_response()
        }
        Err(LockError::Held(_)) => error(
            StatusCode::CONFLICT,
            "lock_held",
            "another client held the lock for the whole wait",
        ),
        Err(LockError::NoQuorum) => no_quorum(),
        Err(LockError::QueueFull { max }) => error(
            StatusCode::TOO_MANY_REQUESTS,
            "queue_full",
            &format!("the lock's queue is full ({max} waiters)"),
        ),
        Err(e @ (LockError::InvalidName(_) | LockError::InvalidTtl(_))) => {
            bad_request(&e.to_string())
        }
        Err(LockError::ShuttingDown) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "this agent is shutting down",
        ),
        // K4: this request id's grant was released or expired already.
        Err(LockError::Lost) => error(
            StatusCode::GONE,
            "lock_lost",
            "the grant of this request_id has ended (released or expired); acquire with a new request_id",
        ),
    }
}

/// `POST /v1/locks/{name}/renew` and `/release`.
async fn with_token(
    mesh: Mesh,
    name: String,
    json: Result<Json<TokenBody>, JsonRejection>,
    release: bool,
) -> Response {
    if let Err(r) = checked_name(&name) {
        return *r;
    }
    let b = match body(json) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let Some(token) = b.token.get() else {
        return bad_request("token must be a non-negative integer or its decimal string");
    };
    let request = if release {
        LockRequest::Release { name, token }
    } else {
        LockRequest::Renew { name, token }
    };
    match mesh.lock_request(request, ANSWER_TIMEOUT).await {
        Ok(LockReply::Renewed { ttl_ms }) => Json(json!({ "ttl_ms": ttl_ms })).into_response(),
        Ok(LockReply::Released) => Json(json!({})).into_response(),
        // K6: "lost" only when the leader knows the token does not hold.
        Ok(LockReply::Lost) => lost(),
        Ok(LockReply::Invalid(message)) => bad_request(&message),
        _ => no_quorum(),
    }
}

pub(super) async fn renew(
    State(mesh): State<Mesh>,
    Path(name): Path<String>,
    json: Result<Json<TokenBody>, JsonRejection>,
) -> Response {
    with_token(mesh, name, json, false).await
}

pub(super) async fn release(
    State(mesh): State<Mesh>,
    Path(name): Path<String>,
    json: Result<Json<TokenBody>, JsonRejection>,
) -> Response {
    with_token(mesh, name, json, true).await
}

/// Most locks `GET /v1/locks` lists.
const LIST_MAX: u32 = 1000;

/// `GET /v1/locks` (an extension of the contract, answered by the
/// leader): the locks held, by name, at most 1,000.
pub(super) async fn list(State(mesh): State<Mesh>) -> Response {
    match mesh
        .lock_request(LockRequest::List { limit: LIST_MAX }, ANSWER_TIMEOUT)
        .await
    {
        Ok(LockReply::Locks { locks, truncated }) => {
            let locks: Vec<_> = locks
                .into_iter()
                .map(|l| {
                    json!({
                        "name": l.name,
                        "token": l.token,
                        "token_str": l.token.to_string(),
                        "expires_in_ms": l.expires_in_ms,
                        "owner": l.owner.0,
                        "waiters": l.waiters,
                    })
                })
                .collect();
            Json(json!({ "locks": locks, "truncated": truncated })).into_response()
        }
        _ => no_quorum(),
    }
}

/// `GET /v1/locks/{name}` (answered by the leader).
pub(super) async fn get(State(mesh): State<Mesh>, Path(name): Path<String>) -> Response {
    if let Err(r) = checked_name(&name) {
        return *r;
    }
    match mesh
        .lock_request(LockRequest::Status { name }, ANSWER_TIMEOUT)
        .await
    {
        Ok(LockReply::Status {
            token: Some(token),
            expires_in_ms,
            owner,
        }) => Json(json!({
            "held": true,
            "token": token,
            "token_str": token.to_string(),
            "expires_in_ms": expires_in_ms,
            "owner": owner.map(|o| o.0),
        }))
        .into_response(),
        Ok(LockReply::Status { token: None, .. }) => Json(json!({ "held": false })).into_response(),
        Ok(LockReply::Invalid(message)) => bad_request(&message),
        _ => no_quorum(),
    }
}
