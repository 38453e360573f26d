//! `enrich run`: the NDJSON batch job.
//!
//! Three stages run side by side, so both cores work:
//! 1. a reader task cuts the input into chunks of lines, handing a chunk on when it is full or
//!    when the input pauses (so a line written into a pipe is answered at once, not when a
//!    batch fills);
//! 2. each chunk is a task of its own that validates and scans its lines into a [`RawPage`],
//!    resolves it (a memo of the L1's answers first, then the L1, then one store call, retried
//!    through store faults up to the store timeout) and renders it; up to [`IN_FLIGHT`] chunks
//!    are in the works at once, on any core, each with a memo and buffers of its own taken from
//!    small pools;
//! 3. the writer takes the rendered chunks in input order and writes them.
//!
//! Every input line ends as exactly one output line or one rejected line.

mod files;

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::cache::Memo;
use crate::commands::Input;
use crate::enricher::Enricher;
use crate::error::{Error, ErrorKind, Result};
use crate::lines::{LineReader, LineRef};
use crate::page::{Depth, RawPage};
use crate::stats::EnrichStats;

pub use files::{FileId, check_outputs};

/// The longest line accepted.
pub const MAX_LINE: usize = 1 << 20;

/// Lines per page at most.
const PAGE_LINES: usize = 1024;

/// Bytes per page at most (compacted input).
const PAGE_BYTES: usize = 4 << 20;

/// Pages being resolved at once.
pub const IN_FLIGHT: usize = 4;

/// How a run treats its input.
#[derive(Debug, Clone)]
pub struct RunOptions {
    depth: Depth,
    store_timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions::new()
    }
}

impl RunOptions {
    /// Top-level references, a 30 s store timeout, stop at the first bad line.
    pub fn new() -> Self {
        RunOptions {
            depth: Depth::TopLevel,
            store_timeout: Duration::from_secs(30),
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

    pub(crate) fn store_timeout_value(&self) -> Duration {
        self.store_timeout
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Input lines.
    pub lines: u64,
    /// Lines written to the output.
    pub written: u64,
    /// Lines rejected.
    pub rejected: u64,
    /// Enrichment counters, summed over pages.
    pub stats: EnrichStats,
    /// Distinct users referenced in the whole run.
    pub distinct_users: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.stats.activities as f64 / secs
        } else {
            0.0
        };
        write!(
            f,
            "lines {} (written {}, rejected {}), activities {}, references {}, distinct users {}, \
             missing {}, L1 hit ratio {:.1}%, store calls {}, elapsed {:.3} s, {:.0} activities/s",
            self.lines,
            self.written,
            self.rejected,
            self.stats.activities,
            self.stats.references,
            self.distinct_users,
            self.stats.missing,
            self.stats.l1_hit_ratio() * 100.0,
            self.stats.store_calls,
            secs,
            rate
        )
    }
}

/// A line that could not be enriched.
#[derive(Debug)]
struct Rejected {
    line: u64,
    error: Error,
    input: Vec<u8>,
}

impl Rejected {
    /// `{"line":N,"error":"…","input":"…"}`.
    fn record(&self) -> Vec<u8> {
        let record = serde_json::json!({
            "line": self.line,
            "error": self.error.message(),
            "input": String::from_utf8_lossy(&self.input),
        });
        let mut out = serde_json::to_vec(&record).expect("a JSON value serializes");
        out.push(b'\n');
        out
    }
}

/// Lines as read, not yet looked at.
#[derive(Debug, Default)]
struct RawLines {
    data: Vec<u8>,
    /// Each line's number and where it is in `data`; `Some(len)` for one over the limit, whose
    /// first [`MAX_LINE`] bytes are kept.
    lines: Vec<(u64, Range<usize>, Option<usize>)>,
}

/// Lines in input order: each either a document of the page or rejected.
#[derive(Debug)]
struct Chunk {
    page: RawPage,
    lines: Vec<Option<Rejected>>,
}

/// A chunk with its documents enriched.
struct Rendered {
    chunk: Chunk,
    out: Vec<u8>,
    /// Where each document's output line ends in `out`.
    ends: Vec<usize>,
    stats: EnrichStats,
}

/// Runs the job: enriches every line of `inputs` (read one after the other, numbered as one
/// stream) into `output`. Bad lines go to `rejects` as records if given; otherwise the run stops
/// at the first one, after writing every line before it, with an error naming it.
pub async fn run<W, R>(
    enricher: &Enricher,
    inputs: Vec<Input>,
    output: W,
    rejects: Option<R>,
    options: &RunOptions,
    mut progress: impl FnMut(u64),
) -> Result<RunSummary>
where
    W: AsyncWrite + Unpin,
    R: AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut output = tokio::io::BufWriter::with_capacity(1 << 18, output);
    let mut rejects = rejects.map(|r| tokio::io::BufWriter::new(r));
    let (sender, mut chunks) = mpsc::channel::<Result<RawLines>>(IN_FLIGHT);
    let spares = Spares::default();
    let reader = tokio::spawn(read(inputs, sender, spares.lines.clone()));

    let mut summary = RunSummary::default();
    // Distinct users are counted by the 64-bit hashes of their ids that the chunks computed
    // anyway: the writer only merges numbers. Exact unless two ids collide (odds about one in
    // a million for ten million distinct ids).
    let mut users: HashSet<u64, foldhash::fast::RandomState> = HashSet::default();
    let mut pending = FuturesOrdered::new();
    let mut input_done = false;
    loop {
        tokio::select! {
            chunk = chunks.recv(), if !input_done && pending.len() < IN_FLIGHT => match chunk {
                Some(lines) => {
                    let work = process(
                        enricher.clone(),
                        lines?,
                        options.clone(),
                        spares.clone(),
                    );
                    pending.push_back(tokio::spawn(work));
                }
                None => input_done = true,
            },
            Some(rendered) = pending.next() => {
                let rendered = rendered.map_err(|e| {
                    Error::new(ErrorKind::Internal, "a chunk failed").with_cause(e)
                })??;
                users.extend(rendered.chunk.page.id_hashes().iter().copied());
                summary.stats += rendered.stats;
                write(&rendered, &mut output, rejects.as_mut(), &mut summary).await?;
                progress(summary.lines);
                spares.recycle(rendered);
            },
            else => break,
        }
    }
    output.flush().await.map_err(write_error)?;
    reader
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "input reader failed").with_cause(e))?;
    summary.distinct_users = users.len() as u64;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Writes a rendered chunk in line order; stops at a bad line unless rejects are kept.
async fn write<W: AsyncWrite + Unpin, R: AsyncWrite + Unpin>(
    rendered: &Rendered,
    output: &mut W,
    mut rejects: Option<&mut R>,
    summary: &mut RunSummary,
) -> Result<()> {
    let mut doc = 0;
    let mut written_to = 0;
    for line in &rendered.chunk.lines {
        summary.lines += 1;
        match line {
            None => {
                doc += 1;
                summary.written += 1;
            }
            Some(rejected) => {
                output
                    .write_all(&rendered.out[written_to..end_of(&rendered.ends, doc)])
                    .await
                    .map_err(write_error)?;
                written_to = end_of(&rendered.ends, doc);
                summary.rejected += 1;
                match rejects.as_deref_mut() {
                    Some(rejects) => rejects
                        .write_all(&rejected.record())
                        .await
                        .map_err(write_error)?,
                    None => {
                        output.flush().await.map_err(write_error)?;
                        return Err(rejected
                            .error
                            .clone()
                            .context(format!("line {}", rejected.line)));
                    }
                }
            }
        }
    }
    output
        .write_all(&rendered.out[written_to..])
        .await
        .map_err(write_error)?;
    // Flushed per chunk: a chunk ends where the input paused, and a waiting reader of the
    // output must see its answer now.
    output.flush().await.map_err(write_error)?;
    if let Some(rejects) = rejects {
        rejects.flush().await.map_err(write_error)?;
    }
    Ok(())
}

fn end_of(ends: &[usize], docs: usize) -> usize {
    docs.checked_sub(1).map_or(0, |last| ends[last])
}

fn write_error(err: std::io::Error) -> Error {
    Error::new(ErrorKind::Internal, "cannot write output").with_cause(err)
}

/// Scans, resolves and renders one chunk of lines.
async fn process(
    enricher: Enricher,
    lines: RawLines,
    options: RunOptions,
    spares: Spares,
) -> Result<Rendered> {
    let mut chunk = spares.chunks.take().unwrap_or_else(|| Chunk {
        page: RawPage::with_capacity(options.depth, lines.data.len(), lines.lines.len()),
        lines: Vec::with_capacity(lines.lines.len()),
    });
    for (number, range, too_long) in &lines.lines {
        let text = &lines.data[range.clone()];
        let line = match too_long {
            Some(len) => LineRef::TooLong {
                prefix: text,
                len: *len,
            },
            None => LineRef::Text(text),
        };
        chunk.lines.push(take(&mut chunk.page, (*number, line)));
    }
    let mut lines = lines;
    lines.data.clear();
    lines.lines.clear();
    spares.lines.put(lines);
    let output = spares.outputs.take().unwrap_or_default();
    let mut memo = spares.memos.take().unwrap_or_default();
    let rendered = render(enricher, chunk, options.store_timeout, &mut memo, output).await;
    spares.memos.put(memo);
    rendered
}

/// What goes round between the stages instead of being allocated per chunk: the writer hands
/// each chunk's buffers back for the chunks to come, so a run works in a few warm buffers
/// rather than asking the allocator (and the kernel, for fresh pages) for megabytes per chunk.
#[derive(Debug, Clone, Default)]
struct Spares {
    lines: Pool<RawLines>,
    chunks: Pool<Chunk>,
    /// Rendered bytes and where each line ends.
    outputs: Pool<(Vec<u8>, Vec<usize>)>,
    /// Each chunk in the works borrows a memo, so a memo is only ever used by one task at a
    /// time and popular users are answered without asking the shared L1.
    memos: Pool<Memo>,
}

impl Spares {
    /// Takes back a written chunk's buffers. They are emptied here, on the writer, but freed
    /// nowhere: memory freed on another thread than the one that allocated it is the
    /// allocator's slow path.
    fn recycle(&self, rendered: Rendered) {
        let Rendered {
            mut chunk,
            mut out,
            mut ends,
            ..
        } = rendered;
        chunk.page.clear();
        chunk.lines.clear();
        out.clear();
        ends.clear();
        self.chunks.put(chunk);
        self.outputs.put((out, ends));
    }
}

/// A few spare values of one kind.
#[derive(Debug)]
struct Pool<T>(Arc<Mutex<Vec<T>>>);

impl<T> Clone for Pool<T> {
    fn clone(&self) -> Self {
        Pool(self.0.clone())
    }
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Pool(Arc::default())
    }
}

impl<T> Pool<T> {
    /// More than the chunks in the works can hold at once is never kept.
    const KEEP: usize = IN_FLIGHT + 2;

    fn take(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn put(&self, spare: T) {
        let mut spares = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if spares.len() < Self::KEEP {
            spares.push(spare);
        }
    }
}

/// Enriches a chunk, retrying through store faults for up to `timeout`.
async fn render(
    enricher: Enricher,
    chunk: Chunk,
    timeout: Duration,
    memo: &mut Memo,
    (mut out, mut ends): (Vec<u8>, Vec<usize>),
) -> Result<Rendered> {
    let first_failure = Instant::now();
    let mut delay = Duration::from_millis(50);
    let mut failed = false;
    let enriched = loop {
        match enricher.enrich_page_with(&chunk.page, Some(memo)).await {
            Ok(enriched) => break enriched,
            Err(err) if err.is_transient() => {
                let waited = if failed {
                    first_failure.elapsed()
                } else {
                    failed = true;
                    Duration::ZERO
                };
                if waited >= timeout {
                    return Err(err.context(format!(
                        "gave up after {} s of store faults",
                        timeout.as_secs_f64()
                    )));
                }
                tokio::time::sleep(delay.min(timeout - waited)).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(err) => return Err(err),
        }
    };
    // Enriched documents are a few times their input: size once rather than grow.
    out.reserve(chunk.page.buffered() * 4);
    ends.reserve(chunk.page.len());
    for doc in 0..chunk.page.len() {
        enriched.write(doc, &mut out);
        out.push(b'\n');
        ends.push(out.len());
    }
    let stats = enriched.stats();
    drop(enriched);
    Ok(Rendered {
        chunk,
        out,
        ends,
        stats,
    })
}

/// The reader stage: lines → chunks, handed on when full or when the input pauses.
async fn read(inputs: Vec<Input>, chunks: mpsc::Sender<Result<RawLines>>, spares: Pool<RawLines>) {
    let mut chunk = RawLines::default();
    let mut numbered = 0;
    for input in inputs {
        let mut reader = LineReader::new(input, 1 << 18, MAX_LINE).starting_after(numbered);
        loop {
            let (number, line) = match reader.next_line_ref().await {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(err) => {
                    let _ = chunks.send(Err(err)).await;
                    return;
                }
            };
            let start = chunk.data.len();
            let too_long = match line {
                LineRef::Text(text) => {
                    chunk.data.extend_from_slice(text);
                    None
                }
                LineRef::TooLong { prefix, len } => {
                    chunk.data.extend_from_slice(prefix);
                    Some(len)
                }
            };
            chunk
                .lines
                .push((number, start..chunk.data.len(), too_long));
            let full = chunk.lines.len() >= PAGE_LINES || chunk.data.len() >= PAGE_BYTES;
            if full || !reader.has_buffered() {
                let next = spares.take().unwrap_or_else(|| RawLines {
                    data: Vec::with_capacity(chunk.data.len()),
                    lines: Vec::with_capacity(chunk.lines.len()),
                });
                if chunks
                    .send(Ok(std::mem::replace(&mut chunk, next)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        numbered = reader.number();
    }
    if !chunk.lines.is_empty() {
        let _ = chunks.send(Ok(chunk)).await;
    }
}

/// Adds a line to the page, or says why it is rejected.
fn take(page: &mut RawPage, (number, line): (u64, LineRef<'_>)) -> Option<Rejected> {
    let (input, error) = match line {
        LineRef::Text(text) => match page.push(text) {
            Ok(()) => return None,
            Err(_) if text.iter().all(u8::is_ascii_whitespace) => {
                (text, Error::invalid("empty line: expected a JSON object"))
            }
            Err(error) => (text, error),
        },
        LineRef::TooLong { prefix, len } => (
            prefix,
            Error::invalid(format!(
                "line is {len} bytes, over the limit of {MAX_LINE} bytes"
            )),
        ),
    };
    Some(Rejected {
        line: number,
        error,
        input: input.to_vec(),
    })
}
