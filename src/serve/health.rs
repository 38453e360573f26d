//! `GET /healthz` and `GET /metrics`: for load balancers and Prometheus, no token needed.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::user::UserId;

/// 200 `{"status":"ok","store":…}` when the store answers a read, 503
/// `{"status":"unavailable","store":…,"detail":…}` when it does not.
pub(crate) async fn healthz(State(state): State<AppState>) -> Response {
    let probe = UserId::parse("healthz").expect("a valid id");
    let store = state.users().describe();
    let (status, body) = match state.users().get(&probe).await {
        Ok(_) => (
            StatusCode::OK,
            serde_json::json!({"status": "ok", "store": store}),
        ),
        Err(e) if e.is_not_found() => (
            StatusCode::OK,
            serde_json::json!({"status": "ok", "store": store}),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "unavailable", "store": store, "detail": e.kind().to_string()}),
        ),
    };
    json(status, body.to_string())
}

/// The Prometheus text exposition of [`super::metrics::Metrics`].
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let stats = state.enricher.cache_stats();
    let text = state
        .metrics
        .render(stats.users + stats.misses, stats.bytes);
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn json(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
