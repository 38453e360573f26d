//! The batch resolver: distinct ids in, one answer per id out, with one source call per batch
//! of misses.
//!
//! A resolver serves one [`ReferenceKind`](crate::reference::ReferenceKind) of reference
//! through its source and its L1. For each id: the L1 answers if it can; otherwise a load of
//! that id already in flight for another page is joined; otherwise the id joins one of this
//! page's batches (one unless the page has more misses than the batch size). Within a byte
//! allowance ([`Resolver::resolve_within`]) the misses that do not fit at once are read in
//! waves, one after the other, each like a page's misses without one. A batch is one
//! [`UserSource::get_many_each`](crate::store::UserSource::get_many_each) call (an answer or an
//! error per id), run on its own task so that a page dropped mid-load (a client gone away)
//! never leaves the pages that joined its loads waiting forever.

use std::sync::Arc;

use futures::FutureExt;
use tokio::sync::oneshot;

use crate::answer::Answer;
use crate::cache::{BatchFuture, BatchResult, Cached, Flight, Joined, L1, Memo, MemoPool};
use crate::error::{Error, ErrorKind, Result};
use crate::id::IdList;
use crate::record::{Key, max_stored_len};
use crate::reference::ReferenceKind;
use crate::stats::EnrichStats;
use crate::store::SharedSource;

impl From<Cached> for Answer {
    fn from(cached: Cached) -> Answer {
        match cached {
            Cached::Found(user) => Answer::Found(user),
            Cached::Missing => Answer::Missing,
        }
    }
}

/// Resolves ids of one kind through the L1 and the source.
#[derive(Debug, Clone)]
pub(crate) struct Resolver {
    pub(crate) source: SharedSource,
    pub(crate) l1: Arc<L1>,
    /// The most ids one source call is asked for (at least 1).
    pub(crate) max_batch: usize,
}

/// One of a page's batches of misses: the ids it registered, and where their answers will come
/// from.
struct Batch {
    sender: oneshot::Sender<BatchResult>,
    answer: BatchFuture,
    /// Each registered id's place in the page, with its flight, in flight-index order.
    started: Vec<(usize, Arc<Flight>)>,
}

impl Resolver {
    /// One answer per id of `ids` (which must be distinct, valid ids), in order.
    pub(crate) async fn resolve(
        &self,
        ids: &(impl IdList + ?Sized),
        stats: &mut EnrichStats,
    ) -> Vec<Answer> {
        self.resolve_with(ids, stats, None).await.0
    }

    /// Like [`Resolver::resolve`], answering first from a memo of `memos` and keeping in one
    /// what the L1 and the source said, as long as the L1 did not change meanwhile. The memos
    /// come with the [`id_hash`](crate::user::id_hash) of each id. Also says which ids the memo
    /// answered (nothing if it could not be used).
    ///
    /// A memo is read at the start and taught at the end, never held across the loads' waits
    /// (see [`MemoPool`]).
    pub(crate) async fn resolve_with(
        &self,
        ids: &(impl IdList + ?Sized),
        stats: &mut EnrichStats,
        memos: Option<(&MemoPool, &[u64])>,
    ) -> (Vec<Answer>, Vec<bool>) {
        match self.resolve_within(ids, stats, memos, None).await {
            Ok(resolved) => resolved,
            Err(_) => unreachable!("no allowance, never over it"),
        }
    }

    /// Like [`Resolver::resolve_with`], within an allowance of bytes: once the answers of the
    /// distinct ids resolved so far (each written at least once wherever they are used) add up
    /// to more than `allowance`, stops and says how many bytes they add up to, without asking
    /// the source for the rest.
    ///
    /// The memo and the L1 answer first, and their answers count first. The misses are then read
    /// in waves, one after the other: a wave takes misses, in order, as long as the largest
    /// records they could be ([`max_stored_len`]) fit in what is left of the allowance (at least
    /// one miss), so that a page whose misses fit whatever their sizes is one wave, as without
    /// an allowance; and the source is asked for at most the allowance plus one record of the
    /// largest size in all. Each wave is read like a page's misses without an allowance (loads
    /// of other pages joined, batches of [`Resolver::max_batch`]).
    pub(crate) async fn resolve_within(
        &self,
        ids: &(impl IdList + ?Sized),
        stats: &mut EnrichStats,
        memos: Option<(&MemoPool, &[u64])>,
        allowance: Option<usize>,
    ) -> std::result::Result<(Vec<Answer>, Vec<bool>), usize> {
        let read = memos.and_then(|(memos, hashes)| {
            memos.begin(&self.l1, |memo| remembered(memo, ids, hashes))
        });
        let (stamp, mut answers) = match read {
            Some((stamp, answers)) => (Some(stamp), answers),
            None => (None, vec![None; ids.count()]),
        };
        // Which answers came from the memo: the others are kept in one at the end.
        let remembered: Vec<bool> = match stamp {
            Some(_) => answers.iter().map(Option::is_some).collect(),
            None => Vec::new(),
        };
        stats.l1_hits += remembered.iter().filter(|&&hit| hit).count() as u64;
        // The ids neither the memo nor the L1 answered, in order: a warm page allocates none.
        let mut misses: Vec<usize> = Vec::new();
        for (i, answer) in answers.iter_mut().enumerate() {
            if answer.is_some() {
                continue;
            }
            if let Some(cached) = self.l1.get(ids.id_bytes(i)) {
                stats.l1_hits += 1;
                *answer = Some(cached.into());
                continue;
            }
            misses.push(i);
        }

        // What the answers so far write, at least once each.
        let mut written = 0;
        if let Some(allowance) = allowance {
            written = written_len(ids, &answers, 0..ids.count());
            if written > allowance {
                return Err(written);
            }
        }
        let mut rest = &misses[..];
        while !rest.is_empty() {
            let wave = match allowance {
                None => rest.len(),
                Some(allowance) => wave_len(ids, rest, allowance - written),
            };
            let (now, later) = rest.split_at(wave);
            rest = later;
            self.read_wave(ids, now, &mut answers, stats).await;
            if let Some(allowance) = allowance {
                written += written_len(ids, &answers, now.iter().copied());
                if written > allowance {
                    return Err(written);
                }
            }
        }

        let answers: Vec<Answer> = answers
            .into_iter()
            .map(|a| a.expect("every id is answered"))
            .collect();
        // A page the store failed keeps nothing: it may be tried again, and its ids must then
        // be answered as new ones, not as ones an earlier page learned (a batch job counts the
        // distinct ids of a run by what each page did not find in a memo).
        let faulty = answers.iter().any(|a| matches!(a, Answer::Unavailable(_)));
        if let (Some((memos, hashes)), Some(stamp), false) = (memos, stamp, faulty) {
            let fresh = (answers.iter().zip(&remembered).enumerate())
                .filter(|(_, (_, remembered))| !**remembered)
                .filter_map(|(i, (answer, _))| {
                    let cached = match answer {
                        Answer::Found(user) => Cached::Found(user.clone()),
                        Answer::Missing => Cached::Missing,
                        Answer::Unavailable(_) => return None,
                    };
                    Some((ids.id_bytes(i), hashes[i], cached))
                });
            memos.keep(&self.l1, stamp, fresh);
        }
        Ok((answers, remembered))
    }

    /// Answers the ids `wave` numbers, which neither a memo nor the L1 answered: each joins a
    /// load of it in flight for another page, or one of this wave's batches; every batch is
    /// sent off before any is awaited.
    async fn read_wave(
        &self,
        ids: &(impl IdList + ?Sized),
        wave: &[usize],
        answers: &mut [Option<Answer>],
        stats: &mut EnrichStats,
    ) {
        // This wave's own batches, made at its first id that joins no load in flight.
        let mut batches: Vec<Batch> = Vec::new();
        let mut waiting: Vec<(usize, Arc<Flight>)> = Vec::new();
        for &i in wave {
            if batches
                .last()
                .is_none_or(|batch| batch.started.len() >= self.max_batch)
            {
                let (sender, receiver) = oneshot::channel::<BatchResult>();
                batches.push(Batch {
                    sender,
                    answer: receiver.shared(),
                    started: Vec::new(),
                });
            }
            let batch = batches.last_mut().expect("a batch was just made");
            match self
                .l1
                .join_or_start(ids.id(i), &batch.answer, batch.started.len())
            {
                Joined::Waiting(flight) => waiting.push((i, flight)),
                Joined::Started(flight) => batch.started.push((i, flight)),
            }
        }

        // Every batch is sent off before any is awaited, so that they load side by side.
        let mut loading = Vec::with_capacity(batches.len());
        for Batch {
            sender,
            answer,
            started,
        } in batches
        {
            // A batch whose every id joined other pages' loads has nothing to load.
            if !started.is_empty() {
                self.load(ids, &started, sender, stats);
                loading.push((answer, started));
            }
        }
        for (answer, started) in loading {
            let result = answer.await;
            for (slot, (i, _)) in started.iter().enumerate() {
                answers[*i] = Some(pick(&result, slot));
            }
        }

        stats.coalesced += waiting.len() as u64;
        for (i, flight) in waiting {
            let result = flight.batch.clone().await;
            answers[i] = Some(pick(&result, flight.index));
        }
    }

    /// Starts the load of the ids a batch registered, on a task of its own, answering through
    /// `sender`.
    fn load(
        &self,
        ids: &(impl IdList + ?Sized),
        started: &[(usize, Arc<Flight>)],
        sender: oneshot::Sender<BatchResult>,
        stats: &mut EnrichStats,
    ) {
        // A load that ended between our miss and our registration has filled the L1: answer
        // those ids from it rather than asking the source again.
        let rechecked: Vec<Option<Cached>> = started
            .iter()
            .map(|(i, _)| self.l1.get(ids.id_bytes(*i)))
            .collect();
        let to_load: Vec<Key> = started
            .iter()
            .zip(&rechecked)
            .filter(|(_, cached)| cached.is_none())
            .map(|((i, _), _)| Key::parse(ids.id(*i)).expect("resolver keys are valid"))
            .collect();
        stats.l1_hits += (started.len() - to_load.len()) as u64;
        if !to_load.is_empty() {
            stats.store_calls += 1;
            stats.fetched += to_load.len() as u64;
        }
        let load = Load {
            source: self.source.clone(),
            flights: Flights {
                l1: self.l1.clone(),
                ids: started
                    .iter()
                    .map(|(i, flight)| (Box::from(ids.id(*i)), flight.clone()))
                    .collect(),
            },
            rechecked,
            to_load,
            sender,
        };
        tokio::spawn(load.run());
    }
}

/// What `memo` answers for each of `ids`, whose [`id_hash`](crate::user::id_hash)es are
/// `hashes`.
fn remembered(memo: &Memo, ids: &(impl IdList + ?Sized), hashes: &[u64]) -> Vec<Option<Answer>> {
    debug_assert_eq!(hashes.len(), ids.count(), "a hash per id");
    // The memo is asked about every id before any of its answers is cloned: a clone counts a
    // reference, an atomic add that lets no later load start before it, so asking and cloning
    // in turn made each lookup wait out its cache miss alone.
    let hits = memo.get_all(hashes, |i| ids.id_bytes(i));
    let answers = hits.into_iter().map(|hit| hit.cloned().map(Answer::from));
    answers.collect()
}

/// What the answers of the ids `which` numbers write, once each (nothing for an id not answered
/// yet).
fn written_len(
    ids: &(impl IdList + ?Sized),
    answers: &[Option<Answer>],
    which: impl Iterator<Item = usize>,
) -> usize {
    which
        .filter_map(|i| Some(answers[i].as_ref()?.len(|| ids.id(i))))
        .sum()
}

/// How many of `misses` the next wave reads when `left` bytes of the allowance are left: as
/// many as fit, in order, were each as large as a record of its kind can be; at least one.
fn wave_len(ids: &(impl IdList + ?Sized), misses: &[usize], left: usize) -> usize {
    let mut reserved = 0;
    let fit = misses
        .iter()
        .take_while(|&&i| {
            reserved += max_stored_len(ReferenceKind::of_key(ids.id(i)));
            reserved <= left
        })
        .count();
    fit.max(1)
}

/// Reads slot `index` of a batch's result.
fn pick(result: &Result<BatchResult, oneshot::error::RecvError>, index: usize) -> Answer {
    match result {
        Ok(batch) => match &**batch {
            Ok(found) => match &found[index] {
                Ok(user) => Answer::from(Cached::from_store(user.clone())),
                Err(err) => Answer::Unavailable(err.clone()),
            },
            Err(err) => Answer::Unavailable(err.clone()),
        },
        Err(_) => Answer::Unavailable(Error::new(
            ErrorKind::Internal,
            "a batched load was abandoned before it answered",
        )),
    }
}

/// One batched load: the source call, the L1 fill, and the answer to every waiter.
struct Load {
    source: SharedSource,
    /// Every id registered by the page, with its flight, in flight-index order.
    flights: Flights,
    /// What the L1 held for each when rechecked; `None` for those in `to_load`.
    rechecked: Vec<Option<Cached>>,
    to_load: Vec<Key>,
    sender: oneshot::Sender<BatchResult>,
}

impl Load {
    async fn run(self) {
        let fetched = if self.to_load.is_empty() {
            Vec::new()
        } else {
            self.source.get_records_each(&self.to_load).await
        };
        let expected = self.to_load.len();
        let result = if fetched.len() != expected {
            Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "{} answered {} of {expected} ids",
                    self.source.describe(),
                    fetched.len()
                ),
            ))
        } else {
            let mut fetched = fetched.into_iter();
            Ok(self
                .rechecked
                .iter()
                .map(|cached| match cached {
                    Some(cached) => Ok(cached.record().cloned()),
                    None => fetched.next().expect("one answer per id to load"),
                })
                .collect::<Vec<_>>())
        };
        // Only what the source just said fills the L1; rechecked ids are there already, and an
        // id the source could not read is not cached at all.
        self.flights.land(|slot| match &result {
            Ok(found) if self.rechecked[slot].is_none() => found[slot]
                .as_ref()
                .ok()
                .map(|user| Cached::from_store(user.clone())),
            _ => None,
        });
        // Every waiter holds the shared receiver; nobody listening is fine.
        let _ = self.sender.send(Arc::new(result));
    }
}

/// The flights of a load's ids, each ended exactly once: by the load, with what it read; or,
/// when the load never gets there, as it is dropped, with nothing cached. A load's task ends
/// early when the source panics (tokio catches the panic and drops the task) or when its
/// runtime shuts down first (an enricher shared by several runtimes, a service stopping): its
/// waiters then fail, that once, and the next read of each id asks the source again, rather
/// than joining a flight that nothing would ever land.
struct Flights {
    l1: Arc<L1>,
    ids: Vec<(Box<str>, Arc<Flight>)>,
}

impl Flights {
    /// Ends every flight with the answer `answer` gives for its slot. Each is taken off as it
    /// ends, so that were anything to panic part way, the drop would end the rest.
    fn land(mut self, answer: impl Fn(usize) -> Option<Cached>) {
        while let Some((id, flight)) = self.ids.pop() {
            self.l1.complete(&id, &flight, answer(self.ids.len()));
        }
    }
}

impl Drop for Flights {
    fn drop(&mut self) {
        for (id, flight) in &self.ids {
            self.l1.complete(id, flight, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;
    use crate::cache::CacheConfig;
    use crate::id::id_hash;
    use crate::user::{UserId, UserJson};

    /// A source that knows every user but `down`, which it cannot read.
    #[derive(Debug)]
    struct DownFor(&'static str);

    #[async_trait]
    impl crate::store::UserSource for DownFor {
        async fn get_many(&self, _: &[UserId]) -> Result<Vec<Option<UserJson>>> {
            unreachable!("asked for each id")
        }

        async fn get_many_each(&self, ids: &[UserId]) -> Vec<Result<Option<UserJson>>> {
            ids.iter()
                .map(|id| match id.as_str() {
                    down if down == self.0 => Err(Error::new(ErrorKind::Unavailable, "down")),
                    id => Ok(Some(UserJson::from_stored(format!(
                        r#"{{"created_at":"2021-04-13T22:53:19.670051Z","updated_at":"2021-04-13T22:53:19.670051Z","id":"{id}","data":{{}}}}"#
                    ))?)),
                })
                .collect()
        }

        fn describe(&self) -> String {
            "down for one id".to_string()
        }
    }

    /// A page the store failed teaches the memos nothing: tried again, none of its ids is
    /// "remembered", so a job counts each of them as seen for the first time.
    #[tokio::test]
    async fn a_page_the_store_failed_keeps_nothing_in_a_memo() {
        let resolver = Resolver {
            source: Arc::new(DownFor("b")),
            l1: Arc::new(L1::new(&CacheConfig::new())),
            max_batch: 100,
        };
        let memos = MemoPool::shared();
        let ids: Vec<Box<str>> = ["a", "b"].into_iter().map(Box::from).collect();
        let hashes: Vec<u64> = ids.iter().map(|id| id_hash(id.as_bytes())).collect();
        let mut stats = EnrichStats::default();
        let (answers, _) =
            (resolver.resolve_with(&ids[..], &mut stats, Some((&memos, &hashes)))).await;
        assert!(matches!(answers[0], Answer::Found(_)));
        assert!(matches!(answers[1], Answer::Unavailable(_)));
        let (_, remembered) =
            (resolver.resolve_with(&ids[..1], &mut stats, Some((&memos, &hashes[..1])))).await;
        assert_eq!(remembered, [false]);
        // Once a page is answered whole, what it learned is kept.
        let (_, remembered) =
            (resolver.resolve_with(&ids[..1], &mut stats, Some((&memos, &hashes[..1])))).await;
        assert_eq!(remembered, [true]);
    }

    /// A source that panics the first time it is asked, then answers as `DownFor` does.
    #[derive(Debug, Default)]
    struct PanicsOnce(std::sync::atomic::AtomicBool);

    #[async_trait]
    impl crate::store::UserSource for PanicsOnce {
        async fn get_many(&self, _: &[UserId]) -> Result<Vec<Option<UserJson>>> {
            unreachable!("asked for each id")
        }

        async fn get_many_each(&self, ids: &[UserId]) -> Vec<Result<Option<UserJson>>> {
            let asked = self.0.swap(true, std::sync::atomic::Ordering::SeqCst);
            assert!(asked, "a source that panics once");
            DownFor("nobody").get_many_each(ids).await
        }

        fn describe(&self) -> String {
            "panics once".to_string()
        }
    }

    /// A load whose task ends before it lands (here the source panics) fails its waiters that
    /// once; the next read of the id asks the source again instead of joining a flight that
    /// nothing would ever land.
    #[tokio::test]
    async fn a_load_that_never_lands_leaves_no_flight_behind() {
        let resolver = Resolver {
            source: Arc::new(PanicsOnce::default()),
            l1: Arc::new(L1::new(&CacheConfig::new())),
            max_batch: 100,
        };
        let ids: Vec<Box<str>> = vec![Box::from("a")];
        let mut stats = EnrichStats::default();
        let answers = resolver.resolve(&ids[..], &mut stats).await;
        match &answers[0] {
            Answer::Unavailable(err) => assert!(err.to_string().contains("abandoned"), "{err}"),
            other => panic!("{other:?}"),
        }
        for _ in 0..2 {
            let answers = resolver.resolve(&ids[..], &mut stats).await;
            assert!(matches!(answers[0], Answer::Found(_)), "{:?}", answers[0]);
        }
    }
}
