//! Regressions from a fourth bug-hunting review of the client (2026-11-26, fifth session):
//! `RateLimit` on several field lines, `Retry-After` beside a longer exhausted policy, and the
//! breaker's slow-call rule timing the exchange alone.

use std::time::Duration;

use http::{HeaderValue, Response};
use http_body_util::Full;
use hyper::body::Bytes;
use palisade_client::{BreakerState, Client};
use palisade_testkit::{Latency, Upstream};
use tokio::net::TcpListener;

mod common;

const SECOND: Duration = Duration::from_secs(1);

/// 1. `RateLimit` is a List field (RFC 9651 §3.1, RFC 9110 §5.3): an upstream (or a proxy in
/// front of it) may send one policy per field line. Only the first line is read, so an
/// exhausted policy on the second line sets no hold, and the next request is sent into it.
#[tokio::test(start_paused = true)]
async fn an_exhausted_policy_on_a_second_ratelimit_field_line_holds() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    common::serve(listener, |_req| {
        let mut res = Response::new(Full::new(Bytes::from_static(b"{}")));
        let h = res.headers_mut();
        h.append(
            "ratelimit",
            HeaderValue::from_static("\"daily\";r=50;t=1000"),
        );
        h.append("ratelimit", HeaderValue::from_static("\"burst\";r=0;t=10"));
        res
    });
    let client = Client::builder(format!("http://{addr}/")).build().unwrap();
    let res = client.get("/a").await.unwrap();
    assert_eq!(res.headers().get_all("ratelimit").iter().count(), 2);
    res.bytes().await.unwrap();
    assert!(
        client.base_host().held_until().is_some(),
        "\"burst\";r=0;t=10 on the second RateLimit field line did not hold the origin"
    );
}

/// 2. The README keeps the timeout below the pool so that "waiting for a turn or a connection
/// is not counted as the upstream's slowness" — but the breaker, above the pool, times each
/// call from its `call`, so the wait for a pooled connection counts towards its slow-call
/// rule. A healthy upstream answering every request in 300 ms (threshold 500 ms), behind one
/// connection, opens the breaker, and the client then refuses requests to it.
#[tokio::test(start_paused = true)]
async fn waiting_for_a_connection_is_not_a_slow_call_for_the_breaker() {
    let upstream = Upstream::builder()
        .latency(Latency::fixed(Duration::from_millis(300)))
        .start()
        .await
        .unwrap();
    let breaker = palisade_breaker::Config::builder()
        .count_window(10)
        .minimum_calls(4)
        .slow_calls(Duration::from_millis(500), 50)
        .build()
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .max_connections_per_host(1)
        .breaker(breaker)
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let res = c.get(&format!("/x/{i}")).await?;
            res.bytes().await?;
            Ok::<_, palisade_client::Error>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // Every exchange took 300 ms, well under the 500 ms threshold.
    let state = client.base_host().breaker().state();
    let next = client.get("/next").await.map(|r| r.status());
    assert!(
        state == BreakerState::Closed && next.is_ok(),
        "a healthy upstream (300 ms per answer, threshold 500 ms) behind one connection: \
         breaker {state:?}, counts {:?}; the next request: {next:?}",
        client.base_host().breaker().counts()
    );
}

/// 3. A `429` carrying both `Retry-After: 1` and an exhausted `RateLimit` policy for 60 s: the
/// README holds "until then" for each signal ("the longest such `t`"), but `observe` returns
/// after the `Retry-After`, so the origin is held for 1 s and the next request is sent 59 s
/// into a policy the upstream said was exhausted.
#[tokio::test(start_paused = true)]
async fn retry_after_does_not_shorten_an_exhausted_ratelimit_policy() {
    let (url, _count) = common::scripted(|_| {
        (
            429,
            vec![("retry-after", "1"), ("ratelimit", "\"hourly\";r=0;t=60")],
        )
    })
    .await;
    let client = Client::builder(&url).build().unwrap();
    client.get("/a").await.unwrap().bytes().await.unwrap();
    let held = client
        .base_host()
        .held_until()
        .map(|t| t - tokio::time::Instant::now());
    assert!(
        held.is_some_and(|d| d > 30 * SECOND),
        "429 with Retry-After: 1 and \"hourly\";r=0;t=60 holds the origin for {held:?}"
    );
}
