//! Bulk import of users from NDJSON: one `{"id":…,"data":…}` a line, streamed and written in
//! batches, so memory stays flat whatever the size of the file. A bad line is reported with
//! its number and the rest goes on.

use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncRead;

use super::lines::{BOM, Line, LineReader, is_blank};
use super::{MAX_LINE, Stop, interrupted};
use crate::error::{Error, Result};
use crate::store::{ImportOutcome, ImportUser, UserStore};
use crate::user::{NewUser, Timestamp};

/// How many users one store call writes.
pub const IMPORT_BATCH: usize = 500;

/// One line of an import file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportLine {
    id: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
}

/// Reads one import line: `{"id":…,"data":…}`, optionally with `created_at` and `updated_at`
/// kept from another store.
pub fn parse_import_line(line: &[u8]) -> Result<ImportUser> {
    let line: ImportLine = parse_line(line, "a user line", r#"{"id":…,"data":{…}}"#)?;
    let user = NewUser::new(&line.id, line.data)?;
    let created_at = kept_time(line.created_at.as_deref())?;
    let updated_at = kept_time(line.updated_at.as_deref())?;
    ImportUser::new(user, created_at, updated_at)
}

/// Reads an import line as `T`, a JSON object; refused as "not `what` (the problem); expected
/// `expected`", the problem on one bounded line.
///
/// An array is refused before serde sees it: serde's derived structs read an array of their
/// fields in order too (`["alice",{…}]`), but a line is an object, as the format says.
pub(super) fn parse_line<T: serde::de::DeserializeOwned>(
    line: &[u8],
    what: &str,
    expected: &str,
) -> Result<T> {
    let problem = if line.trim_ascii_start().first() == Some(&b'[') {
        "an array".to_owned()
    } else if line.starts_with(BOM) {
        "it starts with a UTF-8 byte order mark, which NDJSON has not".to_owned()
    } else {
        match serde_json::from_slice(line) {
            Ok(parsed) => return Ok(parsed),
            Err(err) => json_problem(&err),
        }
    };
    Err(Error::invalid(format!(
        "not {what} ({problem}); expected {expected}"
    )))
}

/// The longest [`json_problem`], in characters, before its position.
const MAX_PROBLEM: usize = 160;

/// What serde_json says is wrong with a line, on one line and bounded whatever the line holds:
/// it quotes an unknown field's name as the line spells it, newlines and all, and as long as
/// the line lets it be (a rejection is reported as one line of the import's output).
fn json_problem(err: &serde_json::Error) -> String {
    let message = err.to_string();
    let position = format!(" at line {} column {}", err.line(), err.column());
    let problem = message.strip_suffix(&position).unwrap_or(&message);
    let mut out = String::with_capacity(problem.len().min(4 * MAX_PROBLEM) + position.len());
    for (n, c) in problem.chars().enumerate() {
        if n == MAX_PROBLEM {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if problem.len() < message.len() {
        out.push_str(&position);
    }
    out
}

/// A `created_at` or `updated_at` kept from another store, if the line has one.
pub(super) fn kept_time(at: Option<&str>) -> Result<Option<Timestamp>> {
    at.map(Timestamp::parse).transpose()
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Lines dealt with: every line up to this one is committed or rejected.
    pub lines: u64,
    /// Users written that did not exist.
    pub created: u64,
    /// Users that existed and were left alone.
    pub skipped: u64,
    /// Users that existed and were replaced.
    pub overridden: u64,
    /// Lines refused.
    pub rejected: u64,
    /// Set when a stop ended the import before its input did: every line up to `lines` is
    /// committed or rejected, and nothing after it was read into a batch.
    pub interrupted: Option<Stop>,
}

impl std::fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        interrupted(f, self.interrupted)?;
        write!(
            f,
            "imported: {} created, {} existing skipped, {} overridden, {} rejected, of {} lines",
            self.created, self.skipped, self.overridden, self.rejected, self.lines
        )
    }
}

/// An import stopped by a store fault, with what it had committed before: of users
/// ([`ImportSummary`]) or of collection entries
/// ([`EntryImportSummary`](super::EntryImportSummary)).
#[derive(Debug, Clone)]
pub struct ImportError<S = ImportSummary> {
    /// Every line up to `committed.lines` is in the store (or was rejected); the lines after
    /// it are not, or not all (its counts include what the batch that stopped wrote all the
    /// same, on a store that writes a batch in parts).
    pub committed: S,
    /// Why it stopped, naming the line that stopped it: the line of the item the store
    /// refused when it says which, else the first line not committed.
    pub error: Error,
}

impl<S> std::fmt::Display for ImportError<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

/// Displayed as its error, cause included (see [`Error`]): a `source` would print it again.
impl<S: std::fmt::Debug> std::error::Error for ImportError<S> {}

impl<S> From<ImportError<S>> for Error {
    fn from(stopped: ImportError<S>) -> Error {
        stopped.error
    }
}

/// What an import reports while it runs.
#[derive(Debug)]
pub enum ImportEvent<'a> {
    /// A line was refused; the import goes on.
    Rejected {
        /// The line's number, from 1.
        line: u64,
        /// Why.
        error: &'a Error,
    },
    /// A batch was written; this many lines have been read so far.
    Progress {
        /// Lines read so far.
        lines: u64,
    },
}

/// Imports every user line of `input` into `store`. Bad lines are passed to `events` and
/// counted; a store fault stops the import with an error naming the first line not committed,
/// beside the summary of what was.
pub async fn import_users<R: AsyncRead + Unpin>(
    store: &dyn UserStore,
    input: R,
    override_existing: bool,
    events: impl FnMut(ImportEvent<'_>),
) -> Result<ImportSummary, ImportError> {
    let never = std::future::pending();
    import_users_until(store, input, override_existing, events, never).await
}

/// [`import_users`] until `stop` comes (SIGINT or SIGTERM in the binary): then the whole lines
/// read so far are committed, nothing more is read, and the summary says it was
/// [`interrupted`](ImportSummary::interrupted).
pub async fn import_users_until<R: AsyncRead + Unpin>(
    store: &dyn UserStore,
    input: R,
    override_existing: bool,
    events: impl FnMut(ImportEvent<'_>),
    stop: impl Future<Output = Stop>,
) -> Result<ImportSummary, ImportError> {
    let batches = Batches {
        items: IMPORT_BATCH,
        bytes: usize::MAX,
        weigh: |_: &ImportUser| 0,
    };
    let write =
        async |batch: &[ImportUser], summary: &mut ImportSummary| -> Result<(), BatchFailure> {
            for outcome in store.import(batch, override_existing).await? {
                match outcome {
                    ImportOutcome::Created => summary.created += 1,
                    ImportOutcome::Skipped => summary.skipped += 1,
                    ImportOutcome::Overridden => summary.overridden += 1,
                }
            }
            Ok(())
        };
    import_lines(
        input,
        MAX_LINE,
        parse_import_line,
        batches,
        write,
        events,
        stop,
    )
    .await
}

/// The summary of an import: the lines dealt with and refused, beside what its batches wrote.
pub(super) trait Tally: Clone + Default {
    /// Every line up to `lines` is committed or rejected, `rejected` more of them refused.
    fn settle(&mut self, lines: u64, rejected: u64);
    /// A stop ended the import.
    fn interrupt(&mut self, stop: Stop);
}

impl Tally for ImportSummary {
    fn settle(&mut self, lines: u64, rejected: u64) {
        self.lines = lines;
        self.rejected += rejected;
    }

    fn interrupt(&mut self, stop: Stop) {
        self.interrupted = Some(stop);
    }
}

/// Why the write of a batch stopped an import: the error, and the position in the batch of
/// the item that stopped it, when the store says which.
pub(super) struct BatchFailure {
    pub(super) error: Error,
    pub(super) at: Option<usize>,
}

impl From<Error> for BatchFailure {
    fn from(error: Error) -> BatchFailure {
        BatchFailure { error, at: None }
    }
}

/// When a batch is written: at `items` items, or once their `weigh`t reaches `bytes`.
pub(super) struct Batches<W> {
    pub(super) items: usize,
    pub(super) bytes: usize,
    pub(super) weigh: W,
}

/// The one way an import goes, whatever it imports: `input`'s lines (each at most `max_line`
/// bytes) parsed with `parse`, bad lines passed to `events` and counted, the rest written a
/// batch at a time with `write`, which adds to the summary what the store did (only that: a
/// failed write adds what the store says it wrote all the same, if anything). A line counts
/// (in `lines` and `rejected`) once every line before it is committed; a store fault stops the
/// import with an error naming the line that stopped it (see [`ImportError::error`]), beside
/// the summary of what was.
pub(super) async fn import_lines<R: AsyncRead + Unpin, T, S: Tally>(
    input: R,
    max_line: usize,
    parse: impl Fn(&[u8]) -> Result<T>,
    batches: Batches<impl Fn(&T) -> usize>,
    mut write: impl AsyncFnMut(&[T], &mut S) -> Result<(), BatchFailure>,
    mut events: impl FnMut(ImportEvent<'_>),
    stop: impl Future<Output = Stop>,
) -> Result<S, ImportError<S>> {
    let mut stop = std::pin::pin!(stop);
    let mut stopped = None;
    let mut reader = LineReader::new(input, 1 << 16, max_line);
    let mut summary = S::default();
    let mut batch = Vec::with_capacity(batches.items.min(1024));
    // The line number of each item of the batch.
    let mut numbers = Vec::with_capacity(batches.items.min(1024));
    let mut batch_bytes = 0;
    // Lines rejected since the last commit: they count once the lines before them are in.
    let mut rejected = 0;
    // Every line up to this one is committed or rejected.
    let mut committed = 0;
    loop {
        // A stop ends the reading: the whole lines already read are still taken, then
        // committed below as at the input's end. A line in the middle of being read when the
        // stop comes is not one of them (the reader waits for input only with nothing
        // buffered, so what it had of that line is all it lent).
        let read = |next: Result<_>| {
            next.map_err(|error| ImportError {
                committed: summary.clone(),
                error,
            })
        };
        let next = match stopped {
            Some(_) if reader.has_buffered_line() => read(reader.next_line().await)?,
            Some(_) => None,
            None => tokio::select! {
                biased;
                signal = &mut stop => {
                    stopped = Some(signal);
                    continue;
                }
                next = reader.next_line() => read(next)?,
            },
        };
        let done = next.is_none();
        if let Some((number, line)) = next {
            let parsed = match line {
                Line::Text(text) if is_blank(&text) => None,
                Line::Text(text) => Some(parse(&text)),
                Line::TooLong { len, .. } => Some(Err(Error::invalid(format!(
                    "line is {len} bytes, over the limit of {max_line}"
                )))),
            };
            match parsed {
                Some(Ok(item)) => {
                    batch_bytes += (batches.weigh)(&item);
                    batch.push(item);
                    numbers.push(number);
                }
                Some(Err(error)) => {
                    rejected += 1;
                    events(ImportEvent::Rejected {
                        line: number,
                        error: &error,
                    });
                }
                None => {}
            }
        }
        let full = batch.len() >= batches.items || batch_bytes >= batches.bytes;
        if full || (done && !batch.is_empty()) {
            if let Err(stop) = write(&batch, &mut summary).await {
                let first = committed + 1;
                let line = stop.at.and_then(|at| numbers.get(at).copied());
                let context = match line {
                    Some(line) if line != first => format!(
                        "import stopped at line {line}, of the batch from line {first} to {}",
                        numbers.last().copied().unwrap_or(line)
                    ),
                    _ => format!("import stopped at line {first}"),
                };
                return Err(ImportError {
                    error: stop.error.context(context),
                    committed: summary,
                });
            }
            batch.clear();
            numbers.clear();
            batch_bytes = 0;
            events(ImportEvent::Progress {
                lines: reader.number(),
            });
        }
        if batch.is_empty() {
            committed = reader.number();
            summary.settle(committed, std::mem::take(&mut rejected));
        }
        if done {
            if let Some(stop) = stopped {
                summary.interrupt(stop);
            }
            return Ok(summary);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_their_problem() {
        assert!(parse_import_line(br#"{"id":"a","data":{"x":1}}"#).is_ok());
        assert!(parse_import_line(br#"{"id":"a"}"#).is_ok());
        let cases: [(&[u8], &str); 5] = [
            (b"not json", "not a user line"),
            (br#"{"id":"a b"}"#, "invalid user id"),
            (br#"{"id":"a","data":[1]}"#, "must be a JSON object"),
            (br#"{"id":"a","dta":{}}"#, "unknown field `dta`"),
            (br#"{"id":"a","created_at":"noon"}"#, "invalid timestamp"),
        ];
        for (line, expected) in cases {
            let err = parse_import_line(line).unwrap_err();
            assert!(err.is_invalid_input());
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    /// Found by the fuzz target `import_lines`: serde reads a struct from an array of its
    /// fields as well, so an array line was a user.
    #[test]
    fn an_array_is_no_user_line() {
        for line in [&br#"["2Q"]"#[..], b"\t[\"alice\",{\"x\":1}]"] {
            let err = parse_import_line(line).unwrap_err();
            assert!(err.is_invalid_input());
            assert!(
                err.to_string().contains("not a user line (an array)"),
                "{err}"
            );
        }
        // A byte order mark is named, not taken for a stray byte.
        let err = parse_import_line(b"\xEF\xBB\xBF{\"id\":\"x\"}").unwrap_err();
        assert!(err.to_string().contains("byte order mark"), "{err}");
    }

    /// Found by the fuzz target `import_lines`: serde_json quotes an unknown field's name as the
    /// line has it, so a name holding an escaped newline made a rejection of two lines, and a
    /// long name one as long as the line.
    #[test]
    fn a_rejection_is_one_bounded_line() {
        let newline =
            br#"{"id":"Eve","dine\nbreak\ttab \\ pdated_at":"2021-01-01T00:00:00.000000Z"}"#;
        let err = parse_import_line(newline).unwrap_err().to_string();
        assert!(!err.contains('\n') && !err.contains('\t'), "{err}");
        assert!(
            err.contains(r"unknown field `dine\nbreak\ttab \ pdated_at`"),
            "{err}"
        );
        assert!(err.contains("at line 1 column"), "{err}");
        let long = format!(r#"{{"id":"a","{}":1}}"#, "x".repeat(100_000));
        let err = parse_import_line(long.as_bytes()).unwrap_err().to_string();
        assert!(err.len() < 1_000, "{} bytes", err.len());
        assert!(err.contains("at line 1 column 100012"), "{err}");
    }
}
