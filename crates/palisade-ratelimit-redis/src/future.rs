//! The response future of [`RedisRateLimit`](crate::RedisRateLimit).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The response of a Redis-limited service: palisade-ratelimit's own (the inner call, or the
/// refusal decided in `poll_ready`, stored in place).
pub use palisade_ratelimit::future::ResponseFuture;

/// The response of a keyed Redis-limited service: the Redis decision (and in wait mode, the
/// wait), then the inner call or the refusal. Boxed: it owns the readied inner service.
#[must_use = "futures do nothing unless polled"]
pub struct KeyedResponseFuture<T, E> {
    fut: Pin<Box<dyn Future<Output = Result<T, E>> + Send>>,
}

impl<T, E> KeyedResponseFuture<T, E> {
    pub(crate) fn new(fut: impl Future<Output = Result<T, E>> + Send + 'static) -> Self {
        KeyedResponseFuture { fut: Box::pin(fut) }
    }
}

impl<T, E> Future for KeyedResponseFuture<T, E> {
    type Output = Result<T, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.fut.as_mut().poll(cx)
    }
}

impl<T, E> std::fmt::Debug for KeyedResponseFuture<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedResponseFuture")
    }
}
