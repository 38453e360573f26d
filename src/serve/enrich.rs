//! `POST /api/v1.0/enrich/`: our own endpoint. The body is an activity, a group, a feed
//! response, or a JSON array of them; the answer is the same document with its user references
//! replaced, by the same engine and L1 as `enrich run` (`?deep=true` for references at any
//! depth). The document comes back as it went in — no `duration` is added, since an array has
//! no place for one and a feed response has its own.

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::auth::Access;
use super::error::ApiError;
use super::request::{Params, flag, params, read_body};
use crate::page::Depth;

pub(crate) async fn enrich(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    query: Params,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    access.check_read()?;
    let query = params(query)?;
    let depth = if flag(&query, "deep")? {
        Depth::Deep
    } else {
        Depth::TopLevel
    };
    let doc = read_body(&headers, body).await?;
    let mut out = Vec::with_capacity(doc.len() * 2);
    let stats = state.enricher.enrich_bytes(&doc, depth, &mut out).await?;
    state.metrics.record_enrich(&stats);
    let mut response = (StatusCode::OK, out).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
