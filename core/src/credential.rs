//! Credentials (contract section 2): the record, its hash and hint, the two
//! `Authorization` schemes, and lookup by hash.

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::route::is_valid_id;

/// `fus_` and 40 characters of `[A-Za-z0-9]`.
pub const TOKEN_PREFIX: &str = "fus_";
/// The number of `[A-Za-z0-9]` characters after [`TOKEN_PREFIX`].
pub const TOKEN_BODY_LEN: usize = 40;
pub(crate) const TOKEN_LEN: usize = TOKEN_PREFIX.len() + TOKEN_BODY_LEN;
/// A key's suffix: 7 characters after the last `/`.
pub const KEY_SUFFIX_LEN: usize = 7;
/// A key's random body is at least this many base62 characters.
pub const KEY_MIN_BODY_LEN: usize = 32;

/// A SHA-256 digest of a whole secret.
pub type SecretHash = [u8; 32];

/// SHA-256 of a whole secret.
pub fn hash_secret(secret: &[u8]) -> SecretHash {
    Sha256::digest(secret).into()
}

/// A digest as lowercase hex, the form records and keys store it in.
pub fn hash_hex(hash: &SecretHash) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    let digit = |n: u8| char::from(DIGITS.get(usize::from(n)).copied().unwrap_or(b'0'));
    for b in hash {
        out.push(digit(b >> 4));
        out.push(digit(b & 15));
    }
    out
}

/// Each byte's value as a hexadecimal digit (either case); 0xFF if none.
// Evaluated at compile time: an index out of range fails the build.
#[allow(clippy::indexing_slicing)]
const HEX_VALUE: [u8; 256] = {
    let mut table = [0xFF; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// 64 hexadecimal digits (either case) as a digest. (A table, no branches:
/// a million-credential store parses a million of these.)
pub fn parse_hash_hex(hex: &str) -> Option<SecretHash> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let value = |b: u8| HEX_VALUE.get(usize::from(b)).copied().unwrap_or(0xFF);
    let mut out = [0u8; 32];
    let mut invalid = 0u8;
    for (slot, [hi, lo]) in out.iter_mut().zip(bytes.as_chunks::<2>().0) {
        let (hi, lo) = (value(*hi), value(*lo));
        invalid |= hi | lo;
        *slot = (hi << 4) | lo;
    }
    (invalid & 0xF0 == 0).then_some(out)
}

/// Whether every byte is `[A-Za-z0-9]`. Every byte is looked at, without an
/// early exit: an optimised native build then checks many bytes at once,
/// where a short-circuiting `all` tests them one by one (a third of a
/// decision's parsing, before this). The filter's size-optimised build
/// stays scalar either way.
fn is_base62(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |ok, &b| {
        let letter = (b | 0x20).wrapping_sub(b'a') < 26;
        let digit = b.wrapping_sub(b'0') < 10;
        ok & (letter | digit)
    })
}

/// Whether a string is shaped like an API token.
pub fn is_token(s: &str) -> bool {
    is_token_bytes(s.as_bytes())
}

/// Whether `token` is shaped like a token and ends in a valid checksum
/// (`token_checksum`'s format): what `sessiongate token verify` and a
/// secret scanner check, offline.
pub fn is_checksummed_token(token: &str) -> bool {
    is_token(token) && checksum_holds(token.as_bytes())
}

/// Whether a token-shaped value ends in the checksum of its random part.
fn checksum_holds(token: &[u8]) -> bool {
    token
        .get(TOKEN_PREFIX.len()..)
        .is_some_and(crate::token_checksum::checksum_holds)
}

/// [`is_token`] on bytes: a token is ASCII, so a header value needs no
/// UTF-8 check first.
fn is_token_bytes(s: &[u8]) -> bool {
    s.len() == TOKEN_LEN
        && s.strip_prefix(TOKEN_PREFIX.as_bytes())
            .is_some_and(is_base62)
}

/// Whether a string is shaped like an API key: base62 body, `/`, 7-character
/// uppercase alphanumeric suffix.
pub fn is_key(s: &str) -> bool {
    let Some((body, suffix)) = s.rsplit_once('/') else {
        return false;
    };
    body.len() >= KEY_MIN_BODY_LEN
        && is_base62(body.as_bytes())
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
/// Which of the two credential shapes a record is.
pub enum Kind {
    /// A `Bearer fus_…` token.
    Token,
    /// A `Basic` API key, with a permission level.
    Key,
}

/// Permission levels, in order: standard < architect < admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    #[default]
    /// Lists sessions (what the API needs; a token's level).
    Standard,
    /// Above standard (`GET /me` says `ARCHITECT`).
    Architect,
    /// The highest level (`GET /me` says `ADMIN`).
    Admin,
}

/// Reads one of `names` (a unit variant's name), as its position: one
/// small visitor for every such enum of a record, where serde's derive
/// writes a larger one for each (the filter ships under a size budget).
struct OneOf(&'static [&'static str]);

impl serde::de::Visitor<'_> for OneOf {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("one of")?;
        for name in self.0 {
            write!(f, " `{name}`")?;
        }
        Ok(())
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<usize, E> {
        self.0
            .iter()
            .position(|name| *name == v)
            .ok_or_else(|| E::unknown_variant(v, self.0))
    }
}

const KIND_NAMES: &[&str] = &["token", "key"];
const LEVEL_NAMES: &[&str] = &["standard", "architect", "admin"];

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Kind, D::Error> {
        Ok(match d.deserialize_str(OneOf(KIND_NAMES))? {
            0 => Kind::Token,
            _ => Kind::Key,
        })
    }
}

impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Level, D::Error> {
        Ok(match d.deserialize_str(OneOf(LEVEL_NAMES))? {
            0 => Level::Standard,
            1 => Level::Architect,
            _ => Level::Admin,
        })
    }
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

    /// Whether a credential of this level may do what needs `required`.
    pub fn satisfies(self, required: Level) -> bool {
        self >= required
    }

    /// Parses the lowercase name (`standard`, `architect`, `admin`).
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
    /// Every site of the credential's customer.
    All,
    /// Only these site ids.
    List(Vec<String>),
}

impl Sites {
    /// Whether `site` is in scope.
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
    /// Unique within the store; what lists and the access log show.
    pub name: String,
    /// What its creator wrote about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Token or key.
    pub kind: Kind,
    /// Lowercase hex SHA-256 of the whole secret.
    pub hash: String,
    /// What lists show of the secret: `fus_****abc`, or a key's suffix.
    pub hint: String,
    /// The customer id whose sessions it reads.
    pub customer: String,
    /// The sites of that customer it reads.
    pub sites: Sites,
    #[serde(default)]
    /// What it may do (keys; tokens are standard).
    pub level: Level,
    /// Creation time, Unix milliseconds.
    pub created: u64,
    /// The name of the user who created it (contract section 7); none for
    /// what the operator's CLI created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Whether the secret ends in a checksum (a token minted since
    /// sessiongate 0.1's checksummed format, [`crate::is_checksummed_token`]).
    /// Absent in older stores: their tokens carry none, and a gate holding
    /// one looks up a token whose checksum fails instead of refusing it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checksum: bool,
    /// When it stops being accepted, Unix milliseconds (opt-in: none, the
    /// default, never expires). From this instant on a gate answers it as a
    /// revoked one. A gate older than this field refuses the whole store
    /// (unknown field) rather than admit what should have expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
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
            owner: None,
            checksum: kind == Kind::Token && is_checksummed_token(secret),
            expires: None,
        }
    }

    /// Checks every field; the error names the field that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        self.checked_hash().map(|_| ())
    }

    /// Checks every field, as [`CredentialRecord::validate`]; returns the
    /// digest the record holds.
    pub fn checked_hash(&self) -> Result<SecretHash, String> {
        if self.name.is_empty() || self.name.len() > 256 || self.name.chars().any(char::is_control)
        {
            return Err("name: must be 1 to 256 characters, without control characters".into());
        }
        let Some(hash) = parse_hash_hex(&self.hash) else {
            return Err("hash: must be 64 hexadecimal digits (SHA-256 of the secret)".into());
        };
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
        Ok(hash)
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
        /// The digest of the value as sent.
        raw: SecretHash,
        /// The digest of the secret inside `user:password`, when the value is its base64.
        decoded: Option<SecretHash>,
    },
}

/// Why a header presents no usable credential: always `401 invalid_credentials`,
/// with one body whichever it was, so the reason is for logs and metrics only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// No space-separated scheme.
    NoScheme,
    /// A scheme other than `Bearer` or `Basic`.
    UnknownScheme,
    /// A bearer value that is not `fus_` and 40 base62 characters.
    NotATokenShape,
    /// A scheme with nothing after it.
    Empty,
    /// A token whose last six characters are not the checksum of the rest,
    /// where every token the gate holds carries one: refused unhashed.
    BadChecksum,
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
    // start <= end <= len: both are positions in `b`, end found after start.
    #[allow(clippy::indexing_slicing)]
    &b[start..end]
}

/// Parses one `Authorization` value: a case-insensitive scheme, one or more
/// spaces, the credential.
/// The digests a request's `Authorization` could name, for a host that
/// looks credentials up by digest before it decides: none when there is not
/// exactly one header or it presents nothing well-formed (the decision then
/// refuses it with no lookup), one for `Bearer`, up to two for `Basic` (the
/// raw key, and the secret inside its RFC 7617 form).
pub fn presented_hashes(authorization: &[&[u8]]) -> Vec<SecretHash> {
    presented_hashes_checked(authorization, false)
}

/// As [`presented_hashes`]; with `checksums`, none for a token whose
/// checksum fails.
pub(crate) fn presented_hashes_checked(
    authorization: &[&[u8]],
    checksums: bool,
) -> Vec<SecretHash> {
    let [value] = authorization else {
        return Vec::new();
    };
    match parse_authorization_checked(value, checksums) {
        Ok(Presented::Bearer(hash)) => vec![hash],
        Ok(Presented::Basic { raw, decoded }) => std::iter::once(raw).chain(decoded).collect(),
        Err(_) => Vec::new(),
    }
}

/// Reads an `Authorization` value into the digests it presents, without keeping the secret.
pub fn parse_authorization(value: &[u8]) -> Result<Presented, Malformed> {
    parse_authorization_checked(value, false)
}

/// As [`parse_authorization`]; with `checksums`, a token whose checksum
/// fails is [`Malformed::BadChecksum`], before it is hashed.
pub(crate) fn parse_authorization_checked(
    value: &[u8],
    checksums: bool,
) -> Result<Presented, Malformed> {
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
        if !is_token_bytes(credential) {
            return Err(Malformed::NotATokenShape);
        }
        if checksums && !checksum_holds(credential) {
            return Err(Malformed::BadChecksum);
        }
        Ok(Presented::Bearer(hash_secret(credential)))
    } else if scheme.eq_ignore_ascii_case(b"basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credential)
            .ok()
            .and_then(|plain| {
                let split = plain.iter().position(|&b| b == b':')?;
                let (user, password) = plain.split_at(split);
                // Split at the `:`, which starts `password`.
                #[allow(clippy::indexing_slicing)]
                let password = &password[1..];
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

#[cfg(test)]
mod tests {
    #[test]
    fn kinds_and_levels_read_by_name_and_say_what_else_they_take() {
        use super::{Kind, Level};
        let read = |json: &str| serde_json::from_str::<Level>(json).map_err(|e| e.to_string());
        assert_eq!(read(r#""standard""#), Ok(Level::Standard));
        assert_eq!(read(r#""architect""#), Ok(Level::Architect));
        assert_eq!(read(r#""admin""#), Ok(Level::Admin));
        let e = read(r#""root""#).unwrap_err();
        assert!(
            e.contains("unknown variant `root`, expected one of `standard`, `architect`, `admin`"),
            "{e}"
        );
        let e = read("3").unwrap_err();
        assert!(
            e.contains("expected one of `standard` `architect` `admin`"),
            "{e}"
        );
        assert_eq!(
            serde_json::from_str::<Kind>(r#""token""#).unwrap(),
            Kind::Token
        );
        assert_eq!(
            serde_json::from_str::<Kind>(r#""k\u0065y""#).unwrap(),
            Kind::Key
        );
        assert!(serde_json::from_str::<Kind>(r#""Key""#).is_err());
    }

    #[test]
    fn a_minted_token_verifies_and_any_one_change_does_not() {
        let random = b"abcdefghijABCDEFGHIJ0123456789klmn";
        let checksum = crate::token_checksum::token_checksum(random);
        let token = format!(
            "fus_{}{}",
            std::str::from_utf8(random).unwrap(),
            std::str::from_utf8(&checksum).unwrap()
        );
        assert_eq!(token.len(), 44);
        assert!(is_checksummed_token(&token));
        for at in 4..token.len() {
            for replacement in *b"0Zz" {
                let mut changed = token.clone().into_bytes();
                if changed[at] == replacement {
                    continue;
                }
                changed[at] = replacement;
                let changed = String::from_utf8(changed).unwrap();
                assert!(!is_checksummed_token(&changed), "{changed}");
            }
        }
        assert!(!is_checksummed_token(&token[..43]));
        // At the gate: refused before it is hashed, where checksums are required.
        let mut changed = token.clone().into_bytes();
        changed[10] = if changed[10] == b'x' { b'y' } else { b'x' };
        let header = [b"Bearer ".as_slice(), &changed].concat();
        assert_eq!(
            parse_authorization_checked(&header, true),
            Err(Malformed::BadChecksum)
        );
        assert!(parse_authorization_checked(&header, false).is_ok());
        let good = format!("Bearer {token}");
        assert!(parse_authorization_checked(good.as_bytes(), true).is_ok());
        assert!(!is_checksummed_token(&token.replace("fus_", "fux_")));
    }

    use super::*;

    pub(super) const TOKEN: &str = "fus_abcdefghijABCDEFGHIJ0123456789klmnopqrst";
    pub(super) const KEY: &str = "k3yB0dyk3yB0dyk3yB0dyk3yB0dyk3yB0dyXY/AB12CD3";

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
    fn base62_is_ascii_alphanumeric_for_every_byte() {
        for b in 0..=u8::MAX {
            assert_eq!(is_base62(&[b]), b.is_ascii_alphanumeric(), "{b:#04x}");
            assert_eq!(is_base62(&[b'a', b, b'0']), b.is_ascii_alphanumeric());
        }
        assert!(is_base62(b""));
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
}
