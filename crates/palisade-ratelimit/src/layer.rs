//! [`RateLimitLayer`].

use std::fmt;
use std::time::Duration;

use tower_layer::Layer;

use crate::limiter::RateLimiter;
use crate::quota::Quota;
use crate::reject::AsError;
use crate::service::{Gate, Mode, RateLimit};

/// Applies a shared GCRA rate limit to a service.
///
/// The limit is created with the layer, so every service the layer makes — through clones *and*
/// through repeated [`layer`](Layer::layer) calls, as axum makes per route — draws from one
/// budget. No `Buffer` is needed, and none should be added.
///
/// # Modes
///
/// - **wait** ([`RateLimitLayer::new`], for clients): `poll_ready` returns `Pending` until the
///   request's turn. Waiters are served in arrival order, each woken when its turn comes. A
///   request that stops waiting (its future or service dropped), or a readied service dropped
///   before `call`, gives its place or its token back. With [`max_wait`](Self::max_wait), a
///   request whose wait would exceed it is refused at once.
/// - **reject** ([`reject`](Self::reject), for servers): a request that does not conform now is
///   refused at once, without polling or calling the inner service.
///
/// A refusal is a [`RateLimited`](crate::RateLimited) error carrying `retry_after` (boxed, as
/// tower reports errors), or with feature `http`, a `429 Too Many Requests` response
/// ([`RateLimitLayer::too_many_requests`]).
///
/// ```
/// use palisade_ratelimit::{Quota, RateLimitLayer};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let layer = RateLimitLayer::new(Quota::per_second(10)?);
/// let limiter = layer.limiter().clone();
/// let mut svc = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n * 2) });
///
/// let start = tokio::time::Instant::now();
/// for n in 0..3 {
///     assert_eq!(svc.ready().await?.call(n).await?, n * 2);
/// }
/// // Burst 1: one request every 100 ms.
/// assert_eq!(start.elapsed(), std::time::Duration::from_millis(200));
/// assert_eq!(limiter.remaining_burst(), 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RateLimitLayer<R = AsError> {
    limiter: RateLimiter,
    mode: Mode,
    rejection: R,
}

impl RateLimitLayer {
    /// A wait-mode layer with a new limit of `quota`.
    pub fn new(quota: Quota) -> RateLimitLayer {
        RateLimitLayer::from_limiter(RateLimiter::new(quota))
    }

    /// A wait-mode layer drawing from an existing limit, shared with whatever else uses it.
    pub fn from_limiter(limiter: RateLimiter) -> RateLimitLayer {
        RateLimitLayer {
            limiter,
            mode: Mode::Wait { max_wait: None },
            rejection: AsError::default(),
        }
    }
}

impl<R> RateLimitLayer<R> {
    /// Wait at most `max_wait` for a turn: a request whose estimated wait is longer is refused
    /// at once with `retry_after` set to that wait. Switches the layer to wait mode.
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

    /// Use `rejection` to turn refusals into the service's output.
    pub fn with_rejection<R2>(self, rejection: R2) -> RateLimitLayer<R2> {
        RateLimitLayer {
            limiter: self.limiter,
            mode: self.mode,
            rejection,
        }
    }

    /// The shared limit: inspect it, check it directly, or change its quota.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }
}

impl<S, R: Clone> Layer<S> for RateLimitLayer<R> {
    type Service = RateLimit<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(
            inner,
            Gate::new(self.limiter.clone(), self.mode),
            self.rejection.clone(),
        )
    }
}

impl<R> fmt::Debug for RateLimitLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limiter", &self.limiter)
            .field("mode", &self.mode)
            .finish()
    }
}
