//! [`RedisRateLimitLayer`] and [`RedisRateLimit`]: the token is taken in `poll_ready`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::future::ResponseFuture;
use palisade_ratelimit::{AsError, RateLimited, Rejection};
use sync_wrapper::SyncWrapper;
use tower_layer::Layer;
use tower_service::Service;

use crate::limiter::{Mode, RedisRateLimiter, Target, Token, Verdict};

type Deciding = SyncWrapper<Pin<Box<dyn Future<Output = Verdict> + Send>>>;

/// One service's claim on the limit: idle, deciding (a Redis round trip, or a wait), holding a
/// token, or refused. Dropping it gives back what it holds.
struct Gate {
    limiter: RedisRateLimiter,
    mode: Mode,
    state: State,
}

enum State {
    Idle,
    Deciding(Deciding),
    Granted(Token),
    Refused(RateLimited),
}

impl Gate {
    fn new(limiter: RedisRateLimiter, mode: Mode) -> Gate {
        Gate {
            limiter,
            mode,
            state: State::Idle,
        }
    }

    fn poll_acquire(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // A refusal is a verdict for the `call` that follows; polled again instead, decide
        // again.
        if let State::Refused(_) = self.state {
            self.state = State::Idle;
        }
        loop {
            match &mut self.state {
                State::Granted(_) | State::Refused(_) => return Poll::Ready(()),
                State::Idle => {
                    let decide = self.limiter.clone().verdict(Target::Own, self.mode);
                    self.state = State::Deciding(SyncWrapper::new(Box::pin(decide)));
                }
                State::Deciding(fut) => match fut.get_mut().as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Verdict::Granted(token)) => self.state = State::Granted(token),
                    Poll::Ready(Verdict::Refused(why)) => self.state = State::Refused(why),
                },
            }
        }
    }

    fn take(&mut self) -> Result<(), RateLimited> {
        match std::mem::replace(&mut self.state, State::Idle) {
            // The token is spent: it belongs to the request being called.
            State::Granted(_) => Ok(()),
            State::Refused(why) => Err(why),
            State::Idle | State::Deciding(_) => {
                panic!("RedisRateLimit: poll_ready must return Ready before call")
            }
        }
    }
}

impl Clone for Gate {
    /// A clone shares the limiter but not this gate's claim: it starts idle.
    fn clone(&self) -> Gate {
        Gate::new(self.limiter.clone(), self.mode)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let State::Granted(token) = std::mem::replace(&mut self.state, State::Idle) {
            self.limiter.give_back(token);
        }
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Idle => "idle",
            State::Deciding(_) => "deciding",
            State::Granted(_) => "granted",
            State::Refused(_) => "refused",
        };
        f.debug_struct("Gate")
            .field("mode", &self.mode)
            .field("state", &state)
            .finish()
    }
}

/// Applies a rate limit kept in Redis to a service: palisade-ratelimit's `RateLimitLayer`, with
/// the budget shared by every process that uses the same limiter name on the same Redis.
///
/// Every service the layer makes — clones and repeated [`layer`](Layer::layer) calls alike —
/// draws from one [`RedisRateLimiter`] (one connection, one lease pool).
///
/// # Modes
///
/// - **wait** ([`new`](Self::new)): `poll_ready` is `Pending` until the request's turn: a
///   Lua script reserves the next cell in Redis and answers how long until it conforms
///   (computed on Redis' clock), and the service sleeps that long on tokio's timer — one
///   round trip per request, waiters served in the order Redis received them across the
///   fleet, no lock held while waiting, the cell given back if the wait is abandoned. (In
///   lease mode waiters take local slots one interval apart and decide at their slot.)
///   With [`max_wait`](Self::max_wait), a request whose wait would exceed it is refused.
/// - **reject** ([`reject`](Self::reject)): one decision; a request that does not conform now
///   is refused at once with [`RateLimited`] (`retry_after` from Redis).
///
/// The token is taken in `poll_ready` before the inner service is polled; a refused request is
/// `Ready` without polling the inner service, and `call` returns the refusal. A readied service
/// dropped before `call` gives its token back (see [`crate`]'s "Giving back").
///
/// The services need a tokio runtime.
#[derive(Clone)]
pub struct RedisRateLimitLayer<R = AsError> {
    limiter: RedisRateLimiter,
    mode: Mode,
    rejection: R,
}

impl RedisRateLimitLayer {
    /// A wait-mode layer over `limiter`.
    pub fn new(limiter: RedisRateLimiter) -> RedisRateLimitLayer {
        RedisRateLimitLayer {
            limiter,
            mode: Mode::Wait { max_wait: None },
            rejection: AsError::default(),
        }
    }
}

impl<R> RedisRateLimitLayer<R> {
    /// Wait at most `max_wait`: a request whose wait would be longer is refused, with
    /// `retry_after` set to the wait. Switches the layer to wait mode.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.mode = Mode::Wait {
            max_wait: Some(max_wait),
        };
        self
    }

    /// Refuse requests that do not conform now, instead of waiting (server mode).
    pub fn reject(mut self) -> Self {
        self.mode = Mode::Reject;
        self
    }

    /// Use `rejection` to turn refusals into the service's output (palisade-ratelimit's
    /// [`Rejection`]).
    pub fn with_rejection<R2>(self, rejection: R2) -> RedisRateLimitLayer<R2> {
        RedisRateLimitLayer {
            limiter: self.limiter,
            mode: self.mode,
            rejection,
        }
    }

    /// The shared limiter.
    pub fn limiter(&self) -> &RedisRateLimiter {
        &self.limiter
    }

    /// Reject mode, answering refusals with `429 Too Many Requests` and `Retry-After`
    /// (palisade-ratelimit's `TooManyRequests`).
    #[cfg(feature = "http")]
    pub fn too_many_requests(
        self,
    ) -> RedisRateLimitLayer<palisade_ratelimit::http::TooManyRequests> {
        self.reject()
            .with_rejection(palisade_ratelimit::http::TooManyRequests::new())
    }
}

impl<S, R: Clone> Layer<S> for RedisRateLimitLayer<R> {
    type Service = RedisRateLimit<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        RedisRateLimit {
            inner,
            gate: Gate::new(self.limiter.clone(), self.mode),
            rejection: self.rejection.clone(),
        }
    }
}

impl<R> fmt::Debug for RedisRateLimitLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitLayer")
            .field("limiter", &self.limiter)
            .field("mode", &self.mode)
            .finish()
    }
}

/// Admits requests to `inner` at the rate of a [`RedisRateLimiter`]; made by
/// [`RedisRateLimitLayer`]. Every clone draws from the same limit; a clone starts without a
/// token.
pub struct RedisRateLimit<S, R = AsError> {
    inner: S,
    gate: Gate,
    rejection: R,
}

impl<S, R> RedisRateLimit<S, R> {
    /// The limiter this service draws from.
    pub fn limiter(&self) -> &RedisRateLimiter {
        &self.gate.limiter
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service; a token held by this service is given back.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, R, Req> Service<Req> for RedisRateLimit<S, R>
where
    S: Service<Req>,
    R: Rejection<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = R::Error;
    type Future = ResponseFuture<S::Future, S::Response, R::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Our gate first: a request that waits or is refused holds nothing of the inner
        // service.
        if self.gate.poll_acquire(cx).is_pending() {
            return Poll::Pending;
        }
        if let State::Refused(_) = self.gate.state {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx).map_err(R::Error::from)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.gate.take() {
            Ok(()) => ResponseFuture::called(self.inner.call(req)),
            Err(why) => ResponseFuture::refused(self.rejection.rate_limited(why)),
        }
    }
}

impl<S: Clone, R: Clone> Clone for RedisRateLimit<S, R> {
    fn clone(&self) -> Self {
        RedisRateLimit {
            inner: self.inner.clone(),
            gate: self.gate.clone(),
            rejection: self.rejection.clone(),
        }
    }
}

impl<S: fmt::Debug, R> fmt::Debug for RedisRateLimit<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimit")
            .field("inner", &self.inner)
            .field("gate", &self.gate)
            .finish()
    }
}
