//! Small blocking JSON-over-HTTP calls to an agent's HTTP API (CONTRACT.md),
//! for the CLI's client commands, the demo, the benchmarks and the
//! multi-process tests. This module owns only the HTTP exchange; what
//! the answers mean is the caller's.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

/// The bearer token every call of this process sends, once set.
static BEARER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes every later call of this process carry `Authorization: Bearer
/// <token>` (the agents' `--http-token-file`). The first token set stays.
pub fn use_bearer_token(token: &crate::config::HttpToken) {
    let _ = BEARER.set(format!("Bearer {}", token.expose()));
}

/// [`use_bearer_token`] with the token in `path` (a client command's
/// `--http-token-file`).
pub fn use_bearer_token_file(path: &std::path::Path) -> Result<(), crate::ConfigError> {
    use_bearer_token(&crate::config::HttpToken::load(path)?);
    Ok(())
}

/// `request` with the process's bearer token, if one is set.
fn authorized<B>(request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
    match BEARER.get() {
        Some(value) => request.header("authorization", value),
        None => request,
    }
}

/// An HTTP client (its connections kept alive) with `timeout` on each
/// step of a call: connecting, sending, awaiting and reading the answer.
/// The address lookup has none: every address here is an IP literal,
/// and ureq looks an address up on a thread of its own whenever a
/// timeout covers the lookup, a thread started and ended per call.
/// `statuses_as_errors`: any status but success is an error.
pub(crate) fn http_client(timeout: Duration, statuses_as_errors: bool) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(timeout))
        .timeout_send_request(Some(timeout))
        .timeout_send_body(Some(timeout))
        .timeout_recv_response(Some(timeout))
        .timeout_recv_body(Some(timeout))
        .http_status_as_error(statuses_as_errors)
        .build()
        .into()
}

/// GETs `path` from an agent's HTTP API and parses the JSON body.
pub fn get_json(http: SocketAddr, path: &str, timeout: Duration) -> Result<Value, String> {
    let mut resp = authorized(http_client(timeout, false).get(format!("http://{http}{path}")))
        .call()
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body: Value = resp.body_mut().read_json().map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("HTTP {status}: {body}"));
    }
    Ok(body)
}

/// POSTs a JSON body to `path` and parses the JSON answer; any status
/// but success is an error.
pub fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &Value,
    timeout: Duration,
) -> Result<Value, String> {
    authorized(http_client(timeout, true).post(format!("http://{addr}{path}")))
        .send_json(body)
        .map_err(|e| e.to_string())?
        .body_mut()
        .read_json()
        .map_err(|e| e.to_string())
}

/// GETs `path` as text.
pub fn get_text(http: SocketAddr, path: &str, timeout: Duration) -> Result<String, String> {
    authorized(http_client(timeout, true).get(format!("http://{http}{path}")))
        .call()
        .map_err(|e| e.to_string())?
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())
}

/// POSTs a JSON body and returns the status with the JSON answer (error
/// statuses included); `Err` only when no answer came.
pub fn post_json_status(
    addr: SocketAddr,
    path: &str,
    body: &Value,
    timeout: Duration,
) -> Result<(u16, Value), String> {
    let mut resp = authorized(http_client(timeout, false).post(format!("http://{addr}{path}")))
        .send_json(body)
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
    Ok((status, body))
}

/// An HTTP answer: its status, its headers (names in lower case) and its
/// JSON body (`Null` if it had none).
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers, by lower-case name.
    pub headers: std::collections::BTreeMap<String, String>,
    /// The JSON body.
    pub body: Value,
}

/// POSTs a JSON body and returns the whole answer (error statuses
/// included); `Err` only when no answer came.
pub fn post_json_reply(
    addr: SocketAddr,
    path: &str,
    body: &Value,
    timeout: Duration,
) -> Result<Reply, String> {
    let mut resp = authorized(http_client(timeout, false).post(format!("http://{addr}{path}")))
        .send_json(body)
        .map_err(|e| e.to_string())?;
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    Ok(Reply {
        status: resp.status().as_u16(),
        headers,
        body: resp.body_mut().read_json().unwrap_or(Value::Null),
    })
}
