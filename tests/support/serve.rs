//! An `enrich serve` of the test's own, in process on port 0, and the checks of Stream's
//! answers that every test of the HTTP API makes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use enrich::serve::{ServeConfig, serve};
use enrich::{Enricher, StoreOptions, store};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The API key the test servers take.
pub const KEY: &str = "test-key";
/// The secret the test servers check tokens with.
pub const SECRET: &str = "test-secret";

/// A running server and a client for it, with a server token of its own.
pub struct Server {
    pub base: String,
    pub client: reqwest::Client,
    /// What [`Server::api`] and [`Server::call`] send: a users server token unless
    /// [`Server::signed`] says otherwise.
    pub token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// A server over the store at `url` with the default configuration.
    pub async fn start(url: &str) -> Server {
        let store = store::open(url, &StoreOptions::new().namespace("serve-test"))
            .await
            .expect("open the store");
        Server::start_with(store, ServeConfig::new(KEY, SECRET)).await
    }

    /// A server over the store at `url` within `limits`.
    pub async fn start_limited(url: &str, limits: enrich::serve::Limits) -> Server {
        let store = store::open(url, &StoreOptions::new().namespace("serve-test"))
            .await
            .expect("open the store");
        Server::start_with(store, ServeConfig::new(KEY, SECRET).limits(limits)).await
    }

    /// A server over `store` with `config`, once its L1 is in use (the store's announcements
    /// are heard).
    pub async fn start_with(store: enrich::SharedStore, config: ServeConfig) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let enricher = Enricher::new(config.instrument(store));
        assert!(enricher.wait_for_cache(Duration::from_secs(5)).await);
        let task = tokio::spawn(serve(listener, enricher, config, async move {
            let _ = stopped.await;
        }));
        Server {
            base,
            client: reqwest::Client::new(),
            token: sign(
                &json!({"resource": "users", "action": "*", "feed_id": "*"}),
                SECRET,
            ),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The server with `claims` signed as the token its calls send.
    pub fn signed(mut self, claims: &Value) -> Server {
        self.token = sign(claims, SECRET);
        self
    }

    /// A request as Stream's clients send it: api_key, the token, stream-auth-type.
    pub fn api(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.as_token(method, path, &self.token)
    }

    /// [`Server::api`] with `token` instead of the server's.
    pub fn as_token(&self, method: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        let sep = if path.contains('?') { '&' } else { '?' };
        self.client
            .request(method, format!("{}{path}{sep}api_key={KEY}", self.base))
            .header("Authorization", token)
            .header("stream-auth-type", "jwt")
    }

    /// Sends `body` to `path` as [`Server::api`] does; the status and the body of the answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, String) {
        self.call_as(&self.token, method, path, body).await
    }

    /// [`Server::call`] with `token` instead of the server's.
    pub async fn call_as(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, String) {
        text(
            self.as_token(method, path, token)
                .body(body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// The text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let resp = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.text().await.unwrap()
    }

    /// Shuts the server down and waits for it to finish.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// A token of `claims` signed with `secret` (HS256, as Stream's clients sign).
pub fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Seconds since the epoch, for `exp` and `nbf` claims.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The status and the body of `resp`.
pub async fn text(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    (status, resp.text().await.unwrap())
}

/// Splits `{…,"duration":"1.23ms"}` into the object without it, checking the format and that
/// it is last.
pub fn strip_duration(body: &str) -> String {
    let at = body
        .rfind(r#","duration":""#)
        .or_else(|| body.rfind(r#""duration":""#))
        .unwrap_or_else(|| panic!("no duration in {body}"));
    let tail = &body[at..];
    let value = tail
        .trim_start_matches(',')
        .trim_start_matches(r#""duration":""#)
        .trim_end_matches("\"}");
    let ms = value.strip_suffix("ms").unwrap_or_else(|| panic!("{body}"));
    let (whole, frac) = ms.split_once('.').unwrap_or_else(|| panic!("{body}"));
    assert!(whole.parse::<u64>().is_ok() && frac.len() == 2, "{body}");
    assert!(tail.ends_with("ms\"}"), "duration is not last: {body}");
    let mut rest = body[..at].to_string();
    rest.push('}');
    rest
}

/// The keys of a JSON object, in their order.
pub fn keys(object: &Value) -> Vec<&str> {
    object
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {object}"))
        .keys()
        .map(|k| k.as_str())
        .collect()
}

/// Checks a Stream error body: the five keys in order, and what they say; answers the detail.
pub fn assert_error(
    status: StatusCode,
    body: &str,
    want: u16,
    code: u64,
    exception: &str,
) -> String {
    assert_eq!(status.as_u16(), want, "{body}");
    let value: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(
        keys(&value),
        ["code", "detail", "duration", "exception", "status_code"],
        "{body}"
    );
    assert_eq!(value["code"], code, "{body}");
    assert_eq!(value["exception"], exception, "{body}");
    assert_eq!(value["status_code"], want, "{body}");
    value["detail"].as_str().unwrap().to_string()
}
