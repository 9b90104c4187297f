//! [`RedisKeyedRateLimitLayer`]: a limit per key, kept in Redis.

use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_ratelimit::keyed::{ExtractKey, KeyExtractor};
use palisade_ratelimit::{AsError, Rejection};
use tower_layer::Layer;
use tower_service::Service;

use crate::future::KeyedResponseFuture;
use crate::key::RedisKey;
use crate::limiter::{Mode, RedisRateLimiter, Verdict};

/// Applies a limit per key (client address, API key, tenant), each key with the full quota
/// of the [`RedisRateLimiter`], in Redis key `PREFIX:NAME:KIND=KEY` (escaped: see [`RedisKey`]).
///
/// Keys are found by palisade-ratelimit's extractors ([`key_fn`](palisade_ratelimit::keyed::key_fn),
/// `GlobalKey`, and with feature `http` its `PeerIp`, `ForwardedFor` and `HeaderKey`); the key
/// type must be a [`RedisKey`]. A request with no key is refused
/// ([`KeyUnavailable`](palisade_ratelimit::KeyUnavailable)), never let through unlimited.
/// Memory: nothing is kept per key in the process (keys live in Redis and expire once idle),
/// except by the local limiter of [`FailurePolicy::Fallback`](crate::FailurePolicy::Fallback),
/// which palisade-ratelimit bounds.
///
/// The key comes from the request, which `poll_ready` cannot see: `poll_ready` readies the
/// inner service, and `call` moves the readied service into the response future (leaving a
/// clone in its place, as tower's `AsyncFilter` does), which asks Redis and then calls it or
/// answers the refusal. So the inner service must be `Clone`.
///
/// - **reject** (the default, as palisade-ratelimit's keyed layer): refused at once.
/// - **wait** ([`max_wait`](Self::max_wait)): the response future reserves the key's next
///   cell in Redis (refused at once when it is more than `max_wait` away) and sleeps until it
///   conforms, holding the readied inner service. Waiters of one key are served in the order
///   Redis received them; an abandoned wait gives its cell back.
#[derive(Clone)]
pub struct RedisKeyedRateLimitLayer<X, R = AsError> {
    limiter: RedisRateLimiter,
    extractor: X,
    mode: Mode,
    rejection: R,
}

impl<X> RedisKeyedRateLimitLayer<X> {
    /// A reject-mode layer limiting each key `extractor` finds, on `limiter`'s quota.
    pub fn new(limiter: RedisRateLimiter, extractor: X) -> Self {
        RedisKeyedRateLimitLayer {
            limiter,
            extractor,
            mode: Mode::Reject,
            rejection: AsError::default(),
        }
    }
}

impl<X, R> RedisKeyedRateLimitLayer<X, R> {
    /// Wait at most `max_wait` for a key's turn (in the response future) instead of refusing
    /// at once.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.mode = Mode::Wait {
            max_wait: Some(max_wait),
        };
        self
    }

    /// Refuse requests that do not conform now (the default).
    pub fn reject(mut self) -> Self {
        self.mode = Mode::Reject;
        self
    }

    /// Use `rejection` to turn refusals into the service's output.
    pub fn with_rejection<R2>(self, rejection: R2) -> RedisKeyedRateLimitLayer<X, R2> {
        RedisKeyedRateLimitLayer {
            limiter: self.limiter,
            extractor: self.extractor,
            mode: self.mode,
            rejection,
        }
    }

    /// The shared limiter.
    pub fn limiter(&self) -> &RedisRateLimiter {
        &self.limiter
    }

    /// Answer refusals with `429 Too Many Requests` and `Retry-After` (palisade-ratelimit's
    /// `TooManyRequests`).
    #[cfg(feature = "http")]
    pub fn too_many_requests(
        self,
    ) -> RedisKeyedRateLimitLayer<X, palisade_ratelimit::http::TooManyRequests> {
        self.with_rejection(palisade_ratelimit::http::TooManyRequests::new())
    }
}

impl<X: fmt::Debug, R> fmt::Debug for RedisKeyedRateLimitLayer<X, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisKeyedRateLimitLayer")
            .field("limiter", &self.limiter)
            .field("extractor", &self.extractor)
            .field("mode", &self.mode)
            .finish()
    }
}

impl<S, X: Clone, R: Clone> Layer<S> for RedisKeyedRateLimitLayer<X, R> {
    type Service = RedisKeyedRateLimit<S, X, R>;

    fn layer(&self, inner: S) -> Self::Service {
        RedisKeyedRateLimit {
            inner,
            limiter: self.limiter.clone(),
            extractor: self.extractor.clone(),
            mode: self.mode,
            rejection: self.rejection.clone(),
        }
    }
}

/// The service made by [`RedisKeyedRateLimitLayer`].
pub struct RedisKeyedRateLimit<S, X, R = AsError> {
    inner: S,
    limiter: RedisRateLimiter,
    extractor: X,
    mode: Mode,
    rejection: R,
}

impl<S, X, R> RedisKeyedRateLimit<S, X, R> {
    /// The limiter this service draws from.
    pub fn limiter(&self) -> &RedisRateLimiter {
        &self.limiter
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, X: Clone, R: Clone> Clone for RedisKeyedRateLimit<S, X, R> {
    fn clone(&self) -> Self {
        RedisKeyedRateLimit {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            extractor: self.extractor.clone(),
            mode: self.mode,
            rejection: self.rejection.clone(),
        }
    }
}

impl<S: fmt::Debug, X: fmt::Debug, R> fmt::Debug for RedisKeyedRateLimit<S, X, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisKeyedRateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .field("extractor", &self.extractor)
            .field("mode", &self.mode)
            .finish()
    }
}

impl<S, X, R, Req> Service<Req> for RedisKeyedRateLimit<S, X, R>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    Req: Send + 'static,
    X: ExtractKey<Req> + KeyExtractor,
    X::Key: RedisKey,
    R: Rejection<S::Response, S::Error> + Clone + Send + 'static,
    R::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = R::Error;
    type Future = KeyedResponseFuture<S::Response, R::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(R::Error::from)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(key) = self.extractor.extract(&req) else {
            tracing::debug!("rate limited (Redis): no key in request");
            let out = self.rejection.key_unavailable();
            return KeyedResponseFuture::new(async move { out });
        };
        let verdict = self
            .limiter
            .clone()
            .verdict(self.limiter.target(&key), self.mode);
        // The readied service goes with the request; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let rejection = self.rejection.clone();
        KeyedResponseFuture::new(async move {
            match verdict.await {
                Verdict::Granted(_) => inner.call(req).await.map_err(R::Error::from),
                Verdict::Refused(why) => rejection.rate_limited(why),
            }
        })
    }
}
