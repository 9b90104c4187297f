//! The builder, the running upstream, and its server.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::ScriptedBody;
use crate::record::{Outcome, Record};
use crate::script::{secs_rounded_up, Latency, Limiter, Outage, RateLimit};
use crate::Error;
#[cfg(feature = "tls")]
use crate::TlsCert;

/// The `RateLimit` header of draft-ietf-httpapi-ratelimit-headers.
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// The `RateLimit-Policy` header of the same draft.
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The header a request's id is read from.
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The most chunks `slow_body` accepts: the body is padded to one byte per chunk.
const MAX_SLOW_BODY_CHUNKS: usize = 1 << 20;

// ===== Builder =====

/// The script of an [`Upstream`]; [`Builder::start`] checks it and starts serving.
///
/// Each request is numbered on arrival (1, 2, … across all connections) and handled by the
/// first rule that applies, in this order:
///
/// 1. **reset** ([`reset_requests`](Self::reset_requests), [`reset_every`](Self::reset_every)):
///    the connection is closed with a TCP `RST`, no answer;
/// 2. **hang** ([`hang_requests`](Self::hang_requests), [`hang_path`](Self::hang_path)): never
///    answered; the connection stays open until the client closes it or the upstream stops;
/// 3. **outage** ([`outage`](Self::outage)): the outage's `5xx`;
/// 4. **rate limit** ([`rate_limit`](Self::rate_limit)): `429` with `Retry-After` when over
///    quota; the IETF `RateLimit` headers on `200`s and `429`s;
/// 5. otherwise `200` with `{"id":"<id>","n":<n>}` (`Content-Type: application/json`; the id
///    is the `x-request-id` header, else the path and query). A `429` or `5xx` body adds
///    `"error":"too many requests"` or `"error":"outage"`.
///
/// Every answer waits for the [latency](Self::latency) first; `200` bodies are sent
/// [slowly](Self::slow_body) if asked; the answer to the
/// [`close_after`](Self::close_after)-th request on a connection carries `Connection: close`
/// and the upstream closes the connection after it.
///
/// Nothing is random unless asked for, and what is (a uniform latency) is seeded, so a script
/// plays the same way every run. Configuration errors are reported by
/// [`start`](Self::start) as [`Error::Config`], never as panics.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Builder {
    rate_limit: Option<RateLimit>,
    outages: Vec<Outage>,
    latency: Option<Latency>,
    reset_requests: BTreeSet<u64>,
    reset_every: Option<u64>,
    close_after: Option<u64>,
    hang_requests: BTreeSet<u64>,
    hang_paths: Vec<String>,
    slow_body: Option<(usize, Duration)>,
    #[cfg(feature = "tls")]
    tls_names: Option<Vec<String>>,
}

impl Builder {
    /// An upstream that answers every request `200`.
    pub fn new() -> Self {
        Builder::default()
    }

    /// Its own rate limit: `quota` requests per fixed `window`
    /// ([`RateLimit::fixed_window`]); beyond it, `429 Too Many Requests`.
    pub fn rate_limit(self, quota: u64, window: Duration) -> Self {
        self.rate_limit_with(RateLimit::fixed_window(quota, window))
    }

    /// Its own rate limit, fixed window or GCRA with a burst ([`RateLimit`]). Replaces any
    /// earlier one.
    pub fn rate_limit_with(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Adds an outage: requests in a time or request-number window get a `5xx`. Can be called
    /// several times; the first outage that covers a request answers it.
    pub fn outage(mut self, outage: Outage) -> Self {
        self.outages.push(outage);
        self
    }

    /// Waits this long before each answer (fixed, or uniform and seeded). Replaces any earlier
    /// one.
    pub fn latency(mut self, latency: Latency) -> Self {
        self.latency = Some(latency);
        self
    }

    /// Resets the connection (closes it with `RST`, no answer) for these request numbers
    /// (1-based; e.g. `[3, 8]` or `10..20`, held as a set: for periodic resets use
    /// [`reset_every`](Self::reset_every)). Adds to earlier calls.
    pub fn reset_requests(mut self, requests: impl IntoIterator<Item = u64>) -> Self {
        self.reset_requests.extend(requests);
        self
    }

    /// Resets the connection for every `every`-th request: numbers `every`, `2·every`, ….
    pub fn reset_every(mut self, every: u64) -> Self {
        self.reset_every = Some(every);
        self
    }

    /// Answers the `requests`-th request on each connection with `Connection: close`, then
    /// closes that connection (a keep-alive limit, as many servers have).
    pub fn close_after(mut self, requests: u64) -> Self {
        self.close_after = Some(requests);
        self
    }

    /// Never answers these request numbers (1-based). Adds to earlier calls.
    pub fn hang_requests(mut self, requests: impl IntoIterator<Item = u64>) -> Self {
        self.hang_requests.extend(requests);
        self
    }

    /// Never answers a request for this path (exact match, query ignored; starts with `/`).
    /// Adds to earlier calls.
    pub fn hang_path(mut self, path: impl Into<String>) -> Self {
        self.hang_paths.push(path.into());
        self
    }

    /// Sends each `200` body in `chunks` pieces with `delay` between two of them (the head at
    /// once). The JSON body is padded with trailing spaces to at least `chunks` bytes, so the
    /// count is exact.
    pub fn slow_body(mut self, chunks: usize, delay: Duration) -> Self {
        self.slow_body = Some((chunks, delay));
        self
    }

    /// Serves HTTPS with a certificate for `localhost` and `127.0.0.1`, signed by a CA generated
    /// for this upstream ([`Upstream::tls`] has both, to trust in a client).
    #[cfg(feature = "tls")]
    pub fn tls(self) -> Self {
        self.tls_names(["localhost", "127.0.0.1"])
    }

    /// Serves HTTPS with a certificate for these names (DNS names or IP addresses) instead: e.g.
    /// `["wrong.example"]`, for a client that must refuse it when it connects to `localhost`.
    #[cfg(feature = "tls")]
    pub fn tls_names<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tls_names = Some(names.into_iter().map(Into::into).collect());
        self
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(limit) = &self.rate_limit {
            limit.validate()?;
        }
        for outage in &self.outages {
            outage.validate()?;
        }
        if let Some(latency) = &self.latency {
            latency.validate()?;
        }
        if self.reset_requests.contains(&0) {
            return Err("reset_requests: request numbers start at 1, got 0".into());
        }
        if self.hang_requests.contains(&0) {
            return Err("hang_requests: request numbers start at 1, got 0".into());
        }
        if self.reset_every == Some(0) {
            return Err("reset_every: must be at least 1 (1 resets every request)".into());
        }
        if self.close_after == Some(0) {
            return Err("close_after: must be at least 1 request".into());
        }
        if let Some((0, _)) = self.slow_body {
            return Err("slow_body: must send at least 1 chunk".into());
        }
        if let Some((chunks, _)) = self.slow_body {
            if chunks > MAX_SLOW_BODY_CHUNKS {
                return Err(format!(
                    "slow_body: at most {MAX_SLOW_BODY_CHUNKS} chunks (the body is padded to one byte per chunk), got {chunks}"
                ));
            }
        }
        if let Some(path) = self.hang_paths.iter().find(|p| !p.starts_with('/')) {
            return Err(format!("hang_path: a path starts with '/', got {path:?}"));
        }
        #[cfg(feature = "tls")]
        if let Some(names) = &self.tls_names {
            if names.is_empty() {
                return Err("tls_names: the certificate needs at least one name".into());
            }
        }
        Ok(())
    }

    /// Checks the script, binds `127.0.0.1:0` and starts serving (in tasks on the current
    /// tokio runtime). Time-based rules count from now, on the tokio clock.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid script, [`Error::Io`] if binding fails, [`Error::Tls`]
    /// if the certificate cannot be made.
    pub async fn start(self) -> Result<Upstream, Error> {
        self.validate().map_err(Error::Config)?;
        #[cfg(feature = "tls")]
        let tls = self
            .tls_names
            .as_deref()
            .map(TlsCert::generate)
            .transpose()?;
        #[cfg(feature = "tls")]
        let acceptor: Acceptor = tls.as_ref().map(TlsCert::acceptor).transpose()?;
        #[cfg(not(feature = "tls"))]
        let acceptor: Acceptor = None;

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let limiter = self.rate_limit.map(Limiter::new);
        let shared = Arc::new(Shared {
            script: self,
            started: Instant::now(),
            state: Mutex::new(State {
                received: 0,
                records: Vec::new(),
                limiter,
            }),
            requests: watch::Sender::new(0),
            open: watch::Sender::new(0),
            max_open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
        });
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(accept_loop(
            listener,
            Arc::clone(&shared),
            cancel.clone(),
            tracker.clone(),
            acceptor,
        ));
        Ok(Upstream {
            addr,
            shared,
            cancel,
            tracker,
            #[cfg(feature = "tls")]
            tls,
        })
    }

    fn resets(&self, n: u64) -> bool {
        self.reset_requests.contains(&n) || self.reset_every.is_some_and(|k| n % k == 0)
    }

    fn hangs(&self, n: u64, path: &str) -> bool {
        self.hang_requests.contains(&n) || self.hang_paths.iter().any(|p| p == path)
    }
}

// ===== Upstream =====

/// An HTTP/1.1 server on `127.0.0.1` that misbehaves as its [`Builder`] script says, and
/// records what it received.
///
/// Dropping it stops it: the listener and every connection are closed (hung requests
/// included) as soon as their tasks next run; [`shutdown`](Self::shutdown) does the same and
/// waits until they have. The records stay readable after either.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    #[cfg(feature = "tls")]
    tls: Option<TlsCert>,
}

impl Upstream {
    /// A [`Builder`] for the script.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// The address it listens on (`127.0.0.1` and a port the system chose).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` followed by `path_and_query` (a `/` is put in front if it lacks
    /// one); `https://` when serving TLS.
    pub fn url(&self, path_and_query: &str) -> String {
        let slash = if path_and_query.starts_with('/') {
            ""
        } else {
            "/"
        };
        format!("{}://{}{slash}{path_and_query}", self.scheme(), self.addr)
    }

    fn scheme(&self) -> &'static str {
        #[cfg(feature = "tls")]
        if self.tls.is_some() {
            return "https";
        }
        "http"
    }

    /// The certificates it serves, when started with [`Builder::tls`] or
    /// [`Builder::tls_names`].
    #[cfg(feature = "tls")]
    pub fn tls(&self) -> Option<&TlsCert> {
        self.tls.as_ref()
    }

    /// When it started, on the tokio clock: time-based outages and the rate limit's windows
    /// count from here.
    pub fn started_at(&self) -> Instant {
        self.shared.started
    }

    /// Every request received so far, in arrival (request-number) order.
    pub fn records(&self) -> Vec<Record> {
        lock(&self.shared.state).records.clone()
    }

    /// How many times each request id (the `x-request-id` header, else the path and query) was
    /// received: a request lost is missing, one sent twice counts 2.
    pub fn count_by_id(&self) -> HashMap<String, usize> {
        let state = lock(&self.shared.state);
        let mut counts = HashMap::new();
        for record in &state.records {
            *counts.entry(record.id.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// The number of requests received (the last request number).
    pub fn requests_received(&self) -> u64 {
        *self.shared.requests.borrow()
    }

    /// The number of connections accepted since the start.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// The number of connections open now (accepted and not yet closed on the upstream's side).
    pub fn open_connections(&self) -> usize {
        *self.shared.open.borrow()
    }

    /// The largest number of connections that were open at the same time, as the upstream saw
    /// them: a connection counts from its accept until the upstream's side has seen it close.
    /// So on a multi-thread runtime a client that closes one connection and at once opens
    /// another can be counted twice for a moment (the new one accepted on one worker before
    /// the other has read the old one's end): the figure can be above what the client held,
    /// never below. On a current-thread runtime (paused-time tests) it is exact.
    pub fn max_concurrent_connections(&self) -> usize {
        self.shared.max_open.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests have been received (e.g. before checking that a hung
    /// request was seen).
    pub async fn wait_for_requests(&self, n: u64) {
        let mut rx = self.shared.requests.subscribe();
        // The sender lives in `shared`, which `self` holds: it cannot close while we wait.
        let _ = rx.wait_for(|&received| received >= n).await;
    }

    /// Waits until exactly `n` connections are open (e.g. `0` after a client let go of its
    /// connections: the upstream sees each close a little after the client makes it).
    ///
    /// For a count that stays: it watches the latest count, so a value held only between two
    /// changes that come close together may be missed, and the wait then goes on until the
    /// count comes back to `n`.
    pub async fn wait_for_open_connections(&self, n: usize) {
        let mut rx = self.shared.open.subscribe();
        let _ = rx.wait_for(|&open| open == n).await;
    }

    /// Stops accepting, closes every connection (answers in progress and hung requests are cut
    /// off), and waits until all of its tasks have ended. Records stay readable.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

// ===== Shared state and decisions =====

#[derive(Debug)]
struct Shared {
    script: Builder,
    started: Instant,
    state: Mutex<State>,
    /// The number of requests received.
    requests: watch::Sender<u64>,
    /// The number of connections open.
    open: watch::Sender<usize>,
    max_open: AtomicUsize,
    accepted: AtomicU64,
}

#[derive(Debug)]
struct State {
    received: u64,
    records: Vec<Record>,
    limiter: Option<Limiter>,
}

/// A poisoned lock only means a panic elsewhere (a test failing); the data is still whole.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Action {
    Reset,
    Hang,
    Answer(Answer),
}

struct Answer {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: String,
    delay: Duration,
}

impl Shared {
    /// Numbers the request, decides what to do with it and records it, all under one lock so
    /// that numbers, decisions and records agree.
    fn arrive(&self, req: &Request<Incoming>, connection: u64) -> (u64, Action) {
        let id = req
            .headers()
            .get(&REQUEST_ID)
            // Any valid UTF-8, as documented (`to_str` takes visible ASCII only).
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .map(str::to_owned)
            .unwrap_or_else(|| {
                req.uri()
                    .path_and_query()
                    .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned())
            });
        let path = req.uri().path().to_owned();
        let script = &self.script;

        let mut state = lock(&self.state);
        state.received += 1;
        let n = state.received;
        let at = Instant::now();
        let elapsed = at.saturating_duration_since(self.started);

        let action = if script.resets(n) {
            Action::Reset
        } else if script.hangs(n, &path) {
            Action::Hang
        } else {
            let delay = script.latency.map_or(Duration::ZERO, |l| l.delay(n));
            let answer = if let Some(outage) = script.outages.iter().find(|o| o.covers(n, elapsed))
            {
                let mut headers = Vec::new();
                if let Some(after) = outage.retry_after {
                    let secs = secs_rounded_up(after).max(1);
                    headers.push((RETRY_AFTER, HeaderValue::from(secs)));
                }
                Answer {
                    // Checked to be in 500..=599 by `validate`.
                    status: StatusCode::from_u16(outage.status)
                        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                    headers,
                    body: json(&id, n, Some("outage")),
                    delay,
                }
            } else if let Some(limiter) = state.limiter.as_mut() {
                let verdict = limiter.check(elapsed);
                let (q, w) = limiter.policy().policy_q_w();
                let t = secs_rounded_up(verdict.reset);
                let mut headers = vec![
                    (
                        RATELIMIT_POLICY.clone(),
                        header(format!("\"default\";q={q};w={w}")),
                    ),
                    (
                        RATELIMIT.clone(),
                        header(format!("\"default\";r={};t={t}", verdict.remaining)),
                    ),
                ];
                if verdict.allowed {
                    Answer {
                        status: StatusCode::OK,
                        headers,
                        body: json(&id, n, None),
                        delay,
                    }
                } else {
                    let secs = secs_rounded_up(verdict.retry_after).max(1);
                    headers.push((RETRY_AFTER, HeaderValue::from(secs)));
                    Answer {
                        status: StatusCode::TOO_MANY_REQUESTS,
                        headers,
                        body: json(&id, n, Some("too many requests")),
                        delay,
                    }
                }
            } else {
                Answer {
                    status: StatusCode::OK,
                    headers: Vec::new(),
                    body: json(&id, n, None),
                    delay,
                }
            };
            Action::Answer(answer)
        };

        let outcome = match &action {
            Action::Reset => Outcome::Reset,
            Action::Hang => Outcome::Hang,
            Action::Answer(a) => Outcome::Answered(a.status),
        };
        state.records.push(Record {
            n,
            id,
            method: req.method().clone(),
            path,
            outcome,
            connection,
            at,
            body: Vec::new(),
        });
        // Under the lock, so the count only goes up.
        self.requests.send_replace(n);
        (n, action)
    }

    /// Keeps the body of request `n` in its record.
    fn record_body(&self, n: u64, body: Vec<u8>) {
        let mut state = lock(&self.state);
        if let Some(r) = state.records.iter_mut().rev().find(|r| r.n == n) {
            r.body = body;
        }
    }
}

/// A header value from text made here (digits, quotes, `;`, `=`, letters): always valid.
fn header(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `{"id":"<id>","n":<n>}`, with `"error":"<error>"` for an error answer.
fn json(id: &str, n: u64, error: Option<&str>) -> String {
    let mut out = String::with_capacity(id.len() + 48);
    out.push_str("{\"id\":");
    json_string(&mut out, id);
    let _ = write!(out, ",\"n\":{n}");
    if let Some(error) = error {
        out.push_str(",\"error\":");
        json_string(&mut out, error);
    }
    out.push('}');
    out
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// ===== Server =====

#[cfg(feature = "tls")]
type Acceptor = Option<tokio_rustls::TlsAcceptor>;
#[cfg(not(feature = "tls"))]
type Acceptor = Option<NoTls>;

/// Without the `tls` feature there is no acceptor: `Acceptor` is always `None`.
#[cfg(not(feature = "tls"))]
#[derive(Clone)]
enum NoTls {}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    acceptor: Acceptor,
) {
    let mut number = 0u64;
    loop {
        let accepted = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // E.g. out of file descriptors: back off a little, but not past a stop.
                tracing::debug!(error = %e, "testkit upstream: accept failed; retrying");
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(10)) => continue,
                }
            }
        };
        // Small answers: do not let Nagle's algorithm and delayed ACKs add 40 ms to them.
        let _ = stream.set_nodelay(true);
        number += 1;
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let open = OpenGuard::new(Arc::clone(&shared));
        tracker.spawn(connection(
            stream,
            number,
            open,
            Arc::clone(&shared),
            cancel.child_token(),
            acceptor.clone(),
        ));
    }
    // The listener is dropped here: new connections are refused.
}

/// Counts a connection open from its accept until its task ends.
struct OpenGuard(Arc<Shared>);

impl OpenGuard {
    fn new(shared: Arc<Shared>) -> Self {
        shared.open.send_modify(|open| {
            *open += 1;
            shared.max_open.fetch_max(*open, Ordering::SeqCst);
        });
        OpenGuard(shared)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0
            .open
            .send_modify(|open| *open = open.saturating_sub(1));
    }
}

/// One connection's state, shared by its requests.
#[derive(Debug)]
struct ConnCtx {
    number: u64,
    requests: AtomicU64,
    /// Set by a reset: the socket is closed with `RST` when dropped.
    reset: Arc<AtomicBool>,
    /// Cancelled by a reset, and by the upstream stopping (a child of its token): drops the
    /// connection.
    cancel: CancellationToken,
}

async fn connection(
    stream: TcpStream,
    number: u64,
    open: OpenGuard,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    acceptor: Acceptor,
) {
    let _open = open;
    let reset = Arc::new(AtomicBool::new(false));
    let io = ResettableStream {
        stream,
        reset: Arc::clone(&reset),
    };
    let ctx = Arc::new(ConnCtx {
        number,
        requests: AtomicU64::new(0),
        reset,
        cancel: cancel.clone(),
    });
    match acceptor {
        None => serve(TokioIo::new(io), shared, ctx).await,
        #[cfg(feature = "tls")]
        Some(acceptor) => {
            let handshake = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                handshake = acceptor.accept(io) => handshake,
            };
            match handshake {
                Ok(tls) => serve(TokioIo::new(tls), shared, ctx).await,
                Err(e) => tracing::debug!(error = %e, "testkit upstream: TLS handshake failed"),
            }
        }
        #[cfg(not(feature = "tls"))]
        Some(never) => match never {},
    }
}

async fn serve<I>(io: I, shared: Arc<Shared>, ctx: Arc<ConnCtx>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let cancel = ctx.cancel.clone();
    let service = service_fn(move |req| handle(Arc::clone(&shared), Arc::clone(&ctx), req));
    let conn = http1::Builder::new().serve_connection(io, service);
    tokio::select! {
        biased;
        // A reset or the upstream stopping: drop the connection, its socket and any answer in
        // progress.
        () = cancel.cancelled() => {}
        res = conn => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "testkit upstream: connection error");
            }
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<ScriptedBody>, Infallible> {
    let on_connection = conn.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let (n, action) = shared.arrive(&req, conn.number);
    let answer = match action {
        Action::Reset => {
            conn.reset.store(true, Ordering::SeqCst);
            conn.cancel.cancel();
            // The connection task drops this future with the connection.
            return std::future::pending().await;
        }
        Action::Hang => {
            // Read the body all the same (and drop it): while a body is left unread, hyper does
            // not read the connection, so it would never see the client close it.
            // If the body fails (the client went away mid-body), hyper stops reading and would
            // wait for this answer forever: drop the connection instead.
            if read_to_end(req.into_body()).await.is_err() {
                conn.cancel.cancel();
            }
            return std::future::pending().await;
        }
        Action::Answer(answer) => answer,
    };
    let body = drain(req.into_body()).await;
    if !body.is_empty() {
        shared.record_body(n, body);
    }
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let body = match shared.script.slow_body {
        Some((chunks, delay)) if answer.status == StatusCode::OK => {
            ScriptedBody::chunked(answer.body, chunks, delay)
        }
        _ => ScriptedBody::full(answer.body),
    };
    let mut res = Response::new(body);
    *res.status_mut() = answer.status;
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in answer.headers {
        headers.insert(name, value);
    }
    if shared
        .script
        .close_after
        .is_some_and(|limit| on_connection >= limit)
    {
        // hyper closes the connection after writing an answer that says so.
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(res)
}

/// Reads the request body to its end (so the connection can be reused), ignoring errors, and
/// returns what it read.
async fn drain(mut body: Incoming) -> Vec<u8> {
    let mut read = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    read.extend_from_slice(data);
                }
            }
            Err(_) => break,
        }
    }
    read
}

/// Reads the request body to its end and drops it; an error if it failed (e.g. the client
/// closed mid-body).
async fn read_to_end(mut body: Incoming) -> Result<(), hyper::Error> {
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        frame?;
    }
    Ok(())
}

/// The accepted socket; when dropped after a reset, it closes with `RST` instead of `FIN`.
#[derive(Debug)]
struct ResettableStream {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            // SO_LINGER of zero: the close sends RST and discards unsent data. Zero is the one
            // linger that does not block the thread on close (tokio's own note on
            // `set_zero_linger`, which needs tokio 1.50 where the workspace asks for 1.40).
            #[allow(deprecated)]
            let _ = self.stream.set_linger(Some(Duration::ZERO));
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes() {
        assert_eq!(json("/a/7", 3, None), r#"{"id":"/a/7","n":3}"#);
        assert_eq!(
            json("q\"\\\n", 1, Some("outage")),
            r#"{"id":"q\"\\\u000a","n":1,"error":"outage"}"#
        );
    }

    #[test]
    fn validation_errors_are_readable() {
        let cases = [
            (
                Builder::new().rate_limit(0, Duration::from_secs(1)),
                "quota",
            ),
            (Builder::new().rate_limit(1, Duration::ZERO), "window"),
            (Builder::new().reset_requests([0]), "start at 1"),
            (Builder::new().hang_requests([0, 2]), "start at 1"),
            (Builder::new().reset_every(0), "reset_every"),
            (Builder::new().close_after(0), "close_after"),
            (Builder::new().slow_body(0, Duration::ZERO), "slow_body"),
            (Builder::new().hang_path("api"), "'/'"),
            (Builder::new().outage(Outage::requests(3..3)), "empty"),
        ];
        for (builder, needle) in cases {
            let msg = builder.validate().unwrap_err();
            assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
        }
        assert!(Builder::new().validate().is_ok());
    }
}
