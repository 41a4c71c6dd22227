//! The token store's file format: `{"version":1,"credentials":[…]}`, records
//! with hashes only. The CLI reads and writes it; the fuzzer attacks it here.
//!
//! A store may hold a million records (~300 MB of the CLI's pretty JSON).
//! [`parse_set`] parses bytes in memory straight into a [`CredentialSet`].
//! [`Splitter`] serves a host that reads the file a piece at a time: it cuts
//! the bytes, as they come, into the records of the `credentials` list and a
//! small skeleton (the file with every record emptied to `{}`), so the host can
//! parse records in batches, on several threads, and never hold the file whole.
//! Whichever way, serde checks every byte: the skeleton as a store file, each
//! record as a record.

use serde::{Deserialize, Serialize};

use sessiongate_core::CredentialRecord;
#[cfg(any(test, feature = "testing"))]
use sessiongate_core::{CredentialSet, CredentialSetBuilder};

pub(crate) const FORMAT_VERSION: u32 = 1;

#[cfg(any(test, feature = "testing"))]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreIn {
    version: u32,
    credentials: CredentialSetBuilder,
}

#[derive(Serialize)]
struct StoreOut<'a> {
    version: u32,
    credentials: &'a [CredentialRecord],
}

fn check_version(version: u32) -> Result<(), String> {
    if version == FORMAT_VERSION {
        Ok(())
    } else {
        Err(format!(
            "version {version} is not supported (expected {FORMAT_VERSION})"
        ))
    }
}

#[cfg(any(test, feature = "testing"))]
/// Parses a store into the set a gate uses; every record is checked as the
/// gate will check it.
pub(crate) fn parse_set(bytes: &[u8]) -> Result<CredentialSet, String> {
    let file: StoreIn = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    check_version(file.version)?;
    // Finished outside serde: a repeated name or secret is the list's
    // error, not one at the position where the list ends, and it reads as
    // `parse_pieces` reports it.
    file.credentials.finish()
}

#[cfg(any(test, feature = "testing"))]
/// Parses a store into its records, in order (what the CLI edits).
pub(crate) fn parse(bytes: &[u8]) -> Result<Vec<CredentialRecord>, String> {
    parse_set(bytes).map(|set| set.records())
}

/// The file's bytes: pretty JSON and a final newline, for people who look.
pub(crate) fn serialize(records: &[CredentialRecord]) -> Vec<u8> {
    let file = StoreOut {
        version: FORMAT_VERSION,
        credentials: records,
    };
    let mut json = serde_json::to_vec_pretty(&file).unwrap_or_default();
    json.push(b'\n');
    json
}

/// Parses one record cut by a [`Splitter`]; `index` is its place in the
/// list (for the error, whose line and column count from the record's `{`).
pub(crate) fn parse_record(index: usize, record: &[u8]) -> Result<CredentialRecord, String> {
    serde_json::from_slice(record).map_err(|e| format!("credentials[{index}]: {e} of the record"))
}

#[cfg(any(test, feature = "testing"))]
/// The store from its pieces, on one thread: what [`parse_set`] returns for
/// the bytes joined, without needing them at once.
pub(crate) fn parse_pieces<'a>(
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Result<CredentialSet, String> {
    let mut splitter = Splitter::new();
    let mut builder = CredentialSetBuilder::default();
    for piece in pieces {
        splitter.feed(piece, &mut |index, record| {
            builder.push(&parse_record(index, record)?)
        })?;
    }
    splitter.finish()?;
    builder.finish()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Skeleton {
    version: u32,
    credentials: Vec<Emptied>,
}

/// A record as the skeleton holds it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Emptied {}

/// Deeper than any store goes (serde_json stops at 128 anyway).
const MAX_DEPTH: usize = 64;

/// What a [`Splitter`] hands each record to, with its place in the list.
pub(crate) type OnRecord<'a> = dyn FnMut(usize, &[u8]) -> Result<(), String> + 'a;

/// Cuts a store's bytes into records and a skeleton, a piece at a time.
#[derive(Debug, Default)]
pub(crate) struct Splitter {
    skeleton: Vec<u8>,
    /// The containers open at the scan position, outermost first: `{` or `[`.
    open: Vec<u8>,
    in_string: bool,
    escaped: bool,
    /// Depth inside the record being cut; 0 between records.
    record_depth: usize,
    /// The part of a record cut by the end of a piece.
    partial: Vec<u8>,
    records: usize,
}

/// Byte classes: what the byte scanner stops at in a record, outside and
/// inside strings.
// Evaluated at compile time: an index out of range fails the build.
#[allow(clippy::indexing_slicing)]
const fn stops(inside_string: bool) -> [bool; 256] {
    let mut table = [false; 256];
    table[b'"' as usize] = true;
    if inside_string {
        table[b'\\' as usize] = true;
    } else {
        table[b'{' as usize] = true;
        table[b'}' as usize] = true;
    }
    table
}

/// Bit masks of a block's quotes, backslashes, `{` and `}` (bit i: byte i).
/// Written so that the compiler compares 16 bytes at once; the multiply
/// gathers eight 0/1 bytes into eight bits.
fn classify(block: &[u8; 64]) -> [u64; 4] {
    let mut masks = [0u64; 4];
    for (mask, c) in masks.iter_mut().zip(*b"\"\\{}") {
        let mut equal = [0u8; 64];
        for (e, &b) in equal.iter_mut().zip(block) {
            *e = u8::from(b == c);
        }
        for (n, word) in equal.as_chunks::<8>().0.iter().enumerate() {
            let bits = u64::from_le_bytes(*word).wrapping_mul(0x0102_0408_1020_4080) >> 56;
            *mask |= bits << (8 * n);
        }
    }
    masks
}

/// Bit i: the parity of the set bits at or below i.
fn prefix_xor(mut x: u64) -> u64 {
    for shift in [1, 2, 4, 8, 16, 32] {
        x ^= x << shift;
    }
    x
}
const STOP_OUTSIDE: [bool; 256] = stops(false);
const STOP_INSIDE: [bool; 256] = stops(true);

impl Splitter {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Scans record bytes; returns where the record ends, if it ends here.
    /// Only braces count: in valid JSON brackets balance on their own, and
    /// whatever is cut, serde parses.
    fn scan_record(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            // 64 bytes at a time while they hold no backslash: most of a
            // store is indentation, keys and hex digits.
            while let Some(block) = bytes.get(i..).and_then(|b| b.first_chunk::<64>()) {
                let [quotes, backslashes, opens, closes] = classify(block);
                if backslashes != 0 {
                    break;
                }
                // Set from an opening quote up to its closing one.
                let mut strings = prefix_xor(quotes);
                if self.in_string {
                    strings = !strings;
                }
                let mut braces = (opens | closes) & !strings;
                while braces != 0 {
                    let at = braces.trailing_zeros();
                    if opens >> at & 1 == 1 {
                        self.record_depth += 1;
                    } else {
                        self.record_depth -= 1;
                        if self.record_depth == 0 {
                            self.in_string = false;
                            return Some(i + at as usize + 1);
                        }
                    }
                    braces &= braces - 1;
                }
                self.in_string = strings >> 63 == 1;
                i += 64;
            }
            // Byte by byte through the block that has a backslash.
            let limit = (i + 64).min(bytes.len());
            match self.scan_bytes(bytes, i, limit) {
                Ok(end) => return Some(end),
                Err(next) => i = next,
            }
        }
        None
    }

    /// The byte-by-byte scan of `bytes[from..limit]` (it may step one past
    /// `limit` over an escaped character): `Ok` where the record ends, or
    /// `Err` where to go on.
    fn scan_bytes(&mut self, bytes: &[u8], from: usize, limit: usize) -> Result<usize, usize> {
        let mut i = from;
        while i < limit {
            let table = if self.in_string {
                &STOP_INSIDE
            } else {
                &STOP_OUTSIDE
            };
            while i < limit
                && !bytes
                    .get(i)
                    .is_some_and(|&b| table.get(usize::from(b)).copied().unwrap_or(true))
            {
                i += 1;
            }
            let Some(&c) = bytes.get(i).filter(|_| i < limit) else {
                break;
            };
            i += 1;
            if self.in_string {
                if c == b'\\' {
                    // Skip the escaped character (it may be a quote).
                    if i < bytes.len() {
                        i += 1;
                    } else {
                        self.escaped = true;
                    }
                } else {
                    self.in_string = false;
                }
                continue;
            }
            match c {
                b'"' => self.in_string = true,
                b'{' => self.record_depth += 1,
                _ => {
                    self.record_depth -= 1;
                    if self.record_depth == 0 {
                        return Ok(i);
                    }
                }
            }
        }
        Err(i)
    }

    /// Scans a record in `bytes[from..]` (`bytes` begins where the record,
    /// or the part of it this piece holds, begins). When it ends here, hands
    /// it on whole and returns the bytes it took; otherwise keeps them for
    /// the next piece.
    // Inlined: it runs once per record.
    #[inline]
    fn cut_record(
        &mut self,
        bytes: &[u8],
        from: usize,
        on_record: &mut OnRecord<'_>,
    ) -> Result<Option<usize>, String> {
        let scanned = self.scan_record(bytes.get(from..).unwrap_or_default());
        let Some(end) = scanned.map(|e| e + from) else {
            self.partial.extend_from_slice(bytes);
            return Ok(None);
        };
        let record = bytes.get(..end).unwrap_or_default();
        if self.partial.is_empty() {
            on_record(self.records, record)?;
        } else {
            self.partial.extend_from_slice(record);
            let whole = std::mem::take(&mut self.partial);
            on_record(self.records, &whole)?;
        }
        self.records += 1;
        Ok(Some(end))
    }

    /// Whether a `{` at the scan position opens a record: an object inside an
    /// array that is a value of the top-level object.
    fn at_record_start(&self) -> bool {
        self.open.as_slice() == b"{["
    }

    /// Feeds the next piece of the file; `on_record` gets each record whole
    /// (with the number of records before it), in order.
    pub(crate) fn feed(
        &mut self,
        mut bytes: &[u8],
        on_record: &mut OnRecord<'_>,
    ) -> Result<(), String> {
        if self.escaped && self.record_depth > 0 {
            // What a backslash that ended the last piece escapes (a record's
            // own scan skips it; the skeleton's scan keeps its own flag).
            self.escaped = false;
            let Some((first, rest)) = bytes.split_first() else {
                return Ok(());
            };
            self.partial.push(*first);
            bytes = rest;
        }
        while !bytes.is_empty() {
            if self.record_depth > 0 {
                let Some(end) = self.cut_record(bytes, 0, on_record)? else {
                    return Ok(());
                };
                bytes = bytes.get(end..).unwrap_or_default();
                continue;
            }
            let Some((&c, rest)) = bytes.split_first() else {
                break;
            };
            if self.in_string {
                self.skeleton.push(c);
                if self.escaped {
                    self.escaped = false;
                } else if c == b'\\' {
                    self.escaped = true;
                } else if c == b'"' {
                    self.in_string = false;
                }
                bytes = rest;
                continue;
            }
            match c {
                b' ' | b'\t' | b'\n' | b'\r' => {}
                b'{' if self.at_record_start() => {
                    self.skeleton.extend_from_slice(b"{}");
                    self.record_depth = 1;
                    self.partial.clear();
                    // The scan starts after the `{` just counted.
                    let Some(end) = self.cut_record(bytes, 1, on_record)? else {
                        return Ok(());
                    };
                    bytes = bytes.get(end..).unwrap_or_default();
                    continue;
                }
                b'{' | b'[' => {
                    if self.open.len() >= MAX_DEPTH {
                        return Err("the store is nested too deeply".into());
                    }
                    self.open.push(c);
                    self.skeleton.push(c);
                }
                b'}' | b']' => {
                    self.open.pop();
                    self.skeleton.push(c);
                }
                b'"' => {
                    self.in_string = true;
                    self.skeleton.push(c);
                }
                _ => self.skeleton.push(c),
            }
            bytes = rest;
        }
        Ok(())
    }

    /// Checks the skeleton once every piece is fed: the file is a store of
    /// this version, and its list held exactly the records cut. Returns their
    /// number.
    pub(crate) fn finish(self) -> Result<usize, String> {
        if self.record_depth > 0 || self.in_string {
            return Err("the store ends in the middle of a record".into());
        }
        let skeleton: Skeleton = serde_json::from_slice(&self.skeleton).map_err(|e| {
            format!("{e} (position in the store with every record emptied to {{}})")
        })?;
        check_version(skeleton.version)?;
        if skeleton.credentials.len() != self.records {
            return Err("the store holds objects outside its credentials list".into());
        }
        Ok(self.records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessiongate_core::{Kind, Level, Sites};

    fn records(n: usize) -> Vec<CredentialRecord> {
        (0..n)
            .map(|i| {
                CredentialRecord::for_secret(
                    &format!("secret {i}"),
                    Kind::Token,
                    // Quotes, backslashes and braces inside strings: the
                    // splitter must not take them for structure.
                    format!("t{i} \"{{[\\"),
                    (i % 2 == 0).then(|| format!("}}]\\\" {i}")),
                    "acme".into(),
                    if i % 3 == 0 {
                        Sites::All
                    } else {
                        Sites::List(vec!["a".into(), format!("s{i}")])
                    },
                    Level::Standard,
                    i as u64,
                )
            })
            .collect()
    }

    /// A store as the CLI writes it (pretty) and on one line.
    fn both_forms(r: &[CredentialRecord]) -> [Vec<u8>; 2] {
        [
            serialize(r),
            serde_json::to_vec(&StoreOut {
                version: 1,
                credentials: r,
            })
            .unwrap(),
        ]
    }

    fn split_parse(bytes: &[u8], piece: usize) -> Result<CredentialSet, String> {
        parse_pieces(bytes.chunks(piece.max(1)))
    }

    #[test]
    fn block_masks_match_bytes() {
        let text = br#"  {"a\\": "}{\"x", "b": [1, {"c": "d"}]}   0123456789abcdef0123456789"#;
        let block: &[u8; 64] = text.first_chunk().unwrap();
        let [quotes, backslashes, opens, closes] = classify(block);
        for (i, &b) in block.iter().enumerate() {
            assert_eq!(quotes >> i & 1 == 1, b == b'"', "{i}");
            assert_eq!(backslashes >> i & 1 == 1, b == b'\\', "{i}");
            assert_eq!(opens >> i & 1 == 1, b == b'{', "{i}");
            assert_eq!(closes >> i & 1 == 1, b == b'}', "{i}");
        }
        assert_eq!(prefix_xor(0b1001_0010), 0b1110 | (u64::MAX << 7));
        assert_eq!(prefix_xor(1 << 63), 1 << 63);
    }

    proptest::proptest! {
        /// Whatever the strings hold and wherever the pieces break, reading
        /// in pieces is reading whole.
        #[test]
        fn pieces_are_the_whole(
            names in proptest::collection::vec("[ -~]{1,90}", 1..12),
            pretty in proptest::bool::ANY,
            piece in 1usize..400,
        ) {
            let mut r = records(names.len());
            for (record, name) in r.iter_mut().zip(&names) {
                record.name = name.clone();
            }
            let bytes = if pretty {
                serialize(&r)
            } else {
                serde_json::to_vec(&StoreOut { version: 1, credentials: &r }).unwrap()
            };
            let whole = parse_set(&bytes);
            proptest::prop_assert_eq!(split_parse(&bytes, piece), whole);
        }
    }

    #[test]
    fn round_trip() {
        let r = records(7);
        let bytes = serialize(&r);
        assert_eq!(parse(&bytes).unwrap(), r);
        assert!(bytes.ends_with(b"}\n"));
    }

    #[test]
    fn split_in_any_pieces_is_the_same_as_whole() {
        let r = records(5);
        for bytes in both_forms(&r) {
            let whole = parse_set(&bytes).unwrap();
            for piece in 1..=bytes.len().min(300) {
                assert_eq!(split_parse(&bytes, piece).as_ref(), Ok(&whole), "{piece}");
            }
        }
    }

    /// A repeated name or secret is the list's error: whole or in pieces,
    /// the same words, naming the record and no position in the file.
    #[test]
    fn a_repeat_reads_the_same_whole_and_in_pieces() {
        let mut names = records(3);
        names[2].name = names[0].name.clone();
        let mut secrets = records(3);
        secrets[1].hash = secrets[0].hash.clone();
        for (r, expected) in [
            (
                names,
                "credentials[2].name: \"t0 \\\"{[\\\\\" appears more than once",
            ),
            (
                secrets,
                "credentials[1].hash: the same secret appears more than once",
            ),
        ] {
            for bytes in both_forms(&r) {
                assert_eq!(parse_set(&bytes).err().as_deref(), Some(expected));
                for piece in [1, 7, bytes.len()] {
                    assert_eq!(split_parse(&bytes, piece).err().as_deref(), Some(expected));
                }
            }
        }
    }

    #[test]
    fn rejects_what_parse_rejects() {
        let good = String::from_utf8(serialize(&records(2))).unwrap();
        let cases = [
            good.replace("\"version\": 1", "\"version\": 2"),
            good.replace("\"version\": 1,", "\"version\": 1, \"extra\": [{}],"),
            good.replace("\"credentials\": [", "\"credentials\": [{},"),
            good.replace("\"credentials\": [", "\"credentials\": [1,"),
            good.replace("\"credentials\": [", "\"credentials\": [["),
            good.replace("\"kind\"", "\"unknown\": 1, \"kind\""),
            good.trim_end().trim_end_matches('}').to_owned(),
            good[..good.len() / 2].to_owned(),
            format!("{good} {{}}"),
            format!("[{good}]"),
            "{".repeat(100),
            String::new(),
        ];
        for (i, bad) in cases.iter().enumerate() {
            assert!(parse_set(bad.as_bytes()).is_err(), "case {i}: {bad}");
            for piece in [1, 7, 4096] {
                assert!(
                    split_parse(bad.as_bytes(), piece).is_err(),
                    "case {i}, pieces of {piece}: {bad}"
                );
            }
        }
    }
}
