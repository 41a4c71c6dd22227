//! What the component stores under a key: the gate's value behind the
//! writes that made it.
//!
//! A tag is a random number drawn for one write. Each write carries its own
//! tag first, then the tags of the record it replaced, and a sequence number
//! one past that record's. So a record names the writes that led to it, each
//! at its place in the key's history. Two things follow. A compare-and-swap
//! on a value (Spin's SQLite store compares values, not versions) can never
//! be fooled by a value that came back (ABA): no two records are alike. And a
//! writer can tell whether its write landed by reading the key back, even on
//! a store whose swap reports success when it did not write (Spin's Redis
//! store): the write numbered `n` landed if the tag at `n` is its own.
//!
//! How far back a record names writes is what makes that read-back exact: a
//! request's calls can queue behind any number of others' (Spin's SQLite
//! store serves them all on one connection), so it is not a count. A record
//! keeps every write of the last [`HORIZON_MS`] (by the clocks of the
//! instances that wrote them), and at least [`MIN_HISTORY`]; a read-back
//! later than that which finds its place gone is told so
//! ([`Landing::Unknown`]), never guessed.
//!
//! Format: `SGR2`, the sequence number (u64), the number of tags (u32, at
//! least 1), the tags newest first (tag u64, write time in ms u64), the
//! value; little-endian. `SGR1` records (an earlier build's: 1 to 16 bare
//! tags, newest first) are read as a history without numbers; anything
//! without a prefix is a value with no tags.

/// How long a record names the writes made into it, at the least.
pub const HORIZON_MS: u64 = 10_000;

/// How many writes a record names however old they are.
pub const MIN_HISTORY: usize = 16;

/// How many writes a record names at most, however recent: at more than
/// this many writes in [`HORIZON_MS`], a read-back must come within this many
/// writes of its own.
pub const MAX_HISTORY: usize = 4_096;

const MAGIC: &[u8; 4] = b"SGR2";
const MAGIC_V1: &[u8; 4] = b"SGR1";
const V1_TAG: usize = 8;
const V1_HISTORY: usize = 16;
const ENTRY: usize = 16;
const HEADER: usize = 4 + 8 + 4;

/// Which writes a record names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum History<'a> {
    /// None: bytes as an earlier build stored them, or nothing yet.
    Untagged,
    /// `SGR1`: 8-byte tags, newest first, with no numbers.
    Unnumbered(&'a [u8]),
    /// `SGR2`: the newest write's number, and (tag, time) entries newest
    /// first.
    Numbered { sequence: u64, entries: &'a [u8] },
}

/// A stored record, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    history: History<'a>,
    /// The gate's value.
    pub value: &'a [u8],
}

/// One write into a record: its number in the key's history and its tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write {
    sequence: u64,
    tag: u64,
}

/// What a read-back says of a [`Write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landing {
    /// The record is the write or was built on it.
    Landed,
    /// Another write took its place, or the key holds something else.
    Lost,
    /// So many writes followed it that the record no longer names its place.
    Unknown,
}

fn le_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

impl<'a> Record<'a> {
    /// Reads stored bytes; bytes without a prefix are an untagged value.
    pub fn parse(stored: &'a [u8]) -> Record<'a> {
        Self::parse_numbered(stored)
            .or_else(|| Self::parse_unnumbered(stored))
            .unwrap_or(Record {
                history: History::Untagged,
                value: stored,
            })
    }

    fn parse_numbered(stored: &'a [u8]) -> Option<Record<'a>> {
        let rest = stored.strip_prefix(MAGIC)?;
        let sequence = le_u64(rest)?;
        let count = u32::from_le_bytes(rest.get(8..12)?.try_into().ok()?);
        let count = usize::try_from(count).ok()?;
        if count == 0 || count > MAX_HISTORY {
            return None;
        }
        let (entries, value) = rest.get(12..)?.split_at_checked(count * ENTRY)?;
        Some(Record {
            history: History::Numbered { sequence, entries },
            value,
        })
    }

    fn parse_unnumbered(stored: &'a [u8]) -> Option<Record<'a>> {
        let (&count, rest) = stored.strip_prefix(MAGIC_V1)?.split_first()?;
        let count = usize::from(count);
        if count == 0 || count > V1_HISTORY {
            return None;
        }
        let (tags, value) = rest.split_at_checked(count * V1_TAG)?;
        Some(Record {
            history: History::Unnumbered(tags),
            value,
        })
    }

    /// What this record says of `write`.
    pub fn landing(&self, write: Write) -> Landing {
        let History::Numbered { sequence, entries } = self.history else {
            // Not a record this build wrote, so not built on one.
            return Landing::Lost;
        };
        let Some(back) = sequence.checked_sub(write.sequence) else {
            return Landing::Lost;
        };
        let (entries, _) = entries.as_chunks::<ENTRY>();
        match usize::try_from(back).ok().and_then(|i| entries.get(i)) {
            Some(entry) if le_u64(entry) == Some(write.tag) => Landing::Landed,
            Some(_) => Landing::Lost,
            None => Landing::Unknown,
        }
    }

    /// The bytes that the write tagged `tag` at `now_ms` stores to put
    /// `value` in place of this record, and the write.
    pub fn next(&self, tag: u64, now_ms: u64, value: &[u8]) -> (Vec<u8>, Write) {
        let (sequence, kept) = match self.history {
            History::Untagged => (1, Vec::new()),
            // An earlier build's tags, carried so its writers still find
            // theirs; their times unknown, they count as old.
            History::Unnumbered(tags) => {
                let entries = tags
                    .as_chunks::<V1_TAG>()
                    .0
                    .iter()
                    .map(|tag| (*tag, 0u64.to_le_bytes()));
                (1, entries.take(MIN_HISTORY - 1).collect())
            }
            History::Numbered { sequence, entries } => {
                let entries = entries.as_chunks::<ENTRY>().0.iter().enumerate();
                let kept = entries
                    .take_while(|(i, entry)| {
                        let time = le_u64(entry.get(8..).unwrap_or_default()).unwrap_or(0);
                        *i + 1 < MIN_HISTORY || time.saturating_add(HORIZON_MS) >= now_ms
                    })
                    .take(MAX_HISTORY - 1)
                    .map(|(_, entry)| {
                        let (tag, time) = entry.split_at(8);
                        (
                            tag.try_into().unwrap_or_default(),
                            time.try_into().unwrap_or_default(),
                        )
                    })
                    .collect();
                (sequence.wrapping_add(1), kept)
            }
        };
        let write = Write { sequence, tag };
        let count = kept.len() + 1;
        let mut out = Vec::with_capacity(HEADER + count * ENTRY + value.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&sequence.to_le_bytes());
        out.extend_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&now_ms.to_le_bytes());
        for (tag, time) in kept {
            out.extend_from_slice(&tag);
            out.extend_from_slice(&time);
        }
        out.extend_from_slice(value);
        (out, write)
    }

    /// The record before any write: no tags, no value.
    pub const NONE: Record<'static> = Record {
        history: History::Untagged,
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

    /// The stored bytes of `writes` writes of `value` at `at(i)`, and each
    /// write.
    fn chain(writes: u64, at: impl Fn(u64) -> u64) -> (Vec<u8>, Vec<Write>) {
        let mut stored = Vec::new();
        let mut made = Vec::new();
        for i in 0..writes {
            let (next, write) = Record::parse(&stored).next(1_000 + i, at(i), b"v");
            made.push(write);
            stored = next;
        }
        (stored, made)
    }

    #[test]
    fn a_record_keeps_its_value_and_names_its_writes() {
        let (first, a) = Record::NONE.next(1, 0, b"a");
        let first = Record::parse(&first);
        assert_eq!(first.value, b"a");
        assert_eq!(first.landing(a), Landing::Landed);
        let (second, b) = first.next(2, 0, b"SGL2 and more");
        let second = Record::parse(&second);
        assert_eq!(second.value, b"SGL2 and more");
        assert_eq!(second.landing(a), Landing::Landed);
        assert_eq!(second.landing(b), Landing::Landed);
    }

    #[test]
    fn a_write_that_another_replaced_is_lost() {
        let (base, _) = Record::NONE.next(1, 0, b"a");
        let base = Record::parse(&base);
        let (_, mine) = base.next(2, 0, b"mine");
        let (theirs, _) = base.next(3, 0, b"theirs");
        let (after, _) = Record::parse(&theirs).next(4, 0, b"after");
        assert_eq!(Record::parse(&theirs).landing(mine), Landing::Lost);
        assert_eq!(Record::parse(&after).landing(mine), Landing::Lost);
        // A key that holds something this build did not write.
        assert_eq!(Record::parse(b"{}").landing(mine), Landing::Lost);
    }

    #[test]
    fn every_write_of_the_horizon_is_named_however_many() {
        // 5,000 writes within one second.
        let (stored, writes) = chain(5_000, |i| 1_000_000 + i / 5);
        let record = Record::parse(&stored);
        let named = writes
            .iter()
            .rev()
            .take_while(|w| record.landing(**w) == Landing::Landed);
        assert_eq!(named.count(), MAX_HISTORY);
        // 300 writes over three seconds: all of them.
        let (stored, writes) = chain(300, |i| 1_000_000 + i * 10);
        let record = Record::parse(&stored);
        assert!(writes.iter().all(|w| record.landing(*w) == Landing::Landed));
    }

    #[test]
    fn older_writes_than_the_horizon_are_unknown_past_the_minimum() {
        // One write a second for a minute.
        let (stored, writes) = chain(60, |i| 1_000_000 + i * 1_000);
        let record = Record::parse(&stored);
        let landings: Vec<Landing> = writes.iter().map(|w| record.landing(*w)).collect();
        let named = landings.iter().filter(|l| **l == Landing::Landed).count();
        assert_eq!(named, MIN_HISTORY);
        assert!(
            landings[..60 - MIN_HISTORY]
                .iter()
                .all(|l| *l == Landing::Unknown)
        );
    }

    #[test]
    fn an_earlier_builds_record_is_read_and_built_on() {
        let mut v1 = b"SGR1\x02".to_vec();
        v1.extend_from_slice(&7u64.to_le_bytes());
        v1.extend_from_slice(&6u64.to_le_bytes());
        v1.extend_from_slice(b"SGL2");
        let record = Record::parse(&v1);
        assert_eq!(record.value, b"SGL2");
        let (next, write) = record.next(8, 5, b"x");
        let next = Record::parse(&next);
        assert_eq!(next.value, b"x");
        assert_eq!(next.landing(write), Landing::Landed);
        let History::Numbered { entries, .. } = next.history else {
            panic!("not numbered: {next:?}");
        };
        let tags: Vec<u64> = entries
            .as_chunks::<ENTRY>()
            .0
            .iter()
            .filter_map(|e| le_u64(e))
            .collect();
        assert_eq!(tags, [8, 7, 6], "the earlier build's tags are carried");
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
            b"SGR2",
            b"SGR2\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            b"SGR2\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00short",
            b"SGR2\x01\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff",
            b"",
        ] {
            let record = Record::parse(stored);
            assert_eq!(record.value, stored);
            assert_eq!(record.history, History::Untagged);
        }
    }

    #[test]
    fn tags_do_not_repeat() {
        let mut tags = Tags::new(7);
        let mut seen = std::collections::HashSet::new();
        assert!((0..10_000).all(|_| seen.insert(tags.draw())));
    }
}
