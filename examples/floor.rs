//! The bare substitution under `enrich run`: the job's output with nothing else done, by a
//! plain program written for speed, measured by `scripts/job-bench` in the same rounds as the
//! job and the copy of its output.
//!
//! ```sh
//! cargo run --release --example floor -- USERS.ndjson ACTIVITIES.ndjson OUT.ndjson [--threads 2]
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

/// The users file, and where each user's line is in it.
struct Users {
    file: Vec<u8>,
    /// By the number of an id `u<number>`: (start, end), or (0, 0) for none.
    numbered: Vec<(u32, u32)>,
    /// By any other id.
    named: HashMap<Box<[u8]>, (u32, u32), RandomState>,
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
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .expect("--threads takes a number above 0")
            }
            _ => paths.push(arg),
        }
    }
    let [users, input, output] = <[String; 3]>::try_from(paths)
        .expect("usage: floor USERS.ndjson ACTIVITIES.ndjson OUT.ndjson [--threads N]");
    let users = Users::read(std::fs::read(users)?);
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
            .map(|_| scope.spawn(|| work(&users, &input, len, &output, &claimed, &turn)))
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
    input: &File,
    len: u64,
    mut output: &File,
    claimed: &AtomicUsize,
    turn: &Turn,
) -> std::io::Result<()> {
    let finder = memmem::Finder::new(b"\"SU:");
    let (mut block, mut out, mut found) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        let k = claimed.fetch_add(1, Ordering::Relaxed) as u64;
        if k * BLOCK >= len {
            return Ok(());
        }
        let read = read_block(input, len, k, &mut block);
        if let Ok(lines) = &read {
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
    fn read(file: Vec<u8>) -> Users {
        let id_key = memmem::Finder::new(b"\"id\":\"");
        let mut numbered = Vec::new();
        let mut named = HashMap::default();
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
        Users {
            file,
            numbered,
            named,
        }
    }

    fn get(&self, id: &[u8]) -> Option<&[u8]> {
        let (start, end) = match number(id) {
            Some(n) => *self.numbered.get(n)?,
            None => *self.named.get(id)?,
        };
        (end > start).then(|| &self.file[start as usize..end as usize])
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
    found: &mut Vec<(usize, usize, Option<&'u [u8]>)>,
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
        found.push((start, id_end, users.get(&block[id_start..id_end])));
        from = id_end + 1;
    }
    out.clear();
    let mut from = 0;
    for (i, &(start, id_end, user)) in found.iter().enumerate() {
        if let Some(&(_, _, Some(ahead))) = found.get(i + AHEAD) {
            prefetch(ahead);
        }
        out.extend_from_slice(&block[from..start]);
        match user {
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

/// Starts fetching the cache lines of `bytes` (a user of ~200 bytes: four).
fn prefetch(bytes: &[u8]) {
    for byte in bytes.iter().step_by(64) {
        #[cfg(target_arch = "x86_64")]
        safe_arch::prefetch_t0(byte);
        #[cfg(not(target_arch = "x86_64"))]
        let _ = byte;
    }
}
