//! Answers that carry Stream's `"duration"`, written when the request is done.
//!
//! A handler answers with a [`Pending`] body; the [`finish`] middleware, which saw the request
//! arrive, measures the duration, writes the body (spliced after the last key of an object,
//! or in its alphabetical place in an error) and records the request in the metrics. A user
//! object is never re-encoded: its stored bytes go out with `,"duration":"…"` before the final
//! `}`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::AppState;
use super::budget::{Budget, Charge, charged_body};
use super::error::ApiError;
use super::request::{Unread, declared_len, read_body};

/// A body waiting for its duration.
#[derive(Debug, Clone)]
pub(crate) enum Pending {
    /// A JSON object; `"duration"` becomes its last key. It may hold the charge its handler
    /// took for it.
    Object(StatusCode, Bytes, Held),
    /// An error; `"duration"` takes its place among the sorted keys.
    Error(ApiError),
}

impl Pending {
    /// A JSON object answered with `status`.
    pub(crate) fn object(status: StatusCode, json: impl Into<Bytes>) -> Pending {
        Pending::Object(status, json.into(), Held::default())
    }

    /// A JSON object answered with `status`, for which `charge` was taken before it was built:
    /// `finish` sends it under that charge instead of charging it again.
    pub(crate) fn charged(status: StatusCode, json: impl Into<Bytes>, charge: Charge) -> Pending {
        Pending::Object(
            status,
            json.into(),
            Held(Some(Arc::new(Mutex::new(Some(charge))))),
        )
    }

    /// The charge its handler took, once.
    fn take_charge(&self) -> Option<Charge> {
        match self {
            Pending::Object(_, _, Held(Some(held))) => {
                held.lock().unwrap_or_else(|e| e.into_inner()).take()
            }
            _ => None,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Pending::Object(status, ..) => *status,
            Pending::Error(err) => err.status,
        }
    }

    fn write(&self, duration: &str, out: &mut Vec<u8>) {
        match self {
            Pending::Object(_, json, _) => splice_duration(json, duration, out),
            Pending::Error(err) => err.write_body(duration, out),
        }
    }
}

/// A charge carried from a handler to [`finish`] (shared because response extensions are
/// cloneable; taken once).
#[derive(Debug, Clone, Default)]
pub(crate) struct Held(Option<Arc<Mutex<Option<Charge>>>>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        Pending::Error(self).into_response()
    }
}

impl IntoResponse for Pending {
    fn into_response(self) -> Response {
        let mut response = self.status().into_response();
        response.extensions_mut().insert(self);
        response
    }
}

/// Appends the JSON array of `items`, each already JSON (stored bytes go out as they are).
pub(crate) fn push_array<'a>(out: &mut Vec<u8>, items: impl IntoIterator<Item = &'a [u8]>) {
    out.push(b'[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.push(b']');
}

/// The length of the JSON array [`push_array`] writes of items of these lengths.
pub(crate) fn array_len(items: impl Iterator<Item = usize>) -> usize {
    let (count, bytes) = items.fold((0usize, 0usize), |(n, sum), len| (n + 1, sum + len));
    2 + bytes + count.saturating_sub(1)
}

/// The records named by `keys` that exist, in order, for an answer listing them as one JSON
/// array (with `around` bytes of its own) that may be at most `max` bytes: read in waves, each
/// of as many keys as what is left of `max` affords were every record `largest` bytes, so a
/// request whose answer would be over the limit reads at most the limit and one record before
/// it is refused, not every record it names. A list that fits in one wave (at the default
/// 16 MiB, about 1,600 users or 300 entries) is one store read. A store fault is an error,
/// never a record left out. With the records, the answer's length (`around` included). Over
/// the limit: the 400 of [`ApiError::response_over`], with what the records read so far add up
/// to ("at least" when some were not read).
///
/// Before a record is read, `budget` is charged twice the most they may be (the records and
/// the answer copied from them are both held for a moment): a busy server answers 503 instead
/// of holding one more answer's records outside the budget while it waits for room. The charge
/// comes back with the records, for the caller to [`Charge::keep`] the answer's size of.
pub(crate) async fn read_listed<'k, K, T, Read, Fut>(
    budget: &Budget,
    keys: &'k [K],
    read: Read,
    size: impl Fn(&T) -> usize,
    (around, max, largest): (usize, usize, usize),
    (what, advice): (&str, &str),
) -> Result<(Vec<T>, usize, Charge), ApiError>
where
    Read: Fn(&'k [K]) -> Fut,
    Fut: std::future::Future<Output = Vec<crate::error::Result<Option<T>>>>,
{
    // The reading stops past `max` by at most one wave: records of `largest` bytes each.
    let most = (keys.len().saturating_mul(largest + 1)).min(max + largest) + around + 2;
    let charge = budget.charge(most.saturating_mul(2)).await?;
    let mut found = Vec::new();
    // The answer with the records found so far: `[]` and the commas between them.
    let mut len = around + 2;
    let mut rest = keys;
    while !rest.is_empty() {
        let wave = (max.saturating_sub(len) / (largest + 1)).clamp(1, rest.len());
        let (now, later) = rest.split_at(wave);
        for record in read(now).await {
            if let Some(record) = record? {
                len += size(&record) + usize::from(!found.is_empty());
                found.push(record);
            }
        }
        if len > max {
            let at_least = if later.is_empty() { "" } else { "at least " };
            return Err(ApiError::response_over(what, at_least, len, max, advice));
        }
        rest = later;
    }
    Ok((found, len, charge))
}

/// Appends `json` (an object) with `"duration":"…"` as its last key.
pub(crate) fn splice_duration(json: &[u8], duration: &str, out: &mut Vec<u8>) {
    let body = json.trim_ascii_end();
    let Some(open) = body.strip_suffix(b"}") else {
        out.extend_from_slice(json);
        return;
    };
    out.extend_from_slice(open);
    if open.trim_ascii() != b"{" {
        out.push(b',');
    }
    out.extend_from_slice(br#""duration":""#);
    out.extend_from_slice(duration.as_bytes());
    out.extend_from_slice(b"\"}");
}

/// Stream's duration format: milliseconds with two decimals, `"1.23ms"`.
pub(crate) fn format_duration(started: Instant) -> String {
    format!("{:.2}ms", started.elapsed().as_secs_f64() * 1000.0)
}

/// Times every request, writes pending bodies and records the request in the metrics.
pub(crate) async fn finish(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let _in_flight = state.metrics.request_started();
    let method = request.method().clone();
    let route = route_label(
        request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    // A body is read whole here, before the handler sees the request, so that every answer
    // leaves the connection ready for the client's next request. It is kept only for a
    // request that needs it and may send it: one to the API whose key and token pass. Any
    // other body (a refused token, an unknown route, a probe's) is dropped as it comes, for a
    // moment at most, costing no memory, no share of the budget and no long wait: a client
    // without credentials cannot hold the budget, nor connections for long, with bodies it
    // never finishes sending.
    let (parts, body) = request.into_parts();
    let fate = if http_body::Body::is_end_stream(&body) {
        Fate::Empty
    } else if !route.starts_with("/api/") {
        Fate::Dropped(None)
    } else {
        match super::auth::check(&state, &parts.uri, &parts.headers) {
            Ok(access) => Fate::Read(access),
            Err(refused) => Fate::Dropped(Some(refused)),
        }
    };
    let limit = state.limits.request_timeout;
    let run = async |request| match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::request_timeout(limit).into_response(),
    };
    let declared = declared_len(&parts.headers);
    // A client waiting for `100 Continue` sends no body unless it is read.
    let continues = parts.headers.get(header::EXPECT).is_some();
    let max_body_bytes = state.limits.max_body_bytes;
    // Held until the answer is built: the handler's page stands in for the body.
    let (mut response, _body_charge) = match fate {
        Fate::Empty => {
            let request = Request::from_parts(parts, Body::empty());
            (run(request).await, Charge::free())
        }
        Fate::Read(access) => match read_body(&state, declared, continues, body).await {
            Ok((bytes, charge)) => {
                let mut request = Request::from_parts(parts, Body::from(bytes));
                // Checked once: the API's auth layer takes it as it is.
                request.extensions_mut().insert(access);
                (run(request).await, charge)
            }
            Err(Unread { error, rest }) => {
                let drained = match rest {
                    Some(rest) => drain(rest, declared, max_body_bytes).await,
                    None => false,
                };
                let response = error.into_response();
                let response = if drained { response } else { closing(response) };
                (response, Charge::free())
            }
        },
        Fate::Dropped(refused) => {
            let response = match refused {
                Some(refused) => refused.into_response(),
                // Answered as without a body, which none of these routes reads.
                None => run(Request::from_parts(parts, Body::empty())).await,
            };
            // A client waiting for `100 Continue` sends no body; one that sends its body
            // right after its headers (Python's requests) keeps a usable connection.
            let drained = !continues && drain(body, declared, max_body_bytes).await;
            let response = if drained { response } else { closing(response) };
            (response, Charge::free())
        }
    };
    if let Some(mut pending) = response.extensions_mut().remove::<Pending>() {
        let mut body = Vec::with_capacity(256);
        pending.write(&format_duration(started), &mut body);
        // A read's answer waits for room in the budget like any other; a write's answer is
        // sent whatever the budget says (refusing it now would hide that the write was made),
        // and its size was held to the response limit before the write was made.
        let charge = if let Some(charge) = pending.take_charge() {
            charge
        } else if method == axum::http::Method::GET {
            match state.budget.charge(body.len()).await {
                Ok(charge) => charge,
                Err(busy) => {
                    pending = Pending::Error(busy);
                    body.clear();
                    pending.write(&format_duration(started), &mut body);
                    *response.status_mut() = pending.status();
                    Charge::free()
                }
            }
        } else {
            Charge::free()
        };
        if let Pending::Error(ApiError {
            limit: Some(limit), ..
        }) = &pending
        {
            state.metrics.record_refusal(limit);
        }
        *response.body_mut() = charged_body(body.into(), charge);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response.headers_mut().remove(header::CONTENT_LENGTH);
    }
    let took = started.elapsed();
    state
        .metrics
        .record_request(route, &method, response.status(), took);
    tracing::info!(
        target: "enrich::access",
        method = %method,
        route,
        status = response.status().as_u16(),
        ms = (took.as_secs_f64() * 100_000.0).round() / 100.0,
        bytes = http_body::Body::size_hint(response.body()).exact(),
    );
    response
}

/// What becomes of a request's body.
enum Fate {
    /// It has none.
    Empty,
    /// It is read whole for the handler, the request's credentials having passed as this.
    Read(super::auth::Access),
    /// It is read and dropped, for a moment at most: the request is answered without it,
    /// refused (its key or token) or at a route that takes no body.
    Dropped(Option<ApiError>),
}

/// How long a body no one reads (or one refused) is waited for, to be dropped, before its
/// connection is closed with the answer.
const DROP_WITHIN: std::time::Duration = std::time::Duration::from_millis(250);

/// Reads and drops the rest of a body no one reads (a refused request's, or one over the limit),
/// so that a client still sending it reads the answer rather than a connection reset under it
/// (Go's client, which sends a body whole without waiting, then sees a broken pipe); true if it
/// ended, and the connection may carry the next request. Up to 16 times `--max-body-bytes`,
/// for [`DROP_WITHIN`] at most; a body declared longer is not waited for.
async fn drain(rest: Body, declared: Option<u64>, max_body_bytes: usize) -> bool {
    let most = max_body_bytes.saturating_mul(16);
    if declared.is_some_and(|len| len > most as u64) {
        return false;
    }
    drop_body(rest, most, DROP_WITHIN).await
}

/// Reads and drops `body`, up to `max` bytes, for `within` at most; true if it ended in time.
async fn drop_body(body: Body, max: usize, within: std::time::Duration) -> bool {
    let read = http_body_util::Limited::new(body, max);
    let dropped = async {
        let mut read = std::pin::pin!(read);
        while let Some(frame) =
            std::future::poll_fn(|cx| http_body::Body::poll_frame(read.as_mut(), cx)).await
        {
            if frame.is_err() {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(within, dropped).await.unwrap_or(false)
}

/// `response`, ending its connection: the rest of the request's body may still be on its way.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The route a request matched, as a label: its template without the trailing slash, from a
/// fixed set whatever the path was.
fn route_label(matched: Option<&str>) -> &'static str {
    let Some(matched) = matched else {
        return "unmatched";
    };
    match matched.trim_end_matches('/') {
        "/api/v1.0/user" => "/api/v1.0/user",
        "/api/v1.0/user/{id}" => "/api/v1.0/user/{id}",
        "/api/v1.0/users" => "/api/v1.0/users",
        "/api/v1.0/collections" => "/api/v1.0/collections",
        "/api/v1.0/collections/{collection}" => "/api/v1.0/collections/{collection}",
        "/api/v1.0/collections/{collection}/{id}" => "/api/v1.0/collections/{collection}/{id}",
        "/api/v1.0/meta" => "/api/v1.0/meta",
        "/api/v1.0/enrich" => "/api/v1.0/enrich",
        "/healthz" => "/healthz",
        "/livez" => "/livez",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spliced(json: &str) -> String {
        let mut out = Vec::new();
        splice_duration(json.as_bytes(), "1.00ms", &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn duration_goes_last() {
        assert_eq!(
            spliced(r#"{"id":"a"}"#),
            r#"{"id":"a","duration":"1.00ms"}"#
        );
        assert_eq!(spliced("{}"), r#"{"duration":"1.00ms"}"#);
        assert_eq!(spliced("{ }\n"), r#"{ "duration":"1.00ms"}"#);
    }

    #[test]
    fn routes_lose_their_trailing_slash() {
        let label = |path: &str| route_label(Some(path));
        assert_eq!(label("/api/v1.0/user/{id}/"), "/api/v1.0/user/{id}");
        assert_eq!(label("/api/v1.0/user/{id}"), "/api/v1.0/user/{id}");
        assert_eq!(route_label(None), "unmatched");
        assert_eq!(
            label("/api/v1.0/collections/{collection}/{id}/"),
            "/api/v1.0/collections/{collection}/{id}"
        );
        assert_eq!(label("/api/v1.0/meta/"), "/api/v1.0/meta");
    }
}
