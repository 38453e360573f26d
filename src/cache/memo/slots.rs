//! A memo's map: ids to answers, as a compact index of hashes in front of the entries
//! themselves, one cache line each. The index (8 bytes a slot, linear probing, at most half
//! full) is small enough to stay in a core's cache; each slot holds half the id's hash and
//! where its entry is, so a lookup reads one entry, the right one, and the id there inline
//! (up to [`MemoId::INLINE`] bytes). And a caller looking up many ids can have the index
//! slots and then the entries fetched ahead of its lookups ([`Slots::prefetch_index`],
//! [`Slots::prefetch_entry`]), so that their cache misses are waited for side by side.
//!
//! Why not `hashbrown`, the memo's map before: a lookup there reads a group of control bytes,
//! then the entry they point to: two cache misses, the second waiting for the first, in a
//! table of several MiB (50k users), with no way to start either ahead. Its lookups were the
//! largest single item of a batch job's profile (perf, 1M activities, 50k users: 10.8 %).
//! Slots of a whole entry each, probed in place, were tried first: as fast, but twice the
//! memory (8 MiB for 50k users), and a lookup going on to the next slot missed again.
//!
//! Entries are only ever added or all dropped at once (a memo starts over rather than forgets
//! one id), which is what keeps this simple: no tombstones, no deletion.

use crate::cache::Cached;
use crate::user::id_hash;

/// An id as a memo keeps it: a short one (the usual case) inside the memo's entry, so that
/// finding it reads the entry's cache line and not also a line elsewhere holding the id's text.
/// That second read was most of the cost of a memo's answer: perf, `enrich run` over 1M
/// activities and 50k users, `memcmp` on the boxed ids 4.2 % of the job's CPU.
#[derive(Debug)]
pub(super) enum MemoId {
    Inline {
        len: u8,
        bytes: [u8; MemoId::INLINE],
    },
    Boxed(Box<[u8]>),
}

impl MemoId {
    /// The longest id kept inline; the entry, with its answer, is then 64 bytes.
    pub(super) const INLINE: usize = 22;

    pub(super) fn new(id: &[u8]) -> MemoId {
        match MemoId::sought(id) {
            Sought::Inline { len, bytes } => MemoId::Inline { len, bytes },
            Sought::Long(id) => MemoId::Boxed(id.into()),
        }
    }

    /// `id` as it is compared with the ids held.
    #[inline]
    fn sought(id: &[u8]) -> Sought<'_> {
        match u8::try_from(id.len()) {
            Ok(len) if id.len() <= MemoId::INLINE => {
                let mut bytes = [0; MemoId::INLINE];
                bytes[..id.len()].copy_from_slice(id);
                Sought::Inline { len, bytes }
            }
            _ => Sought::Long(id),
        }
    }

    /// Whether this is the id sought. An id short enough is always kept inline, so a boxed
    /// one never is one sought inline.
    #[inline]
    fn is(&self, sought: &Sought<'_>) -> bool {
        match (self, sought) {
            (MemoId::Inline { len, bytes }, Sought::Inline { len: l, bytes: b }) => {
                len == l && bytes == b
            }
            (MemoId::Boxed(id), Sought::Long(sought)) => **id == **sought,
            _ => false,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            MemoId::Inline { len, bytes } => &bytes[..usize::from(*len)],
            MemoId::Boxed(id) => id,
        }
    }
}

/// An id looked for, in the form a [`MemoId`] is compared with: a short one padded as it is
/// kept, so that comparing it is a length and a fixed-size array (two vector compares, no call
/// to `memcmp`, which was 3 % of a batch job's CPU beside the lookups themselves).
enum Sought<'a> {
    Inline {
        len: u8,
        bytes: [u8; MemoId::INLINE],
    },
    Long(&'a [u8]),
}

/// An id and its answer, alone on a cache line.
#[derive(Debug)]
#[repr(align(64))]
struct Entry {
    id: MemoId,
    cached: Cached,
}

/// Ids to answers; see the [module docs](self).
#[derive(Debug, Default)]
pub(super) struct Slots {
    /// A power of two of slots (or none), at most half taken, so that a probe for an id that
    /// is not there soon meets an empty one. A taken slot holds the high half of its id's hash
    /// and its entry's position plus one; an empty one is zero.
    index: Box<[u64]>,
    entries: Vec<Entry>,
}

impl Slots {
    /// Index slots of a table's first allocation.
    const FIRST: usize = 1024;

    /// Ids held.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    fn home(&self, hash: u64) -> usize {
        // The length is a power of two; `foldhash`'s low bits are as good as its high ones.
        hash as usize & (self.index.len() - 1)
    }

    /// What an index slot for `hash` holds besides the entry's position; of a slot, that part.
    fn tag(hash: u64) -> u64 {
        hash & !u64::from(u32::MAX)
    }

    /// The index slot of the entry at `position`, whose id's hash is `hash`.
    fn slot(hash: u64, position: usize) -> u64 {
        Slots::tag(hash) | (position as u64 + 1)
    }

    /// The position of the entry a taken index slot points to.
    fn position(slot: u64) -> usize {
        (slot as u32 - 1) as usize
    }

    /// The answer held for `id`, whose [`id_hash`] is `hash`.
    #[inline(always)]
    pub(super) fn get(&self, id: &[u8], hash: u64) -> Option<&Cached> {
        self.find(id, hash)
            .map(|(_, entry)| &self.entries[entry].cached)
    }

    /// Starts fetching the index slot where a lookup of the id whose hash is `hash` begins.
    #[inline]
    pub(super) fn prefetch_index(&self, hash: u64) {
        if !self.index.is_empty() {
            crate::prefetch::line(&self.index[self.home(hash)]);
        }
    }

    /// Starts fetching the entry that a lookup of the id whose hash is `hash` will most
    /// likely read (the first one its index slots point to with that hash): best once its
    /// index slot is in the cache ([`Slots::prefetch_index`]).
    #[inline]
    pub(super) fn prefetch_entry(&self, hash: u64) {
        if self.index.is_empty() {
            return;
        }
        let slot = self.index[self.home(hash)];
        if slot != 0
            && Slots::tag(slot) == Slots::tag(hash)
            && let Some(entry) = self.entries.get(Slots::position(slot))
        {
            crate::prefetch::line(entry);
        }
    }

    /// Holds `cached` for `id`, whose [`id_hash`] is `hash`, in place of any answer held.
    /// Returns the answer it replaces, if any.
    pub(super) fn insert(&mut self, id: &[u8], hash: u64, cached: Cached) -> Option<Cached> {
        if 2 * (self.entries.len() + 1) > self.index.len() {
            self.grow();
        }
        match self.find(id, hash) {
            Some((_, entry)) => Some(std::mem::replace(&mut self.entries[entry].cached, cached)),
            None => {
                let at = self.vacant(hash);
                self.index[at] = Slots::slot(hash, self.entries.len());
                self.entries.push(Entry {
                    id: MemoId::new(id),
                    cached,
                });
                None
            }
        }
    }

    /// Drops every entry, keeping the table for the answers to come. A memo lent to requests
    /// starts over at every write the L1 hears of, often with few entries in an index sized
    /// for many: then only their slots are emptied, not the whole index.
    pub(super) fn clear(&mut self) {
        if self.entries.len() < self.index.len() / 32 {
            // Each entry's slot is found by its position, not by a lookup of its id: a lookup
            // stops at the first empty slot, and emptying one entry's slot may cut another's
            // path from its home.
            let mask = self.index.len() - 1;
            for (i, entry) in self.entries.iter().enumerate() {
                let mut at = self.home(id_hash(entry.id.as_bytes()));
                while self.index[at] == 0 || Slots::position(self.index[at]) != i {
                    at = (at + 1) & mask;
                }
                self.index[at] = 0;
            }
        } else {
            self.index.fill(0);
        }
        self.entries.clear();
    }

    /// The index slot and the entry of `id`, if held.
    #[inline(always)]
    fn find(&self, id: &[u8], hash: u64) -> Option<(usize, usize)> {
        if self.index.is_empty() {
            return None;
        }
        let sought = MemoId::sought(id);
        let (tag, mask) = (Slots::tag(hash), self.index.len() - 1);
        let mut at = self.home(hash);
        loop {
            let slot = self.index[at];
            if slot == 0 {
                return None;
            }
            if Slots::tag(slot) == tag {
                let entry = Slots::position(slot);
                if self.entries[entry].id.is(&sought) {
                    return Some((at, entry));
                }
            }
            at = (at + 1) & mask;
        }
    }

    /// The first empty index slot from where `hash` begins.
    fn vacant(&self, hash: u64) -> usize {
        let mask = self.index.len() - 1;
        let mut at = self.home(hash);
        while self.index[at] != 0 {
            at = (at + 1) & mask;
        }
        at
    }

    /// Doubles the index, placing every entry in the new one.
    fn grow(&mut self) {
        let len = (2 * self.index.len()).max(Slots::FIRST);
        self.index = vec![0; len].into_boxed_slice();
        self.entries.reserve(len / 2 - self.entries.len());
        for i in 0..self.entries.len() {
            let hash = id_hash(self.entries[i].id.as_bytes());
            let at = self.vacant(hash);
            self.index[at] = Slots::slot(hash, i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user::UserJson;

    fn found(name: &str) -> Cached {
        let json = format!(
            r#"{{"created_at":"2021-04-13T22:53:19.670051Z","updated_at":"2021-04-13T22:53:19.670051Z","id":"{name}","data":{{}}}}"#
        );
        Cached::Found(UserJson::from_stored(json).unwrap().into())
    }

    fn held(slots: &Slots, id: &str) -> Option<String> {
        match slots.get(id.as_bytes(), id_hash(id.as_bytes()))? {
            Cached::Found(record) => Some(record.as_str().to_string()),
            Cached::Missing => Some("missing".to_string()),
        }
    }

    /// Ids whose lookups begin at the same slot of the index follow one another; emptying a
    /// few entries' slots empties all of them, whatever the order.
    #[test]
    fn clearing_a_few_entries_empties_their_slots_along_a_shared_path() {
        let mut slots = Slots::default();
        for i in 0..3000 {
            let id = format!("fill{i}");
            slots.insert(id.as_bytes(), id_hash(id.as_bytes()), Cached::Missing);
        }
        slots.clear();
        let home = |id: &str| slots.home(id_hash(id.as_bytes()));
        let first = home("a0");
        let same: Vec<String> = (0..)
            .map(|i| format!("a{i}"))
            .filter(|id| home(id) == first)
            .take(3)
            .collect();
        for id in &same {
            slots.insert(id.as_bytes(), id_hash(id.as_bytes()), Cached::Missing);
        }
        assert!(same.iter().all(|id| held(&slots, id).is_some()));
        assert!(slots.len() < slots.index.len() / 32, "the sparse way");
        slots.clear();
        assert!(slots.index.iter().all(|&slot| slot == 0));
        assert!(same.iter().all(|id| held(&slots, id).is_none()));
    }

    #[test]
    fn an_entry_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Entry>(), 64);
        assert_eq!(std::mem::align_of::<Entry>(), 64);
    }

    #[test]
    fn ids_are_found_through_growth_replacement_and_clearing() {
        let mut slots = Slots::default();
        assert_eq!(held(&slots, "a"), None);
        slots.prefetch_index(id_hash(b"a"));
        slots.prefetch_entry(id_hash(b"a"));
        // Enough to grow the table several times; ids long and short, hashes colliding in
        // their low bits as often as chance has it.
        let ids: Vec<String> = (0..5000)
            .map(|i| match i % 3 {
                0 => format!("u{i}"),
                1 => format!("{i:0>30}"),
                _ => format!("id-{i}"),
            })
            .collect();
        for (i, id) in ids.iter().enumerate() {
            let answer = if i % 7 == 0 {
                Cached::Missing
            } else {
                found(id)
            };
            slots.insert(id.as_bytes(), id_hash(id.as_bytes()), answer);
        }
        assert_eq!(slots.len(), ids.len());
        assert!(2 * slots.len() <= slots.index.len(), "at most half taken");
        for id in &ids {
            slots.prefetch_index(id_hash(id.as_bytes()));
            slots.prefetch_entry(id_hash(id.as_bytes()));
        }
        for (i, id) in ids.iter().enumerate() {
            let held = held(&slots, id).unwrap();
            if i % 7 == 0 {
                assert_eq!(held, "missing");
            } else {
                assert!(held.contains(&format!(r#""id":"{id}""#)), "{id}: {held}");
            }
        }
        assert_eq!(held(&slots, "u1"), None, "never inserted");
        assert_eq!(held(&slots, "u3x"), None);

        // A second answer for an id takes the place of the first.
        slots.insert(b"u0", id_hash(b"u0"), found("again"));
        assert_eq!(slots.len(), ids.len());
        assert!(held(&slots, "u0").unwrap().contains("again"));

        let table = slots.index.len();
        slots.clear();
        assert_eq!(slots.len(), 0);
        assert!(ids.iter().all(|id| held(&slots, id).is_none()));
        assert_eq!(slots.index.len(), table, "the table is kept");
        slots.insert(b"u0", id_hash(b"u0"), Cached::Missing);
        assert_eq!(held(&slots, "u0").as_deref(), Some("missing"));

        // Few entries in a large index: only their slots are emptied, and all of them.
        for id in &ids[..20] {
            slots.insert(id.as_bytes(), id_hash(id.as_bytes()), Cached::Missing);
        }
        assert!(slots.len() < slots.index.len() / 32);
        slots.clear();
        assert!(slots.index.iter().all(|&slot| slot == 0));
        assert!(ids.iter().all(|id| held(&slots, id).is_none()));
    }

    /// Slots answer as a `HashMap` does over a long random run of inserts, replacements,
    /// lookups and both ways of clearing, with ids that share long prefixes and lie on either
    /// side of [`MemoId::INLINE`] and at [`MAX_ID_LEN`](crate::id::MAX_ID_LEN); and the index
    /// always points at exactly the entries held, at most half full.
    #[test]
    fn slots_answer_as_a_hash_map_does() {
        use std::collections::HashMap;
        // splitmix64, seeded: the same run every time.
        let mut state = 0x5eed_u64;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let ids: Vec<String> = (0..4000)
            .map(|i| match i % 4 {
                // 20 to 25 bytes: inline, at the limit, and just past it.
                0 => format!("{:0>w$}", i, w = 20 + (i / 4) % 6),
                1 => format!("{}{i}", "x".repeat(250 - i.to_string().len())),
                2 => format!("{}-{i}", "p".repeat(255 - 1 - i.to_string().len())),
                _ => format!("{i}"),
            })
            .collect();
        assert!(ids.iter().any(|id| id.len() == MemoId::INLINE));
        assert!(ids.iter().any(|id| id.len() == MemoId::INLINE + 1));
        assert!(ids.iter().all(|id| id.len() <= crate::id::MAX_ID_LEN));
        assert!(ids.iter().any(|id| id.len() == crate::id::MAX_ID_LEN));

        let answer = |value: u64| match value % 5 {
            0 => Cached::Missing,
            _ => found(&value.to_string()),
        };
        let shown = |cached: &Cached| match cached {
            Cached::Found(record) => record.as_str().to_string(),
            Cached::Missing => "missing".to_string(),
        };
        let mut slots = Slots::default();
        let mut model: HashMap<&str, String> = HashMap::new();
        let (mut sparse, mut dense) = (0, 0);
        for round in 0..150 {
            // Phases of few and of many distinct ids, so that clearing takes both ways.
            let pool = [3, 40, 200, 700, ids.len()][(next() % 5) as usize];
            for _ in 0..next() % 3000 {
                let id = ids[(next() % pool as u64) as usize].as_str();
                let hash = id_hash(id.as_bytes());
                if next() % 4 == 0 {
                    let held = slots.get(id.as_bytes(), hash).map(shown);
                    assert_eq!(held.as_ref(), model.get(id), "round {round}: {id}");
                } else {
                    let value = next();
                    slots.insert(id.as_bytes(), hash, answer(value));
                    model.insert(id, shown(&answer(value)));
                }
            }
            assert_eq!(slots.len(), model.len());
            assert!(2 * slots.len() <= slots.index.len(), "at most half taken");
            let taken = slots.index.iter().filter(|&&slot| slot != 0).count();
            assert_eq!(taken, slots.len(), "a slot for each entry, no other");
            for id in &ids {
                let held = slots.get(id.as_bytes(), id_hash(id.as_bytes())).map(shown);
                assert_eq!(held.as_ref(), model.get(id.as_str()), "round {round}: {id}");
            }
            if next() % 2 == 0 {
                if slots.len() < slots.index.len() / 32 {
                    sparse += 1;
                } else {
                    dense += 1;
                }
                slots.clear();
                model.clear();
                assert!(slots.index.iter().all(|&slot| slot == 0));
            }
        }
        assert!(sparse > 3 && dense > 3, "{sparse} sparse, {dense} dense");
    }
}
