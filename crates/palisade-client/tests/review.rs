//! Regressions from a second bug-hunting review of the client: `Retry-After` as an HTTP-date,
//! breaker failures forgotten with an origin, an upper-case scheme, an unbounded
//! `max_retry_after`, requests left waiting past the shutdown deadline, a multi-policy
//! `RateLimit` header, `max_rate_wait` and holds, the timeout and the response body, ports
//! spelled two ways, https without the `tls` feature, and the `User-Agent` of the client used
//! as a `tower::Service`. Each test failed before its fix. The last one guards the router's
//! fast path for the base origin (a URL spelled otherwise is respelled before the pool).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use palisade_client::{Client, Origin, Retries};
use palisade_testkit::{Outage, Upstream};

mod common;
use common::scripted;

const SECOND: Duration = Duration::from_secs(1);

// 1. Retry-After in its HTTP-date form (RFC 9110 §10.2.3) is ignored: no hold, and the 429 is
// retried after a ~100 ms backoff instead of after the date (or returned, the date being
// beyond max_retry_after).
#[tokio::test(start_paused = true)]
async fn a_429_with_an_http_date_retry_after_is_not_retried_early() {
    let (url, count) = scripted(|n| {
        if n == 1 {
            (429, vec![("retry-after", "Fri, 31 Dec 2100 23:59:59 GMT")])
        } else {
            (200, vec![])
        }
    })
    .await;
    let client = Client::builder(&url)
        .retries(Retries::new(2))
        .build()
        .unwrap();
    let res = client.get("/a").await.unwrap();
    // The date is decades away: far beyond max_retry_after (30 s), so the 429 must come back
    // as it is, and the origin be held.
    assert_eq!(
        (res.status(), count.load(Ordering::SeqCst)),
        (StatusCode::TOO_MANY_REQUESTS, 1),
        "the 429 was retried against its Retry-After date"
    );
    assert!(client.base_host().held_until().is_some(), "no hold was set");
}

// 2. Forgetting a "quiet" origin (max_origins) loses its breaker's failure count: an origin
// that fails on every visit never opens its breaker when the client visits other origins in
// between. The docs promise "forgetting one loses nothing a fresh one would not have".
#[tokio::test(start_paused = true)]
async fn forgetting_an_origin_does_not_lose_its_breaker_failures() {
    let base = Upstream::builder().start().await.unwrap();
    let failing = Upstream::builder()
        .outage(Outage::requests(1..1000).status(500))
        .start()
        .await
        .unwrap();
    let others: Vec<Upstream> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            v.push(Upstream::builder().start().await.unwrap());
        }
        v
    };
    let breaker = palisade_breaker::Config::builder()
        .consecutive_failures(2)
        .build()
        .unwrap();
    let client = Client::builder(base.url("/"))
        .max_origins(1)
        .pool_idle_timeout(SECOND)
        .breaker(breaker)
        .build()
        .unwrap();
    let origin = Origin::of(&failing.url("/").parse().unwrap()).unwrap();
    for other in &others {
        let res = client.get(&failing.url("/x")).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        res.bytes().await.unwrap();
        // Its connection idles out; then another origin comes.
        tokio::time::sleep(2 * SECOND).await;
        failing.wait_for_open_connections(0).await;
        client
            .get(&other.url("/y"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    // Two consecutive failures, nothing in between to this origin: its breaker must be open.
    let res = client.get(&failing.url("/x")).await;
    assert!(
        matches!(&res, Err(e) if e.is_circuit_open()),
        "third request after two consecutive 500s was sent: {:?}; upstream saw {}",
        res.map(|r| r.status()),
        failing.requests_received()
    );
    let _ = client.host(&origin);
}

// 3. An absolute URL whose scheme is not in lower case (schemes are case-insensitive,
// RFC 3986 §3.1) is taken for a relative path and sent to the base origin.
#[tokio::test(start_paused = true)]
async fn an_absolute_url_with_an_upper_case_scheme_goes_to_its_own_origin() {
    let base = Upstream::builder().start().await.unwrap();
    let other = Upstream::builder().start().await.unwrap();
    let client = Client::builder(base.url("/")).build().unwrap();
    let url = other.url("/x").replacen("http://", "HTTP://", 1);
    let res = client.get(&url).await;
    assert_eq!(
        (base.requests_received(), other.requests_received()),
        (0, 1),
        "{url} was sent to the base origin as {:?}: {:?}",
        base.records().first().map(|r| r.path.clone()),
        res.map(|r| r.status())
    );
}

// 4. build() accepts max_retry_after(Duration::MAX) (it checks nothing), and then a response
// with a huge Retry-After panics the request (`Instant + Duration` overflows in the hold).
#[tokio::test(start_paused = true)]
async fn a_huge_retry_after_under_an_unbounded_cap_does_not_panic() {
    let upstream = Upstream::builder()
        .outage(Outage::requests(1..2).retry_after(Duration::from_secs(u64::MAX)))
        .start()
        .await
        .unwrap();
    let client = match Client::builder(upstream.url("/"))
        .max_retry_after(Duration::MAX)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            // A readable builder error is an acceptable answer too.
            assert!(e.is_builder());
            return;
        }
    };
    let c = client.clone();
    let joined = tokio::spawn(async move { c.get("/a").await.map(|r| r.status()) }).await;
    assert!(joined.is_ok(), "the request panicked: {joined:?}");
}

// 5. Shutdown "lets those in flight finish for at most `deadline`": a request still waiting
// for its rate-limit turn when the deadline passes keeps waiting for it (a minute here) and
// only then fails; it is neither completed nor cut off in the report.
#[tokio::test(start_paused = true)]
async fn requests_waiting_in_the_rate_limiter_end_at_the_shutdown_deadline() {
    let upstream = Upstream::builder().start().await.unwrap();
    let client = Client::builder(upstream.url("/"))
        .rate("1/min")
        .burst(1)
        .build()
        .unwrap();
    client.get("/first").await.unwrap().bytes().await.unwrap();
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.get("/second").await.map(|r| r.status()) }
    });
    tokio::task::yield_now().await;
    assert_eq!(client.in_flight(), 1);
    let report = client.shutdown(SECOND).await;
    assert!(!report.drained, "{report}");
    // Well past the deadline (and well before the turn, 60 s after the first request):
    tokio::time::sleep(10 * SECOND).await;
    assert!(
        waiting.is_finished(),
        "11 s after a 1 s shutdown deadline the request still waits for its rate-limit turn \
         ({report}; in flight: {})",
        client.in_flight()
    );
    let e = waiting.await.unwrap().unwrap_err();
    assert!(e.is_shutdown(), "{e:?}");
}

// 6. The IETF RateLimit field is a List: with two policies, an exhausted one not listed last
// is missed (its `t` absorbs the rest of the list), so no hold and the next request gets a 429.
#[tokio::test(start_paused = true)]
async fn an_exhausted_policy_among_several_in_the_ratelimit_header_holds() {
    let (url, _count) = scripted(|_| {
        (
            200,
            vec![("ratelimit", "\"hourly\";r=0;t=10, \"daily\";r=50;t=1000")],
        )
    })
    .await;
    let client = Client::builder(&url).build().unwrap();
    client.get("/a").await.unwrap().bytes().await.unwrap();
    assert!(
        client.base_host().held_until().is_some(),
        "r=0;t=10 on the first policy did not hold the origin"
    );
}

// 7. max_rate_wait promises to "fail a request at once with a rate-limit error when its turn is
// further away than this". A Retry-After hold defers the limiter to its end, but the request
// never reaches the limiter: it waits out the whole hold (60 s here) in the hold wait above it.
#[tokio::test(start_paused = true)]
async fn max_rate_wait_bounds_the_wait_for_an_upstream_hold_too() {
    let upstream = Upstream::builder()
        .outage(Outage::requests(1..2).retry_after(Duration::from_secs(60)))
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .max_rate_wait(Duration::from_millis(100))
        .build()
        .unwrap();
    let res = client.get("/a").await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    res.bytes().await.unwrap();
    assert!(client.base_host().held_until().is_some());
    let second = tokio::spawn({
        let client = client.clone();
        async move { client.get("/b").await.map(|r| r.status()) }
    });
    tokio::time::sleep(SECOND).await;
    assert!(
        second.is_finished(),
        "with max_rate_wait(100 ms) the request still waits for the 60 s hold after 1 s"
    );
    let e = second.await.unwrap().unwrap_err();
    assert!(e.is_rate_limited(), "{e:?}");
}

// 8. The per-request timeout does not bound reading the body: a body that stalls after the
// head keeps `bytes()` (and the connection) forever, although the README calls the timeout
// "per exchange" (the builder's doc says "to its response head").
#[tokio::test(start_paused = true)]
async fn a_stalled_body_is_not_bounded_by_the_timeout() {
    let upstream = Upstream::builder()
        .slow_body(2, Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let res = client.get("/a").await.unwrap();
    let body = tokio::spawn(res.bytes());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        body.is_finished(),
        "60 s after the head, with a 2 s timeout, the body read is still pending"
    );
}

// 9. Origins are promised to compare as scheme + lowercase host + port; a port spelled with
// leading zeros, or an empty port (RFC 3986: the default), makes another origin (another
// breaker, limiter and pool for the same server).
#[test]
fn origins_compare_ports_as_numbers() {
    let o = |s: &str| Origin::of(&s.parse().unwrap()).unwrap();
    let empty = o("http://api.example/") == o("http://api.example:/");
    let zeros = o("http://api.example:8080/") == o("http://api.example:08080/");
    assert!(
        empty && zeros,
        "empty port same origin: {empty}; leading zeros same origin: {zeros}"
    );
}

// 10. Without the `tls` feature an https URL builds; then each request opens a TCP
// connection to the server before finding it cannot speak TLS, and fails as a *connect* error,
// which the breaker counts as an upstream failure and the retry policy retries.
#[cfg(not(feature = "tls"))]
#[tokio::test(start_paused = true)]
async fn https_without_the_tls_feature_is_a_builder_error_not_an_upstream_failure() {
    let upstream = Upstream::builder().start().await.unwrap();
    let url = upstream.url("/").replacen("http://", "https://", 1);
    let built = Client::builder(&url).retries(Retries::new(2)).build();
    let client = match built {
        Err(e) => {
            assert!(e.is_builder());
            return;
        }
        Ok(c) => c,
    };
    let e = client.get("/a").await.unwrap_err();
    let host = client.base_host();
    assert!(
        e.is_builder() && host.breaker().counts().failures == 0 && host.retries().0 == 0,
        "{e}: class {}, breaker {:?} with {} failure(s), {} retries, {} TCP connections accepted",
        e.class(),
        host.breaker().state(),
        host.breaker().counts().failures,
        host.retries().0,
        upstream.connections_accepted()
    );
}

/// A server on `addr` that records the Host and User-Agent of every request.
async fn capture(
    addr: &str,
) -> Option<(String, Arc<std::sync::Mutex<Vec<(String, Option<String>)>>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.ok()?;
    let local = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    common::serve(listener, move |req| {
        let h = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
        s.lock()
            .unwrap()
            .push((h("host").unwrap_or_default(), h("user-agent")));
        Response::new(Full::new(Bytes::new()))
    });
    let url = match local {
        std::net::SocketAddr::V6(a) => format!("http://[{}]:{}/", a.ip(), a.port()),
        std::net::SocketAddr::V4(a) => format!("http://{a}/"),
    };
    Some((url, seen))
}

// 11. The configured User-Agent is added by get()/request() only: the same client used as the
// tower::Service it advertises sends requests without any User-Agent.
#[tokio::test(start_paused = true)]
async fn the_client_as_a_service_sends_the_configured_user_agent() {
    use tower::{Service, ServiceExt};
    let (url, seen) = capture("127.0.0.1:0").await.unwrap();
    let client = Client::builder(&url).user_agent("me/1").build().unwrap();
    client.get("/a").await.unwrap().bytes().await.unwrap();
    let mut svc = client.clone();
    let req = Request::get(format!("{url}b"))
        .body(palisade_client::Body::default())
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    drop(res);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].1.as_deref(), Some("me/1"));
    assert_eq!(
        seen[1].1.as_deref(),
        Some("me/1"),
        "through the Service: {seen:?}"
    );
}

// The other side of 8: a body that arrives within the timeout is read whole, on a new and on
// a reused connection, and a connection whose body was read is not cut off later (its deadline
// ended with the body).
#[tokio::test(start_paused = true)]
async fn a_body_read_within_the_timeout_is_not_cut_off() {
    let upstream = Upstream::builder()
        .slow_body(2, Duration::from_millis(500))
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    for path in ["/a", "/b"] {
        let body = client.get(path).await.unwrap().bytes().await;
        assert!(body.is_ok(), "{path}: {body:?}");
    }
    assert_eq!(
        client.pool().stats().total.opened,
        1,
        "the connection was reused"
    );
    // Idle for longer than the timeout, then used again: not closed by a stale deadline.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let body = client.get("/c").await.unwrap().bytes().await;
    assert!(body.is_ok(), "{body:?}");
    assert_eq!(
        client.pool().stats().total.opened,
        1,
        "the idle connection was kept"
    );
}

// The router hands the stack below a URI in its origin's one spelling (the pool keys its
// connections by it): a URL naming the base origin with credentials goes to the base origin's
// connection, and the upstream sees the origin's `Host`, without the credentials.
#[tokio::test(start_paused = true)]
async fn a_url_spelling_the_base_origin_otherwise_shares_its_connection() {
    let (url, seen) = capture("127.0.0.1:0").await.unwrap();
    let client = Client::builder(&url).build().unwrap();
    client.get("/a").await.unwrap().bytes().await.unwrap();
    let other_spelling = url.replacen("http://", "http://user:secret@", 1);
    client
        .get(&format!("{other_spelling}b"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    let authority = url.trim_start_matches("http://").trim_end_matches('/');
    assert_eq!(
        seen.iter()
            .map(|(host, _)| host.as_str())
            .collect::<Vec<_>>(),
        [authority, authority]
    );
    assert_eq!(client.pool().stats().total.opened, 1, "one connection");
}

// A twelfth review's check of the same fast path, kept: a base URL spelled every other way
// (credentials, an upper-case scheme, a port with leading zeros), retries on with a 503
// first, and URLs naming that origin in each spelling through `get`, `request` and the client
// as a `tower::Service`: one pool key, one connection.
#[tokio::test(start_paused = true)]
async fn every_spelling_of_an_origin_shares_one_pool_key() {
    use tower::{Service, ServiceExt};
    let (url, _) = scripted(|n| if n == 1 { (503, vec![]) } else { (200, vec![]) }).await;
    let port = url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches('/')
        .to_owned();
    let client = Client::builder(format!("HTTP://User:Pw@127.0.0.1:0{port}/v1/"))
        .retries(Retries::new(3))
        .build()
        .unwrap();
    client.get("/rel").await.unwrap().bytes().await.unwrap();
    for s in [
        format!("http://127.0.0.1:{port}/x"),
        format!("HTTP://127.0.0.1:{port}/x"),
        format!("http://u@127.0.0.1:{port}/x"),
        format!("http://127.0.0.1:00{port}/x"),
        format!("hTTp://a:b@127.0.0.1:{port}?q"),
    ] {
        client.get(&s).await.unwrap().bytes().await.unwrap();
        let req = Request::get(s.as_str())
            .body(palisade_client::Body::default())
            .unwrap();
        client.request(req).await.unwrap().bytes().await.unwrap();
        let mut svc = client.clone();
        let req = Request::get(s.as_str())
            .body(palisade_client::Body::default())
            .unwrap();
        drop(svc.ready().await.unwrap().call(req).await.unwrap());
    }
    let stats = client.pool().stats();
    assert_eq!(stats.keys.len(), 1, "{stats:?}");
    assert_eq!(stats.total.opened, 1);
}
