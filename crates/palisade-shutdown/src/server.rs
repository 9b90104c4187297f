//! A hyper server that drains on shutdown, and the `503` answer for refused requests.

use std::convert::Infallible;
use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use http::header::{HeaderValue, CONNECTION};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower_service::Service;

use crate::layer::{Refusal, ShutdownLayer};
use crate::shutdown::Shutdown;
use crate::BoxError;

/// Answers a request refused during shutdown with `503 Service Unavailable` and
/// `Connection: close`, keeping the inner error type (`Infallible` under axum).
#[derive(Debug, Clone, Copy, Default)]
pub struct ServiceUnavailable;

impl<B: Default, E> Refusal<Response<B>, E> for ServiceUnavailable {
    type Error = E;

    fn shutting_down(&self) -> Result<Response<B>, E> {
        let mut res = Response::new(B::default());
        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        res.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        Ok(res)
    }
}

impl ShutdownLayer {
    /// Answer refused requests with `503` and `Connection: close` ([`ServiceUnavailable`]).
    pub fn service_unavailable(self) -> ShutdownLayer<ServiceUnavailable> {
        self.with_refusal(ServiceUnavailable)
    }
}

/// Serves `service` on `listener` (HTTP/1 and HTTP/2, hyper-util's connection builder) until
/// `shutdown` is triggered, then drains:
///
/// - the accept loop stops and the listener is closed: no new connection is taken;
/// - every connection is asked to close gracefully — an idle keep-alive connection and one that
///   never sent a byte close at once, one with a response in flight closes after it (sent with
///   `Connection: close`); one that sent part of a first request is waited for (hyper's rule)
///   until the force; a request already in the socket when the shutdown begins is read first
///   and answered (with the layer, `503`); an HTTP/1 request *pipelined* behind one in flight
///   is not read: the connection closes after the response marked `Connection: close`, and the
///   client retries it, as RFC 9112 (9.3.2) has pipelining clients do;
/// - at the force (the drain deadline, or a second signal) the connections still open are cut,
///   long streaming responses included.
///
/// Returns when the accept loop ends; [`Shutdown::drain`] waits for the connections.
///
/// Not covered: a connection upgraded (e.g. to a WebSocket) leaves hyper's connection future,
/// and with it this drain; track the upgraded socket's task yourself (e.g. with
/// [`Shutdown::spawn`]). Put
/// [`Shutdown::layer`] (with [`ShutdownLayer::service_unavailable`]) on `service` to count
/// requests in flight and refuse new ones with `503`.
///
/// # Errors
///
/// None yet: accept errors (e.g. out of file descriptors) are logged and retried after 50 ms.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: &Shutdown,
) -> Result<(), Infallible>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let _accepting = shutdown.hold_open();
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.triggered() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying");
                // Back off (e.g. out of file descriptors), but not past the trigger.
                tokio::select! {
                    () = shutdown.triggered() => break,
                    () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        let svc = TowerToHyperService::new(service.clone());
        let builder = builder.clone();
        let watch = shutdown.clone();
        shutdown.track_connection(async move {
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(%peer, error = %e, "connection error");
                    }
                    return false;
                }
                () = watch.triggered() => {}
            }
            // A keep-alive connection between requests closes at once when asked to, without
            // reading what the client already sent: a request in the socket at the trigger
            // would go unanswered and uncounted. So first let the runtime poll for I/O (the
            // yield is deferred until it has) and hyper read what arrived: such a request is
            // then being answered (`503` by the layer), and the close waits for it.
            tokio::task::yield_now().await;
            let polled = std::future::poll_fn(|cx| Poll::Ready(conn.as_mut().poll(cx))).await;
            if polled.is_ready() {
                return false;
            }
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => false,
                () = watch.forced() => {
                    tracing::debug!(%peer, "connection cut at the drain deadline");
                    true
                }
            }
        });
    }
    drop(listener);
    tracing::info!("stopped accepting connections");
    Ok(())
}
