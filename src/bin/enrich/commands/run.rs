//! `enrich run`: the batch job, with its progress display and its signals.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};

use enrich::Enricher;
use enrich::batch::{self, RunError, RunOptions, RunSummary};
use enrich::batch::{ImportError, ImportEvent, Stop, import_entries_until, import_users_until};
use enrich::error::{Error, ErrorKind, Result};

use super::progress::{Progress, input_size};
use super::{OpenedOutput, StoreSpec, open_file, open_input, open_with_retry, stop_signals};

/// What `enrich run` was asked to do.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunArgs {
    /// Input files; empty or `-` for standard input.
    pub inputs: Vec<PathBuf>,
    /// The output file; standard output if `None`.
    pub output: Option<PathBuf>,
    /// Users to import (override-existing) before the run.
    pub users: Option<PathBuf>,
    /// Collection entries to import (upserted) before the run.
    pub objects: Option<PathBuf>,
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
    let interrupted = |stop: Stop| RunSummary {
        interrupted: Some(stop),
        elapsed: started.elapsed(),
        ..RunSummary::default()
    };
    let opened = tokio::select! {
        opened = open_run(spec, &args) => opened.map_err(failed)?,
        Some(stop) = stops.next() => return Ok(interrupted(stop)),
    };
    let (enricher, inputs) = opened;
    // The imports before the run stop at a signal once what they read is committed, and say
    // how far they got.
    if let Some(users) = &args.users {
        let stop = import_run_users(&enricher, users, args.verbose, &mut stops);
        if let Some(stop) = stop.await.map_err(failed)? {
            return Ok(interrupted(stop));
        }
    }
    if let Some(objects) = &args.objects {
        let stop = import_run_objects(&enricher, objects, args.verbose, &mut stops);
        if let Some(stop) = stop.await.map_err(failed)? {
            return Ok(interrupted(stop));
        }
    }
    let prepared = tokio::select! {
        prepared = open_outputs(&enricher, &args) => prepared.map_err(failed)?,
        Some(stop) = stops.next() => return Ok(interrupted(stop)),
    };
    let (output, rejects) = prepared;
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
        tell!("store {}", enricher.users().describe());
    }
    summary
}

/// What a run reads, checked in the order that reports bad input first: its inputs, and the
/// store (retried while it is unavailable). The imports come next ([`import_run_users`], then
/// [`import_run_objects`]: a store that refuses writes says so at once, before any wait), and
/// the outputs are created last ([`open_outputs`]).
async fn open_run(spec: &StoreSpec, args: &RunArgs) -> Result<(Enricher, Vec<batch::Source>)> {
    check_standard_input(args)?;
    let store = spec.file();
    let also_read: Vec<(&str, &Path)> = [
        ("the --users file", args.users.as_deref()),
        ("the --objects file", args.objects.as_deref()),
        ("the store", store.as_deref()),
    ]
    .into_iter()
    .filter_map(|(role, path)| Some((role, path?)))
    .collect();
    batch::check_outputs(
        &args.inputs,
        &also_read,
        args.output.as_deref(),
        args.rejects.as_deref(),
    )?;
    let mut inputs = Vec::new();
    if args.inputs.is_empty() {
        inputs.push(batch::Source::new("-", open_input(None).await?));
    }
    for path in &args.inputs {
        let name = path.display().to_string();
        if path == Path::new("-") {
            inputs.push(batch::Source::new(name, open_input(None).await?));
            continue;
        }
        // Every input is checked now, before anything is created; a regular file is then
        // opened again when the run comes to it, so a run over thousands of files holds one of
        // them open. Anything else (a FIFO, a device) is kept open: a FIFO closed now would
        // cut off its writer, and reopened wait for another.
        let (file, metadata) = open_file(path).await?;
        if metadata.is_file() {
            drop(file);
            let path = path.clone();
            inputs.push(batch::Source::deferred(name, move || async move {
                open_input(Some(&path)).await
            }));
        } else {
            inputs.push(batch::Source::new(name, file));
        }
    }
    // Without users or entries to import, a run only reads: a file store must exist.
    let create = args.users.is_some() || args.objects.is_some();
    let store = open_with_retry(spec, create, args.options.store_timeout_value()).await?;
    let enricher = spec.enricher(store);
    Ok((enricher, inputs))
}

/// Refuses a run that would read standard input twice (the second reader would find it used
/// up): as an input and for an import (a run given no input file reads it), or as two inputs.
/// And `--rejects -`, which would mix the rejects into the output or a file named `-`.
fn check_standard_input(args: &RunArgs) -> Result<()> {
    let stdin = Path::new("-");
    let imports: Vec<&str> = [("--users", &args.users), ("--objects", &args.objects)]
        .into_iter()
        .filter(|(_, path)| path.as_deref() == Some(stdin))
        .map(|(flag, _)| flag)
        .collect();
    let named_inputs = args.inputs.iter().filter(|path| *path == stdin).count();
    let why = match (&imports[..], named_inputs) {
        ([first, second, ..], _) => Some(format!("{first} - and {second} - both read it")),
        ([flag], 0) if args.inputs.is_empty() => Some(format!(
            "{flag} - reads it, and so does the run when it names no input file: name the \
             input files"
        )),
        ([flag], 1..) => Some(format!("{flag} - and the input - both read it")),
        (_, 2..) => Some("the input - is named more than once".to_string()),
        _ => None,
    };
    if let Some(why) = why {
        return Err(Error::invalid(format!(
            "standard input can be read only once: {why}"
        )));
    }
    if args.rejects.as_deref() == Some(stdin) {
        return Err(Error::invalid(
            "--rejects - is not taken: rejects go to a file of their own (-o - is the output)",
        ));
    }
    Ok(())
}

/// The outputs of a run, created once everything before them went well.
async fn open_outputs(
    enricher: &Enricher,
    args: &RunArgs,
) -> Result<(batch::Output, Option<batch::Output>)> {
    // Pages resolved before the store's watch is up would not be cached.
    enricher.wait_for_cache(Duration::from_secs(2)).await;
    // Both files are opened before either is emptied: a --rejects that cannot be created
    // leaves the -o file as it was.
    let output = args.output.as_deref().map(OpenedOutput::open).transpose()?;
    let rejects = match args.rejects.as_deref().map(OpenedOutput::open).transpose() {
        Ok(rejects) => rejects,
        Err(error) => {
            output.into_iter().for_each(OpenedOutput::abandon);
            return Err(error);
        }
    };
    let (output, rejects) = OpenedOutput::truncate_both(output, rejects)?;
    let output = match output {
        Some(output) => batch::Output::file(output),
        None => batch::Output::stdout().map_err(|e| {
            Error::new(ErrorKind::Internal, "cannot write to standard output").with_cause(e)
        })?,
    };
    let rejects = rejects.map(batch::Output::file);
    Ok((output, rejects))
}

/// `run --users`: imports the users (replacing existing ones) before the run, reporting as
/// [`BeforeRun`] says. Says which signal stopped it, if one did.
async fn import_run_users(
    enricher: &Enricher,
    users: &Path,
    verbose: bool,
    stops: &mut (impl Stream<Item = Stop> + Unpin),
) -> Result<Option<Stop>> {
    let input = open_input(Some(users)).await?;
    let mut report = BeforeRun::new(users, "user");
    let events = |event: ImportEvent<'_>| report.event(event);
    let imported =
        import_users_until(&*enricher.users(), input, true, events, next_stop(stops)).await;
    report.finish(imported, |summary| summary.interrupted, verbose)
}

/// `run --objects`: imports the entries (upserting them) before the run, reporting as
/// [`BeforeRun`] says. Says which signal stopped it, if one did.
async fn import_run_objects(
    enricher: &Enricher,
    objects: &Path,
    verbose: bool,
    stops: &mut (impl Stream<Item = Stop> + Unpin),
) -> Result<Option<Stop>> {
    let input = open_input(Some(objects)).await?;
    let mut report = BeforeRun::new(objects, "entry");
    let events = |event: ImportEvent<'_>| report.event(event);
    let imported = import_entries_until(&*enricher.users(), input, events, next_stop(stops)).await;
    report.finish(imported, |summary| summary.interrupted, verbose)
}

/// The next of `stops`; never, once they have ended.
async fn next_stop(stops: &mut (impl Stream<Item = Stop> + Unpin)) -> Stop {
    match stops.next().await {
        Some(stop) => stop,
        None => std::future::pending().await,
    }
}

/// What an import before the run says: each bad line as `FILE:LINE: reason`, and then the
/// summary if verbose; bad lines fail the run once the file is in, a store fault stops it after
/// the summary of what was committed.
struct BeforeRun<'a> {
    name: std::path::Display<'a>,
    /// What a line holds, for the error: `user`, `entry`.
    what: &'static str,
    bad: u64,
}

impl<'a> BeforeRun<'a> {
    fn new(path: &'a Path, what: &'static str) -> Self {
        BeforeRun {
            name: path.display(),
            what,
            bad: 0,
        }
    }

    fn event(&mut self, event: ImportEvent<'_>) {
        if let ImportEvent::Rejected { line, error } = event {
            self.bad += 1;
            tell!("error: {}:{line}: {error}", self.name);
        }
    }

    /// The run's verdict on the import, and the signal that stopped it if one did (its
    /// summary is then said even when not `verbose`); `interrupted` reads that from a summary.
    fn finish<S: std::fmt::Display>(
        self,
        imported: std::result::Result<S, ImportError<S>>,
        interrupted: impl FnOnce(&S) -> Option<Stop>,
        verbose: bool,
    ) -> Result<Option<Stop>> {
        let name = self.name;
        let summary = match imported {
            Ok(summary) => summary,
            Err(stopped) => {
                tell!("{name}: {}", stopped.committed);
                return Err(stopped.error);
            }
        };
        let stop = interrupted(&summary);
        if verbose || stop.is_some() {
            tell!("{name}: {summary}");
        }
        if self.bad > 0 {
            return Err(Error::invalid(format!(
                "{name}: {} {} line(s) rejected",
                self.bad, self.what
            )));
        }
        Ok(stop)
    }
}
