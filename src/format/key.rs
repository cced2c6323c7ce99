//! Segment keys: the name of a sealed segment, and the order of the catalog.
//!
//! The string form is `{u64::MAX - end:020}-{start:020}-{timestamp:020}`. Fixed-width
//! decimal makes lexicographic order equal numeric order, and subtracting the end frame
//! from `u64::MAX` makes "newest first" the natural order of any sorted listing, so an
//! object-store listing or a range scan from `u64::MAX - n` finds the newest segment
//! ending at or before `n` without reading anything else.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::error::{Error, InvalidInput, Result};

/// Identifies a sealed segment: its frame range and its timestamp.
///
/// `timestamp` is the time of the segment's *first* commit, in milliseconds since the
/// Unix epoch. Because commit timestamps never decrease along a log, the newest segment
/// whose timestamp is at or before `t` is exactly the segment holding the last commit at
/// or before `t`, which is what point-in-time restore needs. A compacted segment keeps
/// the timestamp of its oldest input, so it never looks newer than what it replaced.
///
/// ```
/// use walvault::SegmentKey;
/// let key = SegmentKey { start_frame_no: 1, end_frame_no: 100, timestamp: 1_700_000_000_000 };
/// let s = key.to_string();
/// assert_eq!(s, "18446744073709551515-00000000000000000001-00000001700000000000");
/// assert_eq!(s.parse::<SegmentKey>().unwrap(), key);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentKey {
    /// First frame number in the segment.
    pub start_frame_no: u64,
    /// Last frame number in the segment (always a commit).
    pub end_frame_no: u64,
    /// Timestamp of the segment's first commit, in ms since the Unix epoch.
    pub timestamp: u64,
}

const FIELD: usize = 20;

impl SegmentKey {
    /// Length of the string form in bytes.
    pub const LEN: usize = 3 * FIELD + 2;

    /// True when `frame_no` lies in `start_frame_no..=end_frame_no`.
    pub fn includes(&self, frame_no: u64) -> bool {
        (self.start_frame_no..=self.end_frame_no).contains(&frame_no)
    }

    /// The timestamp as a date. Saturates at chrono's maximum for values it cannot
    /// represent (parsing never produces such a key).
    pub fn timestamp(&self) -> DateTime<Utc> {
        i64::try_from(self.timestamp)
            .ok()
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Number of frame numbers the key spans.
    pub fn span(&self) -> u64 {
        self.end_frame_no
            .saturating_sub(self.start_frame_no)
            .saturating_add(1)
    }

    /// The string form as bytes, without allocating.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [b'-'; Self::LEN];
        write_field(&mut out[..FIELD], u64::MAX - self.end_frame_no);
        write_field(&mut out[FIELD + 1..2 * FIELD + 1], self.start_frame_no);
        write_field(&mut out[2 * FIELD + 2..], self.timestamp);
        out
    }

    /// Parses the string form from bytes.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self> {
        let fail = |reason| {
            Error::from(InvalidInput::SegmentKey {
                key: String::from_utf8_lossy(&bytes[..bytes.len().min(100)]).into_owned(),
                reason,
            })
        };
        if bytes.len() != Self::LEN {
            return Err(fail(
                "must be exactly 62 characters: three 20-digit fields joined by '-'",
            ));
        }
        if bytes[FIELD] != b'-' || bytes[2 * FIELD + 1] != b'-' {
            return Err(fail("fields must be separated by '-'"));
        }
        let rev_end = parse_field(&bytes[..FIELD]).ok_or_else(|| fail("bad end field"))?;
        let start =
            parse_field(&bytes[FIELD + 1..2 * FIELD + 1]).ok_or_else(|| fail("bad start field"))?;
        let timestamp =
            parse_field(&bytes[2 * FIELD + 2..]).ok_or_else(|| fail("bad timestamp field"))?;
        let key = SegmentKey {
            start_frame_no: start,
            end_frame_no: u64::MAX - rev_end,
            timestamp,
        };
        if key.start_frame_no > key.end_frame_no {
            return Err(fail("start frame is after end frame"));
        }
        if i64::try_from(timestamp)
            .ok()
            .and_then(DateTime::from_timestamp_millis)
            .is_none()
        {
            return Err(fail("timestamp out of range"));
        }
        Ok(key)
    }
}

/// "00" to "99": formatting two digits per division halves the work.
const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Writes `value` as exactly `out.len()` (20) zero-padded decimal digits.
fn write_field(out: &mut [u8], mut value: u64) {
    for pair in out.rchunks_exact_mut(2) {
        let d = (value % 100) as usize * 2;
        pair.copy_from_slice(&PAIRS[d..d + 2]);
        value /= 100;
    }
}

/// Parses exactly 20 ASCII digits into a `u64`; `None` on a non-digit or overflow.
fn parse_field(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &b| {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(d))
    })
}

impl fmt::Display for SegmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_bytes();
        // The buffer holds only ASCII digits and dashes.
        f.write_str(std::str::from_utf8(&bytes).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for SegmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentKey")
            .field("start_frame_no", &self.start_frame_no)
            .field("end_frame_no", &self.end_frame_no)
            .field("timestamp", &self.timestamp())
            .finish()
    }
}

impl FromStr for SegmentKey {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse_bytes(s.as_bytes())
    }
}

/// Orders keys exactly as their string forms sort: newest end frame first, then the
/// larger range (smaller start) first, then by timestamp.
impl Ord for SegmentKey {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .end_frame_no
            .cmp(&self.end_frame_no)
            .then(self.start_frame_no.cmp(&other.start_frame_no))
            .then(self.timestamp.cmp(&other.timestamp))
    }
}

impl PartialOrd for SegmentKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(start: u64, end: u64, ts: u64) -> SegmentKey {
        SegmentKey {
            start_frame_no: start,
            end_frame_no: end,
            timestamp: ts,
        }
    }

    #[test]
    fn display_matches_the_documented_format() {
        let k = key(101, 500, 42);
        assert_eq!(
            k.to_string(),
            format!("{:020}-{:020}-{:020}", u64::MAX - 500, 101, 42)
        );
        let k = key(0, u64::MAX, 0);
        assert_eq!(k.to_string(), format!("{:020}-{:020}-{:020}", 0, 0, 0));
    }

    #[test]
    fn rejects_malformed_strings_without_panicking() {
        let good = key(1, 2, 3).to_string();
        let mut cases: Vec<String> = vec![
            String::new(),
            "-".into(),
            good[..61].into(),
            format!("{good}0"),
            good.replace('-', "_"),
            format!("{}-{:020}-{:020}", "9".repeat(20), 1, 1), // end field overflows
            format!("{:020}-{:020}-{:020}", u64::MAX - 5, 6, 0), // start > end
            format!("{:020}-{:020}-{}", u64::MAX - 5, 1, "9".repeat(20)),
            format!("{:020}-{:020}-{:020}", u64::MAX - 5, 1, u64::MAX), // ts out of range
            format!("+{}", &good[1..]),
            "é".repeat(31),
        ];
        cases.push(good.replacen('0', "a", 1));
        for s in cases {
            let err = s.parse::<SegmentKey>().unwrap_err();
            assert!(err.is_invalid_input(), "{s:?}: {err}");
        }
    }

    #[test]
    fn includes_is_inclusive() {
        let k = key(10, 20, 0);
        assert!(!k.includes(9));
        assert!(k.includes(10));
        assert!(k.includes(20));
        assert!(!k.includes(21));
    }

    #[test]
    fn timestamp_is_a_date() {
        assert_eq!(key(1, 1, 1_500).timestamp().timestamp_millis(), 1_500);
        assert_eq!(key(1, 1, u64::MAX).timestamp(), DateTime::<Utc>::MAX_UTC);
    }

    fn any_key() -> impl Strategy<Value = SegmentKey> {
        let ts_max = DateTime::<Utc>::MAX_UTC.timestamp_millis() as u64;
        (any::<u64>(), any::<u64>(), 0..=ts_max).prop_map(|(a, b, ts)| {
            let (start, end) = if a <= b { (a, b) } else { (b, a) };
            key(start, end, ts)
        })
    }

    proptest! {
        #[test]
        fn round_trips(k in any_key()) {
            prop_assert_eq!(k.to_string().parse::<SegmentKey>().unwrap(), k);
        }

        #[test]
        fn ord_agrees_with_string_order(a in any_key(), b in any_key()) {
            prop_assert_eq!(a.cmp(&b), a.to_string().cmp(&b.to_string()));
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,70}") {
            let _ = s.parse::<SegmentKey>();
        }

        #[test]
        fn digit_soup_never_panics(s in "[0-9-]{60,64}") {
            if let Ok(k) = s.parse::<SegmentKey>() {
                prop_assert_eq!(k.to_string(), s);
            }
        }
    }
}
