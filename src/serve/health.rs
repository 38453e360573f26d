//! Probes and metrics, for load balancers, orchestrators and Prometheus; no token needed.
//!
//! - `GET /livez`: the process is up and answering (200 always).
//! - `GET /readyz`: it can serve: the store answers a read and, where the store announces its
//!   writes (Redis), the announcements are heard, so the L1 is in use. 200 or 503, with what
//!   failed.
//! - `GET /healthz`: the same as `/readyz`.
//! - `GET /metrics`: see [`super::metrics`].

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::user::UserId;

/// 200 `{"status":"ok"}` while the process answers.
pub(crate) async fn livez() -> Response {
    json_response(StatusCode::OK, json!({"status": "ok"}).to_string())
}

/// 200 `{"status":"ok","store":…,"invalidations":…}` when the store answers a read and the
/// invalidation stream (if the store has one) is up; 503 with `"status":"unavailable"` and a
/// `detail` naming what is not.
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let probe = UserId::parse("readyz").expect("a valid id");
    let store = state.users().describe();
    let stream = if state.enricher.cache_bypassed() {
        "down"
    } else {
        "up"
    };
    let (status, body) = match state.users().get(&probe).await {
        Err(e) if !e.is_not_found() => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "unavailable", "store": store, "invalidations": stream,
                   "detail": format!("the store does not answer ({})", e.kind())}),
        ),
        _ if stream == "down" => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "unavailable", "store": store, "invalidations": stream,
                   "detail": "the store's announcements of writes are not heard"}),
        ),
        _ => (
            StatusCode::OK,
            json!({"status": "ok", "store": store, "invalidations": stream}),
        ),
    };
    json_response(status, body.to_string())
}

/// The OpenMetrics text exposition of [`super::metrics::Metrics`].
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = (StatusCode::OK, state.metrics.render()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
