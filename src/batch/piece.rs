//! What the chunk stage hands the writer, in line order (rendered lines, rejected lines, the
//! end of a chunk), and the spares its buffers go back to for the chunks to come.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use super::PIECE_BYTES;
use super::read::RawLines;
use crate::cache::MemoPool;
use crate::error::Error;
use crate::page::RawPage;
use crate::stats::EnrichStats;
use crate::sync::Pool;

/// What a chunk hands the writer, in line order.
#[derive(Debug)]
pub(super) enum Piece {
    /// Complete enriched lines, and the share of the budget they hold until written.
    Lines {
        out: Vec<u8>,
        lines: u64,
        budget: OwnedSemaphorePermit,
    },
    /// A line that could not be enriched.
    Rejected(Rejected),
    /// What enriching the chunk (or a part of it) did, sent before its lines: counted by a run
    /// that ends at one of them too, as the work was done.
    Enriched(EnrichStats),
    /// Every line of the chunk was handed over: its buffers to reuse.
    Done(Chunk),
    /// The chunk could not be enriched; nothing of it, nor after it, is to be written.
    Failed(Error),
    /// The run is stopping and the chunk gave up waiting for the store.
    Abandoned,
    /// The chunk ended without handing over all its lines (its task was aborted or panicked).
    Lost,
}

/// A line that could not be enriched.
#[derive(Debug)]
pub(super) struct Rejected {
    pub(super) file: Arc<str>,
    pub(super) line: u64,
    pub(super) error: Error,
    pub(super) input: Vec<u8>,
}

impl Rejected {
    /// `{"file":"…","line":N,"error":"…","input":"…"}`, with its newline.
    pub(super) fn record(&self) -> Vec<u8> {
        let record = serde_json::json!({
            "file": &*self.file,
            "line": self.line,
            "error": self.error.message(),
            "input": String::from_utf8_lossy(&self.input),
        });
        let mut out = serde_json::to_vec(&record).expect("a JSON value serializes");
        out.push(b'\n');
        out
    }

    /// The error, naming the file and the line: `FILE:LINE: reason`.
    pub(super) fn into_error(self) -> Error {
        self.error.context(format!("{}:{}", self.file, self.line))
    }
}

/// A chunk's lines: the documents of its page, and the lines rejected among them.
#[derive(Debug)]
pub(super) struct Chunk {
    pub(super) page: RawPage,
    /// The rejected lines, by their place among the chunk's lines, in order. Noted apart
    /// rather than as an `Option` beside every line: nearly every line is a document, and a
    /// `None` the size of a rejection for each one was a 96-byte store a line, 2 % of a batch
    /// job's CPU (perf, 1M activities).
    pub(super) rejected: Vec<(usize, Rejected)>,
}

/// What goes round between the stages instead of being allocated per chunk: the writer hands
/// each chunk's buffers back for the chunks to come, so a run works in a few warm buffers
/// rather than asking the allocator (and the kernel, for fresh pages) for megabytes per chunk.
#[derive(Debug, Clone)]
pub(super) struct Spares {
    pub(super) lines: Pool<RawLines>,
    pub(super) chunks: Pool<Chunk>,
    /// Rendered pieces.
    pub(super) outputs: Pool<Vec<u8>>,
    /// The run's memo of what the L1 answered, so popular users are answered without asking
    /// the shared L1.
    pub(super) memos: MemoPool,
}

impl Spares {
    /// Spares for a run with `in_flight` chunks in the works at once.
    pub(super) fn new(in_flight: usize) -> Self {
        // More than the chunks in the works can hold at once is never kept.
        let keep = in_flight + 2;
        Spares {
            lines: Pool::new(keep),
            chunks: Pool::new(keep),
            outputs: Pool::new(keep),
            memos: MemoPool::shared(),
        }
    }
}

impl Spares {
    /// Takes back a written chunk's buffers. They are emptied here, on the writer, but freed
    /// nowhere: memory freed on another thread than the one that allocated it is the
    /// allocator's slow path.
    pub(super) fn recycle_chunk(&self, mut chunk: Chunk) {
        chunk.page.clear();
        chunk.rejected.clear();
        self.chunks.put(chunk);
    }

    /// Takes back a written piece's buffer, unless it is larger than a piece of several
    /// lines: the memory of an outsized line is given back, not kept outside the budget.
    pub(super) fn recycle_output(&self, mut out: Vec<u8>) {
        if out.capacity() <= 2 * PIECE_BYTES {
            out.clear();
            self.outputs.put(out);
        }
    }
}
