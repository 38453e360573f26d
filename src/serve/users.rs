//! The users API, with the semantics of `enrich users`: add (or get-or-create), get, update,
//! delete, and the batch forms. Every write goes through [`crate::Enricher::users`], so this
//! process's L1 forgets a user the moment it is written.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use serde_json::{Map, Value};

use super::AppState;
use super::auth::Access;
use super::error::ApiError;
use super::reply::Pending;
use super::reply::{array_len, push_array, read_listed};
use super::request::{
    Pairs, Params, PathParams, check_batch, flag, list, params, parse_object, path_params,
};
use crate::store::ImportUser;
use crate::user::{NewUser, UserId, UserJson};

type IdParam = PathParams<String>;

fn path_id(id: IdParam) -> Result<String, ApiError> {
    path_params(id, "user id in the path")
}

/// `data` of a body: absent or null mean `{}`; the model checks the rest.
fn data_of(body: &mut Map<String, Value>) -> Option<Value> {
    body.remove("data")
}

fn string_field(body: &Map<String, Value>, key: &str) -> Result<String, ApiError> {
    match body.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(ApiError::input(format!(
            "{key} must be a string, got {}",
            crate::user::json_type(other)
        ))),
        None => Err(ApiError::input(format!("the body has no {key} field"))),
    }
}

/// `POST /api/v1.0/user/` `{"id":…,"data":…}`, `?get_or_create=true`.
pub(crate) async fn add(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    query: Params,
    body: Bytes,
) -> Result<Pending, ApiError> {
    let get_or_create = flag(&params(query)?, "get_or_create")?;
    let (mut body, _parsed) = parse_object(&state, &body).await?;
    let id = string_field(&body, "id")?;
    let user = NewUser::new(&id, data_of(&mut body))?;
    access.check_write(user.id().as_str())?;
    let added = state.users().add(&user, get_or_create).await?;
    state.metrics.record_invalidations(1);
    Ok(user_reply(StatusCode::CREATED, &added.user))
}

/// `GET /api/v1.0/user/{id}/`.
pub(crate) async fn get(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    id: IdParam,
) -> Result<Pending, ApiError> {
    access.check_read()?;
    let id = UserId::parse(&path_id(id)?)?;
    let user = state.users().get(&id).await?;
    Ok(user_reply(StatusCode::OK, &user))
}

/// `PUT /api/v1.0/user/{id}/` `{"data":…}`: replaces the data wholesale.
pub(crate) async fn update(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    id: IdParam,
    body: Bytes,
) -> Result<Pending, ApiError> {
    let id = UserId::parse(&path_id(id)?)?;
    access.check_write(id.as_str())?;
    let (mut body, _parsed) = parse_object(&state, &body).await?;
    let user = NewUser::with_id(id, data_of(&mut body))?;
    let updated = state.users().update(&user).await?;
    state.metrics.record_invalidations(1);
    Ok(user_reply(StatusCode::CREATED, &updated))
}

/// `DELETE /api/v1.0/user/{id}/`: answers `{"duration":…}`.
pub(crate) async fn delete(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    id: IdParam,
) -> Result<Pending, ApiError> {
    let id = UserId::parse(&path_id(id)?)?;
    access.check_delete(id.as_str())?;
    state.users().delete(&id).await?;
    state.metrics.record_invalidations(1);
    Ok(Pending::object(StatusCode::OK, "{}"))
}

/// `POST /api/v1.0/users/` `{"users":[{"id":…,"data":…},…],"override_existing":bool}` (the JS
/// client names the flag `override`). Answers `{"created_users":[…],"duration":…}` with every
/// user as stored now: skipped ones as they were, the others as written.
pub(crate) async fn add_many(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    body: Bytes,
) -> Result<Pending, ApiError> {
    let held = body.len();
    let (body, parsed) = parse_object(&state, &body).await?;
    let override_existing = match body
        .get("override_existing")
        .or_else(|| body.get("override"))
    {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ApiError::input(format!(
                "override_existing must be a boolean, got {}",
                crate::user::json_type(other)
            )));
        }
    };
    let Some(Value::Array(list)) = body.get("users") else {
        return Err(ApiError::input("the body needs a users array"));
    };
    check_batch(list.len(), state.limits.max_batch_ids, "users")?;
    let mut users = Vec::with_capacity(list.len());
    let mut ids = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let Value::Object(entry) = entry else {
            return Err(ApiError::input(format!("users[{i}] must be an object")));
        };
        let id = string_field(entry, "id")
            .map_err(|e| ApiError::input(format!("users[{i}]: {}", e.detail)))?;
        let user = NewUser::new(&id, entry.get("data").cloned())
            .map_err(|e| ApiError::input(format!("users[{i}]: {}", e.message())))?;
        access.check_write(user.id().as_str())?;
        ids.push(user.id().clone());
        users.push(ImportUser::new(user, None, None)?);
    }
    // What was parsed is in `users` now: its share of the budget goes to the answer.
    drop((body, parsed));
    // The answer holds every user named as stored after the write, once per mention: the one
    // written or, without override, one already there of any size up to the largest. Its
    // size is held to the limit before anything is written, as an upsert's is.
    let most = array_len(users.iter().map(|user| {
        let written = user.user().stored_len();
        if override_existing {
            written
        } else {
            written.max(UserJson::MAX_STORED_LEN)
        }
    })) + r#"{"created_users":}"#.len();
    ApiError::check_response(
        "the users added",
        most,
        state.limits.max_response_bytes,
        "add fewer users at once",
    )?;
    // And charged to the memory budget before anything is written, twice (the users read back
    // and the answer copied from them are both held for a moment): the answer of a write is
    // sent whatever the budget says, so a busy server refuses the write (503, nothing written)
    // rather than hold one more answer it never counted.
    let mut charge = (state.budget)
        .charge_beside(most.saturating_mul(2), held)
        .await?;
    let store = state.users();
    store.import(&users, override_existing).await?;
    state.metrics.record_invalidations(users.len() as u64);
    let stored = store.get_many(&ids).await.map_err(|e| {
        ApiError::from(e).noting("the users were written; reading them back for the answer failed")
    })?;
    let found: Vec<UserJson> = stored.into_iter().flatten().collect();
    let answer = users_object("created_users", &found);
    drop(found);
    charge.keep(answer.len());
    Ok(Pending::charged(StatusCode::CREATED, answer, charge))
}

/// `GET /api/v1.0/users/?ids=a,b`: `{"users":[…],"duration":…}`, the users that exist, in the
/// order asked.
pub(crate) async fn get_many(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    pairs: Pairs,
) -> Result<Pending, ApiError> {
    access.check_read()?;
    let ids = parse_ids(&params(pairs)?, state.limits.max_batch_ids)?;
    let store = state.users();
    let (found, _, mut charge) = read_listed(
        &state.budget,
        &ids,
        |ids| store.get_many_each(ids),
        |user: &UserJson| user.as_bytes().len(),
        (
            r#"{"users":}"#.len(),
            state.limits.max_response_bytes,
            UserJson::MAX_STORED_LEN,
        ),
        ("the users asked for", "ask for fewer users at once"),
    )
    .await?;
    let answer = users_object("users", &found);
    drop(found);
    charge.keep(answer.len());
    Ok(Pending::charged(StatusCode::OK, answer, charge))
}

/// `DELETE /api/v1.0/users/?ids=a,b`: `{"deleted_user_ids":[…],"duration":…}`, the ids that
/// existed and are gone.
pub(crate) async fn delete_many(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    pairs: Pairs,
) -> Result<Pending, ApiError> {
    let ids = parse_ids(&params(pairs)?, state.limits.max_batch_ids)?;
    for id in &ids {
        access.check_delete(id.as_str())?;
    }
    let store = state.users();
    let mut deleted = Vec::new();
    for id in &ids {
        match store.delete(id).await {
            Ok(()) => deleted.push(id.as_str()),
            Err(e) if e.is_not_found() => {}
            // The users deleted before it are gone whatever this one's outcome: said too.
            Err(e) if !deleted.is_empty() => {
                state.metrics.record_invalidations(deleted.len() as u64);
                let note = format!("deleted before it: {}; stopped at {id}", deleted.join(","));
                return Err(ApiError::from(e).noting(&note));
            }
            Err(e) => return Err(e.into()),
        }
    }
    state.metrics.record_invalidations(ids.len() as u64);
    let body = serde_json::json!({ "deleted_user_ids": deleted }).to_string();
    Ok(Pending::object(StatusCode::OK, body))
}

fn parse_ids(query: &[(String, String)], max: usize) -> Result<Vec<UserId>, ApiError> {
    // `list` answers each id once: repeats cost nothing, the distinct ids are what a call may
    // not have too many of.
    let ids = (list(query, "ids").iter())
        .map(|id| UserId::parse(id))
        .collect::<crate::error::Result<Vec<_>>>()?;
    check_batch(ids.len(), max, "users")?;
    Ok(ids)
}

fn user_reply(status: StatusCode, user: &UserJson) -> Pending {
    Pending::object(status, user.bytes().clone())
}

/// `{"KEY":[user,…]}` with each user's stored bytes.
fn users_object(key: &str, users: &[UserJson]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(16 + users.iter().map(|u| u.as_bytes().len() + 1).sum::<usize>());
    out.extend_from_slice(format!(r#"{{"{key}":"#).as_bytes());
    push_array(&mut out, users.iter().map(UserJson::as_bytes));
    out.push(b'}');
    out
}
