//! `enrich serve`: a Stream-compatible HTTP API over the same store and engine as the CLI.
//!
//! Stream's official server-side clients, unmodified, can be pointed at it: the users API
//! (`/api/v1.0/user/…`, `/api/v1.0/users/`) and the collections API
//! (`/api/v1.0/collections/…`, PHP's `/api/v1.0/meta/`) answer with Stream's bodies, status
//! codes and errors, and `POST /api/v1.0/enrich/` enriches documents sent to it.
//!
//! # Layout
//!
//! A request passes through these files in order:
//!
//! - [`serve`] (here): builds the router and hands it to `conn`, which accepts connections on a
//!   bound listener and keeps each within its [`Limits`] of count and time until the shutdown
//!   future resolves, letting requests in progress finish.
//! - `reply`: the outermost middleware; starts the clock, and once the handler is done
//!   writes Stream's `"duration"` into the body and records the request in `metrics`.
//! - `auth`: the API key and the JWT; decides what the token may do.
//! - `request`: bodies within their limits of size and time, JSON and query parameters;
//!   `budget`: the bytes all requests and responses may hold at once.
//! - `users`, `collections` and `enrich`: the handlers. `health`: `/livez`, `/readyz` (and `/healthz`, the
//!   same) and `/metrics`, kept by `metrics`.
//! - `error`: Stream's error bodies and how an [`crate::Error`] maps to one.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use enrich::serve::{ServeConfig, serve};
//! use enrich::{Enricher, StoreOptions, store};
//!
//! let store = store::open("memory:", &StoreOptions::new()).await.expect("memory store");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let config = ServeConfig::new("key", "secret");
//! serve(listener, Enricher::new(store), config, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```

mod auth;
mod budget;
mod collections;
mod conn;
mod enrich;
mod error;
mod health;
mod limits;
mod metrics;
mod reply;
mod request;
mod timed;
mod users;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get, post};

use self::auth::Auth;
use self::budget::Budget;
use self::error::ApiError;
pub use self::limits::Limits;
use self::metrics::Metrics;
use crate::enricher::Enricher;
use crate::store::SharedStore;

/// The credentials the server checks (the API key clients send as `?api_key=`, and the secret
/// their tokens are signed with) and the [`Limits`] it keeps to.
#[derive(Clone)]
#[must_use]
pub struct ServeConfig {
    api_key: String,
    api_secret: String,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("api_key", &self.api_key)
            .field("api_secret", &"<hidden>")
            .field("limits", &self.limits)
            .finish()
    }
}

impl ServeConfig {
    /// A server accepting `api_key` and tokens signed (HS256) with `api_secret`, with the
    /// default [`Limits`].
    pub fn new(api_key: impl Into<String>, api_secret: impl Into<String>) -> Self {
        ServeConfig {
            api_key: api_key.into(),
            api_secret: api_secret.into(),
            limits: Limits::new(),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// `store` with each call timed into this server's metrics
    /// (`enrich_store_call_duration_seconds`, `enrich_store_errors_total`). Build the enricher
    /// given to [`serve`] over it to have them.
    pub fn instrument(&self, store: SharedStore) -> SharedStore {
        timed::instrument(&self.metrics, store)
    }

    /// The bounds on what requests, connections and the server as a whole may cost.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// What every handler shares.
#[derive(Clone, Debug)]
pub(crate) struct AppState(Arc<Shared>);

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) enricher: Enricher,
    pub(crate) auth: Auth,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) limits: Limits,
    pub(crate) budget: Budget,
    /// Pages of the enrich endpoint, kept between requests.
    pub(crate) pages: crate::sync::Pool<crate::page::RawPage>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Shared {
    /// The store, through the enricher so that every write invalidates its L1.
    pub(crate) fn users(&self) -> SharedStore {
        self.enricher.users()
    }
}

/// Serves the API on `listener` until `shutdown` resolves; requests in progress then finish,
/// for up to [`Limits::shutdown_timeout`], before this returns. Fails at once if the secret is
/// empty.
pub async fn serve(
    listener: tokio::net::TcpListener,
    enricher: Enricher,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (app, state) = router(enricher, &config)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    conn::serve(
        listener,
        app,
        config.limits.clone(),
        state.metrics.clone(),
        shutdown,
    )
    .await
}

/// The app [`serve`] runs, without what `conn` adds around it (the connection limit and
/// clocks, hyper's parsing): for the fuzz target `fuzz/fuzz_targets/serve_app.rs`, which drives
/// it in process with `tower::ServiceExt::oneshot`. Built only under cargo-fuzz's
/// `--cfg fuzzing`, so it is no part of the crate's API.
#[cfg(fuzzing)]
#[doc(hidden)]
pub fn app(enricher: Enricher, config: &ServeConfig) -> Result<Router, String> {
    router(enricher, config).map(|(app, _)| app)
}

/// Registers `route` with and without its trailing slash: Stream's clients add one, people
/// typing URLs often do not.
fn both(router: Router<AppState>, path: &str, method: MethodRouter<AppState>) -> Router<AppState> {
    let bare = path.trim_end_matches('/');
    router
        .route(bare, method.clone())
        .route(&format!("{bare}/"), method)
}

fn router(enricher: Enricher, config: &ServeConfig) -> Result<(Router, AppState), String> {
    let state = AppState(Arc::new(Shared {
        enricher,
        auth: Auth::new(&config.api_key, &config.api_secret)?,
        metrics: config.metrics.clone(),
        limits: config.limits.clone(),
        budget: Budget::new(config.limits.max_in_flight_bytes),
        pages: crate::sync::Pool::new(enrich::PooledPage::KEEP),
    }));
    state
        .metrics
        .watch(state.enricher.clone(), state.budget.clone());
    let routes: [(&str, MethodRouter<AppState>); 8] = [
        ("/api/v1.0/user/", post(users::add)),
        (
            "/api/v1.0/user/{id}/",
            get(users::get).put(users::update).delete(users::delete),
        ),
        (
            "/api/v1.0/users/",
            post(users::add_many)
                .get(users::get_many)
                .delete(users::delete_many),
        ),
        (
            "/api/v1.0/collections/",
            post(collections::upsert)
                .get(collections::select)
                .delete(collections::delete_many),
        ),
        // PHP's client upserts and selects through `meta/`.
        (
            "/api/v1.0/meta/",
            post(collections::upsert).get(collections::select),
        ),
        (
            "/api/v1.0/collections/{collection}/",
            post(collections::add),
        ),
        (
            "/api/v1.0/collections/{collection}/{id}/",
            get(collections::get)
                .put(collections::update)
                .delete(collections::delete),
        ),
        ("/api/v1.0/enrich/", post(enrich::enrich)),
    ];
    let api = routes
        .into_iter()
        .fold(Router::new(), |api, (path, method)| both(api, path, method));
    let api = api.route_layer(middleware::from_fn_with_state(state.clone(), auth::require));
    let app = Router::new()
        .merge(api)
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/healthz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), reply::finish))
        // Bodies are read, within their own limits, by `reply::finish`.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state.clone());
    Ok((app, state))
}

async fn unknown_route(uri: axum::http::Uri) -> impl IntoResponse {
    ApiError::not_found(format!("no such resource: {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> impl IntoResponse {
    ApiError::method_not_allowed(format!("{method} is not allowed on {}", uri.path()))
}
