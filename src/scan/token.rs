//! The grammar's tokens that take more than a glance: escapes and the range of numbers.

/// The length of the escape at `src[at]` (a `\`), or why it is refused.
///
/// serde_json decodes every string it puts in a `Value`, so it refuses a `\u` escape of a
/// UTF-16 surrogate unless a leading one (D800–DBFF) is followed at once by an escaped trailing
/// one (DC00–DFFF): such text has no UTF-8 form. The grammar alone would take them.
pub(super) fn escape_len(src: &[u8], at: usize) -> std::result::Result<usize, &'static str> {
    const UNPAIRED: &str = "unpaired UTF-16 surrogate in a \\u escape";
    match src.get(at + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(2),
        Some(b'u') => match hex4(src, at + 2) {
            None => Err("invalid escape"),
            Some(0xD800..=0xDBFF) => match (src.get(at + 6..at + 8), hex4(src, at + 8)) {
                (Some(b"\\u"), Some(0xDC00..=0xDFFF)) => Ok(12),
                _ => Err(UNPAIRED),
            },
            Some(0xDC00..=0xDFFF) => Err(UNPAIRED),
            Some(_) => Ok(6),
        },
        _ => Err("invalid escape"),
    }
}

/// The four hex digits at `src[at..]` as a number.
fn hex4(src: &[u8], at: usize) -> Option<u16> {
    src.get(at..at + 4)?.iter().try_fold(0u16, |n, &digit| {
        Some(n << 4 | char::from(digit).to_digit(16)? as u16)
    })
}

/// Whether a number that passed the grammar is one serde_json takes, checked only where it
/// could be out of range.
///
/// serde_json reads a number with a fraction, an exponent or more digits than 64 bits hold as
/// an `f64`, and refuses one that overflows (one that underflows becomes 0). It keeps the
/// leading digits that fit in a `u64` (at least 19) and scales them by a power of ten: the
/// integer digits beyond those, plus the exponent, less the fraction digits kept. With at most
/// 200 integer digits and an exponent under 100 that power is at most 10^280, and
/// 2^64 × 10^280 is far below `f64::MAX`: only a number with more integer digits or a positive
/// exponent of three digits or more can overflow. Those few are handed to serde_json itself:
/// near `f64::MAX` its approximate scaling decides, and which way depends on its version and
/// features (`float_roundtrip`), so no copy of its rule could stay exact.
pub(super) fn number_in_range(
    number: &[u8],
    int_digits: usize,
    exponent: Option<(bool, usize)>,
) -> bool {
    let may_overflow =
        int_digits > 200 || exponent.is_some_and(|(positive, digits)| positive && digits > 2);
    !may_overflow || serde_json::from_slice::<serde_json::Number>(number).is_ok()
}
