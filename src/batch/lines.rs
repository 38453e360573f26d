//! NDJSON input: lines read with a length cap, so one runaway line cannot exhaust memory.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::error::{Error, ErrorKind, Result};

/// One line of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// The line's bytes, without the line ending.
    Text(Vec<u8>),
    /// The line was longer than the cap: its first `cap` bytes, and its length.
    TooLong {
        /// The start of the line.
        prefix: Vec<u8>,
        /// How long the line was, in bytes.
        len: usize,
    },
}

/// Reads lines of at most `max_len` bytes, numbering them from 1.
#[derive(Debug)]
pub struct LineReader<R> {
    input: BufReader<R>,
    max_len: usize,
    number: u64,
    /// The line being read, reused from line to line.
    text: Vec<u8>,
    /// Bytes of the buffer lent out as the last line, consumed at the next call.
    lent: usize,
    /// Where the next line ends in the buffer, once the last one is consumed, if
    /// [`LineReader::has_buffered_line`] found it.
    next_end: Option<usize>,
    /// A line over the cap ends the reading ([`LineReader::stop_past_cap`]).
    stop_past_cap: bool,
    /// The reading ended at such a line.
    ended: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// Reads from `input` through a buffer of `capacity` bytes; lines longer than `max_len`
    /// come back as [`Line::TooLong`].
    pub fn new(input: R, capacity: usize, max_len: usize) -> Self {
        LineReader {
            input: BufReader::with_capacity(capacity, input),
            max_len,
            number: 0,
            text: Vec::new(),
            lent: 0,
            next_end: None,
            stop_past_cap: false,
            ended: false,
        }
    }

    /// From now on, a line over the cap ends the reading: it comes back as
    /// [`LineRef::TooLong`] as soon as the cap is passed, its `len` the bytes read of it so far
    /// (all of it, if its end came with them), and nothing comes after it. For a caller that
    /// stops at such a line anyway: a line with no end in sight (`/dev/zero`, a pipe that
    /// pauses inside it) is not waited out.
    pub fn stop_past_cap(&mut self) {
        self.stop_past_cap = true;
    }

    /// The number of the line returned last.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// True if bytes are buffered, so the next line may come without waiting for input. A
    /// caller that batches lines flushes its batch when this is false: input has paused.
    pub fn has_buffered(&self) -> bool {
        self.input.buffer().len() > self.lent
    }

    /// True if a whole line is buffered: the next line comes without waiting for input. (Only
    /// the start of one may be, which [`LineReader::has_buffered`] counts too.) Where it ends
    /// is kept for the next call to [`LineReader::next_line_ref`], which looks no further.
    pub fn has_buffered_line(&mut self) -> bool {
        self.next_end = memchr::memchr(b'\n', &self.input.buffer()[self.lent..]);
        self.next_end.is_some()
    }

    /// The next line, or `None` at the end of the input. A last line without a newline counts.
    /// A line ending is `\n` or `\r\n`; neither counts toward the cap.
    pub async fn next_line(&mut self) -> Result<Option<(u64, Line)>> {
        Ok(self.next_line_ref().await?.map(|(number, line)| {
            let line = match line {
                LineRef::Text(text) => Line::Text(text.to_vec()),
                LineRef::TooLong { prefix, len } => Line::TooLong {
                    prefix: prefix.to_vec(),
                    len,
                },
            };
            (number, line)
        }))
    }

    /// Like [`LineReader::next_line`], lending the line instead of allocating it.
    pub async fn next_line_ref(&mut self) -> Result<Option<(u64, LineRef<'_>)>> {
        if self.ended {
            return Ok(None);
        }
        self.input.consume(std::mem::take(&mut self.lent));
        // A whole line already in the buffer is lent from there, not copied.
        let end = (self.next_end.take()).or_else(|| memchr::memchr(b'\n', self.input.buffer()));
        if let Some(end) = end {
            let line = &self.input.buffer()[..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() <= self.max_len {
                self.lent = end + 1;
                self.number += 1;
                let line = &self.input.buffer()[..line.len()];
                return Ok(Some((self.number, LineRef::Text(line))));
            }
        }
        self.text.clear();
        let mut len = 0usize;
        let mut seen_any = false;
        // The line's last byte so far: a `\r` that turns out to end the line is its ending,
        // not part of it, even when it falls beyond the cap and was not kept.
        let mut last = None;
        loop {
            let buf =
                self.input.fill_buf().await.map_err(|e| {
                    Error::new(ErrorKind::Internal, "cannot read input").with_cause(e)
                })?;
            if buf.is_empty() {
                if !seen_any {
                    return Ok(None);
                }
                break;
            }
            seen_any = true;
            let (chunk, done) = match memchr::memchr(b'\n', buf) {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            len += chunk.len();
            if let Some(&byte) = chunk.last() {
                last = Some(byte);
            }
            let room = self.max_len.saturating_sub(self.text.len());
            self.text.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let consumed = done.unwrap_or(buf.len());
            self.input.consume(consumed);
            if done.is_some() {
                break;
            }
            // A `\r` last may yet be the line's ending, which does not count.
            if self.stop_past_cap && len - usize::from(last == Some(b'\r')) > self.max_len {
                self.ended = true;
                self.number += 1;
                let line = LineRef::TooLong {
                    prefix: &self.text,
                    len,
                };
                return Ok(Some((self.number, line)));
            }
        }
        self.number += 1;
        if last == Some(b'\r') {
            len -= 1;
            if self.text.len() > len {
                self.text.truncate(len);
            }
        }
        if len > self.max_len {
            self.ended = self.stop_past_cap;
            let line = LineRef::TooLong {
                prefix: &self.text,
                len,
            };
            return Ok(Some((self.number, line)));
        }
        Ok(Some((self.number, LineRef::Text(&self.text))))
    }
}

/// A line lent by [`LineReader::next_line_ref`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineRef<'a> {
    /// The line's bytes, without the line ending.
    Text(&'a [u8]),
    /// The line was longer than the cap: its first `cap` bytes, and its length.
    TooLong {
        /// The start of the line.
        prefix: &'a [u8],
        /// How long the line was, in bytes; after [`LineReader::stop_past_cap`], how much of it
        /// was read.
        len: usize,
    },
}

/// The UTF-8 byte order mark some editors write at the start of a file: no JSON text starts
/// with it, so a line that does is refused, with a hint.
pub(super) const BOM: &[u8] = b"\xEF\xBB\xBF";

/// True if the line holds nothing but white space.
pub fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn all(input: &[u8], max: usize) -> Vec<(u64, Line)> {
        let mut reader = LineReader::new(input, 4, max);
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().await.unwrap() {
            out.push(line);
        }
        out
    }

    #[tokio::test]
    async fn splits_lines_and_caps_length() {
        let lines = all(b"ab\r\n0123456789\n\nlast", 5).await;
        assert_eq!(
            lines,
            vec![
                (1, Line::Text(b"ab".to_vec())),
                (
                    2,
                    Line::TooLong {
                        prefix: b"01234".to_vec(),
                        len: 10
                    }
                ),
                (3, Line::Text(Vec::new())),
                (4, Line::Text(b"last".to_vec())),
            ]
        );
        assert!(all(b"", 5).await.is_empty());
    }

    #[tokio::test]
    async fn lines_in_the_buffer_are_lent_the_same() {
        let input = b"ab\r\n0123456789\n\nlast";
        let mut reader = LineReader::new(&input[..], 64, 5);
        let mut lines = Vec::new();
        while let Some(line) = reader.next_line().await.unwrap() {
            lines.push(line);
        }
        assert_eq!(lines, all(input, 5).await);
        assert_eq!(lines.len(), 4);
        assert!(!reader.has_buffered());
    }

    /// The start of a line is buffered, but not a whole line: the next one would wait.
    #[tokio::test]
    async fn a_whole_line_buffered_is_told_from_the_start_of_one() {
        let mut reader = LineReader::new(&b"ab\ncd\nef"[..], 64, 5);
        let mut seen = Vec::new();
        loop {
            let whole = reader.has_buffered_line();
            let buffered = reader.has_buffered();
            let Some((_, line)) = reader.next_line().await.unwrap() else {
                break;
            };
            seen.push((line, buffered, whole));
        }
        let text = |t: &[u8]| Line::Text(t.to_vec());
        assert_eq!(
            seen,
            vec![
                // Nothing read yet.
                (text(b"ab"), false, false),
                (text(b"cd"), true, true),
                // Only `ef`, with no newline after it.
                (text(b"ef"), true, false),
            ]
        );
    }

    /// Stopping past the cap: a line over it comes back as soon as the cap is passed, with
    /// what was read of it, and nothing after it; lines up to the cap are read as ever.
    #[tokio::test]
    async fn a_line_past_the_cap_can_end_the_reading() {
        let mut reader = LineReader::new(&b"ab\n12345\n0123456789\nlast\n"[..], 4, 5);
        reader.stop_past_cap();
        let mut lines = Vec::new();
        while let Some(line) = reader.next_line().await.unwrap() {
            lines.push(line);
        }
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(
            lines[..2],
            [
                (1, Line::Text(b"ab".to_vec())),
                (2, Line::Text(b"12345".to_vec()))
            ]
        );
        let (number, Line::TooLong { prefix, len }) = &lines[2] else {
            panic!("{lines:?}");
        };
        assert_eq!((*number, &prefix[..]), (3, &b"01234"[..]));
        assert!(
            *len > 5 && *len < 10,
            "{len}: more than the cap, less than the whole line"
        );
    }

    /// Stopping past the cap, a line of exactly the cap is still taken with `\r\n`, even when
    /// the `\r` and the `\n` come in different reads.
    #[tokio::test]
    async fn stopping_past_the_cap_leaves_crlf_out_of_the_count() {
        for capacity in [64, 4, 3, 2] {
            let mut reader = LineReader::new(&b"12345\r\n123456\r\nnever"[..], capacity, 5);
            reader.stop_past_cap();
            let mut lines = Vec::new();
            while let Some(line) = reader.next_line().await.unwrap() {
                lines.push(line);
            }
            assert_eq!(lines.len(), 2, "through a buffer of {capacity}: {lines:?}");
            assert_eq!(lines[0], (1, Line::Text(b"12345".to_vec())));
            assert!(
                matches!(&lines[1], (2, Line::TooLong { prefix, len: 6.. }) if prefix == b"12345"),
                "through a buffer of {capacity}: {lines:?}"
            );
        }
    }

    /// `\r\n` ends a line like `\n`: a line of exactly the cap is accepted with either, on
    /// the path that lends from the buffer and on the one that gathers a line across reads.
    #[tokio::test]
    async fn crlf_does_not_count_toward_the_cap() {
        for ending in ["\n", "\r\n"] {
            let input = format!("12345{ending}123456{ending}1234\r");
            for capacity in [64, 4, 3] {
                let mut reader = LineReader::new(input.as_bytes(), capacity, 5);
                let mut lines = Vec::new();
                while let Some(line) = reader.next_line().await.unwrap() {
                    lines.push(line);
                }
                assert_eq!(
                    lines,
                    vec![
                        (1, Line::Text(b"12345".to_vec())),
                        (
                            2,
                            Line::TooLong {
                                prefix: b"12345".to_vec(),
                                len: 6
                            }
                        ),
                        (3, Line::Text(b"1234".to_vec())),
                    ],
                    "{ending:?} through a buffer of {capacity}"
                );
            }
        }
    }
}
