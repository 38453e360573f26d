//! Any bytes, as a few HTTP requests to `enrich serve`'s app, driven in process
//! (`enrich::serve::app`, built under cargo-fuzz's `--cfg fuzzing`, with
//! `tower::ServiceExt::oneshot`) over a fresh memory store holding users `u0` and `u1`. What the
//! app does not see is not fuzzed here: hyper's parsing of the request head, and the
//! connection limits and clocks of `src/serve/conn.rs`. This target fails when
//!
//! - anything panics;
//! - an answer is a server error (5xx): over a memory store nothing a client sends may be
//!   one;
//! - an answer other than `/metrics`' (and a `HEAD`'s, which has no body) is not JSON sent as
//!   `application/json`, and but for a document the enrich endpoint gives back, a JSON object;
//! - an API answer (under `/api/`) has no `"duration"`, but the enrich endpoint's document,
//!   which comes back as it went in;
//! - an error answer is not Stream's error body, exactly `code`, `detail`, `duration`,
//!   `exception` and `status_code`, the last the answer's status.
//!
//! An input is up to eight requests, each ended by a NUL byte. A request is a byte picking the
//! method, a byte picking the credentials (bits 0-2: none, a server token for everything, a
//! users read token, the user token of `u0`, a collections write token, an expired token, a
//! token signed with another secret, a token that is not a JWT; bit 3: `api_key` added to the
//! query; bit 4: `stream-auth-type: jwt`), then the path and query up to a newline, header
//! lines (`name: value`) up to an empty line, and the body.
#![no_main]

use std::sync::LazyLock;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use enrich::serve::{ServeConfig, app};
use enrich::{Enricher, NewUser, StoreOptions, store};
use http_body_util::BodyExt;
use jsonwebtoken::{EncodingKey, Header, encode};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use tower::ServiceExt;

const KEY: &str = "fuzz-key";
const SECRET: &str = "fuzz-secret";

const METHODS: [Method; 7] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::HEAD,
    Method::OPTIONS,
];

fn sign(claims: &Value, secret: &str) -> String {
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// The tokens a request may carry, by the low three bits of its credentials byte.
static TOKENS: LazyLock<[Option<String>; 8]> = LazyLock::new(|| {
    [
        None,
        Some(sign(
            &json!({"resource": "*", "action": "*", "user_id": "*"}),
            SECRET,
        )),
        Some(sign(
            &json!({"resource": "users", "action": "read"}),
            SECRET,
        )),
        Some(sign(&json!({"user_id": "u0"}), SECRET)),
        Some(sign(
            &json!({"resource": "collections", "action": "write"}),
            SECRET,
        )),
        Some(sign(
            &json!({"resource": "*", "action": "*", "exp": 1}),
            SECRET,
        )),
        Some(sign(
            &json!({"resource": "*", "action": "*"}),
            "another secret",
        )),
        Some("not.a.jwt".into()),
    ]
});

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
});

/// One request of the input, or `None` if its path is no URI.
fn request(chunk: &[u8]) -> Option<Request<Body>> {
    let (&[method, credentials], rest) = chunk.split_first_chunk::<2>()?;
    let (target, rest) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let mut target = target.to_vec();
    if credentials & 8 != 0 {
        let sep = if target.contains(&b'?') { "&" } else { "?" };
        target.extend_from_slice(format!("{sep}api_key={KEY}").as_bytes());
    }
    let uri = Uri::try_from(target).ok()?;
    let mut builder = Request::builder()
        .method(METHODS[usize::from(method) % METHODS.len()].clone())
        .uri(uri);
    if let Some(token) = &TOKENS[usize::from(credentials & 7)] {
        builder = builder.header(header::AUTHORIZATION, token);
    }
    if credentials & 16 != 0 {
        builder = builder.header("stream-auth-type", "jwt");
    }
    // Header lines up to an empty one; the rest is the body.
    let mut rest = rest;
    loop {
        let (line, after) = match rest.iter().position(|&b| b == b'\n') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &[][..]),
        };
        rest = after;
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        builder = builder.header(name, value);
    }
    builder.body(Body::from(rest.to_vec())).ok()
}

fuzz_target!(|data: &[u8]| {
    RT.block_on(async {
        let store = store::open("memory:", &StoreOptions::new()).await.unwrap();
        for id in ["u0", "u1"] {
            let user = NewUser::new(id, Some(json!({"name": id, "friend": "SU:u1"}))).unwrap();
            store.add(&user, false).await.unwrap();
        }
        let app = app(Enricher::new(store), &ServeConfig::new(KEY, SECRET)).unwrap();
        for chunk in data.split(|&b| b == 0).take(8) {
            let Some(request) = request(chunk) else {
                continue;
            };
            let (method, path) = (request.method().clone(), request.uri().path().to_owned());
            let response = app.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            check(&method, &path, status, content_type.as_ref(), &body);
        }
    });
});

fn check(
    method: &Method,
    path: &str,
    status: StatusCode,
    content_type: Option<&HeaderValue>,
    body: &[u8],
) {
    let shown = String::from_utf8_lossy(body);
    assert!(
        !status.is_server_error(),
        "{method} {path}: {status} {shown}"
    );
    if (path == "/metrics" && status == StatusCode::OK)
        || (method == Method::HEAD && body.is_empty())
    {
        return;
    }
    assert_eq!(
        content_type.map(HeaderValue::as_bytes),
        Some(&b"application/json"[..]),
        "{method} {path}: {status} {shown}"
    );
    let value: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{method} {path}: {status}, not JSON ({e}): {shown}"));
    // The enrich endpoint answers the document as it came, with no duration of its own (nor
    // is it always an object: an array of documents comes back an array).
    let enrich = path.trim_end_matches('/') == "/api/v1.0/enrich";
    if enrich && status.is_success() {
        return;
    }
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("{method} {path}: {status}, not an object: {shown}"));
    if path.starts_with("/api/") || status.is_client_error() {
        assert!(
            object
                .get("duration")
                .and_then(Value::as_str)
                .is_some_and(|d| d.ends_with("ms")),
            "{method} {path}: {status}, no duration: {shown}"
        );
    }
    if status.is_client_error() {
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["code", "detail", "duration", "exception", "status_code"],
            "{method} {path}: {shown}"
        );
        assert_eq!(object["status_code"], status.as_u16(), "{shown}");
        assert!(object["code"].is_u64(), "{shown}");
        assert!(object["detail"].is_string(), "{shown}");
        assert!(
            object["exception"]
                .as_str()
                .is_some_and(|e| e.ends_with("Exception")),
            "{shown}"
        );
    }
}
