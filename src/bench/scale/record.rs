//! The harness's records and their encoding: fixed-width little-endian integers, so that a
//! reader serving hundreds of thousands of answers a second writes its log at little cost.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// Now, in nanoseconds since the Unix epoch: the one clock every process of the harness reads.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// One write of the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteRecord {
    /// The user, by index (`u{index}`).
    pub user: u32,
    /// The user's version after this write; a deletion takes a version of its own.
    pub version: u32,
    /// True for a deletion.
    pub deleted: bool,
    /// When the write was sent ([`now_ns`]).
    pub sent: u64,
    /// When its acknowledgement arrived; `None` when its outcome is unknown (it failed or timed
    /// out after being sent, so it may have been applied).
    pub acked: Option<u64>,
}

impl WriteRecord {
    const LEN: usize = 4 + 4 + 1 + 8 + 8;

    /// Appends the record's encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.user.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.push(u8::from(self.deleted));
        out.extend_from_slice(&self.sent.to_le_bytes());
        out.extend_from_slice(&self.acked.unwrap_or(u64::MAX).to_le_bytes());
    }

    /// Every record of `bytes`, a sequence of [`WriteRecord::encode`]s.
    pub fn decode_all(bytes: &[u8]) -> Result<Vec<WriteRecord>> {
        if !bytes.len().is_multiple_of(Self::LEN) {
            return Err(Error::invalid("a write log ends in the middle of a record"));
        }
        Ok(bytes
            .chunks_exact(Self::LEN)
            .map(|r| {
                let acked = u64_at(r, 17);
                WriteRecord {
                    user: u32_at(r, 0),
                    version: u32_at(r, 4),
                    deleted: r[8] != 0,
                    sent: u64_at(r, 9),
                    acked: (acked != u64::MAX).then_some(acked),
                }
            })
            .collect())
    }
}

/// What a page served for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Seen {
    /// The user with this version in its data.
    Version(u32),
    /// `ReferenceNotFound`.
    NotFound,
    /// Something else: not a user, another user than the one named, a version that is not a
    /// number, the reference left in place.
    Garbled,
}

impl Seen {
    const NOT_FOUND: u32 = u32::MAX;
    const GARBLED: u32 = u32::MAX - 1;

    fn encode(self) -> u32 {
        match self {
            Seen::Version(v) => v.min(Self::GARBLED - 1),
            Seen::NotFound => Self::NOT_FOUND,
            Seen::Garbled => Self::GARBLED,
        }
    }

    fn decode(code: u32) -> Seen {
        match code {
            Self::NOT_FOUND => Seen::NotFound,
            Self::GARBLED => Seen::Garbled,
            v => Seen::Version(v),
        }
    }
}

/// One page a reader enriched: when, and what it served for each distinct user it named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRecord {
    /// The reader process, by index.
    pub process: u32,
    /// When the page was handed to the enricher ([`now_ns`]).
    pub start: u64,
    /// When its enriched documents were written out.
    pub end: u64,
    /// Each user the page named (by index), with what was served for it.
    pub seen: Vec<(u32, Seen)>,
}

impl PageRecord {
    /// Appends the record's encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.process.to_le_bytes());
        out.extend_from_slice(&self.start.to_le_bytes());
        out.extend_from_slice(&self.end.to_le_bytes());
        let count = u32::try_from(self.seen.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        for &(user, seen) in self.seen.iter().take(count as usize) {
            out.extend_from_slice(&user.to_le_bytes());
            out.extend_from_slice(&seen.encode().to_le_bytes());
        }
    }

    /// Every record of `bytes`, a sequence of [`PageRecord::encode`]s.
    pub fn decode_all(mut bytes: &[u8]) -> Result<Vec<PageRecord>> {
        let cut = || Error::invalid("a page log ends in the middle of a record");
        let mut pages = Vec::new();
        while !bytes.is_empty() {
            if bytes.len() < 24 {
                return Err(cut());
            }
            let count = u32_at(bytes, 20) as usize;
            let len = count.checked_mul(8).and_then(|n| n.checked_add(24));
            let Some(len) = len.filter(|&len| len <= bytes.len()) else {
                return Err(cut());
            };
            let seen = (bytes[24..len].chunks_exact(8))
                .map(|o| (u32_at(o, 0), Seen::decode(u32_at(o, 4))))
                .collect();
            pages.push(PageRecord {
                process: u32_at(bytes, 0),
                start: u64_at(bytes, 4),
                end: u64_at(bytes, 12),
                seen,
            });
            bytes = &bytes[len..];
        }
        Ok(pages)
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_as_written() {
        let writes = [
            WriteRecord {
                user: 7,
                version: 3,
                deleted: true,
                sent: 10,
                acked: Some(12),
            },
            WriteRecord {
                user: 1,
                version: 0,
                deleted: false,
                sent: 5,
                acked: None,
            },
        ];
        let mut bytes = Vec::new();
        writes.iter().for_each(|w| w.encode(&mut bytes));
        assert_eq!(WriteRecord::decode_all(&bytes).unwrap(), writes);
        assert!(WriteRecord::decode_all(&bytes[1..]).is_err());

        let pages = [
            PageRecord {
                process: 2,
                start: 100,
                end: 150,
                seen: vec![
                    (1, Seen::Version(4)),
                    (2, Seen::NotFound),
                    (3, Seen::Garbled),
                ],
            },
            PageRecord {
                process: 0,
                start: 1,
                end: 2,
                seen: vec![],
            },
        ];
        let mut bytes = Vec::new();
        pages.iter().for_each(|p| p.encode(&mut bytes));
        assert_eq!(PageRecord::decode_all(&bytes).unwrap(), pages);
        assert!(PageRecord::decode_all(&bytes[..bytes.len() - 1]).is_err());
    }
}
