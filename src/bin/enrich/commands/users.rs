//! `enrich users`.

use std::path::Path;

use enrich::batch::{ImportEvent, ImportSummary, import_users_until};
use enrich::error::Result;
use enrich::user::{NewUser, UserId, UserJson};

use super::progress::ImportProgress;
use super::{StoreSpec, first_stop, open_input, read_data};

/// `users add`: creates a user, or with `get_or_create` returns the existing one.
pub(crate) async fn users_add(
    spec: &StoreSpec,
    id: &str,
    data: Option<&str>,
    get_or_create: bool,
) -> Result<UserJson> {
    let data = match data {
        Some(arg) => Some(read_data(arg).await?),
        None => None,
    };
    let user = NewUser::new(id, data)?;
    let store = spec.open().await?;
    Ok(store.add(&user, get_or_create).await?.user)
}

/// `users get`.
pub(crate) async fn users_get(spec: &StoreSpec, id: &str) -> Result<UserJson> {
    let id = UserId::parse(id)?;
    spec.open_existing().await?.get(&id).await
}

/// `users update`: replaces the data of an existing user.
pub(crate) async fn users_update(spec: &StoreSpec, id: &str, data: &str) -> Result<UserJson> {
    let user = NewUser::new(id, Some(read_data(data).await?))?;
    spec.open_existing().await?.update(&user).await
}

/// `users delete`.
pub(crate) async fn users_delete(spec: &StoreSpec, id: &str) -> Result<()> {
    let id = UserId::parse(id)?;
    spec.open_existing().await?.delete(&id).await
}

/// `users import`: NDJSON users from a file or `-` (standard input). Rejected lines are
/// reported on standard error as they are met; the summary says how many. An import stopped by
/// a store fault prints the summary of what it committed before returning the error.
pub(crate) async fn users_import(
    spec: &StoreSpec,
    file: Option<&Path>,
    override_existing: bool,
) -> Result<ImportSummary> {
    let input = open_input(file).await?;
    let store = spec.open().await?;
    let (display, input) = ImportProgress::start("users", file, input);
    let events = |event: ImportEvent<'_>| display.event(event);
    let imported =
        import_users_until(&*store, input, override_existing, events, first_stop()).await;
    display.finish(imported.map_err(|stopped| (stopped.committed, stopped.error)))
}
