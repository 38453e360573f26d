//! The floor under `enrich run`: the least a substitution of user references can cost on this
//! machine, measured by `scripts/job-bench` in the same rounds as the job and the copy.
//!
//! ```sh
//! cargo run --release --example floor -- USERS.ndjson ACTIVITIES.ndjson OUT.ndjson [--threads 2]
//! ```
//!
//! It writes the job's output byte for byte (job-bench checks), for the workload of
//! `examples/workload.rs` only, and does nothing else: the users are read from their file
//! before the first activity, and a user is found by the cheapest lookup there is, the number
//! in its id (`u123`) as an index into an array (other ids, such as the workload's missing
//! ones, in a hash map); every `"SU:…"` string in the input is taken for a reference wherever
//! it stands (no JSON is parsed or checked, no line counted, no limit kept); the reader, the
//! workers and the writer pass blocks of 256 KiB and recycle their buffers.
//!
//! What the job does beyond that (the grammar, the store, the L1 and the memo, the outcome of
//! every line, the bounds) is its price over the floor. What the floor costs beyond the copy
//! is the price of the substitution itself, which the copy does not pay: reading the input,
//! finding the references, looking them up and assembling the output.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use foldhash::fast::RandomState;
use memchr::memmem;

/// Bytes read at a time; a block ends at its last whole line. A block's output (~1.2 MiB) is
/// then still in the cache when the writer copies it: with blocks of 1 MiB, one worker beside
/// the writer took twice the CPU in two runs of three (2.2 against 1.0 s) and one core took
/// 0.84–1.37 s against 0.86–1.04 s; blocks of 128 KiB did no better than 256 KiB.
const BLOCK: usize = 1 << 18;

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
    let users = Arc::new(Users::read(std::fs::read(users)?));
    let mut input = File::open(input)?;
    let output = File::create(output)?;

    let (blocks, work) = sync_channel::<(usize, Vec<u8>)>(threads * 2);
    let (done, written) = sync_channel::<(usize, Vec<u8>)>(threads * 2);
    let (spent_in, fresh_in) = sync_channel::<Vec<u8>>(threads * 4);
    let (spent_out, fresh_out) = sync_channel::<Vec<u8>>(threads * 4);
    let work = Arc::new(Mutex::new(work));
    let fresh_out = Arc::new(Mutex::new(fresh_out));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (users, work, done, fresh_out, spent_in) = (
                users.clone(),
                work.clone(),
                done.clone(),
                fresh_out.clone(),
                spent_in.clone(),
            );
            std::thread::spawn(move || {
                let finder = memmem::Finder::new(b"\"SU:");
                loop {
                    let Ok((seq, block)) = work.lock().expect("no worker panics").recv() else {
                        return;
                    };
                    let reused = fresh_out.lock().expect("no worker panics").try_recv();
                    let mut out = reused.unwrap_or_else(|_| Vec::with_capacity(BLOCK * 5));
                    substitute(&block, &users, &finder, &mut out);
                    let _ = spent_in.try_send(block);
                    if done.send((seq, out)).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    // Only the workers hold these: should they all stop (the writer failed), the reader's
    // next send fails instead of waiting for ever.
    drop((work, fresh_out, done, spent_in));
    let writer = std::thread::spawn(move || write_in_order(output, written, spent_out));

    // The reader: blocks of whole lines, the partial last line carried into the next block.
    let mut carry = Vec::new();
    let mut seq = 0;
    loop {
        let mut block = fresh_in.try_recv().unwrap_or_default();
        block.clear();
        block.append(&mut carry);
        let start = block.len();
        block.resize(start + BLOCK, 0);
        let n = input.read(&mut block[start..])?;
        block.truncate(start + n);
        if n == 0 {
            if !block.is_empty() {
                let _ = blocks.send((seq, block));
            }
            break;
        }
        let end = memchr::memrchr(b'\n', &block).map_or(0, |i| i + 1);
        carry.extend_from_slice(&block[end..]);
        block.truncate(end);
        if blocks.send((seq, block)).is_err() {
            break;
        }
        seq += 1;
    }
    drop(blocks);
    for worker in workers {
        worker.join().expect("no worker panics");
    }
    // The writer's error, if it stopped the run.
    writer.join().expect("the writer does not panic")
}

/// The users file, and where each user's line is in it.
struct Users {
    file: Vec<u8>,
    /// By the number of an id `u<number>`.
    numbered: Vec<Option<(usize, usize)>>,
    /// By any other id.
    named: HashMap<Box<[u8]>, (usize, usize), RandomState>,
}

impl Users {
    /// Users by id, from lines of `{…,"id":"ID",…}` as `examples/workload.rs` writes them.
    fn read(file: Vec<u8>) -> Users {
        let id_key = memmem::Finder::new(b"\"id\":\"");
        let mut numbered = Vec::new();
        let mut named = HashMap::default();
        let mut start = 0;
        for line in file.split_inclusive(|&b| b == b'\n') {
            let span = (start, start + line.trim_ascii_end().len());
            start += line.len();
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
                        numbered.resize(n + 1, None);
                    }
                    numbered[n] = Some(span);
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
            Some(n) => (*self.numbered.get(n)?)?,
            None => *self.named.get(id)?,
        };
        Some(&self.file[start..end])
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
/// does not exist.
fn substitute(block: &[u8], users: &Users, finder: &memmem::Finder, out: &mut Vec<u8>) {
    out.clear();
    let mut from = 0;
    while let Some(at) = finder.find(&block[from..]) {
        let start = from + at;
        let id_start = start + 4;
        let Some(len) = memchr::memchr(b'"', &block[id_start..]) else {
            break;
        };
        let id = &block[id_start..id_start + len];
        out.extend_from_slice(&block[from..start]);
        match users.get(id) {
            Some(user) => out.extend_from_slice(user),
            None => {
                out.extend_from_slice(b"{\"error\":\"ReferenceNotFound\",\"reference\":\"SU:");
                out.extend_from_slice(id);
                out.extend_from_slice(b"\",\"reference_type\":\"user\",\"id\":\"");
                out.extend_from_slice(id);
                out.extend_from_slice(b"\"}");
            }
        }
        from = id_start + len + 1;
    }
    out.extend_from_slice(&block[from..]);
}

/// Writes the workers' blocks in the order they were read, handing the buffers back.
fn write_in_order(
    mut output: File,
    written: Receiver<(usize, Vec<u8>)>,
    spent: SyncSender<Vec<u8>>,
) -> std::io::Result<()> {
    let mut next = 0;
    let mut early = BTreeMap::new();
    for (seq, out) in written {
        early.insert(seq, out);
        while let Some(out) = early.remove(&next) {
            output.write_all(&out)?;
            let _ = spent.try_send(out);
            next += 1;
        }
    }
    Ok(())
}
