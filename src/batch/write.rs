//! The writer stage: the chunks' pieces written in input order.
//!
//! Each chunk hands its pieces to a [`LaneSender`] of its own; lanes are written one after the
//! other, in the order they were opened. Into a regular file, the chunks write themselves:
//! when a piece lands on the lane being written and nobody is writing, the chunk that handed
//! it over writes it, then whatever has become due behind it (the rest of its lane, then the
//! lanes after it as each one ends), until nothing due is ready, and hands the writer on (flat
//! combining). So each piece is written from the cache of the core that rendered it, and one
//! worker thread of the job is one core's work. Into anything else (a pipe, a terminal, a
//! writer given by the caller: what may block for as long as its reader pleases) a thread of
//! its own writes, woken when something is due, so that no worker waits on a reader.
//!
//! Either way, writes go straight from the pieces to the file descriptor (no copy into an async
//! runtime's buffer), and the writer knows, after each write, that every byte it has written
//! ends a complete line.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Seek, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::RunProgress;
use super::piece::{Piece, Spares};
use crate::error::{Error, ErrorKind};
use crate::stats::EnrichStats;

/// Where a run writes its enriched lines, or its rejected ones.
///
/// Lines are only ever written whole, in order. If a write fails part way (a full disk) and the
/// output is a regular file, the file is cut back to the end of its last complete line, so a
/// failed run leaves nothing but complete lines behind.
pub struct Output {
    target: Target,
    /// For a regular file: where the last complete line written ends.
    mark: Option<u64>,
}

enum Target {
    File(File),
    Other(Box<dyn Write + Send>),
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = match self.target {
            Target::File(_) => "file",
            Target::Other(_) => "writer",
        };
        f.debug_struct("Output")
            .field("target", &target)
            .field("mark", &self.mark)
            .finish()
    }
}

impl Output {
    /// An open file, written from where it stands (or at its end if it was opened to append).
    pub fn file(file: File) -> Output {
        let mark = file
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .and_then(|meta| {
                let at = (&file).stream_position().ok()?;
                Some(at.max(meta.len()))
            });
        Output {
            target: Target::File(file),
            mark,
        }
    }

    /// Any other writer. Lines are handed to it whole, but it is not cut back on a failure.
    pub fn writer(writer: impl Write + Send + 'static) -> Output {
        Output {
            target: Target::Other(Box::new(writer)),
            mark: None,
        }
    }

    /// Standard output, written to without a buffer of the process's own; when it is redirected
    /// to a regular file it is treated as one ([`Output::file`]).
    pub fn stdout() -> std::io::Result<Output> {
        #[cfg(unix)]
        {
            use std::os::fd::AsFd;
            let fd = std::io::stdout().as_fd().try_clone_to_owned()?;
            Ok(Output::file(File::from(fd)))
        }
        #[cfg(not(unix))]
        Ok(Output::writer(std::io::stdout()))
    }

    /// True if this is a regular file (what is written can be cut back).
    pub fn is_regular_file(&self) -> bool {
        self.mark.is_some()
    }

    /// Writes complete lines; on a failure, cuts a regular file back to its last complete line.
    fn write_lines(&mut self, lines: &[u8]) -> std::io::Result<()> {
        let written = match &mut self.target {
            Target::File(file) => file.write_all(lines),
            Target::Other(writer) => writer.write_all(lines).and_then(|()| writer.flush()),
        };
        if let (Target::File(file), Some(mark)) = (&mut self.target, &mut self.mark) {
            match &written {
                Ok(()) => {
                    if let Ok(at) = file.stream_position() {
                        *mark = at;
                    }
                }
                Err(_) => {
                    // Best effort: the error that matters is the write's.
                    let _ = file.set_len(*mark).and_then(|()| file.flush());
                }
            }
        }
        written
    }
}

/// How the writer ended.
#[derive(Debug)]
pub(super) enum End {
    /// Everything queued was written.
    Finished,
    /// The run was stopped; everything before the stop was written.
    Stopped,
    /// Something could not be written or enriched; everything before it was written.
    Failed(Error),
}

/// What the writer did.
#[derive(Debug)]
pub(super) struct Report {
    pub(super) written: u64,
    pub(super) rejected: u64,
    pub(super) stats: EnrichStats,
    pub(super) end: End,
}

/// The run's output, written lane after lane.
#[derive(Debug)]
pub(super) struct Ordered {
    state: Mutex<State>,
    /// Set by a second stop: the writing ends at the next piece.
    abort: AtomicBool,
    /// Whether a thread of its own writes (an output whose writes may block for long).
    thread: bool,
    /// Wakes the writer thread when something is due.
    due: Condvar,
}

#[derive(Debug)]
struct State {
    /// The lanes not yet written, from the one being written on.
    lanes: VecDeque<Lane>,
    /// The number of `lanes[0]`.
    head: u64,
    /// The number of the next lane opened.
    next: u64,
    /// No lane opens after those open: the output ends with the last of them.
    closed: bool,
    /// The writer while nobody writes; `None` while a chunk writes, all along with a writer
    /// thread (which holds it), and once the output ended.
    writer: Option<Box<Writer>>,
    /// Where the report goes; taken when the output ends, after which pieces are dropped.
    report: Option<oneshot::Sender<Report>>,
}

/// A lane's pieces not yet written, and its chunk's place among the chunks in flight, freed
/// once it is written.
#[derive(Debug)]
struct Lane {
    pieces: VecDeque<Piece>,
    _slot: Option<OwnedSemaphorePermit>,
}

/// Where a chunk hands its pieces, in line order. A lane dropped before its chunk's last piece
/// (its task aborted or panicked) ends the output there.
#[derive(Debug)]
pub(super) struct LaneSender {
    ordered: Arc<Ordered>,
    number: u64,
    open: bool,
}

impl LaneSender {
    /// Hands a piece over. Without a writer thread, a piece that is due (and whatever became
    /// due behind it) is written before this returns, unless another chunk is writing.
    pub(super) fn send(&mut self, piece: Piece) {
        if matches!(piece, Piece::Done(_) | Piece::Failed(_) | Piece::Abandoned) {
            self.open = false;
        }
        self.ordered.deliver(self.number, piece);
    }
}

impl Drop for LaneSender {
    fn drop(&mut self) {
        if self.open {
            self.ordered.deliver(self.number, Piece::Lost);
        }
    }
}

/// What is due to be written.
// A `Due` lives for one turn of the writing loop, on the stack: boxing the piece would cost an
// allocation per piece for nothing.
#[allow(clippy::large_enum_variant)]
enum Due {
    /// The next piece of the lane being written.
    Piece(Piece),
    /// Nothing more: the output ends.
    End(End),
    /// Nothing ready yet.
    Nothing,
}

/// What writing a piece leaves to do.
enum Next {
    /// Go on with the lane.
    More,
    /// The lane is written: go on with the next.
    LaneDone,
    /// The output ends here.
    End(End),
}

impl Ordered {
    /// The output of a run; its report comes when it ends.
    pub(super) fn new(
        output: Output,
        rejects: Option<Output>,
        spares: Spares,
        progress: RunProgress,
    ) -> std::io::Result<(Arc<Ordered>, oneshot::Receiver<Report>)> {
        let blocks =
            !output.is_regular_file() || rejects.as_ref().is_some_and(|r| !r.is_regular_file());
        let writer = Box::new(Writer {
            output,
            rejects: rejects.map(|r| (r, Vec::new())),
            written: 0,
            rejected: 0,
            rejects_held: 0,
            stats: EnrichStats::default(),
            spares,
            progress,
        });
        // The writer thread holds the writer for good; otherwise it waits in the state.
        let (waiting, for_thread) = if blocks {
            (None, Some(writer))
        } else {
            (Some(writer), None)
        };
        let (report, reported) = oneshot::channel();
        let state = State {
            lanes: VecDeque::new(),
            head: 0,
            next: 0,
            closed: false,
            writer: waiting,
            report: Some(report),
        };
        let ordered = Arc::new(Ordered {
            state: Mutex::new(state),
            abort: AtomicBool::new(false),
            thread: blocks,
            due: Condvar::new(),
        });
        if let Some(writer) = for_thread {
            let writing = ordered.clone();
            std::thread::Builder::new()
                .name("enrich-writer".into())
                .spawn(move || writing.write_due(writer, true))?;
        }
        Ok((ordered, reported))
    }

    /// Opens the next lane, holding `slot` until it is written.
    pub(super) fn lane(self: &Arc<Self>, slot: Option<OwnedSemaphorePermit>) -> LaneSender {
        let mut state = self.lock();
        let number = state.next;
        state.next += 1;
        if state.report.is_some() {
            state.lanes.push_back(Lane {
                pieces: VecDeque::new(),
                _slot: slot,
            });
        }
        LaneSender {
            ordered: self.clone(),
            number,
            open: true,
        }
    }

    /// Ends the output after the lanes open with `error`: the input could not be read further.
    pub(super) fn fail(self: &Arc<Self>, error: Error) {
        self.lane(None).send(Piece::Failed(error));
        self.close();
    }

    /// No lane opens after those open; the output ends once they are written.
    pub(super) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        self.drain(state);
    }

    /// Ends the writing at the next piece (at once if nobody is writing).
    pub(super) fn stop(&self) {
        self.abort.store(true, Ordering::Relaxed);
        let state = self.lock();
        self.drain(state);
    }

    fn deliver(&self, number: u64, piece: Piece) {
        let mut state = self.lock();
        if state.report.is_none() {
            // The output has ended; what the piece holds (its budget) goes back.
            drop(state);
            drop(piece);
            return;
        }
        let at = usize::try_from(number - state.head).expect("lanes in flight fit in memory");
        state.lanes[at].pieces.push_back(piece);
        if at == 0 {
            self.drain(state);
        }
    }

    /// Writes what is due, if nobody else is writing, until nothing due is ready; with a writer
    /// thread, wakes it instead.
    fn drain(&self, mut state: MutexGuard<'_, State>) {
        if self.thread {
            drop(state);
            self.due.notify_one();
            return;
        }
        let Some(writer) = state.writer.take() else {
            // Someone writes, and looks again for what is due before handing the writer back.
            return;
        };
        drop(state);
        self.write_due(writer, false);
    }

    /// Writes what is due with `writer`, then hands it back (or, on the writer thread, waits
    /// for more), or reports the end.
    fn write_due(&self, mut writer: Box<Writer>, wait: bool) {
        let _unwinding = Writing(self);
        let mut state = self.lock();
        loop {
            let closed = state.closed;
            let due = match state.lanes.front_mut() {
                _ if self.abort.load(Ordering::Relaxed) => Due::End(End::Stopped),
                Some(lane) => lane.pieces.pop_front().map_or(Due::Nothing, Due::Piece),
                None if closed => Due::End(End::Finished),
                None => Due::Nothing,
            };
            let next = match due {
                Due::Piece(piece) => {
                    drop(state);
                    let next = writer.piece(piece);
                    state = self.lock();
                    next
                }
                Due::End(end) => Next::End(end),
                Due::Nothing if wait => {
                    state = self.due.wait(state).unwrap_or_else(PoisonError::into_inner);
                    continue;
                }
                Due::Nothing => break,
            };
            match next {
                Next::More => {}
                Next::LaneDone => {
                    let written = state.lanes.pop_front();
                    state.head += 1;
                    drop(written);
                }
                Next::End(end) => {
                    let report = state.report.take();
                    let lanes = std::mem::take(&mut state.lanes);
                    drop(state);
                    // What the lanes not written hold (budget, slots) goes back.
                    drop(lanes);
                    let summary = writer.finish(end);
                    if let Some(report) = report {
                        let _ = report.send(summary);
                    }
                    return;
                }
            }
        }
        state.writer = Some(writer);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one is as good as any.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Stops the writing when dropped: a writer thread waiting for pieces that will never come
/// ends.
pub(super) struct StopOnDrop(pub(super) Arc<Ordered>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Held while writing, made before the state is locked (so dropped after it is released): if
/// the writing panics, the report is dropped, so the run ends ("the writer failed") instead of
/// waiting for a writer that is gone.
struct Writing<'a>(&'a Ordered);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            drop(self.0.lock().report.take());
        }
    }
}

#[derive(Debug)]
struct Writer {
    output: Output,
    /// The rejects file and the records of the lane being written, written at its end.
    rejects: Option<(Output, Vec<u8>)>,
    written: u64,
    /// Rejected lines kept: written into the rejects file (or, without one, the line that
    /// ends the run).
    rejected: u64,
    /// Rejected lines whose records wait in `rejects` to be written.
    rejects_held: u64,
    stats: EnrichStats,
    spares: Spares,
    progress: RunProgress,
}

impl Writer {
    /// Writes one piece.
    fn piece(&mut self, piece: Piece) -> Next {
        match piece {
            Piece::Lines { out, lines, budget } => {
                if let Err(err) = self.output.write_lines(&out) {
                    return Next::End(End::Failed(
                        Error::new(ErrorKind::Internal, "cannot write output").with_cause(err),
                    ));
                }
                // The buffer goes (back to the spares, or to the allocator) before its share
                // of the budget does, so that the budget never counts less than is held.
                self.spares.recycle_output(out);
                drop(budget);
                self.written += lines;
                self.progress.add_written(lines);
                Next::More
            }
            Piece::Rejected(rejected) => match &mut self.rejects {
                Some((_, records)) => {
                    records.extend_from_slice(&rejected.record());
                    self.rejects_held += 1;
                    Next::More
                }
                None => {
                    self.rejected += 1;
                    self.progress.add_rejected(1);
                    Next::End(End::Failed(rejected.into_error()))
                }
            },
            Piece::Enriched(stats) => {
                self.stats += stats;
                Next::More
            }
            Piece::Done(chunk) => {
                self.spares.recycle_chunk(chunk);
                match self.write_rejects() {
                    Ok(()) => Next::LaneDone,
                    Err(err) => Next::End(End::Failed(err)),
                }
            }
            Piece::Failed(err) => Next::End(End::Failed(err)),
            Piece::Abandoned => Next::End(End::Stopped),
            Piece::Lost => Next::End(End::Failed(Error::new(
                ErrorKind::Internal,
                "a chunk of the run failed",
            ))),
        }
    }

    /// The report of an output that ends with `end`, once the rejects held are written.
    fn finish(&mut self, end: End) -> Report {
        let end = match (end, self.write_rejects()) {
            (End::Failed(err), _) | (_, Err(err)) => End::Failed(err),
            (end, Ok(())) => end,
        };
        Report {
            written: self.written,
            rejected: self.rejected,
            stats: std::mem::take(&mut self.stats),
            end,
        }
    }

    fn write_rejects(&mut self) -> Result<(), Error> {
        let Some((output, records)) = &mut self.rejects else {
            return Ok(());
        };
        if records.is_empty() {
            return Ok(());
        }
        let written = output.write_lines(records);
        records.clear();
        // Counted once in the file: a summary never claims rejects a full disk dropped.
        let held = std::mem::take(&mut self.rejects_held);
        written
            .map(|()| {
                self.rejected += held;
                self.progress.add_rejected(held);
            })
            .map_err(|e| Error::new(ErrorKind::Internal, "cannot write rejects").with_cause(e))
    }
}
