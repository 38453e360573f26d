//! The L1's table: keys to records (or to "no such record"), bounded by bytes, each entry
//! gone after its time to live, in as little memory per entry as a map can take.
//!
//! What it buys, measured with `cargo bench --bench l1_memory` (1M users of about 200 bytes,
//! BENCHMARKS.md): moka held each entry in about ten allocations (the key, its `Arc`s, a node
//! in each of its access, write and timer lists, the table slot): 3.24× the users' JSON in
//! all; here an entry is one allocation holding its JSON and its key, a slot of 32 bytes and a
//! 4-byte index: 1.39–1.43×. And a read is a lock of one shard of 64, a probe and a copy of
//! the record: no read log to replay, no access list to reorder (moka's reads were a quarter
//! of the batch job's CPU).
//!
//! Eviction is CLOCK (second chance): a read sets the entry's bit, and a shard over its bytes
//! walks its slots from where it stopped, clearing bits and evicting the first entry whose bit
//! is clear. A scan of entries read once goes before the entries read again and again, as with
//! an LRU, for one bit per entry.
//!
//! Why not `quick_cache`, the maintained crate made for low-overhead weighted caches: it was
//! measured behind this same interface (its key the id's hash, the id and JSON one value, an
//! expiry stamp for the time to live), release builds run in alternation. CPU of the batch job
//! (1M activities, 50k users) came out the same (0.97× over Redis, 1.01× over the file store,
//! medians of 15 runs; callgrind 2.82 G against 2.85 G instructions), but memory did not: 1M
//! users took 1.45–1.52× their JSON (median 1.47×, 6 runs) against 1.36–1.44× (median 1.39×)
//! here, because it also remembers recently evicted keys and keeps its arrays at their peak
//! size after a flush, where this table gives them back. With the L1 held to at most 1.5× its
//! payload, that margin is the whole point of the table, so it stays hand-written.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hashbrown::HashTable;

use super::Cached;
use crate::collection::EntryJson;
use crate::record::Record;
use crate::reference::ReferenceKind;
use crate::sync::lock;
use crate::user::{UserJson, id_hash};

/// What an entry is charged beyond its key and JSON bytes: its slot (32 bytes), its index
/// entry (4 bytes at a load between 7/16 and 7/8), the allocator's rounding of its one
/// allocation and the slack of the slot vector as it grows. Measured (`l1_memory`, 1M users):
/// the process grew by 3–5 % more than the weigher charged.
pub(crate) const ENTRY_OVERHEAD: usize = 64;

/// Shards at most; fewer for a small table, so that each holds at least [`SHARD_BYTES`] and
/// the bound is met table-wide and not only on average.
const MAX_SHARDS: usize = 64;
const SHARD_BYTES: u64 = 1 << 20;

/// The bytes an entry is charged.
pub(crate) fn weigh(key: &str, json_len: usize) -> u64 {
    (key.len() + json_len + ENTRY_OVERHEAD) as u64
}

/// Keys and records, bounded by bytes; see the [module docs](self).
pub(crate) struct Table {
    shards: Box<[Mutex<Shard>]>,
    /// Where every expiry is counted from.
    base: Instant,
    ttl: Duration,
    /// Entries pushed out to make room.
    evictions: AtomicU64,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("shards", &self.shards.len())
            .field("entries", &self.entry_count())
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    User,
    Entry,
    Missing,
}

/// One entry, or a free slot.
struct Slot {
    /// The record's JSON followed by the key; `None` for a free slot.
    data: Option<Box<[u8]>>,
    /// Milliseconds after [`Table::base`] from which the entry is gone.
    expires: u64,
    key_len: u16,
    kind: Kind,
    /// Read since the clock hand last passed.
    referenced: bool,
}

impl Slot {
    fn key(&self) -> &[u8] {
        let data = self.data.as_deref().unwrap_or_default();
        &data[data.len() - usize::from(self.key_len)..]
    }

    fn json(&self) -> &[u8] {
        let data = self.data.as_deref().unwrap_or_default();
        &data[..data.len() - usize::from(self.key_len)]
    }

    fn weight(&self) -> u64 {
        (self.data.as_deref().map_or(0, <[u8]>::len) + ENTRY_OVERHEAD) as u64
    }

    /// The answer, in bytes of its own.
    fn cached(&self) -> Cached {
        let json = || Bytes::copy_from_slice(self.json());
        match self.kind {
            Kind::Missing => Cached::Missing,
            Kind::User => Cached::Found(Record::User(UserJson(json()))),
            Kind::Entry => Cached::Found(Record::Entry(EntryJson(json()))),
        }
    }
}

#[derive(Default)]
struct Shard {
    /// Slot numbers, found by the [`id_hash`] of their keys.
    index: HashTable<u32>,
    slots: Vec<Slot>,
    /// Slots freed, for the next entries.
    free: Vec<u32>,
    /// Where the clock hand stands.
    hand: usize,
    /// Bytes charged, and at most.
    bytes: u64,
    capacity: u64,
}

impl Shard {
    fn find(&self, hash: u64, key: &[u8]) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(hash, |&i| slots[i as usize].key() == key)
            .map(|&i| i as usize)
    }

    /// Frees slot `i`, which holds an entry.
    fn remove(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        let hash = id_hash(slot.key());
        self.bytes -= slot.weight();
        slot.data = None;
        if let Ok(found) = self.index.find_entry(hash, |&j| j as usize == i) {
            found.remove();
        }
        self.free.push(i as u32);
    }

    /// Moves the clock hand until `weight` more bytes fit, or nothing is left to evict.
    /// Returns the entries evicted for room (expired ones are not counted).
    fn make_room(&mut self, weight: u64, now: u64) -> u64 {
        let mut evicted = 0;
        // Two full turns at most: the first clears every bit, the second finds them clear.
        let mut steps = 2 * self.slots.len() + 1;
        while self.bytes + weight > self.capacity && steps > 0 {
            steps -= 1;
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let i = self.hand;
            self.hand += 1;
            let slot = &mut self.slots[i];
            if slot.data.is_none() {
                continue;
            }
            if slot.referenced && slot.expires > now {
                slot.referenced = false;
                continue;
            }
            if slot.expires > now {
                evicted += 1;
            }
            self.remove(i);
        }
        evicted
    }
}

impl Table {
    /// A table of `capacity` bytes whose entries live `ttl`.
    pub(crate) fn new(capacity: u64, ttl: Duration) -> Table {
        let shards = (capacity / SHARD_BYTES).clamp(1, MAX_SHARDS as u64) as usize;
        let shards = if shards.is_power_of_two() {
            shards
        } else {
            shards.next_power_of_two() / 2
        };
        let per_shard = capacity / shards as u64;
        Table {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        capacity: per_shard,
                        ..Shard::default()
                    })
                })
                .collect(),
            base: Instant::now(),
            ttl,
            evictions: AtomicU64::new(0),
        }
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        // The index uses the low bits (bucket) and the top seven (tag): shard by others.
        &self.shards[(hash >> 48) as usize & (self.shards.len() - 1)]
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// The answer held for `key`, if any and not expired.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Cached> {
        let hash = id_hash(key);
        let mut shard = lock(self.shard(hash));
        let i = shard.find(hash, key)?;
        if shard.slots[i].expires <= self.now() {
            shard.remove(i);
            return None;
        }
        let slot = &mut shard.slots[i];
        slot.referenced = true;
        Some(slot.cached())
    }

    /// Holds `answer` for `key`, replacing what was held, evicting other entries if need be.
    /// An entry larger than a shard is not held (and what was held for `key` is dropped).
    pub(crate) fn insert(&self, key: &str, answer: &Cached) {
        let (kind, json) = match answer {
            Cached::Missing => (Kind::Missing, &[][..]),
            Cached::Found(record) => (
                match record.kind() {
                    ReferenceKind::User => Kind::User,
                    ReferenceKind::Object => Kind::Entry,
                },
                record.as_bytes(),
            ),
        };
        let Ok(key_len) = u16::try_from(key.len()) else {
            return;
        };
        let weight = weigh(key, json.len());
        let hash = id_hash(key.as_bytes());
        let now = self.now();
        let mut shard = lock(self.shard(hash));
        if let Some(i) = shard.find(hash, key.as_bytes()) {
            shard.remove(i);
        }
        if weight > shard.capacity {
            return;
        }
        let evicted = shard.make_room(weight, now);
        if evicted > 0 {
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
        let mut data = Vec::with_capacity(json.len() + key.len());
        data.extend_from_slice(json);
        data.extend_from_slice(key.as_bytes());
        let slot = Slot {
            data: Some(data.into_boxed_slice()),
            expires: now.saturating_add(self.ttl.as_millis() as u64),
            key_len,
            kind,
            referenced: false,
        };
        shard.bytes += weight;
        let i = match shard.free.pop() {
            Some(i) => {
                shard.slots[i as usize] = slot;
                i
            }
            None => {
                shard.slots.push(slot);
                u32::try_from(shard.slots.len() - 1).expect("fewer than 4 billion entries")
            }
        };
        let Shard { index, slots, .. } = &mut *shard;
        index.insert_unique(hash, i, |&j| id_hash(slots[j as usize].key()));
    }

    /// Drops what is held for `key`.
    pub(crate) fn invalidate(&self, key: &str) {
        let hash = id_hash(key.as_bytes());
        let mut shard = lock(self.shard(hash));
        if let Some(i) = shard.find(hash, key.as_bytes()) {
            shard.remove(i);
        }
    }

    /// Drops everything, and gives its memory back.
    pub(crate) fn invalidate_all(&self) {
        for shard in &self.shards {
            let mut shard = lock(shard);
            let capacity = shard.capacity;
            *shard = Shard {
                capacity,
                ..Shard::default()
            };
        }
    }

    /// Entries held (some may have expired, not yet found so).
    pub(crate) fn entry_count(&self) -> u64 {
        let shards = self.shards.iter().map(|shard| {
            let shard = lock(shard);
            (shard.slots.len() - shard.free.len()) as u64
        });
        shards.sum()
    }

    /// Bytes charged to the entries held.
    pub(crate) fn weighted_size(&self) -> u64 {
        self.shards.iter().map(|shard| lock(shard).bytes).sum()
    }

    /// Entries evicted for room since the start.
    pub(crate) fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: usize) -> Cached {
        let json = format!(
            r#"{{"created_at":"2021-04-13T22:53:19.670051Z","updated_at":"2021-04-13T22:53:19.670051Z","id":"u{n}","data":{{}}}}"#
        );
        Cached::Found(Record::User(UserJson::from_stored(json).unwrap()))
    }

    fn json(cached: Option<Cached>) -> Option<String> {
        Some(cached?.record()?.as_str().to_string())
    }

    #[test]
    fn holds_replaces_and_drops() {
        let table = Table::new(1 << 20, Duration::from_secs(60));
        table.insert("u1", &user(1));
        table.insert("gone", &Cached::Missing);
        assert_eq!(json(table.get(b"u1")), json(Some(user(1))));
        assert!(matches!(table.get(b"gone"), Some(Cached::Missing)));
        assert!(table.get(b"u2").is_none());
        table.insert("u1", &user(7));
        assert_eq!(json(table.get(b"u1")), json(Some(user(7))));
        assert_eq!(table.entry_count(), 2);
        let charged = weigh("u1", user(7).record().unwrap().as_bytes().len()) + weigh("gone", 0);
        assert_eq!(table.weighted_size(), charged);
        table.invalidate("u1");
        assert!(table.get(b"u1").is_none());
        table.invalidate_all();
        assert_eq!((table.entry_count(), table.weighted_size()), (0, 0));
        assert!(table.get(b"gone").is_none());
    }

    #[test]
    fn entries_expire() {
        let table = Table::new(1 << 20, Duration::ZERO);
        table.insert("u1", &user(1));
        assert!(table.get(b"u1").is_none());
        assert_eq!(table.weighted_size(), 0);
    }

    /// The bytes charged never pass the bound, entries read again and again stay, and every
    /// entry pushed out is counted.
    #[test]
    fn the_bound_holds_and_the_clock_keeps_what_is_read() {
        let one = weigh("u0000", user(0).record().unwrap().as_bytes().len());
        let table = Table::new(100 * one, Duration::from_secs(60));
        for n in 0..1000 {
            table.insert(&format!("u{n:04}"), &user(n));
            // A popular entry, read between every insert.
            assert!(table.get(b"u0000").is_some(), "{n}");
            assert!(table.weighted_size() <= 100 * one);
        }
        // Within a few bytes of full: later users have longer ids.
        assert!(table.entry_count() >= 95, "{}", table.entry_count());
        assert_eq!(table.evictions(), 1000 - table.entry_count());
        assert!(table.get(b"u0999").is_some());
    }

    #[test]
    fn an_entry_larger_than_a_shard_is_not_held() {
        let table = Table::new(100, Duration::from_secs(60));
        table.insert("u1", &user(1));
        assert!(table.get(b"u1").is_none());
        assert_eq!(table.weighted_size(), 0);
    }
}
