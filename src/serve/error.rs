//! Stream's error bodies: every failure of the API is one JSON object,
//! `{"code":…,"detail":…,"duration":…,"exception":…,"status_code":…}`, keys in that order.
//!
//! The official clients pick the exception class from `code` (Python also requires
//! `exception` to be present to treat a 4xx as an error), so all five keys are always there.
//! The body is written by `reply` once the request is done, because `duration` sits in the
//! middle of it: `reply` also says how an error becomes a response.

use axum::http::StatusCode;

use crate::error::{Error, ErrorKind};

/// One error answer of the API.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: u16,
    pub(crate) exception: &'static str,
    pub(crate) detail: String,
    /// The limit that refused the request, for the metrics.
    pub(crate) limit: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, code: u16, exception: &'static str, detail: String) -> Self {
        ApiError {
            status,
            code,
            exception,
            detail,
            limit: None,
        }
    }

    pub(crate) fn by(mut self, limit: &'static str) -> Self {
        self.limit = Some(limit);
        self
    }

    /// 400: the request's input is wrong.
    pub(crate) fn input(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, 4, "InputException", detail.into())
    }

    /// 404: the resource or the route does not exist.
    pub(crate) fn not_found(detail: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            16,
            "DoesNotExistException",
            detail.into(),
        )
    }

    /// 401: no valid API key. Stream's clients map code 2 to `ApiKeyException`.
    pub(crate) fn api_key(detail: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            2,
            "ApiKeyException",
            detail.into(),
        )
    }

    /// 401: the token is missing, malformed, badly signed or expired. Stream answers these
    /// with its NotAllowed code.
    pub(crate) fn unauthenticated(detail: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            17,
            "NotAllowedException",
            detail.into(),
        )
    }

    /// 403: a valid token that does not allow this action.
    pub(crate) fn not_allowed(detail: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::FORBIDDEN,
            17,
            "NotAllowedException",
            detail.into(),
        )
    }

    /// 405: the route exists, the method does not.
    pub(crate) fn method_not_allowed(detail: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            4,
            "MethodNotAllowedException",
            detail.into(),
        )
    }

    /// 413: the body is over the limit.
    pub(crate) fn too_large(limit: usize) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            18,
            "RequestEntityTooLargeException",
            format!("the request body is over the limit of {limit} bytes (--max-body-bytes)"),
        )
        .by("max_body_bytes")
    }

    /// 400: the request asks for more than a limit allows: it holds `count` of `what`, over
    /// `max` per request, the limit named `limit` (its flag is `--` and the name with dashes).
    pub(crate) fn over_limit(limit: &'static str, what: &str, count: u64, max: u64) -> Self {
        ApiError::input(format!(
            "the request holds {count} {what}, over the limit of {max} per request (--{})",
            limit.replace('_', "-")
        ))
        .by(limit)
    }

    /// The same error, its detail followed by `note` in parentheses: what else the caller
    /// should know (what was done before it failed).
    pub(crate) fn noting(mut self, note: &str) -> Self {
        self.detail = format!("{} ({note})", self.detail);
        self
    }

    /// 400 unless an answer of `len` bytes is within `max` (`--max-response-bytes`): `what`
    /// names the answer, `advice` what to do instead.
    pub(crate) fn check_response(
        what: &str,
        len: usize,
        max: usize,
        advice: &str,
    ) -> Result<(), ApiError> {
        if len <= max {
            return Ok(());
        }
        Err(ApiError::response_over(what, "", len, max, advice))
    }

    /// The 400 of an answer over `max` (`--max-response-bytes`): `what` would be `len` bytes,
    /// or `at least` (`"at least "`) that many when it was refused before all of it was read.
    pub(crate) fn response_over(
        what: &str,
        at_least: &str,
        len: usize,
        max: usize,
        advice: &str,
    ) -> Self {
        ApiError::input(format!(
            "{what} would be {at_least}{len} bytes, over the limit of {max} bytes per response \
             (--max-response-bytes); {advice}"
        ))
        .by("max_response_bytes")
    }

    /// 408: the client did not send its body in time.
    pub(crate) fn body_timeout(limit: std::time::Duration) -> Self {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            4,
            "InputException",
            format!(
                "the request body did not arrive within {} s (--body-timeout)",
                limit.as_secs_f64()
            ),
        )
        .by("body_timeout")
    }

    /// 503: the server is at `limit`, a limit of its own, for now.
    pub(crate) fn busy(limit: &'static str, detail: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            1,
            "ServiceUnavailableException",
            detail.into(),
        )
        .by(limit)
    }

    /// 504: the request did not finish in time; a write it made may have been applied.
    pub(crate) fn request_timeout(limit: std::time::Duration) -> Self {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            1,
            "RequestTimeoutException",
            format!(
                "the request did not finish within {} s (--request-timeout); a write it made \
                 may have been applied",
                limit.as_secs_f64()
            ),
        )
        .by("request_timeout")
    }

    /// 500, with a generic detail: what went wrong inside is logged, not shown.
    pub(crate) fn internal() -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            1,
            "InternalServerError",
            "internal error".to_string(),
        )
    }

    /// The status line and body, without the duration.
    pub(crate) fn write_body(&self, duration: &str, out: &mut Vec<u8>) {
        let detail = serde_json::to_string(&self.detail).expect("a string always serializes");
        out.extend_from_slice(
            format!(
                r#"{{"code":{},"detail":{detail},"duration":"{duration}","exception":"{}","status_code":{}}}"#,
                self.code,
                self.exception,
                self.status.as_u16()
            )
            .as_bytes(),
        );
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        match err.kind() {
            ErrorKind::InvalidInput => ApiError::input(err.message()),
            ErrorKind::NotFound => ApiError::not_found(err.message()),
            // The handlers of a user token's writes answer with the token's own words; this
            // is any other refusal of a write made only for an entry's owner.
            ErrorKind::NotOwner => ApiError::not_allowed(err.message()),
            ErrorKind::Conflict => ApiError::new(
                StatusCode::CONFLICT,
                22,
                "ConflictException",
                err.message().into(),
            ),
            // The store's address is fine to show; its causes (connection details) are logged.
            ErrorKind::Unavailable | ErrorKind::Timeout => {
                tracing::warn!("store fault: {err}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    1,
                    "ServiceUnavailableException",
                    format!("the store is unavailable ({})", err.kind()),
                )
            }
            ErrorKind::OutcomeUnknown => {
                tracing::warn!("write of unknown outcome: {err}");
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    1,
                    "WriteOutcomeUnknownException",
                    "the store did not confirm the write in time; it may have been applied: \
                     read the user or entry before retrying"
                        .to_string(),
                )
            }
            ErrorKind::PermissionDenied => {
                tracing::error!("the store refused us: {err}");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    1,
                    "StorePermissionException",
                    "the store refused this server's credentials or command; the write was \
                     not applied (the server's log names the cause)"
                        .to_string(),
                )
            }
            ErrorKind::StoreFull => {
                tracing::error!("the store is full: {err}");
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    1,
                    "StoreFullException",
                    "the store is out of memory or disk; the write was not applied".to_string(),
                )
            }
            _ => {
                tracing::error!("internal error: {err}");
                ApiError::internal()
            }
        }
    }
}
