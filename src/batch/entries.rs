//! Bulk import of collection entries from NDJSON: one `{"collection":…,"id":…,"data":{…}}` a
//! line, optionally with `created_at` and `updated_at`, streamed and upserted in batches, so
//! memory stays flat whatever the size of the file. An entry that exists is replaced, keeping
//! its `created_at` unless the line gives one; a line without an id gets a generated one. A bad
//! line is reported with its number and the rest goes on.

use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncRead;

use super::ImportEvent;
use super::import::{BatchFailure, Batches, Tally, import_lines, kept_time, parse_line};
use super::{MAX_LINE, Stop, interrupted};
use crate::collection::{EntryKey, MAX_BATCH_ENTRIES, NewEntry, generate_id};
use crate::error::Result;
use crate::store::{ImportEntry, UserStore};

/// A batch is written once its entries' data reach this many bytes, even if it holds fewer
/// than [`MAX_BATCH_ENTRIES`]: what one batch holds stays a few MiB whatever the entries' size.
const BATCH_BYTES: usize = 4 << 20;

/// One line of an entry import file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryLine {
    collection: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
}

/// Reads one entry import line: `{"collection":…,"id":…,"data":{…}}`, optionally with
/// `created_at` and `updated_at` kept from another store (filled in as
/// [`ImportEntry::new`] says). A missing, `null` or empty id means a generated one.
pub fn parse_entry_line(line: &[u8]) -> Result<ImportEntry> {
    let line: EntryLine = parse_line(
        line,
        "an entry line",
        r#"{"collection":…,"id":…,"data":{…}}"#,
    )?;
    let id = match line.id {
        Some(id) if !id.is_empty() => id,
        _ => generate_id(),
    };
    let entry = NewEntry::new(EntryKey::new(&line.collection, &id)?, line.data)?;
    let created_at = kept_time(line.created_at.as_deref())?;
    let updated_at = kept_time(line.updated_at.as_deref())?;
    ImportEntry::new(entry, created_at, updated_at)
}

/// What an import of entries did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryImportSummary {
    /// Lines dealt with: every line up to this one is committed or rejected.
    pub lines: u64,
    /// Entries written, created or replaced.
    pub written: u64,
    /// Lines refused.
    pub rejected: u64,
    /// Set when a stop ended the import before its input did: every line up to `lines` is
    /// committed or rejected, and nothing after it was read into a batch.
    pub interrupted: Option<Stop>,
}

impl std::fmt::Display for EntryImportSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        interrupted(f, self.interrupted)?;
        write!(
            f,
            "imported: {} entries written, {} rejected, of {} lines",
            self.written, self.rejected, self.lines
        )
    }
}

/// An import of entries stopped by a store fault, with what it had committed before.
pub type EntryImportError = super::ImportError<EntryImportSummary>;

/// Upserts every entry line of `input` into `store`, in batches of at most
/// [`MAX_BATCH_ENTRIES`] per store call. Bad lines are passed to `events` and counted; a store
/// fault stops the import with an error naming the line that stopped it (the line of the entry
/// the store refused, when it says which: a corrupt stored record, which refuses its batch
/// whole), beside the summary of what was written.
pub async fn import_entries<R: AsyncRead + Unpin>(
    store: &dyn UserStore,
    input: R,
    events: impl FnMut(ImportEvent<'_>),
) -> Result<EntryImportSummary, EntryImportError> {
    import_entries_until(store, input, events, std::future::pending()).await
}

/// [`import_entries`] until `stop` comes (SIGINT or SIGTERM in the binary): then the whole
/// lines read so far are committed, nothing more is read, and the summary says it was
/// [`interrupted`](EntryImportSummary::interrupted).
pub async fn import_entries_until<R: AsyncRead + Unpin>(
    store: &dyn UserStore,
    input: R,
    events: impl FnMut(ImportEvent<'_>),
    stop: impl Future<Output = Stop>,
) -> Result<EntryImportSummary, EntryImportError> {
    let batches = Batches {
        items: MAX_BATCH_ENTRIES,
        bytes: BATCH_BYTES,
        weigh: |entry: &ImportEntry| entry.entry().data_json().len(),
    };
    let write = async |batch: &[ImportEntry], summary: &mut EntryImportSummary| {
        match store.import_entries(batch).await {
            Ok(written) => {
                summary.written += written.len() as u64;
                Ok(())
            }
            Err(stopped) => {
                // Only a Redis Cluster writes part of a batch: the slots it could.
                summary.written += stopped.written;
                Err(BatchFailure {
                    error: stopped.error,
                    at: stopped.at,
                })
            }
        }
    };
    import_lines(
        input,
        MAX_LINE,
        parse_entry_line,
        batches,
        write,
        events,
        stop,
    )
    .await
}

impl Tally for EntryImportSummary {
    fn settle(&mut self, lines: u64, rejected: u64) {
        self.lines = lines;
        self.rejected += rejected;
    }

    fn interrupt(&mut self, stop: Stop) {
        self.interrupted = Some(stop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_their_problem() {
        let entry = parse_entry_line(br#"{"collection":"food","id":"a","data":{"x":1}}"#).unwrap();
        assert_eq!(entry.entry().key().as_str(), "food:a");
        assert_eq!((entry.created_at(), entry.updated_at()), (None, None));
        let stamped = parse_entry_line(
            br#"{"collection":"food","id":"a","data":{"x":1},"created_at":"2021-04-13T22:53:19Z","updated_at":"2021-04-14T02:00:00.5+02:00"}"#,
        )
        .unwrap();
        assert_eq!(
            stamped.created_at().unwrap().as_str(),
            "2021-04-13T22:53:19.000000Z"
        );
        assert_eq!(
            stamped.updated_at().unwrap().as_str(),
            "2021-04-14T00:00:00.500000Z"
        );
        for no_id in [
            &br#"{"collection":"food","data":{"x":1}}"#[..],
            br#"{"collection":"food","id":null,"data":{"x":1}}"#,
            br#"{"collection":"food","id":"","data":{"x":1}}"#,
        ] {
            assert_eq!(
                parse_entry_line(no_id).unwrap().entry().key().id().len(),
                36
            );
        }
        let cases: [(&[u8], &str); 8] = [
            (
                br#"{"collection":"f","id":"a","data":{"x":1},"created_at":"noon"}"#,
                "invalid timestamp",
            ),
            (
                br#"{"collection":"f","id":"a","data":{"x":1},"created_at":"2021-01-02T00:00:00Z","updated_at":"2021-01-01T00:00:00Z"}"#,
                "before created_at",
            ),
            (b"not json", "not an entry line"),
            (
                br#"{"id":"a","data":{"x":1}}"#,
                "missing field `collection`",
            ),
            (
                br#"{"collection":"f","id":"a b","data":{"x":1}}"#,
                "invalid entry id",
            ),
            (
                br#"{"collection":"f:g","id":"a","data":{"x":1}}"#,
                "invalid collection name",
            ),
            (
                br#"{"collection":"f","id":"a","data":{}}"#,
                "must not be empty",
            ),
            (
                br#"{"collection":"f","id":"a","dta":{}}"#,
                "unknown field `dta`",
            ),
        ];
        for (line, expected) in cases {
            let err = parse_entry_line(line).unwrap_err();
            assert!(err.is_invalid_input());
            assert!(err.to_string().contains(expected), "{err}");
        }
        // An array of the fields is no entry line, and an unknown field's name is quoted on
        // one line (both found by the fuzz target `import_lines`; see import.rs).
        let err = parse_entry_line(br#"["food","a",{"x":1}]"#).unwrap_err();
        assert!(err.to_string().contains("(an array)"), "{err}");
        let err = parse_entry_line(br#"{"collection":"f","a\nb":1}"#).unwrap_err();
        assert!(err.to_string().contains(r"unknown field `a\nb`"), "{err}");
    }
}
