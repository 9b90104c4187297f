//! [`CircuitBreaker`]: the service.

use std::fmt;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::classify::{Classify, ErrorsAsFailures};
use crate::error::CircuitOpen;
use crate::future::{Guard, ResponseFuture};
use crate::state::{Breaker, PackedTicket, Ticket};
use crate::BoxError;

/// Guards `inner` with a shared [`Breaker`]; made by
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer).
pub struct CircuitBreaker<S, C = ErrorsAsFailures> {
    inner: S,
    gate: Gate,
    classifier: C,
}

/// This service's admission, held between `poll_ready` and `call`; dropping it frees a
/// half-open probe slot it holds.
struct Gate {
    breaker: Breaker,
    ticket: PackedTicket,
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.release(ticket);
        }
    }
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn new(inner: S, breaker: Breaker, classifier: C) -> Self {
        CircuitBreaker {
            inner,
            gate: Gate {
                breaker,
                ticket: PackedTicket::NONE,
            },
            classifier,
        }
    }

    /// The breaker this service shares.
    pub fn breaker(&self) -> &Breaker {
        &self.gate.breaker
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service; a probe slot held by this service is freed.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The breaker first: while open, answer Ready without touching the inner service, so a
        // rate limiter or pool below spends nothing on a request that will be refused.
        // A ticket kept from an earlier poll is decided again unless it holds a probe slot: a
        // refusal may be stale (the breaker has recovered since), and so may a pass taken under
        // a closed state that has since opened.
        let ticket = match self.gate.ticket.get() {
            // A probe slot of a half-open that has since ended (reopened, forced, closed) is
            // gone with its generation: decide again, or the call would pass while open or
            // over-admit a later half-open.
            Some(Ticket::Probe(g)) if g == self.gate.breaker.generation() => Ticket::Probe(g),
            Some(Ticket::Closed(g)) if g == self.gate.breaker.generation() => Ticket::Closed(g),
            Some(Ticket::Pass) if self.gate.breaker.state() == crate::State::Disabled => {
                Ticket::Pass
            }
            _ => {
                let t = self.gate.breaker.admit();
                self.gate.ticket = PackedTicket::new(t);
                t
            }
        };
        if let Ticket::Rejected(_) = ticket {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let ticket = self
            .gate
            .ticket
            .take()
            .expect("CircuitBreaker: poll_ready must return Ready before call");
        match ticket {
            Ticket::Rejected(retry_after) => {
                self.gate.breaker.count_rejected();
                tracing::debug!(?retry_after, "circuit breaker: request refused");
                ResponseFuture::refused(CircuitOpen::new(retry_after))
            }
            Ticket::Pass => ResponseFuture::called(self.inner.call(req), None),
            Ticket::Closed(_) | Ticket::Probe(_) => {
                let guard = Guard::new(self.gate.breaker.clone(), ticket, self.classifier.clone());
                ResponseFuture::called(self.inner.call(req), Some(guard))
            }
        }
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    /// Shares the breaker, not this service's admission: a clone starts without a ticket.
    fn clone(&self) -> Self {
        CircuitBreaker::new(
            self.inner.clone(),
            self.gate.breaker.clone(),
            self.classifier.clone(),
        )
    }
}

impl<S: fmt::Debug, C: fmt::Debug> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.gate.breaker)
            .field("classifier", &self.classifier)
            .finish()
    }
}
