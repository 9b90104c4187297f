//! Tiny HTTP/1.1 servers for answers the testkit cannot script.

#![allow(dead_code)] // each test binary uses part of it

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Serves every connection accepted on `listener` with `handler`, until the runtime ends.
pub(crate) fn serve<F>(listener: TcpListener, handler: F)
where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let res = handler(&req);
                    async move { Ok::<_, Infallible>(res) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
}

/// The status and headers of the n-th request (1-based).
pub(crate) type Answer = fn(u64) -> (u16, Vec<(&'static str, &'static str)>);

/// A server answering the n-th request as `answer(n)` says, with a `{}` body. Returns its URL
/// and its request counter.
pub(crate) async fn scripted(answer: Answer) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    serve(listener, move |_req| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        let (status, headers) = answer(n);
        let mut res = Response::new(Full::new(Bytes::from_static(b"{}")));
        *res.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            res.headers_mut().insert(k, v.parse().unwrap());
        }
        res
    });
    (format!("http://{addr}/"), count)
}
