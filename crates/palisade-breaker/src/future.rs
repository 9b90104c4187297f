//! The response future of [`CircuitBreaker`](crate::CircuitBreaker).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;

use crate::classify::Classify;
use crate::error::CircuitOpen;
use crate::state::{Breaker, Ticket};
use crate::BoxError;

pin_project! {
    /// The inner call, recording its outcome when it completes — or the refusal, at once.
    ///
    /// Dropped before it completes, it records nothing (the call counts as ignored) and frees
    /// its half-open probe slot, if it held one.
    #[must_use = "futures do nothing unless polled"]
    #[derive(Debug)]
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, C> {
        Called { #[pin] fut: F, guard: Option<Guard<C>> },
        Refused { open: CircuitOpen },
    }
}

/// The admitted call's claim: records its outcome once, or frees its slot when dropped.
#[derive(Debug)]
pub(crate) struct Guard<C> {
    breaker: Breaker,
    ticket: Ticket,
    started: Option<u64>,
    classifier: C,
}

impl<C> Guard<C> {
    pub(crate) fn new(breaker: Breaker, ticket: Ticket, classifier: C) -> Guard<C> {
        let started = breaker.needs_clock().then(|| breaker.now());
        Guard {
            breaker,
            ticket,
            started,
            classifier,
        }
    }

    /// Records the outcome (once). Done in place: moving the guard out of the future first cost
    /// a stalled load on every call (its bytes were just stored by `call`).
    fn finish<T, E>(&mut self, result: &Result<T, E>)
    where
        C: Classify<T, E>,
    {
        if matches!(self.ticket, Ticket::Pass) {
            return;
        }
        let outcome = self.classifier.classify(result);
        let elapsed = self.started.map(|t| {
            self.classifier.elapsed(result).unwrap_or_else(|| {
                std::time::Duration::from_nanos(self.breaker.now().saturating_sub(t))
            })
        });
        self.breaker.record(self.ticket, outcome, elapsed);
        // Recorded: nothing left to release.
        self.ticket = Ticket::Pass;
    }
}

impl<C> Drop for Guard<C> {
    fn drop(&mut self) {
        self.breaker.release(self.ticket);
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(fut: F, guard: Option<Guard<C>>) -> Self {
        ResponseFuture {
            kind: Kind::Called { fut, guard },
        }
    }

    pub(crate) fn refused(open: CircuitOpen) -> Self {
        ResponseFuture {
            kind: Kind::Refused { open },
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { fut, guard } => {
                let result = ready!(fut.poll(cx));
                if let Some(guard) = guard {
                    guard.finish(&result);
                }
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Refused { open } => Poll::Ready(Err(Box::new(*open))),
        }
    }
}
