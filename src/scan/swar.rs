//! Where a string's plain text stops, eight bytes at a time.

/// Where the string body starting at `from` stops being plain text: the first `"`, `\\` or
/// control character at or after `from` (or byte beyond ASCII, if `ascii`), or `src.len()`.
/// Looks at eight bytes at a time: most strings are short and a call into a general byte
/// search costs more than it saves.
///
/// The word-at-a-time test is SWAR ("SIMD within a register"): Alan Mycroft's zero-byte test,
/// `(v - 0x01…01) & !v & 0x80…80`, as collected in Sean Eron Anderson's *Bit Twiddling Hacks*
/// ("Determine if a word has a zero byte", and its variants "has a byte equal to n", by XOR
/// with `n` in every byte, and "has a byte less than n", here n = 0x20). serde_json's
/// `SliceRead::skip_to_escape` combines the same three tests to find the end of a string's
/// plain text; the high-bit test for bytes beyond ASCII is ours.
pub(super) fn string_stop(src: &[u8], from: usize, ascii: bool) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut i = from;
    while let Some(word) = src.get(i..i + 8) {
        let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        // A byte is flagged if it is below 0x20, or zero once XORed with `"` or `\\`. Borrows
        // run from low bytes to high ones (the word is read little-endian), so they can flag a
        // byte after a true one, never before it: the lowest flag is exact.
        let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
        let flags = (word.wrapping_sub(ONES * 0x20) & !word & HIGH)
            | zero(word ^ (ONES * u64::from(b'"')))
            | zero(word ^ (ONES * u64::from(b'\\')))
            | if ascii { word & HIGH } else { 0 };
        if flags != 0 {
            return i + (flags.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while src
        .get(i)
        .is_some_and(|&b| b != b'"' && b != b'\\' && b >= 0x20 && (b < 0x80 || !ascii))
    {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_stop_finds_the_first_quote_backslash_or_control_character() {
        let slow = |src: &[u8], from: usize, ascii: bool| {
            (from..src.len())
                .find(|&i| matches!(src[i], b'"' | b'\\' | 0..0x20) || (ascii && src[i] >= 0x80))
                .unwrap_or(src.len())
        };
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let bytes = [
            b'a', b'"', b'\\', 0x00, 0x1f, 0x20, 0x21, 0x5c, 0x7f, 0x80, 0xa2, 0xdc, 0xff,
        ];
        for len in 0..40 {
            for _ in 0..200 {
                let src: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        // Mostly plain text, so stops land anywhere in a word.
                        if state.is_multiple_of(8) {
                            bytes[(state >> 8) as usize % bytes.len()]
                        } else {
                            b'x'
                        }
                    })
                    .collect();
                for from in 0..=len {
                    for ascii in [false, true] {
                        assert_eq!(
                            string_stop(&src, from, ascii),
                            slow(&src, from, ascii),
                            "{src:?} from {from}, {ascii}"
                        );
                    }
                }
            }
        }
    }
}
