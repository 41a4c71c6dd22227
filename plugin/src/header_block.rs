//! A stream's headers as the host hands them over: one buffer in the
//! proxy-wasm map encoding, read in place. The SDK's reader copies every
//! name and value into a `String` and a `Vec` of its own, a dozen
//! allocations a request in a guest whose allocator is a sizeable part of
//! its profile; the filter only looks.

/// The ABI's map encoding: a `u32` count, a pair of `u32` lengths (name,
/// value) per header, then each name and each value followed by a NUL.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeaderBlock(Vec<u8>);

impl HeaderBlock {
    pub fn new(bytes: Vec<u8>) -> HeaderBlock {
        HeaderBlock(bytes)
    }

    /// The encoding of `pairs`: a local reply's headers as the filter hands
    /// them over, and a mock host's request headers.
    pub fn encode<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])> + Clone) -> HeaderBlock {
        let (count, bytes) = pairs
            .clone()
            .into_iter()
            .fold((0, 0), |(n, b), (name, value)| {
                (n + 1, b + name.len() + value.len())
            });
        // The count, two lengths and two NULs a pair: one allocation.
        let mut out = Vec::with_capacity(4 + count * 10 + bytes);
        out.extend_from_slice(&(count as u32).to_le_bytes());
        for (name, value) in pairs.clone() {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        }
        for (name, value) in pairs {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            out.extend_from_slice(value);
            out.push(0);
        }
        HeaderBlock(out)
    }

    /// The encoded bytes, as a host call takes them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Every header in order. A block that does not add up ends where it
    /// stops making sense: the gate then sees fewer headers, and refuses what
    /// it cannot read rather than trusting half of it.
    pub fn pairs(&self) -> Pairs<'_> {
        let count = self.u32_at(0).unwrap_or(0);
        Pairs {
            block: self,
            next: 0,
            count,
            data: count.checked_mul(8).and_then(|n| n.checked_add(4)),
        }
    }

    /// The first value of `name` (exact bytes; the host's names are lowercase).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.pairs()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }

    fn u32_at(&self, at: usize) -> Option<usize> {
        let bytes = self.0.get(at..at.checked_add(4)?)?;
        let bytes: [u8; 4] = bytes.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(bytes)).ok()
    }
}

pub struct Pairs<'a> {
    block: &'a HeaderBlock,
    next: usize,
    count: usize,
    /// Where the next name starts; `None` once the block stopped adding up.
    data: Option<usize>,
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.count {
            return None;
        }
        let lengths = 4 + self.next * 8;
        let pair = (|| {
            let name_len = self.block.u32_at(lengths)?;
            let value_len = self.block.u32_at(lengths + 4)?;
            let name_at = self.data?;
            let value_at = name_at.checked_add(name_len)?.checked_add(1)?;
            let end = value_at.checked_add(value_len)?;
            let name = self.block.0.get(name_at..value_at - 1)?;
            let value = self.block.0.get(value_at..end)?;
            Some(((name, value), end.checked_add(1)?))
        })();
        match pair {
            Some((pair, next_data)) => {
                self.next += 1;
                self.data = Some(next_data);
                Some(pair)
            }
            None => {
                self.next = self.count;
                self.data = None;
                None
            }
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_what_the_host_writes() {
        let block = HeaderBlock::encode([
            (":method", b"GET".as_slice()),
            (":path", b"/v1/me"),
            ("authorization", b"Bearer a"),
            ("authorization", b""),
        ]);
        let pairs: Vec<_> = block.pairs().collect();
        assert_eq!(pairs.len(), 4);
        assert_eq!(pairs[3], (b"authorization".as_slice(), b"".as_slice()));
        assert_eq!(block.get(":path"), Some(b"/v1/me".as_slice()));
        assert_eq!(block.get("authorization"), Some(b"Bearer a".as_slice()));
        assert_eq!(block.get("host"), None);
        assert_eq!(HeaderBlock::default().pairs().count(), 0);
    }

    #[test]
    fn a_block_that_does_not_add_up_ends_early() {
        let good = HeaderBlock::encode([("a", b"1".as_slice()), ("b", b"2")]).0;
        // A count larger than the pairs present moves where the names would
        // start past the end; a length past the end.
        let mut more = good.clone();
        more[0] = 9;
        assert_eq!(HeaderBlock::new(more).pairs().count(), 0);
        let mut long = good.clone();
        long[4] = 200;
        assert_eq!(HeaderBlock::new(long).pairs().count(), 0);
        let mut huge = good;
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(HeaderBlock::new(huge).pairs().count(), 0);
    }

    proptest! {
        #[test]
        fn pairs_round_trip(pairs in proptest::collection::vec(("[a-z:-]{0,12}", proptest::collection::vec(any::<u8>(), 0..20)), 0..12)) {
            let block = HeaderBlock::encode(pairs.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
            let back: Vec<(Vec<u8>, Vec<u8>)> = block.pairs().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
            let want: Vec<(Vec<u8>, Vec<u8>)> = pairs.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.clone())).collect();
            prop_assert_eq!(back, want);
        }

        /// Any bytes at all: no panic, and never more pairs than the count says.
        #[test]
        fn any_bytes_are_safe(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let block = HeaderBlock::new(bytes);
            let count = block.u32_at(0).unwrap_or(0);
            prop_assert!(block.pairs().count() <= count);
        }
    }
}
