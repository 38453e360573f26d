//! What an id resolves to, and how an answer is written in a document's place: the one rule
//! every path that writes enriched documents follows.

use crate::error::{Error, Result};
use crate::record::Record;
use crate::reference::{error_len, write_not_found, write_unavailable};
use crate::stats::EnrichStats;

/// What the resolver knows of one id.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    /// The record as stored.
    Found(Record),
    /// No such record.
    Missing,
    /// The store could not say.
    Unavailable(Error),
}

impl Answer {
    /// Appends what stands in a document for a reference to the id `id` gives: the user's
    /// stored bytes, or the inline error object. The id is asked for only by an error object:
    /// a page finding an id's text at every reference it renders was 2.5 % of a job's
    /// instructions (callgrind), nearly all of it for found users that never use it.
    pub(crate) fn write<'a>(&self, id: impl FnOnce() -> &'a str, out: &mut Vec<u8>) {
        match self {
            Answer::Found(record) => out.extend_from_slice(record.as_bytes()),
            Answer::Missing => write_not_found(out, id()),
            Answer::Unavailable(_) => write_unavailable(out, id()),
        }
    }

    /// Starts bringing a found record's bytes into the cache, without waiting for them: a
    /// document's users are read from wherever their memo holds them, each a cache miss that
    /// [`Answer::write`] otherwise waits out when it copies them.
    #[inline]
    pub(crate) fn prefetch(&self) {
        if let Answer::Found(record) = self {
            // A user is a few hundred bytes.
            crate::prefetch::bytes(record.as_bytes(), 4);
        }
    }

    /// The answer as a lookup returns it: the user, `None` for no such user, or the source's
    /// error.
    pub(crate) fn into_result(self) -> Result<Option<Record>> {
        match self {
            Answer::Found(record) => Ok(Some(record)),
            Answer::Missing => Ok(None),
            Answer::Unavailable(err) => Err(err),
        }
    }

    /// Counts the answer in `stats`: a missing or an unavailable user.
    pub(crate) fn count(&self, stats: &mut EnrichStats) {
        match self {
            Answer::Found(_) => {}
            Answer::Missing => stats.missing += 1,
            Answer::Unavailable(_) => stats.unavailable += 1,
        }
    }

    /// The length of what [`Answer::write`] appends.
    pub(crate) fn len<'a>(&self, id: impl FnOnce() -> &'a str) -> usize {
        match self {
            Answer::Found(record) => record.as_bytes().len(),
            Answer::Missing => error_len(true, id()),
            Answer::Unavailable(_) => error_len(false, id()),
        }
    }
}
