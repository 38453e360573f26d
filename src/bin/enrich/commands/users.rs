//! `enrich users`.

use std::io::IsTerminal;
use std::path::Path;

use enrich::batch::{self};
use enrich::batch::{ImportError, ImportEvent, ImportSummary, import_users};
use enrich::error::Result;
use enrich::user::{NewUser, UserId, UserJson};

use super::progress::{Progress, input_size};
use super::{StoreSpec, open_input, read_data};

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
    let total = file.and_then(|f| input_size(&[f.to_path_buf()]));
    let display = Progress::new("users", total, std::io::stderr().is_terminal());
    let progress = batch::RunProgress::new();
    let ticker = display.follow(progress.clone());
    let input = progress.count_reads(input);
    let summary = import_users(&*store, input, override_existing, |event| match event {
        ImportEvent::Rejected { line, error } => display
            .bar
            .suspend(|| eprintln!("error: line {line}: {error}")),
        ImportEvent::Progress { lines } => progress.set_lines(lines),
    })
    .await;
    ticker.abort();
    display.finish();
    summary.map_err(|stopped: ImportError| {
        // What is in the store already, before why the rest is not.
        eprintln!("{}", stopped.committed);
        stopped.error
    })
}
