//! The reader stage: input lines → chunks, handed on when full or when the input pauses.

use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use super::lines::{LineReader, LineRef};
use super::{MAX_LINE, PAGE_BYTES, PAGE_LINES, RunProgress, Source};
use crate::error::Result;
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

/// Reads every input in turn, each numbered from its own line 1, into `chunks`; a read error is
/// sent on as such, naming the input, and ends the reading.
pub(super) async fn read(
    inputs: Vec<Source>,
    chunks: mpsc::Sender<Result<RawLines>>,
    spares: Pool<RawLines>,
    progress: RunProgress,
) {
    let mut chunk = RawLines::default();
    for (file, input) in inputs.into_iter().enumerate() {
        let file = u32::try_from(file).expect("fewer than 4 billion inputs");
        let counted = progress.count_reads(input.reader);
        let mut reader = LineReader::new(counted, 1 << 18, MAX_LINE);
        loop {
            let (number, line) = match reader.next_line_ref().await {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(err) => {
                    let _ = chunks.send(Err(err.context(&input.name))).await;
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
            chunk.lines.push(RawLine {
                file,
                number,
                range: start..chunk.data.len(),
                too_long,
            });
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
    }
    if !chunk.lines.is_empty() {
        let _ = chunks.send(Ok(chunk)).await;
    }
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
