//! What the `enrich` binary does once its flags are parsed: each command checks its input,
//! opens the store, runs, and reports. `main.rs` maps the outcome to output and exit codes.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::bench::{BenchReport, Strategy, Workload, load_users, run_strategy};
use crate::enricher::Enricher;
use crate::error::{Error, ErrorKind, Result};
use crate::import::{ImportEvent, ImportSummary, import_users};
use crate::job::{self, RunOptions, RunSummary};
use crate::store::{self, SharedStore, StoreOptions};
use crate::user::{NewUser, UserId, UserJson};

/// The exit codes of the binary, listed in `enrich --help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  store unavailable, timeout, refusal (credentials, permissions, full), or any other failure
  2  invalid input or usage, including a file store that does not exist for a command that
     only reads (users get, update, delete; run without --users)
  3  conflict: the user already exists
  4  not found: the user does not exist";

/// The exit code for an error.
pub fn exit_code(err: &Error) -> u8 {
    match err.kind() {
        ErrorKind::InvalidInput => 2,
        ErrorKind::Conflict => 3,
        ErrorKind::NotFound => 4,
        _ => 1,
    }
}

/// Which store a command works on.
#[derive(Debug, Clone)]
pub struct StoreSpec {
    url: String,
    options: StoreOptions,
}

impl StoreSpec {
    /// The store at `url`, opened with `options`.
    pub fn new(url: impl Into<String>, options: StoreOptions) -> Self {
        StoreSpec {
            url: url.into(),
            options,
        }
    }

    /// Opens the store. Commands call this only once their own input has been checked, so bad
    /// input is reported as such even when the store is down.
    pub async fn open(&self) -> Result<SharedStore> {
        store::open(&self.url, &self.options).await
    }

    /// Opens the store for work that only reads: a file store that does not exist is an error
    /// naming its path, never a new empty store.
    pub async fn open_existing(&self) -> Result<SharedStore> {
        let options = self.options.clone().create_if_missing(false);
        store::open(&self.url, &options).await
    }
}

/// Reads a DATA argument: JSON object text, or `-` for standard input.
pub async fn read_data(arg: &str) -> Result<Value> {
    let text = if arg == "-" {
        let mut text = String::new();
        tokio::io::stdin()
            .read_to_string(&mut text)
            .await
            .map_err(|e| Error::invalid("cannot read DATA from standard input").with_cause(e))?;
        text
    } else {
        arg.to_string()
    };
    serde_json::from_str(&text).map_err(|e| Error::invalid(format!("DATA is not valid JSON: {e}")))
}

/// `users add`: creates a user, or with `get_or_create` returns the existing one.
pub async fn users_add(
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
pub async fn users_get(spec: &StoreSpec, id: &str) -> Result<UserJson> {
    let id = UserId::parse(id)?;
    spec.open_existing().await?.get(&id).await
}

/// `users update`: replaces the data of an existing user.
pub async fn users_update(spec: &StoreSpec, id: &str, data: &str) -> Result<UserJson> {
    let user = NewUser::new(id, Some(read_data(data).await?))?;
    spec.open_existing().await?.update(&user).await
}

/// `users delete`.
pub async fn users_delete(spec: &StoreSpec, id: &str) -> Result<()> {
    let id = UserId::parse(id)?;
    spec.open_existing().await?.delete(&id).await
}

/// `users import`: NDJSON users from a file or `-` (standard input). Rejected lines are
/// reported on standard error as they are met; the summary says how many.
pub async fn users_import(
    spec: &StoreSpec,
    file: Option<&Path>,
    override_existing: bool,
) -> Result<ImportSummary> {
    let input = open_input(file).await?;
    let store = spec.open().await?;
    let progress = progress_bar("users");
    let summary = import_users(&*store, input, override_existing, |event| match event {
        ImportEvent::Rejected { error, .. } => progress.suspend(|| eprintln!("error: {error}")),
        ImportEvent::Progress { lines } => progress.set_position(lines),
    })
    .await;
    progress.finish_and_clear();
    summary
}

/// What `enrich run` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct RunArgs {
    /// Input files; empty or `-` for standard input.
    pub inputs: Vec<PathBuf>,
    /// The output file; standard output if `None`.
    pub output: Option<PathBuf>,
    /// Users to import (override-existing) before the run.
    pub users: Option<PathBuf>,
    /// Where rejected lines go; without it the run stops at the first.
    pub rejects: Option<PathBuf>,
    /// The job's settings.
    pub options: RunOptions,
    /// Report progress and the summary on standard error.
    pub verbose: bool,
}

/// `enrich run`: the NDJSON batch job.
pub async fn run(spec: &StoreSpec, args: RunArgs) -> Result<RunSummary> {
    let mut inputs = Vec::new();
    if args.inputs.is_empty() {
        inputs.push(open_input(None).await?);
    }
    for path in &args.inputs {
        inputs.push(open_input(Some(path)).await?);
    }
    // Without users to import, a run only reads: a file store must exist.
    let create = args.users.is_some();
    let store = open_with_retry(spec, create, args.options.store_timeout_value()).await?;
    let describe = store.describe();
    let enricher = Enricher::new(store);
    // Users first: a store that refuses writes says so at once, before any wait.
    if let Some(users) = &args.users {
        let input = open_input(Some(users)).await?;
        let mut bad = 0;
        let summary = import_users(&*enricher.users(), input, true, |event| {
            if let ImportEvent::Rejected { error, .. } = event {
                bad += 1;
                eprintln!("error: {}: {error}", users.display());
            }
        })
        .await?;
        if args.verbose {
            eprintln!("{}: {summary}", users.display());
        }
        if bad > 0 {
            return Err(Error::invalid(format!(
                "{}: {bad} user line(s) rejected",
                users.display()
            )));
        }
    }
    // Pages resolved before the store's watch is up would not be cached.
    enricher.wait_for_cache(Duration::from_secs(2)).await;
    let output: Box<dyn AsyncWrite + Unpin + Send> = match &args.output {
        Some(path) => Box::new(create_output(path).await?),
        None => Box::new(tokio::io::stdout()),
    };
    let rejects = match &args.rejects {
        Some(path) => Some(create_output(path).await?),
        None => None,
    };
    let progress = if args.verbose {
        progress_bar("lines")
    } else {
        ProgressBar::hidden()
    };
    let summary = job::run(&enricher, inputs, output, rejects, &args.options, |lines| {
        progress.set_position(lines)
    })
    .await;
    progress.finish_and_clear();
    if args.verbose && summary.is_ok() {
        // Beside the summary: which store the users were read from.
        eprintln!("store {describe}");
    }
    summary
}

/// `enrich bench`: loads a generated workload into the store (in the namespace
/// `{namespace}.bench`, never the users of the namespace itself), then runs each strategy over
/// the same pages.
pub async fn bench(
    spec: &StoreSpec,
    workload: Workload,
    strategies: &[Strategy],
) -> Result<BenchReport> {
    let bench_spec = StoreSpec::new(
        spec.url.clone(),
        spec.options
            .clone()
            .namespace(format!("{}.bench", spec.options.namespace_str())),
    );
    let store = bench_spec.open().await?;
    load_users(&store, &workload).await?;
    let pages = Arc::new(workload.pages());
    let enricher = Enricher::new(store.clone());
    enricher.wait_for_cache(Duration::from_secs(2)).await;
    let mut report = BenchReport {
        store: store.describe(),
        workload: workload.clone(),
        strategies: Vec::new(),
    };
    for strategy in strategies {
        report
            .strategies
            .push(run_strategy(*strategy, &enricher, &store, &pages, workload.concurrency).await?);
    }
    report.compare();
    Ok(report)
}

/// What `enrich serve` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct ServeArgs {
    /// The address to listen on, `host:port`.
    pub listen: String,
    /// The API key; required.
    pub api_key: Option<String>,
    /// The API secret; required.
    pub api_secret: Option<String>,
}

/// `enrich serve`: checks the credentials, opens the store, binds, says where it listens and
/// serves until SIGTERM or Ctrl-C, letting requests in flight finish.
pub async fn serve(spec: &StoreSpec, args: ServeArgs) -> Result<()> {
    let nonempty = |v: Option<String>| v.filter(|v| !v.is_empty());
    let Some(api_secret) = nonempty(args.api_secret) else {
        return Err(Error::invalid(
            "no API secret: pass --api-secret or set ENRICH_API_SECRET",
        ));
    };
    let Some(api_key) = nonempty(args.api_key) else {
        return Err(Error::invalid(
            "no API key: pass --api-key or set ENRICH_API_KEY",
        ));
    };
    let store = spec.open().await?;
    let describe = store.describe();
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| Error::invalid(format!("cannot listen on {}", args.listen)).with_cause(e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::new(ErrorKind::Internal, "no local address").with_cause(e))?;
    let enricher = Enricher::new(store);
    eprintln!("enrich serve: listening on http://{local}, store {describe}");
    let config = crate::serve::ServeConfig::new(api_key, api_secret);
    crate::serve::serve(listener, enricher, config, shutdown_signal())
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "the server failed").with_cause(e))?;
    eprintln!("enrich serve: stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Opens the store, retrying while it is unavailable for up to `timeout`. The first failure is
/// said at once on standard error, so a store that is down is never a silent wait; a failure
/// that retrying cannot fix (credentials, permissions, a certificate) ends it at once.
async fn open_with_retry(spec: &StoreSpec, create: bool, timeout: Duration) -> Result<SharedStore> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(50);
    let mut told = false;
    loop {
        let opened = if create {
            spec.open().await
        } else {
            spec.open_existing().await
        };
        match opened {
            Err(err) if err.is_transient() && started.elapsed() < timeout => {
                if !told {
                    eprintln!(
                        "enrich: {err}; retrying for up to {} s (--store-timeout)",
                        timeout.as_secs_f64()
                    );
                    told = true;
                }
                tokio::time::sleep(delay.min(timeout.saturating_sub(started.elapsed()))).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(err) if err.is_transient() => {
                return Err(err.context(format!(
                    "gave up after {} s (--store-timeout)",
                    timeout.as_secs_f64()
                )));
            }
            Ok(store) => {
                if told {
                    eprintln!("enrich: store {} is available", store.describe());
                }
                return Ok(store);
            }
            other => return other,
        }
    }
}

async fn create_output(path: &Path) -> Result<tokio::fs::File> {
    tokio::fs::File::create(path)
        .await
        .map_err(|e| Error::invalid(format!("cannot create {}", path.display())).with_cause(e))
}

/// An input stream.
pub type Input = Box<dyn AsyncRead + Unpin + Send>;

/// Opens an input: a file, or standard input for `-` or nothing. The error names the file.
pub async fn open_input(path: Option<&Path>) -> Result<Input> {
    let path = match path {
        None => return Ok(Box::new(tokio::io::stdin())),
        Some(path) if path == Path::new("-") => return Ok(Box::new(tokio::io::stdin())),
        Some(path) => path,
    };
    match tokio::fs::File::open(path).await {
        Ok(file) => Ok(Box::new(file)),
        Err(e) => {
            let kind = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorKind::InvalidInput
            } else {
                ErrorKind::Internal
            };
            Err(Error::new(kind, format!("cannot open {}", path.display())).with_cause(e))
        }
    }
}

/// A counter on standard error when it is a terminal, nothing otherwise.
pub fn progress_bar(unit: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    let template = format!("{{spinner}} {{pos}} {unit} read  {{per_sec}}  {{elapsed}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}
