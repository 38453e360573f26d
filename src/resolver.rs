//! The batch resolver: distinct ids in, one answer per id out, with at most one store call.
//!
//! For each id: the L1 answers if it can; otherwise a load of that id already in flight for
//! another page is joined; otherwise the id joins this page's batch. The batch is one
//! [`UserSource::get_many_each`](crate::UserSource::get_many_each) call (an answer or an error per id), run on its own task so
//! that a page dropped mid-load (a client gone away) never leaves the pages that joined its
//! loads waiting forever.

use std::sync::Arc;

use futures::FutureExt;
use tokio::sync::oneshot;

use crate::answer::Answer;
use crate::cache::{BatchFuture, BatchResult, Cached, Flight, Joined, L1, Memo};
use crate::error::{Error, ErrorKind, Result};
use crate::stats::EnrichStats;
use crate::store::SharedStore;
use crate::user::UserId;

impl From<Cached> for Answer {
    fn from(cached: Cached) -> Answer {
        match cached {
            Cached::Found(user) => Answer::Found(user),
            Cached::Missing => Answer::Missing,
        }
    }
}

/// Resolves ids through the L1 and the store.
#[derive(Debug, Clone)]
pub(crate) struct Resolver {
    pub(crate) store: SharedStore,
    pub(crate) l1: Arc<L1>,
}

impl Resolver {
    /// One answer per id of `ids` (which must be distinct, valid ids), in order.
    pub(crate) async fn resolve(&self, ids: &[Box<str>], stats: &mut EnrichStats) -> Vec<Answer> {
        self.resolve_with(ids, stats, None).await
    }

    /// Like [`Resolver::resolve`], answering first from `memo` and keeping in it what the L1
    /// and the store said, as long as the L1 did not change meanwhile. The memo comes with the
    /// [`id_hash`](crate::user::id_hash) of each id.
    pub(crate) async fn resolve_with(
        &self,
        ids: &[Box<str>],
        stats: &mut EnrichStats,
        memo: Option<(&mut Memo, &[u64])>,
    ) -> Vec<Answer> {
        let (mut memo, hashes) = match memo {
            Some((memo, hashes)) => (Some(memo), hashes),
            None => (None, &[][..]),
        };
        let generation = memo.as_deref_mut().and_then(|memo| memo.begin(&self.l1));
        let memo_hits = |i: usize, memo: &Option<&mut Memo>| {
            generation.and_then(|_| memo.as_deref()?.get(&ids[i], hashes[i]).cloned())
        };
        let mut answers: Vec<Option<Answer>> = vec![None; ids.len()];
        // Which answers came from the memo: the others are kept in it at the end.
        let mut remembered = vec![false; if generation.is_some() { ids.len() } else { 0 }];
        // This page's own batch, made at its first miss: a warm page allocates none of it.
        let mut batch: Option<(oneshot::Sender<BatchResult>, BatchFuture)> = None;
        let mut started: Vec<(usize, Arc<Flight>)> = Vec::new();
        let mut waiting: Vec<(usize, Arc<Flight>)> = Vec::new();

        for (i, id) in ids.iter().enumerate() {
            if let Some(cached) = memo_hits(i, &memo) {
                stats.l1_hits += 1;
                remembered[i] = true;
                answers[i] = Some(cached.into());
                continue;
            }
            if let Some(cached) = self.l1.get(id) {
                stats.l1_hits += 1;
                answers[i] = Some(cached.into());
                continue;
            }
            let (_, shared) = batch.get_or_insert_with(|| {
                let (sender, receiver) = oneshot::channel::<BatchResult>();
                (sender, receiver.shared())
            });
            match self.l1.join_or_start(id, shared, started.len()) {
                Joined::Waiting(flight) => waiting.push((i, flight)),
                Joined::Started(flight) => started.push((i, flight)),
            }
        }

        if let Some((sender, batch)) = batch.filter(|_| !started.is_empty()) {
            // A load that ended between our miss and our registration has filled the L1:
            // answer those ids from it rather than asking the store again.
            let rechecked: Vec<Option<Cached>> =
                started.iter().map(|(i, _)| self.l1.get(&ids[*i])).collect();
            let to_load: Vec<UserId> = started
                .iter()
                .zip(&rechecked)
                .filter(|(_, cached)| cached.is_none())
                .map(|((i, _), _)| UserId::parse(&ids[*i]).expect("resolver ids are valid"))
                .collect();
            stats.l1_hits += (started.len() - to_load.len()) as u64;
            if !to_load.is_empty() {
                stats.store_calls += 1;
                stats.fetched += to_load.len() as u64;
            }
            let load = Load {
                store: self.store.clone(),
                l1: self.l1.clone(),
                ids: started
                    .iter()
                    .map(|(i, flight)| (ids[*i].clone(), flight.clone()))
                    .collect(),
                rechecked,
                to_load,
                sender,
            };
            tokio::spawn(load.run());
            let result = batch.clone().await;
            for (slot, (i, _)) in started.iter().enumerate() {
                answers[*i] = Some(pick(&result, slot));
            }
        }

        stats.coalesced += waiting.len() as u64;
        for (i, flight) in waiting {
            let result = flight.batch.clone().await;
            answers[i] = Some(pick(&result, flight.index));
        }
        let answers: Vec<Answer> = answers
            .into_iter()
            .map(|a| a.expect("every id is answered"))
            .collect();
        if let (Some(memo), Some(generation)) = (memo, generation) {
            let fresh = (ids.iter().zip(hashes).zip(&answers).zip(&remembered)).filter_map(
                |(((id, hash), answer), remembered)| {
                    let cached = match answer {
                        Answer::Found(user) => Cached::Found(user.clone()),
                        Answer::Missing => Cached::Missing,
                        Answer::Unavailable(_) => return None,
                    };
                    (!remembered).then_some((&**id, *hash, cached))
                },
            );
            memo.keep(&self.l1, generation, fresh);
        }
        answers
    }
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

/// One batched load: the store call, the L1 fill, and the answer to every waiter.
struct Load {
    store: SharedStore,
    l1: Arc<L1>,
    /// Every id registered by the page, with its flight, in flight-index order.
    ids: Vec<(Box<str>, Arc<Flight>)>,
    /// What the L1 held for each when rechecked; `None` for those in `to_load`.
    rechecked: Vec<Option<Cached>>,
    to_load: Vec<UserId>,
    sender: oneshot::Sender<BatchResult>,
}

impl Load {
    async fn run(self) {
        let fetched = if self.to_load.is_empty() {
            Vec::new()
        } else {
            self.store.get_many_each(&self.to_load).await
        };
        let expected = self.to_load.len();
        let result = if fetched.len() != expected {
            Err(Error::new(
                ErrorKind::Internal,
                format!("the store answered {} of {expected} ids", fetched.len()),
            ))
        } else {
            let mut fetched = fetched.into_iter();
            Ok(self
                .rechecked
                .iter()
                .map(|cached| match cached {
                    Some(cached) => Ok(cached.user().cloned()),
                    None => fetched.next().expect("one answer per id to load"),
                })
                .collect::<Vec<_>>())
        };
        for (slot, (id, flight)) in self.ids.iter().enumerate() {
            // Only what the store just said fills the L1; rechecked ids are there already, and
            // an id the store could not read is not cached at all.
            let answer = match &result {
                Ok(found) if self.rechecked[slot].is_none() => found[slot]
                    .as_ref()
                    .ok()
                    .map(|user| Cached::from_store(user.clone())),
                _ => None,
            };
            self.l1.complete(id, flight, answer);
        }
        // Every waiter holds the shared receiver; nobody listening is fine.
        let _ = self.sender.send(Arc::new(result));
    }
}
