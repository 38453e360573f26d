//! The chunk stage: scan a chunk's lines into a page, resolve it, then render it in pieces of
//! complete lines, each holding its size of the run's output budget until it is written.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};

use super::distinct::Distinct;
use super::lines::LineRef;
use super::piece::{Chunk, Piece, Rejected, Spares};
use super::read::RawLines;
use super::write::LaneSender;
use super::{MAX_LINE, PIECE_BYTES, RunOptions};
use crate::enricher::{EnrichedPage, Enricher, TooLarge};
use crate::error::Error;
use crate::page::RawPage;
use crate::retry::Backoff;
use crate::stats::EnrichStats;
use crate::store::UserSource;

/// What every chunk task of a run shares.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) enricher: Enricher<dyn UserSource>,
    pub(super) options: RunOptions,
    pub(super) spares: Spares,
    /// Bytes of rendered output not yet written, [`RunOptions::max_pending_output`] in all.
    pub(super) budget: Arc<Semaphore>,
    /// The input file names, by position.
    pub(super) names: Arc<[Arc<str>]>,
    /// The distinct ids of the chunks enriched.
    pub(super) distinct: Distinct,
    /// Set while pages are being retried through store faults, so that the log says once
    /// that the store is down and once that it is back.
    pub(super) store_down: AtomicBool,
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
    let allowance = options.page_allowance();
    let resolved = resolve(&shared, &chunk.page, allowance, &mut stopping).await;
    let mut rejected = std::mem::take(&mut chunk.rejected);
    match resolved {
        Ok(Ok(enriched)) => {
            deliver_whole(
                &shared,
                &lines,
                &mut rejected,
                enriched,
                &mut turn,
                &mut lane,
            )
            .await
        }
        Ok(Err(too_large)) => {
            let mut parts = Parts {
                shared: &shared,
                lines: &lines,
                turn: &mut turn,
                stopping: &mut stopping,
                lane: &mut lane,
                allowance,
            };
            if !parts.deliver(&mut rejected, too_large).await {
                return;
            }
        }
        Err(failure) => {
            lane.send(failure.unwrap_or(Piece::Abandoned));
            return;
        }
    }
    chunk.rejected = rejected;
    let mut lines = lines;
    lines.clear();
    spares.lines.put(lines);
    lane.send(Piece::Done(chunk));
}

/// Teaches the run's count of distinct ids what a resolved page found.
fn count_distinct(shared: &Shared, enriched: &EnrichedPage<'_>) {
    // The run's count of distinct ids takes only the ids the memo did not answer: the others
    // are counted by the page that taught them to the memo, as only a page answered whole
    // teaches one (a page tried again after a store fault counts all it learned). (Adding
    // every id of every page was 3.7 % of the job's CPU: 1.8M hashes into a shared set, for
    // 51k distinct.)
    let new: Vec<u64> = enriched.unremembered_hashes().collect();
    shared.distinct.add(&new);
}

/// Every line's fate, for the lines `range` of a chunk whose resolved page `enriched` holds
/// the ones not `rejected` at their scan (the chunk's rejections, by position, in order): its
/// size is known exactly, nothing is built yet.
fn plan(
    shared: &Shared,
    lines: &RawLines,
    range: std::ops::Range<usize>,
    rejected: &mut std::iter::Peekable<impl Iterator<Item = (usize, Rejected)>>,
    enriched: &EnrichedPage<'_>,
) -> Vec<Step> {
    let options = &shared.options;
    let mut steps = Vec::new();
    let mut piece = Plan::default();
    let mut doc = 0;
    for i in range {
        if let Some((_, rejected)) = rejected.next_if(|(at, _)| *at == i) {
            piece.close(&mut steps);
            steps.push(Step::Rejected(rejected));
            continue;
        }
        let len = enriched.doc_len(doc);
        if len > options.max_line_output {
            piece.close(&mut steps);
            steps.push(Step::Rejected(over_line_output(
                shared,
                lines,
                i,
                format!("would be {len} bytes"),
            )));
        } else {
            if piece.bytes + len + 1 > PIECE_BYTES {
                piece.close(&mut steps);
            }
            piece.add(doc, len + 1);
        }
        doc += 1;
    }
    piece.close(&mut steps);
    steps
}

/// Line `i` of a chunk, rejected as over [`RunOptions::max_line_output`]: its output `would`.
fn over_line_output(shared: &Shared, lines: &RawLines, i: usize, would: String) -> Rejected {
    let line = &lines.lines[i];
    Rejected {
        file: shared.names[line.file as usize].clone(),
        line: line.number,
        error: Error::invalid(format!(
            "the enriched line {would}, over the limit of {} bytes (--max-line-output)",
            shared.options.max_line_output
        )),
        input: lines.bytes(i).to_vec(),
    }
}

/// Hands over a chunk resolved as one page (the usual case).
async fn deliver_whole(
    shared: &Shared,
    lines: &RawLines,
    rejected: &mut Vec<(usize, Rejected)>,
    enriched: EnrichedPage<'_>,
    turn: &mut Turn,
    lane: &mut LaneSender,
) {
    count_distinct(shared, &enriched);
    lane.send(Piece::Enriched(enriched.stats()));
    let mut rejected = rejected.drain(..).peekable();
    let steps = plan(
        shared,
        lines,
        0..lines.lines.len(),
        &mut rejected,
        &enriched,
    );
    debug_assert!(
        rejected.next().is_none(),
        "every rejected line has its place"
    );
    drop(rejected);

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
            Step::Lines(plan) => match plan.try_budget(shared) {
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
        step.hand_over(shared, &enriched, lane, budget).await;
    }
    for step in steps {
        step.hand_over(shared, &enriched, lane, None).await;
    }
    turn.pass();
}

/// A chunk whose records are more than a page may hold at once
/// ([`RunOptions::page_allowance`]): it is enriched a part at a time,
/// each part's lines resolved as a page of their own, handed over and let go before the next
/// part is read, so that what a chunk holds stays within its allowance whatever its input
/// names. A part that is refused is halved, down to a single line, which is then rejected:
/// its records alone are over the line limit. After a part that fits, the next is twice as
/// many lines.
///
/// The chunk keeps its turn until its last part, taking each piece's budget as the writer
/// frees it.
struct Parts<'a> {
    shared: &'a Shared,
    lines: &'a RawLines,
    turn: &'a mut Turn,
    stopping: &'a mut watch::Receiver<bool>,
    lane: &'a mut LaneSender,
    allowance: usize,
}

impl Parts<'_> {
    /// Hands over the chunk whose whole page was `refused`; false when a part could not be
    /// resolved (what it sent on says why).
    async fn deliver(&mut self, rejected: &mut Vec<(usize, Rejected)>, refused: TooLarge) -> bool {
        let shared = self.shared;
        let lines = self.lines;
        self.lane.send(Piece::Enriched(read_by(&refused)));
        let mut rejected = rejected.drain(..).peekable();
        let mut part = RawPage::new(shared.options.depth);
        let total = lines.lines.len();
        let mut start = 0;
        let mut len = total.div_ceil(2);
        while start < total {
            let end = (start + len).min(total);
            part.clear();
            for i in start..end {
                // A line refused at the chunk's scan is refused again, and is in `rejected`.
                let _ = take(&mut part, lines.line(i), lines.lines[i].cut);
            }
            let resolved = resolve(shared, &part, self.allowance, self.stopping).await;
            match resolved {
                Err(failure) => {
                    self.lane.send(failure.unwrap_or(Piece::Abandoned));
                    return false;
                }
                Ok(Err(refused)) if end - start > 1 => {
                    self.lane.send(Piece::Enriched(read_by(&refused)));
                    len = (end - start) / 2;
                    continue;
                }
                Ok(Err(refused)) => {
                    // One line, not refused at its scan (its page would be empty and fit).
                    self.lane.send(Piece::Enriched(read_by(&refused)));
                    let would = format!("would be at least {} bytes", refused.at_least);
                    let line = over_line_output(shared, lines, start, would);
                    self.lane.send(Piece::Rejected(line));
                }
                Ok(Ok(enriched)) => {
                    count_distinct(shared, &enriched);
                    self.lane.send(Piece::Enriched(enriched.stats()));
                    let steps = plan(shared, lines, start..end, &mut rejected, &enriched);
                    self.turn.wait().await;
                    for step in steps {
                        step.hand_over(shared, &enriched, self.lane, None).await;
                    }
                    len = (end - start) * 2;
                }
            }
            start = end;
        }
        debug_assert!(
            rejected.next().is_none(),
            "every rejected line has its place"
        );
        // Passed only once the chunk before has passed (had every part been a rejected line).
        self.turn.wait().await;
        self.turn.pass();
        true
    }
}

/// The reads of a page that was `refused`: its other counts are the page's, counted when its
/// parts are.
fn read_by(refused: &TooLarge) -> EnrichStats {
    EnrichStats {
        coalesced: refused.stats.coalesced,
        fetched: refused.stats.fetched,
        store_calls: refused.stats.store_calls,
        ..EnrichStats::default()
    }
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

/// Resolves a page within `allowance` bytes of records, retrying through store faults for up
/// to the run's store timeout, unless the run starts stopping while it waits. `Err(None)` when
/// it gave up for that reason. The first fault of a run's outage is logged as a warning, and
/// the first page answered after it.
async fn resolve<'p>(
    shared: &Shared,
    page: &'p RawPage,
    allowance: usize,
    stopping: &mut watch::Receiver<bool>,
) -> std::result::Result<std::result::Result<EnrichedPage<'p>, TooLarge>, Option<Piece>> {
    let timeout = shared.options.store_timeout;
    let first_failure = Instant::now();
    let mut backoff = Backoff::new();
    let mut failed = false;
    loop {
        let resolved = (shared.enricher)
            .enrich_page_with(page, &shared.spares.memos, allowance)
            .await;
        match resolved {
            Ok(enriched) => {
                if failed && shared.store_down.swap(false, Ordering::Relaxed) {
                    tracing::warn!("the store answers again; the run goes on");
                }
                return Ok(enriched);
            }
            Err(err) if err.is_transient() => {
                let waited = if failed {
                    first_failure.elapsed()
                } else {
                    failed = true;
                    if !shared.store_down.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "{err}; retrying for up to {} s (--store-timeout)",
                            timeout.as_secs_f64()
                        );
                    }
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
            Err(error) if text.starts_with(super::lines::BOM) => Some(Error::invalid(format!(
                "{} (the line starts with a UTF-8 byte order mark, which NDJSON has not)",
                error.message()
            ))),
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
    fn a_byte_order_mark_is_named() {
        let mut page = RawPage::new(crate::shape::Depth::TopLevel);
        let line = b"\xEF\xBB\xBF{\"actor\":\"SU:x\"}";
        let error = take(&mut page, LineRef::Text(line), false).unwrap();
        assert!(error.message().contains("byte order mark"), "{error}");
        assert!(take(&mut page, LineRef::Text(&line[3..]), false).is_none());
    }

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
