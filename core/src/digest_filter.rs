//! A Bloom filter over credential digests: "certainly not a credential" or
//! "perhaps one", in ~10 bits a credential. A host that keeps credentials in
//! a store it must call (the Worker's Durable Object) asks the filter first,
//! so a guessed credential costs no call: only the ~1 % it wrongly passes do.
//!
//! SHA-256 digests are uniform already, so the filter's probes are taken
//! from the digest's own bytes rather than hashed again.

use crate::credential::SecretHash;

/// Probes per digest: with 10 bits a credential, ~0.8 % false positives.
const PROBES: usize = 7;
const BITS_PER_DIGEST: usize = 10;
/// Bytes of the digest each probe reads (7 × 4 = 28 of its 32).
const PROBE_BYTES: usize = 4;

/// The filter: its bit array, serialized as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestFilter {
    bits: Vec<u8>,
}

impl DigestFilter {
    /// A filter holding `digests`, sized for them (at least 64 bytes).
    pub fn new<'a>(digests: impl ExactSizeIterator<Item = &'a SecretHash>) -> DigestFilter {
        let bytes = (digests.len() * BITS_PER_DIGEST).div_ceil(8).max(64);
        let mut filter = DigestFilter {
            bits: vec![0; bytes],
        };
        for digest in digests {
            for bit in filter.probes(digest) {
                if let Some(byte) = filter.bits.get_mut(bit / 8) {
                    *byte |= 1 << (bit % 8);
                }
            }
        }
        filter
    }

    /// A filter read back from [`DigestFilter::as_bytes`]; `None` if empty.
    pub fn from_bytes(bits: Vec<u8>) -> Option<DigestFilter> {
        (!bits.is_empty()).then_some(DigestFilter { bits })
    }

    /// The filter's bits, to store or send (read back with [`DigestFilter::from_bytes`]).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// `false`: certainly not among the digests. `true`: perhaps.
    pub fn may_contain(&self, digest: &SecretHash) -> bool {
        self.probes(digest).all(|bit| {
            self.bits
                .get(bit / 8)
                .is_some_and(|byte| byte & (1 << (bit % 8)) != 0)
        })
    }

    fn probes<'d>(&self, digest: &'d SecretHash) -> impl Iterator<Item = usize> + 'd {
        let bits = self.bits.len() * 8;
        digest
            .as_chunks::<PROBE_BYTES>()
            .0
            .iter()
            .take(PROBES)
            .map(move |word| u32::from_le_bytes(*word) as usize % bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::hash_secret;
    use proptest::prelude::*;

    fn digests(n: usize, salt: &str) -> Vec<SecretHash> {
        (0..n)
            .map(|i| hash_secret(format!("{salt}{i}").as_bytes()))
            .collect()
    }

    proptest! {
        #[test]
        fn every_digest_put_in_is_found(seed in any::<u64>(), n in 0usize..3_000) {
            let set = digests(n, &seed.to_string());
            let filter = DigestFilter::new(set.iter());
            for d in &set {
                prop_assert!(filter.may_contain(d));
            }
            let back = DigestFilter::from_bytes(filter.as_bytes().to_vec()).unwrap();
            prop_assert_eq!(back, filter);
        }
    }

    #[test]
    fn about_one_guess_in_a_hundred_passes() {
        let filter = DigestFilter::new(digests(100_000, "credential").iter());
        assert_eq!(filter.as_bytes().len(), 125_000);
        let guesses = digests(100_000, "guess");
        let passed = guesses.iter().filter(|d| filter.may_contain(d)).count();
        assert!(passed < 1_500, "{passed} of 100,000 guesses passed");
        assert!(DigestFilter::from_bytes(Vec::new()).is_none());
        let empty = DigestFilter::new(std::iter::empty());
        assert!(!empty.may_contain(&guesses[0]));
    }
}
