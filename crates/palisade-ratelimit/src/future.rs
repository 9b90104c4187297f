//! The response future of the rate-limit services.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

pin_project! {
    /// The response of a rate-limited service: the inner call, or the refusal decided at once.
    ///
    /// Nothing is allocated for either: a refusal is stored in place.
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
    /// The admitted call's future (for other backends of these layers, e.g. Redis).
    pub fn called(fut: F) -> Self {
        ResponseFuture {
            kind: Kind::Called { fut },
        }
    }

    /// A refusal decided before the call: resolves at once to `out`.
    pub fn refused(out: Result<T, E>) -> Self {
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
