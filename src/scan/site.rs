//! What a scan finds and why it refuses: the sites where answers go, and the faults.

use crate::error::Error;
use crate::shape::MAX_DEPTH;

/// A place in a page where an answer is written: the span `start..end` of the compacted buffer
/// it replaces, what names the id, and which distinct id that is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Site {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) kind: SiteKind,
    /// Set once the site is known to count.
    pub(crate) id: u32,
}

/// What a [`Site`] stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SiteKind {
    /// A string token that reads as a reference (the span); `escaped`: its text is read by
    /// decoding it.
    Reference { escaped: bool },
    /// A reaction's user, named by the `user_id` string token at `key` of the buffer. The span
    /// is the value of the reaction's `user` member, or empty where `,"user":` and the answer
    /// are inserted (right after the `user_id` value).
    User {
        key_start: usize,
        key_end: usize,
        escaped: bool,
    },
    /// A slot kept in document order while a reaction was read, and not used: dropped before
    /// the page's ids are counted.
    Void,
}

impl Site {
    /// A site that is an insertion rather than a replacement.
    pub(crate) fn inserts(&self) -> bool {
        self.start == self.end
    }
}

/// Why a document was refused.
#[derive(Debug)]
pub(crate) enum Fault {
    /// Not JSON: what was wrong, at which byte.
    Syntax { what: &'static str, at: usize },
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

impl From<Fault> for Error {
    fn from(fault: Fault) -> Error {
        match fault {
            Fault::Syntax { what, at } => {
                Error::invalid(format!("not valid JSON: {what} at byte {}", at + 1))
            }
            Fault::TooDeep => {
                Error::invalid(format!("nesting too deep: more than {MAX_DEPTH} levels"))
            }
        }
    }
}
