//! [`RateLimit`]: the service, and the gate that takes a token in `poll_ready`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;
use tower_service::Service;

use crate::error::RateLimited;
use crate::future::ResponseFuture;
use crate::gcra::Grant;
use crate::limiter::{RateLimiter, Turn};
use crate::reject::{AsError, Rejection};

/// What a layer does with a request that does not conform now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Wait in `poll_ready` for the request's turn, unless that would take longer than
    /// `max_wait`.
    Wait { max_wait: Option<Duration> },
    /// Refuse at once.
    Reject,
}

// ===== Gate =====

/// One service's claim on the limiter: idle, queued, holding a token, or refused.
///
/// Dropping it gives back what it holds: a queued place leaves the queue, an unused token goes
/// back to the limiter.
pub(crate) struct Gate {
    limiter: RateLimiter,
    mode: Mode,
    state: State,
    /// Made on the first wait and reset in place afterwards.
    sleep: Option<Pin<Box<Sleep>>>,
}

enum State {
    Idle,
    Waiting { id: u64, arrived: u64 },
    Granted(Grant),
    Refused(RateLimited),
}

/// The verdict `call` acts on.
pub(crate) enum Admission {
    Admitted,
    Refused(RateLimited),
}

impl Gate {
    pub(crate) fn new(limiter: RateLimiter, mode: Mode) -> Gate {
        Gate {
            limiter,
            mode,
            state: State::Idle,
            sleep: None,
        }
    }

    /// Resolves once the request is admitted (a token is held) or refused.
    ///
    /// The common case — idle, nobody queued, a token free — is decided here, inline; the
    /// rest in [`poll_acquire_slow`](Self::poll_acquire_slow), whose large frame the common
    /// case would otherwise set up and tear down on every request.
    #[inline]
    pub(crate) fn poll_acquire(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let State::Idle = self.state {
            let shared = &*self.limiter.shared;
            if !shared.has_waiters() {
                if let Ok(grant) = shared.try_acquire(shared.now()) {
                    self.state = State::Granted(grant);
                    return Poll::Ready(());
                }
            }
        }
        self.poll_acquire_slow(cx)
    }

    #[cold]
    #[inline(never)]
    fn poll_acquire_slow(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let shared = &*self.limiter.shared;
        let max_wait = match self.mode {
            Mode::Reject => None,
            Mode::Wait { max_wait } => max_wait,
        };
        // A refusal is a verdict for the `call` that follows; polled again instead, decide
        // again (the limiter may have room by now).
        if let State::Refused(_) = self.state {
            self.state = State::Idle;
        }
        loop {
            match self.state {
                State::Granted(_) | State::Refused(_) => return Poll::Ready(()),
                State::Idle => {
                    let now = shared.now();
                    // Waiters whose slots have come are admitted first, on their behalf (a
                    // parked service's among them): otherwise a waiter nobody polls would keep
                    // this request — in reject mode, or past `max_wait` — refused for good.
                    if shared.has_waiters() {
                        shared.admit_due(now);
                    }
                    // Waiters are served first come, first served: nobody passes them, in
                    // either mode.
                    let slot = if shared.has_waiters() {
                        shared.estimated_slot(now)
                    } else {
                        match shared.try_acquire(now) {
                            Ok(grant) => {
                                self.state = State::Granted(grant);
                                return Poll::Ready(());
                            }
                            Err(_) => shared.estimated_slot(now),
                        }
                    };
                    let wait = Duration::from_nanos(slot.saturating_sub(now));
                    if self.mode == Mode::Reject {
                        tracing::debug!(retry_after = ?wait, "rate limited: request refused");
                        self.state = State::Refused(RateLimited::new(wait, shared.quota()));
                        return Poll::Ready(());
                    }
                    if max_wait.is_some_and(|max| wait > max) {
                        tracing::debug!(
                            ?wait,
                            ?max_wait,
                            "rate limited: wait would exceed max_wait"
                        );
                        self.state = State::Refused(RateLimited::new(wait, shared.quota()));
                        return Poll::Ready(());
                    }
                    tracing::trace!(?wait, "rate limit: waiting for a token");
                    // A timer made afresh for each wait: a timer is bound to the runtime that
                    // made it, and this service may wait on another runtime than last time.
                    self.sleep = None;
                    let id = shared.enqueue(now, cx.waker());
                    self.state = State::Waiting { id, arrived: now };
                }
                State::Waiting { id, arrived } => {
                    let now = shared.now();
                    match shared.turn(id, now, cx.waker()) {
                        Turn::Admitted(grant) => {
                            self.state = State::Granted(grant);
                            return Poll::Ready(());
                        }
                        Turn::Gone => self.state = State::Idle,
                        Turn::SleepUntil(at) => {
                            // One total deadline: a wait that grew (a quota change) past
                            // max_wait is refused, not served late.
                            if max_wait.is_some_and(|max| {
                                Duration::from_nanos(at.saturating_sub(arrived)) > max
                            }) {
                                shared.cancel(id);
                                let wait = Duration::from_nanos(at.saturating_sub(now));
                                self.state = State::Refused(RateLimited::new(wait, shared.quota()));
                                return Poll::Ready(());
                            }
                            let deadline = shared.instant(at);
                            let sleep = match &mut self.sleep {
                                Some(sleep) => {
                                    if sleep.deadline() != deadline {
                                        sleep.as_mut().reset(deadline);
                                    }
                                    sleep
                                }
                                slot @ None => {
                                    slot.insert(Box::pin(tokio::time::sleep_until(deadline)))
                                }
                            };
                            if sleep.as_mut().poll(cx).is_pending() {
                                return Poll::Pending;
                            }
                            // The slot has come: ask again.
                        }
                    }
                }
            }
        }
    }

    /// Takes the verdict for `call`, leaving the gate idle for the next request.
    ///
    /// # Panics
    ///
    /// When `poll_ready` did not return `Ready` first.
    #[inline]
    pub(crate) fn take(&mut self) -> Admission {
        // The common case decided by reference: moving the whole state out re-read, wider
        // than they were written, the bytes `poll_acquire` had just stored, and the processor
        // stalled on that load on every call.
        if let State::Granted(_) = self.state {
            self.state = State::Idle;
            return Admission::Admitted;
        }
        match std::mem::replace(&mut self.state, State::Idle) {
            // The token is spent: it now belongs to the request being called.
            State::Granted(_) => Admission::Admitted,
            State::Refused(why) => Admission::Refused(why),
            State::Idle | State::Waiting { .. } => {
                panic!("RateLimit: poll_ready must return Ready before call")
            }
        }
    }

    pub(crate) fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }
}

impl Clone for Gate {
    /// A clone shares the limiter but not this gate's claim: it starts idle, so a token held by
    /// one service is never spent twice.
    fn clone(&self) -> Gate {
        Gate::new(self.limiter.clone(), self.mode)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Waiting { id, .. } => self.limiter.shared.cancel(id),
            State::Granted(grant) => self.limiter.shared.refund(grant),
            State::Idle | State::Refused(_) => {}
        }
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Idle => "idle",
            State::Waiting { .. } => "waiting",
            State::Granted(_) => "granted",
            State::Refused(_) => "refused",
        };
        f.debug_struct("Gate")
            .field("mode", &self.mode)
            .field("state", &state)
            .finish()
    }
}

// ===== RateLimit =====

/// Admits requests to `inner` at the rate of a shared [`RateLimiter`].
///
/// Made by [`RateLimitLayer`](crate::RateLimitLayer); see there for the two modes. Every clone
/// draws from the same limit.
pub struct RateLimit<S, R = AsError> {
    inner: S,
    gate: Gate,
    rejection: R,
}

impl<S, R> RateLimit<S, R> {
    pub(crate) fn new(inner: S, gate: Gate, rejection: R) -> Self {
        RateLimit {
            inner,
            gate,
            rejection,
        }
    }

    /// The limit this service draws from.
    pub fn limiter(&self) -> &RateLimiter {
        self.gate.limiter()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service; a token held by this service goes back to the limiter.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, R, Req> Service<Req> for RateLimit<S, R>
where
    S: Service<Req>,
    R: Rejection<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = R::Error;
    type Future = ResponseFuture<S::Future, S::Response, R::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Our own gate first: a request that must wait or is refused holds nothing of the
        // inner service.
        if self.gate.poll_acquire(cx).is_pending() {
            return Poll::Pending;
        }
        if self.gate.is_refused() {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx).map_err(R::Error::from)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.gate.take() {
            Admission::Admitted => ResponseFuture::called(self.inner.call(req)),
            Admission::Refused(why) => ResponseFuture::refused(self.rejection.rate_limited(why)),
        }
    }
}

impl Gate {
    #[inline]
    pub(crate) fn is_refused(&self) -> bool {
        matches!(self.state, State::Refused(_))
    }
}

impl<S: Clone, R: Clone> Clone for RateLimit<S, R> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            gate: self.gate.clone(),
            rejection: self.rejection.clone(),
        }
    }
}

impl<S: fmt::Debug, R> fmt::Debug for RateLimit<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("gate", &self.gate)
            .finish()
    }
}
