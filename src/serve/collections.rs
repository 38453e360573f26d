//! The collections API: add, get, update and delete one entry, and the batch forms (upsert,
//! select, delete many), with Stream's bodies. Every write goes through
//! [`crate::Enricher::users`], so this process's L1 forgets an entry the moment it is written.
//!
//! Entries are answered as stored: their bytes go out with `"duration"` spliced in, never
//! re-encoded. Upsert items are flat (the whole item, `id` included, is the entry's data), as
//! every client sends them.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use serde_json::{Map, Value};

use super::AppState;
use super::auth::{Access, EntryAction, not_owner};
use super::error::ApiError;
use super::reply::Pending;
use super::reply::{array_len, push_array, read_listed};
use super::request::{Pairs, PathParams, check_batch, list, params, parse_object, path_params};
use crate::collection::{EntryJson, EntryKey, NewEntry, generate_id};
use crate::error::Error;
use crate::user::{UserId, json_type};

/// The path of an entry: `{collection}/{id}`.
type EntryPath = PathParams<(String, String)>;
/// The path of a collection: `{collection}`.
type CollectionPath = PathParams<String>;

fn entry_key(path: EntryPath) -> Result<EntryKey, ApiError> {
    let (collection, id) = path_params(path, "entry path")?;
    Ok(EntryKey::new(&collection, &id)?)
}

/// An optional string field: absent, `null` and `""` are all "not given" (JS leaves `id` out,
/// Python, Ruby and PHP send `null`, Java's empty `CollectionData` sends `""`).
fn optional_text<'a>(body: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::input(format!(
            "{key} must be a string, got {}",
            json_type(other)
        ))),
    }
}

/// The owner of an entry added with `body`: a user token's own user, else the body's
/// `user_id`, if any.
fn owner_of(access: &Access, body: &Map<String, Value>) -> Result<Option<UserId>, ApiError> {
    if let Some(user) = access.user() {
        // A user token adds entries as itself, whatever the body says.
        return UserId::parse(user).map(Some).map_err(|e| {
            ApiError::not_allowed(format!(
                "the token's user_id is not a valid user id: {}",
                e.message()
            ))
        });
    }
    match optional_text(body, "user_id")? {
        Some(user) => Ok(Some(UserId::parse(user)?)),
        None => Ok(None),
    }
}

fn entry_reply(status: StatusCode, entry: &EntryJson) -> Pending {
    Pending::object(status, entry.bytes().clone())
}

/// `POST /api/v1.0/collections/{collection}/` `{"id":…,"data":{…},"user_id":…}`: creates the
/// entry (an id not given is generated) and answers it, 201; a taken id is 409.
pub(crate) async fn add(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    collection: CollectionPath,
    body: Bytes,
) -> Result<Pending, ApiError> {
    access.check_entries(EntryAction::Add)?;
    let collection = path_params(collection, "collection path")?;
    let (mut body, _parsed) = parse_object(&state, &body).await?;
    let id = match optional_text(&body, "id")? {
        Some(id) => id.to_string(),
        None => generate_id(),
    };
    let owner = owner_of(&access, &body)?;
    let key = EntryKey::new(&collection, &id)?;
    let entry = NewEntry::new(key, body.remove("data"))?.owned_by(owner);
    let added = state.users().add_entry(&entry).await?;
    state.metrics.record_entry_writes(1);
    Ok(entry_reply(StatusCode::CREATED, &added))
}

/// `GET /api/v1.0/collections/{collection}/{id}/`: the entry, 200; absent is 404.
pub(crate) async fn get(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    path: EntryPath,
) -> Result<Pending, ApiError> {
    access.check_entries(EntryAction::Read)?;
    let key = entry_key(path)?;
    let entry = state.users().get_entry(&key).await?;
    Ok(entry_reply(StatusCode::OK, &entry))
}

/// Who must own the entry `key` for `access` to change it: `None` for a server token, which
/// changes any entry; a user token's user, whom the store checks owns the entry in the same
/// atomic operation as the write (a check read before the write could find an entry that is
/// deleted and created again by another user before the write lands).
///
/// A token whose user is not a valid user id owns no entry: it is refused here, 404 if the
/// entry is absent, else 403, and nothing is written.
async fn required_owner(
    state: &AppState,
    access: &Access,
    key: &EntryKey,
) -> Result<Option<UserId>, ApiError> {
    let Some(user) = access.user() else {
        return Ok(None);
    };
    match UserId::parse(user) {
        Ok(owner) => Ok(Some(owner)),
        Err(_) => {
            if state.users().get_stored_entry(key).await?.is_none() {
                return Err(crate::store::entry_not_found(key).into());
            }
            Err(not_owner(user, key.as_str()))
        }
    }
}

/// The answer to a user token's write refused by the store: the token's refusal (403) when
/// the user does not own the entry, else the error's own.
fn owned_write_error(owner: &UserId, key: &EntryKey, err: Error) -> ApiError {
    if err.is_not_owner() {
        not_owner(owner.as_str(), key.as_str())
    } else {
        err.into()
    }
}

/// `PUT /api/v1.0/collections/{collection}/{id}/` `{"data":{…}}`: replaces the data, keeps
/// `created_at` and the owner, 201; absent is 404; a body `id` other than the path's is 400.
pub(crate) async fn update(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    path: EntryPath,
    body: Bytes,
) -> Result<Pending, ApiError> {
    access.check_entries(EntryAction::Update)?;
    let key = entry_key(path)?;
    let (mut body, _parsed) = parse_object(&state, &body).await?;
    if let Some(id) = optional_text(&body, "id")?
        && id != key.id()
    {
        return Err(ApiError::input(format!(
            "an update may not change the id: the body names {:?}, the path {:?}",
            crate::user::shorten(id),
            key.id()
        )));
    }
    // An owner given with an update (Java sends `user_id`) is not a change of owner.
    let entry = NewEntry::new(key, body.remove("data"))?;
    let updated = match required_owner(&state, &access, entry.key()).await? {
        None => state.users().update_entry(&entry).await?,
        Some(owner) => (state.users().update_owned_entry(&entry, &owner).await)
            .map_err(|e| owned_write_error(&owner, entry.key(), e))?,
    };
    state.metrics.record_entry_writes(1);
    Ok(entry_reply(StatusCode::CREATED, &updated))
}

/// `DELETE /api/v1.0/collections/{collection}/{id}/`: answers `{"duration":…}`, 200; absent
/// is 404. A body (Python sends `{}`) is ignored.
pub(crate) async fn delete(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    path: EntryPath,
) -> Result<Pending, ApiError> {
    access.check_entries(EntryAction::Delete)?;
    let key = entry_key(path)?;
    match required_owner(&state, &access, &key).await? {
        None => state.users().delete_entry(&key).await?,
        Some(owner) => (state.users().delete_owned_entry(&key, &owner).await)
            .map_err(|e| owned_write_error(&owner, &key, e))?,
    }
    state.metrics.record_entry_writes(1);
    Ok(Pending::object(StatusCode::OK, "{}"))
}

/// `POST /api/v1.0/collections/` (PHP: `POST /api/v1.0/meta/`)
/// `{"data":{"<collection>":[{"id":…,…},…],…}}`: creates or replaces every item (each item,
/// `id` included, is its entry's data; an item without id gets a generated one as its first
/// key). Answers 201 `{"data":{"<collection>":[items as stored…],…}}`.
pub(crate) async fn upsert(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    body: Bytes,
) -> Result<Pending, ApiError> {
    access.check_entries(EntryAction::BatchWrite)?;
    let held = body.len();
    let (mut body, parsed) = parse_object(&state, &body).await?;
    let collections = match body.remove("data") {
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(ApiError::input(format!(
                "data must be an object of collections, got {}",
                json_type(&other)
            )));
        }
        None => {
            return Err(ApiError::input(
                r#"the body needs data: {"<collection>":[items…]}"#,
            ));
        }
    };
    let mut count = 0usize;
    for (name, items) in &collections {
        // Checked here, not with each entry's key: a group may be empty.
        crate::collection::check_collection_name(name)
            .map_err(|e| ApiError::input(format!("data: {}", e.message())))?;
        let Value::Array(items) = items else {
            return Err(ApiError::input(format!(
                "data.{}: the items must be an array, got {}",
                crate::user::shorten(name),
                json_type(items)
            )));
        };
        count += items.len();
    }
    if count > state.limits.max_batch_ids {
        count = distinct_items(&collections);
    }
    check_batch(count, state.limits.max_batch_ids, "entries")?;
    let mut entries = Vec::with_capacity(count);
    // Each collection's name as JSON, and where its items sit in `entries`, in the order of
    // the body.
    let mut groups = Vec::with_capacity(collections.len());
    for (name, items) in collections {
        let Value::Array(items) = items else {
            unreachable!("checked above")
        };
        let start = entries.len();
        for (i, item) in items.into_iter().enumerate() {
            let at = || format!("data.{}[{i}]", crate::user::shorten(&name));
            let Value::Object(item) = item else {
                return Err(ApiError::input(format!(
                    "{}: an item must be an object, got {}",
                    at(),
                    json_type(&item)
                )));
            };
            let (id, item) = match optional_text(&item, "id")
                .map_err(|e| ApiError::input(format!("{}: {}", at(), e.detail)))?
            {
                Some(id) => (id.to_string(), item),
                None => {
                    let id = generate_id();
                    let mut with_id = Map::with_capacity(item.len() + 1);
                    with_id.insert("id".to_string(), Value::String(id.clone()));
                    with_id.extend(item.into_iter().filter(|(k, _)| k != "id"));
                    (id, with_id)
                }
            };
            let entry = EntryKey::new(&name, &id)
                .and_then(|key| NewEntry::new(key, Some(Value::Object(item))))
                .map_err(|e| ApiError::input(format!("{}: {}", at(), e.message())))?;
            entries.push(entry);
        }
        // Valid collection names need no escaping.
        let name = serde_json::to_string(&name).expect("a string serializes");
        groups.push((name, start..entries.len()));
    }
    // Every mention of a repeated id is answered as stored: as its last item, the one a
    // write of them all leaves.
    let stored = stored_items(&entries);
    let answered = |range: &std::ops::Range<usize>| {
        range
            .clone()
            .map(|i| entries[stored[i]].data_json().as_bytes())
    };
    // The echo can be larger than the body (a generated id makes `{}` 45 bytes; `1E15` comes
    // back as `1000000000000000.0`), and a write's answer is sent whatever the memory budget
    // says: so its size is checked before anything is written, and a write whose answer would
    // be over the limit is not made.
    const OPEN: &[u8] = br#"{"data":{"#;
    const CLOSE: &[u8] = b"}}";
    let len = OPEN.len()
        + groups
            .iter()
            .map(|(name, range)| name.len() + 1 + array_len(answered(range).map(<[u8]>::len)))
            .sum::<usize>()
        + groups.len().saturating_sub(1)
        + CLOSE.len();
    ApiError::check_response(
        "the upserted entries, as answered,",
        len,
        state.limits.max_response_bytes,
        "nothing was written: upsert fewer entries at once",
    )?;
    // And charged to the memory budget before anything is written, for the same reason (twice:
    // the entries and the answer copied from them are both held for a moment): a busy server
    // refuses the write (503, nothing written) rather than hold an answer it never counted.
    // What was parsed is in `entries` now: its share of the budget goes to the answer.
    drop((body, parsed));
    let mut charge = (state.budget)
        .charge_beside(len.saturating_mul(2), held)
        .await?;
    // A repeated id is written once, as its last item: the write costs the distinct entries,
    // whatever the body repeats.
    let repeats = stored.iter().enumerate().any(|(i, &last)| last != i);
    let last: Option<Vec<NewEntry>> = repeats.then(|| {
        (entries.iter().enumerate())
            .filter(|&(i, _)| stored[i] == i)
            .map(|(_, e)| e.clone())
            .collect()
    });
    let written = last.as_deref().unwrap_or(&entries);
    state.users().upsert_entries(written).await?;
    state.metrics.record_entry_writes(written.len() as u64);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(OPEN);
    for (g, (name, range)) in groups.iter().enumerate() {
        if g > 0 {
            out.push(b',');
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        push_array(&mut out, answered(range));
    }
    out.extend_from_slice(CLOSE);
    debug_assert_eq!(out.len(), len);
    drop((last, entries));
    charge.keep(len);
    Ok(Pending::charged(StatusCode::CREATED, out, charge))
}

/// How many entries an upsert's `data` names: a repeated id counts once (its last item is the
/// one stored), an item without an id (or with one that is refused later) is one of its own.
fn distinct_items(collections: &Map<String, Value>) -> usize {
    let mut named = std::collections::HashSet::new();
    let mut unnamed = 0;
    for (name, items) in collections {
        for item in items.as_array().into_iter().flatten() {
            match item.get("id").and_then(Value::as_str) {
                Some(id) => {
                    named.insert((name.as_str(), id));
                }
                None => unnamed += 1,
            }
        }
    }
    named.len() + unnamed
}

/// For each entry, the position of the last one with its key: the one a write of them all
/// leaves stored.
fn stored_items(entries: &[NewEntry]) -> Vec<usize> {
    let last: std::collections::HashMap<&EntryKey, usize> = (entries.iter().enumerate())
        .map(|(i, e)| (e.key(), i))
        .collect();
    entries.iter().map(|e| last[e.key()]).collect()
}

/// `GET /api/v1.0/collections/?foreign_ids=c:id,c:id` (PHP: `GET /api/v1.0/meta/`):
/// `{"response":{"data":[entries]},"duration":…}`, the entries that exist in the order asked,
/// each once.
pub(crate) async fn select(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    query: Pairs,
) -> Result<Pending, ApiError> {
    access.check_entries(EntryAction::BatchRead)?;
    let ids = list(&params(query)?, "foreign_ids");
    check_batch(ids.len(), state.limits.max_batch_ids, "entries")?;
    let keys = ids
        .iter()
        .map(|id| EntryKey::parse(id))
        .collect::<crate::error::Result<Vec<_>>>()?;
    // Up to 1,000 entries of 51 kB each: read no further than the answer may hold, and its
    // size known from the entries before a byte of it is written.
    const OPEN: &[u8] = br#"{"response":{"data":"#;
    const CLOSE: &[u8] = b"}}";
    let store = state.users();
    let (found, len, mut charge) = read_listed(
        &state.budget,
        &keys,
        |keys| store.get_entries_each(keys),
        |entry: &EntryJson| entry.as_bytes().len(),
        (
            OPEN.len() + CLOSE.len(),
            state.limits.max_response_bytes,
            EntryJson::MAX_STORED_LEN,
        ),
        ("the selected entries", "select fewer entries at once"),
    )
    .await?;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(OPEN);
    push_array(&mut out, found.iter().map(EntryJson::as_bytes));
    out.extend_from_slice(CLOSE);
    debug_assert_eq!(out.len(), len);
    drop(found);
    charge.keep(len);
    Ok(Pending::charged(StatusCode::OK, out, charge))
}

/// `DELETE /api/v1.0/collections/?collection_name=c&ids=a,b` (or `ids=a&ids=b`): removes the
/// entries that exist, skips the others; answers `{"duration":…}`, 200.
pub(crate) async fn delete_many(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    query: Pairs,
) -> Result<Pending, ApiError> {
    access.check_entries(EntryAction::BatchDelete)?;
    let query = params(query)?;
    let mut names = query.iter().filter(|(k, _)| k == "collection_name");
    let collection = (names.next())
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::input("the collection_name query parameter is missing"))?;
    // One call deletes from one collection: a second name would be dropped unseen.
    if names.any(|(_, v)| v.trim() != collection) {
        return Err(ApiError::input(
            "the collection_name query parameter is given twice with different values; delete \
             from one collection at a time",
        ));
    }
    let ids = list(&query, "ids");
    check_batch(ids.len(), state.limits.max_batch_ids, "entries")?;
    let keys = ids
        .iter()
        .map(|id| EntryKey::new(collection, id))
        .collect::<crate::error::Result<Vec<_>>>()?;
    let deleted = state.users().delete_entries(&keys).await?;
    state.metrics.record_entry_writes(deleted);
    Ok(Pending::object(StatusCode::OK, "{}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_id_means_generate() {
        let body = |v: Value| v.as_object().unwrap().clone();
        let t = |v: Value| optional_text(&body(v), "id").map(|o| o.map(String::from));
        assert_eq!(t(serde_json::json!({})).unwrap(), None);
        assert_eq!(t(serde_json::json!({"id": null})).unwrap(), None);
        assert_eq!(t(serde_json::json!({"id": ""})).unwrap(), None);
        assert_eq!(
            t(serde_json::json!({"id": "x"})).unwrap(),
            Some("x".to_string())
        );
        assert_eq!(t(serde_json::json!({"id": 1})).unwrap_err().code, 4);
    }
}
