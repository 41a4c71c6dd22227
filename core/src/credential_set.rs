//! The credential set a gate looks credentials up in, built once per
//! configuration. Compact enough for a million records: every string of every
//! record in one buffer, a fixed-size entry per record and a 4-byte index slot
//! per record (a `Vec<CredentialRecord>` and a `HashMap` took ~650 bytes a
//! record). One probe per lookup, whatever the size.

use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::credential::{CredentialRecord, Kind, Level, Presented, SecretHash, Sites, hash_hex};

/// A record as the set keeps it: its digest, and where its strings are.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    hash: SecretHash,
    created: u64,
    /// Where the name starts in the set's text; customer, sites (joined with
    /// commas, which no site id holds), hint, description and owner follow it.
    start: u32,
    /// Lengths of name, customer, sites, hint, description and owner (no
    /// owner: 0, as a user's name is never empty).
    lens: [u32; 6],
    kind: Kind,
    level: Level,
    all_sites: bool,
    has_description: bool,
    checksum: bool,
    /// Unix milliseconds from which it is refused; `u64::MAX`: never.
    expires: u64,
}

/// One credential, borrowed from its set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credential<'a> {
    /// Unique within the set.
    pub name: &'a str,
    /// What its creator wrote about it.
    pub description: Option<&'a str>,
    /// Token or key.
    pub kind: Kind,
    /// SHA-256 of the whole secret.
    pub hash: &'a SecretHash,
    /// What lists show of the secret: `fus_****abc`, or a key's suffix.
    pub hint: &'a str,
    /// The customer id whose sessions it reads.
    pub customer: &'a str,
    /// The sites of that customer it reads.
    pub sites: SiteScope<'a>,
    /// What it may do.
    pub level: Level,
    /// Creation time, Unix milliseconds.
    pub created: u64,
    /// The name of the user who created it (none: the operator's CLI).
    pub owner: Option<&'a str>,
    /// Whether its secret ends in a checksum.
    pub checksum: bool,
    /// When it stops being accepted, Unix milliseconds (none: never).
    pub expires: Option<u64>,
}

/// The sites a credential may read, borrowed from its set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteScope<'a> {
    /// Every site of the credential's customer.
    All,
    /// Site ids joined with commas.
    List(&'a str),
}

impl<'a> SiteScope<'a> {
    /// Whether `site` is in scope.
    pub fn contains(self, site: &str) -> bool {
        match self {
            SiteScope::All => true,
            SiteScope::List(list) => list.split(',').any(|s| s == site),
        }
    }

    /// An owned copy, as a record holds it.
    pub fn to_sites(self) -> Sites {
        match self {
            SiteScope::All => Sites::All,
            SiteScope::List(list) => Sites::List(list.split(',').map(str::to_owned).collect()),
        }
    }
}

impl Credential<'_> {
    /// The digest as lowercase hex.
    pub fn hash_hex(&self) -> String {
        hash_hex(self.hash)
    }

    /// An owned record, as the store writes it.
    pub fn to_record(&self) -> CredentialRecord {
        CredentialRecord {
            name: self.name.to_owned(),
            description: self.description.map(str::to_owned),
            kind: self.kind,
            hash: self.hash_hex(),
            hint: self.hint.to_owned(),
            customer: self.customer.to_owned(),
            sites: self.sites.to_sites(),
            level: self.level,
            created: self.created,
            owner: self.owner.map(str::to_owned),
            checksum: self.checksum,
            expires: self.expires,
        }
    }

    /// Whether it has expired at `now_ms` (refused as a revoked one).
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires.is_some_and(|at| now_ms >= at)
    }
}

/// The credential set: records in the order given, indexed by digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSet {
    entries: Vec<Entry>,
    text: String,
    /// Open addressing on the digest's first eight bytes (already uniformly
    /// spread: no hashing), linear probing, at most half full. A slot holds
    /// the entry's position plus one (0: empty) and, in its high half, the
    /// digest's next four bytes: a probe past another entry rarely has to
    /// read that entry.
    slots: Box<[u64]>,
    /// Whether any token was minted without a checksum: then a token whose
    /// checksum fails may still be one of them, and is looked up.
    unchecksummed_tokens: bool,
}

impl Default for CredentialSet {
    fn default() -> Self {
        CredentialSetBuilder::default().index_only()
    }
}

fn slot_of(hash: &SecretHash, mask: usize) -> usize {
    let [a, b, c, d, e, f, g, h, ..] = *hash;
    // Truncation is the point: the low bits pick the slot.
    u64::from_le_bytes([a, b, c, d, e, f, g, h]) as usize & mask
}

/// The digest's bytes 8 to 11, in a slot's high half.
fn fingerprint(hash: &SecretHash) -> u64 {
    let [_, _, _, _, _, _, _, _, a, b, c, d, ..] = *hash;
    u64::from(u32::from_le_bytes([a, b, c, d])) << 32
}

/// A slot's low half: the entry's position plus one.
const POSITION: u64 = 0xFFFF_FFFF;

impl CredentialSet {
    /// Checks and indexes the records; rejects invalid ones, and duplicate
    /// names or secrets. Errors name the record: `credentials[i].field: …`.
    pub fn new(records: Vec<CredentialRecord>) -> Result<Self, String> {
        let mut builder = CredentialSetBuilder::default();
        for record in &records {
            builder.push(record)?;
        }
        builder.finish()
    }

    /// How many credentials the set holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn view<'a>(&'a self, entry: &'a Entry) -> Credential<'a> {
        let mut at = entry.start as usize;
        // The builder appended these lengths of text for this entry.
        #[allow(clippy::indexing_slicing)]
        let mut next = |len: u32| {
            let s = &self.text[at..at + len as usize];
            at += len as usize;
            s
        };
        let [name, customer, sites, hint, description, owner] = entry.lens.map(&mut next);
        Credential {
            name,
            description: entry.has_description.then_some(description),
            kind: entry.kind,
            hash: &entry.hash,
            hint,
            customer,
            sites: if entry.all_sites {
                SiteScope::All
            } else {
                SiteScope::List(sites)
            },
            level: entry.level,
            created: entry.created,
            owner: (!owner.is_empty()).then_some(owner),
            checksum: entry.checksum,
            expires: (entry.expires != u64::MAX).then_some(entry.expires),
        }
    }

    /// Whether a token whose checksum fails may still be one of this set's
    /// (a token minted before checksums): if not, it is refused unhashed.
    pub fn holds_unchecksummed_tokens(&self) -> bool {
        self.unchecksummed_tokens
    }

    /// The credentials in the order they were given.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Credential<'_>> {
        self.entries.iter().map(|e| self.view(e))
    }

    /// Every credential as an owned record, in name order.
    pub fn records(&self) -> Vec<CredentialRecord> {
        self.iter().map(|c| c.to_record()).collect()
    }

    /// A set from a JSON list of records (what a host answers under
    /// [`crate::CREDENTIAL_KEY_PREFIX`]: a list of one), read by the same
    /// code as a configuration's list.
    pub fn from_json(bytes: &[u8]) -> Result<CredentialSet, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// The credential with this digest, of either kind.
    pub fn by_hash(&self, hash: &SecretHash) -> Option<Credential<'_>> {
        self.get(hash, Kind::Token)
            .or_else(|| self.get(hash, Kind::Key))
    }

    fn get(&self, hash: &SecretHash, kind: Kind) -> Option<Credential<'_>> {
        let mask = self.slots.len() - 1;
        let tag = fingerprint(hash);
        let mut at = slot_of(hash, mask);
        loop {
            let slot = *self.slots.get(at)?;
            let position = (slot & POSITION).checked_sub(1)?;
            if slot & !POSITION == tag {
                let entry = self.entries.get(position as usize)?;
                if entry.hash == *hash {
                    return (entry.kind == kind).then(|| self.view(entry));
                }
            }
            at = (at + 1) & mask;
        }
    }

    /// Looks a presented credential up. A Bearer value must resolve to a token and
    /// a Basic value to a key: a token sent as Basic is not a credential.
    pub fn find(&self, presented: &Presented) -> Option<Credential<'_>> {
        match presented {
            Presented::Bearer(hash) => self.get(hash, Kind::Token),
            Presented::Basic { raw, decoded } => self
                .get(raw, Kind::Key)
                .or_else(|| decoded.as_ref().and_then(|h| self.get(h, Kind::Key))),
        }
    }
}

/// Checks names for duplicates: they come from the operator's own store, not
/// from requests, so a multiply-rotate hash will do, and costs a
/// million-record load less than SipHash.
#[derive(Default)]
struct NameHasher(u64);

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Builds a set one record at a time, so that a store is never held twice:
/// records can be parsed, checked and dropped as they arrive, in batches
/// (on several threads) that [`CredentialSetBuilder::append`] joins in order.
#[derive(Debug, Default)]
pub struct CredentialSetBuilder {
    entries: Vec<Entry>,
    text: String,
    /// The position of this builder's first record in the whole list (for
    /// error messages).
    first: usize,
    unchecksummed_tokens: bool,
}

const TOO_LARGE: &str = "credentials: the set's text exceeds 4 GiB";

impl CredentialSetBuilder {
    /// A builder for the records from position `first` of a list on.
    pub fn starting_at(first: usize) -> Self {
        CredentialSetBuilder {
            first,
            ..Default::default()
        }
    }

    /// How many credentials were added.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none were added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bytes of text its records hold (names, customers, sites, …).
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// Makes room for `records` more records holding `text` more bytes, so
    /// that a large set is not copied as it grows. Room the allocator cannot
    /// give is not an error: the set then grows as it would have.
    pub fn reserve(&mut self, records: usize, text: usize) {
        let _ = self.entries.try_reserve(records);
        let _ = self.text.try_reserve(text);
    }

    /// Checks one record and keeps it.
    pub fn push(&mut self, record: &CredentialRecord) -> Result<(), String> {
        let i = self.first + self.entries.len();
        let hash = record
            .checked_hash()
            .map_err(|e| format!("credentials[{i}].{e}"))?;
        let start = u32::try_from(self.text.len()).map_err(|_| TOO_LARGE)?;
        let len = |text: &mut String, s: &str| {
            text.push_str(s);
            u32::try_from(s.len()).map_err(|_| TOO_LARGE)
        };
        let name = len(&mut self.text, &record.name)?;
        let customer = len(&mut self.text, &record.customer)?;
        let sites_start = self.text.len();
        if let Sites::List(list) = &record.sites {
            for (n, site) in list.iter().enumerate() {
                if n > 0 {
                    self.text.push(',');
                }
                self.text.push_str(site);
            }
        }
        let sites = u32::try_from(self.text.len() - sites_start).map_err(|_| TOO_LARGE)?;
        let hint = len(&mut self.text, &record.hint)?;
        let description = len(&mut self.text, record.description.as_deref().unwrap_or(""))?;
        let owner = len(&mut self.text, record.owner.as_deref().unwrap_or(""))?;
        u32::try_from(self.text.len()).map_err(|_| TOO_LARGE)?;
        self.entries.push(Entry {
            hash,
            created: record.created,
            start,
            lens: [name, customer, sites, hint, description, owner],
            kind: record.kind,
            level: record.level,
            all_sites: record.sites == Sites::All,
            has_description: record.description.is_some(),
            checksum: record.checksum,
            expires: record.expires.unwrap_or(u64::MAX),
        });
        self.unchecksummed_tokens |= record.kind == Kind::Token && !record.checksum;
        Ok(())
    }

    /// Appends the records of the builder that continues this one's list.
    pub fn append(&mut self, other: CredentialSetBuilder) -> Result<(), String> {
        let shift = u32::try_from(self.text.len()).map_err(|_| TOO_LARGE)?;
        self.text.push_str(&other.text);
        u32::try_from(self.text.len()).map_err(|_| TOO_LARGE)?;
        self.unchecksummed_tokens |= other.unchecksummed_tokens;
        self.entries.extend(other.entries.into_iter().map(|mut e| {
            e.start += shift;
            e
        }));
        Ok(())
    }

    fn index_only(self) -> CredentialSet {
        let capacity = (self.entries.len() * 2).next_power_of_two().max(2);
        CredentialSet {
            entries: self.entries,
            text: self.text,
            slots: vec![0; capacity].into_boxed_slice(),
            unchecksummed_tokens: self.unchecksummed_tokens,
        }
    }

    /// Indexes the records; rejects duplicate names and secrets.
    pub fn finish(self) -> Result<CredentialSet, String> {
        self.finish_with(|index, names| {
            index();
            names();
        })
    }

    /// As [`CredentialSetBuilder::finish`], with its two passes (the index,
    /// which also finds a repeated secret, and the check for repeated names)
    /// handed to `join` to run, one after the other or side by side: this
    /// crate starts no threads (a filter's VM has none), its callers may.
    pub fn finish_with(
        mut self,
        join: impl FnOnce(&mut (dyn FnMut() + Send), &mut (dyn FnMut() + Send)),
    ) -> Result<CredentialSet, String> {
        self.entries.shrink_to_fit();
        self.text.shrink_to_fit();
        if u32::try_from(self.entries.len()).is_err() {
            return Err("credentials: more than 4 billion records".into());
        }
        let first = self.first;
        let mut set = self.index_only();
        // A pass `join` did not run leaves its error: no unchecked set.
        let not_run = || Err::<(), String>("credentials: the set was not checked".into());
        let (mut indexed, mut named) = (not_run(), not_run());
        {
            let CredentialSet {
                entries,
                text,
                slots,
                ..
            } = &mut set;
            let (entries, text) = (&*entries, &*text);
            join(&mut || indexed = index(entries, slots, first), &mut || {
                named = check_names(entries, text, first)
            });
        }
        indexed?;
        named?;
        Ok(set)
    }
}

/// Fills `slots` with `entries`; a secret seen twice is an error.
fn index(entries: &[Entry], slots: &mut [u64], first: usize) -> Result<(), String> {
    let mask = slots.len() - 1;
    for (i, entry) in entries.iter().enumerate() {
        let tag = fingerprint(&entry.hash);
        let mut at = slot_of(&entry.hash, mask);
        loop {
            // `at` is masked to the table's size, a power of two.
            #[allow(clippy::indexing_slicing)]
            let slot = slots[at];
            if slot == 0 {
                break;
            }
            let other = entries.get(((slot & POSITION) - 1) as usize);
            if slot & !POSITION == tag && other.map(|e| &e.hash) == Some(&entry.hash) {
                return Err(format!(
                    "credentials[{}].hash: the same secret appears more than once",
                    first + i
                ));
            }
            at = (at + 1) & mask;
        }
        if let Some(slot) = slots.get_mut(at) {
            *slot = tag | (i as u64 + 1);
        }
    }
    Ok(())
}

/// The name of `entry`, the first of its strings in `text`.
fn entry_name<'a>(entry: &Entry, text: &'a str) -> &'a str {
    let start = entry.start as usize;
    text.get(start..start + entry.lens[0] as usize)
        .unwrap_or_default()
}

/// A name seen twice is an error.
fn check_names(entries: &[Entry], text: &str, first: usize) -> Result<(), String> {
    let mut names = HashSet::with_capacity_and_hasher(
        entries.len(),
        BuildHasherDefault::<NameHasher>::default(),
    );
    for (i, entry) in entries.iter().enumerate() {
        let name = entry_name(entry, text);
        if !names.insert(name) {
            return Err(format!(
                "credentials[{}].name: {name:?} appears more than once",
                first + i
            ));
        }
    }
    Ok(())
}

/// Serialized as the list of records it was built from.
impl Serialize for CredentialSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(|c| c.to_record()))
    }
}

/// Deserialized record by record, each checked as it comes: the list is
/// never held whole. The set-wide checks wait for [`CredentialSetBuilder::finish`].
impl<'de> Deserialize<'de> for CredentialSetBuilder {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Records;
        impl<'de> Visitor<'de> for Records {
            type Value = CredentialSetBuilder;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of credential records")
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<CredentialSetBuilder, A::Error> {
                CredentialSetBuilder::from_seq(seq)
            }
        }
        d.deserialize_seq(Records)
    }
}

impl CredentialSetBuilder {
    /// A list of records, each checked as it comes (one code path for every
    /// reader of a list: the configuration's and a host's answer).
    pub(crate) fn from_seq<'de, A: SeqAccess<'de>>(
        mut seq: A,
    ) -> Result<CredentialSetBuilder, A::Error> {
        let mut builder = CredentialSetBuilder::default();
        while let Some(record) = seq.next_element::<CredentialRecord>()? {
            builder.push(&record).map_err(serde::de::Error::custom)?;
        }
        Ok(builder)
    }
}

/// Deserialized as a builder, then finished.
impl<'de> Deserialize<'de> for CredentialSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        CredentialSetBuilder::deserialize(d)?
            .finish()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::{hash_secret, parse_authorization};
    use base64::Engine as _;

    const TOKEN: &str = "fus_abcdefghijABCDEFGHIJ0123456789klmnopqrst";
    const KEY: &str = "k3yB0dyk3yB0dyk3yB0dyk3yB0dyk3yB0dyXY/AB12CD3";

    fn record(kind: Kind, secret: &str, name: &str) -> CredentialRecord {
        crate::fixtures::record(secret, kind, name, Sites::All, Level::Standard)
    }

    #[test]
    fn basic_raw_and_rfc7617() {
        let set = CredentialSet::new(vec![record(Kind::Key, KEY, "k")]).unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        for header in [
            format!("Basic {KEY}"),
            format!("basic  {KEY}"),
            format!("Basic {}", b64(&format!("anyone:{KEY}"))),
            format!("Basic {}", b64(&format!("{KEY}:"))),
        ] {
            let p = parse_authorization(header.as_bytes()).unwrap();
            assert_eq!(set.find(&p).map(|r| r.name), Some("k"), "{header}");
        }
        for header in [
            "Basic bm90IGEga2V5".to_owned(),
            "Basic !!!notbase64".to_owned(),
            format!("Basic {}", b64(":")),
            format!("Basic {}", b64("no-colon-here")),
        ] {
            let p = parse_authorization(header.as_bytes()).unwrap();
            assert_eq!(set.find(&p), None, "{header}");
        }
    }

    #[test]
    fn scheme_must_match_kind() {
        let set = CredentialSet::new(vec![
            record(Kind::Token, TOKEN, "t"),
            record(Kind::Key, KEY, "k"),
        ])
        .unwrap();
        let as_basic = parse_authorization(format!("Basic {TOKEN}").as_bytes()).unwrap();
        assert_eq!(set.find(&as_basic), None);
        let as_bearer = parse_authorization(format!("Bearer {TOKEN}").as_bytes()).unwrap();
        assert_eq!(set.find(&as_bearer).map(|r| r.name), Some("t"));
    }

    #[test]
    fn rejects_duplicates_and_bad_records() {
        let a = record(Kind::Token, TOKEN, "same");
        let mut b = record(Kind::Key, KEY, "same");
        let err = CredentialSet::new(vec![a.clone(), b.clone()]).unwrap_err();
        assert!(err.starts_with("credentials[1].name"), "{err}");
        b.name = "other".into();
        b.hash = a.hash.clone();
        let err = CredentialSet::new(vec![a.clone(), b]).unwrap_err();
        assert!(err.starts_with("credentials[1].hash"), "{err}");
        let mut bad = a.clone();
        bad.level = Level::Admin;
        assert!(CredentialSet::new(vec![bad]).unwrap_err().contains("level"));
        let mut bad = a.clone();
        bad.customer = "a/b".into();
        assert!(
            CredentialSet::new(vec![bad])
                .unwrap_err()
                .contains("customer")
        );
        let mut bad = a;
        bad.sites = Sites::List(vec![]);
        assert!(CredentialSet::new(vec![bad]).unwrap_err().contains("sites"));
    }

    fn many(n: usize) -> Vec<CredentialRecord> {
        (0..n)
            .map(|i| {
                let mut r = record(
                    if i % 3 == 0 { Kind::Key } else { Kind::Token },
                    &format!("secret {i}"),
                    &format!("c{i}"),
                );
                r.description = (i % 2 == 0).then(|| format!("d{i}"));
                r.sites = match i % 4 {
                    0 => Sites::All,
                    n => Sites::List((0..n).map(|s| format!("s{s}")).collect()),
                };
                r
            })
            .collect()
    }

    #[test]
    fn keeps_every_field_and_the_order() {
        let records = many(300);
        let set = CredentialSet::new(records.clone()).unwrap();
        assert_eq!(set.len(), 300);
        assert_eq!(set.records(), records);
        for (i, r) in records.iter().enumerate() {
            let want = if r.kind == Kind::Key {
                Presented::Basic {
                    raw: hash_secret(format!("secret {i}").as_bytes()),
                    decoded: None,
                }
            } else {
                Presented::Bearer(hash_secret(format!("secret {i}").as_bytes()))
            };
            assert_eq!(set.find(&want).map(|c| c.to_record()).as_ref(), Some(r));
        }
        let unknown = Presented::Bearer(hash_secret(b"nobody"));
        assert_eq!(set.find(&unknown), None);
        assert_eq!(CredentialSet::default().find(&unknown), None);
    }

    #[test]
    fn builders_append_in_order() {
        let records = many(50);
        let mut whole = CredentialSetBuilder::default();
        for chunk_start in (0..50).step_by(7) {
            let mut part = CredentialSetBuilder::starting_at(chunk_start);
            for r in records.iter().skip(chunk_start).take(7) {
                part.push(r).unwrap();
            }
            whole.append(part).unwrap();
        }
        assert_eq!(whole.finish().unwrap().records(), records);
        let mut late = CredentialSetBuilder::starting_at(40);
        let mut bad = records[0].clone();
        bad.hash = "xyz".into();
        assert!(
            late.push(&bad)
                .unwrap_err()
                .starts_with("credentials[40].hash")
        );
    }

    #[test]
    fn finish_with_runs_both_checks_in_any_order() {
        let builder = |records: &[CredentialRecord]| {
            let mut b = CredentialSetBuilder::default();
            // Room no allocator has is no error: the set grows as before.
            b.reserve(usize::MAX, usize::MAX);
            b.reserve(records.len(), 0);
            for r in records {
                b.push(r).unwrap();
            }
            b
        };
        let reversed = |index: &mut (dyn FnMut() + Send), names: &mut (dyn FnMut() + Send)| {
            names();
            index();
        };
        let records = many(20);
        let set = builder(&records).finish_with(reversed).unwrap();
        assert_eq!(set, builder(&records).finish().unwrap());
        assert!(set.by_hash(&records[7].checked_hash().unwrap()).is_some());
        let mut named = records.clone();
        named[12].name = named[3].name.clone();
        let e = builder(&named).finish_with(reversed).unwrap_err();
        assert!(e.starts_with("credentials[12].name"), "{e}");
        // Both wrong: the repeated secret is named, as `finish` does.
        named[15].hash = named[2].hash.clone();
        let e = builder(&named).finish_with(reversed).unwrap_err();
        assert!(e.starts_with("credentials[15].hash"), "{e}");
        let skipped = builder(&records).finish_with(|index, _| index());
        assert_eq!(skipped.unwrap_err(), "credentials: the set was not checked");
    }

    #[test]
    fn serializes_as_its_records() {
        let records = many(5);
        let set = CredentialSet::new(records.clone()).unwrap();
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(json, serde_json::to_string(&records).unwrap());
        assert_eq!(serde_json::from_str::<CredentialSet>(&json).unwrap(), set);
        let dup = serde_json::to_string(&[&records[0], &records[0]]).unwrap();
        let err = serde_json::from_str::<CredentialSet>(&dup).unwrap_err();
        assert!(err.to_string().contains("credentials[1]"), "{err}");
    }

    #[test]
    fn site_scope() {
        assert!(SiteScope::All.contains("anything"));
        let list = SiteScope::List("a,bb");
        assert!(list.contains("bb"));
        assert!(!list.contains("b"));
        assert!(!list.contains("a,bb"));
    }
}
