//! The fuzz target's entry point (`fuzz/fuzz_targets/store.rs`) and the
//! regression test that replays its corpus (`store/tests/fuzz_regressions.rs`):
//! it must hold for any input, and a violation panics, which is what a
//! fuzzer finds.
#![allow(clippy::panic)] // a broken invariant must stop the fuzzer

/// Any bytes as a token store: an error or records the gate accepts; and
/// read a piece at a time (as `sessiongate` reads a large store), the same.
pub fn store(data: &[u8]) {
    let whole = crate::format::parse_set(data);
    for piece in [1, 7, data.len() / 3 + 1] {
        let pieces = crate::format::parse_pieces(data.chunks(piece));
        assert_eq!(
            pieces.as_ref().ok(),
            whole.as_ref().ok(),
            "pieces of {piece}: {pieces:?} vs {whole:?}"
        );
    }
    if let Ok(records) = whole.map(|set| set.records()) {
        let again = crate::format::serialize(&records);
        assert_eq!(crate::format::parse(&again).ok(), Some(records));
    }
}
