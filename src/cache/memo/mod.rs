//! Memos: private copies of what the L1 answered, kept by a worker between its pages.

mod slots;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

#[cfg(test)]
use self::slots::MemoId;
use self::slots::Slots;
use super::Cached;
use super::l1::L1;
use crate::sync::{self, Pool, write};

/// A private copy of answers the L1 gave, kept between pages: one for all the workers of a
/// batch job, or several lent to a service's requests (see [`MemoPool`]).
///
/// A job looks up the same popular users in page after page; asking the L1 each time costs a
/// lock, a probe of a shared table and a copy of the user.
/// A memo answers those from a plain map of its own, with its own copies of the bytes (or,
/// lent to requests, the L1's).
///
/// It stays exactly as coherent as the L1: it holds only answers taken while the L1's
/// generation did not move, and it is emptied as soon as the generation moves (any
/// invalidation, flush or bypass), when it is older than [`Memo::MAX_AGE`] (so it never
/// stretches the L1's TTLs by more than that), or when it outgrows [`Memo::MAX_ENTRIES`].
#[derive(Debug, Default)]
pub(crate) struct Memo {
    generation: u64,
    since: Option<Instant>,
    /// Ids with their answers, found by [`id_hash`](crate::user::id_hash).
    answers: Slots,
    /// Bytes of the users held.
    bytes: usize,
    /// Whether the users are shared with the L1 rather than copied (see [`MemoPool`]).
    shares: bool,
}

impl Memo {
    /// The longest an answer is served from a memo after the memo was started.
    pub(crate) const MAX_AGE: Duration = Duration::from_secs(1);
    /// Entries at most; a memo this full starts over, and a page keeps no more than there is
    /// room for.
    pub(crate) const MAX_ENTRIES: usize = 1 << 16;
    /// Bytes of users at most; a memo this full starts over, and a page keeps no more than
    /// there is room for.
    pub(crate) const MAX_BYTES: usize = 16 << 20;
    /// How far ahead of its lookups [`Memo::get_all`] fetches what they will read.
    const AHEAD: usize = 8;
    /// Entries from which [`Memo::get_all`] fetches ahead: fewer (256 KiB of them) are mostly
    /// in the cache, where the hints would cost more than they save.
    const FETCHED_FROM: usize = 4096;

    /// Starts a page: empties the memo if the L1 moved on since it was filled. Returns the
    /// page's stamp, under which its answers may be kept, or `None` if they may not be kept.
    pub(crate) fn begin(&mut self, l1: &L1) -> Option<Stamp> {
        let Some(generation) = l1.generation() else {
            self.clear();
            return None;
        };
        let stale = generation != self.generation
            || self
                .since
                .is_none_or(|since| since.elapsed() > Memo::MAX_AGE)
            || self.answers.len() >= Memo::MAX_ENTRIES
            || self.bytes >= Memo::MAX_BYTES;
        if stale {
            self.clear();
            self.generation = generation;
            self.since = Some(Instant::now());
        }
        Some(Stamp {
            generation,
            at: Instant::now(),
        })
    }

    /// What the memo holds for `id`, whose [`id_hash`](crate::user::id_hash) is `hash`.
    #[cfg(test)]
    pub(crate) fn get(&self, id: &[u8], hash: u64) -> Option<&Cached> {
        self.answers.get(id, hash)
    }

    /// What the memo holds for each of the ids `id` gives, whose hashes are `hashes`.
    ///
    /// Each lookup first has the index slot of the id [`Memo::AHEAD`]` * 2` after it fetched,
    /// and the entry of the one [`Memo::AHEAD`] after it, whose index slot is then in the cache:
    /// a memo of 50k users is a few MiB, so most lookups of a page are cache misses, waited
    /// for side by side rather than one after the other.
    pub(crate) fn get_all<'i>(
        &self,
        hashes: &[u64],
        id: impl Fn(usize) -> &'i [u8],
    ) -> Vec<Option<&Cached>> {
        // A small memo is in the cache already (a service's memos, mostly).
        let hints = self.answers.len() >= Memo::FETCHED_FROM;
        (hashes.iter().enumerate())
            .map(|(i, &hash)| {
                if hints {
                    if let Some(&ahead) = hashes.get(i + 2 * Memo::AHEAD) {
                        self.answers.prefetch_index(ahead);
                    }
                    if let Some(&ahead) = hashes.get(i + Memo::AHEAD) {
                        self.answers.prefetch_entry(ahead);
                    }
                }
                self.answers.get(id(i), hash)
            })
            .collect()
    }

    /// Keeps the answers of a page begun with `stamp`, if the L1 has not moved on since, and
    /// if this memo is no younger than the page (a page may keep its answers in another memo
    /// than the one it read: one started after the page's answers were taken would serve them
    /// for longer than [`Memo::MAX_AGE`] after). The memo is first started over if it is stale,
    /// as [`Memo::begin`] does.
    pub(crate) fn keep<'a>(
        &mut self,
        l1: &L1,
        stamp: Stamp,
        answers: impl Iterator<Item = (&'a [u8], u64, Cached)>,
    ) {
        self.begin(l1);
        if l1.generation() != Some(stamp.generation)
            || stamp.generation != self.generation
            || self.since.is_none_or(|since| since > stamp.at)
        {
            return;
        }
        // As many as there is room for: a page may name more users than a memo holds.
        let room = Memo::MAX_BYTES.saturating_sub(self.bytes);
        let mut left = room;
        let answers: Vec<(&[u8], u64, Cached)> = answers
            .take(Memo::MAX_ENTRIES.saturating_sub(self.answers.len()))
            .take_while(|(_, _, cached)| {
                let len = cached.record().map_or(0, |record| record.as_bytes().len());
                left.checked_sub(len).inspect(|rest| left = *rest).is_some()
            })
            .collect();
        let bytes = room - left;
        self.bytes += bytes;
        // The memo's copies of a page's users share one buffer: one allocation, and one
        // reference count that stays in this core's cache however many of them a page uses.
        let mut copies = Vec::with_capacity(if self.shares { 0 } else { bytes });
        if !self.shares {
            for record in answers.iter().filter_map(|(_, _, cached)| cached.record()) {
                copies.extend_from_slice(record.as_bytes());
            }
        }
        let copies = bytes::Bytes::from(copies);
        let mut at = 0;
        for (id, hash, cached) in answers {
            let private = match cached {
                Cached::Found(record) if !self.shares => {
                    let len = record.as_bytes().len();
                    at += len;
                    Cached::Found(record.held_in(copies.slice(at - len..at)))
                }
                other => other,
            };
            // An answer replaced (two pages that learned the same id) no longer counts.
            if let Some(replaced) = self.answers.insert(id, hash, private) {
                self.bytes -= replaced
                    .record()
                    .map_or(0, |record| record.as_bytes().len());
            }
        }
    }

    fn clear(&mut self) {
        self.answers.clear();
        self.since = None;
        self.bytes = 0;
    }
}

/// When a page began, as a memo says it: the L1's generation then, and the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    generation: u64,
    at: Instant,
}

/// Where pages find their memo: lent out for moments, or one shared by every page.
///
/// A page reads a memo's answers, gives it back while it waits for its loads, and takes one
/// again to keep what it learned: never held across the loads' waits. Held across them, a job
/// with four chunks waiting on their loads made four memos, each asking the L1 about every user.
#[derive(Debug, Clone)]
pub(crate) enum MemoPool {
    /// Memos lent to one page at a time: a service's requests come and go, but the popular
    /// users they name are the same, so each page borrows a memo that earlier pages filled. A
    /// few per core cover the pages resolving at once; more are never kept. They keep the users
    /// as the L1 handed them out (a copy of its own each), not copied once more: a second copy
    /// per request would cost more than it saves.
    Lent(Pool<Memo>),
    /// One memo for all the pages of a batch job, read by several at once and taught by one at
    /// a time, with copies of its own of the users: the popular users are learned once (with a
    /// memo lent to each page, two workers made a second memo whenever their pages met, which
    /// asked the L1 about every user again: perf, 2 cores, the L1's table 2.5 % of the samples,
    /// none on one core).
    Shared(Arc<RwLock<Memo>>),
}

impl Default for MemoPool {
    fn default() -> Self {
        MemoPool::Lent(Pool::new(8))
    }
}

impl MemoPool {
    /// The one memo of a batch job.
    pub(crate) fn shared() -> MemoPool {
        MemoPool::Shared(Arc::default())
    }

    /// Begins a page with the memo (see [`Memo::begin`]) and, if it may be used, reads it
    /// with `read`.
    pub(crate) fn begin<R>(&self, l1: &L1, read: impl FnOnce(&Memo) -> R) -> Option<(Stamp, R)> {
        match self {
            MemoPool::Lent(spares) => {
                let mut memo = lend(spares);
                let read = memo.begin(l1).map(|stamp| (stamp, read(&memo)));
                spares.put(memo);
                read
            }
            MemoPool::Shared(memo) => {
                let stamp = write(memo).begin(l1)?;
                Some((stamp, read(&sync::read(memo))))
            }
        }
    }

    /// Keeps the answers of a page begun with `stamp` (see [`Memo::keep`]).
    pub(crate) fn keep<'a>(
        &self,
        l1: &L1,
        stamp: Stamp,
        answers: impl Iterator<Item = (&'a [u8], u64, Cached)>,
    ) {
        match self {
            MemoPool::Lent(spares) => {
                // Maybe not the memo the page read: it keeps them only if it too was filled
                // under the generation the page began in, and since before the page began.
                let mut memo = lend(spares);
                memo.keep(l1, stamp, answers);
                spares.put(memo);
            }
            MemoPool::Shared(memo) => write(memo).keep(l1, stamp, answers),
        }
    }
}

/// A spare memo, or a new one keeping the users as the L1 handed them out.
fn lend(spares: &Pool<Memo>) -> Memo {
    spares.take().unwrap_or_else(|| Memo {
        shares: true,
        ..Memo::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheConfig;
    use crate::user::UserJson;
    use crate::user::id_hash;

    fn user(name: &str) -> Cached {
        let json = format!(
            r#"{{"created_at":"2021-04-13T22:53:19.670051Z","updated_at":"2021-04-13T22:53:19.670051Z","id":"a","data":{{"name":"{name}"}}}}"#
        );
        Cached::Found(UserJson::from_stored(json).unwrap().into())
    }

    fn name(cached: Option<&Cached>) -> Option<String> {
        let user = cached?.record()?.as_str();
        let start = user.find(r#""name":""#)? + 8;
        Some(user[start..user.len() - 3].to_string())
    }

    /// Fills a memo as a page would: begin, then keep what the page learned.
    fn fill(memo: &mut Memo, l1: &L1, answers: Vec<(&str, Cached)>) -> Option<Stamp> {
        let stamp = memo.begin(l1)?;
        memo.keep(l1, stamp, hashed(answers));
        Some(stamp)
    }

    fn hashed(answers: Vec<(&str, Cached)>) -> impl Iterator<Item = (&[u8], u64, Cached)> {
        answers
            .into_iter()
            .map(|(id, cached)| (id.as_bytes(), id_hash(id.as_bytes()), cached))
    }

    fn get<'m>(memo: &'m Memo, id: &str) -> Option<&'m Cached> {
        memo.get(id.as_bytes(), id_hash(id.as_bytes()))
    }

    #[test]
    fn a_memo_answers_until_the_l1_changes() {
        let l1 = L1::new(&CacheConfig::new());
        let mut memo = Memo::default();
        fill(
            &mut memo,
            &l1,
            vec![("a", user("old")), ("b", Cached::Missing)],
        )
        .unwrap();
        memo.begin(&l1).unwrap();
        assert_eq!(name(get(&memo, "a")).as_deref(), Some("old"));
        assert!(matches!(get(&memo, "b"), Some(Cached::Missing)));

        // Any invalidation, of any id, empties it at the next page.
        l1.invalidate("zzz");
        memo.begin(&l1).unwrap();
        assert!(get(&memo, "a").is_none() && get(&memo, "b").is_none());

        fill(&mut memo, &l1, vec![("a", user("new"))]).unwrap();
        l1.invalidate_all();
        memo.begin(&l1).unwrap();
        assert!(get(&memo, "a").is_none());
    }

    #[test]
    fn a_page_that_saw_an_invalidation_keeps_nothing() {
        let l1 = L1::new(&CacheConfig::new());
        let mut memo = Memo::default();
        let stamp = memo.begin(&l1).unwrap();
        // The page read "a", then a write to "a" was announced before it finished.
        l1.invalidate("a");
        memo.keep(&l1, stamp, hashed(vec![("a", user("stale"))]));
        assert!(get(&memo, "a").is_none());
        memo.begin(&l1).unwrap();
        assert!(get(&memo, "a").is_none());
    }

    /// A page may keep its answers in another memo than the one it read: not in one started
    /// after the page began, which would serve them past their age.
    #[test]
    fn a_memo_younger_than_the_page_keeps_nothing_of_it() {
        let l1 = L1::new(&CacheConfig::new());
        let (mut read, mut other) = (Memo::default(), Memo::default());
        let stamp = read.begin(&l1).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        other.begin(&l1).unwrap();
        other.keep(&l1, stamp, hashed(vec![("a", user("old"))]));
        assert!(get(&other, "a").is_none());
        // One as old as the page, under the same generation, keeps them.
        let mut older = Memo::default();
        older.begin(&l1).unwrap();
        let stamp = read.begin(&l1).unwrap();
        older.keep(&l1, stamp, hashed(vec![("a", user("old"))]));
        assert_eq!(name(get(&older, "a")).as_deref(), Some("old"));
    }

    #[test]
    fn no_memo_while_the_l1_is_bypassed_or_disabled() {
        let l1 = L1::new(&CacheConfig::new());
        let mut memo = Memo::default();
        fill(&mut memo, &l1, vec![("a", user("old"))]).unwrap();
        l1.set_bypass(true);
        assert_eq!(memo.begin(&l1), None);
        assert!(get(&memo, "a").is_none());
        l1.set_bypass(false);
        assert!(memo.begin(&l1).is_some());

        let disabled = L1::new(&CacheConfig::disabled());
        assert_eq!(Memo::default().begin(&disabled), None);
    }

    #[test]
    fn short_and_long_ids_are_told_apart() {
        let l1 = L1::new(&CacheConfig::new());
        let mut memo = Memo::default();
        let long = "l".repeat(MemoId::INLINE + 1);
        let longer = "l".repeat(MemoId::INLINE + 2);
        let inline = "l".repeat(MemoId::INLINE);
        fill(
            &mut memo,
            &l1,
            vec![(&long, user("long")), (&inline, user("inline"))],
        )
        .unwrap();
        assert_eq!(name(get(&memo, &long)).as_deref(), Some("long"));
        assert_eq!(name(get(&memo, &inline)).as_deref(), Some("inline"));
        assert!(get(&memo, &longer).is_none());
        assert!(get(&memo, &inline[1..]).is_none());
        assert!(matches!(
            MemoId::new(inline.as_bytes()),
            MemoId::Inline { .. }
        ));
        assert!(matches!(MemoId::new(long.as_bytes()), MemoId::Boxed(_)));
        assert_eq!(
            std::mem::size_of::<(MemoId, Cached)>(),
            64,
            "an entry is one cache line"
        );
    }

    /// The memo counts the bytes of the users it holds, an answer replaced no longer.
    #[test]
    fn a_replaced_answer_no_longer_counts() {
        let l1 = L1::new(&CacheConfig::new());
        let mut memo = Memo::default();
        let stamp = memo.begin(&l1).unwrap();
        memo.keep(&l1, stamp, hashed(vec![("a", user("first"))]));
        let one = memo.bytes;
        memo.keep(&l1, stamp, hashed(vec![("a", user("again"))]));
        assert_eq!(memo.bytes, one);
        assert_eq!(name(get(&memo, "a")).as_deref(), Some("again"));
        memo.keep(&l1, stamp, hashed(vec![("a", Cached::Missing)]));
        assert_eq!(memo.bytes, 0);
    }

    /// A page naming more users than a memo holds keeps as many as there is room for.
    #[test]
    fn a_page_keeps_no_more_than_a_memo_holds() {
        let l1 = L1::new(&CacheConfig::new());
        let mut memo = Memo::default();
        let ids: Vec<String> = (0..Memo::MAX_ENTRIES + 100)
            .map(|i| format!("u{i}"))
            .collect();
        let answers = ids
            .iter()
            .map(|id| (id.as_str(), Cached::Missing))
            .collect();
        fill(&mut memo, &l1, answers).unwrap();
        assert_eq!(memo.answers.len(), Memo::MAX_ENTRIES);
        assert!(get(&memo, "u0").is_some() && get(&memo, &ids[ids.len() - 1]).is_none());

        let mut memo = Memo::default();
        let big = format!("{:0>9000}", 0);
        let users = (Memo::MAX_BYTES / big.len()) + 10;
        let answers = (0..users)
            .map(|i| (ids[i].as_str(), user(&big)))
            .collect::<Vec<_>>();
        fill(&mut memo, &l1, answers).unwrap();
        assert!(memo.bytes <= Memo::MAX_BYTES, "{} bytes", memo.bytes);
        assert!(
            memo.bytes > Memo::MAX_BYTES - 10_000,
            "{} bytes",
            memo.bytes
        );
        assert!(memo.answers.len() < users);
    }

    #[test]
    fn a_memo_starts_over_when_old() {
        let l1 = L1::new(&CacheConfig::new());
        let mut memo = Memo::default();
        fill(&mut memo, &l1, vec![("a", user("old"))]).unwrap();
        memo.since = Some(Instant::now() - Memo::MAX_AGE - Duration::from_millis(1));
        memo.begin(&l1).unwrap();
        assert!(get(&memo, "a").is_none());
    }
}
