//! Retries that cannot amplify an outage: tower's `Retry` with a [`TpsBudget`], outside the
//! breaker of each origin.
//!
//! What is retried:
//! - a request that never left: a connect error, or a request hyper handed back unwritten
//!   ([`RequestNotSent`]) — whatever its method;
//! - an idempotent request (GET, HEAD, PUT, DELETE, OPTIONS, TRACE, or one carrying the
//!   [`Idempotent`] extension) answered `429` or `503` — after the `Retry-After` it carries,
//!   capped — or `502`/`504`, or that timed out or lost its connection after being written —
//!   with exponential backoff and full jitter.
//!
//! Never retried: anything while the origin's breaker is not closed (the caller gets the
//! answer that opened it, not a refusal of the retry); a refusal made inside the client (open circuit, shutdown, rate-limit wait
//! too long, connection queue full) — retrying those is how a retry storm starts — and any
//! retry the budget cannot pay for: after the budget's floor, at most `ratio` retries per
//! request on average, so an outage costs the upstream at most (1 + ratio) × the requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use palisade_breaker::{Breaker, CircuitOpen, State as BreakerState};
use palisade_pool::{ConnectTimeout, PoolClosed, PoolFull};
use palisade_ratelimit::RateLimited;
use palisade_shutdown::ShuttingDown;
use tokio::time::Sleep;
use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::Policy;

use crate::error::{BoxError, ConnectError, Error, RequestNotSent};
use crate::gate::{CutWait, GateState};
use crate::Body;

/// Marks a request as safe to send twice (put it in the request's extensions), for a method
/// that is not idempotent by definition, such as a `POST` with an idempotency key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Idempotent;

/// Retry settings for [`ClientBuilder::retries`](crate::ClientBuilder::retries).
///
/// Defaults: up to 2 retries per request; a budget of 20 % of requests on top of a floor of
/// 10 retries per second, counted over 10 s; backoff from 100 ms doubling to 5 s with full
/// jitter; a `Retry-After` is honoured up to 30 s (longer ones are not retried).
#[derive(Debug, Clone, PartialEq)]
pub struct Retries {
    pub(crate) max_retries: u32,
    pub(crate) ratio: f32,
    pub(crate) min_per_sec: u32,
    pub(crate) window: Duration,
    pub(crate) base: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) max_retry_after: Duration,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            max_retries: 2,
            ratio: 0.2,
            min_per_sec: 10,
            window: Duration::from_secs(10),
            base: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl Retries {
    /// Up to `n` retries per request (0: none), with the other defaults.
    pub fn new(n: u32) -> Self {
        Retries {
            max_retries: n,
            ..Retries::default()
        }
    }

    /// The budget: retries may add at most `ratio` (0–10) of the requests, plus a floor of
    /// `min_per_sec` retries per second, counted over `window` (1–60 s).
    pub fn budget(mut self, ratio: f32, min_per_sec: u32, window: Duration) -> Self {
        self.ratio = ratio;
        self.min_per_sec = min_per_sec;
        self.window = window;
        self
    }

    /// Exponential backoff: the n-th retry waits a random time up to `base × 2ⁿ⁻¹`, at most
    /// `max` ("full jitter").
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base = base;
        self.max_backoff = max;
        self
    }

    /// The longest `Retry-After` waited for; an answer asking for longer is returned as it is.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        if !(0.0..=10.0).contains(&self.ratio) || self.ratio.is_nan() {
            return Err(Error::builder(format!(
                "retry budget ratio {} is not between 0 and 10",
                self.ratio
            )));
        }
        if self.window < Duration::from_secs(1) || self.window > Duration::from_secs(60) {
            return Err(Error::builder(format!(
                "retry budget window {:?} is not between 1 s and 60 s",
                self.window
            )));
        }
        if self.min_per_sec > 1_000_000 {
            return Err(Error::builder(
                "retry budget floor above 1,000,000 per second",
            ));
        }
        if self.base.is_zero() || self.max_backoff < self.base {
            return Err(Error::builder(format!(
                "retry backoff: base {:?} must be above zero and not above max {:?}",
                self.base, self.max_backoff
            )));
        }
        if self.max_backoff > Duration::from_secs(3600)
            || self.max_retry_after > Duration::from_secs(3600)
        {
            return Err(Error::builder(
                "retry backoff and max_retry_after must be at most an hour",
            ));
        }
        Ok(())
    }
}

/// What the retry policy shares between requests.
#[derive(Debug)]
pub(crate) struct RetryShared {
    settings: Retries,
    /// The origin's gate: a backoff ends early when the client's shutdown deadline passes.
    gate: Arc<GateState>,
    budget: TpsBudget,
    retries: AtomicU64,
    refused_by_budget: AtomicU64,
    seed: AtomicU64,
    /// When the budget was last withdrawn from (nanoseconds since `born`, plus one; 0: never).
    last_withdrawal: AtomicU64,
    born: tokio::time::Instant,
}

impl RetryShared {
    /// Nothing withdrawn within the budget's window: a fresh budget would be the same.
    pub(crate) fn is_rested(&self) -> bool {
        let last = self.last_withdrawal.load(Ordering::Relaxed);
        // tower's `TpsBudget` turns its ten slots lazily, when next used: a withdrawal can
        // stay counted for up to a tenth of the window past the window.
        let window = self.settings.window;
        last == 0
            || self.born + Duration::from_nanos(last - 1) + window + window / 10
                < tokio::time::Instant::now()
    }

    pub(crate) fn new(settings: Retries, gate: Arc<GateState>) -> Self {
        // `check` has kept the arguments inside TpsBudget's asserted ranges.
        let budget = TpsBudget::new(settings.window, settings.min_per_sec, settings.ratio);
        RetryShared {
            settings,
            gate,
            budget,
            retries: AtomicU64::new(0),
            refused_by_budget: AtomicU64::new(0),
            seed: AtomicU64::new(0x2545_F491_4F6C_DD1D),
            last_withdrawal: AtomicU64::new(0),
            born: tokio::time::Instant::now(),
        }
    }

    /// Retries made, and retries the budget refused.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.retries.load(Ordering::Relaxed),
            self.refused_by_budget.load(Ordering::Relaxed),
        )
    }

    fn jitter(&self, max: Duration) -> Duration {
        let mut z = self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(z % nanos.saturating_add(1))
    }
}

/// The policy; one clone per request (tower clones it in `call`).
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    shared: Option<Arc<RetryShared>>,
    /// The origin's breaker: no retry is even attempted while it is not closed.
    breaker: Breaker,
    attempt: u32,
    deposited: bool,
    /// Whether an attempt so far reached the upstream (not a failed connect, nor a request
    /// handed back unwritten, nor a refusal made here).
    reached: bool,
    /// What the previous attempt got, in words, for a retry that is then refused here.
    last: Option<String>,
}

impl RetryPolicy {
    pub(crate) fn new(shared: Option<Arc<RetryShared>>, breaker: Breaker) -> Self {
        RetryPolicy {
            shared,
            breaker,
            attempt: 0,
            deposited: false,
            reached: false,
            last: None,
        }
    }
}

/// Refused inside the client: the request never left.
fn refused_inside(e: &BoxError) -> bool {
    e.is::<CircuitOpen>()
        || e.is::<ShuttingDown>()
        || e.is::<RateLimited>()
        || e.is::<PoolFull>()
        || e.is::<PoolClosed>()
}

/// Stands in for a result while it is being moved.
#[derive(Debug)]
struct Placeholder;

impl std::fmt::Display for Placeholder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(moved)")
    }
}

impl std::error::Error for Placeholder {}

/// A request that reached the upstream, whose retry was then refused inside the client (the
/// breaker opened meanwhile, the pool closed, the rate limit would wait too long). The
/// `source` is the refusal.
#[derive(Debug)]
pub struct RetryRefused {
    attempts: u32,
    last: Option<String>,
    refusal: BoxError,
}

impl RetryRefused {
    /// Attempts that reached the upstream.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// What the last of them got, in words (`answered 502 Bad Gateway`, or its error).
    pub fn last(&self) -> Option<&str> {
        self.last.as_deref()
    }
}

impl std::fmt::Display for RetryRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sent {} time(s)", self.attempts)?;
        if let Some(last) = &self.last {
            write!(f, " (last {last})")?;
        }
        write!(f, "; the retry was refused: {}", self.refusal)
    }
}

impl std::error::Error for RetryRefused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.refusal as &(dyn std::error::Error + 'static))
    }
}

fn idempotent<B>(req: &Request<B>) -> bool {
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    ) || req.extensions().get::<Idempotent>().is_some()
}

/// Why to retry, if at all.
enum Verdict {
    No,
    After(Duration),
    Backoff,
}

fn verdict<B>(req: &Request<Body>, result: &Result<Response<B>, BoxError>, s: &Retries) -> Verdict {
    match result {
        Ok(res) => {
            if !idempotent(req) {
                return Verdict::No;
            }
            match res.status() {
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                    // The same figure the origin's hold uses: `Retry-After`, or an exhausted
                    // `RateLimit` policy if longer (a retry would wait that out in the hold).
                    match crate::gate::upstream_delay(res) {
                        Some(d) if d <= s.max_retry_after => Verdict::After(d),
                        Some(_) => Verdict::No,
                        None => Verdict::Backoff,
                    }
                }
                StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => Verdict::Backoff,
                _ => Verdict::No,
            }
        }
        Err(e) => {
            if refused_inside(e) {
                Verdict::No
            } else if e.is::<ConnectError>() || e.is::<ConnectTimeout>() || e.is::<RequestNotSent>()
            {
                // Never left this process: safe whatever the method.
                Verdict::Backoff
            } else if idempotent(req) {
                // A timeout, or a connection lost after the request was written.
                Verdict::Backoff
            } else {
                Verdict::No
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A retry's backoff: its delay, or the client's shutdown deadline, whichever comes first
    /// (the retry is then refused by the stack below).
    pub(crate) struct Backoff {
        #[pin]
        sleep: Sleep,
        cut: CutWait,
    }
}

impl Future for Backoff {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if Pin::new(this.cut).poll(cx).is_ready() {
            return Poll::Ready(());
        }
        this.sleep.poll(cx)
    }
}

impl<B> Policy<Request<Body>, Response<B>, BoxError> for RetryPolicy {
    type Future = Backoff;

    fn retry(
        &mut self,
        req: &mut Request<Body>,
        result: &mut Result<Response<B>, BoxError>,
    ) -> Option<Backoff> {
        let shared = self.shared.as_ref()?;
        let refused_here = match result {
            Ok(_) => false,
            Err(e) => refused_inside(e),
        };
        let reached = match result {
            Ok(_) => true,
            Err(e) => {
                !refused_here
                    && !e.is::<ConnectError>()
                    && !e.is::<ConnectTimeout>()
                    && !e.is::<RequestNotSent>()
            }
        };
        self.reached |= reached;
        // Only a request that reached the upstream pays into the budget: refusals made here,
        // and attempts that never left, must not fund retries.
        if !self.deposited && reached {
            shared.budget.deposit();
            self.deposited = true;
        }
        if refused_here && self.attempt > 0 && self.reached {
            // A retry refused here (the breaker opened meanwhile, the pool closed, ...): the
            // request did reach the upstream before, so say that, not "never sent".
            if let Err(e) = std::mem::replace(result, Err(Box::new(Placeholder))) {
                *result = Err(Box::new(RetryRefused {
                    attempts: self.attempt,
                    last: self.last.take(),
                    refusal: e,
                }));
            }
            return None;
        }
        let s = &shared.settings;
        if self.attempt >= s.max_retries {
            return None;
        }
        if !matches!(
            self.breaker.state(),
            BreakerState::Closed | BreakerState::Disabled
        ) {
            // The answer just seen may have opened it: the caller gets that answer, not a
            // refusal of the retry.
            return None;
        }
        let delay = match verdict(req, result, s) {
            Verdict::No => return None,
            Verdict::After(d) => d,
            Verdict::Backoff => {
                let cap = s
                    .base
                    .saturating_mul(1u32 << self.attempt.min(20))
                    .min(s.max_backoff);
                shared.jitter(cap)
            }
        };
        if !shared.budget.withdraw() {
            shared.refused_by_budget.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(uri = %req.uri(), "retry budget spent; not retrying");
            return None;
        }
        // The latest, whichever of two racing retries stores last.
        shared.last_withdrawal.fetch_max(
            u64::try_from(shared.born.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1,
            Ordering::Relaxed,
        );
        self.attempt += 1;
        self.last = Some(match result {
            Ok(res) => format!("answered {}", res.status()),
            Err(e) => e.to_string(),
        });
        shared.retries.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(uri = %req.uri(), attempt = self.attempt, ?delay, "retrying");
        Some(Backoff {
            sleep: tokio::time::sleep(delay),
            cut: shared.gate.cut_wait(),
        })
    }

    fn clone_request(&mut self, req: &Request<Body>) -> Option<Request<Body>> {
        let shared = self.shared.as_ref()?;
        if shared.settings.max_retries == 0 {
            return None;
        }
        // The body is bytes in memory: the copy is the same bytes, not a re-read stream.
        let mut copy = Request::new(req.body().clone());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }
}
