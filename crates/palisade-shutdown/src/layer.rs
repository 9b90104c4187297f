//! [`ShutdownLayer`], its service and its handle.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::ShuttingDown;
use crate::gate::{Gate, Guard};
use crate::BoxError;

/// Turns a refusal into the service's output.
///
/// The default, [`AsError`], returns [`ShuttingDown`] boxed in a [`BoxError`]. With feature
/// `server`, [`ServiceUnavailable`](crate::ServiceUnavailable) answers `503` with
/// `Connection: close` and keeps the inner error type (`Infallible` under axum).
pub trait Refusal<Res, E> {
    /// The service's error type: inner errors convert into it.
    type Error: From<E>;

    /// The output for a request that arrived after shutdown began.
    fn shutting_down(&self) -> Result<Res, Self::Error>;
}

/// Report refusals as a boxed [`ShuttingDown`] error.
#[derive(Debug, Clone, Copy, Default)]
pub struct AsError;

impl<Res, E> Refusal<Res, E> for AsError
where
    BoxError: From<E>,
{
    type Error = BoxError;

    fn shutting_down(&self) -> Result<Res, BoxError> {
        Err(Box::new(ShuttingDown::new()))
    }
}

/// Counts requests in flight and refuses new ones once shutdown begins.
///
/// Each request is counted by a guard its response future owns: completing, being cancelled
/// or panicking all count it out. Once the layer is closed — by its [`Shutdown`](crate::Shutdown)
/// being triggered, or by [`ShutdownHandle::close`] — `poll_ready` answers `Ready` without
/// polling the inner service and `call` refuses at once. [`ShutdownHandle::drain`] resolves when
/// the last request in flight is done: the building block for draining a client stack.
///
/// Every service the layer makes (clones and repeated `layer()` calls) shares one counter.
///
/// ```
/// use palisade_shutdown::{ShutdownLayer, ShuttingDown};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let layer = ShutdownLayer::new();
/// let handle = layer.handle();
/// let mut svc = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n + 1) });
///
/// assert_eq!(svc.ready().await?.call(1).await?, 2);
/// handle.close();
/// let err = svc.ready().await?.call(1).await.unwrap_err();
/// assert!(err.is::<ShuttingDown>());
/// handle.drain().await; // nothing in flight
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ShutdownLayer<R = AsError> {
    gate: Arc<Gate>,
    refusal: R,
}

impl ShutdownLayer {
    /// A layer with its own counter, closed by its handle.
    pub fn new() -> ShutdownLayer {
        ShutdownLayer::with_gate(Arc::default())
    }

    pub(crate) fn with_gate(gate: Arc<Gate>) -> ShutdownLayer {
        ShutdownLayer {
            gate,
            refusal: AsError,
        }
    }
}

impl Default for ShutdownLayer {
    fn default() -> Self {
        ShutdownLayer::new()
    }
}

impl<R> ShutdownLayer<R> {
    /// Use `refusal` to turn refusals into the service's output.
    pub fn with_refusal<R2>(self, refusal: R2) -> ShutdownLayer<R2> {
        ShutdownLayer {
            gate: self.gate,
            refusal,
        }
    }

    /// The handle: close, count, drain.
    pub fn handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            gate: self.gate.clone(),
        }
    }
}

impl<R> fmt::Debug for ShutdownLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownLayer")
            .field("closed", &self.gate.is_closed())
            .field("in_flight", &self.gate.in_flight())
            .finish()
    }
}

impl<S, R: Clone> Layer<S> for ShutdownLayer<R> {
    type Service = ShutdownService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        ShutdownService {
            inner,
            gate: self.gate.clone(),
            refusal: self.refusal.clone(),
            refuse: false,
            closing: None,
        }
    }
}

/// Inspects and controls the requests of a [`ShutdownLayer`].
#[derive(Clone)]
pub struct ShutdownHandle {
    gate: Arc<Gate>,
}

impl ShutdownHandle {
    /// Refuse new requests from now on.
    pub fn close(&self) {
        self.gate.close();
    }

    /// Whether new requests are refused.
    pub fn is_closed(&self) -> bool {
        self.gate.is_closed()
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.gate.in_flight()
    }

    /// Resolves when no request is in flight (at once if none is). Close first, or new requests
    /// may keep it waiting. A request is in flight until its response *head* is ready; the body
    /// of a streaming response may still be flowing.
    pub async fn drain(&self) {
        self.gate.drained().await;
    }

    /// Since closing: requests that completed, requests cut off (dropped before completing),
    /// requests refused.
    pub fn counts(&self) -> (u64, u64, u64) {
        self.gate.counts()
    }
}

impl fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("closed", &self.gate.is_closed())
            .field("in_flight", &self.gate.in_flight())
            .finish()
    }
}

/// The service made by [`ShutdownLayer`].
pub struct ShutdownService<S, R = AsError> {
    inner: S,
    gate: Arc<Gate>,
    refusal: R,
    /// Closed when `poll_ready` ran: `call` refuses without the inner service having been
    /// polled.
    refuse: bool,
    /// Made the first time the inner service is not ready: wakes this caller when the layer
    /// closes, so that it is refused at once instead of waiting for a busy inner service.
    closing: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl<S, R> ShutdownService<S, R> {
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

impl<S: Clone, R: Clone> Clone for ShutdownService<S, R> {
    fn clone(&self) -> Self {
        ShutdownService {
            inner: self.inner.clone(),
            gate: self.gate.clone(),
            refusal: self.refusal.clone(),
            refuse: false,
            closing: None,
        }
    }
}

impl<S: fmt::Debug, R> fmt::Debug for ShutdownService<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownService")
            .field("inner", &self.inner)
            .field("closed", &self.gate.is_closed())
            .finish()
    }
}

impl<S, R, Req> Service<Req> for ShutdownService<S, R>
where
    S: Service<Req>,
    R: Refusal<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = R::Error;
    type Future = ResponseFuture<S::Future, S::Response, R::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.gate.is_closed() {
            // Refuse fast: nothing of the inner service is taken.
            self.refuse = true;
            return Poll::Ready(Ok(()));
        }
        self.refuse = false;
        match self.inner.poll_ready(cx) {
            Poll::Ready(r) => Poll::Ready(r.map_err(R::Error::from)),
            Poll::Pending => {
                let gate = &self.gate;
                let closing = self
                    .closing
                    .get_or_insert_with(|| Box::pin(gate.closing().clone().cancelled_owned()));
                if closing.as_mut().poll(cx).is_ready() {
                    self.refuse = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if std::mem::take(&mut self.refuse) {
            self.gate.refuse();
            tracing::debug!("shutting down: request refused");
            return ResponseFuture::refused(self.refusal.shutting_down());
        }
        match self.gate.enter() {
            Some(guard) => ResponseFuture::called(self.inner.call(req), guard),
            None => {
                tracing::debug!("shutting down: request refused");
                ResponseFuture::refused(self.refusal.shutting_down())
            }
        }
    }
}

pin_project! {
    /// The inner call with its in-flight guard, or the refusal.
    #[must_use = "futures do nothing unless polled"]
    #[derive(Debug)]
    pub struct ResponseFuture<F, T, E> {
        #[pin]
        kind: Kind<F, T, E>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, T, E> {
        Called { #[pin] fut: F, guard: Option<Guard> },
        Refused { out: Option<Result<T, E>> },
    }
}

impl<F, T, E> ResponseFuture<F, T, E> {
    fn called(fut: F, guard: Guard) -> Self {
        ResponseFuture {
            kind: Kind::Called {
                fut,
                guard: Some(guard),
            },
        }
    }

    fn refused(out: Result<T, E>) -> Self {
        ResponseFuture {
            kind: Kind::Refused { out: Some(out) },
        }
    }
}

impl<F, T, E, FE> Future for ResponseFuture<F, T, E>
where
    F: Future<Output = Result<T, FE>>,
    E: From<FE>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { fut, guard } => {
                let out = ready!(fut.poll(cx));
                if let Some(mut guard) = guard.take() {
                    guard.complete();
                }
                Poll::Ready(out.map_err(E::from))
            }
            KindProj::Refused { out } => {
                Poll::Ready(out.take().expect("ResponseFuture polled after completion"))
            }
        }
    }
}
