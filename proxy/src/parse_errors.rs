//! Requests that are not valid HTTP never reach the filter: hyper answers
//! them itself, with an empty `400`, `414` or `431`. The contract wants every error the
//! gate produces as JSON, so this wrapper around the connection swaps those
//! bodiless error responses for the contract's `400 invalid_request`.
//!
//! It can tell them apart safely: every response the gate writes has a JSON
//! body, so a `400`, `414` or `431` head with `content-length: 0` can only be
//! hyper's.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct JsonParseErrors<T> {
    inner: T,
    /// A replacement being written: its bytes, how far, and the length of the
    /// buffer it stands for (what the caller is told was written).
    pending: Option<(Vec<u8>, usize, usize)>,
    /// Told of each replacement (a response the host did not see otherwise).
    on_replace: Option<Box<dyn Fn() + Send + Sync>>,
}

impl<T> JsonParseErrors<T> {
    pub fn new(inner: T) -> Self {
        JsonParseErrors {
            inner,
            pending: None,
            on_replace: None,
        }
    }

    /// Calls `f` for each of hyper's errors replaced (for metrics).
    pub fn on_replace(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_replace = Some(Box::new(f));
        self
    }
}

fn hypers_own_error(buf: &[u8]) -> bool {
    // Every response passes through here: the status code decides first, so
    // the gate's own responses cost a 3-byte comparison and no allocation.
    let status = buf.get(..13).unwrap_or_default();
    if !matches!(status.get(9..12), Some(b"400" | b"414" | b"431"))
        || ![b"http/1.1 400 ", b"http/1.1 414 ", b"http/1.1 431 "]
            .iter()
            .any(|s| status.eq_ignore_ascii_case(*s))
    {
        return false;
    }
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(buf.len());
    buf.get(..head_end)
        .unwrap_or_default()
        .split(|&b| b == b'\n')
        .any(|line| {
            line.strip_suffix(b"\r")
                .unwrap_or(line)
                .eq_ignore_ascii_case(b"content-length: 0")
        })
}

fn replacement() -> Vec<u8> {
    let body = sessiongate_core::malformed_request_body();
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonParseErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.is_none() && hypers_own_error(buf) {
            self.pending = Some((replacement(), 0, buf.len()));
            if let Some(f) = &self.on_replace {
                f();
            }
        }
        let this = &mut *self;
        if let Some((data, written, stands_for)) = this.pending.as_mut() {
            while *written < data.len() {
                let rest = data.get(*written..).unwrap_or_default();
                match Pin::new(&mut this.inner).poll_write(cx, rest) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => *written += n,
                    other => return other,
                }
            }
            let n = *stands_for;
            this.pending = None;
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    /// hyper writes a response's head and body with one `writev` when the
    /// connection says it can, and otherwise copies the body into its own
    /// buffer first: a 1,000-session page was copied once more per request
    /// before this was passed through.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty());
        if self.pending.is_some() || first.is_some_and(|b| hypers_own_error(b)) {
            // hyper's own errors have no body: the head is all of it.
            return self.poll_write(cx, first.map_or(&[][..], |b| &b[..]));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_bodiless_400_and_431() {
        assert!(hypers_own_error(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n"));
        assert!(hypers_own_error(b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"));
        assert!(!hypers_own_error(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 90\r\n\r\n{}"));
        assert!(!hypers_own_error(
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!hypers_own_error(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 05\r\n\r\n"
        ));
    }

    fn write_vectored(
        w: &mut JsonParseErrors<Vec<u8>>,
        bufs: &[io::IoSlice<'_>],
    ) -> io::Result<usize> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(w).poll_write_vectored(&mut cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    #[test]
    fn vectored_writes_pass_through_and_still_catch_hypers_errors() {
        let mut w = JsonParseErrors::new(Vec::new());
        assert!(w.is_write_vectored(), "hyper would copy every body");
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n";
        let n = write_vectored(&mut w, &[io::IoSlice::new(head), io::IoSlice::new(b"{}")]).unwrap();
        assert_eq!(n, head.len() + 2);
        assert_eq!(w.inner, [&head[..], b"{}"].concat());

        let mut w = JsonParseErrors::new(Vec::new());
        let own = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        let n = write_vectored(&mut w, &[io::IoSlice::new(b""), io::IoSlice::new(own)]).unwrap();
        assert_eq!(n, own.len(), "hyper is told its bytes were written");
        assert_eq!(w.inner, replacement());
    }
}
