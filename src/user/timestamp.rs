//! Timestamps in Stream's one format.

use std::fmt;

use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

use super::shorten;
use crate::error::{Error, Result};

/// A moment in Stream's format: RFC 3339, UTC, six fractional digits, `Z`. Always 27 bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp([u8; Timestamp::LEN]);

const TIMESTAMP_FORMAT: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

impl Timestamp {
    /// The length of every timestamp, `2021-04-13T22:53:19.670051Z`.
    pub const LEN: usize = 27;

    /// True when `text` is a timestamp exactly in this form, `2021-04-13T22:53:19.670051Z`,
    /// and names a real moment (no month 13, no February 30). Reads no further than its 27
    /// bytes, all ASCII.
    pub(crate) fn is_exact(text: &[u8]) -> bool {
        let Ok(text) = <&[u8; Timestamp::LEN]>::try_from(text) else {
            return false;
        };
        let number = |at: std::ops::Range<usize>| {
            text[at].iter().try_fold(0u32, |n, &b| {
                b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
            })
        };
        let separators = [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
        ];
        let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second), Some(_)) = (
            number(0..4),
            number(5..7),
            number(8..10),
            number(11..13),
            number(14..16),
            number(17..19),
            number(20..26),
        ) else {
            return false;
        };
        separators.iter().all(|&(at, b)| text[at] == b)
            && text[26] == b'Z'
            && hour < 24
            && minute < 60
            && second < 60
            && time::Month::try_from(month as u8).is_ok_and(|month| {
                time::Date::from_calendar_date(year as i32, month, day as u8).is_ok()
            })
    }

    /// The current time.
    pub fn now() -> Timestamp {
        Timestamp::from_datetime(OffsetDateTime::now_utc()).expect("the clock is within year 9999")
    }

    /// Reads any RFC 3339 time (any offset, any precision) and normalizes it to UTC with six
    /// fractional digits, as a migration from another store needs.
    pub fn parse(text: &str) -> Result<Timestamp> {
        let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
            Error::invalid(format!(
                "invalid timestamp {:?}: {e}; expected RFC 3339 such as 2021-04-13T22:53:19.670051Z",
                shorten(text)
            ))
        })?;
        Timestamp::from_datetime(parsed)
            .ok_or_else(|| Error::invalid(format!("timestamp {text:?} is out of range")))
    }

    fn from_datetime(at: OffsetDateTime) -> Option<Timestamp> {
        // Checked: `to_offset` panics on a moment its offset moves past year 9999
        // (`9999-12-31T23:59:59-01:00`).
        let utc = at.checked_to_offset(time::UtcOffset::UTC)?;
        if !(0..=9999).contains(&utc.year()) {
            return None;
        }
        let text = utc.format(TIMESTAMP_FORMAT).ok()?;
        let bytes: [u8; Timestamp::LEN] = text.as_bytes().try_into().ok()?;
        Some(Timestamp(bytes))
    }

    /// The timestamp as text.
    pub fn as_str(&self) -> &str {
        // Built only from the ASCII output of `format` above.
        std::str::from_utf8(&self.0).expect("timestamps are ASCII")
    }
}

impl TryFrom<std::time::SystemTime> for Timestamp {
    type Error = Error;

    /// The moment, to the microsecond; [`ErrorKind::InvalidInput`](crate::ErrorKind) for one
    /// outside the years 0 to 9999.
    fn try_from(at: std::time::SystemTime) -> Result<Timestamp> {
        // Through nanoseconds since the epoch, which `time` checks, rather than its `From`,
        // which panics on a moment it cannot represent.
        let nanos = match at.duration_since(std::time::UNIX_EPOCH) {
            Ok(after) => i128::try_from(after.as_nanos()).ok(),
            Err(before) => i128::try_from(before.duration().as_nanos())
                .ok()
                .map(|n| -n),
        };
        nanos
            .and_then(|n| OffsetDateTime::from_unix_timestamp_nanos(n).ok())
            .and_then(Timestamp::from_datetime)
            .ok_or_else(|| Error::invalid(format!("time {at:?} is out of range")))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
