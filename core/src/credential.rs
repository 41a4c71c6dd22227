//! Credentials (contract section 2): the record, its hash and hint, the two
//! `Authorization` schemes, and lookup by hash.

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::route::is_valid_id;

/// `fus_` and 40 characters of `[A-Za-z0-9]`.
pub const TOKEN_PREFIX: &str = "fus_";
pub const TOKEN_BODY_LEN: usize = 40;
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + TOKEN_BODY_LEN;
/// A key's suffix: 7 characters after the last `/`.
pub const KEY_SUFFIX_LEN: usize = 7;
/// A key's random body is at least this many base62 characters.
pub const KEY_MIN_BODY_LEN: usize = 32;

/// A SHA-256 digest of a whole secret.
pub type SecretHash = [u8; 32];

pub fn hash_secret(secret: &[u8]) -> SecretHash {
    Sha256::digest(secret).into()
}

pub fn hash_hex(hash: &SecretHash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn parse_hash_hex(hex: &str) -> Option<SecretHash> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(bytes.as_chunks::<2>().0) {
        let text = std::str::from_utf8(pair).ok()?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *slot = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Whether a string is shaped like an API token.
pub fn is_token(s: &str) -> bool {
    s.len() == TOKEN_LEN
        && s.starts_with(TOKEN_PREFIX)
        && s.bytes()
            .skip(TOKEN_PREFIX.len())
            .all(|b| b.is_ascii_alphanumeric())
}

/// Whether a string is shaped like an API key: base62 body, `/`, 7-character
/// uppercase alphanumeric suffix.
pub fn is_key(s: &str) -> bool {
    let Some((body, suffix)) = s.rsplit_once('/') else {
        return false;
    };
    body.len() >= KEY_MIN_BODY_LEN
        && body.bytes().all(|b| b.is_ascii_alphanumeric())
        && suffix.len() == KEY_SUFFIX_LEN
        && suffix
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// The display hint: `fus_****abc` for a token, the 7-character suffix for a key.
pub fn hint(kind: Kind, secret: &str) -> String {
    match kind {
        Kind::Token => {
            let tail: String = secret
                .chars()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!("{TOKEN_PREFIX}****{tail}")
        }
        Kind::Key => secret
            .rsplit_once('/')
            .map(|(_, suffix)| suffix.to_owned())
            .unwrap_or_default(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Token,
    Key,
}

/// Permission levels, in order: standard < architect < admin.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    #[default]
    Standard,
    Architect,
    Admin,
}

impl Level {
    /// The role `GET /me` reports.
    pub const fn role(self) -> &'static str {
        match self {
            Level::Standard => "USER",
            Level::Architect => "ARCHITECT",
            Level::Admin => "ADMIN",
        }
    }

    pub fn satisfies(self, required: Level) -> bool {
        self >= required
    }

    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "standard" => Some(Level::Standard),
            "architect" => Some(Level::Architect),
            "admin" => Some(Level::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Standard => "standard",
            Level::Architect => "architect",
            Level::Admin => "admin",
        })
    }
}

/// The sites a credential may read: every site of its customer, or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sites {
    All,
    List(Vec<String>),
}

impl Sites {
    pub fn contains(&self, site: &str) -> bool {
        match self {
            Sites::All => true,
            Sites::List(list) => list.iter().any(|s| s == site),
        }
    }
}

impl fmt::Display for Sites {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sites::All => f.write_str("all"),
            Sites::List(list) => f.write_str(&list.join(",")),
        }
    }
}

impl Serialize for Sites {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Sites::All => s.serialize_str("all"),
            Sites::List(list) => list.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Sites {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Word(String),
            List(Vec<String>),
        }
        match Repr::deserialize(d)? {
            Repr::Word(w) if w == "all" => Ok(Sites::All),
            Repr::Word(w) => Err(serde::de::Error::custom(format!(
                "sites must be \"all\" or a list of site ids, not {w:?}"
            ))),
            Repr::List(list) => Ok(Sites::List(list)),
        }
    }
}

/// One credential as stored: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRecord {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub kind: Kind,
    /// Lowercase hex SHA-256 of the whole secret.
    pub hash: String,
    pub hint: String,
    pub customer: String,
    pub sites: Sites,
    #[serde(default)]
    pub level: Level,
    /// Creation time, Unix milliseconds.
    pub created: u64,
}

impl CredentialRecord {
    /// Builds the record of a freshly minted secret. The secret itself is not kept.
    #[allow(clippy::too_many_arguments)]
    pub fn for_secret(
        secret: &str,
        kind: Kind,
        name: String,
        description: Option<String>,
        customer: String,
        sites: Sites,
        level: Level,
        created: u64,
    ) -> Self {
        CredentialRecord {
            name,
            description,
            kind,
            hash: hash_hex(&hash_secret(secret.as_bytes())),
            hint: hint(kind, secret),
            customer,
            sites,
            level,
            created,
        }
    }

    /// Checks every field; the error names the field that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > 256 || self.name.chars().any(char::is_control)
        {
            return Err("name: must be 1 to 256 characters, without control characters".into());
        }
        if parse_hash_hex(&self.hash).is_none() {
            return Err("hash: must be 64 hexadecimal digits (SHA-256 of the secret)".into());
        }
        if !is_valid_id(&self.customer) {
            return Err(format!(
                "customer: {:?} is not a valid id ([A-Za-z0-9._-], 1 to 128)",
                self.customer
            ));
        }
        if let Sites::List(list) = &self.sites {
            if list.is_empty() {
                return Err(
                    "sites: an empty list grants nothing; use \"all\" or name sites".into(),
                );
            }
            if let Some(bad) = list.iter().find(|s| !is_valid_id(s)) {
                return Err(format!("sites: {bad:?} is not a valid site id"));
            }
        }
        if self.kind == Kind::Token && self.level != Level::Standard {
            return Err("level: tokens are always standard".into());
        }
        Ok(())
    }
}

/// What an `Authorization` header presents, before lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// `Bearer fus_…`: a token.
    Bearer(SecretHash),
    /// `Basic …`: a key, raw or as RFC 7617 `user:password`. Up to two
    /// candidates: the raw value, and the secret inside its base64 form.
    Basic {
        raw: SecretHash,
        decoded: Option<SecretHash>,
    },
}

/// Why a header presents no usable credential: always `401 invalid_credentials`,
/// with one body whichever it was, so the reason is for logs and metrics only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    NoScheme,
    UnknownScheme,
    NotATokenShape,
    Empty,
}

fn trim_ows(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t'))
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !matches!(c, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    b.get(start..end).unwrap_or_default()
}

/// Parses one `Authorization` value: a case-insensitive scheme, one or more
/// spaces, the credential.
pub fn parse_authorization(value: &[u8]) -> Result<Presented, Malformed> {
    let value = trim_ows(value);
    let split = value
        .iter()
        .position(|&b| b == b' ')
        .ok_or(Malformed::NoScheme)?;
    let (scheme, rest) = value.split_at(split);
    let credential = trim_ows(rest);
    if credential.is_empty() {
        return Err(Malformed::Empty);
    }
    if scheme.eq_ignore_ascii_case(b"bearer") {
        let token = std::str::from_utf8(credential).map_err(|_| Malformed::NotATokenShape)?;
        if !is_token(token) {
            return Err(Malformed::NotATokenShape);
        }
        Ok(Presented::Bearer(hash_secret(credential)))
    } else if scheme.eq_ignore_ascii_case(b"basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credential)
            .ok()
            .and_then(|plain| {
                let split = plain.iter().position(|&b| b == b':')?;
                let (user, password) = plain.split_at(split);
                let password = password.get(1..).unwrap_or_default();
                let secret = if password.is_empty() { user } else { password };
                (!secret.is_empty()).then(|| hash_secret(secret))
            });
        Ok(Presented::Basic {
            raw: hash_secret(credential),
            decoded,
        })
    } else {
        Err(Malformed::UnknownScheme)
    }
}

/// Splits an `Authorization` value that a Fetch `Headers` object joined.
///
/// Fetch joins repeated fields with `, `; no token, key or base64 text holds a
/// comma, so each comma marks another header. Used by the Worker, whose
/// runtime only offers the joined value.
pub fn split_joined(value: &[u8]) -> Vec<&[u8]> {
    value.split(|&b| b == b',').collect()
}

/// The credential set, indexed by hash. Built once per configuration.
#[derive(Debug, Default)]
pub struct CredentialSet {
    records: Vec<CredentialRecord>,
    by_hash: HashMap<SecretHash, usize, HashIsKey>,
}

/// Keys that are SHA-256 digests are already uniformly spread: their first
/// eight bytes are the hash. (SipHash, here and in the bench's store, was
/// about a tenth of a decision under callgrind.)
#[derive(Debug, Default, Clone, Copy)]
pub struct HashIsKey;

impl std::hash::BuildHasher for HashIsKey {
    type Hasher = FirstEightBytes;
    fn build_hasher(&self) -> FirstEightBytes {
        FirstEightBytes(0)
    }
}

#[derive(Debug, Default)]
pub struct FirstEightBytes(u64);

impl std::hash::Hasher for FirstEightBytes {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // A [u8; 32] hashes as its length, then its bytes: keep the first
        // eight bytes of the digest.
        if bytes.len() >= 8 {
            let mut first = [0u8; 8];
            first.copy_from_slice(bytes.get(..8).unwrap_or(&[0; 8]));
            self.0 = u64::from_le_bytes(first);
        }
    }
}

impl CredentialSet {
    /// Indexes the records; rejects invalid or duplicate names and hashes.
    pub fn new(records: Vec<CredentialRecord>) -> Result<Self, String> {
        let by_hash = Self::index(&records)?;
        Ok(CredentialSet { records, by_hash })
    }

    /// Checks records as [`CredentialSet::new`] does, without keeping them.
    pub fn check(records: &[CredentialRecord]) -> Result<(), String> {
        Self::index(records).map(|_| ())
    }

    fn index(
        records: &[CredentialRecord],
    ) -> Result<HashMap<SecretHash, usize, HashIsKey>, String> {
        let mut by_hash = HashMap::with_capacity_and_hasher(records.len(), HashIsKey);
        let mut names = std::collections::HashSet::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            record
                .validate()
                .map_err(|e| format!("credentials[{i}].{e}"))?;
            if !names.insert(record.name.as_str()) {
                return Err(format!(
                    "credentials[{i}].name: {:?} appears more than once",
                    record.name
                ));
            }
            let hash = parse_hash_hex(&record.hash).unwrap_or_default();
            if by_hash.insert(hash, i).is_some() {
                return Err(format!(
                    "credentials[{i}].hash: the same secret appears more than once"
                ));
            }
        }
        Ok(by_hash)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn records(&self) -> &[CredentialRecord] {
        &self.records
    }

    fn get(&self, hash: &SecretHash, kind: Kind) -> Option<&CredentialRecord> {
        let record = self.records.get(*self.by_hash.get(hash)?)?;
        (record.kind == kind).then_some(record)
    }

    /// Looks a presented credential up. A Bearer value must resolve to a token and
    /// a Basic value to a key: a token sent as Basic is not a credential.
    pub fn find(&self, presented: &Presented) -> Option<&CredentialRecord> {
        match presented {
            Presented::Bearer(hash) => self.get(hash, Kind::Token),
            Presented::Basic { raw, decoded } => self
                .get(raw, Kind::Key)
                .or_else(|| decoded.as_ref().and_then(|h| self.get(h, Kind::Key))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const TOKEN: &str = "fus_abcdefghijABCDEFGHIJ0123456789klmnopqrst";
    pub const KEY: &str = "k3yB0dyk3yB0dyk3yB0dyk3yB0dyk3yB0dyXY/AB12CD3";

    fn record(kind: Kind, secret: &str, name: &str) -> CredentialRecord {
        CredentialRecord::for_secret(
            secret,
            kind,
            name.into(),
            None,
            "acme".into(),
            Sites::All,
            Level::Standard,
            1,
        )
    }

    #[test]
    fn shapes() {
        assert_eq!(TOKEN.len(), 44);
        assert!(is_token(TOKEN));
        assert!(!is_token(&TOKEN[..43]));
        assert!(!is_token(&format!("{TOKEN}x")));
        assert!(!is_token("fus_abcdefghijABCDEFGHIJ0123456789klmnopqr-t"));
        assert!(!is_token("FUS_abcdefghijABCDEFGHIJ0123456789klmnopqrst"));
        assert!(is_key(KEY));
        assert!(!is_key("short/AB12CD3"));
        assert!(!is_key("k3yB0dyk3yB0dyk3yB0dyk3yB0dyk3yB0dyXY/ab12cd3"));
    }

    #[test]
    fn hints_never_hold_the_secret() {
        assert_eq!(hint(Kind::Token, TOKEN), "fus_****rst");
        assert_eq!(hint(Kind::Key, KEY), "AB12CD3");
    }

    #[test]
    fn hash_is_sha256_of_the_whole_secret() {
        // SHA-256("abc"), FIPS 180-2 test vector.
        assert_eq!(
            hash_hex(&hash_secret(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let h = hash_secret(TOKEN.as_bytes());
        assert_eq!(parse_hash_hex(&hash_hex(&h)), Some(h));
        assert_eq!(parse_hash_hex("zz"), None);
        assert_eq!(parse_hash_hex(&"g".repeat(64)), None);
        assert_eq!(parse_hash_hex(&"+1".repeat(32)), None);
    }

    #[test]
    fn levels_form_a_hierarchy() {
        use Level::*;
        assert!(Standard.satisfies(Standard));
        assert!(!Standard.satisfies(Architect));
        assert!(Architect.satisfies(Standard));
        assert!(!Architect.satisfies(Admin));
        assert!(Admin.satisfies(Architect));
        assert_eq!(
            [Standard.role(), Architect.role(), Admin.role()],
            ["USER", "ARCHITECT", "ADMIN"]
        );
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_with_many_spaces() {
        for header in [
            format!("Bearer {TOKEN}"),
            format!("bearer {TOKEN}"),
            format!("BEARER    {TOKEN}"),
            format!("Bearer {TOKEN} "),
        ] {
            assert_eq!(
                parse_authorization(header.as_bytes()),
                Ok(Presented::Bearer(hash_secret(TOKEN.as_bytes()))),
                "{header}"
            );
        }
    }

    #[test]
    fn malformed_headers() {
        assert_eq!(parse_authorization(b""), Err(Malformed::NoScheme));
        assert_eq!(parse_authorization(b"Bearer"), Err(Malformed::NoScheme));
        assert_eq!(parse_authorization(b"Bearer   "), Err(Malformed::NoScheme));
        assert_eq!(
            parse_authorization(b"Token abc"),
            Err(Malformed::UnknownScheme)
        );
        assert_eq!(
            parse_authorization(b"Bearer fus_short"),
            Err(Malformed::NotATokenShape)
        );
        assert_eq!(
            parse_authorization(b"Bearer \xff\xfe"),
            Err(Malformed::NotATokenShape)
        );
        assert_eq!(parse_authorization(b"Bearer\t"), Err(Malformed::NoScheme));
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
            assert_eq!(set.find(&p).map(|r| r.name.as_str()), Some("k"), "{header}");
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
        assert_eq!(set.find(&as_bearer).map(|r| r.name.as_str()), Some("t"));
    }

    #[test]
    fn joined_values_split_at_commas() {
        assert_eq!(split_joined(b"Bearer a"), vec![&b"Bearer a"[..]]);
        assert_eq!(split_joined(b"Bearer a, Bearer a").len(), 2);
    }

    #[test]
    fn sites_scope() {
        assert!(Sites::All.contains("anything"));
        let list = Sites::List(vec!["a".into(), "b".into()]);
        assert!(list.contains("b"));
        assert!(!list.contains("c"));
        assert_eq!(serde_json::to_string(&Sites::All).unwrap(), "\"all\"");
        assert_eq!(
            serde_json::from_str::<Sites>("[\"a\"]").unwrap(),
            Sites::List(vec!["a".into()])
        );
        assert!(serde_json::from_str::<Sites>("\"some\"").is_err());
    }

    #[test]
    fn set_rejects_duplicates_and_bad_records() {
        let a = record(Kind::Token, TOKEN, "same");
        let mut b = record(Kind::Key, KEY, "same");
        assert!(
            CredentialSet::new(vec![a.clone(), b.clone()])
                .unwrap_err()
                .contains("name")
        );
        b.name = "other".into();
        b.hash = a.hash.clone();
        assert!(
            CredentialSet::new(vec![a.clone(), b])
                .unwrap_err()
                .contains("hash")
        );
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
}
