//! Batch work over NDJSON: the job behind `enrich run`, the imports behind `enrich users
//! import` and `enrich collections import`, and the line reader they all read with.
//!
//! # The job
//!
//! Three stages run side by side, so both cores work:
//! 1. a reader task cuts the input into chunks of lines, handing a chunk on when it is full or
//!    when the input pauses (so a line written into a pipe is answered at once, not when a
//!    batch fills);
//! 2. each chunk is a task of its own that validates and scans its lines into a
//!    [`RawPage`](crate::RawPage),
//!    resolves it (a memo of the L1's answers first, then the L1, then one store call, retried
//!    through store faults up to the store timeout) and renders it in pieces of complete lines;
//!    up to [`IN_FLIGHT`] chunks (four per worker thread of the runtime, if that is more; a
//!    chunk of more than 2 MiB of input counting as two) are in the works at once, on any
//!    core, each with a memo and buffers of its own taken from small pools;
//! 3. the pieces are written in input order: into a regular file by the chunks themselves
//!    (whichever hands over the piece due next writes it, and what became due behind it, on
//!    its own core), into a pipe or any other writer by a thread of its own.
//!
//! Every input line ends as exactly one output line or one rejected line.
//!
//! # Bounds
//!
//! What a run holds is bounded by what it is about to write, not by what it reads: an enriched
//! line can be thousands of times its input (a short reference becomes a user of up to
//! 10 kB). Once a chunk is resolved, the exact size of each of its lines is known before
//! anything is built ([`crate::EnrichedPage::doc_len`]): a line whose output would be over
//! [`RunOptions::max_line_output`] is rejected like any bad line, and the others are rendered
//! in pieces of about [`PIECE_BYTES`], each of which first takes its size from a budget of
//! [`RunOptions::max_pending_output`] bytes shared by the whole run and gives it back once
//! written and its buffer given up. Chunks take their budget in input order, so the chunk the
//! writer waits for is never starved by the chunks behind it.
//!
//! What a chunk reads is bounded the same way: its page is resolved within an allowance of
//! record bytes (the larger of [`RunOptions::max_line_output`] and 16 MiB), the misses read in
//! waves that stop once the distinct records resolved are over it
//! ([`Enricher::enrich_page_within`](crate::Enricher::enrich_page_within)). A chunk whose
//! references name more (an unusual or crafted input: 4 MiB of short references can name
//! hundreds of thousands of records) is enriched a part of its lines at a time, each part
//! written before the next is read, and a line whose records alone are over the allowance is
//! rejected without reading the rest. So the records a run holds for its chunks are at most
//! the chunks in the works times the allowance (and one record of the largest size each),
//! whatever the input names; a usual chunk is resolved whole, in one store call.
//!
//! # Stopping
//!
//! A [`Stop`] (SIGINT or SIGTERM in the binary) ends the reading; chunks in flight are finished
//! and written, except one still waiting out a store fault, which is dropped whole with every
//! chunk after it. A second stop ends the writing at the next line boundary. Either way the
//! output ends with a complete line, and the summary says the run was interrupted; but after a
//! second stop the run waits no more than 2 s for the line being written, so an output whose
//! reader has not taken a long line by then ends part way through it.

mod chunk;
mod distinct;
mod entries;
mod files;
mod import;
mod lines;
mod piece;
mod read;
mod run;
mod write;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::AsyncRead;

use crate::error::Error;
use crate::shape::Depth;
use crate::stats::EnrichStats;

pub use self::entries::{
    EntryImportError, EntryImportSummary, import_entries, import_entries_until, parse_entry_line,
};
pub use self::files::{FileId, check_outputs, follow_links};
pub use self::import::{
    IMPORT_BATCH, ImportError, ImportEvent, ImportSummary, import_users, import_users_until,
    parse_import_line,
};
pub use self::lines::{Line, LineReader, LineRef, is_blank};
pub use self::run::run;
pub use self::write::Output;

/// The longest input line accepted, in bytes (a line ending, `\n` or `\r\n`, not counted).
pub const MAX_LINE: usize = 1 << 20;

/// The default of [`RunOptions::max_line_output`]: 64 MiB, room for about 6,000 references to
/// users of the maximum size (10,240 bytes), or a feed response of a few thousand activities
/// with typical users, while one line still fits many times over in a run's memory.
pub const DEFAULT_MAX_LINE_OUTPUT: usize = 64 << 20;

/// The default of [`RunOptions::max_distinct_ids`]: counted exactly, a million ids take about
/// 16 MiB; past them the count is estimated in a fixed 200 KiB.
pub const DEFAULT_MAX_DISTINCT_IDS: u64 = 1_000_000;

/// The default of [`RunOptions::max_pending_output`]: 64 MiB.
pub const DEFAULT_MAX_PENDING_OUTPUT: usize = 64 << 20;

/// The bytes of records a page is resolved within when [`RunOptions::max_line_output`] is
/// smaller: enough for a usual page (1,024 lines naming a few thousand users of a few hundred
/// bytes) to be resolved whole whatever the line limit.
const MIN_PAGE_READS: usize = 16 << 20;

/// Lines per page at most.
const PAGE_LINES: usize = 1024;

/// Bytes per page at most (compacted input).
const PAGE_BYTES: usize = 4 << 20;

/// Pages being resolved at once, at least: a run on a runtime with more worker threads than
/// a quarter of this keeps four pages in the works per worker, so that every worker has a
/// page to scan while others wait for the store or for their turn to be written.
///
/// Four rather than two per worker for a run whose pages wait on the store (1M activities
/// naming 707k users, most loaded once: 3.18 → 2.91 s over Redis, 3.77 → 3.45 s over the file
/// store; eight per worker no better); a run whose users are in the L1 gains nothing and holds
/// 11 MB more at its peak (99 MB instead of 88 MB). BENCHMARKS.md, fifth pass.
pub const IN_FLIGHT: usize = 8;

/// Pages in the works at once on the current runtime: [`IN_FLIGHT`], or four per worker
/// thread if that is more.
fn in_flight() -> usize {
    let workers = tokio::runtime::Handle::try_current().map_or(1, |rt| rt.metrics().num_workers());
    IN_FLIGHT.max(4 * workers)
}

/// Enriched output handed to the writer at a time, at most (unless one line is larger): small
/// enough that a chunk whose output is large is written as it is rendered, large enough that a
/// usual chunk (1,024 lines of a few kB) is a single write.
pub const PIECE_BYTES: usize = 4 << 20;

/// After a second stop, how long the writing may take to finish the piece it is on (only a
/// pipe nobody reads can take longer) before the run ends without it.
const FORCED_STOP_GRACE: Duration = Duration::from_secs(2);

/// How a run treats its input.
#[derive(Debug, Clone)]
#[must_use]
pub struct RunOptions {
    depth: Depth,
    store_timeout: Duration,
    max_line_output: usize,
    max_pending_output: usize,
    max_distinct_ids: u64,
    min_page_reads: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions::new()
    }
}

impl RunOptions {
    /// Top-level references, a 30 s store timeout, the default output limits.
    pub fn new() -> Self {
        RunOptions {
            depth: Depth::TopLevel,
            store_timeout: Duration::from_secs(30),
            max_line_output: DEFAULT_MAX_LINE_OUTPUT,
            max_pending_output: DEFAULT_MAX_PENDING_OUTPUT,
            max_distinct_ids: DEFAULT_MAX_DISTINCT_IDS,
            min_page_reads: MIN_PAGE_READS,
        }
    }

    /// How deep to look for references.
    pub fn depth(mut self, depth: Depth) -> Self {
        self.depth = depth;
        self
    }

    /// How long to keep retrying a page while the store is unavailable.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// The largest enriched line written, in bytes (without its newline); a line whose output
    /// would be larger is rejected. Default [`DEFAULT_MAX_LINE_OUTPUT`]. The records a chunk
    /// of input reads at once are bounded by it too, or by 16 MiB if that is more (see the
    /// [module docs](crate::batch)).
    pub fn max_line_output(mut self, bytes: usize) -> Self {
        self.max_line_output = bytes;
        self
    }

    /// Enriched output held in memory waiting to be written, across the whole run, at most
    /// (a single line larger than this is rendered alone, once everything before it is
    /// written). Default [`DEFAULT_MAX_PENDING_OUTPUT`].
    pub fn max_pending_output(mut self, bytes: usize) -> Self {
        self.max_pending_output = bytes.clamp(1, u32::MAX as usize);
        self
    }

    /// Distinct ids the run counts exactly, at most: past them [`RunSummary::distinct_users`]
    /// is an estimate (within a few percent; [`RunSummary::distinct_estimated`] says so), and
    /// the count's memory stops growing. Default [`DEFAULT_MAX_DISTINCT_IDS`].
    pub fn max_distinct_ids(mut self, ids: u64) -> Self {
        self.max_distinct_ids = ids;
        self
    }

    /// The bytes of records (users, entries) a page of input holds at once, at most: the
    /// larger of [`RunOptions::max_line_output`] and 16 MiB. A page whose references name more
    /// is resolved a part at a time.
    fn page_allowance(&self) -> usize {
        self.max_line_output.max(self.min_page_reads)
    }

    /// Sets the least [`RunOptions::page_allowance`], so that tests reach a page's parts with
    /// small records.
    #[cfg(test)]
    fn min_page_reads(mut self, bytes: usize) -> Self {
        self.min_page_reads = bytes;
        self
    }

    /// How long a page is retried while the store is unavailable.
    pub fn store_timeout_value(&self) -> Duration {
        self.store_timeout
    }
}

/// An input of a run: a name for messages and rejected lines, and its bytes.
pub struct Source {
    name: String,
    reader: Reader,
}

/// An input's bytes to be read, or how to open them.
type Input = Box<dyn AsyncRead + Unpin + Send>;

enum Reader {
    Open(Input),
    /// Opened when the run comes to it.
    Deferred(Box<dyn FnOnce() -> BoxFuture<'static, crate::error::Result<Input>> + Send>),
}

impl Source {
    /// An input called `name` (a path, or `-` for standard input).
    pub fn new(name: impl Into<String>, reader: impl AsyncRead + Unpin + Send + 'static) -> Self {
        Source {
            name: name.into(),
            reader: Reader::Open(Box::new(reader)),
        }
    }

    /// An input called `name`, opened by `open` only when the run comes to it and closed when
    /// it is read: a run over thousands of files holds one of them open at a time, not all of
    /// them from the start. A failure to open ends the run there, after the lines before it;
    /// its error is the one `open` gives, which should name the file.
    pub fn deferred<R, F>(
        name: impl Into<String>,
        open: impl FnOnce() -> F + Send + 'static,
    ) -> Self
    where
        R: AsyncRead + Unpin + Send + 'static,
        F: Future<Output = crate::error::Result<R>> + Send + 'static,
    {
        let open = move || -> BoxFuture<'static, crate::error::Result<Input>> {
            Box::pin(async move { Ok(Box::new(open().await?) as Input) })
        };
        Source {
            name: name.into(),
            reader: Reader::Deferred(Box::new(open)),
        }
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("name", &self.name).finish()
    }
}

/// A request to stop a run before the end of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl Stop {
    /// The signal's name.
    pub fn signal_name(self) -> &'static str {
        match self {
            Stop::Interrupt => "SIGINT",
            Stop::Terminate => "SIGTERM",
        }
    }

    /// The exit code of a process stopped by it: 128 + the signal's number.
    pub fn exit_code(self) -> u8 {
        match self {
            Stop::Interrupt => 130,
            Stop::Terminate => 143,
        }
    }
}

/// `interrupted by SIGINT: ` before a summary (a run's, an import's) that a stop ended.
fn interrupted(f: &mut std::fmt::Formatter<'_>, stop: Option<Stop>) -> std::fmt::Result {
    match stop {
        Some(stop) => write!(f, "interrupted by {}: ", stop.signal_name()),
        None => Ok(()),
    }
}

/// What a run has done so far, for a progress display to read while it runs.
#[derive(Debug, Clone, Default)]
pub struct RunProgress {
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    bytes_read: AtomicU64,
    lines: AtomicU64,
    written: AtomicU64,
}

impl RunProgress {
    /// Nothing done yet.
    pub fn new() -> Self {
        RunProgress::default()
    }

    /// Bytes read from the inputs.
    pub fn bytes_read(&self) -> u64 {
        self.counters.bytes_read.load(Ordering::Relaxed)
    }

    /// Lines written, or rejected and kept (in the rejects file, or the one that ends the run).
    pub fn lines(&self) -> u64 {
        self.counters.lines.load(Ordering::Relaxed)
    }

    /// Lines written.
    pub fn written(&self) -> u64 {
        self.counters.written.load(Ordering::Relaxed)
    }

    fn add_written(&self, lines: u64) {
        self.counters.written.fetch_add(lines, Ordering::Relaxed);
        self.counters.lines.fetch_add(lines, Ordering::Relaxed);
    }

    fn add_rejected(&self, lines: u64) {
        self.counters.lines.fetch_add(lines, Ordering::Relaxed);
    }

    /// Sets the lines done, for a command that counts them itself.
    pub fn set_lines(&self, lines: u64) {
        self.counters.lines.store(lines, Ordering::Relaxed);
    }

    /// `reader`, adding what is read through it to [`RunProgress::bytes_read`].
    pub fn count_reads(
        &self,
        reader: Box<dyn AsyncRead + Unpin + Send>,
    ) -> Box<dyn AsyncRead + Unpin + Send> {
        Box::new(read::Counted {
            inner: reader,
            progress: self.clone(),
        })
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Input lines dealt with: written or rejected.
    pub lines: u64,
    /// Lines written to the output.
    pub written: u64,
    /// Lines rejected.
    pub rejected: u64,
    /// Enrichment counters, summed over the pages written.
    pub stats: EnrichStats,
    /// Distinct users referenced in the whole run: exact up to
    /// [`RunOptions::max_distinct_ids`], estimated past it.
    pub distinct_users: u64,
    /// Whether [`RunSummary::distinct_users`] is an estimate.
    pub distinct_estimated: bool,
    /// Wall time.
    pub elapsed: Duration,
    /// Set if the run was stopped before the end of its input.
    pub interrupted: Option<Stop>,
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.stats.activities as f64 / secs
        } else {
            0.0
        };
        interrupted(f, self.interrupted)?;
        write!(
            f,
            "lines {} (written {}, rejected {}), activities {}, references {}, distinct {}{}, \
             missing {}, L1 hit ratio {:.1}%, store calls {}, elapsed {:.3} s, {:.0} activities/s",
            self.lines,
            self.written,
            self.rejected,
            self.stats.activities,
            self.stats.references,
            if self.distinct_estimated { "~" } else { "" },
            self.distinct_users,
            self.stats.missing,
            self.stats.l1_hit_ratio() * 100.0,
            self.stats.store_calls,
            secs,
            rate
        )
    }
}

/// A run that failed, with what it had written before.
#[derive(Debug, Clone)]
pub struct RunError {
    /// What was written before the failure (every line before the one that failed).
    pub summary: RunSummary,
    /// Why the run failed.
    pub error: Error,
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

/// Displayed as its error, cause included (see [`Error`]): a `source` would print it again.
impl std::error::Error for RunError {}

impl From<RunError> for Error {
    fn from(failed: RunError) -> Error {
        failed.error
    }
}
