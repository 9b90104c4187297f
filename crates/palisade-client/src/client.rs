//! [`Client`]: the stack, the per-origin parts, and the request methods.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::USER_AGENT;
use http::{HeaderValue, Request, Uri};
use hyper::body::Incoming;
use palisade_breaker::classify::{Classify, Outcome};
use palisade_breaker::http::HttpClassifier;
use palisade_breaker::{Breaker, CircuitBreaker, CircuitBreakerLayer};
use palisade_pool::{CloseReport, Pool, PoolClosed, PoolFull, PoolHandle, PoolLayer};
use palisade_ratelimit::{Quota, RateLimit, RateLimitLayer, RateLimited, RateLimiter};
use palisade_shutdown::{ShutdownHandle, ShutdownLayer, ShutdownService, ShuttingDown};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::retry::{Retry, RetryLayer};
use tower::util::{Either, Oneshot};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

use crate::builder::{ClientBuilder, TransitionListener};
use crate::connect::{origin_key, Connector, ExchangeStarted, Pooled};
use crate::error::{BoxError, Error};
use crate::gate::{GateState, HoldWait, HostGate};
use crate::origin::Origin;
use crate::probe::ProbeWatch;
use crate::response::Response;
use crate::retry::{Retries, RetryPolicy, RetryShared};
use crate::Body;

type KeyFn = fn(&Request<Body>) -> Origin;
type PoolService = Pool<Connector, Origin, KeyFn>;
/// One origin's stack: hold wait → breaker → probe marks → rate limit → gate → (shared) pool →
/// connection, whose every exchange is bounded by the timeout ([`Pooled`]).
type Guarded =
    HoldWait<CircuitBreaker<ProbeWatch<RateLimit<HostGate<PoolService>>>, StackClassifier>>;
/// Without retries, no `Retry` layer at all: tower's clones the whole stack below it for every
/// request.
type HostService = Either<Boxed<Retry<RetryPolicy, Guarded>>, Guarded>;

/// A service whose future is boxed: the retry branch's future holds a whole copy of the stack
/// and the request, and unboxed it would make every request's future that large.
#[derive(Clone)]
pub(crate) struct Boxed<S>(S);

type BoxedFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl<S> Service<Request<Body>> for Boxed<S>
where
    S: Service<Request<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxedFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Box::pin(self.0.call(req))
    }
}

/// The breaker's classifier: HTTP's (5xx, timeouts, connection errors are failures), except
/// that a request refused inside this client — by the rate limiter (`max_rate_wait`), a full
/// connection queue, or the shutdown closing the pool — never reached the upstream and says
/// nothing about its health: it is ignored, not counted as a failure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StackClassifier(HttpClassifier);

impl<B> Classify<http::Response<B>, BoxError> for StackClassifier {
    fn classify(&self, result: &Result<http::Response<B>, BoxError>) -> Outcome {
        match result {
            Err(e)
                if e.is::<RateLimited>()
                    || e.is::<PoolFull>()
                    || e.is::<PoolClosed>()
                    || e.is::<ShuttingDown>() =>
            {
                Outcome::Ignore
            }
            _ => self.0.classify(result),
        }
    }

    /// The exchange's own time, when the connection stamped it: the breaker's clock would
    /// also count the wait for a rate-limit turn, a hold or a pooled connection.
    fn elapsed(&self, result: &Result<http::Response<B>, BoxError>) -> Option<Duration> {
        let started = result
            .as_ref()
            .ok()?
            .extensions()
            .get::<ExchangeStarted>()?;
        Some(started.0.elapsed())
    }
}

/// Everything `build` checked.
pub(crate) struct Settings {
    pub(crate) retries: Option<Retries>,
    pub(crate) base: Uri,
    pub(crate) origin: Origin,
    pub(crate) quota: Quota,
    pub(crate) max_rate_wait: Option<Duration>,
    pub(crate) pool: palisade_pool::Config,
    pub(crate) breaker: palisade_breaker::Config,
    pub(crate) on_transition: Option<TransitionListener>,
    pub(crate) timeout: Duration,
    pub(crate) retry_after_cap: Duration,
    pub(crate) max_origins: usize,
    pub(crate) user_agent: HeaderValue,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

/// The per-origin parts, for inspection: [`Client::host`].
#[derive(Clone)]
pub struct Host {
    origin: Origin,
    service: HostService,
    breaker: Breaker,
    limiter: RateLimiter,
    gate: Arc<GateState>,
    retry: Option<Arc<RetryShared>>,
    /// References to `gate` when nothing uses this origin: every request in flight, connection
    /// and `Host` handle holds one more.
    idle_refs: usize,
}

impl Host {
    /// The origin.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The origin's circuit breaker: state, counts, force open or closed.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The origin's rate limiter: remaining burst, next turn, waiting requests, quota changes.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Until when the upstream asked the client to hold off (`Retry-After`, `RateLimit`), if
    /// that is still ahead.
    pub fn held_until(&self) -> Option<Instant> {
        self.gate.hold_until()
    }

    /// How many times the upstream's answers pushed the hold further.
    pub fn holds(&self) -> u64 {
        self.gate.holds()
    }

    /// Retries made to this origin, and retries its budget refused (both 0 without
    /// [`ClientBuilder::retries`](crate::ClientBuilder::retries)).
    pub fn retries(&self) -> (u64, u64) {
        self.retry.as_ref().map_or((0, 0), |r| r.counts())
    }
}

impl Host {
    /// Nothing would be lost by forgetting this origin: a fresh one would be the same.
    fn is_quiet(&self, quota: Quota) -> bool {
        // Nothing in flight first: a retry that withdrew and finished between two later reads
        // is then seen by `is_rested`.
        Arc::strong_count(&self.gate) <= self.idle_refs
            && self.limiter.quota() == quota
            && self.retry.as_ref().map_or(true, |r| r.is_rested())
            && self.breaker.state() == palisade_breaker::State::Closed
            // Failures still counting towards a trip are state a fresh breaker lacks (a run of
            // failures only under a consecutive-failure rule: without one it never resets, and
            // one failure would pin the origin for ever).
            && (self.breaker.config().consecutive_failures().is_none()
                || self.breaker.consecutive_failures() == 0)
            && self.breaker.counts().failures == 0
            && self.breaker.counts().slow == 0
            && self.gate.hold_until().is_none()
            && self.limiter.remaining_burst() >= self.limiter.quota().burst_size()
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("origin", &self.origin)
            .field("breaker", &self.breaker.state())
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

/// Makes and keeps the per-origin stacks.
struct Hosts {
    base: Host,
    others: Mutex<Others>,
    make: MakeHost,
    /// [`ClientBuilder::max_origins`](crate::ClientBuilder::max_origins).
    max_origins: usize,
}

impl Hosts {
    /// The shutdown deadline has passed: every origin fails its requests not yet sent.
    fn cut_off(&self) {
        self.base.gate.cut_off();
        let others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        for host in others.map.values() {
            host.gate.cut_off();
        }
    }
}

/// The origins other than the base URL's.
#[derive(Default)]
struct Others {
    map: HashMap<Origin, Host>,
    /// The size at which a new origin makes the quiet ones be forgotten: `max_origins`, or
    /// twice what a sweep left, so that sweeps that free little stay rare.
    sweep_at: usize,
}

struct MakeHost {
    retries: Option<Retries>,
    quota: Quota,
    max_rate_wait: Option<Duration>,
    breaker: palisade_breaker::Config,
    on_transition: Option<TransitionListener>,
    retry_after_cap: Duration,
    pool: PoolLayer<Origin, Pooled, KeyFn>,
    connector: Connector,
}

impl MakeHost {
    fn make(&self, origin: Origin) -> Host {
        let limiter = RateLimiter::new(self.quota);
        let gate = Arc::new(GateState::new(limiter.clone(), self.retry_after_cap));
        let breaker = match &self.on_transition {
            Some(listener) => {
                let listener = listener.clone();
                let o = origin.clone();
                Breaker::with_listener(self.breaker.clone(), move |t| listener(&o, t))
            }
            None => Breaker::new(self.breaker.clone()),
        };
        let mut rate = RateLimitLayer::from_limiter(limiter.clone());
        if let Some(wait) = self.max_rate_wait {
            rate = rate.max_wait(wait);
        }
        let gate_state = gate.clone();
        let wait_state = gate.clone();
        let max_rate_wait = self.max_rate_wait;
        // Its connections check the hold just before sending.
        self.connector.register_hold(&origin, gate.clone());
        // One retry budget per origin, outside its breaker: a retry meets the open circuit like
        // any request, and a refusal is never retried.
        let retry = self
            .retries
            .clone()
            .map(|r| Arc::new(RetryShared::new(r, gate.clone())));
        let guarded = ServiceBuilder::new()
            // A hold is waited out before the breaker hands out a ticket (a probe held for
            // longer than the breaker's patience would be taken for a hung one).
            .layer_fn(move |s| HoldWait::new(s, wait_state.clone(), max_rate_wait))
            .layer(
                CircuitBreakerLayer::from_breaker(breaker.clone())
                    .with_classifier(StackClassifier(HttpClassifier::server_errors())),
            )
            // A probe that waits below for a rate-limit turn or a connection is not hung: the
            // breaker's patience counts from when its connection sends it.
            .layer_fn({
                let breaker = breaker.clone();
                move |s| ProbeWatch::new(s, breaker.clone())
            })
            .layer(rate)
            .layer_fn(move |s| HostGate::new(s, gate_state.clone(), max_rate_wait))
            .service(self.pool.layer(self.connector.clone()));
        let service = match &retry {
            Some(_) => Either::Left(Boxed(
                RetryLayer::new(RetryPolicy::new(retry.clone(), breaker.clone())).layer(guarded),
            )),
            None => Either::Right(guarded),
        };
        // Now: this function's `gate`, the hold wait's, the gate layer's and the connector's.
        let idle_refs = Arc::strong_count(&gate);
        Host {
            origin,
            service,
            breaker,
            limiter,
            gate,
            retry,
            idle_refs,
        }
    }
}

impl Hosts {
    /// A clone of the origin's stack (only the stack: this runs for every request).
    fn service(&self, origin: &Origin) -> HostService {
        if *origin == self.base.origin {
            return self.base.service.clone();
        }
        self.get(origin).service
    }

    fn get(&self, origin: &Origin) -> Host {
        if *origin == self.base.origin {
            return self.base.clone();
        }
        let mut others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(host) = others.map.get(origin) {
            return host.clone();
        }
        if others.map.len() >= others.sweep_at.max(self.max_origins) {
            let before = others.map.len();
            others.map.retain(|o, host| {
                let quiet = host.is_quiet(self.make.quota);
                if quiet {
                    self.make.connector.forget_hold(o);
                }
                !quiet
            });
            others.sweep_at = self.max_origins.max(others.map.len().saturating_mul(2));
            tracing::debug!(
                forgotten = before - others.map.len(),
                kept = others.map.len(),
                "client: quiet origins forgotten"
            );
        }
        let host = self.make.make(origin.clone());
        others.map.insert(origin.clone(), host.clone());
        host
    }
}

/// A `GET` of `uri` (a new request's method). Not a builder, each of whose steps moves the
/// request; and made outside [`Client::get`], whose future would otherwise keep a slot for a
/// request it has mutated beside the stack's future.
fn get_request(uri: Uri) -> Request<Body> {
    let mut req = Request::new(Body::default());
    *req.uri_mut() = uri;
    req
}

/// Routes each request to its origin's stack.
#[derive(Clone)]
pub(crate) struct Router {
    hosts: Arc<Hosts>,
}

impl Service<Request<Body>> for Router {
    type Response = http::Response<Incoming>;
    type Error = BoxError;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is per origin, known only from the request: each origin's stack is made
        // ready inside the response future (its rate-limit turn, its breaker's admission).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> RouteFuture {
        #[cfg(not(feature = "tls"))]
        if req
            .uri()
            .scheme()
            .is_some_and(|s| s.as_str().eq_ignore_ascii_case("https"))
        {
            // Refused before any connect: not an upstream failure for the breaker or retries.
            return RouteFuture::Refused {
                error: Some(Error::builder(format!(
                    "request URI {:?} is https, which needs palisade-client's `tls` feature",
                    req.uri().to_string()
                ))),
            };
        }
        if !matches!(
            req.version(),
            http::Version::HTTP_10 | http::Version::HTTP_11 | http::Version::HTTP_2
        ) {
            return RouteFuture::Refused {
                error: Some(Error::builder(format!(
                    "request version {:?}: this client speaks HTTP/1.x",
                    req.version()
                ))),
            };
        }
        let base = &self.hosts.base;
        if base.origin.spelled_in(req.uri()) {
            // Most requests: the base URL's origin, spelled as it is (`get`, `request`).
            return RouteFuture::Routed {
                fut: base.service.clone().oneshot(req),
            };
        }
        match Origin::of(req.uri()) {
            Some(origin) => {
                // The stack below keys its connections by the URI as spelled here.
                origin.respell(req.uri_mut());
                RouteFuture::Routed {
                    fut: self.hosts.service(&origin).oneshot(req),
                }
            }
            None => RouteFuture::Refused {
                error: Some(Error::builder(format!(
                    "request URI {:?} is not an absolute http or https URL",
                    req.uri().to_string()
                ))),
            },
        }
    }
}

pin_project! {
    /// The router's response future: the origin's stack, or the refusal of a request no
    /// origin takes.
    #[project = RouteProj]
    pub(crate) enum RouteFuture {
        Routed { #[pin] fut: Oneshot<HostService, Request<Body>> },
        Refused { error: Option<Error> },
    }
}

impl Future for RouteFuture {
    type Output = Result<http::Response<Incoming>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RouteProj::Routed { fut } => fut.poll(cx),
            RouteProj::Refused { error } => {
                Poll::Ready(Err(Box::new(error.take().expect("polled once"))))
            }
        }
    }
}

/// An HTTP client in front of an API: per origin a circuit breaker, a per-request timeout, a
/// rate limit that waits its turn and obeys `Retry-After`, and a bounded pool of HTTP/1.1
/// connections; a shutdown gate in front of everything.
///
/// Cheap to clone: clones share everything. It is also a
/// `tower::Service<http::Request<Body>>`, so tower and tower-http layers (trace, retry) wrap
/// it.
#[derive(Clone)]
pub struct Client {
    svc: ShutdownService<Router>,
    inner: Arc<ClientInner>,
}

struct ClientInner {
    base: Uri,
    user_agent: HeaderValue,
    shutdown: ShutdownHandle,
    pool: PoolHandle<Origin>,
    hosts: Arc<Hosts>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base)
            .finish_non_exhaustive()
    }
}

/// What [`Client::shutdown`] found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// From the call until it resolved.
    pub elapsed: Duration,
    /// Whether every request in flight finished before the deadline.
    pub drained: bool,
    /// Requests in flight at the call that then completed.
    pub completed: u64,
    /// Requests cut off (dropped by their callers) after the call.
    pub cut_off: u64,
    /// Requests refused after the call.
    pub refused: u64,
    /// Requests still in flight at the deadline: those not yet sent then failed with
    /// [`Error::is_shutdown`], those sent were left to finish within their timeout.
    pub still_in_flight: usize,
    /// What closing the pool found.
    pub pool: CloseReport<Origin>,
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client shut down in {:?}: {} completed, {} cut off, {} refused, {} still in flight \
             at the deadline; {}",
            self.elapsed,
            self.completed,
            self.cut_off,
            self.refused,
            self.still_in_flight,
            self.pool
        )
    }
}

impl Client {
    /// Starts configuring a client for the API at `base_url` (`https://api.example.com/v1`).
    pub fn builder(base_url: impl AsRef<str>) -> ClientBuilder {
        ClientBuilder::new(base_url.as_ref())
    }

    pub(crate) fn from_settings(s: Settings) -> Client {
        // A slow-call rule times the exchange alone (see `StackClassifier::elapsed`).
        let time_exchanges = s.breaker.slow_calls().is_some();
        #[cfg(feature = "tls")]
        let connector = Connector::new(s.timeout, time_exchanges, s.tls);
        #[cfg(not(feature = "tls"))]
        let connector = Connector::new(s.timeout, time_exchanges);
        let pool = PoolLayer::new(s.pool, origin_key as KeyFn);
        let pool_handle = pool.handle();
        let make = MakeHost {
            retries: s.retries,
            quota: s.quota,
            max_rate_wait: s.max_rate_wait,
            breaker: s.breaker,
            on_transition: s.on_transition,
            retry_after_cap: s.retry_after_cap,
            pool,
            connector,
        };
        let hosts = Arc::new(Hosts {
            base: make.make(s.origin),
            others: Mutex::default(),
            make,
            max_origins: s.max_origins,
        });
        let shutdown = ShutdownLayer::new();
        let handle = shutdown.handle();
        Client {
            svc: shutdown.layer(Router {
                hosts: hosts.clone(),
            }),
            inner: Arc::new(ClientInner {
                base: s.base,
                user_agent: s.user_agent,
                shutdown: handle,
                pool: pool_handle,
                hosts,
            }),
        }
    }

    /// The URL for `path`: an absolute URL as it is; otherwise appended to the base URL's path.
    ///
    /// # Errors
    ///
    /// A builder error when the result is not a valid URI.
    pub fn url(&self, path: &str) -> Result<Uri, Error> {
        // A scheme is case-insensitive (RFC 3986): `HTTP://host/` is absolute too.
        let has_prefix = |p: &str| {
            path.get(..p.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(p))
        };
        if has_prefix("http://") || has_prefix("https://") {
            return path
                .parse()
                .map_err(|e| Error::builder_source(format!("URL {path:?}"), e));
        }
        let base = &self.inner.base;
        let prefix = base.path().trim_end_matches('/');
        let rest = path.trim_start_matches('/');
        let mut joined = String::with_capacity(prefix.len() + 1 + rest.len());
        joined.push_str(prefix);
        joined.push('/');
        joined.push_str(rest);
        // The base's scheme and authority are shared, not parsed again.
        let mut parts = http::uri::Parts::default();
        parts.scheme = base.scheme().cloned();
        parts.authority = base.authority().cloned();
        parts.path_and_query = Some(
            http::uri::PathAndQuery::try_from(joined)
                .map_err(|e| Error::builder_source(format!("path {path:?}"), e))?,
        );
        Uri::from_parts(parts).map_err(|e| Error::builder_source(format!("path {path:?}"), e))
    }

    /// `GET` of `path` (relative to the base URL, or absolute).
    ///
    /// # Errors
    ///
    /// See [`Error`]: refused (rate limit, open circuit, shutdown), timed out, connect or
    /// request failure. A response with any status is `Ok`.
    pub async fn get(&self, path: &str) -> Result<Response, Error> {
        let uri = self.url(path)?;
        self.execute(get_request(uri)).await
    }

    /// Sends a request. A relative URI is resolved against the base URL; a `User-Agent` is
    /// added unless the request has one. A URI naming a server without a scheme
    /// (`host:port`), or a version other than HTTP/1.0, 1.1 or 2 (sent as 1.1), is refused as
    /// a builder error before anything is spent.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub async fn request(&self, req: Request<impl Into<Body>>) -> Result<Response, Error> {
        let (mut parts, body) = req.into_parts();
        if parts.uri.scheme().is_none() && parts.uri.authority().is_some() {
            return Err(Error::builder(format!(
                "request URI {:?} has an authority but no scheme: give an absolute URL, or a \
                 path starting with '/' for the base URL",
                parts.uri.to_string()
            )));
        }
        if parts.uri.scheme().is_none() {
            let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = self.url(pq)?;
        }
        self.execute(Request::from_parts(parts, body.into())).await
    }

    /// The configured `User-Agent`, unless the request has one (one lookup of the header).
    fn add_user_agent(&self, req: &mut Request<Body>) {
        req.headers_mut()
            .entry(USER_AGENT)
            .or_insert_with(|| self.inner.user_agent.clone());
    }

    /// Not an `async fn` (nor an `async` block): either would keep its argument, or what it
    /// captured, beside the stack's future for the whole exchange.
    fn execute(&self, mut req: Request<Body>) -> Execute {
        self.add_user_agent(&mut req);
        Execute {
            sent: self.svc.clone().oneshot(req),
        }
    }

    /// The per-origin parts of the base URL's origin.
    pub fn base_host(&self) -> Host {
        self.inner.hosts.base.clone()
    }

    /// The per-origin parts of `origin`, if a request has gone there (the base origin always).
    pub fn host(&self, origin: &Origin) -> Option<Host> {
        if *origin == self.inner.hosts.base.origin {
            return Some(self.base_host());
        }
        let others = self
            .inner
            .hosts
            .others
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        others.map.get(origin).cloned()
    }

    /// The connection pool, shared by all origins: stats per origin and in total.
    pub fn pool(&self) -> &PoolHandle<Origin> {
        &self.inner.pool
    }

    /// Requests in flight (admitted and not yet answered).
    pub fn in_flight(&self) -> usize {
        self.inner.shutdown.in_flight()
    }

    /// Refuses new requests ([`Error::is_shutdown`]), lets those in flight finish for at most
    /// `deadline`, then closes the pool (waiting, within what is left of the deadline, for
    /// connections still reading a body) and reports.
    ///
    /// At the deadline, requests not yet sent — waiting out an upstream's hold, their
    /// rate-limit turn, a retry's backoff or a connection — fail with
    /// [`Error::is_shutdown`]; requests already sent keep their own timeout.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let started = Instant::now();
        self.inner.shutdown.close();
        let drained = tokio::time::timeout(deadline, self.inner.shutdown.drain())
            .await
            .is_ok();
        let still_in_flight = self.inner.shutdown.in_flight();
        if !drained {
            self.inner.hosts.cut_off();
        }
        let left = deadline.saturating_sub(started.elapsed());
        let pool = self.inner.pool.close(left).await;
        let (completed, cut_off, refused) = self.inner.shutdown.counts();
        ShutdownReport {
            elapsed: started.elapsed(),
            drained,
            completed,
            cut_off,
            refused,
            still_in_flight,
            pool,
        }
    }
}

impl Service<Request<Body>> for Client {
    type Response = http::Response<Incoming>;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.svc.poll_ready(cx).map_err(Error::from_stack)
    }

    fn call(&mut self, mut req: Request<Body>) -> ResponseFuture {
        // As `get` and `request` do.
        self.add_user_agent(&mut req);
        ResponseFuture {
            inner: self.svc.call(req),
        }
    }
}

pin_project! {
    /// [`Client::get`]'s and [`Client::request`]'s exchange: the stack's future, its answer
    /// made a [`Response`].
    struct Execute {
        #[pin]
        sent: Oneshot<ShutdownService<Router>, Request<Body>>,
    }
}

impl Future for Execute {
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .sent
            .poll(cx)
            .map(|res| res.map(Response::new).map_err(Error::from_stack))
    }
}

type ShutdownFuture = <ShutdownService<Router> as Service<Request<Body>>>::Future;

pin_project! {
    /// The response future of the client as a `tower::Service`.
    pub struct ResponseFuture {
        #[pin]
        inner: ShutdownFuture,
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<Incoming>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map_err(Error::from_stack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type ShutdownOneshot = Oneshot<ShutdownService<Router>, Request<Body>>;

    /// Every request's future nests the futures of every layer, and each layer's `call` moves
    /// the one below into its own: bytes held twice are copied at every level. The request and
    /// the stack's future are never alive together, so they must share their bytes.
    #[test]
    fn a_request_and_the_future_sending_it_share_their_bytes() {
        let request = std::mem::size_of::<Request<Body>>();
        let pool = std::mem::size_of::<<PoolService as Service<Request<Body>>>::Future>();
        let gate = std::mem::size_of::<<HostGate<PoolService> as Service<Request<Body>>>::Future>();
        assert!(
            gate < pool + request,
            "the gate's future ({gate} bytes) holds the request ({request}) beside the pool's \
             future ({pool})"
        );
        let stack = std::mem::size_of::<ShutdownOneshot>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(async { Client::builder("http://127.0.0.1:1").build() });
        let client = client.unwrap();
        let get = std::mem::size_of_val(&client.get("/"));
        assert!(
            get < stack + request,
            "`get`'s future ({get} bytes) holds a request ({request}) beside the stack's \
             future ({stack})"
        );
    }
}
