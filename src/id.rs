//! Ids: the alphabet of a referenced id, the hash every page and memo finds an id by, and a
//! page's distinct ids.

use hashbrown::HashTable;

/// The longest id Stream accepts.
pub const MAX_ID_LEN: usize = 255;

/// True when `id` is a well-formed user id: 1 to 255 of `[A-Za-z0-9_-]`.
pub fn is_valid_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.iter().all(|&b| ID_BYTE[usize::from(b)])
}

/// Which bytes an id may hold: one load a byte rather than four ranges to compare (the check
/// runs on every reference a page holds; callgrind: 14 → 8 instructions an id).
static ID_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        table[b] = byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-';
        b += 1;
    }
    table
};

/// A hash of an id, the same for every page and memo of this process (so a page's hashes serve
/// its lookups elsewhere) and seeded at random per process (ids come from outside: a fixed
/// seed could be attacked with colliding ids).
#[inline]
pub(crate) fn id_hash(id: &[u8]) -> u64 {
    static STATE: std::sync::LazyLock<foldhash::fast::RandomState> =
        std::sync::LazyLock::new(foldhash::fast::RandomState::default);
    std::hash::BuildHasher::hash_one(&*STATE, id)
}

/// Distinct ids, numbered from 0, as the resolver takes them.
pub(crate) trait IdList {
    /// How many there are.
    fn count(&self) -> usize;
    /// Id number `i`.
    fn id(&self, i: usize) -> &str;
    /// Id number `i`, as bytes: what a lookup compares.
    fn id_bytes(&self, i: usize) -> &[u8] {
        self.id(i).as_bytes()
    }
    /// Every id, in order of their numbers.
    fn all(&self) -> impl ExactSizeIterator<Item = &str> {
        (0..self.count()).map(|i| self.id(i))
    }
}

impl IdList for [Box<str>] {
    fn count(&self) -> usize {
        self.len()
    }

    fn id(&self, i: usize) -> &str {
        &self[i]
    }
}

/// A page's distinct ids, numbered in order of first appearance.
///
/// Their text is kept end to end in one buffer that the page reuses, not one allocation per
/// id: a job's pages intern about two new ids per line (perf, 1M activities over 50k users:
/// 1.8M), each of which was a `malloc` and a `free`. Ids come in as bytes, as a page found
/// them: only well-formed ids (ASCII, [`is_valid_id`], or a collection entry's key of two of
/// them) are interned, so they are text without a UTF-8 check at every reference.
#[derive(Debug, Default)]
pub(crate) struct Ids {
    /// The ids' text, one after the other.
    text: Vec<u8>,
    /// Where each id ends in `text`.
    ends: Vec<u32>,
    /// The [`id_hash`] of each id.
    pub(crate) hashes: Vec<u64>,
    /// Each id's number, found by its hash.
    index: HashTable<u32>,
}

impl IdList for Ids {
    fn count(&self) -> usize {
        self.ends.len()
    }

    fn id(&self, i: usize) -> &str {
        // Only ASCII is interned.
        std::str::from_utf8(self.id_bytes(i)).unwrap_or_default()
    }

    fn id_bytes(&self, i: usize) -> &[u8] {
        &self.text[span(&self.ends, i)]
    }
}

/// Where id number `i` lies in the text of ids whose ends are `ends`.
fn span(ends: &[u32], i: usize) -> std::ops::Range<usize> {
    let start = match i {
        0 => 0,
        _ => ends[i - 1] as usize,
    };
    start..ends[i] as usize
}

impl Ids {
    pub(crate) fn with_capacity(ids: usize) -> Ids {
        Ids {
            text: Vec::with_capacity(ids * 8),
            ends: Vec::with_capacity(ids),
            hashes: Vec::with_capacity(ids),
            index: HashTable::with_capacity(ids),
        }
    }

    /// The number of `id`, a well-formed id, adding it if new.
    pub(crate) fn intern(&mut self, id: &[u8]) -> u32 {
        debug_assert!(id.is_ascii(), "only well-formed ids are interned");
        let hash = id_hash(id);
        let Ids {
            text,
            ends,
            hashes,
            index,
        } = self;
        let known = |&i: &u32| &text[span(ends, i as usize)] == id;
        match index.entry(hash, known, |&i| hashes[i as usize]) {
            hashbrown::hash_table::Entry::Occupied(known) => *known.get(),
            hashbrown::hash_table::Entry::Vacant(slot) => {
                let i = u32::try_from(ends.len()).expect("fewer than 4 billion ids in a page");
                text.extend_from_slice(id);
                let end = u32::try_from(text.len()).expect("ids of a page under 4 GiB");
                slot.insert(i);
                ends.push(end);
                hashes.push(hash);
                i
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
        self.hashes.clear();
        self.index.clear();
    }

    /// The ids, in order of their numbers, each on its own.
    pub(crate) fn into_ids(self) -> Vec<Box<str>> {
        self.all().map(Box::from).collect()
    }
}
