//! Regressions from a second bug-hunting review (a worker still running at the report counted
//! nowhere; a failed `listen_for_signals` left claiming to listen), and HTTP/2 drain cases the
//! suite lacked (a hung request cut at the deadline, an idle connection closed at once, a
//! request in flight completing during the drain).
#![cfg(feature = "server")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade_shutdown::{serve, ForceReason, Shutdown};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tower::{service_fn, Layer};

/// A worker that ignores its token and does not reach an `.await` (blocking work inside an
/// async fn) is still running when the report is written: it is counted neither completed
/// nor cut off, while a request still running at the end is counted as cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_still_running_at_the_report_is_counted() {
    let shutdown = Shutdown::new(Duration::ZERO);
    let go = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let worker = shutdown.spawn({
        let (go, started) = (go.clone(), started.clone());
        move |_token| async move {
            started.store(true, Ordering::SeqCst);
            while !go.load(Ordering::SeqCst) {
                std::hint::spin_loop(); // blocking work, no .await
            }
        }
    });
    while !started.load(Ordering::SeqCst) {
        tokio::task::yield_now().await;
    }
    let report = shutdown.drain().await;
    let running = shutdown.tasks();
    go.store(true, Ordering::SeqCst);
    let _ = worker.await;
    assert_eq!(report.forced, Some(ForceReason::Deadline));
    assert_eq!(
        report.tasks_completed + report.tasks_cut_off,
        1,
        "one worker, counted in neither ({running} task(s) still running at the report): {report}"
    );
}

/// `listen_for_signals` fails (here: the runtime's signal driver is gone); the flag it set
/// stays set, so a retry is refused with `AlreadyExists` though nothing listens.
#[test]
fn a_failed_listen_for_signals_does_not_claim_to_be_listening() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = rt.handle().clone();
    drop(rt);
    let _enter = handle.enter();
    let shutdown = Shutdown::new(Duration::from_secs(1));
    let first = shutdown.listen_for_signals().unwrap_err();
    let second = shutdown.listen_for_signals().unwrap_err();
    assert_ne!(first.kind(), std::io::ErrorKind::AlreadyExists, "{first}");
    assert_eq!(
        second.kind(),
        first.kind(),
        "first: {first}; the retry: {second}"
    );
}

// ===== HTTP/2 through `serve` (the existing tests use HTTP/1 only) =====

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

struct Dropped(Arc<AtomicUsize>);
impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

struct H2Harness {
    addr: SocketAddr,
    shutdown: Shutdown,
    started: mpsc::UnboundedReceiver<String>,
    release: watch::Sender<bool>,
    hung_dropped: Arc<AtomicUsize>,
}

async fn start(deadline: Duration) -> H2Harness {
    let shutdown = Shutdown::new(deadline);
    let (started_tx, started) = mpsc::unbounded_channel::<String>();
    let (release, release_rx) = watch::channel(false);
    let hung_dropped = Arc::new(AtomicUsize::new(0));
    let dropped = hung_dropped.clone();
    let svc =
        shutdown
            .layer()
            .service_unavailable()
            .layer(service_fn(move |req: Request<Incoming>| {
                let started = started_tx.clone();
                let mut release = release_rx.clone();
                let dropped = dropped.clone();
                async move {
                    let path = req.uri().path().to_owned();
                    if path == "/hang" {
                        let _d = Dropped(dropped);
                        started.send(path.clone()).unwrap();
                        std::future::pending::<()>().await;
                    }
                    if path == "/held" {
                        started.send(path.clone()).unwrap();
                        release.wait_for(|go| *go).await.unwrap();
                    }
                    Ok::<Response<Body>, Infallible>(Response::new(
                        Full::from(format!("done {path}")).boxed_unsync(),
                    ))
                }
            }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move { serve(listener, svc, &shutdown).await.unwrap() }
    });
    H2Harness {
        addr,
        shutdown,
        started,
        release,
        hung_dropped,
    }
}

async fn h2_client(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    (sender, tokio::spawn(conn))
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://palisade.test{path}"))
        .body(Empty::new())
        .unwrap()
}

async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn h2_hung_request_is_cut_at_the_deadline_and_counted() {
    let mut h = start(Duration::from_secs(10)).await;
    let (mut sender, conn) = h2_client(h.addr).await;
    let hung = tokio::spawn(sender.send_request(get("/hang")));
    assert_eq!(h.started.recv().await.unwrap(), "/hang");
    assert_eq!(h.shutdown.requests_in_flight(), 1);
    h.shutdown.trigger();
    let report = h.shutdown.drain().await;
    settle().await;
    eprintln!("{report}");
    assert_eq!(report.forced, Some(ForceReason::Deadline));
    assert_eq!(report.requests_cut_off, 1, "{report}");
    assert_eq!(report.connections_cut_off, 1, "{report}");
    assert_eq!(
        h.hung_dropped.load(Ordering::SeqCst),
        1,
        "the hung h2 handler still runs"
    );
    assert_eq!(h.shutdown.requests_in_flight(), 0);
    let _ = hung.await;
    let _ = conn.await;
}

#[tokio::test(start_paused = true)]
async fn h2_idle_connection_closes_at_once() {
    let h = start(Duration::from_secs(30)).await;
    let (mut sender, conn) = h2_client(h.addr).await;
    let res = sender.send_request(get("/ok")).await.unwrap();
    let _ = res.into_body().collect().await.unwrap();
    settle().await;
    assert_eq!(h.shutdown.connections(), 1);
    h.shutdown.trigger();
    let report = h.shutdown.drain().await;
    assert!(report.forced.is_none(), "{report}");
    assert_eq!(report.connections_closed, 1, "{report}");
    let _ = conn.await;
}

#[tokio::test(start_paused = true)]
async fn h2_in_flight_request_completes_during_the_drain() {
    let mut h = start(Duration::from_secs(30)).await;
    let (mut sender, conn) = h2_client(h.addr).await;
    let pending = tokio::spawn(sender.send_request(get("/held")));
    assert_eq!(h.started.recv().await.unwrap(), "/held");
    h.shutdown.trigger();
    settle().await;
    h.release.send(true).unwrap();
    let report = h.shutdown.drain().await;
    assert!(report.forced.is_none(), "{report}");
    assert_eq!(report.requests_completed, 1, "{report}");
    let res = pending.await.unwrap().unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "done /held");
    let _ = conn.await;
}

/// From a review of the fix above: the flag stayed set after the listener task died with its
/// runtime, so nothing listened and a new listener was refused.
#[test]
fn listening_ends_with_the_listener_task() {
    let shutdown = Shutdown::new(Duration::from_secs(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The listener task is handed out, not awaited: it dies with this runtime.
    let _listener = rt
        .block_on(async { shutdown.listen_for_signals() })
        .unwrap();
    drop(rt);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let again = rt.block_on(async { shutdown.listen_for_signals().map(|_| ()) });
    assert!(again.is_ok(), "nothing listens, yet: {again:?}");
}

/// And outside a runtime the call errs (it panicked inside tokio, leaving the flag set).
#[test]
fn listening_outside_a_runtime_is_an_error_and_claims_nothing() {
    let shutdown = Shutdown::new(Duration::from_secs(1));
    let outside = shutdown.listen_for_signals();
    assert!(outside.is_err(), "no runtime, yet it listens");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let inside = rt.block_on(async { shutdown.listen_for_signals().map(|_| ()) });
    assert!(inside.is_ok(), "{inside:?}");
}
