//! The bare substitution under `enrich run`: the job's output with nothing else done, by a
//! plain program written for speed, measured by `scripts/job-bench` in the same rounds as the
//! job and the copy of its output.
//!
//! ```sh
//! cargo run --release --example floor -- USERS.ndjson ACTIVITIES.ndjson OUT.ndjson \
//!     [--threads 2] [--hashed] [--scan]
//! ```
//!
//! It writes the job's output byte for byte (job-bench checks), for the workload of
//! `examples/workload.rs` only: the users are read from their file before the first activity
//! and found by the number in their ids (`u123`) as an index into an array (other ids, such as
//! the workload's missing ones, in a hash map); every `"SU:…"` string in the input is taken for
//! a reference wherever it stands (no JSON is parsed or checked, no line counted, no limit
//! kept). What the job does beyond that (the grammar, the store, the L1 and the memo, the
//! outcome of every line, the bounds) is its price over the floor.
//!
//! What makes it fast, each measured against the version before it (BENCHMARKS.md, sixth
//! pass): no reader or writer thread, each worker reading its own block of the input at its
//! offset and writing its output itself once the blocks before it are written, so that the
//! output is copied into the page cache from the cache of the core that assembled it (0.40 →
//! 0.29 s); the users a block names fetched into the cache [`AHEAD`] references before they are
//! copied, a lookup being a cache miss otherwise (50k users are 10 MB; 0.29 → 0.23 s); blocks
//! of [`BLOCK`] bytes, whose output is still in the cache when it is written.
//!
//! Two of the job's obligations can be put back, to price them on this design (BENCHMARKS.md,
//! fifteenth pass):
//! - `--hashed`: every user found by its id's hash in a [`Table`], as any store must find
//!   them, instead of by its number. The table is laid out as the job's memo is (an index of
//!   hash tags in front of entries holding short ids inline; its entries are half the size of
//!   the memo's, which hold an answer), and a block's lookups have their index slots and
//!   entries fetched ahead, so that their cache misses overlap.
//! - `--scan`: every line also goes through the job's own scanner (`RawPage::push`: the JSON
//!   grammar checked, the references found, the page's ids numbered, the line compacted), in
//!   pages of 1,024 lines as the job's, its result dropped.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use foldhash::fast::RandomState;
use memchr::memmem;

/// Input bytes a block starts from; it then runs to the end of the line it ends in. Its
/// output (~1.2 MiB) is still in the cache when it is written: with blocks of 1 MiB the
/// kernel's copy into the page cache took most of the time.
const BLOCK: u64 = 1 << 18;
/// References whose users are fetched into the cache before the first of them is copied.
const AHEAD: usize = 32;

/// Index slots a [`Table`]'s lookups are fetched ahead of them, and entries (as the memo's).
const INDEX_AHEAD: usize = 16;
const ENTRY_AHEAD: usize = 8;

/// Where a user's line is in the users file: (start, end).
type Span = (u32, u32);

/// The users file, and where each user's line is in it.
struct Users {
    file: Vec<u8>,
    /// By the number of an id `u<number>`: (start, end), or (0, 0) for none.
    numbered: Vec<Span>,
    /// By any other id.
    named: HashMap<Box<[u8]>, Span, RandomState>,
    /// Every user by its id's hash, with `--hashed`.
    hashed: Option<Table>,
}

/// What the options ask for beyond the substitution.
#[derive(Clone, Copy)]
struct Options {
    hashed: bool,
    scan: bool,
}

/// Ids to spans by open addressing, laid out as the job's memo (`src/cache/memo/slots.rs`): an
/// index of 8-byte slots (the hash's high half and the entry's position plus one; at most half
/// full) in front of the entries, each holding its id inline.
struct Table {
    index: Vec<u64>,
    entries: Vec<Entry>,
    hasher: foldhash::fast::FixedState,
}

/// An id of at most [`Entry::INLINE`] bytes and its user, half a cache line.
#[repr(align(32))]
struct Entry {
    len: u8,
    id: [u8; Entry::INLINE],
    span: Span,
}

impl Entry {
    const INLINE: usize = 23;

    /// `id` padded as an entry holds it, or `None` if it is too long to be held.
    fn pad(id: &[u8]) -> Option<[u8; Entry::INLINE]> {
        let mut padded = [0; Entry::INLINE];
        padded.get_mut(..id.len())?.copy_from_slice(id);
        Some(padded)
    }
}

/// Whose turn it is to write: the number of the next block, or `None` once a write failed.
struct Turn {
    next: Mutex<Option<u64>>,
    changed: Condvar,
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut paths = Vec::new();
    let mut threads = 2;
    let mut options = Options {
        hashed: false,
        scan: false,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .expect("--threads takes a number above 0")
            }
            "--hashed" => options.hashed = true,
            "--scan" => options.scan = true,
            _ => paths.push(arg),
        }
    }
    let [users, input, output] = <[String; 3]>::try_from(paths).expect(
        "usage: floor USERS.ndjson ACTIVITIES.ndjson OUT.ndjson [--threads N] [--hashed] [--scan]",
    );
    let users = Users::read(std::fs::read(users)?, options.hashed);
    let input = File::open(input)?;
    let len = input.metadata()?.len();
    let output = File::create(output)?;
    let claimed = AtomicUsize::new(0);
    let turn = Turn {
        next: Mutex::new(Some(0)),
        changed: Condvar::new(),
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| work(&users, options, &input, len, &output, &claimed, &turn)))
            .collect();
        workers
            .into_iter()
            .try_for_each(|worker| worker.join().expect("no worker panics"))
    })
}

/// Takes blocks in turn until the input is done: reads one, substitutes, waits for the blocks
/// before it to be written, writes it.
fn work(
    users: &Users,
    options: Options,
    input: &File,
    len: u64,
    mut output: &File,
    claimed: &AtomicUsize,
    turn: &Turn,
) -> std::io::Result<()> {
    let finder = memmem::Finder::new(b"\"SU:");
    let (mut block, mut out, mut found) = (Vec::new(), Vec::new(), Vec::new());
    let mut page = enrich::RawPage::new(enrich::Depth::TopLevel);
    loop {
        let k = claimed.fetch_add(1, Ordering::Relaxed) as u64;
        if k * BLOCK >= len {
            return Ok(());
        }
        let read = read_block(input, len, k, &mut block);
        if let Ok(lines) = &read {
            if options.scan {
                scan(&block[lines.clone()], &mut page);
            }
            substitute(&block[lines.clone()], users, &finder, &mut found, &mut out);
        }
        let mut next = turn.next.lock().expect("no worker panics");
        while read.is_ok() && *next != Some(k) {
            if next.is_none() {
                return Ok(());
            }
            next = turn.changed.wait(next).expect("no worker panics");
        }
        // A block that cannot be read or written ends the run: nobody waits for its turn.
        let done = read.and_then(|_| output.write_all(&out));
        *next = done.as_ref().ok().map(|()| k + 1);
        turn.changed.notify_all();
        done?;
    }
}

/// Reads block `k` into `block`; returns where its lines are in it. A block runs from the
/// first line that starts at or after `k * BLOCK` to the first that starts at or after
/// `(k + 1) * BLOCK` (a line starts at 0 or after a newline), so that neighbouring blocks meet
/// at the same line and every line is in exactly one block.
fn read_block(
    input: &File,
    len: u64,
    k: u64,
    block: &mut Vec<u8>,
) -> std::io::Result<Range<usize>> {
    // From one byte before the block: whether a line starts at its first byte is in that byte.
    let from = (k * BLOCK).saturating_sub(1);
    let mut to = ((k + 1) * BLOCK + 4096).min(len);
    let (start, end) = loop {
        block.resize((to - from) as usize, 0);
        input.read_exact_at(block, from)?;
        let at_end = to == len;
        // The first newline at or after `i` in what was read, or `None` to read further.
        let line_start = |i: usize| match memchr::memchr(b'\n', block.get(i..).unwrap_or(&[])) {
            Some(n) => Some(i + n + 1),
            None => at_end.then_some(block.len()),
        };
        let start = if k == 0 { Some(0) } else { line_start(0) };
        let end = if (k + 1) * BLOCK >= len {
            Some(block.len())
        } else {
            line_start(((k + 1) * BLOCK - 1 - from) as usize)
        };
        match (start, end) {
            (Some(start), Some(end)) => break (start, end.max(start)),
            _ => to = (to + BLOCK).min(len),
        }
    };
    Ok(start..end)
}

impl Users {
    /// Users by id, from lines of `{…,"id":"ID",…}` as `examples/workload.rs` writes them.
    fn read(file: Vec<u8>, hashed: bool) -> Users {
        let id_key = memmem::Finder::new(b"\"id\":\"");
        let mut numbered = Vec::new();
        let mut named: HashMap<Box<[u8]>, Span, RandomState> = HashMap::default();
        let mut start = 0;
        for line in file.split_inclusive(|&b| b == b'\n') {
            let span = (start, start + line.trim_ascii_end().len() as u32);
            start += line.len() as u32;
            let Some(at) = id_key.find(line) else {
                continue;
            };
            let id = &line[at + 6..];
            let Some(len) = memchr::memchr(b'"', id) else {
                continue;
            };
            let id = &id[..len];
            match number(id) {
                Some(n) => {
                    if numbered.len() <= n {
                        numbered.resize(n + 1, (0, 0));
                    }
                    numbered[n] = span;
                }
                None => {
                    named.insert(id.into(), span);
                }
            }
        }
        let hashed = hashed.then(|| {
            let mut table = Table::with_room(numbered.len() + named.len());
            for (n, &span) in numbered.iter().enumerate() {
                if span != (0, 0) {
                    table.insert(format!("u{n}").as_bytes(), span);
                }
            }
            for (id, &span) in &named {
                table.insert(id, span);
            }
            table
        });
        Users {
            file,
            numbered,
            named,
            hashed,
        }
    }

    /// The user at `span`, if there is one.
    fn at(&self, (start, end): Span) -> Option<&[u8]> {
        (end > start).then(|| &self.file[start as usize..end as usize])
    }

    /// The user whose id is `id`, by its number.
    fn get(&self, id: &[u8]) -> Option<&[u8]> {
        self.at(match number(id) {
            Some(n) => *self.numbered.get(n)?,
            None => *self.named.get(id)?,
        })
    }
}

impl Table {
    fn with_room(ids: usize) -> Table {
        Table {
            index: vec![0; (2 * ids + 2).next_power_of_two()],
            entries: Vec::with_capacity(ids),
            hasher: foldhash::fast::FixedState::with_seed(0),
        }
    }

    fn hash(&self, id: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(id)
    }

    fn home(&self, hash: u64) -> usize {
        hash as usize & (self.index.len() - 1)
    }

    /// Adds `id` (not held yet, and short enough to be: the workload's are).
    fn insert(&mut self, id: &[u8], span: Span) {
        let padded = Entry::pad(id).expect("the workload's ids are short");
        let hash = self.hash(id);
        let mut at = self.home(hash);
        while self.index[at] != 0 {
            at = (at + 1) & (self.index.len() - 1);
        }
        self.index[at] = (hash & !0xffff_ffff) | (self.entries.len() as u64 + 1);
        self.entries.push(Entry {
            len: id.len() as u8,
            id: padded,
            span,
        });
    }

    /// Starts fetching the index slot where a lookup of `hash` begins.
    fn fetch_index(&self, hash: u64) {
        prefetch_line(&self.index[self.home(hash)]);
    }

    /// Starts fetching the entry a lookup of `hash` most likely reads: best once its index
    /// slot is in the cache.
    fn fetch_entry(&self, hash: u64) {
        let slot = self.index[self.home(hash)];
        if slot != 0 && slot >> 32 == hash >> 32 {
            prefetch_line(&self.entries[(slot & 0xffff_ffff) as usize - 1]);
        }
    }

    fn get(&self, id: &[u8], hash: u64) -> Option<Span> {
        let padded = Entry::pad(id)?;
        let mut at = self.home(hash);
        loop {
            let slot = self.index[at];
            if slot == 0 {
                return None;
            }
            if slot >> 32 == hash >> 32 {
                let entry = &self.entries[(slot & 0xffff_ffff) as usize - 1];
                if usize::from(entry.len) == id.len() && entry.id == padded {
                    return Some(entry.span);
                }
            }
            at = (at + 1) & (self.index.len() - 1);
        }
    }
}

/// `n` of an id `u<n>` (`n` without leading zeros, so that one number is one id).
fn number(id: &[u8]) -> Option<usize> {
    let digits = id.strip_prefix(b"u")?;
    if digits.is_empty() || digits.len() > 9 || (digits[0] == b'0' && digits.len() > 1) {
        return None;
    }
    digits.iter().try_fold(0, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + usize::from(d - b'0'))
    })
}

/// `block` with each `"SU:ID"` replaced by user ID, or by the inline error that says it
/// does not exist. The references are found first, so that each user can be fetched into the
/// cache [`AHEAD`] references before it is copied.
fn substitute<'u>(
    block: &[u8],
    users: &'u Users,
    finder: &memmem::Finder,
    found: &mut Vec<(usize, usize, Found<'u>)>,
    out: &mut Vec<u8>,
) {
    found.clear();
    let mut from = 0;
    while let Some(at) = finder.find(&block[from..]) {
        let start = from + at;
        let id_start = start + 4;
        let Some(len) = memchr::memchr(b'"', &block[id_start..]) else {
            break;
        };
        let id_end = id_start + len;
        let id = &block[id_start..id_end];
        match &users.hashed {
            // Found below, once every hash is known.
            Some(table) => found.push((start, id_end, Found::Hash(table.hash(id)))),
            None => found.push((start, id_end, Found::User(users.get(id)))),
        }
        from = id_end + 1;
    }
    if let Some(table) = &users.hashed {
        for i in 0..found.len() {
            if let Some(&(_, _, Found::Hash(ahead))) = found.get(i + INDEX_AHEAD) {
                table.fetch_index(ahead);
            }
            if let Some(&(_, _, Found::Hash(ahead))) = found.get(i + ENTRY_AHEAD) {
                table.fetch_entry(ahead);
            }
            let (start, id_end, Found::Hash(hash)) = found[i] else {
                unreachable!("every reference is hashed first");
            };
            let span = table.get(&block[start + 4..id_end], hash);
            found[i].2 = Found::User(span.and_then(|span| users.at(span)));
        }
    }
    out.clear();
    let mut from = 0;
    for (i, &(start, id_end, user)) in found.iter().enumerate() {
        if let Some(&(_, _, Found::User(Some(ahead)))) = found.get(i + AHEAD) {
            prefetch(ahead);
        }
        out.extend_from_slice(&block[from..start]);
        match user.user() {
            Some(user) => out.extend_from_slice(user),
            None => {
                let id = &block[start + 4..id_end];
                out.extend_from_slice(b"{\"error\":\"ReferenceNotFound\",\"reference\":\"SU:");
                out.extend_from_slice(id);
                out.extend_from_slice(b"\",\"reference_type\":\"user\",\"id\":\"");
                out.extend_from_slice(id);
                out.extend_from_slice(b"\"}");
            }
        }
        from = id_end + 1;
    }
    out.extend_from_slice(&block[from..]);
}

/// A reference's user as a block's substitution finds it: by its id's hash first, with
/// `--hashed`, then the user (or none).
#[derive(Clone, Copy)]
enum Found<'u> {
    Hash(u64),
    User(Option<&'u [u8]>),
}

impl<'u> Found<'u> {
    fn user(self) -> Option<&'u [u8]> {
        match self {
            Found::User(user) => user,
            Found::Hash(_) => None,
        }
    }
}

/// Every line of `block` through the job's scanner, in pages of 1,024 lines (`--scan`).
fn scan(block: &[u8], page: &mut enrich::RawPage) {
    for line in block.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
        if page.len() == 1024 {
            page.clear();
        }
        page.push(line)
            .expect("the workload's lines are activities");
    }
    page.clear();
}

/// Starts fetching the cache lines of `bytes` (a user of ~200 bytes: four).
fn prefetch(bytes: &[u8]) {
    for byte in bytes.iter().step_by(64) {
        prefetch_line(byte);
    }
}

/// Starts fetching the cache line `value` starts in.
fn prefetch_line<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    safe_arch::prefetch_t0(value);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
