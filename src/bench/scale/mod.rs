//! What the scale-out harness (`examples/scale_out`, run by `scripts/scale-out`) records and
//! how it judges it: several engine processes read users while one process writes them, and
//! every answer any reader served is checked against the writes that were acknowledged.
//!
//! - `record`: a [`WriteRecord`] per write (the user, its version or its deletion, when it was
//!   sent and when it was acknowledged) and a [`PageRecord`] per page a reader enriched (when
//!   it started and ended, and what it served for each user it named: a version,
//!   `ReferenceNotFound`, or something unreadable), with their binary encoding;
//! - `observe`: reading what an enriched document served, from its bytes;
//! - `check`: the [`Checker`], which judges every observation against the history of writes
//!   and measures the staleness window.
//!
//! Times are nanoseconds of the system clock ([`now_ns`]): every process of the harness runs on
//! one machine, so their clocks are the same clock.
//!
//! # What is right, what is stale, what is wrong
//!
//! A user's history is its writes in order, each with a version that only grows: version 0 is
//! the load before the readers start, and a deletion takes a version too, so a user deleted and
//! created again comes back with a higher one. Before its first write a user is absent (users
//! never written are absent throughout).
//!
//! A page ran from `start` to `end`; what it served for a user was read at some instant between
//! the two. A state of the user (a version, or absent) is *superseded* at the earliest
//! acknowledgement of any later write of that user. An observation is:
//!
//! - **right** if it names a state that could be current at some instant of the page: its write
//!   was sent before `end` and it was not superseded before `start`;
//! - **stale** if it names a state superseded before the page started: it was certainly served
//!   after a newer write was acknowledged. Its staleness is `end − superseded` (at most; at
//!   least `start − superseded`). The *staleness window* of a run is the largest staleness of
//!   any of its observations: the longest time any process served a user's older version (or
//!   its absence) after the newer write was acknowledged.
//! - **wrong** if it is a version never written (or written only as a deletion), a version
//!   whose write was sent after the page had ended, something that is not a user of the right
//!   id, or stale by more than the bound given to the [`Checker`] (`start − superseded` over
//!   it). `ReferenceNotFound` for a user whose latest deletion (or initial absence) was
//!   superseded more than the bound before the page started is the last case: a user that
//!   existed through the whole read reported missing.
//!
//! For `ReferenceNotFound` the state it names is the latest absence sent before the page
//! ended, the one that makes it the least stale.

mod check;
mod observe;
mod record;

pub use self::check::{Checker, Verdict, Wrong, WrongKind};
pub use self::observe::observe;
pub use self::record::{PageRecord, Seen, WriteRecord, now_ns};
