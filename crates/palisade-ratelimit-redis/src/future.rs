//! The response future of [`RedisRateLimit`](crate::RedisRateLimit).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

pin_project! {
    /// The response of a rate-limited service: the inner call, or the refusal decided in
    /// `poll_ready`, stored in place.
    #[must_use = "futures do nothing unless polled"]
    #[derive(Debug)]
    pub struct ResponseFuture<F, T, E> {
        #[pin]
        kind: Kind<F, T, E>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, T, E> {
        Called { #[pin] fut: F },
        Refused { out: Option<Result<T, E>> },
    }
}

impl<F, T, E> ResponseFuture<F, T, E> {
    pub(crate) fn called(fut: F) -> Self {
        ResponseFuture {
            kind: Kind::Called { fut },
        }
    }

    pub(crate) fn refused(out: Result<T, E>) -> Self {
        ResponseFuture {
            kind: Kind::Refused { out: Some(out) },
        }
    }
}

impl<F, T, E, FE> Future for ResponseFuture<F, T, E>
where
    F: Future<Output = Result<T, FE>>,
    E: From<FE>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { fut } => fut.poll(cx).map_err(E::from),
            KindProj::Refused { out } => {
                Poll::Ready(out.take().expect("ResponseFuture polled after completion"))
            }
        }
    }
}

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
