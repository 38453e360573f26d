//! `POST /api/v1.0/enrich/`: our own endpoint. The body is an activity, a group, a feed
//! response, or a JSON array of them; the answer is the same document with its user references
//! replaced, by the same engine and L1 as `enrich run` (`?deep=true` for references at any
//! depth). The document comes back as it went in — no `duration` is added, since an array has
//! no place for one and a feed response has its own.

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;

use super::AppState;
use super::auth::Access;
use super::budget::charged_body;
use super::error::ApiError;
use super::request::{Params, flag, params};
use crate::batch::is_blank;
use crate::page::RawPage;
use crate::shape::Depth;
use crate::sync::Pool;

pub(crate) async fn enrich(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    query: Params,
    doc: Bytes,
) -> Result<Response, ApiError> {
    access.check_read()?;
    let query = params(query)?;
    let depth = if flag(&query, "deep")? {
        Depth::Deep
    } else {
        Depth::TopLevel
    };
    if is_blank(&doc) {
        return Err(ApiError::input(
            "the request body is empty; send an activity, a group, a feed response or an \
             array of them",
        ));
    }
    let limits = &state.limits;
    let mut page = PooledPage::take(&state.pages, depth, doc.len());
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
    // The users and entries read are bounded by the limit too: past it, the distinct ones
    // read so far are already more than an answer may hold, and the rest are never read.
    let enriched = match (state.enricher)
        .enrich_page_within(&page, limits.max_response_bytes)
        .await?
    {
        Ok(enriched) => enriched,
        Err(too_large) => {
            state.metrics.record_enrich(&too_large.stats);
            return Err(ApiError::input(format!(
                "the enriched document would be over the limit of {} bytes per response \
                 (--max-response-bytes): its distinct users and entries alone are {} bytes; \
                 ask for fewer activities at once",
                limits.max_response_bytes, too_large.at_least
            ))
            .by("max_response_bytes"));
        }
    };
    state.metrics.record_enrich(&enriched.stats());
    // Known before a byte of it exists: enrichment multiplies, so the size is checked first.
    let len = enriched.doc_len(0);
    ApiError::check_response(
        "the enriched document",
        len,
        limits.max_response_bytes,
        "ask for fewer activities at once",
    )?;
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

/// A page borrowed from the server's pool of pages, given back (emptied) when dropped: a page
/// keeps its buffers and id table between requests instead of asking the allocator for them
/// each time.
pub(crate) struct PooledPage<'a> {
    page: Option<RawPage>,
    pool: &'a Pool<RawPage>,
}

impl<'a> PooledPage<'a> {
    /// Pages kept at most, and the largest one kept.
    pub(crate) const KEEP: usize = 8;
    const KEEP_BYTES: usize = 256 << 10;

    fn take(pool: &'a Pool<RawPage>, depth: Depth, bytes: usize) -> Self {
        let page = match pool.take() {
            Some(mut page) => {
                page.set_depth(depth);
                page
            }
            None => RawPage::with_capacity(depth, bytes, 1),
        };
        PooledPage {
            page: Some(page),
            pool,
        }
    }
}

impl std::ops::Deref for PooledPage<'_> {
    type Target = RawPage;
    fn deref(&self) -> &RawPage {
        self.page.as_ref().expect("a page until dropped")
    }
}

impl std::ops::DerefMut for PooledPage<'_> {
    fn deref_mut(&mut self) -> &mut RawPage {
        self.page.as_mut().expect("a page until dropped")
    }
}

impl Drop for PooledPage<'_> {
    fn drop(&mut self) {
        let Some(mut page) = self.page.take() else {
            return;
        };
        if page.buffered() > Self::KEEP_BYTES {
            return;
        }
        page.clear();
        self.pool.put(page);
    }
}
