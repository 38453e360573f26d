//! The `enrich` command line: `args` parses the flags, `commands` does the work with the
//! library, and this file maps the outcome to output and exit codes.

use std::io::Write;
use std::time::Duration;

use args::{Cli, Collections, Command, Users};
use clap::Parser;

/// `eprintln!` that cannot fail: a message for a standard error that is closed or full (`2>&-`,
/// `2>/dev/full`, a pipe whose reader has gone) is dropped, where `eprintln!` would panic and
/// turn the command's outcome into exit 101.
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod args;
mod commands;
mod logging;
use commands::{RunArgs, StoreSpec};
use enrich::batch::{RunOptions, Stop};
use enrich::bench::Workload;
use enrich::{CacheConfig, Depth, Error, StoreOptions};

/// mimalloc: a batch job allocates and frees buffers from both cores all the time, where it is
/// markedly cheaper than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The fewest open files a command may be started with: the runtime's own take a few (its
/// event queue, the signal driver's socket pair), and tokio panics where it cannot make that
/// pair (`ulimit -n` 6 or 7) rather than say so.
const MIN_OPEN_FILES: u64 = 16;

fn main() {
    let cli = Cli::parse();
    let files = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    if let Some(files) = files.filter(|&files| files < MIN_OPEN_FILES) {
        tell!(
            "error: the open-file limit (ulimit -n) is {files}; enrich needs at least \
             {MIN_OPEN_FILES}"
        );
        std::process::exit(1);
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    // `run --threads N`: the job's chunks are tasks, so the runtime's workers are its threads.
    if let Command::Run {
        threads: Some(threads),
        ..
    } = &cli.command
    {
        runtime.worker_threads(usize::from(*threads));
    }
    let runtime = runtime.build().unwrap_or_else(|err| {
        tell!("error: cannot start the runtime: {err}");
        std::process::exit(1)
    });
    runtime.block_on(run_command(cli))
}

/// A file grown past the process's file size limit (`ulimit -f`) raises SIGXFSZ, whose default
/// action ends the process in the middle of a write with no word said. Caught (tokio keeps the
/// handler for the life of the process), the write fails with `EFBIG` instead, and the command
/// says so as it says a full disk: a run keeps only complete lines, an import the batches it
/// committed.
fn survive_the_file_size_limit() {
    use tokio::signal::unix::{SignalKind, signal};
    let _ = signal(SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw()));
}

async fn run_command(cli: Cli) {
    survive_the_file_size_limit();
    let serving = matches!(cli.command, Command::Serve { .. });
    let logging = logging::init(cli.log_format, if serving { "info" } else { "warn" });
    let options = StoreOptions::new()
        .namespace(cli.namespace)
        .wait_replicas(cli.wait_replicas)
        .wait_timeout(cli.wait_timeout)
        .file_cache(cli.file_cache)
        .read_from(cli.read_from.into());
    let cache = CacheConfig::new().max_bytes(cli.l1_bytes as u64);
    let spec = StoreSpec::new(cli.store, options, cache);
    let result = match cli.command {
        Command::Users(users) => run_users(&spec, users).await,
        Command::Collections(command) => run_collections(&spec, command).await,
        Command::Bench {
            users,
            activities,
            zipf,
            page,
            concurrency,
            strategy,
            seed,
            json,
        } => {
            let workload = Workload {
                users,
                activities,
                zipf,
                page,
                concurrency,
                seed,
            };
            let strategies = strategy.0;
            commands::bench(&spec, workload, &strategies)
                .await
                .and_then(|report| {
                    if json {
                        print_line(&serde_json::to_string(&report).expect("a report serializes"))
                    } else {
                        print_out(&report.to_string())
                    }
                })
                .map(|()| 0)
        }
        Command::Run {
            files,
            output,
            users,
            objects,
            deep,
            rejects,
            max_line_output,
            max_pending_output,
            max_distinct_ids,
            store_timeout,
            quiet,
            threads: _,
        } => {
            let Ok(store_timeout) = Duration::try_from_secs_f64(store_timeout) else {
                std::process::exit(i32::from(fail(&Error::invalid(format!(
                    "--store-timeout {store_timeout} is not a number of seconds"
                )))));
            };
            let depth = if deep { Depth::Deep } else { Depth::TopLevel };
            let args = RunArgs {
                inputs: files,
                // `-o -` is standard output, as `-` is standard input.
                output: output.filter(|path| path.as_os_str() != "-"),
                users,
                objects,
                rejects,
                options: RunOptions::new()
                    .depth(depth)
                    .store_timeout(store_timeout)
                    .max_line_output(max_line_output)
                    .max_pending_output(max_pending_output)
                    .max_distinct_ids(max_distinct_ids),
                verbose: !quiet,
            };
            match commands::run(&spec, args).await {
                Ok(summary) => match summary.interrupted {
                    // Stopped before the end: always said, like an error.
                    Some(stop) => {
                        tell!("{summary}");
                        Ok(stop.exit_code())
                    }
                    None => {
                        if !quiet {
                            tell!("{summary}");
                        }
                        Ok(0)
                    }
                },
                Err(failed) => {
                    // What was written before the failure, when the run got that far.
                    if !quiet && failed.summary.lines > 0 {
                        tell!("{}", failed.summary);
                    }
                    Err(failed.error)
                }
            }
        }
        Command::Serve {
            listen,
            api_key,
            api_secret,
            limits,
        } => match limits.limits() {
            Ok(limits) => {
                let args = commands::ServeArgs {
                    listen,
                    api_key,
                    api_secret,
                    limits,
                };
                commands::serve(&spec, args).await.map(|()| 0)
            }
            Err(err) => Err(err),
        },
    };
    let code = match result {
        Ok(code) => code,
        Err(err) => fail(&err),
    };
    // Exit now rather than wait for a read of standard input that may never return, once the
    // waiting log lines are out.
    drop(logging);
    std::process::exit(i32::from(code))
}

/// A users command; `Ok`: its exit code.
async fn run_users(spec: &StoreSpec, command: Users) -> Result<u8, Error> {
    let line = match command {
        Users::Add {
            id,
            data,
            get_or_create,
        } => commands::users_add(spec, &id, data.as_deref(), get_or_create)
            .await?
            .to_string(),
        Users::Get { id } => commands::users_get(spec, &id).await?.to_string(),
        Users::Update { id, data } => commands::users_update(spec, &id, &data).await?.to_string(),
        Users::Delete { id } => {
            commands::users_delete(spec, &id).await?;
            "{}".to_string()
        }
        Users::Import {
            file,
            override_existing,
        } => {
            let summary = commands::users_import(spec, file.as_deref(), override_existing).await?;
            return imported(&summary, summary.rejected, summary.interrupted);
        }
    };
    print_line(&line).map(|()| 0)
}

/// A collections command; `Ok`: its exit code.
async fn run_collections(spec: &StoreSpec, command: Collections) -> Result<u8, Error> {
    let line = match command {
        Collections::Add { name, id, data } => {
            commands::entries_add(spec, &name, id.as_deref(), &data)
                .await?
                .to_string()
        }
        Collections::Get { name, id } => commands::entries_get(spec, &name, &id).await?.to_string(),
        Collections::Update { name, id, data } => commands::entries_update(spec, &name, &id, &data)
            .await?
            .to_string(),
        Collections::Delete { name, id } => {
            commands::entries_delete(spec, &name, &id).await?;
            "{}".to_string()
        }
        Collections::Import { file } => {
            let summary = commands::entries_import(spec, file.as_deref()).await?;
            return imported(&summary, summary.rejected, summary.interrupted);
        }
    };
    print_line(&line).map(|()| 0)
}

/// An import's end: its summary on stderr, and the exit code: that of a process stopped by
/// the signal if one ended it (once what was read is committed), an error if any line was
/// rejected.
fn imported(
    summary: &impl std::fmt::Display,
    rejected: u64,
    interrupted: Option<Stop>,
) -> Result<u8, Error> {
    tell!("{summary}");
    if let Some(stop) = interrupted {
        return Ok(stop.exit_code());
    }
    if rejected > 0 {
        return Err(Error::invalid(format!("{rejected} line(s) rejected")));
    }
    Ok(0)
}

fn print_line(line: &str) -> Result<(), Error> {
    print_out(&format!("{line}\n"))
}

fn print_out(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    (out.write_all(text.as_bytes()))
        .and_then(|()| out.flush())
        .map_err(|e| Error::new(enrich::ErrorKind::Internal, "cannot write output").with_cause(e))
}

fn fail(err: &Error) -> u8 {
    tell!("error: {err}");
    commands::exit_code(err)
}
