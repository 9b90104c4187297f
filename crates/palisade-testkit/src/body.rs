//! The response body: one chunk, or several with a delay between them.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use hyper::body::Bytes;
use tokio::time::Sleep;

/// A body sent as a list of chunks, with `delay` (on the tokio clock) between two chunks. Its
/// length is known, so hyper sends `Content-Length`.
#[derive(Debug)]
pub(crate) struct ScriptedBody {
    chunks: VecDeque<Bytes>,
    delay: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    remaining: u64,
}

impl ScriptedBody {
    /// All of `body` at once.
    pub(crate) fn full(body: String) -> Self {
        ScriptedBody::chunked(body, 1, Duration::ZERO)
    }

    /// `body` padded with trailing spaces to at least `chunks` bytes (still valid JSON), split
    /// into exactly `chunks` pieces of near-equal size (`chunks` is at least 1).
    pub(crate) fn chunked(body: String, chunks: usize, delay: Duration) -> Self {
        let chunks = chunks.max(1);
        let mut bytes = body.into_bytes();
        if bytes.len() < chunks {
            bytes.resize(chunks, b' ');
        }
        let remaining = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        let all = Bytes::from(bytes);
        let (base, extra) = (all.len() / chunks, all.len() % chunks);
        let mut start = 0;
        let pieces = (0..chunks)
            .map(|i| {
                let len = base + usize::from(i < extra);
                let piece = all.slice(start..start + len);
                start += len;
                piece
            })
            .collect();
        ScriptedBody {
            chunks: pieces,
            delay,
            sleep: None,
            remaining,
        }
    }
}

impl Body for ScriptedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(sleep) = this.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        let Some(chunk) = this.chunks.pop_front() else {
            return Poll::Ready(None);
        };
        this.remaining = this
            .remaining
            .saturating_sub(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
        if !this.chunks.is_empty() && !this.delay.is_zero() {
            this.sleep = Some(Box::pin(tokio::time::sleep(this.delay)));
        }
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
    use tokio::time::Instant;

    async fn frame(body: &mut ScriptedBody) -> Option<Bytes> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
            .await
            .map(|f| f.ok().and_then(|f| f.into_data().ok()).unwrap_or_default())
    }

    #[tokio::test(start_paused = true)]
    async fn chunks_with_delays() {
        let delay = Duration::from_millis(250);
        let mut body = ScriptedBody::chunked("0123456789".into(), 3, delay);
        assert_eq!(body.size_hint().exact(), Some(10));
        let start = Instant::now();
        let mut got = Vec::new();
        while let Some(chunk) = frame(&mut body).await {
            got.push((chunk, start.elapsed()));
        }
        let expect = [("0123", 0), ("456", 250), ("789", 500)];
        assert_eq!(got.len(), expect.len());
        for ((chunk, at), (text, ms)) in got.iter().zip(expect) {
            assert_eq!(&chunk[..], text.as_bytes());
            assert_eq!(*at, Duration::from_millis(ms));
        }
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn pads_to_the_chunk_count() {
        let mut body = ScriptedBody::chunked("{}".into(), 4, Duration::ZERO);
        let mut got = Vec::new();
        while let Some(chunk) = frame(&mut body).await {
            got.push(chunk);
        }
        assert_eq!(got, ["{", "}", " ", " "]);
    }

    #[tokio::test(start_paused = true)]
    async fn full_is_one_frame() {
        let mut body = ScriptedBody::full("{\"n\":1}".into());
        assert_eq!(frame(&mut body).await.as_deref(), Some(&b"{\"n\":1}"[..]));
        assert_eq!(frame(&mut body).await, None);
    }
}
