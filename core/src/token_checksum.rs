//! The checksum a new token ends in, so that a secret scanner (or
//! `sessiongate token verify`) can tell a real token from noise offline, and
//! a gate can refuse a mistyped or made-up token before hashing it.
//!
//! The format keeps the contract's shape, `fus_` and 40 of `[A-Za-z0-9]`:
//!
//! ```text
//! fus_ RRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRR CCCCCC
//!      34 random [A-Za-z0-9]              CRC-32 of the 34, in base62
//! ```
//!
//! The checksum is CRC-32/ISO-HDLC (zlib's `crc32`, the one GitHub's tokens
//! use) of the 34 random characters' ASCII bytes, written in base62 with
//! the digits `0-9A-Za-z` (0 to 61), most significant first, zero-padded to
//! six (every 32-bit value fits: 62^6 > 2^32). A token minted before the
//! checksum passes it by chance once in ~2^32, so a store says which of its
//! tokens carry one.

/// Random characters in a checksummed token (after `fus_`).
pub const TOKEN_RANDOM_LEN: usize = 34;
/// Characters of the checksum that ends a token.
pub const TOKEN_CHECKSUM_LEN: usize = 6;

const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// CRC-32/ISO-HDLC's table (reflected polynomial 0xEDB88320), built at
/// compile time: one lookup per byte.
// Evaluated at compile time: an index out of range fails the build.
#[allow(clippy::indexing_slicing)]
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32/ISO-HDLC of `bytes` (zlib's `crc32`).
fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |crc, &b| {
        let index = usize::from((crc as u8) ^ b);
        CRC_TABLE.get(index).copied().unwrap_or(0) ^ (crc >> 8)
    })
}

/// The six base62 characters that end a token whose random part is `random`.
pub fn token_checksum(random: &[u8]) -> [u8; TOKEN_CHECKSUM_LEN] {
    let mut n = crc32(random);
    let mut out = [b'0'; TOKEN_CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS.get((n % 62) as usize).copied().unwrap_or(b'0');
        n /= 62;
    }
    out
}

/// Whether a token's 40 characters after `fus_` (their shape is checked
/// elsewhere) end in the checksum of their random part.
pub(crate) fn checksum_holds(body: &[u8]) -> bool {
    let (random, checksum) = body.split_at(body.len().min(TOKEN_RANDOM_LEN));
    random.len() == TOKEN_RANDOM_LEN && checksum == token_checksum(random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_zlibs() {
        // The check value of CRC-32/ISO-HDLC, and a value zlib.crc32 gives.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    #[test]
    fn the_checksum_is_six_base62_digits_most_significant_first() {
        // 0xCBF43926 = 3·62^5 + 45·62^4 + 35·62^3 + 27·62^2 + 22·62 + 14
        assert_eq!(&token_checksum(b"123456789"), b"3jZRME");
        assert_eq!(&token_checksum(b""), b"000000");
    }
}
