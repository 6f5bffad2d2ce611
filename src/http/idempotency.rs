//! `/v1/idempotency/{key}/…`: the idempotency API of CONTRACT.md. Any
//! agent answers: a replay from its own replica when it holds the
//! committed record, else through the leader over RPC.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::locks::TokenValue;
use super::{bad_request, body, error, no_quorum};
use crate::idempotency::client::{CLAIM_TTL_DEFAULT, RECORD_TTL_DEFAULT};
use crate::idempotency::{Begun, IdempotencyError, Record};
use crate::locks::claim::{RESULT_BYTES_MAX, check_key};
use crate::locks::{LockReply, LockRequest};
use crate::mesh::Mesh;

/// Largest body the idempotency endpoints read: a 64 KiB result and the
/// JSON around it.
pub(super) const BODY_BYTES_MAX: usize = RESULT_BYTES_MAX + 16 * 1024;
/// How long a complete, abort or renew waits for the leader's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// The header a replayed answer carries.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// The begin body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BeginBody {
    fingerprint: String,
    #[serde(default)]
    ttl_ms: Option<u64>,
    #[serde(default)]
    wait_ms: u64,
    #[serde(default)]
    claim_ttl_ms: Option<u64>,
    /// An extension of the contract: a retry of the begin with it gets
    /// the same claim, through any agent.
    #[serde(default)]
    request_id: Option<String>,
}

/// The complete body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CompleteBody {
    claim: TokenValue,
    result: serde_json::Value,
}

/// The abort and renew body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClaimBody {
    claim: TokenValue,
}

fn claim_lost() -> Response {
    error(
        StatusCode::GONE,
        "claim_lost",
        "this claim is no longer the live claim of the key",
    )
}

fn checked(key: &str) -> Result<(), Box<Response>> {
    check_key(key).map_err(|e| Box::new(bad_request(&e)))
}

fn claim_of(value: &TokenValue) -> Result<crate::ids::Token, Box<Response>> {
    value.get().ok_or_else(|| {
        Box::new(bad_request(
            "claim must be a non-negative integer or its decimal string",
        ))
    })
}

/// The stored result as JSON (results are stored as JSON bytes).
fn result_json(record: &Record) -> serde_json::Value {
    serde_json::from_slice(&record.result).unwrap_or_else(|_| {
        // Written by a Rust caller as something other than JSON: shown
        // as text rather than lost.
        serde_json::Value::String(String::from_utf8_lossy(&record.result).into_owned())
    })
}

/// `POST /v1/idempotency/{key}/begin`.
pub(super) async fn begin(
    State(mesh): State<Mesh>,
    Path(key): Path<String>,
    json: Result<Json<BeginBody>, JsonRejection>,
) -> Response {
    if let Err(r) = checked(&key) {
        return *r;
    }
    let b = match body(json) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let mut op = mesh
        .idempotent(key)
        .fingerprint(b.fingerprint.into_bytes())
        .ttl(b.ttl_ms.map_or(RECORD_TTL_DEFAULT, Duration::from_millis))
        .claim_ttl(
            b.claim_ttl_ms
                .map_or(CLAIM_TTL_DEFAULT, Duration::from_millis),
        )
        .wait(Duration::from_millis(b.wait_ms));
    if let Some(id) = b.request_id {
        op = op.request_id(id);
    }
    match op.begin().await {
        Ok(Begun::Claimed {
            claim,
            ttl,
            recovered,
            ..
        }) => Json(json!({
            "state": "acquired",
            "claim": claim,
            "claim_str": claim.to_string(),
            "claim_ttl_ms": ttl.as_millis() as u64,
            "recovered": recovered,
        }))
        .into_response(),
        Ok(Begun::Replay(record)) => {
            let mut response = Json(json!({
                "state": "completed",
                "result": result_json(&record),
                "recovered": record.recovered,
            }))
            .into_response();
            response
                .headers_mut()
                .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
            response
        }
        Err(e) => begin_error(e),
    }
}

fn begin_error(e: IdempotencyError) -> Response {
    match e {
        IdempotencyError::FingerprintMismatch => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "fingerprint_mismatch",
            "this key was used with another request (another fingerprint)",
        ),
        IdempotencyError::InProgress => {
            let mut response = error(
                StatusCode::CONFLICT,
                "in_progress",
                "another request with this key is in progress; retry, or begin with wait_ms",
            );
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            response
        }
        IdempotencyError::NoQuorum => no_quorum("no leader with a quorum answered; retry"),
        IdempotencyError::StoreFull { max } => error(
            StatusCode::INSUFFICIENT_STORAGE,
            "store_full",
            &format!(
                "the cluster keeps as many idempotency keys as it may ({max}); nothing unexpired is evicted, retry once records expire"
            ),
        ),
        IdempotencyError::ClockSkew { offset_ms } => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "clock_skew",
            &format!(
                "this agent's clock is {offset_ms} ms off the leader's; ask another agent, and fix this one's clock"
            ),
        ),
        IdempotencyError::ClockUnknown => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "clock_unknown",
            "this agent has not yet measured its clock against the leader's (it just started, or knows no leader); retry, or ask another agent",
        ),
        IdempotencyError::ShuttingDown => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "this agent is shutting down",
        ),
        // The begin's request id names a claim that has ended.
        IdempotencyError::ClaimLost => error(
            StatusCode::GONE,
            "claim_lost",
            "the claim of this request_id has ended; begin with a new request_id",
        ),
        e @ (IdempotencyError::InvalidKey(_)
        | IdempotencyError::Invalid(_)
        | IdempotencyError::ResultTooLarge { .. }
        | IdempotencyError::Decode(_)) => bad_request(&e.to_string()),
    }
}

/// `POST /v1/idempotency/{key}/complete`: 200 once a majority of voters
/// hold the record.
pub(super) async fn complete(
    State(mesh): State<Mesh>,
    Path(key): Path<String>,
    json: Result<Json<CompleteBody>, JsonRejection>,
) -> Response {
    if let Err(r) = checked(&key) {
        return *r;
    }
    let b = match body(json) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let claim = match claim_of(&b.claim) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let result = match serde_json::to_vec(&b.result) {
        Ok(r) => r,
        Err(e) => return bad_request(&e.to_string()),
    };
    if result.len() > RESULT_BYTES_MAX {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "result_too_large",
            &format!(
                "the result is {} bytes of JSON, above the limit of {RESULT_BYTES_MAX}; nothing was recorded",
                result.len()
            ),
        );
    }
    let request = LockRequest::Complete { key, claim, result };
    match mesh.lock_request(request, ANSWER_TIMEOUT).await {
        Ok(LockReply::Recorded) => Json(json!({})).into_response(),
        Ok(LockReply::Lost) => claim_lost(),
        Ok(LockReply::Invalid(message)) => bad_request(&message),
        _ => no_quorum("no leader with a quorum answered; retry"),
    }
}

/// `POST /v1/idempotency/{key}/abort`: frees the claim, records nothing.
pub(super) async fn abort(
    State(mesh): State<Mesh>,
    Path(key): Path<String>,
    json: Result<Json<ClaimBody>, JsonRejection>,
) -> Response {
    with_claim(mesh, key, json, true).await
}

/// `POST /v1/idempotency/{key}/renew` (an extension of the contract):
/// extends the claim by its TTL from now.
pub(super) async fn renew(
    State(mesh): State<Mesh>,
    Path(key): Path<String>,
    json: Result<Json<ClaimBody>, JsonRejection>,
) -> Response {
    with_claim(mesh, key, json, false).await
}

async fn with_claim(
    mesh: Mesh,
    key: String,
    json: Result<Json<ClaimBody>, JsonRejection>,
    abort: bool,
) -> Response {
    if let Err(r) = checked(&key) {
        return *r;
    }
    let b = match body(json) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let claim = match claim_of(&b.claim) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let request = if abort {
        LockRequest::Abort { key, claim }
    } else {
        LockRequest::RenewClaim { key, claim }
    };
    match mesh.lock_request(request, ANSWER_TIMEOUT).await {
        Ok(LockReply::Released) => Json(json!({})).into_response(),
        Ok(LockReply::Renewed { ttl_ms }) => {
            Json(json!({ "claim_ttl_ms": ttl_ms })).into_response()
        }
        Ok(LockReply::Lost) => claim_lost(),
        Ok(LockReply::Invalid(message)) => bad_request(&message),
        _ => no_quorum("no leader with a quorum answered; retry"),
    }
}

/// `GET /v1/idempotency/{key}`: the committed record in this agent's own
/// replica (I2), or 404.
pub(super) async fn get(State(mesh): State<Mesh>, Path(key): Path<String>) -> Response {
    if let Err(r) = checked(&key) {
        return *r;
    }
    if let Some(offset_ms) = mesh.idempotency_clock_skew() {
        return begin_error(IdempotencyError::ClockSkew { offset_ms });
    }
    if !mesh.idempotency_clock_measured() {
        return begin_error(IdempotencyError::ClockUnknown);
    }
    match mesh.idempotency_record(&key) {
        Some(record) => Json(json!({
            "state": "completed",
            "result": result_json(&record),
            "fingerprint": String::from_utf8_lossy(&record.fingerprint),
            "claim": record.claim,
            "claim_str": record.claim.to_string(),
            "recovered": record.recovered,
            "expires_at_ms": record.expires_at_ms,
        }))
        .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no committed record of this key on this agent",
        ),
    }
}
