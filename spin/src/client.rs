//! Which client address the failed-credential guard may trust.

/// The address Spin gave this request, from the values of
/// `spin-client-addr` in order. Spin sets the header from the connection but
/// *appends* it: its trigger collects the request's own headers first, then
/// adds its own (spinframework/spin, `trigger-http/src/wasi.rs`
/// `prepare_request`). A client that sends the header itself therefore puts
/// its value first, and the runtime's is the last. A last value that is not
/// text is no address at all: never fall back to one the client wrote.
pub fn runtime_client_addr<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<&'a str> {
    values
        .into_iter()
        .last()
        .and_then(|v| std::str::from_utf8(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtimes_value_wins_over_a_clients() {
        let spoof: &[u8] = b"10.9.9.9:1";
        let real: &[u8] = b"203.0.113.7:51000";
        assert_eq!(
            runtime_client_addr([spoof, real]),
            Some("203.0.113.7:51000")
        );
        assert_eq!(runtime_client_addr([real]), Some("203.0.113.7:51000"));
        assert_eq!(runtime_client_addr([]), None);
        assert_eq!(runtime_client_addr([spoof, b"\xff".as_slice()]), None);
    }
}
