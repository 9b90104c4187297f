//! The breaker's half-open patience (`max_half_open_wait`) counts from when the probe is sent,
//! not from the half-open's start: a probe that waits for the origin's only connection behind a
//! long, healthy exchange is not taken for a hung one. (Found by a review of 4c23e3e with a test
//! like this one; before the fix the next caller reopened the circuit and the probe's late
//! success was stale.)

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper_util::rt::TokioIo;
use palisade_client::{BreakerState, Client, Error};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Sleep;

/// A body whose one chunk comes after a delay: the exchange holds its connection until then.
struct LateBody(Option<Pin<Box<Sleep>>>);

impl Body for LateBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let Some(sleep) = self.0.as_mut() else {
            return Poll::Ready(None);
        };
        std::task::ready!(sleep.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"{}")))))
    }
}

/// `/fail`: a `500` whose body ends `body` after its head; `/hang`: never answers; anything
/// else: a `200` at once.
async fn upstream(body: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let (status, late) = match req.uri().path() {
                        "/fail" => (StatusCode::INTERNAL_SERVER_ERROR, body),
                        "/hang" => std::future::pending().await,
                        _ => (StatusCode::OK, Duration::ZERO),
                    };
                    let mut res = Response::new(LateBody(Some(Box::pin(tokio::time::sleep(late)))));
                    *res.status_mut() = status;
                    Ok::<_, Infallible>(res)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}/")
}

/// Opens on one failure, for 1 s; a half-open patience of 2 s; `probes` probe slots.
fn breaker(probes: u16) -> palisade_breaker::Config {
    palisade_breaker::Config::builder()
        .consecutive_failures(1)
        .half_open_probes(probes)
        .open_duration(Duration::from_secs(1), 1, Duration::from_secs(1))
        .jitter(0)
        .max_half_open_wait(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// `GET path` on a task of its own; its status.
fn spawn_get(client: &Client, path: &'static str) -> JoinHandle<Result<StatusCode, Error>> {
    let client = client.clone();
    tokio::spawn(async move { client.get(path).await.map(|r| r.status()) })
}

#[tokio::test(start_paused = true)]
async fn a_probe_queued_for_the_only_connection_is_not_taken_for_a_hung_one() {
    let url = upstream(Duration::from_secs(4)).await;
    let breaker = breaker(1);
    let client = Client::builder(&url)
        .max_connections_per_host(1)
        .breaker(breaker)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let host = client.base_host();

    // t = 0: a 500 opens the breaker (for 1 s); its body holds the only connection for 4 s.
    let failed = client.get("/fail").await.unwrap();
    assert_eq!(failed.status(), 500);
    assert_eq!(host.breaker().state(), BreakerState::Open);
    let reader = tokio::spawn(async move { failed.bytes().await });

    // t = 1.5: the probe passes the half-open breaker and waits for the connection.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let probe = spawn_get(&client, "/probe");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(host.breaker().state(), BreakerState::HalfOpen);
    let generation = host.breaker().generation();

    // t = 3.6: past the 2 s patience, the probe still queued. Refused, but not reopened.
    tokio::time::sleep(Duration::from_millis(2_090)).await;
    let refused = client.get("/other").await.unwrap_err();
    assert!(refused.is_circuit_open(), "{refused}");
    assert_eq!(
        (host.breaker().state(), host.breaker().generation()),
        (BreakerState::HalfOpen, generation),
        "a caller past the patience reopened the breaker while its probe waited for the \
         connection"
    );

    // t = 4: the body ends, the probe is sent on the freed connection and its 200 closes it.
    reader.await.unwrap().unwrap();
    assert_eq!(probe.await.unwrap().unwrap(), 200);
    assert_eq!(host.breaker().state(), BreakerState::Closed);
    assert_eq!(client.get("/after").await.unwrap().status(), 200);
}

/// The same for a probe waiting for its rate-limit turn: with one request per 10 s, the probe
/// admitted 1.5 s after the failure waits until 10 s, far past a 2 s patience.
#[tokio::test(start_paused = true)]
async fn a_probe_waiting_for_its_rate_limit_turn_is_not_taken_for_a_hung_one() {
    let url = upstream(Duration::ZERO).await;
    let breaker = breaker(1);
    let client = Client::builder(&url)
        .rate("6/min")
        .burst(1)
        .breaker(breaker)
        .build()
        .unwrap();
    let host = client.base_host();
    assert_eq!(client.get("/fail").await.unwrap().status(), 500);
    assert_eq!(host.breaker().state(), BreakerState::Open);

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let probe = spawn_get(&client, "/probe");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(host.breaker().state(), BreakerState::HalfOpen);
    let generation = host.breaker().generation();

    tokio::time::sleep(Duration::from_secs(4)).await;
    let refused = client.get("/other").await.unwrap_err();
    assert!(refused.is_circuit_open(), "{refused}");
    assert_eq!(
        (host.breaker().state(), host.breaker().generation()),
        (BreakerState::HalfOpen, generation),
        "a caller past the patience reopened the breaker while its probe waited for its turn"
    );
    assert_eq!(probe.await.unwrap().unwrap(), 200);
    assert_eq!(host.breaker().state(), BreakerState::Closed);
}

/// A probe queued behind a *hung* probe does not pause the patience: two probe slots, one
/// connection; probe 1 is sent and hangs, probe 2 waits for its connection. 10 s into a 2 s
/// patience the next caller reopens the breaker. (With the first version of the pause, probe 2
/// kept it paused until the 1 h request timeout. Found by a review of 64e670d.)
#[tokio::test(start_paused = true)]
async fn a_hung_probe_reopens_after_the_patience_with_a_second_probe_queued_behind_it() {
    let url = upstream(Duration::ZERO).await;
    let breaker = breaker(2);
    // A long timeout (large downloads, say): the patience is what catches a hung probe.
    let client = Client::builder(&url)
        .max_connections_per_host(1)
        .breaker(breaker)
        .timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    let host = client.base_host();
    assert_eq!(client.get("/fail").await.unwrap().status(), 500);
    assert_eq!(host.breaker().state(), BreakerState::Open);

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let hung = spawn_get(&client, "/hang");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(host.breaker().state(), BreakerState::HalfOpen);
    let queued = spawn_get(&client, "/probe");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        !queued.is_finished(),
        "probe 2 waits for the only connection"
    );

    tokio::time::sleep(Duration::from_secs(10)).await;
    let refused = client.get("/other").await.unwrap_err();
    assert!(refused.is_circuit_open(), "{refused}");
    assert_eq!(
        host.breaker().state(),
        BreakerState::Open,
        "probe 1 sent and hung for 10 s under a 2 s patience, probe 2 queued behind it"
    );
    hung.abort();
    queued.abort();
}
