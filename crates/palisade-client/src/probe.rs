//! [`ProbeWatch`]: tells an origin's breaker when its half-open probe is actually sent.
//!
//! A probe passes the breaker and may then wait below it — for a rate-limit turn, for the
//! origin's connection to be free — before it goes out. The breaker's half-open patience
//! (`max_half_open_wait`) is for a probe that hangs, so it must not count that wait: just
//! below the breaker, this service marks the probe queued ([`Breaker::probe_queued`]) and
//! carries the mark in the request to the connection, which marks it sent when it writes it.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::Request;
use palisade_breaker::{Breaker, QueuedProbe, State};
use tower::Service;

use crate::Body;

/// A half-open probe's mark, in its request's extensions until a connection sends it.
#[derive(Clone)]
pub(crate) struct ProbeMark(Arc<Mutex<Option<QueuedProbe>>>);

impl ProbeMark {
    /// The request is handed to hyper: the breaker's patience counts from now (unless another
    /// probe is out).
    pub(crate) fn sent(self) {
        let taken = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(probe) = taken {
            probe.sent();
        }
    }
}

/// Between an origin's breaker and its rate limiter: while the breaker is half-open, marks the
/// call it admitted as a queued probe before waiting for the rate limiter below.
pub(crate) struct ProbeWatch<S> {
    inner: S,
    breaker: Breaker,
    mark: Option<QueuedProbe>,
}

impl<S> ProbeWatch<S> {
    pub(crate) fn new(inner: S, breaker: Breaker) -> Self {
        ProbeWatch {
            inner,
            breaker,
            mark: None,
        }
    }
}

impl<S: Clone> Clone for ProbeWatch<S> {
    /// Shares the breaker; a clone holds no mark.
    fn clone(&self) -> Self {
        ProbeWatch::new(self.inner.clone(), self.breaker.clone())
    }
}

impl<S> Service<Request<Body>> for ProbeWatch<S>
where
    S: Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        // One load of the breaker's state word, which its admission just read: closed, it is
        // all this costs. A mark of a half-open that has ended is replaced or let go.
        if self.breaker.state() != State::HalfOpen {
            self.mark = None;
        } else if !self
            .mark
            .as_ref()
            .is_some_and(|m| m.generation() == self.breaker.generation())
        {
            self.mark = self.breaker.probe_queued();
        }
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<Body>) -> S::Future {
        if let Some(mark) = self.mark.take() {
            req.extensions_mut()
                .insert(ProbeMark(Arc::new(Mutex::new(Some(mark)))));
        }
        self.inner.call(req)
    }
}
