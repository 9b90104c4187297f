//! The connector (an [`Origin`] to an HTTP/1.1 connection) and the connection as a
//! `tower::Service`.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::Service;

use crate::error::{BoxError, ConnectError, RequestNotSent};
use crate::gate::{GateState, Held};
use crate::origin::Origin;
use crate::probe::ProbeMark;
use crate::Body;

#[cfg(feature = "tls")]
type Stream = tokio_util::either::Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;
#[cfg(not(feature = "tls"))]
type Stream = TcpStream;

/// A pooled connection: each exchange on it (request sent to the end of the response body) is
/// bounded by the client's timeout. The timeout sits here, below the pool and the upstream's hold, so that it
/// measures the exchange alone: waiting for a rate-limit turn, a `Retry-After` hold or a free
/// connection is not the upstream being slow, and must not become a breaker failure.
/// (The deadline is kept by the connection's own task, see [`Watch`]: no timer per request.)
pub(crate) type Pooled = Connection;

/// Makes HTTP/1.1 connections: TCP, then TLS for `https`, then hyper's handshake; the
/// connection's task is spawned on the current tokio runtime.
///
/// One `Arc` inside: the pool clones its connector for every request, so a clone is one
/// reference count, not one per field.
#[derive(Clone)]
pub(crate) struct Connector(Arc<ConnectorInner>);

struct ConnectorInner {
    /// The per-exchange timeout of the connections made.
    timeout: Duration,
    /// Stamp each response with its exchange's start ([`ExchangeStarted`]), for a breaker with
    /// a slow-call rule.
    time_exchanges: bool,
    /// Each origin's hold, so its connections check it just before sending.
    holds: Mutex<HashMap<Origin, Arc<GateState>>>,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsConnector>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector").finish_non_exhaustive()
    }
}

impl Connector {
    /// Registers an origin's hold, for the connections made to it from now on.
    pub(crate) fn register_hold(&self, origin: &Origin, hold: Arc<GateState>) {
        self.0
            .holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(origin.clone(), hold);
    }

    /// Drops a forgotten origin's hold (its connections are gone: they held it).
    pub(crate) fn forget_hold(&self, origin: &Origin) {
        self.0
            .holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(origin);
    }

    #[cfg(feature = "tls")]
    pub(crate) fn new(
        timeout: Duration,
        time_exchanges: bool,
        tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    ) -> Self {
        Connector(Arc::new(ConnectorInner {
            timeout,
            time_exchanges,
            holds: Mutex::default(),
            tls: tls.map(tokio_rustls::TlsConnector::from),
        }))
    }

    #[cfg(not(feature = "tls"))]
    pub(crate) fn new(timeout: Duration, time_exchanges: bool) -> Self {
        Connector(Arc::new(ConnectorInner {
            timeout,
            time_exchanges,
            holds: Mutex::default(),
        }))
    }
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<Pooled, ConnectError>> + Send>>;

impl Service<Origin> for Connector {
    type Response = Pooled;
    type Error = ConnectError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, origin: Origin) -> ConnectFuture {
        let this = self.clone();
        Box::pin(async move {
            let name = origin.to_string();
            let tcp = TcpStream::connect((origin.host(), origin.port()))
                .await
                .map_err(|e| ConnectError::new(name.clone(), "tcp connect", e))?;
            let _ = tcp.set_nodelay(true);
            let stream = this.wrap(tcp, &origin, &name).await?;
            let (sender, conn) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| ConnectError::new(name.clone(), "http handshake", e))?;
            let timeout = this.0.timeout;
            let watch = Arc::new(Watch::new(timeout));
            let keeper = watch.clone();
            tokio::spawn(async move {
                // The connection's task also keeps the deadline of its exchange in flight;
                // it ends with the connection.
                tokio::select! {
                    biased;
                    closed = conn => {
                        if let Err(e) = closed {
                            tracing::debug!(error = %e, "connection closed with an error");
                        }
                    }
                    () = keeper.keep() => {
                        // A response body still being read when the deadline passed: the
                        // connection is cut off, and the body read fails.
                        tracing::debug!("response body cut off by the timeout");
                    }
                }
            });
            tracing::debug!(origin = %name, "connected");
            let hold = this
                .0
                .holds
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&origin)
                .cloned();
            Ok(Connection {
                time_exchanges: this.0.time_exchanges,
                host: HeaderValue::from_str(origin.authority().as_str()).ok(),
                hold,
                sender,
                watch,
            })
        })
    }
}

impl Connector {
    #[cfg(feature = "tls")]
    async fn wrap(
        &self,
        tcp: TcpStream,
        origin: &Origin,
        name: &str,
    ) -> Result<Stream, ConnectError> {
        use tokio_rustls::rustls::pki_types::ServerName;
        if !origin.is_https() {
            return Ok(tokio_util::either::Either::Left(tcp));
        }
        let Some(tls) = &self.0.tls else {
            return Err(ConnectError::new(
                name.to_owned(),
                "tls",
                "no TLS configuration",
            ));
        };
        let server = ServerName::try_from(origin.host().to_owned())
            .map_err(|e| ConnectError::new(name.to_owned(), "tls server name", e))?;
        let stream = tls
            .connect(server, tcp)
            .await
            .map_err(|e| ConnectError::new(name.to_owned(), "tls handshake", e))?;
        Ok(tokio_util::either::Either::Right(stream))
    }

    #[cfg(not(feature = "tls"))]
    async fn wrap(
        &self,
        tcp: TcpStream,
        origin: &Origin,
        name: &str,
    ) -> Result<Stream, ConnectError> {
        if origin.is_https() {
            return Err(ConnectError::new(
                name.to_owned(),
                "tls",
                "https needs palisade-client's `tls` feature",
            ));
        }
        Ok(tcp)
    }
}

/// One HTTP/1.1 connection. Ready again only when hyper says so: after the previous response's
/// body has been read to the end. Once the connection is closing (the peer sent
/// `Connection: close`, reset it, or it failed) `poll_ready` fails and the pool drops it. An
/// exchange cut off by the timeout drops hyper's response future, and hyper then closes the
/// connection: a hung connection is never handed out again.
pub(crate) struct Connection {
    sender: http1::SendRequest<Body>,
    /// The deadline of the exchange in flight (request sent to the end of its response body),
    /// kept by the connection's task.
    watch: Arc<Watch>,
    /// The origin's hold: checked at the last moment, since a request may have waited for this
    /// connection while an answer began a hold.
    hold: Option<Arc<GateState>>,
    /// The `Host` header, made once per connection.
    host: Option<HeaderValue>,
    /// Stamp each response with [`ExchangeStarted`].
    time_exchanges: bool,
}

/// When a response's exchange began (the request handed to its connection), in the
/// response's extensions when the origin's breaker has a slow-call rule: the breaker then
/// times the exchange alone, not the wait for a rate-limit turn, a hold or a connection
/// before it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExchangeStarted(pub(crate) tokio::time::Instant);

type SendFuture = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

impl Service<Request<Body>> for Connection {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = SendFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let ready = self.sender.poll_ready(cx).map_err(Into::into);
        if let Poll::Ready(Ok(())) = ready {
            // The previous response's body has been read to its end: its deadline is over.
            self.watch.body_done();
        }
        ready
    }

    fn call(&mut self, mut req: Request<Body>) -> SendFuture {
        if self.hold.as_ref().is_some_and(|h| h.is_cut()) {
            // Past the client's shutdown deadline (its connect outlasted it): not sent.
            let cut: BoxError = Box::<palisade_shutdown::ShuttingDown>::default();
            return Box::pin(std::future::ready(Err(cut)));
        }
        if let Some(until) = self.hold.as_ref().and_then(|h| h.hold_until()) {
            // Not sent: the gate above waits and sends again (on this connection or another).
            let held: BoxError = Box::new(Held { until, req });
            return Box::pin(std::future::ready(Err(held)));
        }
        if let Some(mark) = req.extensions_mut().remove::<ProbeMark>() {
            // The origin's half-open probe goes out now: its breaker's patience starts.
            mark.sent();
        }
        // HTTP/1.1 wants the origin form (`/path?query`) and a Host header.
        if let Some(host) = &self.host {
            req.headers_mut()
                .entry(HOST)
                .or_insert_with(|| host.clone());
        }
        // Moved, not cloned: a clone of a path built from a `String` would allocate to share it.
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(
            std::mem::take(req.uri_mut())
                .into_parts()
                .path_and_query
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        let started = self.time_exchanges.then(tokio::time::Instant::now);
        let sent = self.sender.try_send_request(req);
        let exchange = self.watch.begin();
        Box::pin(async move {
            let mut sent = std::pin::pin!(sent);
            let sent = std::future::poll_fn(|cx| match sent.as_mut().poll(cx) {
                Poll::Ready(r) => Poll::Ready(Some(r)),
                Poll::Pending if exchange.elapsed(cx) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            })
            .await;
            let sent = match sent {
                Some(Ok(mut res)) => {
                    if let Some(at) = started {
                        res.extensions_mut().insert(ExchangeStarted(at));
                    }
                    if exchange.head_received() {
                        Some(Ok(res))
                    } else {
                        // Past its deadline: dropped (closing the connection), a timeout.
                        drop(res);
                        None
                    }
                }
                other => {
                    drop(exchange);
                    other
                }
            };
            let Some(sent) = sent else {
                // Dropping hyper's response future makes it close the connection: a hung
                // exchange's connection is never handed out again.
                return Err(Box::new(tower::timeout::error::Elapsed::new()) as BoxError);
            };
            sent.map_err(|mut e| -> BoxError {
                // hyper hands the request back when not a byte of it was written: safe to send
                // again, whatever the method.
                if e.take_message().is_some() {
                    Box::new(RequestNotSent {
                        source: e.into_error(),
                    })
                } else {
                    Box::new(e.into_error())
                }
            })
        })
    }
}

/// The deadline of a connection's exchange in flight, kept by the connection's own task.
///
/// A timer per request would cost a registration in tokio's timer wheel and its removal, two
/// locks on every request. Here an exchange writes its deadline into one atomic, and the
/// connection's task, whose timer sleeps until the deadline it last read, resets that timer
/// only when it fires: about once per timeout while requests flow, not once per request. When
/// it finds the exchange in flight past its deadline, it marks it elapsed and wakes it.
///
/// The deadline covers the response body too: once the head has arrived the deadline stays,
/// marked [`BODY`], until the connection is ready again (the body read to its end). If it
/// passes first, the connection's task ends, which closes the connection and fails the body.
pub(crate) struct Watch {
    /// The origin of the deadlines below.
    base: Instant,
    /// [`IDLE`], [`ELAPSED`], or the deadline of the exchange in flight: nanoseconds after
    /// `base`, plus one (with [`BODY`] set once its response head has arrived).
    deadline: AtomicU64,
    /// The task of the exchange in flight.
    waker: AtomicWaker,
    timeout: Duration,
}

const IDLE: u64 = 0;
const ELAPSED: u64 = u64::MAX;
/// Set on a deadline whose exchange has its response head: the body is being read.
const BODY: u64 = 1 << 63;

impl Watch {
    fn new(timeout: Duration) -> Watch {
        Watch {
            base: Instant::now(),
            deadline: AtomicU64::new(IDLE),
            waker: AtomicWaker::new(),
            timeout,
        }
    }

    fn since_base(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(BODY - 2)
            .min(BODY - 2)
    }

    /// An exchange starts now: its deadline is now + timeout.
    fn begin(self: &Arc<Self>) -> Exchange {
        let deadline = self
            .since_base(Instant::now())
            .saturating_add(u64::try_from(self.timeout.as_nanos()).unwrap_or(u64::MAX))
            // Below the `BODY` bit, which marks it later.
            .min(BODY - 2)
            + 1;
        self.deadline.store(deadline, Ordering::Release);
        Exchange {
            watch: self.clone(),
            deadline,
        }
    }

    /// The body of the last response has been read: no deadline until the next exchange.
    fn body_done(&self) {
        let d = self.deadline.load(Ordering::Acquire);
        if d != ELAPSED && d & BODY != 0 {
            let _ = self
                .deadline
                .compare_exchange(d, IDLE, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// The connection task's half: returns only when a response body is still being read at
    /// its deadline (the connection is then closed); otherwise ends with the connection.
    async fn keep(&self) {
        let timeout = self.timeout;
        let mut sleep = std::pin::pin!(tokio::time::sleep(timeout));
        loop {
            sleep.as_mut().await;
            let now = Instant::now();
            // A timeout too long to add (`Duration::MAX`) sleeps as long as tokio's own far
            // future: thirty years.
            let later = now
                .checked_add(timeout)
                .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400));
            let next = match self.deadline.load(Ordering::Acquire) {
                IDLE | ELAPSED => later,
                d if d & BODY != 0 => {
                    let at = self.base + Duration::from_nanos((d & !BODY) - 1);
                    if at > now {
                        at
                    } else if self
                        .deadline
                        .compare_exchange(d, ELAPSED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return;
                    } else {
                        later
                    }
                }
                d => {
                    let at = self.base + Duration::from_nanos(d - 1);
                    if at > now {
                        at
                    } else {
                        // Only if it is still that exchange in flight.
                        if self
                            .deadline
                            .compare_exchange(d, ELAPSED, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok()
                        {
                            self.waker.wake();
                        }
                        later
                    }
                }
            };
            sleep.as_mut().reset(next);
        }
    }
}

/// One exchange's claim on its connection's [`Watch`]; gives the deadline back when dropped.
struct Exchange {
    watch: Arc<Watch>,
    deadline: u64,
}

impl Exchange {
    /// Whether the connection's task cut this exchange off; if not, it will wake `cx` when it
    /// does.
    fn elapsed(&self, cx: &Context<'_>) -> bool {
        self.watch.waker.register(cx.waker());
        self.watch.deadline.load(Ordering::Acquire) == ELAPSED
    }
}

impl Exchange {
    /// The response head has arrived: the deadline stays for the body. False when the
    /// deadline had already passed (the connection's task marked it elapsed first): the
    /// answer came too late, and its body would have no deadline left to keep it.
    fn head_received(self) -> bool {
        self.watch
            .deadline
            .compare_exchange(
                self.deadline,
                self.deadline | BODY,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // Unless the head arrived (the deadline is then marked `BODY`): no deadline left.
        let _ = self.watch.deadline.compare_exchange(
            self.deadline,
            IDLE,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}

/// The pool's key: the request's origin. The router sends only absolute URIs into the stack,
/// their authority in the origin's one spelling, so it is taken as it is.
pub(crate) fn origin_key(req: &Request<Body>) -> Origin {
    let origin = Origin::of_spelled(req.uri()).expect("the router sends only absolute URIs");
    debug_assert_eq!(Some(&origin), Origin::of(req.uri()).as_ref());
    origin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_watch_with_an_unaddable_timeout_keeps_running_when_its_timer_fires_idle() {
        let watch = Arc::new(Watch::new(Duration::MAX));
        let keeper = watch.clone();
        let task = tokio::spawn(async move { keeper.keep().await });
        tokio::time::sleep(Duration::from_secs(31 * 365 * 86_400)).await;
        tokio::task::yield_now().await;
        assert!(!task.is_finished(), "{:?}", task.await);
        // And an exchange under it is not cut off.
        let exchange = watch.begin();
        tokio::time::sleep(Duration::from_secs(31 * 365 * 86_400)).await;
        assert_ne!(watch.deadline.load(Ordering::Acquire), ELAPSED);
        drop(exchange);
        assert_eq!(watch.deadline.load(Ordering::Acquire), IDLE);
        task.abort();
    }
}
