//! The job's coordinator: the reader, the chunks in the works and their output, and how a
//! run ends.

use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use super::distinct::Distinct;
use super::{
    FORCED_STOP_GRACE, Output, RunError, RunOptions, RunProgress, RunSummary, Source, Stop, chunk,
    piece, read, write,
};
use crate::enricher::Enricher;
use crate::error::{Error, ErrorKind};

/// Runs the job: enriches every line of `inputs`, read one after the other, into `output`.
/// Bad lines go to `rejects` as records if given; otherwise the run stops at the first one,
/// after writing every line before it, with an error naming its file and line. `stops` ends
/// the run early (see the [module docs](crate::batch)). The enricher may be over a store or
/// over a [`UserSource`](crate::store::UserSource) of the caller's (a job only reads).
pub async fn run<S: ?Sized>(
    enricher: &Enricher<S>,
    inputs: Vec<Source>,
    output: Output,
    rejects: Option<Output>,
    options: &RunOptions,
    progress: &RunProgress,
    mut stops: impl Stream<Item = Stop> + Unpin,
) -> Result<RunSummary, RunError> {
    let started = Instant::now();
    let in_flight = super::in_flight();
    let spares = piece::Spares::new(in_flight);
    let shared = Arc::new(chunk::Shared {
        enricher: enricher.reader(),
        options: options.clone(),
        spares: spares.clone(),
        budget: Arc::new(Semaphore::new(options.max_pending_output)),
        names: read::names(&inputs),
        distinct: Distinct::new(options.max_distinct_ids),
        store_down: std::sync::atomic::AtomicBool::new(false),
    });
    // Without rejects the run ends at its first bad line: one over the limit need not be read
    // to its end.
    let stop_past_cap = rejects.is_none();
    let (ordered, mut reported) =
        match write::Ordered::new(output, rejects, spares.clone(), progress.clone()) {
            Ok(ordered) => ordered,
            Err(err) => {
                let error =
                    Error::new(ErrorKind::Internal, "cannot start the writer").with_cause(err);
                return Err(RunError {
                    summary: RunSummary::default(),
                    error,
                });
            }
        };
    // However the run ends (its future dropped too), the writing ends with it.
    let _ended = write::StopOnDrop(ordered.clone());
    let (sender, mut chunks) = mpsc::channel(in_flight);
    let reader = tokio::spawn(read::read(
        inputs,
        sender,
        spares.lines.clone(),
        progress.clone(),
        stop_past_cap,
    ));
    let slots = in_flight;
    let in_flight = Arc::new(Semaphore::new(slots));
    // A chunk received from the reader, waiting for its slots.
    let mut waiting: Option<read::RawLines> = None;
    let (stopping, stopping_seen) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut reading = true;
    let mut turn = None;
    let mut stopped = None;
    let mut forced_by = None;
    let mut listening = true;
    // `None` when the writing was given up on after a second stop.
    let report = loop {
        let weight = waiting.as_ref().map_or(1, |lines| slots_for(lines, slots));
        let its_slots = in_flight.clone().acquire_many_owned(weight);
        tokio::select! {
            biased;
            report = &mut reported => break Some(report),
            stop = stops.next(), if listening => match stop {
                None => listening = false,
                Some(stop) if stopped.is_none() => {
                    stopped = Some(stop);
                    reader.abort();
                    let _ = stopping.send(true);
                    // The chunks in the works are written; no more are taken.
                    reading = false;
                    ordered.close();
                }
                Some(_) => {
                    ordered.stop();
                    tasks.abort_all();
                    forced_by = Some(tokio::time::Instant::now() + FORCED_STOP_GRACE);
                    listening = false;
                }
            },
            () = async {
                match forced_by {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            } => break None,
            slot = its_slots, if reading && waiting.is_some() => {
                let lines = waiting.take().expect("a chunk is waiting");
                let (mine, next) = chunk::Turn::after(turn.take());
                turn = Some(next);
                let slot = slot.expect("the in-flight slots are never closed");
                tasks.spawn(chunk::process(
                    shared.clone(),
                    lines,
                    mine,
                    stopping_seen.clone(),
                    ordered.lane(Some(slot)),
                ));
            }
            lines = chunks.recv(), if reading && waiting.is_none() => match lines {
                Some(Ok(lines)) => waiting = Some(lines),
                Some(Err(err)) => {
                    reading = false;
                    ordered.fail(err);
                }
                None => {
                    reading = false;
                    ordered.close();
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    };
    reader.abort();
    tasks.abort_all();
    let mut summary = RunSummary {
        elapsed: started.elapsed(),
        interrupted: stopped,
        ..RunSummary::default()
    };
    let report = match report {
        Some(Ok(report)) => report,
        Some(Err(_)) => {
            let error = Error::new(ErrorKind::Internal, "the writer failed");
            return Err(RunError { summary, error });
        }
        None => {
            // The writing is stuck in a write nobody reads (on the writer thread, or in a chunk
            // whose task cannot be waited for); what was written is all there is.
            tasks.detach_all();
            summary.lines = progress.lines();
            summary.written = progress.written();
            summary.rejected = summary.lines.saturating_sub(summary.written);
            return Ok(summary);
        }
    };
    // Aborted chunks stop at their next await. One between teaching the memo and counting its
    // new ids (no await between the two) finishes both first, so the count below misses none
    // of the ids the memo answered for other pages.
    while tasks.join_next().await.is_some() {}
    summary.lines = report.written + report.rejected;
    summary.written = report.written;
    summary.rejected = report.rejected;
    summary.stats = report.stats;
    let distinct = shared.distinct.count();
    summary.distinct_users = distinct.ids;
    summary.distinct_estimated = distinct.estimated;
    match report.end {
        write::End::Finished | write::End::Stopped => Ok(summary),
        write::End::Failed(error) => Err(RunError { summary, error }),
    }
}

/// The in-flight slots a chunk takes: one per 2 MiB of its input, at least one and at most all
/// `slots`. A chunk of short lines takes one, so a usual run has four chunks per worker in the
/// works; a chunk of 4 MiB takes two, as what resolving a chunk costs grows with the
/// references its input holds (some 25–40 bytes per byte of input at the peak, for lines of
/// nothing but distinct short ids: about 440 bytes per reference).
///
/// 64 lines of 1 MB, each naming 45,000 distinct ids of users that do not exist (memory store,
/// release build, two workers): 476–483 MB at the peak with one slot per chunk, 274–285 MB
/// with one per 2 MiB, 221–230 MB with one per MiB; the wall time the same with 2 MiB (2.0 s)
/// and half again with 1 MiB (3.2–3.4 s: a single chunk in the works besides the one written).
/// Feed responses of 100 activities each (4 MiB chunks of ~220 lines): 250–378 MB before,
/// 218–236 MB after, at the same speed.
fn slots_for(lines: &read::RawLines, slots: usize) -> u32 {
    lines.data.len().div_ceil(2 << 20).clamp(1, slots) as u32
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::store::MemoryStore;
    use crate::{NewUser, UserStore};

    /// A writer whose bytes the test reads afterwards.
    #[derive(Clone, Default)]
    struct Collected(Arc<Mutex<Vec<u8>>>);

    impl Write for Collected {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Collected {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    async fn enricher() -> Enricher {
        Enricher::new(users().await)
    }

    async fn users() -> Arc<MemoryStore> {
        let store = Arc::new(MemoryStore::new());
        for i in 0..50 {
            let data = serde_json::json!({ "bio": "b".repeat(i * 40) });
            let user = NewUser::new(&format!("u{i}"), Some(data)).unwrap();
            store.add(&user, false).await.unwrap();
        }
        store
    }

    /// A job over a source of the caller's (read-only: `Enricher::from_source`) writes what a
    /// job over the same users in a store writes.
    #[tokio::test]
    async fn a_job_over_a_source_writes_what_one_over_a_store_does() {
        let users = users().await;
        let store = Enricher::new(users.clone());
        let (expected, rejected, _) = run_with(&store, RunOptions::new()).await;
        let source = Enricher::from_source(users);
        let (out, rejects, summary) = run_with(&source, RunOptions::new()).await;
        assert!(out == expected, "different output");
        assert_eq!(rejects, rejected);
        assert_eq!(summary.written, 5_993);
    }

    /// Lines of very different output sizes, a few bad ones among them.
    fn input() -> String {
        (0..6_000)
            .map(|i| match i % 997 {
                13 => "not json\n".to_string(),
                _ => {
                    let refs: Vec<String> = (0..(i % 40))
                        .map(|r| format!("\"r{r}\":\"SU:u{}\"", (i + r) % 50))
                        .collect();
                    format!("{{\"n\":{i},{}}}\n", refs.join(",")).replace(",}", "}")
                }
            })
            .collect()
    }

    /// Runs [`input`] into `output`, its rejects into `rejects`.
    async fn run_into<S: ?Sized>(
        enricher: &Enricher<S>,
        options: RunOptions,
        output: Output,
        rejects: Output,
    ) -> RunSummary {
        run(
            enricher,
            vec![Source::new(
                "in",
                std::io::Cursor::new(input().into_bytes()),
            )],
            output,
            Some(rejects),
            &options,
            &RunProgress::new(),
            futures::stream::pending(),
        )
        .await
        .unwrap()
    }

    /// Runs [`input`] into writers (the writer thread writes): the output, the rejects.
    async fn run_with<S: ?Sized>(
        enricher: &Enricher<S>,
        options: RunOptions,
    ) -> (String, String, RunSummary) {
        let (out, rejects) = (Collected::default(), Collected::default());
        let output = Output::writer(out.clone());
        let summary = run_into(enricher, options, output, Output::writer(rejects.clone())).await;
        (out.text(), rejects.text(), summary)
    }

    /// Whatever the budget, even smaller than any line, the run writes the same lines in the
    /// same order, and never waits for ever on budget the writer cannot free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn any_budget_writes_the_same_output() {
        let enricher = enricher().await;
        let (expected, rejected, summary) = run_with(&enricher, RunOptions::new()).await;
        assert_eq!(summary.lines, 6_000);
        assert_eq!(summary.rejected, 7);
        // Pages after the first are mostly answered by memos: the count stays exact.
        assert_eq!(summary.distinct_users, 50);
        assert!(summary.stats.activities > 1024, "several pages");
        assert_eq!(rejected.lines().count(), 7);
        for budget in [1, 3_000, 100_000] {
            let (out, rejects, summary) =
                run_with(&enricher, RunOptions::new().max_pending_output(budget)).await;
            assert!(out == expected, "budget {budget}: different output");
            assert_eq!(rejects, rejected);
            assert_eq!(summary.written, 5_993);
            assert_eq!(summary.distinct_users, 50);
        }
    }

    /// A regular file is written by the chunks themselves rather than by a writer thread: the
    /// same lines in the same order, whatever the budget, rejects included.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_regular_file_gets_the_same_output() {
        let enricher = enricher().await;
        let (expected, rejected, _) = run_with(&enricher, RunOptions::new()).await;
        let dir = tempfile::tempdir().unwrap();
        for budget in [1, 3_000, 100_000] {
            let (out, rejects) = (dir.path().join("out"), dir.path().join("rejects"));
            let output = Output::file(std::fs::File::create(&out).unwrap());
            assert!(output.is_regular_file());
            let options = RunOptions::new().max_pending_output(budget);
            let rejected_to = Output::file(std::fs::File::create(&rejects).unwrap());
            let summary = run_into(&enricher, options, output, rejected_to).await;
            assert!(
                std::fs::read_to_string(&out).unwrap() == expected,
                "budget {budget}: different output"
            );
            assert_eq!(std::fs::read_to_string(&rejects).unwrap(), rejected);
            assert_eq!(summary.written, 5_993);
        }
    }

    /// Deferred inputs are opened one at a time, as the run comes to each, and closed once
    /// read; one that cannot be opened ends the run there, after the lines before it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deferred_inputs_are_opened_in_turn() {
        let enricher = enricher().await;
        let open = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        /// Counts the inputs open at once.
        struct Held(Arc<AtomicUsize>, std::io::Cursor<Vec<u8>>);
        impl Drop for Held {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        impl tokio::io::AsyncRead for Held {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.1).poll_read(cx, buf)
            }
        }
        let source = |i: usize| {
            let (open, most) = (open.clone(), most.clone());
            Source::deferred(format!("in{i}"), move || async move {
                if i == 30 {
                    return Err(Error::invalid("cannot open in30"));
                }
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let line = format!("{{\"n\":{i},\"actor\":\"SU:u{}\"}}\n", i % 50);
                Ok(Held(
                    open,
                    std::io::Cursor::new(line.repeat(10).into_bytes()),
                ))
            })
        };
        let out = Collected::default();
        let failed = run(
            &enricher,
            (0..40).map(source).collect(),
            Output::writer(out.clone()),
            None,
            &RunOptions::new(),
            &RunProgress::new(),
            futures::stream::pending(),
        )
        .await
        .unwrap_err();
        assert_eq!(failed.error.message(), "cannot open in30");
        assert_eq!(failed.summary.written, 300);
        let written: Vec<String> = out.text().lines().map(String::from).collect();
        assert_eq!(written.len(), 300);
        assert!(
            written[0].starts_with(r#"{"n":0,"actor":{"#),
            "{}",
            written[0]
        );
        assert!(written[299].starts_with(r#"{"n":29,"#), "{}", written[299]);
        assert_eq!(most.load(Ordering::SeqCst), 1, "one input open at a time");
        assert_eq!(open.load(Ordering::SeqCst), 0, "every input closed");
    }

    /// Ids met on one page only and ids met on every page are each counted once, however
    /// the pages were answered (the memos answer most ids after the first page).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_distinct_count_is_exact_across_pages() {
        let enricher = enricher().await;
        let input: String = (0..5_000)
            .map(|i| {
                let once = if i < 1_500 {
                    format!("once{i}")
                } else {
                    format!("u{}", i % 50)
                };
                format!("{{\"actor\":\"SU:u7\",\"object\":\"SU:{once}\"}}\n")
            })
            .collect();
        for budget in [1, 100_000] {
            let summary = run(
                &enricher,
                vec![Source::new(
                    "in",
                    std::io::Cursor::new(input.clone().into_bytes()),
                )],
                Output::writer(Collected::default()),
                None,
                &RunOptions::new().max_pending_output(budget),
                &RunProgress::new(),
                futures::stream::pending(),
            )
            .await
            .unwrap();
            assert_eq!(summary.written, 5_000);
            assert_eq!(summary.distinct_users, 1_550);
        }
    }

    /// Lines whose output would be over the limit are rejected in place, the others written;
    /// the same when a page's records are over what it may hold at once, so that it is
    /// resolved a part at a time (and a line whose records alone are over is rejected before
    /// all of them are read).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lines_over_the_output_limit_are_rejected_in_place() {
        let enricher = enricher().await;
        let (all, _, _) = run_with(&enricher, RunOptions::new()).await;
        let limit = 20_000;
        let kept: Vec<&str> = all.lines().filter(|l| l.len() <= limit).collect();
        let over = all.lines().filter(|l| l.len() > limit).count();
        assert!(over > 100, "{over}");
        let whole = RunOptions::new().max_line_output(limit);
        // Every page's records add up to more than the limit.
        let in_parts = whole.clone().min_page_reads(0);
        for options in [whole, in_parts] {
            let parts = options.page_allowance() == limit;
            let (out, rejects, summary) = run_with(&enricher, options).await;
            assert!(
                out.lines().eq(kept.iter().copied()),
                "not the lines under the limit, in order (in parts: {parts})"
            );
            assert_eq!(summary.rejected as usize, 7 + over);
            assert_eq!(summary.written as usize + summary.rejected as usize, 6_000);
            assert_eq!(summary.distinct_users, 50);
            let records: Vec<serde_json::Value> = rejects
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let record = records
                .iter()
                .find(|r| r["error"].as_str().unwrap().contains("--max-line-output"))
                .unwrap();
            assert_eq!(record["file"], "in");
            let line = record["line"].as_u64().unwrap() as usize;
            assert_eq!(
                record["input"].as_str().unwrap(),
                input().lines().nth(line - 1).unwrap()
            );
            let at_least = records
                .iter()
                .filter(|r| r["error"].as_str().unwrap().contains("would be at least"))
                .count();
            if parts {
                assert!(at_least > 10, "{at_least} lines refused by their records");
            } else {
                assert_eq!(at_least, 0);
            }
        }
    }

    /// A line naming more records than a page may hold is rejected once those read are over
    /// the allowance, the rest never read; the lines beside it are written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_page_reads_no_more_than_its_allowance() {
        let store = Arc::new(MemoryStore::new());
        for i in 0..200 {
            let data = serde_json::json!({ "bio": "b".repeat(9_000) });
            let user = NewUser::new(&format!("big{i}"), Some(data)).unwrap();
            store.add(&user, false).await.unwrap();
        }
        let enricher = Enricher::new(store);
        let all: Vec<String> = (0..200)
            .map(|i| format!("\"r{i}\":\"SU:big{i}\""))
            .collect();
        let input = format!(
            "{{\"actor\":\"SU:big0\"}}\n{{{}}}\n{{\"actor\":\"SU:big1\"}}\n",
            all.join(",")
        );
        let (out, rejects) = (Collected::default(), Collected::default());
        let options = RunOptions::new().max_line_output(100_000).min_page_reads(0);
        let summary = run(
            &enricher,
            vec![Source::new("in", std::io::Cursor::new(input.into_bytes()))],
            Output::writer(out.clone()),
            Some(Output::writer(rejects.clone())),
            &options,
            &RunProgress::new(),
            futures::stream::pending(),
        )
        .await
        .unwrap();
        assert_eq!((summary.written, summary.rejected), (2, 1));
        let written: Vec<String> = out.text().lines().map(String::from).collect();
        assert!(written[0].contains(r#""id":"big0""#), "{}", written[0]);
        assert!(written[1].contains(r#""id":"big1""#), "{}", written[1]);
        let record: serde_json::Value = serde_json::from_str(&rejects.text()).unwrap();
        assert_eq!(record["line"], 2);
        let error = record["error"].as_str().unwrap();
        assert!(
            error.starts_with("the enriched line would be at least ")
                && error.ends_with("over the limit of 100000 bytes (--max-line-output)"),
            "{error}"
        );
        // 100 kB and one record of the largest size are 11 users of 9 kB; the whole page of
        // three lines is tried first, so the L1 may have answered some of them the second time.
        assert!(summary.stats.fetched <= 2 * 12, "{:?}", summary.stats);
    }

    /// A run that ends at a bad line counts what enriching its chunk did, the lines before it
    /// written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_ended_by_a_bad_line_counts_its_chunk() {
        let enricher = enricher().await;
        let input = "{\"a\":\"SU:u1\",\"b\":\"SU:x\"}\n{\"a\":\"SU:u3\"}\nnot json\n{}\n";
        let out = Collected::default();
        let failed = run(
            &enricher,
            vec![Source::new("in", std::io::Cursor::new(input.as_bytes()))],
            Output::writer(out.clone()),
            None,
            &RunOptions::new(),
            &RunProgress::new(),
            futures::stream::pending(),
        )
        .await
        .unwrap_err();
        assert_eq!(out.text().lines().count(), 2);
        let summary = failed.summary;
        assert_eq!((summary.written, summary.rejected), (2, 1));
        let stats = summary.stats;
        assert_eq!((stats.activities, stats.references), (3, 3), "{stats:?}");
        assert_eq!((stats.store_calls, stats.missing), (1, 1), "{stats:?}");
    }
}
