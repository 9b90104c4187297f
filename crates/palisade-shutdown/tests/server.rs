//! In-process tests of `serve` with `Shutdown::layer().service_unavailable()`: hyper HTTP/1
//! clients over loopback, paused tokio time for every deadline.
//!
//! With paused time the runtime jumps the clock to the next timer whenever it parks, I/O or
//! not; so every step that waits on a socket happens while no drain (and so no timer) is
//! running, and a drain that must not be forced is started only once what it waits for can
//! finish without more I/O.
#![cfg(feature = "server")]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::CONNECTION;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use palisade_shutdown::{serve, ForceReason, Shutdown, ShutdownLayer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tower::{service_fn, Layer, Service, ServiceExt};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A response body that yields what its sender sends and ends only when the sender is dropped.
struct Chunks(mpsc::UnboundedReceiver<Bytes>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// Counts its drops: put in a handler future that never completes, it counts cuts.
struct DropProbe(Arc<AtomicUsize>);

impl Drop for DropProbe {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// The handlers, by path:
/// - `/held/{id}`: reports started, answers `done {id}` once released;
/// - `/hang`: reports started, never answers;
/// - `/stream`: answers at once with a body that sends one chunk and never ends;
/// - `/panic`: panics;
/// - anything else: `ok`.
#[derive(Clone)]
struct App {
    calls: Arc<Mutex<HashMap<String, usize>>>,
    started: mpsc::UnboundedSender<String>,
    release: watch::Receiver<bool>,
    streams: mpsc::UnboundedSender<mpsc::UnboundedSender<Bytes>>,
    hung_dropped: Arc<AtomicUsize>,
}

fn text(s: String) -> Response<Body> {
    Response::new(Full::from(s).boxed_unsync())
}

impl App {
    async fn handle(mut self, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let path = req.uri().path().to_owned();
        *self.calls.lock().unwrap().entry(path.clone()).or_default() += 1;
        if path.starts_with("/held/") {
            self.started.send(path.clone()).unwrap();
            self.release.wait_for(|go| *go).await.unwrap();
            return Ok(text(format!("done {path}")));
        }
        match path.as_str() {
            "/hang" => {
                let _probe = DropProbe(self.hung_dropped.clone());
                self.started.send(path).unwrap();
                match std::future::pending::<Infallible>().await {}
            }
            "/stream" => {
                let (tx, rx) = mpsc::unbounded_channel();
                tx.send(Bytes::from_static(b"first chunk")).unwrap();
                self.streams.send(tx).unwrap();
                self.started.send(path).unwrap();
                Ok(Response::new(Chunks(rx).boxed_unsync()))
            }
            "/panic" => panic!("handler panicked on purpose"),
            _ => Ok(text("ok".to_owned())),
        }
    }
}

/// A server on 127.0.0.1:0 and the test's side of its handlers.
struct Harness {
    addr: SocketAddr,
    shutdown: Shutdown,
    serving: JoinHandle<()>,
    calls: Arc<Mutex<HashMap<String, usize>>>,
    started: mpsc::UnboundedReceiver<String>,
    release: watch::Sender<bool>,
    streams: mpsc::UnboundedReceiver<mpsc::UnboundedSender<Bytes>>,
    hung_dropped: Arc<AtomicUsize>,
}

async fn start(deadline: Duration) -> Harness {
    let shutdown = Shutdown::new(deadline);
    let (started_tx, started) = mpsc::unbounded_channel();
    let (release, release_rx) = watch::channel(false);
    let (streams_tx, streams) = mpsc::unbounded_channel();
    let app = App {
        calls: Arc::default(),
        started: started_tx,
        release: release_rx,
        streams: streams_tx,
        hung_dropped: Arc::default(),
    };
    let (calls, hung_dropped) = (app.calls.clone(), app.hung_dropped.clone());
    let svc = shutdown
        .layer()
        .service_unavailable()
        .layer(service_fn(move |req| app.clone().handle(req)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { serve(listener, svc, &shutdown).await.unwrap() }
    });
    Harness {
        addr,
        shutdown,
        serving,
        calls,
        started,
        release,
        streams,
        hung_dropped,
    }
}

impl Harness {
    fn calls(&self, path: &str) -> usize {
        self.calls.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Waits until the server has accepted `n` connections (each still open).
    async fn accepted(&self, n: usize) {
        while self.shutdown.connections() < n {
            tokio::task::yield_now().await;
        }
        assert_eq!(self.shutdown.connections(), n);
    }
}

/// An HTTP/1 client connection; the handle resolves when the connection ends.
async fn client(addr: SocketAddr) -> (SendRequest<Empty<Bytes>>, JoinHandle<hyper::Result<()>>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    (sender, tokio::spawn(conn))
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", "palisade.test")
        .body(Empty::new())
        .unwrap()
}

async fn body_text(res: Response<Incoming>) -> String {
    let body = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

fn says_close(res: &Response<Incoming>) -> bool {
    res.headers()
        .get(CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
}

/// Lets the single-threaded runtime turn over a few times, so that bytes already written on
/// loopback are read by the task they are for. Scheduling turns, not time: no timer runs.
async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn service_unavailable_answers_503_with_connection_close() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ShutdownLayer::new().service_unavailable();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn({
        let calls = calls.clone();
        move |_req: Request<()>| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, Infallible>(Response::new(String::from("hello"))))
        }
    }));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(
        (res.status(), res.body().as_str()),
        (StatusCode::OK, "hello")
    );
    assert!(res.headers().get(CONNECTION).is_none());

    handle.close();
    // The error type stays the inner one (`Infallible`): the refusal is a response.
    let res: Response<String> = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers().get(CONNECTION).unwrap(), "close");
    assert!(res.body().is_empty());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(handle.counts(), (0, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn in_flight_requests_complete_and_new_ones_get_503_with_connection_close() {
    const IN_FLIGHT: usize = 5;
    let mut h = start(Duration::from_secs(30)).await;

    // Five requests in flight, one per connection.
    let mut in_flight = Vec::new();
    for id in 0..IN_FLIGHT {
        let (mut sender, conn) = client(h.addr).await;
        let path = format!("/held/{id}");
        let response = tokio::spawn(sender.send_request(get(&path)));
        in_flight.push((path, response, conn, sender));
    }
    let mut started: Vec<_> = Vec::new();
    for _ in 0..IN_FLIGHT {
        started.push(h.started.recv().await.unwrap());
    }
    started.sort();
    let mut expected: Vec<_> = in_flight.iter().map(|(path, ..)| path.clone()).collect();
    expected.sort();
    assert_eq!(started, expected);
    assert_eq!(h.shutdown.requests_in_flight(), IN_FLIGHT);

    // A slow client: its first request is half sent when the shutdown begins.
    let mut late = TcpStream::connect(h.addr).await.unwrap();
    late.write_all(b"GET /held/late HTTP/1.1\r\n")
        .await
        .unwrap();
    h.accepted(IN_FLIGHT + 1).await;
    settle().await;

    h.shutdown.trigger();
    // The accept loop ends and the listener is closed: no new connection is taken.
    (&mut h.serving).await.unwrap();
    assert!(TcpStream::connect(h.addr).await.is_err());

    // The rest of the slow request arrives after the trigger: refused with a 503 that closes
    // the connection, never reaching the handler.
    late.write_all(b"host: palisade.test\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    late.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap().to_ascii_lowercase();
    assert!(
        raw.starts_with("http/1.1 503 service unavailable\r\n"),
        "{raw}"
    );
    assert!(raw.contains("\r\nconnection: close\r\n"), "{raw}");
    assert_eq!(h.calls("/held/late"), 0);
    assert_eq!(h.shutdown.requests_in_flight(), IN_FLIGHT);

    // The requests in flight are answered, each once, and their connections closed.
    h.release.send(true).unwrap();
    for (path, response, conn, sender) in in_flight {
        let res = response.await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(says_close(&res), "{path}: {:?}", res.headers());
        assert_eq!(body_text(res).await, format!("done {path}"));
        conn.await.unwrap().unwrap();
        assert_eq!(h.calls(&path), 1, "{path}");
        drop(sender);
    }

    let report = h.shutdown.drain().await;
    assert_eq!(report.forced, None);
    assert_eq!(report.elapsed, Duration::ZERO);
    assert_eq!(report.requests_completed, IN_FLIGHT as u64);
    assert_eq!(report.requests_refused, 1);
    assert_eq!(report.requests_cut_off, 0);
    assert_eq!(report.connections_closed, IN_FLIGHT as u64 + 1);
    assert_eq!(report.connections_cut_off, 0);
    assert_eq!(h.shutdown.connections(), 0);
}

#[tokio::test(start_paused = true)]
async fn deadline_cuts_a_hung_request_and_a_streaming_response() {
    let deadline = Duration::from_secs(10);
    let mut h = start(deadline).await;

    let (mut hang_sender, hang_conn) = client(h.addr).await;
    let hung = tokio::spawn(hang_sender.send_request(get("/hang")));
    assert_eq!(h.started.recv().await.unwrap(), "/hang");

    let (mut stream_sender, stream_conn) = client(h.addr).await;
    let res = stream_sender.send_request(get("/stream")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first chunk");
    let stream_tx = h.streams.recv().await.unwrap();
    assert_eq!(h.shutdown.requests_in_flight(), 1);

    h.shutdown.trigger();
    let report = h.shutdown.drain().await;
    assert_eq!(report.forced, Some(ForceReason::Deadline));
    assert_eq!(report.elapsed, deadline);
    // The hung request is cut with its connection. The streaming response's request completed
    // (its head was sent before the trigger); its body is cut with its connection.
    assert_eq!(report.requests_cut_off, 1);
    assert_eq!(report.requests_completed, 0);
    assert_eq!(report.connections_cut_off, 2);
    assert_eq!(report.connections_closed, 0);
    assert_eq!(h.shutdown.connections(), 0);
    assert_eq!(h.shutdown.requests_in_flight(), 0);

    // Server side: the hung handler was dropped, the stream's body too.
    assert_eq!(h.hung_dropped.load(Ordering::SeqCst), 1);
    assert!(stream_tx.is_closed());
    // Client side: no response for the hung request, an unfinished body for the stream.
    assert!(hung.await.unwrap().is_err());
    assert!(matches!(body.frame().await, Some(Err(_))));
    let _ = hang_conn.await.unwrap();
    let _ = stream_conn.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn idle_keep_alive_and_silent_connections_do_not_delay_exit() {
    let h = start(Duration::from_secs(30)).await;

    // Keep-alive: one request answered, the connection kept open.
    let (mut keep_alive, keep_alive_conn) = client(h.addr).await;
    let res = keep_alive.send_request(get("/ok")).await.unwrap();
    assert!(!says_close(&res));
    assert_eq!(body_text(res).await, "ok");
    // Silent: connected, never sends a byte.
    let mut silent = TcpStream::connect(h.addr).await.unwrap();
    h.accepted(2).await;
    settle().await;

    h.shutdown.trigger();
    let report = h.shutdown.drain().await;
    assert!(report.forced.is_none(), "{report}");
    assert_eq!(report.elapsed, Duration::ZERO);
    assert_eq!(report.connections_closed, 2);
    assert_eq!(report.connections_cut_off, 0);
    assert_eq!(report.requests_completed, 0);
    assert_eq!(h.shutdown.connections(), 0);

    // Both were closed by the server.
    keep_alive_conn.await.unwrap().unwrap();
    assert_eq!(silent.read(&mut [0; 16]).await.unwrap(), 0);
    drop(keep_alive);
}

#[tokio::test(start_paused = true)]
async fn half_sent_first_request_is_cut_at_the_deadline() {
    // hyper waits for a first request it has started to read; only the deadline ends it.
    let deadline = Duration::from_secs(10);
    let h = start(deadline).await;
    let mut slow = TcpStream::connect(h.addr).await.unwrap();
    slow.write_all(b"GET /ok HTTP/1.1\r\nhost: pal")
        .await
        .unwrap();
    h.accepted(1).await;
    settle().await;

    h.shutdown.trigger();
    let report = h.shutdown.drain().await;
    assert_eq!(report.forced, Some(ForceReason::Deadline));
    assert_eq!(report.elapsed, deadline);
    assert_eq!(report.connections_cut_off, 1);
    assert_eq!(report.requests_cut_off, 0);
    assert_eq!(h.calls("/ok"), 0);
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "{rest:?}");
}

#[tokio::test(start_paused = true)]
async fn panic_in_handler_counts_the_request_out() {
    let h = start(Duration::from_secs(30)).await;

    let (mut sender, conn) = client(h.addr).await;
    assert!(sender.send_request(get("/panic")).await.is_err());
    let _ = conn.await.unwrap();
    assert_eq!(h.calls("/panic"), 1);
    assert_eq!(h.shutdown.requests_in_flight(), 0);

    // The server keeps serving.
    let (mut sender, conn) = client(h.addr).await;
    let res = sender.send_request(get("/ok")).await.unwrap();
    assert_eq!(body_text(res).await, "ok");
    drop(sender);
    conn.await.unwrap().unwrap();

    h.shutdown.trigger();
    let report = h.shutdown.drain().await;
    assert!(report.forced.is_none(), "{report}");
    assert_eq!(report.elapsed, Duration::ZERO);
    assert_eq!(report.requests_cut_off, 0);
    assert_eq!(h.shutdown.requests_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn panic_in_handler_does_not_leak_an_open_connection() {
    let h = start(Duration::from_secs(30)).await;
    let (mut sender, conn) = client(h.addr).await;
    assert!(sender.send_request(get("/panic")).await.is_err());
    let _ = conn.await.unwrap();
    settle().await;
    assert_eq!(
        h.shutdown.connections(),
        0,
        "the panicked connection is still counted open"
    );
}

// ===== Requests already sent when the trigger comes (found by a review) =====

/// Reads from a raw connection until `done` says the bytes so far are complete, or EOF.
async fn read_until(stream: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if done(&String::from_utf8_lossy(&seen)) {
            break;
        }
        let n = stream.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(seen).unwrap()
}

const RAW_GET_OK: &[u8] = b"GET /ok HTTP/1.1\r\nhost: palisade.test\r\n\r\n";

/// Keep-alive connections whose next request is already in the socket when the trigger
/// comes: each such request is answered (`503`, counted as refused), none dropped unread.
#[tokio::test(start_paused = true)]
async fn a_request_in_the_socket_at_the_trigger_is_answered_503_not_dropped() {
    let h = start(Duration::from_secs(30)).await;
    let mut conns = Vec::new();
    for _ in 0..8 {
        let mut c = TcpStream::connect(h.addr).await.unwrap();
        c.write_all(RAW_GET_OK).await.unwrap();
        let first = read_until(&mut c, |s| s.ends_with("ok")).await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        conns.push(c);
    }
    h.accepted(8).await;
    settle().await;
    for c in &mut conns {
        c.write_all(RAW_GET_OK).await.unwrap();
    }
    h.shutdown.trigger();
    for c in &mut conns {
        let second = read_until(c, |_| false).await;
        assert!(second.starts_with("HTTP/1.1 503"), "answered: {second:?}");
    }
    let report = h.shutdown.drain().await;
    assert_eq!(report.requests_refused, 8, "{report}");
    assert_eq!(report.connections_closed, 8, "{report}");
    assert!(report.forced.is_none(), "{report}");
}
