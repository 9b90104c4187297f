//! Regressions from a review of the client fixes (61a8d7a): a head collected after its
//! deadline left the body unbounded; `max_rate_wait` and the shutdown cut-off missed a hold met
//! at the connection; refusals from `poll_ready` bypassed the retry policy; an unparsable port
//! became the default port.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use palisade_client::{Client, Origin, Retries};
use palisade_testkit::{Latency, Outage, Upstream};

mod common;

const SECOND: Duration = Duration::from_secs(1);

/// A: the response head is in hyper's hands before the deadline, but the exchange future is
/// polled only after the connection's task marked the deadline ELAPSED: `head_received`'s
/// compare-exchange fails, the watch stays ELAPSED (ignored by `keep`, not cleared by
/// `body_done`) and the body is never bounded.
#[tokio::test(start_paused = true)]
async fn a_head_collected_after_the_deadline_leaves_the_body_unbounded() {
    let upstream = Upstream::builder()
        .slow_body(2, Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .timeout(2 * SECOND)
        .build()
        .unwrap();
    let mut fut = Box::pin(client.get("/a"));
    tokio::select! {
        biased;
        r = &mut fut => panic!("answered early: {:?}", r.map(|r| r.status())),
        () = upstream.wait_for_requests(1) => {}
    }
    // The head arrives at once; this task is busy elsewhere past the deadline.
    tokio::time::sleep(3 * SECOND).await;
    let res = match fut.await {
        // Acceptable: the exchange is reported as timed out.
        Err(e) => {
            assert!(e.is_timeout(), "{e:?}");
            return;
        }
        Ok(res) => res,
    };
    let body = tokio::spawn(res.bytes());
    tokio::time::sleep(60 * SECOND).await;
    assert!(
        body.is_finished(),
        "60 s after a 2 s deadline the body read (stalled upstream) is still pending"
    );
}

/// Sets up: request /a holds the only connection; /b waits for it in the pool (past the hold
/// wait, before any hold); /a is answered 503 + Retry-After: 60 at t = 1 s and its body read,
/// the connection goes to /b, which finds the hold (`Held`) and sleeps in `GateFuture`.
async fn held_in_gate_future(
    max_rate_wait: Option<Duration>,
) -> (
    Upstream,
    Client,
    tokio::task::JoinHandle<Result<StatusCode, palisade_client::Error>>,
) {
    let upstream = Upstream::builder()
        .outage(Outage::requests(1..2).retry_after(Duration::from_secs(60)))
        .latency(Latency::fixed(SECOND))
        .start()
        .await
        .unwrap();
    let mut b = Client::builder(upstream.url("/"))
        .max_connections_per_host(1)
        .timeout(10 * SECOND);
    if let Some(w) = max_rate_wait {
        b = b.max_rate_wait(w);
    }
    let client = b.build().unwrap();
    let a = tokio::spawn({
        let client = client.clone();
        async move {
            let res = client.get("/a").await.unwrap();
            let status = res.status();
            res.bytes().await.unwrap();
            status
        }
    });
    upstream.wait_for_requests(1).await;
    let second = tokio::spawn({
        let client = client.clone();
        async move { client.get("/b").await.map(|r| r.status()) }
    });
    tokio::task::yield_now().await;
    assert_eq!(a.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(client.base_host().held_until().is_some());
    tokio::task::yield_now().await;
    (upstream, client, second)
}

/// B: max_rate_wait bounds a hold met in `HoldWait` only; a hold met at the connection
/// (`Held`, waited out in `GateFuture`) is waited in full.
#[tokio::test(start_paused = true)]
async fn max_rate_wait_bounds_a_hold_found_at_the_connection() {
    let (upstream, _client, second) = held_in_gate_future(Some(Duration::from_millis(100))).await;
    tokio::time::sleep(5 * SECOND).await;
    assert!(
        second.is_finished(),
        "with max_rate_wait(100 ms), /b still waits for the 60 s hold 5 s later \
         (upstream saw {})",
        upstream.requests_received()
    );
    let e = second.await.unwrap().unwrap_err();
    assert!(e.is_rate_limited(), "{e:?}");
}

/// C: the shutdown cut-off does not reach a request sleeping a hold in `GateFuture`.
#[tokio::test(start_paused = true)]
async fn the_shutdown_cut_off_reaches_a_hold_found_at_the_connection() {
    let (upstream, client, second) = held_in_gate_future(None).await;
    let report = client.shutdown(SECOND).await;
    assert!(!report.drained, "{report}");
    tokio::time::sleep(10 * SECOND).await;
    assert!(
        second.is_finished(),
        "11 s after a 1 s shutdown deadline /b still sleeps the 60 s hold ({report}; \
         upstream saw {})",
        upstream.requests_received()
    );
    let e = second.await.unwrap().unwrap_err();
    assert!(e.is_shutdown(), "{e:?}");
}

/// 502 with an exhausted `RateLimit` policy on the first request, 200 after.
async fn scripted_502_then_ok() -> (String, Arc<AtomicU64>) {
    common::scripted(|n| {
        if n == 1 {
            (502, vec![("ratelimit", "\"p\";r=0;t=60")])
        } else {
            (200, vec![])
        }
    })
    .await
}

/// D: `HoldWait` now refuses in `poll_ready`; tower's `Retry` returns a `poll_ready` error
/// as it is, without the policy: a retry refused there is a bare `RateLimited` ("never left
/// this process") for a request the upstream did receive, not `RetryRefused`.
#[tokio::test(start_paused = true)]
async fn a_retry_refused_by_max_rate_wait_says_the_request_was_sent() {
    let (url, count) = scripted_502_then_ok().await;
    let client = Client::builder(&url)
        .retries(Retries::new(2))
        .max_rate_wait(SECOND)
        .build()
        .unwrap();
    let e = client.get("/a").await.map(|r| r.status()).unwrap_err();
    assert_eq!(count.load(Ordering::SeqCst), 1);
    let refused = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<palisade_client::RetryRefused>());
    assert!(
        !e.is_refused() && refused.is_some(),
        "sent once, then: {e} (is_refused {}, RetryRefused underneath: {})",
        e.is_refused(),
        refused.is_some()
    );
}

/// D': the same through the shutdown cut-off (a retry's backoff ended by the deadline).
#[tokio::test(start_paused = true)]
async fn a_retry_cut_off_at_shutdown_says_the_request_was_sent() {
    let upstream = Upstream::builder()
        .outage(Outage::requests(1..1000).status(502))
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .retries(Retries::new(3).backoff(10 * SECOND, 10 * SECOND))
        .build()
        .unwrap();
    let a = tokio::spawn({
        let client = client.clone();
        async move { client.get("/a").await.map(|r| r.status()) }
    });
    upstream.wait_for_requests(1).await;
    let report = client.shutdown(SECOND).await;
    let e = a.await.unwrap().unwrap_err();
    assert_eq!(upstream.requests_received(), 1, "{report}");
    assert!(
        !e.is_refused(),
        "sent once, then cut in its backoff: {e} (is_refused = 'never left this process')"
    );
}

/// E: a port that is not a u16 (`:99999`, accepted by `http::Uri`) is now respelled away:
/// the URL becomes the default port's origin (same breaker, limiter, pool).
#[test]
fn an_unparsable_port_is_not_the_default_port() {
    let o = |s: &str| Origin::of(&s.parse().unwrap());
    let bad = o("http://api.example:99999/");
    assert!(
        bad.is_none() || bad != o("http://api.example/"),
        "http://api.example:99999 is the origin {:?}",
        bad
    );
}

/// Sanity (no bug expected): IPv6 with ports, default ports.
#[test]
fn ipv6_and_default_ports() {
    let o = |s: &str| Origin::of(&s.parse().unwrap()).unwrap();
    assert_eq!(o("http://[::1]:8080/").authority().as_str(), "[::1]:8080");
    assert_eq!(o("http://[::1]:8080/").port(), 8080);
    assert_eq!(o("http://[::1]:80/"), o("http://[::1]/"));
    assert_eq!(o("http://[::1]:080/"), o("http://[::1]/"));
    assert_eq!(o("http://h:80"), o("http://h"));
    assert_eq!(o("https://h:443"), o("https://h"));
    assert_ne!(o("http://h:443"), o("http://h"));
    assert_eq!(o("http://[::ABCD]:8080/"), o("http://[::abcd]:8080/"));
}
