//! A response body `serve` holds whole: one buffer (a local reply's) or the
//! chunks an upstream's body arrived in, handed to hyper as they are.
//!
//! Joining a forwarded body into one buffer copied the whole page once more
//! per request; hyper writes a chunk list with one vectored write just as
//! well. The body is still read whole before the response starts, so a
//! truncated upstream stays a `502` (README, "Faults").

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// A whole body in one or more chunks, its length known.
#[derive(Debug, Default)]
pub(crate) struct Chunks {
    chunks: VecDeque<Bytes>,
    remaining: u64,
}

impl Chunks {
    /// Appends `chunk` (an empty one is dropped: hyper would send it as the
    /// end of a chunked body).
    pub(crate) fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.remaining += chunk.len() as u64;
            self.chunks.push_back(chunk);
        }
    }
}

impl From<Bytes> for Chunks {
    fn from(bytes: Bytes) -> Self {
        let mut body = Self::default();
        body.push(bytes);
        body
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let Some(chunk) = self.chunks.pop_front() else {
            return Poll::Ready(None);
        };
        self.remaining -= chunk.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    #[tokio::test]
    async fn yields_its_chunks_in_order_with_an_exact_length() {
        let mut body = Chunks::default();
        for chunk in ["ab", "", "cde"] {
            body.push(Bytes::from(chunk));
        }
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "ab");
        assert_eq!(body.size_hint().exact(), Some(3));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "cde");
    }

    #[tokio::test]
    async fn an_empty_body_is_at_its_end() {
        let mut body = Chunks::from(Bytes::new());
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(body.frame().await.is_none());
    }
}
