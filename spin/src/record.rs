//! What the component stores under a key: the gate's value behind the tags
//! of the last writes that made it.
//!
//! A tag is a random number drawn for one write. Each write carries its own
//! tag first, then the tags of the record it replaced, so a record names the
//! writes that led to it. Two things follow. A compare-and-swap on a value
//! (Spin's SQLite store compares values, not versions) can never be fooled
//! by a value that came back (ABA): no two records are alike. And a writer
//! can tell whether its write landed by reading the key back, even on a store
//! whose swap reports success when it did not write (Spin's Redis store).
//!
//! `SGR1`, the number of tags (1..=[`HISTORY`]), the tags (8 bytes each,
//! newest first), the value. Anything without the prefix is a value as an
//! earlier build stored it, with no tags.

/// How many tags a record keeps: a write is known to have landed while
/// fewer than this many writes followed it before its read-back.
pub const HISTORY: usize = 16;

const MAGIC: &[u8; 4] = b"SGR1";
const TAG: usize = 8;

/// A stored record, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    tags: &'a [u8],
    /// The gate's value.
    pub value: &'a [u8],
}

impl<'a> Record<'a> {
    /// Reads stored bytes; bytes without the prefix are an untagged value.
    pub fn parse(stored: &'a [u8]) -> Record<'a> {
        let untagged = Record {
            tags: &[],
            value: stored,
        };
        let Some(rest) = stored.strip_prefix(MAGIC) else {
            return untagged;
        };
        let Some((&count, rest)) = rest.split_first() else {
            return untagged;
        };
        let count = usize::from(count);
        if count == 0 || count > HISTORY {
            return untagged;
        }
        match rest.split_at_checked(count * TAG) {
            Some((tags, value)) => Record { tags, value },
            None => untagged,
        }
    }

    /// Whether the write tagged `tag` is this record or one it was built on.
    pub fn follows(&self, tag: u64) -> bool {
        let tag = tag.to_le_bytes();
        self.tags.as_chunks::<TAG>().0.contains(&tag)
    }

    /// The record a write tagged `tag` makes of `value` in place of this one.
    pub fn next(&self, tag: u64, value: &[u8]) -> Vec<u8> {
        let kept = self.tags.len().min((HISTORY - 1) * TAG);
        let count = kept / TAG + 1;
        let mut out = Vec::with_capacity(MAGIC.len() + 1 + count * TAG + value.len());
        out.extend_from_slice(MAGIC);
        out.push(u8::try_from(count).unwrap_or(u8::MAX));
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(self.tags.get(..kept).unwrap_or_default());
        out.extend_from_slice(value);
        out
    }

    /// The record before any write: no tags, no value.
    pub const NONE: Record<'static> = Record {
        tags: &[],
        value: &[],
    };
}

/// Tags for one instance's writes: splitmix64 from a random seed, so tags
/// from instances seeded apart do not meet.
#[derive(Debug, Clone)]
pub struct Tags(u64);

impl Tags {
    pub fn new(seed: u64) -> Tags {
        Tags(seed)
    }

    pub fn draw(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_keeps_its_value_and_names_its_writes() {
        let first = Record::NONE.next(1, b"a");
        let first = Record::parse(&first);
        assert_eq!(first.value, b"a");
        assert!(first.follows(1));
        assert!(!first.follows(2));
        let second = first.next(2, b"SGL2 and more");
        let second = Record::parse(&second);
        assert_eq!(second.value, b"SGL2 and more");
        assert!(second.follows(1) && second.follows(2));
    }

    #[test]
    fn only_the_last_writes_are_remembered() {
        let mut stored = Record::NONE.next(0, b"v");
        for tag in 1..40 {
            stored = Record::parse(&stored).next(tag, b"v");
        }
        let record = Record::parse(&stored);
        assert!(record.follows(39));
        assert!(record.follows(39 - HISTORY as u64 + 1));
        assert!(!record.follows(39 - HISTORY as u64));
        assert_eq!(record.value, b"v");
    }

    #[test]
    fn untagged_and_malformed_bytes_are_plain_values() {
        for stored in [
            &b"SGL2...."[..],
            b"{\"failures\":1}",
            b"SGR1",
            b"SGR1\x00",
            b"SGR1\x02abcdefgh",
            b"SGR1\x11",
            b"",
        ] {
            let record = Record::parse(stored);
            assert_eq!(record.value, stored);
            assert!(!record.follows(0));
        }
    }

    #[test]
    fn tags_do_not_repeat() {
        let mut tags = Tags::new(7);
        let mut seen = std::collections::HashSet::new();
        assert!((0..10_000).all(|_| seen.insert(tags.draw())));
    }
}
