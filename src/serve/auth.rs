//! Server-side auth as Stream's clients send it: `?api_key=KEY` on every request and a JWT,
//! HS256-signed with the API secret, in the `Authorization` header (no `Bearer` prefix, though
//! one is accepted), beside `stream-auth-type: jwt`.
//!
//! What a token may do depends on its claims:
//!
//! | claims | may |
//! |---|---|
//! | `resource` `*` or `users`, `action` `*` (what the Python, JS, Go, Ruby, PHP and .NET clients sign) | everything |
//! | `resource` `*` or `users`, `action` `read` (Java's token for a get) | read users, enrich |
//! | `resource` `*` or `users`, `action` `write` (Java's token for add and update) | create and update users |
//! | `resource` `*` or `users`, `action` `delete` (Java's token for delete) | delete users |
//! | `user_id` only (a user token) | read users, enrich, write and delete user `user_id` |
//! | anything else | nothing (403) |
//!
//! The collections API follows the same rules with `resource` `*` or `collections` (Java signs
//! `read`, `write` or `delete` per call, the other clients `*`). A user token may add entries
//! (it owns them), read any entry, and update or delete only the entries it owns; the batch
//! endpoints take server tokens only.
//!
//! `resource` and `action` may each be a comma-separated list (the JS client joins arrays so).
//! An `exp` claim, when present, is enforced, and so is `nbf` (not before); tokens without
//! them (the clients' default) do not expire.

use std::collections::HashMap;
use std::sync::RwLock;

use axum::extract::{Query, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::AppState;
use super::error::ApiError;

/// What the request's token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Access {
    /// A server token: these actions on every user, and these on every collection entry.
    Server {
        users: Actions,
        collections: Actions,
    },
    /// A user token: reads, and writes of this one user and of the entries it owns.
    User(String),
}

/// The actions a server token allows on one API (users, or collections).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Actions {
    pub(crate) read: bool,
    pub(crate) write: bool,
    pub(crate) delete: bool,
}

impl Actions {
    const ALL: Actions = Actions {
        read: true,
        write: true,
        delete: true,
    };
    const NONE: Actions = Actions {
        read: false,
        write: false,
        delete: false,
    };
}

impl Access {
    /// Reading users and enriching.
    pub(crate) fn check_read(&self) -> Result<(), ApiError> {
        match self {
            Access::Server { users, .. } if !users.read => Err(refused(users, "reading", "read")),
            _ => Ok(()),
        }
    }

    /// Creating or updating user `id`.
    pub(crate) fn check_write(&self, id: &str) -> Result<(), ApiError> {
        match self {
            Access::Server { users, .. } if users.write => Ok(()),
            Access::Server { users, .. } => Err(refused(users, "writing", "write")),
            Access::User(user) => same_user(user, id),
        }
    }

    /// Deleting user `id`.
    pub(crate) fn check_delete(&self, id: &str) -> Result<(), ApiError> {
        match self {
            Access::Server { users, .. } if users.delete => Ok(()),
            Access::Server { users, .. } => Err(refused(users, "deleting", "delete")),
            Access::User(user) => same_user(user, id),
        }
    }
}

/// Why a server token, granted `users` on the users API, may not do `verb` there.
fn refused(users: &Actions, verb: &str, action: &str) -> ApiError {
    refused_on("users", "users", users, verb, action)
}

/// Why a server token, granted `granted` on `api`, may not do `verb` there: its resource does
/// not name the API at all, or its action is another.
fn refused_on(api: &str, what: &str, granted: &Actions, verb: &str, action: &str) -> ApiError {
    if *granted == Actions::NONE {
        ApiError::not_allowed(format!(
            "this token's resource does not include {api} (sign it for resource {api} or *)"
        ))
    } else {
        ApiError::not_allowed(format!(
            "this token does not allow {verb} {what} (action {action})"
        ))
    }
}

/// What a collections call asks of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryAction {
    /// Get one entry (any token that may read).
    Read,
    /// Add one entry (a user token adds it as its owner).
    Add,
    /// Update one entry (a user token only its own).
    Update,
    /// Delete one entry (a user token only its own).
    Delete,
    /// Upsert many (server tokens only).
    BatchWrite,
    /// Select many (server tokens only).
    BatchRead,
    /// Delete many (server tokens only).
    BatchDelete,
}

impl Access {
    /// Whether the token may make a collections call of this kind. A user token passes for
    /// [`EntryAction::Update`] and [`EntryAction::Delete`] here; the handler then checks that
    /// it owns the entry, in the same atomic write (see [`not_owner`]).
    pub(crate) fn check_entries(&self, action: EntryAction) -> Result<(), ApiError> {
        use EntryAction::*;
        match self {
            Access::Server { collections, .. } => {
                let (allowed, verb, claim) = match action {
                    Read | BatchRead => (collections.read, "reading", "read"),
                    Add | Update | BatchWrite => (collections.write, "writing", "write"),
                    Delete | BatchDelete => (collections.delete, "deleting", "delete"),
                };
                if allowed {
                    Ok(())
                } else {
                    Err(refused_on(
                        "collections",
                        "collection entries",
                        collections,
                        verb,
                        claim,
                    ))
                }
            }
            Access::User(user) => match action {
                Read | Add | Update | Delete => Ok(()),
                BatchWrite | BatchRead | BatchDelete => Err(ApiError::not_allowed(format!(
                    "the batch collections endpoints take a server token, not a token of user \
                     {user:?}"
                ))),
            },
        }
    }

    /// The user a user token acts as; `None` for a server token.
    pub(crate) fn user(&self) -> Option<&str> {
        match self {
            Access::User(user) => Some(user),
            Access::Server { .. } => None,
        }
    }
}

/// The refusal of a change of the entry `key` by a token of `user`, which does not own it
/// (another user does, or none). A server token changes any entry (its action was checked); a
/// user token's change is made only if the store finds, in the same atomic write, that its
/// user owns the entry.
pub(crate) fn not_owner(user: &str, key: &str) -> ApiError {
    ApiError::not_allowed(format!(
        "a token of user {user:?} may not change entry {key:?}, which it does not own"
    ))
}

fn same_user(user: &str, id: &str) -> Result<(), ApiError> {
    if user == id {
        Ok(())
    } else {
        Err(ApiError::not_allowed(format!(
            "a token of user {user:?} may not write user {id:?}"
        )))
    }
}

/// The configured key and the key tokens are checked with.
pub(crate) struct Auth {
    api_key: String,
    decoding: DecodingKey,
    validation: Validation,
    verified: RwLock<HashMap<Box<str>, Verified, foldhash::fast::RandomState>>,
}

/// A token whose signature was checked: what it allows, and when it may be used.
#[derive(Debug, Clone)]
struct Verified {
    access: Access,
    exp: Option<u64>,
    nbf: Option<u64>,
}

/// Verified tokens remembered at most; the memory starts over when full. A server sees a few
/// tokens again and again (its clients sign one and reuse it), and checking a signature costs
/// more than the rest of a small request's auth; only the server's secret can add an entry.
const VERIFIED_TOKENS: usize = 4096;

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("api_key", &self.api_key)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Fails only for an empty secret, which would sign nothing.
    pub(crate) fn new(api_key: &str, api_secret: &str) -> Result<Auth, String> {
        let decoding = DecodingKey::from_secret(api_secret.as_bytes())
            .map_err(|_| "the API secret must not be empty".to_string())?;
        let mut validation = Validation::new(Algorithm::HS256);
        // Stream's clients sign tokens without `exp` by default; one that has it must hold.
        validation.required_spec_claims = std::collections::HashSet::new();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = 0;
        Ok(Auth {
            api_key: api_key.to_string(),
            decoding,
            validation,
            verified: RwLock::default(),
        })
    }

    /// Checks the key and the token of a request.
    pub(crate) fn check(
        &self,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> Result<Access, ApiError> {
        match query.get("api_key") {
            None => return Err(ApiError::api_key("the api_key query parameter is missing")),
            Some(key) if !constant_time_eq(key.as_bytes(), self.api_key.as_bytes()) => {
                return Err(ApiError::api_key("api_key not found"));
            }
            Some(_) => {}
        }
        if let Some(kind) = headers.get("stream-auth-type")
            && !kind.as_bytes().eq_ignore_ascii_case(b"jwt")
        {
            return Err(ApiError::unauthenticated(
                "unsupported stream-auth-type; use jwt",
            ));
        }
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthenticated("the Authorization header is missing"))?;
        // The scheme is case-insensitive (RFC 9110, 11.1): `Bearer`, `bearer`, `BEARER`.
        let token = match token.split_at_checked(7) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer ") => rest,
            _ => token,
        }
        .trim();
        let now = jsonwebtoken::get_current_timestamp();
        let known = crate::sync::read(&self.verified).get(token).cloned();
        if let Some(known) = known {
            // The same checks, without leeway, as the first time.
            if known.exp.is_some_and(|exp| exp < now) {
                return Err(ApiError::unauthenticated("the token has expired"));
            }
            if known.nbf.is_some_and(|nbf| nbf > now) {
                return Err(ApiError::unauthenticated(
                    "the token is not valid yet (nbf)",
                ));
            }
            return Ok(known.access);
        }
        let claims = jsonwebtoken::decode::<Value>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                ApiError::unauthenticated(match e.kind() {
                    JwtErrorKind::ExpiredSignature => "the token has expired",
                    JwtErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                    JwtErrorKind::InvalidSignature => "signature is invalid",
                    JwtErrorKind::InvalidAlgorithm => "the token must be signed with HS256",
                    _ => "the token is malformed",
                })
            })?
            .claims;
        let access = access_of(&claims)?;
        // Remembered as whole seconds that keep the first check's answer: `exp` rounded down
        // and `nbf` up, as clients sign fractional times (PyJWT's `time.time() + 60`). A
        // claim that is there but not a number is not remembered as missing: the token is
        // then checked whole every time.
        let time = |claim: &str, round: fn(f64) -> f64| match claims.get(claim) {
            None => Some(None),
            Some(at) => at.as_f64().map(|at| Some(round(at).max(0.0) as u64)),
        };
        let (Some(exp), Some(nbf)) = (time("exp", f64::floor), time("nbf", f64::ceil)) else {
            return Ok(access);
        };
        let mut verified = crate::sync::write(&self.verified);
        if verified.len() >= VERIFIED_TOKENS {
            verified.clear();
        }
        verified.insert(
            token.into(),
            Verified {
                access: access.clone(),
                exp,
                nbf,
            },
        );
        Ok(access)
    }
}

/// What a token's claims allow.
fn access_of(claims: &Value) -> Result<Access, ApiError> {
    let text = |key: &str| claims.get(key).and_then(Value::as_str);
    match (text("resource"), text("action"), text("user_id")) {
        (Some(resource), action, _)
            if covers(resource, "users") || covers(resource, "collections") =>
        {
            let action = action.unwrap_or("");
            let actions = if covers(action, "*") {
                Actions::ALL
            } else {
                Actions {
                    read: covers(action, "read"),
                    write: covers(action, "write"),
                    delete: covers(action, "delete"),
                }
            };
            if actions == Actions::default() {
                return Err(ApiError::not_allowed(format!(
                    "a token for action {action:?} may not use the users or collections API"
                )));
            }
            let on = |api: &str| {
                if covers(resource, api) {
                    actions
                } else {
                    Actions::NONE
                }
            };
            Ok(Access::Server {
                users: on("users"),
                collections: on("collections"),
            })
        }
        (Some(resource), _, _) => Err(ApiError::not_allowed(format!(
            "a token for resource {resource:?} may not use the users or collections API"
        ))),
        (None, _, Some(user)) => Ok(Access::User(user.to_string())),
        _ => Err(ApiError::not_allowed(
            "the token has neither a resource nor a user_id claim",
        )),
    }
}

/// True when a claim value (a comma-separated list, as the JS client joins arrays) names `*`
/// or `what`.
fn covers(claim: &str, what: &str) -> bool {
    claim
        .split(',')
        .map(str::trim)
        .any(|c| c == "*" || c == what)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses API requests without a valid key and token; hands the [`Access`] to the handler.
pub(crate) async fn require(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    // A request with a body had its credentials checked before the body was read
    // (`reply::finish`), which left what they allow here.
    if request.extensions().get::<Access>().is_some() {
        return next.run(request).await;
    }
    match check(&state, request.uri(), request.headers()) {
        Ok(access) => {
            request.extensions_mut().insert(access);
            next.run(request).await
        }
        Err(err) => err.into_response(),
    }
}

/// The key and the token of a request, before its body is read.
pub(crate) fn check(
    state: &AppState,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Result<Access, ApiError> {
    let pairs = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default();
    // A key given twice would be taken or refused by its order: one is asked for.
    let mut keys = pairs.iter().filter(|(name, _)| name == "api_key");
    if let Some((_, first)) = keys.next()
        && keys.any(|(_, other)| other != first)
    {
        return Err(ApiError::api_key(
            "api_key is given more than once, with different values",
        ));
    }
    let query: HashMap<String, String> = pairs.into_iter().collect();
    state.auth.check(&query, headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_decide_access() {
        let server = |users, collections| Access::Server { users, collections };
        let python = json!({"action": "*", "resource": "users", "feed_id": "*"});
        let all_users = server(Actions::ALL, Actions::NONE);
        assert_eq!(access_of(&python).unwrap(), all_users);
        let js = json!({"resource": "*", "action": "*", "feed_id": "*"});
        assert_eq!(access_of(&js).unwrap(), server(Actions::ALL, Actions::ALL));
        let php = json!({"resource": "users", "action": "*", "feed_id": "*", "user_id": "*"});
        assert_eq!(access_of(&php).unwrap(), all_users);
        let php = json!({"resource": "collections", "action": "*", "user_id": "*"});
        assert_eq!(
            access_of(&php).unwrap(),
            server(Actions::NONE, Actions::ALL)
        );
        let read = json!({"resource": "*", "action": "read"});
        let only_read = Actions {
            read: true,
            ..Actions::default()
        };
        assert_eq!(access_of(&read).unwrap(), server(only_read, only_read));
        let listed = json!({"resource": "feed,users", "action": "write, delete"});
        let write_delete = Actions {
            write: true,
            delete: true,
            ..Actions::default()
        };
        assert_eq!(
            access_of(&listed).unwrap(),
            server(write_delete, Actions::NONE)
        );
        let user = json!({"user_id": "alice"});
        assert_eq!(access_of(&user).unwrap(), Access::User("alice".into()));
        let feed = json!({"resource": "feed", "action": "*"});
        assert_eq!(access_of(&feed).unwrap_err().code, 17);
        let odd = json!({"resource": "users", "action": "follow"});
        assert_eq!(access_of(&odd).unwrap_err().status.as_u16(), 403);
        assert!(access_of(&json!({})).is_err());
    }

    #[test]
    fn java_per_action_tokens() {
        let token = |action: &str| access_of(&json!({"resource": "users", "action": action}));
        let (read, write, delete) = (
            token("read").unwrap(),
            token("write").unwrap(),
            token("delete").unwrap(),
        );
        assert!(read.check_read().is_ok());
        assert!(read.check_write("a").is_err() && read.check_delete("a").is_err());
        assert!(write.check_write("a").is_ok());
        assert!(write.check_read().is_err() && write.check_delete("a").is_err());
        assert!(delete.check_delete("a").is_ok());
        assert!(delete.check_read().is_err() && delete.check_write("a").is_err());
    }

    #[test]
    fn users_write_only_themselves() {
        let alice = Access::User("alice".into());
        assert!(alice.check_read().is_ok());
        assert!(alice.check_write("alice").is_ok());
        assert!(alice.check_delete("alice").is_ok());
        assert_eq!(alice.check_write("bob").unwrap_err().status.as_u16(), 403);
        assert!(alice.check_delete("bob").is_err());
        let server = Access::Server {
            users: Actions::ALL,
            collections: Actions::NONE,
        };
        assert!(server.check_write("anyone").is_ok());
    }

    #[test]
    fn collection_tokens() {
        use EntryAction::*;
        let token = |claims: Value| access_of(&claims).unwrap();
        let everything = [
            Read,
            Add,
            Update,
            Delete,
            BatchWrite,
            BatchRead,
            BatchDelete,
        ];
        for claims in [
            json!({"resource": "collections", "action": "*", "feed_id": "*", "user_id": "*"}),
            json!({"resource": "*", "action": "*", "feed_id": "*"}),
        ] {
            let access = token(claims);
            for action in everything {
                assert!(access.check_entries(action).is_ok(), "{action:?}");
            }
            assert_eq!(access.user(), None);
        }
        // A users token may not touch collections, nor a collections token users.
        let users = token(json!({"resource": "users", "action": "*"}));
        for action in everything {
            let err = users.check_entries(action).unwrap_err();
            assert_eq!(err.code, 17);
            assert!(err.detail.contains("resource"), "{}", err.detail);
        }
        let collections = token(json!({"resource": "collections", "action": "*"}));
        assert!(collections.check_read().is_err() && collections.check_write("a").is_err());
        // Java: one action per token.
        let java = |action: &str| token(json!({"resource": "collections", "action": action}));
        let (read, write, delete) = (java("read"), java("write"), java("delete"));
        for (access, allowed) in [
            (&read, [Read, BatchRead]),
            (&write, [Add, BatchWrite]),
            (&delete, [Delete, BatchDelete]),
        ] {
            for action in everything {
                let want = allowed.contains(&action) || (access == &write && action == Update);
                assert_eq!(
                    access.check_entries(action).is_ok(),
                    want,
                    "{access:?} {action:?}"
                );
            }
        }
    }

    #[test]
    fn users_change_only_their_entries() {
        let alice = Access::User("alice".into());
        for action in [EntryAction::Read, EntryAction::Add, EntryAction::Update] {
            assert!(alice.check_entries(action).is_ok());
        }
        for action in [
            EntryAction::BatchWrite,
            EntryAction::BatchRead,
            EntryAction::BatchDelete,
        ] {
            assert_eq!(
                alice.check_entries(action).unwrap_err().status.as_u16(),
                403
            );
        }
        let refused = not_owner("alice", "food:x");
        assert_eq!((refused.status.as_u16(), refused.code), (403, 17));
        assert_eq!(
            refused.detail,
            r#"a token of user "alice" may not change entry "food:x", which it does not own"#
        );
        assert_eq!(alice.user(), Some("alice"));
    }
}
