//! The reader stage: input lines → chunks, handed on when full or when the input pauses.

use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use super::lines::{LineReader, LineRef};
use super::{MAX_LINE, PAGE_BYTES, PAGE_LINES, Reader, RunProgress, Source};
use crate::error::{Error, Result};
use crate::sync::Pool;

/// Lines as read, not yet looked at.
#[derive(Debug, Default)]
pub(super) struct RawLines {
    pub(super) data: Vec<u8>,
    pub(super) lines: Vec<RawLine>,
}

/// Where one line is.
#[derive(Debug)]
pub(super) struct RawLine {
    /// The input it came from, by its position in the run's inputs.
    pub(super) file: u32,
    /// Its number in that input, from 1.
    pub(super) number: u64,
    /// Its bytes in [`RawLines::data`].
    pub(super) range: Range<usize>,
    /// `Some(len)` for a line over [`MAX_LINE`], of which only the first bytes are kept.
    pub(super) too_long: Option<usize>,
    /// The reading stopped at the line, over the limit: `too_long` is what was read of it.
    pub(super) cut: bool,
}

impl RawLines {
    /// Line `i` as the line reader lent it.
    pub(super) fn line(&self, i: usize) -> LineRef<'_> {
        let line = &self.lines[i];
        let text = &self.data[line.range.clone()];
        match line.too_long {
            Some(len) => LineRef::TooLong { prefix: text, len },
            None => LineRef::Text(text),
        }
    }

    /// The bytes kept of line `i`: all of it, or the start of one over the limit.
    pub(super) fn bytes(&self, i: usize) -> &[u8] {
        &self.data[self.lines[i].range.clone()]
    }

    /// Empties the lines for reuse, keeping their allocations.
    pub(super) fn clear(&mut self) {
        self.data.clear();
        self.lines.clear();
    }
}

/// How long the reader waits for the rest of a line before it hands on the lines it holds: a
/// line that comes with the start of the next one (a producer writing into a pipe, then
/// pausing) is answered without waiting for that next line.
const PAUSE: Duration = Duration::from_millis(5);

/// Reads every input in turn, each numbered from its own line 1, into `chunks`; an input that
/// cannot be opened or read is sent on as an error, after the lines before it, and ends the
/// reading. A deferred input is opened when its turn comes and closed once read.
///
/// With `stop_past_cap` (a run that stops at its first bad line), a line over [`MAX_LINE`] ends
/// the reading as soon as the limit is passed, rather than when its end comes, if ever.
pub(super) async fn read(
    inputs: Vec<Source>,
    chunks: mpsc::Sender<Result<RawLines>>,
    spares: Pool<RawLines>,
    progress: RunProgress,
    stop_past_cap: bool,
) {
    let mut chunk = RawLines::default();
    for (file, input) in inputs.into_iter().enumerate() {
        let file = u32::try_from(file).expect("fewer than 4 billion inputs");
        let Source { name, reader } = input;
        let reader = match reader {
            Reader::Open(reader) => reader,
            // Its error names the input already.
            Reader::Deferred(open) => match open().await {
                Ok(reader) => reader,
                Err(err) => return fail(&chunks, chunk, err).await,
            },
        };
        let mut reader = LineReader::new(progress.count_reads(reader), 1 << 18, MAX_LINE);
        if stop_past_cap {
            reader.stop_past_cap();
        }
        loop {
            let next = if chunk.lines.is_empty() || reader.has_buffered_line() {
                reader.next_line_ref().await
            } else {
                // The next line needs more input, which may be long in coming.
                let next = reader.next_line_ref();
                tokio::pin!(next);
                tokio::select! {
                    biased;
                    next = &mut next => next,
                    () = tokio::time::sleep(PAUSE) => {
                        if !hand_on(&chunks, &mut chunk, &spares).await {
                            return;
                        }
                        next.await
                    }
                }
            };
            let (number, line) = match next {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(err) => return fail(&chunks, chunk, err.context(&name)).await,
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
            let cut = stop_past_cap && too_long.is_some();
            chunk.lines.push(RawLine {
                file,
                number,
                range: start..chunk.data.len(),
                too_long,
                cut,
            });
            if cut {
                // The run ends at this line; nothing after it is read.
                let _ = hand_on(&chunks, &mut chunk, &spares).await;
                return;
            }
            let full = chunk.lines.len() >= PAGE_LINES || chunk.data.len() >= PAGE_BYTES;
            if (full || !reader.has_buffered()) && !hand_on(&chunks, &mut chunk, &spares).await {
                return;
            }
        }
    }
    if !chunk.lines.is_empty() {
        let _ = chunks.send(Ok(chunk)).await;
    }
}

/// Hands `chunk` on, leaving an empty one (a spare, if any) in its place. False if the run no
/// longer takes chunks.
async fn hand_on(
    chunks: &mpsc::Sender<Result<RawLines>>,
    chunk: &mut RawLines,
    spares: &Pool<RawLines>,
) -> bool {
    let next = spares.take().unwrap_or_else(|| RawLines {
        data: Vec::with_capacity(chunk.data.len()),
        lines: Vec::with_capacity(chunk.lines.len()),
    });
    chunks
        .send(Ok(std::mem::replace(chunk, next)))
        .await
        .is_ok()
}

/// Ends the reading with `err`, after the lines read before it.
async fn fail(chunks: &mpsc::Sender<Result<RawLines>>, chunk: RawLines, err: Error) {
    if !chunk.lines.is_empty() && chunks.send(Ok(chunk)).await.is_err() {
        return;
    }
    let _ = chunks.send(Err(err)).await;
}

/// An input that adds what it reads to the run's progress.
pub(super) struct Counted {
    pub(super) inner: Box<dyn AsyncRead + Unpin + Send>,
    pub(super) progress: RunProgress,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            self.progress
                .counters
                .bytes_read
                .fetch_add(read, Ordering::Relaxed);
        }
        polled
    }
}

/// The names of the inputs, shared by every line that is rejected.
pub(super) fn names(inputs: &[Source]) -> Arc<[Arc<str>]> {
    inputs.iter().map(|i| Arc::from(i.name.as_str())).collect()
}
