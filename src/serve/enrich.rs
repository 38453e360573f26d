//! `POST /api/v1.0/enrich/`: our own endpoint. The body is an activity, a group, a feed
//! response, or a JSON array of them; the answer is the same document with its user references
//! replaced, by the same engine and L1 as `enrich run` (`?deep=true` for references at any
//! depth). The document comes back as it went in — no `duration` is added, since an array has
//! no place for one and a feed response has its own.

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;

use super::AppState;
use super::auth::Access;
use super::budget::charged_body;
use super::error::ApiError;
use super::request::{Params, flag, params, read_body};
use crate::page::{Depth, RawPage};

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
    let limits = &state.limits;
    // The body's charge stands for the page from here on: the page holds at most its bytes.
    let (doc, _page_charge) = read_body(&state, &headers, body).await?;
    let mut page = RawPage::with_capacity(depth, doc.len(), 1);
    page.push_any(&doc)?;
    drop(doc);
    if page.activities() > limits.max_activities {
        return Err(ApiError::over_limit(
            "max_activities",
            "activities",
            page.activities(),
            limits.max_activities,
        ));
    }
    if page.references() > limits.max_references {
        return Err(ApiError::over_limit(
            "max_references",
            "references",
            page.references(),
            limits.max_references,
        ));
    }
    let enriched = state.enricher.enrich_page(&page).await?;
    state.metrics.record_enrich(&enriched.stats());
    // Known before a byte of it exists: enrichment multiplies, so the size is checked first.
    let len = enriched.doc_len(0);
    if len > limits.max_response_bytes {
        return Err(ApiError::input(format!(
            "the enriched document would be {len} bytes, over the limit of {} bytes per \
             response (--max-response-bytes); ask for fewer activities at once",
            limits.max_response_bytes
        ))
        .by("max_response_bytes"));
    }
    let charge = state.budget.charge(len).await?;
    let mut out = Vec::with_capacity(len);
    enriched.write(0, &mut out);
    let mut response = Response::new(charged_body(out.into(), charge));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
