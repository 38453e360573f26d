//! A feed service on axum: `GET /feed` returns a page of activities with their user
//! references replaced, `GET /users/{id}` one user, both through one [`Enricher`] built at
//! start-up and shared in the router's state.
//!
//! ```sh
//! cargo run --example axum_feed                            # users in memory (alice, bob)
//! cargo run --example axum_feed -- redis://127.0.0.1:6379  # users in Redis
//! curl 'http://127.0.0.1:3000/feed?limit=3'
//! curl 'http://127.0.0.1:3000/users/alice'
//! ```

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use axum::{Router, serve};
use enrich::{Depth, EnrichedValues, Enricher, NewUser, StoreOptions, UserId, store};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What every handler shares: the enricher (cheap to clone: its L1 and loads in flight are
/// shared) and, standing in for the service's feed storage, its activities.
#[derive(Clone)]
struct AppState {
    enricher: Enricher,
    activities: Arc<Vec<Value>>,
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

/// Stream's shape of a feed page; the results serialize with each user's stored bytes
/// spliced in, without building a `Value` per user.
#[derive(Serialize)]
struct FeedResponse<'a> {
    results: &'a EnrichedValues<'a>,
    next: String,
}

async fn feed(
    State(state): State<AppState>,
    Query(page): Query<Page>,
) -> Result<Response, AppError> {
    let limit = page.limit.unwrap_or(25).min(100);
    let start = page.offset.min(state.activities.len());
    let end = (start + limit).min(state.activities.len());
    let activities = &state.activities[start..end];
    // Every reference of the page, with one store call at most.
    let enriched = state
        .enricher
        .enrich_value_page(activities, Depth::TopLevel)
        .await?;
    let next = if end < state.activities.len() {
        format!("/feed?offset={end}&limit={limit}")
    } else {
        String::new()
    };
    Ok(Json(FeedResponse {
        results: &enriched,
        next,
    })
    .into_response())
}

async fn user(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, AppError> {
    let id = UserId::parse(&id)?;
    Ok(match state.enricher.get(&id).await? {
        // The stored bytes, as they are.
        Some(user) => {
            ([("content-type", "application/json")], user.bytes().clone()).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such user"})),
        )
            .into_response(),
    })
}

/// An enrichment error as an HTTP answer: the caller's fault, or the store's.
struct AppError(enrich::Error);

impl From<enrich::Error> for AppError {
    fn from(err: enrich::Error) -> Self {
        AppError(err)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = if self.0.is_invalid_input() {
            StatusCode::BAD_REQUEST
        } else if self.0.is_store_fault() {
            // Never "not found": the store could not say.
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        (status, Json(json!({"error": self.0.to_string()}))).into_response()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory:".to_string());
    let enricher = Enricher::new(store::open(&url, &StoreOptions::new()).await?);
    if url == "memory:" {
        for (id, name) in [("alice", "Alice"), ("bob", "Bob")] {
            let user = NewUser::new(id, Some(json!({ "name": name })))?;
            enricher.users().add(&user, true).await?;
        }
    }
    let activities = (0..100)
        .map(|i| {
            let actor = ["SU:alice", "SU:bob", "SU:carol"][i % 3];
            json!({
                "id": format!("activity-{i}"),
                "actor": actor,
                "verb": "post",
                "object": format!("SO:post:{i}"),
            })
        })
        .collect();
    let state = AppState {
        enricher,
        activities: Arc::new(activities),
    };
    let app = Router::new()
        .route("/feed", get(feed))
        .route("/users/{id}", get(user))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    serve(listener, app).await?;
    Ok(())
}
