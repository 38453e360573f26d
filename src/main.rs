//! The `enrich` command line: parses flags and hands over to [`enrich::commands`].

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use enrich::bench::{Strategy, Workload};
use enrich::commands::{self, EXIT_CODES, RunArgs, StoreSpec};
use enrich::job::RunOptions;
use enrich::store::{DEFAULT_NAMESPACE, DEFAULT_STORE_URL};
use enrich::{Depth, Error, StoreOptions};

/// mimalloc: a batch job allocates and frees buffers from both cores all the time, where it is
/// markedly cheaper than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Enriches feed activities: replaces user references (SU:id) with the users they name.
#[derive(Debug, Parser)]
#[command(name = "enrich", version, after_help = EXIT_CODES)]
struct Cli {
    /// Where users are stored: redis://[user:pass@]host:port[/db], rediss://…,
    /// redis+cluster://…, file:PATH or memory:
    // The value is never shown in help: it may hold a password.
    #[arg(
        long,
        global = true,
        env = "ENRICH_STORE",
        default_value = DEFAULT_STORE_URL,
        hide_env_values = true
    )]
    store: String,

    /// Keeps these users apart from other namespaces in the same store.
    #[arg(long, global = true, env = "ENRICH_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    namespace: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage users.
    #[command(subcommand, after_help = EXIT_CODES)]
    Users(Users),
    /// Enrich NDJSON: each line an activity, a group or a feed response; one line out per line in.
    #[command(after_help = EXIT_CODES)]
    Run {
        /// Input files, read one after the other; - or nothing for standard input.
        files: Vec<PathBuf>,
        /// Write here instead of standard output.
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
        /// Import these users (NDJSON, replacing existing ones) before the run.
        #[arg(long, value_name = "USERS.ndjson")]
        users: Option<PathBuf>,
        /// Enrich references at any depth inside an activity, not only its top-level fields.
        #[arg(long)]
        deep: bool,
        /// Write bad lines here as {"line":N,"error":…,"input":…} and go on, instead of stopping.
        #[arg(long, value_name = "FILE")]
        rejects: Option<PathBuf>,
        /// Keep retrying while the store is unavailable for this long, then fail.
        #[arg(long, value_name = "SECS", default_value_t = 30.0)]
        store_timeout: f64,
        /// No summary on standard error.
        #[arg(long)]
        quiet: bool,
    },
    /// Benchmark the engine against per-reference reads and per-page MGET on this store.
    ///
    /// Generates users and activities from the seed (actors Zipf-distributed, 2% references to
    /// missing users), loads the users into the namespace NS.bench, and runs each strategy over
    /// the same pages.
    #[command(after_help = EXIT_CODES)]
    Bench {
        /// Users to generate.
        #[arg(long, default_value_t = 10_000)]
        users: usize,
        /// Activities to generate.
        #[arg(long, default_value_t = 100_000)]
        activities: usize,
        /// Zipf exponent of actor popularity (0 is uniform).
        #[arg(long, default_value_t = 1.0)]
        zipf: f64,
        /// Activities per page.
        #[arg(long, default_value_t = 25)]
        page: usize,
        /// Pages enriched at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Which strategies to run.
        #[arg(long, value_enum, default_value_t = StrategyArg::All)]
        strategy: StrategyArg,
        /// Seed of the generated workload.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Serve a Stream-compatible HTTP API: the users API and an enrich endpoint.
    #[command(after_help = EXIT_CODES)]
    Serve {
        /// The address to listen on.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8000")]
        listen: String,
        /// The API key clients send as ?api_key=.
        #[arg(
            long,
            env = "ENRICH_API_KEY",
            value_name = "KEY",
            hide_env_values = true
        )]
        api_key: Option<String>,
        /// The secret clients sign their tokens with (HS256).
        #[arg(
            long,
            env = "ENRICH_API_SECRET",
            value_name = "SECRET",
            hide_env_values = true
        )]
        api_secret: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StrategyArg {
    Engine,
    Naive,
    Mget,
    All,
}

#[derive(Debug, Subcommand)]
enum Users {
    /// Create a user and print it.
    Add {
        /// 1 to 255 of A-Z, a-z, 0-9, '-' and '_'.
        id: String,
        /// The user's data: a JSON object, or - to read it from standard input.
        data: Option<String>,
        /// If the user exists, print it unchanged instead of failing.
        #[arg(long)]
        get_or_create: bool,
    },
    /// Print a user.
    Get {
        /// The user's id.
        id: String,
    },
    /// Replace a user's data and print the user.
    Update {
        /// The user's id.
        id: String,
        /// The new data: a JSON object, or - to read it from standard input.
        data: String,
    },
    /// Delete a user; prints {}.
    Delete {
        /// The user's id.
        id: String,
    },
    /// Import NDJSON lines {"id":…,"data":…} from a file or standard input.
    Import {
        /// The file to read; - or nothing for standard input.
        file: Option<PathBuf>,
        /// Replace users that exist instead of skipping them.
        #[arg(long)]
        override_existing: bool,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    // Warnings (an invalidation stream lost, then restored) go to standard error; RUST_LOG
    // asks for more.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let spec = StoreSpec::new(cli.store, StoreOptions::new().namespace(cli.namespace));
    let result = match cli.command {
        Command::Users(users) => run_users(&spec, users).await,
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
            let strategies = match strategy {
                StrategyArg::Engine => vec![Strategy::Engine],
                StrategyArg::Naive => vec![Strategy::Naive],
                StrategyArg::Mget => vec![Strategy::Mget],
                StrategyArg::All => Strategy::ALL.to_vec(),
            };
            commands::bench(&spec, workload, &strategies)
                .await
                .map(|report| {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string(&report).expect("a report serializes")
                        );
                    } else {
                        print!("{report}");
                    }
                })
        }
        Command::Run {
            files,
            output,
            users,
            deep,
            rejects,
            store_timeout,
            quiet,
        } => {
            let Ok(store_timeout) = Duration::try_from_secs_f64(store_timeout) else {
                std::process::exit(i32::from(fail(&Error::invalid(format!(
                    "--store-timeout {store_timeout} is not a number of seconds"
                )))));
            };
            let depth = if deep { Depth::Deep } else { Depth::TopLevel };
            let args = RunArgs {
                inputs: files,
                output,
                users,
                rejects,
                options: RunOptions::new().depth(depth).store_timeout(store_timeout),
                verbose: !quiet,
            };
            commands::run(&spec, args).await.map(|summary| {
                if !quiet {
                    eprintln!("{summary}");
                }
            })
        }
        Command::Serve {
            listen,
            api_key,
            api_secret,
        } => {
            let args = commands::ServeArgs {
                listen,
                api_key,
                api_secret,
            };
            commands::serve(&spec, args).await
        }
    };
    let code = match result {
        Ok(()) => 0,
        Err(err) => fail(&err),
    };
    // Exit now rather than wait for a read of standard input that may never return.
    std::process::exit(i32::from(code))
}

async fn run_users(spec: &StoreSpec, command: Users) -> Result<(), Error> {
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
            eprintln!("{summary}");
            if summary.rejected > 0 {
                return Err(Error::invalid(format!(
                    "{} line(s) rejected",
                    summary.rejected
                )));
            }
            return Ok(());
        }
    };
    print_line(&line)
}

fn print_line(line: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| Error::new(enrich::ErrorKind::Internal, "cannot write output").with_cause(e))
}

fn fail(err: &Error) -> u8 {
    eprintln!("error: {err}");
    commands::exit_code(err)
}
