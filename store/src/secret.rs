//! Fresh secrets from the operating system's CSPRNG.

use anyhow::{Result, anyhow};
use sessiongate_core::{
    KEY_MIN_BODY_LEN, KEY_SUFFIX_LEN, TOKEN_PREFIX, TOKEN_RANDOM_LEN, token_checksum,
};

/// A login secret's prefix: told apart from a gate credential at a glance.
pub const LOGIN_PREFIX: &str = "sgu_";

const BASE62: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const UPPER_ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// `len` characters drawn uniformly from `alphabet` (rejection sampling, so
/// no character is likelier than another).
fn random_string(alphabet: &[u8], len: usize) -> Result<String> {
    let n = alphabet.len();
    let limit = 256 - 256 % n; // bytes at or above this would bias the draw
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf).map_err(|e| anyhow!("the system CSPRNG failed: {e}"))?;
        for &b in &buf {
            if (b as usize) < limit
                && out.len() < len
                && let Some(&c) = alphabet.get(b as usize % n)
            {
                out.push(c as char);
            }
        }
    }
    Ok(out)
}

/// `fus_` + 34 random base62 characters + their 6-character checksum
/// (`sessiongate_core::token_checksum`): 40 after the prefix, as the
/// contract's shape has it.
pub fn new_token() -> Result<String> {
    let random = random_string(BASE62, TOKEN_RANDOM_LEN)?;
    let checksum = token_checksum(random.as_bytes());
    let checksum = std::str::from_utf8(&checksum)
        .map_err(|_| anyhow!("a checksum is ASCII"))?
        .to_owned();
    Ok(format!("{TOKEN_PREFIX}{random}{checksum}"))
}

/// A console user's login secret: `sgu_` + 40 base62 characters.
pub fn new_login() -> Result<String> {
    Ok(format!("{}{}", LOGIN_PREFIX, random_string(BASE62, 40)?))
}

/// 40 base62 characters, `/`, a 7-character uppercase alphanumeric suffix.
pub fn new_key() -> Result<String> {
    let body = random_string(BASE62, KEY_MIN_BODY_LEN + 8)?;
    let suffix = random_string(UPPER_ALNUM, KEY_SUFFIX_LEN)?;
    Ok(format!("{body}/{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessiongate_core::{is_key, is_token};

    #[test]
    fn shapes_and_uniqueness() {
        let a = new_token().unwrap();
        assert!(is_token(&a), "{a}");
        assert!(sessiongate_core::is_checksummed_token(&a), "{a}");
        assert_ne!(a, new_token().unwrap());
        let k = new_key().unwrap();
        assert!(is_key(&k), "{k}");
    }

    #[test]
    fn every_character_of_the_alphabet_appears() {
        let s = random_string(BASE62, 20_000).unwrap();
        assert!(BASE62.iter().all(|c| s.as_bytes().contains(c)));
    }
}
