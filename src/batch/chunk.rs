//! The chunk stage: scan a chunk's lines into a page, resolve it, then render it in pieces of
//! complete lines, each holding its size of the run's output budget until it is written.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};

use super::distinct::Distinct;
use super::lines::LineRef;
use super::piece::{Chunk, Piece, Rejected, Spares};
use super::read::RawLines;
use super::write::LaneSender;
use super::{MAX_LINE, PIECE_BYTES, RunOptions};
use crate::cache::MemoPool;
use crate::enricher::{EnrichedPage, Enricher};
use crate::error::Error;
use crate::page::RawPage;
use crate::retry::Backoff;

/// What every chunk task of a run shares.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) enricher: Enricher,
    pub(super) options: RunOptions,
    pub(super) spares: Spares,
    /// Bytes of rendered output not yet written, [`RunOptions::max_pending_output`] in all.
    pub(super) budget: Arc<Semaphore>,
    /// The input file names, by position.
    pub(super) names: Arc<[Arc<str>]>,
    /// The distinct ids of the chunks enriched.
    pub(super) distinct: Distinct,
}

/// A chunk's place in the order in which chunks take their output budget: a chunk waits for
/// the one before it to have taken all of its own, so the chunk the writer is waiting for can
/// always get its share and the budget can never be held by chunks behind it.
#[derive(Debug)]
pub(super) struct Turn {
    mine: Option<oneshot::Receiver<()>>,
    next: Option<oneshot::Sender<()>>,
}

impl Turn {
    /// The turn after `previous` (none for the first chunk), and what the next chunk waits on.
    pub(super) fn after(previous: Option<oneshot::Receiver<()>>) -> (Turn, oneshot::Receiver<()>) {
        let (next, waits) = oneshot::channel();
        let turn = Turn {
            mine: previous,
            next: Some(next),
        };
        (turn, waits)
    }

    async fn wait(&mut self) {
        if let Some(previous) = self.mine.take() {
            // A previous chunk that ended without passing (it failed) has passed all the same.
            let _ = previous.await;
        }
    }

    fn pass(&mut self) {
        self.next.take();
    }
}

/// Scans, resolves and renders one chunk, handing every line over to its `lane` in order.
pub(super) async fn process(
    shared: Arc<Shared>,
    lines: RawLines,
    mut turn: Turn,
    mut stopping: watch::Receiver<bool>,
    mut lane: LaneSender,
) {
    let spares = &shared.spares;
    let options = &shared.options;
    let mut chunk = spares.chunks.take().unwrap_or_else(|| Chunk {
        page: RawPage::with_capacity(options.depth, lines.data.len(), lines.lines.len()),
        rejected: Vec::new(),
    });
    for i in 0..lines.lines.len() {
        if let Some(error) = take(&mut chunk.page, lines.line(i), lines.lines[i].cut) {
            let line = &lines.lines[i];
            let rejected = Rejected {
                file: shared.names[line.file as usize].clone(),
                line: line.number,
                error,
                input: lines.bytes(i).to_vec(),
            };
            chunk.rejected.push((i, rejected));
        }
    }
    let resolved = resolve(
        &shared.enricher,
        &chunk.page,
        options.store_timeout,
        &spares.memos,
        &mut stopping,
    )
    .await;
    let enriched = match resolved {
        Ok(enriched) => enriched,
        Err(failure) => {
            lane.send(failure.unwrap_or(Piece::Abandoned));
            return;
        }
    };
    // The run's count of distinct ids takes only the ids the memo did not answer: the others
    // are counted by the page that taught them to the memo, as only a page answered whole
    // teaches one (a page tried again after a store fault counts all it learned). (Adding
    // every id of every page was 3.7 % of the job's CPU: 1.8M hashes into a shared set, for
    // 51k distinct.)
    let new: Vec<u64> = enriched.unremembered_hashes().collect();
    shared.distinct.add(&new);
    // Every line's fate first: its size is known exactly, nothing is built yet.
    let mut steps = Vec::new();
    let mut piece = Plan::default();
    let mut doc = 0;
    let mut rejected = chunk.rejected.drain(..).peekable();
    for i in 0..lines.lines.len() {
        if let Some((_, rejected)) = rejected.next_if(|(at, _)| *at == i) {
            piece.close(&mut steps);
            steps.push(Step::Rejected(rejected));
            continue;
        }
        let len = enriched.doc_len(doc);
        if len > options.max_line_output {
            piece.close(&mut steps);
            let line = &lines.lines[i];
            steps.push(Step::Rejected(Rejected {
                file: shared.names[line.file as usize].clone(),
                line: line.number,
                error: Error::invalid(format!(
                    "the enriched line would be {len} bytes, over the limit of {} bytes \
                     (--max-line-output)",
                    options.max_line_output
                )),
                input: lines.bytes(i).to_vec(),
            }));
        } else {
            if piece.bytes + len + 1 > PIECE_BYTES {
                piece.close(&mut steps);
            }
            piece.add(doc, len + 1);
        }
        doc += 1;
    }
    debug_assert!(
        rejected.next().is_none(),
        "every rejected line has its place"
    );
    drop(rejected);
    piece.close(&mut steps);

    // The chunk's budget, in input order. When all of it is there at once (the usual case)
    // the turn passes before anything is rendered, so chunks render side by side: holding the
    // turn while rendering made rendering a one-core stage of the job (perf, 1M activities:
    // 16 % of the CPU, one chunk at a time). Otherwise the chunk keeps the turn and takes
    // each piece's share as the writer frees it, rendering as it goes, as the chunk the writer
    // waits for must never wait for chunks behind it.
    turn.wait().await;
    let mut steps = steps.into_iter().peekable();
    let mut ready = Vec::new();
    while let Some(step) = steps.peek() {
        let budget = match step {
            Step::Lines(plan) => match plan.try_budget(&shared) {
                Some(budget) => Some(budget),
                None => break,
            },
            Step::Rejected(_) => None,
        };
        ready.push((steps.next().expect("peeked"), budget));
    }
    if steps.peek().is_none() {
        turn.pass();
    }
    for (step, budget) in ready {
        step.hand_over(&shared, &enriched, &mut lane, budget).await;
    }
    for step in steps {
        step.hand_over(&shared, &enriched, &mut lane, None).await;
    }
    turn.pass();
    let stats = enriched.stats();
    drop(enriched);
    let mut lines = lines;
    lines.clear();
    spares.lines.put(lines);
    lane.send(Piece::Done { chunk, stats });
}

/// What a chunk hands over, in line order, once planned.
#[derive(Debug)]
enum Step {
    /// Documents to render as one piece.
    Lines(Plan),
    Rejected(Rejected),
}

impl Step {
    /// Sends the step on: a piece is rendered with `budget`, its share of the output budget,
    /// or first takes it (all of it for a piece larger than the budget, which is then
    /// rendered alone).
    async fn hand_over(
        self,
        shared: &Shared,
        enriched: &EnrichedPage<'_>,
        lane: &mut LaneSender,
        budget: Option<OwnedSemaphorePermit>,
    ) {
        let plan = match self {
            Step::Rejected(rejected) => {
                lane.send(Piece::Rejected(rejected));
                return;
            }
            Step::Lines(plan) => plan,
        };
        let budget = match budget {
            Some(budget) => budget,
            None => shared
                .budget
                .clone()
                .acquire_many_owned(plan.share(shared))
                .await
                .expect("the output budget is never closed"),
        };
        let Plan { docs, bytes } = plan;
        let mut out = shared.spares.outputs.take().unwrap_or_default();
        out.reserve_exact(bytes);
        let lines = docs.len() as u64;
        for doc in docs {
            enriched.write(doc, &mut out);
            out.push(b'\n');
        }
        debug_assert_eq!(out.len(), bytes, "doc_len is exact");
        lane.send(Piece::Lines { out, lines, budget });
    }
}

/// Documents of a chunk to be rendered as one piece.
#[derive(Debug, Default)]
struct Plan {
    docs: std::ops::Range<usize>,
    /// Their output with a newline each.
    bytes: usize,
}

impl Plan {
    fn add(&mut self, doc: usize, bytes: usize) {
        if self.docs.is_empty() {
            self.docs = doc..doc;
        }
        self.docs.end = doc + 1;
        self.bytes += bytes;
    }

    /// Ends the piece planned so far, if any.
    fn close(&mut self, steps: &mut Vec<Step>) {
        let plan = std::mem::take(self);
        if !plan.docs.is_empty() {
            steps.push(Step::Lines(plan));
        }
    }

    /// The piece's share of the output budget: its bytes, or the whole budget.
    fn share(&self, shared: &Shared) -> u32 {
        (self.bytes.min(shared.options.max_pending_output) as u32).max(1)
    }

    /// The piece's share, if the budget has it now.
    fn try_budget(&self, shared: &Shared) -> Option<OwnedSemaphorePermit> {
        shared
            .budget
            .clone()
            .try_acquire_many_owned(self.share(shared))
            .ok()
    }
}

/// Resolves a page, retrying through store faults for up to `timeout`, unless the run starts
/// stopping while it waits. `Err(None)` when it gave up for that reason.
async fn resolve<'p>(
    enricher: &Enricher,
    page: &'p RawPage,
    timeout: Duration,
    memos: &MemoPool,
    stopping: &mut watch::Receiver<bool>,
) -> std::result::Result<EnrichedPage<'p>, Option<Piece>> {
    let first_failure = Instant::now();
    let mut backoff = Backoff::new();
    let mut failed = false;
    loop {
        match enricher.enrich_page_with(page, memos).await {
            Ok(enriched) => return Ok(enriched),
            Err(err) if err.is_transient() => {
                let waited = if failed {
                    first_failure.elapsed()
                } else {
                    failed = true;
                    Duration::ZERO
                };
                if waited >= timeout {
                    return Err(Some(Piece::Failed(err.context(format!(
                        "gave up after {} s of store faults",
                        timeout.as_secs_f64()
                    )))));
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff.pause().min(timeout - waited)) => {}
                    _ = stopping.wait_for(|stop| *stop) => return Err(None),
                }
            }
            Err(err) => return Err(Some(Piece::Failed(err))),
        }
    }
}

/// Adds a line to the page, or says why it is rejected. `cut`: the reading stopped at the
/// line, over the limit, maybe before its end, so its length is not told.
fn take(page: &mut RawPage, line: LineRef<'_>, cut: bool) -> Option<Error> {
    match line {
        LineRef::Text(text) => match page.push(text) {
            Ok(()) => None,
            Err(_) if super::lines::is_blank(text) => {
                Some(Error::invalid("empty line: expected a JSON object"))
            }
            Err(error) if spans_lines(text) => Some(Error::invalid(format!(
                "{} (input must be NDJSON: one JSON document per line)",
                error.message()
            ))),
            Err(error) => Some(error),
        },
        LineRef::TooLong { .. } if cut => Some(Error::invalid(format!(
            "line is over the limit of {MAX_LINE} bytes"
        ))),
        LineRef::TooLong { len, .. } => Some(Error::invalid(format!(
            "line is {len} bytes, over the limit of {MAX_LINE} bytes"
        ))),
    }
}

/// True for a line that looks like part of a document written over several lines (pretty
/// printed JSON): a document that ends too soon (`{`, `[`, `{"a": 1,`), a closing bracket, or a
/// lone `"key": value` member.
fn spans_lines(text: &[u8]) -> bool {
    let cut = serde_json::from_slice::<serde::de::IgnoredAny>(text).is_err_and(|e| e.is_eof());
    let trimmed = text.trim_ascii();
    let closes = matches!(trimmed.first(), Some(b'}' | b']'));
    let member = trimmed.first() == Some(&b'"')
        && serde_json::Deserializer::from_slice(trimmed)
            .into_iter::<String>()
            .next()
            .is_some_and(|key| key.is_ok())
        && memchr::memmem::find(trimmed, b"\":").is_some();
    cut || closes || member
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_printed_json_is_recognized() {
        for line in [
            &b"{"[..],
            b"[",
            b"  {",
            b"{\"a\": 1,",
            b"  \"actor\": \"SU:x\",",
            b"  \"n\": 1",
            b"}",
            b"  ],",
        ] {
            assert!(spans_lines(line), "{}", String::from_utf8_lossy(line));
        }
        for line in [
            &b"not json"[..],
            b"\"SU:x\"",
            b"[1,2]",
            b"{\"a\":1}}",
            b"{\"a\":\"caf\xe9\"}",
        ] {
            assert!(!spans_lines(line), "{}", String::from_utf8_lossy(line));
        }
    }
}
