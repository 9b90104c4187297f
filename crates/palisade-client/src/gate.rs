//! [`HostGate`]: makes the client obey an upstream that says "not now".
//!
//! It sits right above the pool, so it sees every response of its origin and stands between
//! every request and the wire. A `429` or `503` with `Retry-After`, or any response whose IETF
//! `RateLimit` header says nothing remains (`r=0`) for `t` seconds, sets a "not before" instant
//! for the origin and defers the origin's rate limiter to it: requests not yet admitted wait at
//! the limiter, spending nothing; requests already past it (admitted before the answer came)
//! wait here. So no request reaches the origin before the instant.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::HeaderName;
use http::{Request, Response, StatusCode};
use palisade_ratelimit::{RateLimited, RateLimiter};
use palisade_shutdown::ShuttingDown;
use pin_project_lite::pin_project;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::error::BoxError;
use crate::Body;

/// Per-origin "not before" state shared by the origin's gate services.
#[derive(Debug)]
pub(crate) struct GateState {
    origin: Instant,
    /// Nanoseconds since `origin` before which nothing is sent (0: no hold).
    not_before: AtomicU64,
    limiter: RateLimiter,
    /// Longest hold honoured from one response.
    cap: Duration,
    holds: AtomicU64,
    /// Set when the client's shutdown deadline has passed: requests still waiting for a
    /// hold, a rate-limit turn or a retry's backoff are failed with `ShuttingDown`.
    cut: AtomicBool,
    /// Wakes the waits that watch `cut`.
    cut_notify: Arc<Notify>,
}

impl GateState {
    pub(crate) fn new(limiter: RateLimiter, cap: Duration) -> Self {
        GateState {
            origin: Instant::now(),
            not_before: AtomicU64::new(0),
            limiter,
            cap,
            holds: AtomicU64::new(0),
            cut: AtomicBool::new(false),
            cut_notify: Arc::new(Notify::new()),
        }
    }

    /// The shutdown deadline has passed: fail every request of this origin still waiting to
    /// be sent (a hold, a rate-limit turn, a retry's backoff).
    pub(crate) fn cut_off(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.cut_notify.notify_waiters();
        // Wakes the rate limiter's queue: each waiter is polled again, through `HoldWait`,
        // which refuses it (the quota is unchanged).
        self.limiter.set_quota(self.limiter.quota());
    }

    /// Whether [`cut_off`](Self::cut_off) happened.
    pub(crate) fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Resolves once [`cut_off`](Self::cut_off) has happened.
    pub(crate) fn cut_wait(self: &Arc<Self>) -> CutWait {
        CutWait {
            state: self.clone(),
            notified: Box::pin(self.cut_notify.clone().notified_owned()),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant before which nothing is sent, if it is still ahead.
    pub(crate) fn hold_until(&self) -> Option<Instant> {
        let nb = self.not_before.load(Ordering::Acquire);
        if nb == 0 {
            // Never held: no clock read on the common path.
            return None;
        }
        let now = Instant::now();
        (nb > self.nanos(now)).then(|| self.origin + Duration::from_nanos(nb))
    }

    /// How many holds responses have asked for.
    pub(crate) fn holds(&self) -> u64 {
        self.holds.load(Ordering::Relaxed)
    }

    fn hold(&self, delay: Duration) {
        let delay = delay.min(self.cap);
        let now = Instant::now();
        // The builder bounds the cap; saturate anyway rather than panic on a far instant.
        let until = now
            .checked_add(delay)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400));
        let at = self.nanos(until);
        let prev = self.not_before.fetch_max(at, Ordering::AcqRel);
        if prev < at {
            self.holds.fetch_add(1, Ordering::Relaxed);
            tracing::info!(?delay, "upstream asked to wait; holding requests");
        }
        self.limiter.defer_until(until);
    }

    fn observe<B>(&self, res: &Response<B>) {
        if let Some(d) = upstream_delay(res) {
            self.hold(d);
        }
    }
}

/// How long the upstream asks to be left alone: `Retry-After` on a `429` or `503`, and an
/// exhausted IETF `RateLimit` policy on any answer. Both hold until their time, so the longer
/// wins (a short `Retry-After` does not cut an exhausted policy's reset). The origin's hold
/// and the retry policy both decide from this one figure.
pub(crate) fn upstream_delay<B>(res: &Response<B>) -> Option<Duration> {
    let status = res.status();
    let retry_after =
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            palisade_breaker::http::retry_after(res)
        } else {
            None
        };
    retry_after.max(exhausted_for(res))
}

/// The IETF `RateLimit` header's name, made once: a `&str` would be parsed into a name on
/// every response.
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// From the IETF `RateLimit` header (`"policy";r=0;t=5`): how long nothing remains, when
/// nothing does.
fn exhausted_for<B>(res: &Response<B>) -> Option<Duration> {
    // A list of policies (`"hourly";r=0;t=10, "daily";r=50;t=1000`), on one field line or
    // several (a list field's lines are one list): hold for the longest reset among those with
    // nothing remaining. A line that is not text, or a parameter without a value, is skipped.
    res.headers()
        .get_all(&RATELIMIT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|item| {
            let mut remaining = None;
            let mut reset = None;
            for param in item.split(';').skip(1) {
                let Some((k, val)) = param.trim().split_once('=') else {
                    continue;
                };
                match k.trim() {
                    "r" => remaining = val.trim().parse::<u64>().ok(),
                    "t" => reset = val.trim().parse::<u64>().ok(),
                    _ => {}
                }
            }
            match (remaining, reset) {
                (Some(0), Some(t)) if t > 0 => Some(t),
                _ => None,
            }
        })
        .max()
        .map(Duration::from_secs)
}

/// The gate as a service around the pool.
#[derive(Debug, Clone)]
pub(crate) struct HostGate<S> {
    inner: S,
    state: Arc<GateState>,
    /// The client's `max_rate_wait`, for a hold met at the connection too.
    max_wait: Option<Duration>,
}

impl<S> HostGate<S> {
    pub(crate) fn new(inner: S, state: Arc<GateState>, max_wait: Option<Duration>) -> Self {
        HostGate {
            inner,
            state,
            max_wait,
        }
    }
}

impl<S> Service<Request<Body>> for HostGate<S>
where
    S: Service<Request<Body>, Response = Response<hyper::body::Incoming>, Error = BoxError> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = GateFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The readied service goes into the future (which may have to send more than once, if
        // the connection it is handed finds a hold in force); a clone stays here.
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        let sleep = self
            .state
            .hold_until()
            .map(|t| Box::pin(tokio::time::sleep_until(t)));
        GateFuture {
            sleep,
            inner,
            ready: true,
            step: Step::Unsent { req: Some(req) },
            state: self.state.clone(),
            max_wait: self.max_wait,
            cut: None,
        }
    }
}

pin_project! {
    /// The gate's response future: waits out a hold, sends, and if the connection it was
    /// handed found a hold begun meanwhile, waits that out and sends again; then reads the
    /// answer.
    pub(crate) struct GateFuture<S: Service<Request<Body>>> {
        // Boxed: only a hold arms it, so the common path's future stays small.
        sleep: Option<Pin<Box<Sleep>>>,
        inner: S,
        // Whether `inner` is known ready (it was readied before `call`).
        ready: bool,
        // The request and then its response future: never both, so they share their bytes
        // (the request alone is 256 bytes, and every future above holds this one).
        #[pin]
        step: Step<S::Future>,
        state: Arc<GateState>,
        max_wait: Option<Duration>,
        // Made while a hold is waited out here: ends the wait at the shutdown deadline.
        cut: Option<CutWait>,
    }
}

pin_project! {
    /// Where a [`GateFuture`] is: its request not sent yet (or handed back by a hold), or sent.
    #[project = StepProj]
    enum Step<F> {
        Unsent { req: Option<Request<Body>> },
        Sent { #[pin] fut: F },
        Done,
    }
}

impl<S> Future for GateFuture<S>
where
    S: Service<Request<Body>, Response = Response<hyper::body::Incoming>, Error = BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Some(sleep) = this.sleep.as_mut() {
                // As `HoldWait` does above: a hold longer than `max_rate_wait` is refused, and
                // the shutdown deadline ends the wait.
                if let Some(refusal) = refusal(this.state, *this.max_wait, sleep.deadline()) {
                    return Poll::Ready(Err(refusal.into_error()));
                }
                let cut = this.cut.get_or_insert_with(|| this.state.cut_wait());
                if Pin::new(cut).poll(cx).is_ready() {
                    return Poll::Ready(Err(Box::new(ShuttingDown::default())));
                }
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // A later answer may have pushed the hold further.
                if let Some(until) = this.state.hold_until() {
                    *this.sleep = Some(Box::pin(tokio::time::sleep_until(until)));
                    continue;
                }
                *this.sleep = None;
            }
            let res = match this.step.as_mut().project() {
                StepProj::Unsent { req } => {
                    if !*this.ready {
                        match this.inner.poll_ready(cx) {
                            Poll::Ready(Ok(())) => {}
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                    *this.ready = false;
                    let req = req.take().expect("a request to send");
                    this.step.set(Step::Sent {
                        fut: this.inner.call(req),
                    });
                    continue;
                }
                StepProj::Sent { fut } => match fut.poll(cx) {
                    Poll::Ready(res) => res,
                    Poll::Pending => return Poll::Pending,
                },
                StepProj::Done => panic!("GateFuture polled after completion"),
            };
            this.step.set(Step::Done);
            match res {
                Ok(res) => {
                    this.state.observe(&res);
                    return Poll::Ready(Ok(res));
                }
                Err(e) => match e.downcast::<Held>() {
                    // Not sent: a hold began while it waited for its connection.
                    Ok(held) => {
                        let held = *held;
                        this.step.set(Step::Unsent {
                            req: Some(held.req),
                        });
                        *this.sleep = Some(Box::pin(tokio::time::sleep_until(held.until)));
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                },
            }
        }
    }
}

/// A connection found a hold in force just before sending: the request, unsent, and the end
/// of the hold. Caught by [`HostGate`], which waits and sends again; never seen by callers.
pub(crate) struct Held {
    pub(crate) until: Instant,
    pub(crate) req: Request<Body>,
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("until", &self.until)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("held by the upstream's Retry-After; not sent")
    }
}

impl std::error::Error for Held {}

/// Resolves once the origin's requests are cut off at the shutdown deadline.
pub(crate) struct CutWait {
    state: Arc<GateState>,
    notified: Pin<Box<OwnedNotified>>,
}

impl fmt::Debug for CutWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CutWait").finish_non_exhaustive()
    }
}

impl Future for CutWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Registered before the flag is read: a cut between the two still wakes this.
        self.notified.as_mut().enable();
        if self.state.is_cut() {
            return Poll::Ready(());
        }
        self.notified.as_mut().poll(cx)
    }
}

/// Waits out a hold in `poll_ready`, before the layers below take anything — above all before
/// the breaker hands out a probe ticket, which a long hold would otherwise make look hung.
#[derive(Debug)]
pub(crate) struct HoldWait<S> {
    inner: S,
    state: Arc<GateState>,
    /// The client's `max_rate_wait`: a hold ending further away than this refuses at once.
    max_wait: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Made while a hold is waited out: ends the wait at the shutdown deadline.
    cut: Option<CutWait>,
    /// A refusal decided in `poll_ready`, answered by the `call` that follows (as the rate
    /// limiter and the breaker do): an error from `poll_ready` itself would bypass tower's
    /// `Retry` policy, which reports a refused retry of a request already sent.
    refusal: Option<Refusal>,
}

impl<S: Clone> Clone for HoldWait<S> {
    fn clone(&self) -> Self {
        HoldWait {
            inner: self.inner.clone(),
            state: self.state.clone(),
            max_wait: self.max_wait,
            sleep: None,
            cut: None,
            refusal: None,
        }
    }
}

impl<S> HoldWait<S> {
    pub(crate) fn new(inner: S, state: Arc<GateState>, max_wait: Option<Duration>) -> Self {
        HoldWait {
            inner,
            state,
            max_wait,
            sleep: None,
            cut: None,
            refusal: None,
        }
    }
}

impl<S, R> Service<R> for HoldWait<S>
where
    S: Service<R>,
    S::Error: From<RateLimited> + From<ShuttingDown>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = HoldFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.refusal = None;
        if self.state.is_cut() {
            self.sleep = None;
            self.cut = None;
            self.refusal = Some(Refusal::Cut);
            return Poll::Ready(Ok(()));
        }
        while let Some(until) = self.state.hold_until() {
            // As the rate limiter does with its own turn: a wait longer than `max_wait` is
            // refused at once, with the time it would have taken.
            if let Some(refusal) = refusal(&self.state, self.max_wait, until) {
                self.sleep = None;
                self.refusal = Some(refusal);
                return Poll::Ready(Ok(()));
            }
            match &mut self.sleep {
                Some(sleep) if sleep.deadline() == until => {}
                Some(sleep) => sleep.as_mut().reset(until),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(until))),
            }
            // A hold outlasting the client's shutdown deadline is cut off with it.
            let cut = self.cut.get_or_insert_with(|| self.state.cut_wait());
            if Pin::new(cut).poll(cx).is_ready() {
                self.sleep = None;
                self.cut = None;
                self.refusal = Some(Refusal::Cut);
                return Poll::Ready(Ok(()));
            }
            let sleep = self.sleep.as_mut().expect("set above");
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        self.sleep = None;
        self.cut = None;
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        match self.refusal.take() {
            Some(Refusal::RateLimited(r)) => HoldFuture::refused(r.into()),
            Some(Refusal::Cut) => HoldFuture::refused(ShuttingDown::default().into()),
            None => HoldFuture::called(self.inner.call(req)),
        }
    }
}

/// Why a request is refused before it is sent: the hold is longer than `max_rate_wait`, or
/// the shutdown deadline has passed.
#[derive(Debug)]
pub(crate) enum Refusal {
    RateLimited(RateLimited),
    Cut,
}

impl Refusal {
    fn into_error(self) -> BoxError {
        match self {
            Refusal::RateLimited(r) => Box::new(r),
            Refusal::Cut => Box::new(ShuttingDown::default()),
        }
    }
}

/// The refusal, if any, for a request that would wait until `until` for a hold.
fn refusal(state: &GateState, max_wait: Option<Duration>, until: Instant) -> Option<Refusal> {
    if state.is_cut() {
        return Some(Refusal::Cut);
    }
    let max = max_wait?;
    let left = until.saturating_duration_since(Instant::now());
    (left > max).then(|| Refusal::RateLimited(RateLimited::new(left, state.limiter.quota())))
}

pin_project! {
    /// [`HoldWait`]'s response future: the inner call, or the refusal decided in `poll_ready`.
    #[project = HoldProj]
    pub(crate) enum HoldFuture<F, E> {
        Called { #[pin] fut: F },
        Refused { err: Option<E> },
    }
}

impl<F, E> HoldFuture<F, E> {
    fn called(fut: F) -> Self {
        HoldFuture::Called { fut }
    }

    fn refused(err: E) -> Self {
        HoldFuture::Refused { err: Some(err) }
    }
}

impl<F, T, E> Future for HoldFuture<F, E>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            HoldProj::Called { fut } => fut.poll(cx),
            HoldProj::Refused { err } => {
                Poll::Ready(Err(err.take().expect("HoldFuture polled after completion")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(status: u16, headers: &[(&str, &str)]) -> Response<()> {
        let mut b = Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn reads_the_ietf_header() {
        assert_eq!(
            exhausted_for(&res(200, &[("ratelimit", "\"default\";r=0;t=5")])),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            exhausted_for(&res(200, &[("ratelimit", "\"default\";r=3;t=5")])),
            None
        );
        assert_eq!(
            exhausted_for(&res(200, &[("ratelimit", "\"default\";r=0;t=0")])),
            None
        );
        assert_eq!(exhausted_for(&res(200, &[("ratelimit", "garbage")])), None);
        assert_eq!(exhausted_for(&res(200, &[])), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_with_retry_after_holds_and_defers_the_limiter() {
        let limiter = RateLimiter::new(palisade_ratelimit::Quota::per_second(100).unwrap());
        let state = GateState::new(limiter.clone(), Duration::from_secs(60));
        assert!(state.hold_until().is_none());
        state.observe(&res(429, &[("retry-after", "2")]));
        let until = state.hold_until().expect("held");
        assert_eq!(until - Instant::now(), Duration::from_secs(2));
        assert!(limiter.next_conforming() >= until);
        // A 200 without headers changes nothing; a 503 without Retry-After neither.
        state.observe(&res(200, &[]));
        state.observe(&res(503, &[]));
        assert_eq!(state.hold_until(), Some(until));
        // The cap bounds a huge Retry-After.
        state.observe(&res(503, &[("retry-after", "86400")]));
        assert_eq!(
            state.hold_until().unwrap() - Instant::now(),
            Duration::from_secs(60)
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(state.hold_until().is_none());
    }
}
