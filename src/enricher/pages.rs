//! Enriching pages: documents held as bytes ([`RawPage`], [`EnrichedPage`]) or as
//! `serde_json::Value`s, in place or spliced ([`EnrichedValues`]).

use serde_json::Value;

use super::{Enricher, OnStoreError};
use crate::answer::Answer;
use crate::cache::MemoPool;
use crate::error::Result;
use crate::id::IdList;
use crate::page::RawPage;
use crate::shape::Depth;
use crate::stats::EnrichStats;
use crate::value::{EnrichedValues, References, enrich_in_place};

impl<S: ?Sized> Enricher<S> {
    /// Enriches a page of documents in place: each is an activity, a group or a feed response.
    pub async fn enrich_values(&self, page: &mut [Value], depth: Depth) -> Result<EnrichStats> {
        let refs = References::collect(page, depth);
        let (answers, stats) = self.resolve_references(&refs).await?;
        enrich_in_place(page, depth, &refs, &answers);
        Ok(stats)
    }

    /// Enriches one document given as JSON bytes (an activity, a group, a feed response, or an
    /// array of them) and appends the result, compact, to `out`.
    pub async fn enrich_bytes(
        &self,
        doc: &[u8],
        depth: Depth,
        out: &mut Vec<u8>,
    ) -> Result<EnrichStats> {
        let mut page = RawPage::new(depth);
        page.push_any(doc)?;
        let enriched = self.enrich_page(&page).await?;
        enriched.write(0, out);
        Ok(enriched.stats())
    }

    /// Resolves every reference of a [`RawPage`] with one read of the store at most; the result
    /// writes each enriched document. The raw-bytes path: documents go in and come out as
    /// bytes, never as a DOM.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> enrich::Result<()> {
    /// use enrich::{Depth, Enricher, NewUser, RawPage, StoreOptions, store};
    ///
    /// let enricher = Enricher::new(store::open("memory:", &StoreOptions::new()).await?);
    /// enricher.users().add(&NewUser::new("alice", None)?, false).await?;
    ///
    /// // A page of documents as they come, one JSON object each (a line of NDJSON, a row).
    /// let mut page = RawPage::new(Depth::TopLevel);
    /// page.push(br#"{"actor": "SU:alice", "verb": "post"}"#)?;
    /// page.push(br#"{"actor":"SU:bob","verb":"like"}"#)?;
    ///
    /// let enriched = enricher.enrich_page(&page).await?;
    /// let mut out = Vec::new();
    /// for doc in 0..page.len() {
    ///     enriched.write(doc, &mut out);
    ///     out.push(b'\n');
    /// }
    /// let text = String::from_utf8(out).unwrap();
    /// assert!(text.starts_with(r#"{"actor":{"created_at":"#), "{text}");
    /// assert!(text.contains(r#""actor":{"error":"ReferenceNotFound","reference":"SU:bob""#));
    /// assert_eq!(enriched.stats().store_calls, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn enrich_page<'p>(&self, page: &'p RawPage) -> Result<EnrichedPage<'p>> {
        // Popular users are answered from a memo of what the L1 said to earlier pages, as
        // coherent as the L1 itself; no memo is held across an await, so a page dropped
        // mid-way takes none with it.
        match self
            .enrich_page_bounded(page, &self.inner.memos, None)
            .await?
        {
            Ok(enriched) => Ok(enriched),
            Err(_) => unreachable!("no allowance, never over it"),
        }
    }

    /// Like [`Enricher::enrich_page`], for a caller with a bound on what it answers: refuses
    /// the page, without reading the rest of its references, once its enriched documents are
    /// sure to add up to more than `max_bytes`.
    ///
    /// Every distinct record a page references is written at least once, so the records
    /// resolved so far (and the error objects of missing ones) are a lower bound of the
    /// enriched page's size. The memo and the L1 answer first; the misses are then read in
    /// waves, one after the other, each as large as what is left of `max_bytes` affords were
    /// every record as large as one can be (a user 10 kB, [`MAX_USER_BYTES`]; an entry
    /// 51,200 B, [`MAX_ENTRY_BYTES`]; a little more as stored). A page whose misses fit is read
    /// in one store call, as by [`Enricher::enrich_page`]; and a page that is refused has read
    /// at most `max_bytes` plus one record of the largest size (about 52 kB) from the store
    /// (records within those limits: what this crate writes). When it is not refused, the
    /// caller still checks [`EnrichedPage::doc_len`]: a record used many times counts once
    /// here.
    ///
    /// [`MAX_USER_BYTES`]: crate::user::MAX_USER_BYTES
    /// [`MAX_ENTRY_BYTES`]: crate::collection::MAX_ENTRY_BYTES
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> enrich::Result<()> {
    /// use enrich::{Depth, Enricher, NewUser, RawPage, StoreOptions, store};
    /// use serde_json::json;
    ///
    /// let enricher = Enricher::new(store::open("memory:", &StoreOptions::new()).await?);
    /// let big = NewUser::new("alice", Some(json!({"bio": "x".repeat(5_000)})))?;
    /// enricher.users().add(&big, false).await?;
    ///
    /// let mut page = RawPage::new(Depth::TopLevel);
    /// page.push(br#"{"actor": "SU:alice", "verb": "post"}"#)?;
    /// let too_large = enricher.enrich_page_within(&page, 1_000).await?.unwrap_err();
    /// assert!(too_large.at_least > 5_000);
    /// let enriched = enricher.enrich_page_within(&page, 1 << 20).await?.unwrap();
    /// assert!(enriched.doc_len(0) > 5_000);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn enrich_page_within<'p>(
        &self,
        page: &'p RawPage,
        max_bytes: usize,
    ) -> Result<std::result::Result<EnrichedPage<'p>, TooLarge>> {
        self.enrich_page_bounded(page, &self.inner.memos, Some(max_bytes))
            .await
    }

    /// Like [`Enricher::enrich_page_within`], for a worker that enriches page after page:
    /// `memos` answer the ids they saw in earlier pages, as long as the L1 has not changed
    /// since.
    pub(crate) async fn enrich_page_with<'p>(
        &self,
        page: &'p RawPage,
        memos: &MemoPool,
        max_bytes: usize,
    ) -> Result<std::result::Result<EnrichedPage<'p>, TooLarge>> {
        self.enrich_page_bounded(page, memos, Some(max_bytes)).await
    }

    async fn enrich_page_bounded<'p>(
        &self,
        page: &'p RawPage,
        memos: &MemoPool,
        max_bytes: Option<usize>,
    ) -> Result<std::result::Result<EnrichedPage<'p>, TooLarge>> {
        let mut stats = EnrichStats {
            activities: page.activities(),
            references: page.references(),
            ..EnrichStats::default()
        };
        stats.distinct = page.ids().count() as u64;
        let resolved = (self.inner.resolver)
            .resolve_within(
                page.ids(),
                &mut stats,
                Some((memos, page.id_hashes())),
                max_bytes,
            )
            .await;
        let (answers, remembered) = match resolved {
            Ok(resolved) => resolved,
            Err(at_least) => {
                return Ok(Err(TooLarge {
                    at_least,
                    max_bytes: max_bytes.expect("over an allowance"),
                    stats,
                }));
            }
        };
        let answers = self.fail_on_store_fault(answers)?;
        page.count_answers(&answers, &mut stats);
        Ok(Ok(EnrichedPage {
            page,
            answers,
            remembered,
            stats,
        }))
    }

    /// Resolves every reference of a page of documents held as values (activities, groups or
    /// feed responses), with at most one store call, without touching them: the result writes
    /// each document with the users spliced in as their stored bytes.
    ///
    /// The same references, answers and stats as [`Enricher::enrich_values`], for a page that
    /// is to be serialized: no user is built as a `Value`, so it costs about what the raw-bytes
    /// path costs rather than a deep copy of a user per reference.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> enrich::Result<()> {
    /// use enrich::{Depth, Enricher, NewUser, StoreOptions, store};
    /// use serde_json::json;
    ///
    /// let enricher = Enricher::new(store::open("memory:", &StoreOptions::new()).await?);
    /// let alice = NewUser::new("alice", Some(json!({"name": "Alice"})))?;
    /// enricher.users().add(&alice, false).await?;
    ///
    /// // A feed response as the service built it: the page is left untouched.
    /// let docs = vec![json!({"results": [{"actor": "SU:alice", "verb": "post"}], "next": ""})];
    /// let enriched = enricher.enrich_value_page(&docs, Depth::TopLevel).await?;
    ///
    /// // Written out with the user's stored bytes spliced in; or serialized, as an array, inside
    /// // a response type of the caller's own (see `EnrichedValues`).
    /// let mut body = Vec::new();
    /// enriched.write(0, &mut body);
    /// let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    /// assert_eq!(body["results"][0]["actor"]["data"]["name"], "Alice");
    /// assert_eq!(docs[0]["results"][0]["actor"], "SU:alice");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn enrich_value_page<'a>(
        &self,
        docs: &'a [Value],
        depth: Depth,
    ) -> Result<EnrichedValues<'a>> {
        let refs = References::collect(docs, depth);
        let (answers, stats) = self.resolve_references(&refs).await?;
        Ok(EnrichedValues::new(docs, depth, refs, answers, stats))
    }

    /// Resolves the references a walk of `Value`s found, and counts what each was answered.
    async fn resolve_references(&self, refs: &References) -> Result<(Vec<Answer>, EnrichStats)> {
        let mut stats = EnrichStats {
            activities: refs.activities,
            references: refs.sites.len() as u64,
            ..EnrichStats::default()
        };
        let answers = self.resolve(&refs.ids, &mut stats).await?;
        for &site in &refs.sites {
            answers[site as usize].count(&mut stats);
        }
        Ok((answers, stats))
    }

    async fn resolve(&self, ids: &[Box<str>], stats: &mut EnrichStats) -> Result<Vec<Answer>> {
        stats.distinct = ids.len() as u64;
        let answers = self.inner.resolver.resolve(ids, stats).await;
        self.fail_on_store_fault(answers)
    }

    /// The answers, or the first store fault among them if faults fail the page.
    fn fail_on_store_fault(&self, answers: Vec<Answer>) -> Result<Vec<Answer>> {
        if self.inner.on_store_error == OnStoreError::Fail
            && let Some(Answer::Unavailable(err)) =
                answers.iter().find(|a| matches!(a, Answer::Unavailable(_)))
        {
            return Err(err.clone());
        }
        Ok(answers)
    }
}

/// What [`Enricher::enrich_page_within`] answers for a page whose enriched documents are sure
/// to be over its `max_bytes`: it stopped reading the page's references there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TooLarge {
    /// A lower bound of the enriched page's size, over `max_bytes`: what the distinct ids
    /// resolved before it stopped write, once each.
    pub at_least: usize,
    /// The bound the page was over.
    pub max_bytes: usize,
    /// What the enrichment did before it stopped: its store calls and the ids they asked for.
    pub stats: EnrichStats,
}

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the enriched page would be over {} bytes: its distinct records alone are {} bytes",
            self.max_bytes, self.at_least
        )
    }
}

impl std::error::Error for TooLarge {}

/// How many documents ahead of the one written [`EnrichedPage::write`] fetches users.
const PREFETCH_AHEAD: usize = 8;

/// A [`RawPage`] whose references are resolved.
#[derive(Debug)]
pub struct EnrichedPage<'p> {
    page: &'p RawPage,
    answers: Vec<Answer>,
    /// Which ids a memo answered (empty if none was used).
    remembered: Vec<bool>,
    stats: EnrichStats,
}

impl EnrichedPage<'_> {
    /// Appends document `doc` of the page, enriched, to `out`.
    ///
    /// # Panics
    ///
    /// If `doc` is not below the page's [`RawPage::len`].
    pub fn write(&self, doc: usize, out: &mut Vec<u8>) {
        // Documents are mostly written in order: the users of the one a few places on are
        // fetched while this one is copied.
        self.page.prefetch_doc(doc + PREFETCH_AHEAD, &self.answers);
        self.page.write_doc(doc, &self.answers, out);
    }

    /// The exact number of bytes [`EnrichedPage::write`] appends for document `doc`, known
    /// before anything is written: a caller with a bound on its output checks this first.
    ///
    /// # Panics
    ///
    /// If `doc` is not below the page's [`RawPage::len`].
    pub fn doc_len(&self, doc: usize) -> usize {
        self.page.doc_len(doc, &self.answers)
    }

    /// What the enrichment did.
    pub fn stats(&self) -> EnrichStats {
        self.stats
    }

    /// The [`id_hash`](crate::id::id_hash) of each of the page's ids that its memo did not
    /// answer: an id a memo answered was new to an earlier page, which taught it to the memo.
    pub(crate) fn unremembered_hashes(&self) -> impl Iterator<Item = u64> {
        let hashes = self.page.id_hashes().iter();
        (hashes.enumerate())
            .filter(|(i, _)| !self.remembered.get(*i).copied().unwrap_or(false))
            .map(|(_, hash)| *hash)
    }
}
