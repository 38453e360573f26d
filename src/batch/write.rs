//! The writer stage: a thread of its own that writes the chunks' pieces in input order.
//!
//! A thread rather than a task, so that writes go straight from the pieces to the file
//! descriptor (no copy into an async runtime's buffer) and the writer knows, after each write,
//! that every byte it has written ends a complete line.

use std::fs::File;
use std::io::{Seek, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::RunProgress;
use super::chunk::{Piece, Spares};
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

/// What the writer is given, in input order.
#[derive(Debug)]
pub(super) enum Queued {
    /// A chunk's pieces, and its place among the chunks in flight, freed once it is written.
    Chunk {
        pieces: mpsc::UnboundedReceiver<Piece>,
        slot: OwnedSemaphorePermit,
    },
    /// The input could not be read from here on.
    Failed(Error),
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

/// Starts the writer thread; its report comes when it ends.
pub(super) fn spawn(
    output: Output,
    rejects: Option<Output>,
    queue: mpsc::UnboundedReceiver<Queued>,
    spares: Spares,
    progress: RunProgress,
    abort: Arc<AtomicBool>,
) -> std::io::Result<oneshot::Receiver<Report>> {
    let (report, reported) = oneshot::channel();
    let writer = Writer {
        output,
        rejects: rejects.map(|r| (r, Vec::new())),
        written: 0,
        rejected: 0,
        stats: EnrichStats::default(),
        spares,
        progress,
        abort,
    };
    std::thread::Builder::new()
        .name("enrich-writer".into())
        .spawn(move || {
            let _ = report.send(writer.run(queue));
        })?;
    Ok(reported)
}

struct Writer {
    output: Output,
    /// The rejects file and the records of the chunk being written, written at its end.
    rejects: Option<(Output, Vec<u8>)>,
    written: u64,
    rejected: u64,
    stats: EnrichStats,
    spares: Spares,
    progress: RunProgress,
    abort: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self, mut queue: mpsc::UnboundedReceiver<Queued>) -> Report {
        let end = loop {
            match queue.blocking_recv() {
                None => break End::Finished,
                Some(Queued::Failed(err)) => break End::Failed(err),
                Some(Queued::Chunk { mut pieces, slot }) => {
                    if let Some(end) = self.chunk(&mut pieces) {
                        break end;
                    }
                    drop(slot);
                }
            }
        };
        let end = match (end, self.write_rejects()) {
            (End::Failed(err), _) | (_, Err(err)) => End::Failed(err),
            (end, Ok(())) => end,
        };
        Report {
            written: self.written,
            rejected: self.rejected,
            stats: self.stats,
            end,
        }
    }

    /// Writes one chunk; `Some` if the run ends here.
    fn chunk(&mut self, pieces: &mut mpsc::UnboundedReceiver<Piece>) -> Option<End> {
        loop {
            if self.abort.load(Ordering::Relaxed) {
                return Some(End::Stopped);
            }
            match pieces.blocking_recv() {
                Some(Piece::Lines { out, lines, budget }) => {
                    if let Err(err) = self.output.write_lines(&out) {
                        return Some(End::Failed(
                            Error::new(ErrorKind::Internal, "cannot write output").with_cause(err),
                        ));
                    }
                    drop(budget);
                    self.written += lines;
                    self.progress.add_written(lines);
                    self.spares.recycle_output(out);
                }
                Some(Piece::Rejected(rejected)) => {
                    self.rejected += 1;
                    self.progress.add_rejected();
                    match &mut self.rejects {
                        Some((_, records)) => records.extend_from_slice(&rejected.record()),
                        None => return Some(End::Failed(rejected.into_error())),
                    }
                }
                Some(Piece::Done { chunk, stats }) => {
                    self.stats += stats;
                    self.spares.recycle_chunk(chunk);
                    return self.write_rejects().err().map(End::Failed);
                }
                Some(Piece::Failed(err)) => return Some(End::Failed(err)),
                Some(Piece::Abandoned) => return Some(End::Stopped),
                None if self.abort.load(Ordering::Relaxed) => return Some(End::Stopped),
                None => {
                    return Some(End::Failed(Error::new(
                        ErrorKind::Internal,
                        "a chunk of the run failed",
                    )));
                }
            }
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
        written.map_err(|e| Error::new(ErrorKind::Internal, "cannot write rejects").with_cause(e))
    }
}
