//! Any POST handler made idempotent on the `Idempotency-Key` header, by an
//! axum middleware over an embedded node: the first request runs the
//! handler and its response is recorded; a retry (through any node of
//! the cluster) gets the recorded response with `Idempotent-Replayed:
//! true`; the same key with another request body is refused (422); a
//! retry while the first is still running waits for it, then replays.
//!
//! ```sh
//! cargo run --example idempotent_http                 # runs the requests below, checks, exits
//! cargo run --example idempotent_http -- 127.0.0.1:8080   # serves until Ctrl-C
//! curl -si -X POST -H 'Idempotency-Key: order-1' -d '{"amount":10}' localhost:8080/payments
//! ```
//!
//! Server errors (5xx) are not recorded: a retry runs the handler again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use coordmesh::idempotency::IdempotencyError;
use coordmesh::{Config, Mesh};
use serde::{Deserialize, Serialize};

/// Largest request body the middleware reads.
const BODY_MAX: usize = 1 << 20;

/// A response as it is recorded.
#[derive(Serialize, Deserialize)]
struct Recorded {
    status: u16,
    content_type: Option<String>,
    body: String,
}

/// The middleware: requests without the header, or not POST, pass
/// through untouched.
async fn idempotent(State(mesh): State<Mesh>, request: Request, next: Next) -> Response {
    let key = request
        .headers()
        .get("idempotency-key")
        .and_then(|k| k.to_str().ok())
        .map(String::from);
    let (Some(key), &Method::POST) = (key, request.method()) else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let Ok(bytes) = to_bytes(body, BODY_MAX).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
    };
    // The fingerprint: what the request asks, so a key reused for another
    // request is refused rather than answered with the first's response.
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(parts.method.as_str().as_bytes());
    ctx.update(parts.uri.path().as_bytes());
    ctx.update(&bytes);
    let fingerprint: String = ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let request = Request::from_parts(parts, Body::from(bytes));
    let outcome = mesh
        .idempotent(key)
        .fingerprint(fingerprint)
        .wait(Duration::from_secs(10))
        .try_run(|| async move {
            let response = next.run(request).await;
            let status = response.status();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            let body = to_bytes(response.into_body(), BODY_MAX)
                .await
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let recorded = Recorded {
                status: status.as_u16(),
                content_type,
                body,
            };
            // Server errors are not recorded: a retry runs again.
            if status.is_server_error() {
                Err(recorded)
            } else {
                Ok(recorded)
            }
        })
        .await;
    match outcome {
        Ok(outcome) => {
            let replayed = outcome.is_replay();
            let (Ok(r) | Err(r)) = outcome.into_inner();
            let mut response = (
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK),
                r.body,
            )
                .into_response();
            if let Some(ct) = r.content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
                response.headers_mut().insert("content-type", ct);
            }
            if replayed {
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            response
        }
        Err(IdempotencyError::FingerprintMismatch) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "this Idempotency-Key was used with another request",
        )
            .into_response(),
        Err(IdempotencyError::InProgress) => {
            let mut r = (
                StatusCode::CONFLICT,
                "a request with this key is in progress",
            )
                .into_response();
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            r
        }
        Err(e @ (IdempotencyError::NoQuorum | IdempotencyError::ShuttingDown)) => {
            (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

/// The handler made idempotent: it charges, and counts its runs.
async fn pay(State(charges): State<Arc<AtomicU64>>, body: String) -> Response {
    let n = charges.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(200)).await;
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        format!("{{\"charge\":\"ch_{n}\",\"request\":{body}}}"),
    )
        .into_response()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // One node is enough here; a cluster behaves the same, any node
    // replaying what any other recorded.
    let mesh = Mesh::start(Config::new(1, "127.0.0.1:0".parse()?)?).await?;
    mesh.watch_leader().wait_for(|l| l.is_some()).await?;
    let charges = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route("/payments", post(pay))
        .with_state(charges.clone())
        .layer(from_fn_with_state(mesh.clone(), idempotent));
    let serve_on = std::env::args().nth(1);
    let addr = serve_on.as_deref().unwrap_or("127.0.0.1:0");
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    if serve_on.is_some() {
        println!("serving POST http://{addr}/payments; Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
        mesh.shutdown().await;
        return Ok(());
    }
    let post = |key: &'static str, body: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let request = format!(
            "POST /payments HTTP/1.1\r\nhost: {addr}\r\nidempotency-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        anyhow::Ok(answer)
    };
    // Two at once: one runs, the other waits for it and replays.
    let (a, b) = tokio::join!(
        post("order-1", r#"{"amount":10}"#),
        post("order-1", r#"{"amount":10}"#)
    );
    let (a, b) = (a?, b?);
    let again = post("order-1", r#"{"amount":10}"#).await?;
    let other = post("order-1", r#"{"amount":99}"#).await?;
    for (what, answer) in [
        ("first", &a),
        ("concurrent", &b),
        ("retry", &again),
        ("other body", &other),
    ] {
        println!("{what}: {}", answer.lines().next().unwrap_or_default());
    }
    let body = |s: &str| s.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    let replays = [&a, &b, &again]
        .iter()
        .filter(|s| s.contains("idempotent-replayed: true"))
        .count();
    anyhow::ensure!(
        charges.load(Ordering::SeqCst) == 1,
        "the handler ran more than once"
    );
    anyhow::ensure!(
        body(&a) == body(&b) && body(&a) == body(&again),
        "a retry got another response"
    );
    anyhow::ensure!(replays == 2, "{replays} replays, expected 2");
    anyhow::ensure!(
        other.starts_with("HTTP/1.1 422"),
        "another body with the key was not refused"
    );
    println!(
        "the handler ran once; both retries got its response: {}",
        body(&a)
    );
    server.abort();
    mesh.shutdown().await;
    Ok(())
}
