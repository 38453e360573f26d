//! Ids: the alphabet of a referenced id, the hash every page and memo finds an id by, and a
//! page's distinct ids.

use hashbrown::HashTable;

/// The longest id Stream accepts.
pub const MAX_ID_LEN: usize = 255;

/// True when `id` is a well-formed user id: 1 to 255 of `[A-Za-z0-9_-]`.
pub fn is_valid_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A hash of an id, the same for every page and memo of this process (so a page's hashes serve
/// its lookups elsewhere) and seeded at random per process (ids come from outside: a fixed
/// seed could be attacked with colliding ids).
pub(crate) fn id_hash(id: &str) -> u64 {
    static STATE: std::sync::LazyLock<foldhash::fast::RandomState> =
        std::sync::LazyLock::new(foldhash::fast::RandomState::default);
    std::hash::BuildHasher::hash_one(&*STATE, id)
}

/// A page's distinct ids, numbered in order of first appearance.
#[derive(Debug, Default)]
pub(crate) struct Ids {
    pub(crate) ids: Vec<Box<str>>,
    /// The [`id_hash`] of each id.
    pub(crate) hashes: Vec<u64>,
    /// Each id's number, found by its hash.
    index: HashTable<u32>,
}

impl Ids {
    pub(crate) fn with_capacity(ids: usize) -> Ids {
        Ids {
            ids: Vec::with_capacity(ids),
            hashes: Vec::with_capacity(ids),
            index: HashTable::with_capacity(ids),
        }
    }

    /// The number of `id`, adding it if new.
    pub(crate) fn intern(&mut self, id: &str) -> u32 {
        let hash = id_hash(id);
        let (ids, hashes) = (&self.ids, &self.hashes);
        match self
            .index
            .entry(hash, |&i| *ids[i as usize] == *id, |&i| hashes[i as usize])
        {
            hashbrown::hash_table::Entry::Occupied(known) => *known.get(),
            hashbrown::hash_table::Entry::Vacant(slot) => {
                let i = u32::try_from(self.ids.len()).expect("fewer than 4 billion ids in a page");
                slot.insert(i);
                self.ids.push(id.into());
                self.hashes.push(hash);
                i
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.ids.clear();
        self.hashes.clear();
        self.index.clear();
    }

    /// The ids, in order of their numbers.
    pub(crate) fn into_ids(self) -> Vec<Box<str>> {
        self.ids
    }
}
