//! What the `enrich` binary does once its flags are parsed: each command checks its input,
//! opens the store, runs, and reports. `main.rs` maps the outcome to output and exit codes.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};

use enrich::Enricher;
use enrich::batch::{self, RunError, RunOptions, RunSummary, Stop};
use enrich::batch::{ImportError, ImportEvent, ImportSummary, import_users};
use enrich::bench::{BenchReport, Strategy, Workload, load_users, run_strategy};
use enrich::error::{Error, ErrorKind, Result};
use enrich::retry::Backoff;
use enrich::store::{self, SharedStore, StoreOptions};
use enrich::user::{NewUser, UserId, UserJson};

/// The exit codes of the binary, listed in `enrich --help`.
pub(crate) const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  store unavailable, timeout, refusal (credentials, permissions, full), or any other failure
  2  invalid input or usage, including a file store that does not exist for a command that
     only reads (users get, update, delete; run without --users)
  3  conflict: the user already exists
  4  not found: the user does not exist";

/// The exit code for an error.
pub(crate) fn exit_code(err: &Error) -> u8 {
    match err.kind() {
        ErrorKind::InvalidInput => 2,
        ErrorKind::Conflict => 3,
        ErrorKind::NotFound => 4,
        _ => 1,
    }
}

/// Which store a command works on.
#[derive(Debug, Clone)]
pub(crate) struct StoreSpec {
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
pub(crate) async fn read_data(arg: &str) -> Result<Value> {
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

/// What `enrich run` was asked to do.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunArgs {
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

/// `enrich run`: the NDJSON batch job. Refuses, before creating anything, outputs that are
/// inputs ([`batch::check_outputs`]); stops cleanly on SIGINT or SIGTERM, the summary marked
/// [`RunSummary::interrupted`]. A failure comes with the summary of what was written before it.
pub(crate) async fn run(spec: &StoreSpec, args: RunArgs) -> Result<RunSummary, RunError> {
    let failed = |error: Error| RunError {
        summary: RunSummary::default(),
        error,
    };
    let mut stops = stop_signals();
    let started = Instant::now();
    let prepared = tokio::select! {
        prepared = prepare_run(spec, &args) => prepared.map_err(failed)?,
        Some(stop) = stops.next() => {
            return Ok(RunSummary {
                interrupted: Some(stop),
                elapsed: started.elapsed(),
                ..RunSummary::default()
            });
        }
    };
    let (enricher, inputs, output, rejects) = prepared;
    let to_terminal = args.output.is_none() && std::io::stdout().is_terminal();
    let shown = args.verbose && std::io::stderr().is_terminal() && !to_terminal;
    let display = Progress::new("lines", input_size(&args.inputs), shown);
    let progress = batch::RunProgress::new();
    let ticker = display.follow(progress.clone());
    let summary = batch::run(
        &enricher,
        inputs,
        output,
        rejects,
        &args.options,
        &progress,
        stops,
    )
    .await;
    ticker.abort();
    display.finish();
    if args.verbose && summary.is_ok() {
        // Beside the summary: which store the users were read from.
        eprintln!("store {}", enricher.users().describe());
    }
    summary
}

/// Everything a run needs before its first line, checked in the order that reports bad input
/// first and creates its outputs last.
async fn prepare_run(
    spec: &StoreSpec,
    args: &RunArgs,
) -> Result<(
    Enricher,
    Vec<batch::Source>,
    batch::Output,
    Option<batch::Output>,
)> {
    batch::check_outputs(
        &args.inputs,
        args.users.as_deref(),
        args.output.as_deref(),
        args.rejects.as_deref(),
    )?;
    let mut inputs = Vec::new();
    if args.inputs.is_empty() {
        inputs.push(batch::Source::new("-", open_input(None).await?));
    }
    for path in &args.inputs {
        let name = path.display().to_string();
        inputs.push(batch::Source::new(name, open_input(Some(path)).await?));
    }
    // Without users to import, a run only reads: a file store must exist.
    let create = args.users.is_some();
    let store = open_with_retry(spec, create, args.options.store_timeout_value()).await?;
    let enricher = Enricher::new(store);
    // Users first: a store that refuses writes says so at once, before any wait.
    if let Some(users) = &args.users {
        import_run_users(&enricher, users, args.verbose).await?;
    }
    // Pages resolved before the store's watch is up would not be cached.
    enricher.wait_for_cache(Duration::from_secs(2)).await;
    let output = match &args.output {
        Some(path) => batch::Output::file(create_output(path)?),
        None => batch::Output::stdout().map_err(|e| {
            Error::new(ErrorKind::Internal, "cannot write to standard output").with_cause(e)
        })?,
    };
    let rejects = match &args.rejects {
        Some(path) => Some(batch::Output::file(create_output(path)?)),
        None => None,
    };
    Ok((enricher, inputs, output, rejects))
}

/// `run --users`: imports the users (replacing existing ones) before the run; a bad line is
/// reported as `FILE:LINE: reason` and fails the run, a store fault after the summary of what
/// was committed.
async fn import_run_users(enricher: &Enricher, users: &Path, verbose: bool) -> Result<()> {
    let input = open_input(Some(users)).await?;
    let name = users.display();
    let mut bad = 0;
    let imported = import_users(&*enricher.users(), input, true, |event| {
        if let ImportEvent::Rejected { line, error } = event {
            bad += 1;
            eprintln!("error: {name}:{line}: {error}");
        }
    })
    .await;
    let summary = match imported {
        Ok(summary) => summary,
        Err(stopped) => {
            eprintln!("{name}: {}", stopped.committed);
            return Err(stopped.error);
        }
    };
    if verbose {
        eprintln!("{name}: {summary}");
    }
    if bad > 0 {
        return Err(Error::invalid(format!(
            "{name}: {bad} user line(s) rejected"
        )));
    }
    Ok(())
}

/// SIGINT and SIGTERM, as they arrive, from now on: the process no longer dies of them.
fn stop_signals() -> impl Stream<Item = Stop> + Unpin + Send {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        for (kind, stop) in [
            (SignalKind::interrupt(), Stop::Interrupt),
            (SignalKind::terminate(), Stop::Terminate),
        ] {
            if let Ok(mut signal) = signal(kind) {
                let sender = sender.clone();
                tokio::spawn(async move {
                    while signal.recv().await.is_some() && sender.send(stop).is_ok() {}
                });
            }
        }
    }
    #[cfg(not(unix))]
    {
        let sender = sender.clone();
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() && sender.send(Stop::Interrupt).is_ok() {}
        });
    }
    drop(sender);
    Box::pin(futures::stream::unfold(receiver, |mut receiver| async {
        receiver.recv().await.map(|stop| (stop, receiver))
    }))
}

/// `enrich bench`: loads a generated workload into the store (in the namespace
/// `{namespace}.bench`, never the users of the namespace itself), then runs each strategy over
/// the same pages.
pub(crate) async fn bench(
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
pub(crate) struct ServeArgs {
    /// The address to listen on, `host:port`.
    pub listen: String,
    /// The API key; required.
    pub api_key: Option<String>,
    /// The API secret; required.
    pub api_secret: Option<String>,
    /// What requests, connections and the server may cost.
    pub limits: enrich::serve::Limits,
}

/// `enrich serve`: checks the credentials, opens the store, binds, says where it listens and
/// serves until SIGTERM or Ctrl-C, letting requests in flight finish.
pub(crate) async fn serve(spec: &StoreSpec, args: ServeArgs) -> Result<()> {
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
    let config = enrich::serve::ServeConfig::new(api_key, api_secret).limits(args.limits);
    let enricher = Enricher::new(config.instrument(store));
    tracing::info!("enrich serve: listening on http://{local}, store {describe}");
    enrich::serve::serve(listener, enricher, config, shutdown_signal())
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "the server failed").with_cause(e))?;
    tracing::info!("enrich serve: stopped");
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
    let mut backoff = Backoff::new();
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
                let left = timeout.saturating_sub(started.elapsed());
                tokio::time::sleep(backoff.pause().min(left)).await;
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

fn create_output(path: &Path) -> Result<std::fs::File> {
    std::fs::File::create(path)
        .map_err(|e| Error::invalid(format!("cannot create {}", path.display())).with_cause(e))
}

/// An input stream.
pub(crate) type Input = Box<dyn AsyncRead + Unpin + Send>;

/// Opens an input: a file, or standard input for `-` or nothing. The error names the file.
pub(crate) async fn open_input(path: Option<&Path>) -> Result<Input> {
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

/// The total size of `inputs` if they are all regular files (standard input is not), for a
/// display that shows how far through them a command is.
fn input_size(inputs: &[PathBuf]) -> Option<u64> {
    if inputs.is_empty() {
        return None;
    }
    inputs.iter().try_fold(0, |total, path| {
        let meta = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
        Some(total + meta.len())
    })
}

/// The progress display of a long command, on standard error when shown: lines so far and
/// their rate (whole numbers), and for files the share of bytes read and the time left.
#[derive(Debug)]
struct Progress {
    bar: ProgressBar,
    unit: &'static str,
}

impl Progress {
    /// Hidden unless `shown`; with a `total` of input bytes, a bar with percent and ETA.
    fn new(unit: &'static str, total: Option<u64>, shown: bool) -> Progress {
        let bar = match (shown, total) {
            (false, _) => ProgressBar::hidden(),
            (true, Some(total)) => ProgressBar::new(total),
            (true, None) => ProgressBar::new_spinner(),
        };
        let template = match total {
            Some(_) => "{spinner} [{bar:30}] {percent:>3}%  {msg}  {elapsed}, ETA {eta}",
            None => "{spinner} {msg}  {elapsed}",
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        bar.set_message(lines_and_rate(0, 0.0, unit));
        Progress { bar, unit }
    }

    /// Updates the display from a run's counters until aborted.
    fn follow(&self, run: batch::RunProgress) -> tokio::task::JoinHandle<()> {
        let bar = self.bar.clone();
        let unit = self.unit;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                bar.set_position(run.bytes_read());
                bar.set_message(lines_and_rate(
                    run.lines(),
                    bar.elapsed().as_secs_f64(),
                    unit,
                ));
            }
        })
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// `1234 lines, 5678 lines/s`: whole numbers, which is all a reader of a moving display takes
/// in.
fn lines_and_rate(lines: u64, secs: f64, unit: &str) -> String {
    let rate = if secs > 0.0 {
        (lines as f64 / secs).round() as u64
    } else {
        0
    };
    format!("{lines} {unit}, {rate} {unit}/s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_whole_numbers() {
        assert_eq!(lines_and_rate(10, 3.0, "lines"), "10 lines, 3 lines/s");
        assert_eq!(lines_and_rate(0, 0.0, "users"), "0 users, 0 users/s");
    }

    #[test]
    fn sizes_are_known_for_regular_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "12345").unwrap();
        std::fs::write(&b, "678").unwrap();
        assert_eq!(input_size(&[a.clone(), b]), Some(8));
        assert_eq!(input_size(&[a.clone(), PathBuf::from("-")]), None);
        assert_eq!(input_size(&[a, dir.path().to_path_buf()]), None);
        assert_eq!(input_size(&[]), None);
    }
}
