//! The one error type of the crate.
//!
//! Like redis-rs, the representation is private and callers branch on an [`ErrorKind`] or on the
//! classifier methods, never on message text. The cause is kept behind an `Arc` so an error is
//! `Clone`: one failed batched load can be handed to every page that waited for it.

use std::fmt;
use std::sync::Arc;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, coarse enough to decide on a retry or an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller's input is wrong: a bad id, data that is not an object, a size over the limit,
    /// a malformed line or URL. Retrying the same input cannot succeed.
    InvalidInput,
    /// The user already exists.
    Conflict,
    /// The user does not exist.
    NotFound,
    /// The entry belongs to another user, or to none: a write made only if a given user owns
    /// it (see [`crate::UserStore::update_owned_entry`]) was refused and changed nothing.
    NotOwner,
    /// The store cannot be reached for now: connection refused or reset, a server still
    /// loading its data, a file store locked by another process. Retrying may succeed.
    Unavailable,
    /// The store did not answer a read in time. Retrying may succeed.
    Timeout,
    /// A write was sent but its answer never came (a timeout, a connection lost mid-call): it
    /// may or may not have been applied. Read the user back before retrying a create.
    OutcomeUnknown,
    /// The store refused our credentials or this command (`WRONGPASS`, `NOAUTH`, `NOPERM`).
    /// Retrying cannot help until the store's configuration changes.
    PermissionDenied,
    /// The store has no room for the write: Redis over its `maxmemory` (`OOM`), a full disk.
    StoreFull,
    /// Anything else: an I/O error on a local file, a corrupt stored record.
    Internal,
}

impl ErrorKind {
    fn label(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Conflict => "conflict",
            ErrorKind::NotFound => "not found",
            ErrorKind::NotOwner => "not the owner",
            ErrorKind::Unavailable => "store unavailable",
            ErrorKind::Timeout => "store timeout",
            ErrorKind::OutcomeUnknown => "write outcome unknown",
            ErrorKind::PermissionDenied => "store permission denied",
            ErrorKind::StoreFull => "store full",
            ErrorKind::Internal => "internal error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// An error of the engine: a kind, a message naming the problem, and maybe the cause behind it.
///
/// Its `Display` is the whole story, the message and then the cause and every error behind it
/// (`redis://10.0.0.1:6379: Connection refused`), so it is printed as is. The cause is
/// therefore not also its [`source`](std::error::Error::source), which would make reporters
/// that walk the chain (anyhow's `{:#}`, eyre, tracing) print it twice; [`Error::underlying`]
/// hands it out, to downcast.
///
/// Branch on [`Error::kind`] or on the classifiers, never on the message:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> enrich::Result<()> {
/// use enrich::{Error, ErrorKind, NewUser, StoreOptions, store};
///
/// /// The HTTP status a service answers an error with.
/// fn status(err: &Error) -> u16 {
///     match err.kind() {
///         ErrorKind::InvalidInput => 400,
///         ErrorKind::NotFound => 404,
///         ErrorKind::Conflict => 409,
///         // Unavailable, a timeout, a write of unknown outcome…: never "no such user".
///         _ if err.is_store_fault() => 503,
///         _ => 500,
///     }
/// }
///
/// let err = NewUser::new("no spaces", None).unwrap_err();
/// assert_eq!(status(&err), 400);
///
/// let users = store::open("memory:", &StoreOptions::new()).await?;
/// users.add(&NewUser::new("alice", None)?, false).await?;
/// let err = users.add(&NewUser::new("alice", None)?, false).await.unwrap_err();
/// assert!(err.is_conflict());
/// assert_eq!(status(&err), 409);
///
/// let err = Error::new(ErrorKind::Timeout, "redis://10.0.0.1:6379 did not answer");
/// assert!(err.is_store_fault() && err.is_transient());
/// assert_eq!(status(&err), 503);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    cause: Option<Cause>,
}

impl Error {
    /// An error of `kind` with a message that names the problem (the id, the limit, the line).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            cause: None,
        }
    }

    /// Shorthand for [`ErrorKind::InvalidInput`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidInput, message)
    }

    /// Attaches the lower-level error that caused this one.
    pub fn with_cause(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Arc::new(cause));
        self
    }

    /// Prefixes the message with context, such as the line of a file it came from.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message alone, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The lower-level error behind this one, if any (a Redis client's error, an I/O error),
    /// to downcast. Its text is already the tail of this error's `Display`.
    ///
    /// ```
    /// use enrich::{Error, ErrorKind};
    ///
    /// let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    /// let err = Error::new(ErrorKind::Unavailable, "redis://127.0.0.1:1").with_cause(refused);
    /// let io = err.underlying().and_then(|e| e.downcast_ref::<std::io::Error>());
    /// assert_eq!(io.map(|e| e.kind()), Some(std::io::ErrorKind::ConnectionRefused));
    /// ```
    pub fn underlying(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.cause.as_deref()
    }

    /// True for [`ErrorKind::InvalidInput`].
    pub fn is_invalid_input(&self) -> bool {
        self.kind == ErrorKind::InvalidInput
    }

    /// True for [`ErrorKind::NotFound`].
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// True for [`ErrorKind::NotOwner`].
    pub fn is_not_owner(&self) -> bool {
        self.kind == ErrorKind::NotOwner
    }

    /// True for [`ErrorKind::Conflict`].
    pub fn is_conflict(&self) -> bool {
        self.kind == ErrorKind::Conflict
    }

    /// True when the store failed rather than the request: unavailable, timed out, a write of
    /// unknown outcome, a refusal of our credentials or of a write for lack of room. Such an
    /// error never means that a user is missing.
    pub fn is_store_fault(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Unavailable
                | ErrorKind::Timeout
                | ErrorKind::OutcomeUnknown
                | ErrorKind::PermissionDenied
                | ErrorKind::StoreFull
        )
    }

    /// True for a fault that may go away by itself, so that the same call is worth retrying
    /// after a pause: [`ErrorKind::Unavailable`] and [`ErrorKind::Timeout`]. A write of unknown
    /// outcome is not: it may have been applied.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, ErrorKind::Unavailable | ErrorKind::Timeout)
    }

    /// True for [`ErrorKind::Timeout`].
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("cause", &self.cause.as_deref().map(|cause| chain(cause)))
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(cause) = self.cause.as_deref() {
            write!(f, ": {}", chain(cause))?;
        }
        Ok(())
    }
}

/// How many errors of a cause's chain [`chain`] reads at most.
const CHAIN_LEVELS: usize = 16;

/// `cause` and the errors behind it (its `source()`, theirs…), joined by `": "`, each left out
/// whose text is already there: some errors repeat their source in their own text as well
/// (redis-rs's I/O errors), others leave it to the `source()` (many libraries' errors, a
/// caller's own).
fn chain(cause: &(dyn std::error::Error + 'static)) -> String {
    let mut text = cause.to_string();
    let mut next = cause.source();
    for _ in 1..CHAIN_LEVELS {
        let Some(source) = next else { break };
        let more = source.to_string();
        if !more.is_empty() && !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = source.source();
    }
    text
}

/// No `source`: the cause and what lies behind it are in the `Display` already (see [`Error`]).
impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_message_and_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Error::new(ErrorKind::Unavailable, "redis://127.0.0.1:1").with_cause(io);
        assert_eq!(err.to_string(), "redis://127.0.0.1:1: refused");
        assert!(err.is_store_fault());
        assert!(!err.is_not_found());
        let cloned = err.clone();
        assert_eq!(cloned.kind(), ErrorKind::Unavailable);
        assert!(cloned.underlying().is_some());
    }

    /// A cause that leaves what lies behind it to its `source()` loses nothing.
    #[test]
    fn what_lies_behind_a_cause_is_named() {
        #[derive(Debug)]
        struct Db(std::io::Error);
        impl fmt::Display for Db {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("error talking to the database")
            }
        }
        impl std::error::Error for Db {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let reset = std::io::Error::other("connection reset by peer");
        let err = Error::new(ErrorKind::Unavailable, "users db").with_cause(Db(reset));
        assert_eq!(
            err.to_string(),
            "users db: error talking to the database: connection reset by peer"
        );
        // One that repeats it in its own text is not repeated.
        let inner =
            Error::new(ErrorKind::Internal, "inner").with_cause(Db(std::io::Error::other("x")));
        let outer = Error::new(ErrorKind::Internal, "outer").with_cause(inner);
        assert_eq!(
            outer.to_string(),
            "outer: inner: error talking to the database: x"
        );
    }

    /// A reporter that prints an error and then each `source()` in turn (anyhow's `{:#}`,
    /// eyre) names every cause once, however the errors are nested.
    #[test]
    fn a_chain_names_each_cause_once() {
        fn chain(err: &(dyn std::error::Error + 'static)) -> String {
            let mut text = err.to_string();
            let mut next = err.source();
            while let Some(source) = next {
                text += &format!(": {source}");
                next = source.source();
            }
            text
        }
        let io = std::io::Error::other("disk full");
        let inner = Error::new(ErrorKind::StoreFull, "cannot write t.db").with_cause(io);
        let outer = Error::new(ErrorKind::Internal, "import stopped").with_cause(inner);
        assert_eq!(
            chain(&outer),
            "import stopped: cannot write t.db: disk full"
        );
    }

    #[test]
    fn context_prefixes_message() {
        let err = Error::invalid("not JSON").context("line 3");
        assert_eq!(err.to_string(), "line 3: not JSON");
        assert!(err.is_invalid_input());
    }
}
