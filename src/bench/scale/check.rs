//! The [`Checker`]: every observation judged against the history of acknowledged writes (the
//! rules are in the module's parent).

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use super::{PageRecord, Seen, WriteRecord};

/// Judges what readers served against what the writer wrote.
#[derive(Debug)]
pub struct Checker {
    users: HashMap<u32, History>,
    bound: u64,
    verdict: Verdict,
    staleness: Vec<u64>,
}

/// One user's writes, in version order.
#[derive(Debug)]
struct History {
    writes: Vec<WriteRecord>,
    /// `superseded[i]`: the earliest acknowledgement of a write after `i`, `u64::MAX` if none.
    superseded: Vec<u64>,
    /// When the user's initial absence was superseded: the earliest acknowledgement of all.
    first_ack: u64,
    /// The positions of the deletions, in order.
    deletions: Vec<usize>,
}

impl History {
    fn new(mut writes: Vec<WriteRecord>) -> History {
        writes.sort_by_key(|w| w.version);
        let mut superseded = vec![u64::MAX; writes.len()];
        let mut earliest = u64::MAX;
        for (i, write) in writes.iter().enumerate().rev() {
            superseded[i] = earliest;
            earliest = earliest.min(write.acked.unwrap_or(u64::MAX));
        }
        let deletions = (writes.iter().enumerate())
            .filter(|(_, w)| w.deleted)
            .map(|(i, _)| i)
            .collect();
        History {
            writes,
            superseded,
            first_ack: earliest,
            deletions,
        }
    }
}

/// Why an observation is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WrongKind {
    /// A version the writer never wrote, or wrote only as a deletion.
    NeverWritten,
    /// A version whose write was sent only after the page had ended.
    BeforeWritten,
    /// An older version served more than the bound after a newer write was acknowledged.
    TooStale,
    /// `ReferenceNotFound` more than the bound after the user was (re)created.
    NotFoundWhileExisting,
    /// Not a user of the id named.
    Garbled,
}

/// One wrong observation, with what it needs to be looked into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Wrong {
    /// Why it is wrong.
    pub kind: WrongKind,
    /// The reader process.
    pub process: u32,
    /// The user, by index.
    pub user: u32,
    /// The version served; `None` for `ReferenceNotFound` or a garbled answer.
    pub version: Option<u32>,
    /// The page's start and end.
    pub start: u64,
    /// See `start`.
    pub end: u64,
    /// For a stale answer, when it was superseded.
    pub superseded: Option<u64>,
}

impl fmt::Display for Wrong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}: process {} served user {} {} in a page of [{}, {}] ns",
            self.kind,
            self.process,
            self.user,
            self.version
                .map_or("without a version".to_string(), |v| format!("version {v}")),
            self.start,
            self.end
        )?;
        if let Some(at) = self.superseded {
            let after = self.start.saturating_sub(at) as f64 / 1e6;
            write!(f, ", {after:.3} ms after a newer write was acknowledged")?;
        }
        Ok(())
    }
}

/// What the checker found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    /// Pages checked.
    pub pages: u64,
    /// Answers checked (one per distinct user of each page).
    pub observations: u64,
    /// Of which stale: served after a newer write had been acknowledged.
    pub stale: u64,
    /// The staleness window: the largest `end − superseded` of a stale answer, in ns.
    pub window_ns: u64,
    /// The largest `start − superseded` of a stale answer: the window is at least this.
    pub window_at_least_ns: u64,
    /// The median and 99th percentile of the stale answers' staleness (`end − superseded`).
    pub stale_p50_ns: u64,
    /// See `stale_p50_ns`.
    pub stale_p99_ns: u64,
    /// Wrong answers, of every kind.
    pub wrong: u64,
    /// Wrong answers by kind.
    pub wrong_by_kind: Vec<(WrongKind, u64)>,
    /// The first wrong answers found, to look into.
    pub examples: Vec<Wrong>,
}

/// How many wrong answers a verdict keeps to show.
const EXAMPLES: usize = 10;

impl Checker {
    /// A checker of the history `writes` (the initial load included, as version 0 of each
    /// user), for which an answer stale by more than `bound_ns` is wrong.
    pub fn new(writes: Vec<WriteRecord>, bound_ns: u64) -> Checker {
        let mut by_user: HashMap<u32, Vec<WriteRecord>> = HashMap::new();
        for write in writes {
            by_user.entry(write.user).or_default().push(write);
        }
        Checker {
            users: (by_user.into_iter())
                .map(|(user, writes)| (user, History::new(writes)))
                .collect(),
            bound: bound_ns,
            verdict: Verdict::default(),
            staleness: Vec::new(),
        }
    }

    /// Judges every answer of `page`.
    pub fn check(&mut self, page: &PageRecord) {
        self.verdict.pages += 1;
        for &(user, seen) in &page.seen {
            self.verdict.observations += 1;
            if let Some(kind) = self.judge(page, user, seen) {
                self.wrong(page, user, seen, kind);
            }
        }
    }

    /// `None` if the answer is right (stale or not), else why it is wrong.
    fn judge(&mut self, page: &PageRecord, user: u32, seen: Seen) -> Option<WrongKind> {
        let history = self.users.get(&user);
        let superseded = match (seen, history) {
            (Seen::Garbled, _) => return Some(WrongKind::Garbled),
            (Seen::NotFound, None) => return None,
            (Seen::Version(_), None) => return Some(WrongKind::NeverWritten),
            (Seen::Version(v), Some(h)) => {
                let Ok(i) = h.writes.binary_search_by_key(&v, |w| w.version) else {
                    return Some(WrongKind::NeverWritten);
                };
                if h.writes[i].deleted {
                    return Some(WrongKind::NeverWritten);
                }
                if h.writes[i].sent > page.end {
                    return Some(WrongKind::BeforeWritten);
                }
                h.superseded[i]
            }
            (Seen::NotFound, Some(h)) => {
                // The latest absence sent before the page ended.
                let sent = h
                    .deletions
                    .partition_point(|&i| h.writes[i].sent <= page.end);
                match sent.checked_sub(1) {
                    Some(d) => h.superseded[h.deletions[d]],
                    None => h.first_ack,
                }
            }
        };
        if superseded >= page.start {
            return None;
        }
        self.verdict.stale += 1;
        let staleness = page.end - superseded;
        self.staleness.push(staleness);
        self.verdict.window_ns = self.verdict.window_ns.max(staleness);
        let at_least = page.start - superseded;
        self.verdict.window_at_least_ns = self.verdict.window_at_least_ns.max(at_least);
        (at_least > self.bound).then_some(match seen {
            Seen::NotFound => WrongKind::NotFoundWhileExisting,
            _ => WrongKind::TooStale,
        })
    }

    fn wrong(&mut self, page: &PageRecord, user: u32, seen: Seen, kind: WrongKind) {
        let verdict = &mut self.verdict;
        verdict.wrong += 1;
        match verdict.wrong_by_kind.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => verdict.wrong_by_kind.push((kind, 1)),
        }
        if verdict.examples.len() < EXAMPLES {
            let superseded = self.users.get(&user).and_then(|h| match seen {
                Seen::Version(v) => {
                    (h.writes.binary_search_by_key(&v, |w| w.version).ok()).map(|i| h.superseded[i])
                }
                _ => None,
            });
            verdict.examples.push(Wrong {
                kind,
                process: page.process,
                user,
                version: match seen {
                    Seen::Version(v) => Some(v),
                    _ => None,
                },
                start: page.start,
                end: page.end,
                superseded: superseded.filter(|&s| s != u64::MAX),
            });
        }
    }

    /// What was found in all the pages checked.
    pub fn verdict(mut self) -> Verdict {
        self.staleness.sort_unstable();
        let at = |q: f64| {
            let last = self.staleness.len().saturating_sub(1);
            self.staleness
                .get((last as f64 * q).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        self.verdict.stale_p50_ns = at(0.5);
        self.verdict.stale_p99_ns = at(0.99);
        self.verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn write(user: u32, version: u32, deleted: bool, sent: u64, acked: u64) -> WriteRecord {
        WriteRecord {
            user,
            version,
            deleted,
            sent: sent * MS,
            acked: Some(acked * MS),
        }
    }

    /// User 1: loaded at 0–1 ms as v0, v1 at 100–101, deleted (v2) at 200–201, created again as
    /// v3 at 300–301. User 2 is never written.
    fn history() -> Vec<WriteRecord> {
        vec![
            write(1, 0, false, 0, 1),
            write(1, 1, false, 100, 101),
            write(1, 2, true, 200, 201),
            write(1, 3, false, 300, 301),
        ]
    }

    fn page(start: u64, end: u64, seen: &[(u32, Seen)]) -> PageRecord {
        PageRecord {
            process: 3,
            start: start * MS,
            end: end * MS,
            seen: seen.to_vec(),
        }
    }

    fn verdict(pages: &[PageRecord]) -> Verdict {
        let mut checker = Checker::new(history(), 50 * MS);
        pages.iter().for_each(|p| checker.check(p));
        checker.verdict()
    }

    #[test]
    fn right_answers_pass_and_stale_ones_are_measured() {
        let v = verdict(&[
            page(50, 51, &[(1, Seen::Version(0)), (2, Seen::NotFound)]),
            // During the write of v1 both versions are right.
            page(100, 101, &[(1, Seen::Version(0))]),
            page(100, 101, &[(1, Seen::Version(1))]),
            // v0 after v1's acknowledgement: stale by 104 − 101 ms (at least 102 − 101).
            page(102, 104, &[(1, Seen::Version(0))]),
            // Missing during the deletion's life, and at its edges.
            page(200, 202, &[(1, Seen::NotFound)]),
            page(299, 300, &[(1, Seen::NotFound)]),
            page(310, 311, &[(1, Seen::Version(3))]),
        ]);
        assert_eq!((v.pages, v.observations, v.stale, v.wrong), (7, 8, 1, 0));
        assert_eq!(v.window_ns, 3 * MS);
        assert_eq!(v.window_at_least_ns, MS);
        assert_eq!(v.examples, []);
    }

    #[test]
    fn every_kind_of_wrong_answer_is_caught() {
        let cases = [
            (
                page(150, 151, &[(1, Seen::Version(9))]),
                WrongKind::NeverWritten,
            ),
            (
                page(250, 251, &[(1, Seen::Version(2))]),
                WrongKind::NeverWritten,
            ),
            (
                page(150, 151, &[(2, Seen::Version(0))]),
                WrongKind::NeverWritten,
            ),
            (
                page(90, 95, &[(1, Seen::Version(1))]),
                WrongKind::BeforeWritten,
            ),
            // v0 at 160 ms: 59 ms after v1 was acknowledged, over the bound of 50.
            (
                page(160, 161, &[(1, Seen::Version(0))]),
                WrongKind::TooStale,
            ),
            // Missing at 150 ms: it existed from 1 ms and was deleted only at 200.
            (
                page(150, 151, &[(1, Seen::NotFound)]),
                WrongKind::NotFoundWhileExisting,
            ),
            // Missing at 400 ms: created again at 301.
            (
                page(400, 401, &[(1, Seen::NotFound)]),
                WrongKind::NotFoundWhileExisting,
            ),
            (page(150, 151, &[(1, Seen::Garbled)]), WrongKind::Garbled),
        ];
        for (page, kind) in cases {
            let v = verdict(std::slice::from_ref(&page));
            assert_eq!(v.wrong, 1, "{page:?}");
            assert_eq!(v.wrong_by_kind, [(kind, 1)], "{page:?}");
            assert_eq!(v.examples[0].kind, kind);
        }
    }

    #[test]
    fn a_write_of_unknown_outcome_may_be_seen_but_supersedes_nothing() {
        let mut writes = history();
        writes.push(WriteRecord {
            user: 1,
            version: 4,
            deleted: false,
            sent: 400 * MS,
            acked: None,
        });
        let mut checker = Checker::new(writes, 50 * MS);
        checker.check(&page(500, 501, &[(1, Seen::Version(4))]));
        checker.check(&page(500, 501, &[(1, Seen::Version(3))]));
        let v = checker.verdict();
        assert_eq!((v.observations, v.stale, v.wrong), (2, 0, 0));
    }
}
