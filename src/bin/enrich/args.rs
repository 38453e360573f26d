//! The command line's flags, subcommands and their checks.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use enrich::Error;
use enrich::bench::Strategy;
use enrich::serve::Limits;
use enrich::store::{DEFAULT_NAMESPACE, DEFAULT_STORE_URL};

use crate::commands::EXIT_CODES;
use crate::logging::LogFormat;

/// Enriches feed activities: replaces user references (SU:id) with the users they name.
#[derive(Debug, Parser)]
#[command(name = "enrich", version, after_help = EXIT_CODES)]
pub(crate) struct Cli {
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
    pub(crate) store: String,

    /// Keeps these users apart from other namespaces in the same store.
    #[arg(long, global = true, env = "ENRICH_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub(crate) namespace: String,

    /// On Redis Cluster, which nodes answer reads: each slot's master, or one of its replicas
    /// to take reads off the masters (a read may then lag a write acknowledged a moment ago;
    /// a user is never called missing unless the master agrees).
    #[arg(long, global = true, env = "ENRICH_READ_FROM", value_enum, default_value_t = ReadFrom::Masters)]
    pub(crate) read_from: ReadFrom,

    /// Acknowledge a write only once this many replicas confirm it (Redis WAIT); if fewer do
    /// within --wait-timeout, its outcome is reported unknown. 0: do not wait.
    #[arg(
        long,
        global = true,
        env = "ENRICH_WAIT_REPLICAS",
        value_name = "N",
        default_value_t = 0
    )]
    pub(crate) wait_replicas: u32,

    /// Seconds a write waits for its --wait-replicas.
    #[arg(
        long,
        global = true,
        env = "ENRICH_WAIT_TIMEOUT",
        value_name = "SECS",
        default_value = "1",
        value_parser = positive_secs
    )]
    pub(crate) wait_timeout: Duration,

    /// For a file: store, the most of the file's pages held in memory besides the L1: bytes,
    /// or with a suffix K, M or G (powers of 1024). Less costs reads of the file again.
    #[arg(
        long,
        global = true,
        env = "ENRICH_FILE_CACHE",
        value_name = "BYTES",
        default_value = "1G",
        value_parser = parse_bytes
    )]
    pub(crate) file_cache: usize,

    /// The most the in-process cache of users and entries (the L1) holds, in bytes of their
    /// JSON and keys plus a fixed charge per entry: bytes, or with a suffix K, M or G. 0: no
    /// L1, every page asks the store.
    #[arg(
        long,
        global = true,
        env = "ENRICH_L1_BYTES",
        value_name = "BYTES",
        default_value = "256M",
        value_parser = parse_bytes
    )]
    pub(crate) l1_bytes: usize,

    /// How log lines on standard error are written. RUST_LOG sets what is logged (default:
    /// info for serve, with one access line per request; warn for the other commands).
    #[arg(
        long,
        global = true,
        env = "ENRICH_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub(crate) log_format: LogFormat,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// `--read-from`: [`enrich::store::ReadFrom`] as a flag.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ReadFrom {
    Masters,
    Replicas,
}

impl From<ReadFrom> for enrich::store::ReadFrom {
    fn from(read_from: ReadFrom) -> Self {
        match read_from {
            ReadFrom::Masters => enrich::store::ReadFrom::Masters,
            ReadFrom::Replicas => enrich::store::ReadFrom::Replicas,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Manage users.
    #[command(subcommand, after_help = EXIT_CODES)]
    Users(Users),
    /// Manage collection entries (objects referenced as SO:<collection>:<id>).
    #[command(subcommand, after_help = EXIT_CODES)]
    Collections(Collections),
    /// Enrich NDJSON: each line an activity, a group or a feed response; one line out per line in.
    #[command(after_help = EXIT_CODES)]
    Run {
        /// Input files, read one after the other; - or nothing for standard input.
        files: Vec<PathBuf>,
        /// Write here instead of standard output (- is standard output).
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
        /// Import these users (NDJSON, replacing existing ones) before the run.
        #[arg(long, value_name = "USERS.ndjson")]
        users: Option<PathBuf>,
        /// Import these collection entries (NDJSON {"collection":…,"id":…,"data":…}, replacing
        /// existing ones) before the run.
        #[arg(long, value_name = "OBJECTS.ndjson")]
        objects: Option<PathBuf>,
        /// Enrich references at any depth inside an activity, not only its top-level fields.
        #[arg(long)]
        deep: bool,
        /// Write bad lines here as {"file":…,"line":N,"error":…,"input":…} and go on, instead of
        /// stopping.
        #[arg(long, value_name = "FILE")]
        rejects: Option<PathBuf>,
        /// Reject a line whose enriched output would be longer than this: bytes, or with a
        /// suffix K, M or G (powers of 1024). The users and entries a page of lines reads at
        /// once are bounded by it too, or by 16M if that is more.
        #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = parse_bytes)]
        max_line_output: usize,
        /// Hold at most this much enriched output in memory waiting to be written (to a slow
        /// reader, a slow disk): bytes, or with a suffix K, M or G, under 4G. A longer line is
        /// built alone, once everything before it is written.
        #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = parse_budget)]
        max_pending_output: usize,
        /// Count the run's distinct users exactly up to this many (about 16 bytes each);
        /// past them the summary gives an estimate, within a few percent, marked with `~`.
        #[arg(long, value_name = "IDS", default_value_t = enrich::batch::DEFAULT_MAX_DISTINCT_IDS)]
        max_distinct_ids: u64,
        /// Keep retrying while the store is unavailable for this long, then fail.
        #[arg(long, value_name = "SECS", default_value_t = 30.0)]
        store_timeout: f64,
        /// No summary on standard error.
        #[arg(long)]
        quiet: bool,
        /// Threads that scan, resolve, render and write lines (default: one per core). Only
        /// the reads of files go through short-lived helper threads besides, and output to a
        /// pipe or a terminal is written by a thread of its own.
        #[arg(long, value_name = "N", env = "ENRICH_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
        threads: Option<u16>,
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
        /// Which strategy to run: engine, naive, mget, or all of them.
        #[arg(long, value_name = "STRATEGY", default_value = "all", value_parser = strategy_or_all)]
        strategy: Strategies,
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
        #[command(flatten)]
        limits: ServeLimits,
    },
}

/// What one request, one connection and the whole server may cost.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Limits")]
pub(crate) struct ServeLimits {
    /// The largest request body, in bytes or with a suffix K, M or G (413 above it).
    #[arg(
        long,
        env = "ENRICH_MAX_BODY_BYTES",
        value_name = "BYTES",
        default_value_t = 1 << 20,
        value_parser = parse_bytes
    )]
    max_body_bytes: usize,
    /// Activities one enrich request may hold; a group counts its activities.
    #[arg(
        long,
        env = "ENRICH_MAX_ACTIVITIES",
        value_name = "N",
        default_value_t = 1_000
    )]
    max_activities: u64,
    /// References one enrich request may hold.
    #[arg(
        long,
        env = "ENRICH_MAX_REFERENCES",
        value_name = "N",
        default_value_t = 10_000
    )]
    max_references: u64,
    /// The largest answer of an enrich request, a collections select or an upsert, in bytes
    /// or with a suffix K, M or G; checked before it is built.
    #[arg(
        long,
        env = "ENRICH_MAX_RESPONSE_BYTES",
        value_name = "BYTES",
        default_value_t = 16 << 20,
        value_parser = parse_bytes
    )]
    max_response_bytes: usize,
    /// Ids, users or collection entries one batch call may name.
    #[arg(
        long,
        env = "ENRICH_MAX_BATCH_IDS",
        value_name = "N",
        default_value_t = 1_000
    )]
    max_batch_ids: usize,
    /// Bytes of request and response bodies held at once over all connections (or with a
    /// suffix K, M or G); a request over it waits up to 5 s, then gets 503.
    #[arg(
        long,
        env = "ENRICH_MAX_IN_FLIGHT_BYTES",
        value_name = "BYTES",
        default_value_t = 256 << 20,
        value_parser = parse_bytes
    )]
    max_in_flight_bytes: usize,
    /// Connections open at once (never more than the open-file limit allows); at the limit
    /// the oldest idle connection is closed for a new one.
    #[arg(
        long,
        env = "ENRICH_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 1_024
    )]
    max_connections: usize,
    /// Seconds a client may take to send a request's line and headers.
    #[arg(
        long,
        env = "ENRICH_HEADER_TIMEOUT",
        value_name = "SECS",
        default_value_t = 10.0
    )]
    header_timeout: f64,
    /// Seconds a client may take to send a request's body (408).
    #[arg(
        long,
        env = "ENRICH_BODY_TIMEOUT",
        value_name = "SECS",
        default_value_t = 30.0
    )]
    body_timeout: f64,
    /// Seconds a kept-alive connection may wait for its next request.
    #[arg(
        long,
        env = "ENRICH_IDLE_TIMEOUT",
        value_name = "SECS",
        default_value_t = 60.0
    )]
    idle_timeout: f64,
    /// Seconds a response may wait for the client to read more of it.
    #[arg(
        long,
        env = "ENRICH_WRITE_TIMEOUT",
        value_name = "SECS",
        default_value_t = 30.0
    )]
    write_timeout: f64,
    /// Seconds a request may take once it has arrived (504).
    #[arg(
        long,
        env = "ENRICH_REQUEST_TIMEOUT",
        value_name = "SECS",
        default_value_t = 30.0
    )]
    request_timeout: f64,
    /// Seconds a shutdown (SIGTERM, Ctrl-C) waits for requests in progress before it closes
    /// their connections.
    #[arg(
        long,
        env = "ENRICH_SHUTDOWN_TIMEOUT",
        value_name = "SECS",
        default_value_t = 10.0
    )]
    shutdown_timeout: f64,
}

impl ServeLimits {
    pub(crate) fn limits(&self) -> Result<Limits, Error> {
        let secs = |flag: &str, value: f64| {
            Duration::try_from_secs_f64(value)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "--{flag} {value} is not a positive number of seconds"
                    ))
                })
        };
        Ok(Limits::new()
            .max_body_bytes(self.max_body_bytes)
            .max_activities(self.max_activities)
            .max_references(self.max_references)
            .max_response_bytes(self.max_response_bytes)
            .max_batch_ids(self.max_batch_ids)
            .max_in_flight_bytes(self.max_in_flight_bytes)
            .max_connections(self.max_connections.max(1))
            .header_timeout(secs("header-timeout", self.header_timeout)?)
            .body_timeout(secs("body-timeout", self.body_timeout)?)
            .idle_timeout(secs("idle-timeout", self.idle_timeout)?)
            .write_timeout(secs("write-timeout", self.write_timeout)?)
            .request_timeout(secs("request-timeout", self.request_timeout)?)
            .shutdown_timeout(secs("shutdown-timeout", self.shutdown_timeout)?))
    }
}

/// The strategies `--strategy` names.
#[derive(Debug, Clone)]
pub(crate) struct Strategies(pub(crate) Vec<Strategy>);

/// A strategy by its name, or `all` of them.
fn strategy_or_all(name: &str) -> Result<Strategies, String> {
    if name.eq_ignore_ascii_case("all") {
        return Ok(Strategies(Strategy::ALL.to_vec()));
    }
    Strategy::from_str(name, true)
        .map(|one| Strategies(vec![one]))
        .map_err(|_| format!("{name:?} is not one of engine, naive, mget, all"))
}

#[derive(Debug, Subcommand)]
pub(crate) enum Users {
    /// Create a user and print it.
    Add {
        /// 1 to 255 of A-Z, a-z, 0-9, '-' and '_'.
        id: String,
        /// The user's data: a JSON object, or - to read it from standard input
        /// (at most 1 MiB).
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
        /// The new data: a JSON object, or - to read it from standard input
        /// (at most 1 MiB).
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

#[derive(Debug, Subcommand)]
pub(crate) enum Collections {
    /// Create an entry and print it.
    Add {
        /// The collection: 1 to 255 of A-Z, a-z, 0-9, '-' and '_'.
        name: String,
        /// The entry's id (same rule); a random UUID if not given.
        #[arg(long)]
        id: Option<String>,
        /// The entry's data: a non-empty JSON object, or - to read it from standard input
        /// (at most 1 MiB).
        #[arg(long)]
        data: String,
    },
    /// Print an entry.
    Get {
        /// The collection.
        name: String,
        /// The entry's id.
        id: String,
    },
    /// Replace an entry's data and print the entry.
    Update {
        /// The collection.
        name: String,
        /// The entry's id.
        id: String,
        /// The new data: a non-empty JSON object, or - to read it from standard input
        /// (at most 1 MiB).
        #[arg(long)]
        data: String,
    },
    /// Delete an entry; prints {}.
    Delete {
        /// The collection.
        name: String,
        /// The entry's id.
        id: String,
    },
    /// Import NDJSON lines {"collection":…,"id":…,"data":{…}} from a file or standard input;
    /// an entry that exists is replaced (keeping its created_at), a line without id gets one.
    Import {
        /// The file to read; - or nothing for standard input.
        file: Option<PathBuf>,
    },
}

/// A positive number of seconds, such as `0.5`.
fn positive_secs(text: &str) -> Result<Duration, String> {
    (text.trim().parse::<f64>().ok())
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a positive number of seconds"))
}

/// `4096`, `64K`, `64M`, `1G` (powers of 1024; `KiB`, `MB`… are read the same).
fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits);
    let number: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a number of bytes"))?;
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return Err(format!("{text:?}: the suffix must be K, M or G")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `--max-pending-output`: a number of bytes as [`parse_bytes`] takes it, at least one and
/// under 4 GiB (the budget is counted in `u32` permits).
fn parse_budget(text: &str) -> Result<usize, String> {
    let bytes = parse_bytes(text)?;
    if bytes == 0 || bytes > u32::MAX as usize {
        return Err(format!("{text:?}: must be at least 1 byte and under 4G"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::{parse_budget, parse_bytes};

    #[test]
    fn sizes_take_suffixes_in_powers_of_1024() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("1gib"), Ok(1 << 30));
        // `--file-cache`'s and `--l1-bytes`' defaults, as the library has them.
        assert_eq!(parse_bytes("1G"), Ok(enrich::store::DEFAULT_FILE_CACHE));
        assert_eq!(parse_bytes("256M"), Ok(enrich::DEFAULT_L1_BYTES as usize));
        assert!(parse_bytes("12T").is_err());
        assert!(parse_bytes("M").is_err());
        assert!(parse_bytes("-1").is_err());
    }

    /// Every flag of bytes takes the same suffixes, the server's limits too.
    #[test]
    fn the_servers_byte_limits_take_suffixes() {
        use clap::Parser;
        let cli = super::Cli::try_parse_from([
            "enrich",
            "serve",
            "--max-body-bytes",
            "2M",
            "--max-response-bytes",
            "8M",
            "--max-in-flight-bytes",
            "1G",
        ])
        .unwrap();
        let super::Command::Serve { limits, .. } = cli.command else {
            panic!("not serve");
        };
        assert_eq!(
            (
                limits.max_body_bytes,
                limits.max_response_bytes,
                limits.max_in_flight_bytes
            ),
            (2 << 20, 8 << 20, 1 << 30)
        );
    }

    #[test]
    fn an_output_budget_is_at_least_a_byte_and_under_4_gib() {
        assert_eq!(
            parse_budget("64M"),
            Ok(enrich::batch::DEFAULT_MAX_PENDING_OUTPUT)
        );
        assert_eq!(parse_budget("1"), Ok(1));
        assert_eq!(parse_budget("4095M"), Ok(4095 << 20));
        assert!(parse_budget("0").unwrap_err().contains("at least 1 byte"));
        assert!(parse_budget("4G").unwrap_err().contains("under 4G"));
    }
}
