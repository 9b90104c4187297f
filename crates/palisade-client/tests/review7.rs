//! Regressions from a fifth bug-hunting review of the client (2026-11-26, sixth session): a
//! request version hyper cannot write, a URL without a host, state lost when a quiet origin is
//! forgotten, and an authority-form URI. Each test fails on 8d5b870.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, StatusCode, Version};
use palisade_breaker::State;
use palisade_client::{Body, Client, Origin, Quota, Retries};
use palisade_testkit::Upstream;
use tokio::time::Instant;

const SECOND: Duration = Duration::from_secs(1);

/// A server that records `method uri host` of every request it answers (`200`, `ok`).
async fn recording() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    common::serve(listener, move |req| {
        s.lock().unwrap().push(format!(
            "{} {} {:?}",
            req.method(),
            req.uri(),
            req.headers().get("host")
        ));
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")))
    });
    (addr, seen)
}

// 1. A request whose version hyper's HTTP/1 encoder cannot write (HTTP/3, HTTP/0.9) reaches
// hyper as it is: hyper panics in the connection's task ("unexpected request version"), the
// request fails as a wire error (`is_request`, "dispatch task is gone"), nothing reaches the
// upstream, and the breaker counts each as an upstream failure: three such requests open the
// circuit, and a healthy GET is then refused. (hyper-util's legacy client refuses such a
// version with `UserUnsupportedVersion` before sending.)
#[tokio::test(start_paused = true)]
async fn a_request_version_hyper_cannot_write_does_not_open_the_breaker() {
    let upstream = Upstream::builder().start().await.unwrap();
    let client = Client::builder(upstream.url("/"))
        .breaker(
            palisade_breaker::Config::builder()
                .consecutive_failures(3)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut results = Vec::new();
    for i in 0..3 {
        let req = Request::get(format!("/v3/{i}"))
            .version(Version::HTTP_3)
            .body(Body::default())
            .unwrap();
        results.push(client.request(req).await.map(|r| r.status()));
    }
    assert_eq!(
        client.base_host().breaker().state(),
        State::Closed,
        "the upstream received {} request(s), yet the breaker opened; the requests: {results:?}",
        upstream.requests_received()
    );
    for r in &results {
        assert!(
            matches!(r, Ok(StatusCode::OK)) || r.as_ref().is_err_and(|e| e.is_builder()),
            "a version the client cannot send is the caller's error: {r:?}"
        );
    }
    let res = client.get("/healthy").await;
    assert!(
        matches!(&res, Ok(r) if r.status() == StatusCode::OK),
        "{res:?}"
    );
}

// 2. `build` promises an error for a base URL that is not "absolute, with an http or https
// scheme and a host", and RFC 9110 §4.2.1 says an http URI with an empty host is invalid.
// `http://:8080/` builds, and every request then fails as a connect error (a breaker failure)
// after a DNS lookup of "". The same URL given to `get` is a connect error too.
#[tokio::test(start_paused = true)]
async fn a_url_without_a_host_is_a_builder_error() {
    match Client::builder("http://:8080/").build() {
        Ok(client) => {
            let e = client.get("/x").await.map(|r| r.status()).unwrap_err();
            panic!("built a client for a URL without a host; its request failed with: {e}");
        }
        Err(e) => assert!(e.is_builder(), "{e:?}"),
    }
    let (addr, _) = recording().await;
    let client = Client::builder(format!("http://{addr}/")).build().unwrap();
    let e = client
        .get("http://:8080/x")
        .await
        .map(|r| r.status())
        .unwrap_err();
    assert!(e.is_builder(), "{e:?}");
}

// 3a. Forgetting quiet origins (max_origins) loses a quota set through the origin's `Host`
// (`Host::limiter` invites "quota changes"): the origin is forgotten once its burst is full
// again, and comes back with the builder's unlimited rate. The docs promise forgetting "loses
// nothing that would count against a request".
#[tokio::test(start_paused = true)]
async fn forgetting_an_origin_keeps_a_quota_set_through_its_host() {
    let base = Upstream::builder().start().await.unwrap();
    let a = Upstream::builder().start().await.unwrap();
    let b = Upstream::builder().start().await.unwrap();
    let client = Client::builder(base.url("/"))
        .max_origins(1)
        .pool_idle_timeout(SECOND)
        .build()
        .unwrap();
    let origin_a = Origin::of(&a.url("/").parse().unwrap()).unwrap();
    client
        .get(&a.url("/1"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let one_per_minute = Quota::per_minute(1).unwrap();
    client
        .host(&origin_a)
        .unwrap()
        .limiter()
        .set_quota(one_per_minute);
    // Two minutes on: a's connection has closed and its burst is full again.
    tokio::time::sleep(120 * SECOND).await;
    a.wait_for_open_connections(0).await;
    // A request to another origin sweeps the quiet ones.
    client
        .get(&b.url("/1"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();

    let started = tokio::time::Instant::now();
    client
        .get(&a.url("/2"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    client
        .get(&a.url("/3"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let quota = client.host(&origin_a).unwrap().limiter().quota();
    assert!(
        quota == one_per_minute && started.elapsed() >= 59 * SECOND,
        "a's quota is now {quota:?}; two requests to it took {:?} under a 1/min quota",
        started.elapsed()
    );
}

/// Eight requests to an origin that answers `429` (no `Retry-After`: retried with backoff),
/// each followed by one to another origin; with a retry budget of 10 retries per 10 s and no
/// ratio. Returns how many requests the 429 origin received.
async fn arrivals_at_a_429_origin(max_origins: usize) -> u64 {
    let (throttled, count) = common::scripted(|_| (429, vec![])).await;
    let (other, _) = common::scripted(|_| (200, vec![])).await;
    let (base, _) = common::scripted(|_| (200, vec![])).await;
    let client = Client::builder(&base)
        .max_origins(max_origins)
        .pool_idle_timeout(Duration::from_millis(100))
        .retries(
            Retries::new(2)
                .budget(0.0, 1, 10 * SECOND)
                .backoff(Duration::from_millis(1), Duration::from_millis(1)),
        )
        .build()
        .unwrap();
    for _ in 0..8 {
        let res = client.get(&format!("{throttled}x")).await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        res.bytes().await.unwrap();
        // Its connection closes (idle timeout): the origin is quiet.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let res = client.get(&format!("{other}y")).await.unwrap();
        res.bytes().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    count.load(Ordering::SeqCst)
}

// 3b. Forgetting an origin also forgets its spent retry budget: the fresh origin gets a full
// reserve. With a reserve of 10 retries, 8 requests cost the upstream at most 8 + 10 = 18
// arrivals (what it gets when the origin is remembered); with max_origins(1) it gets 24 —
// every request retried twice, the budget refilled by each forgetting. The README: "at most
// what the budget pays for".
#[tokio::test(start_paused = true)]
async fn forgetting_an_origin_does_not_refill_its_retry_budget() {
    let remembered = arrivals_at_a_429_origin(1000).await;
    let forgetting = arrivals_at_a_429_origin(1).await;
    assert!(
        forgetting <= 8 + 10,
        "the 429 origin received {forgetting} requests when forgotten between requests \
         ({remembered} when remembered); the budget allows 8 + 10"
    );
}

// 4. `request` resolves a relative URI against the base URL; a URI naming another server in
// authority form (`host:port`, no scheme) is not relative, but its authority is dropped and
// the request is sent to the base URL's root instead (the server it names gets nothing).
#[tokio::test(start_paused = true)]
async fn a_uri_naming_another_server_is_not_sent_to_the_base_url() {
    let (base_addr, base_seen) = recording().await;
    let (other_addr, other_seen) = recording().await;
    let client = Client::builder(format!("http://{base_addr}/v1/"))
        .build()
        .unwrap();
    let req = Request::get(other_addr.to_string())
        .body(Body::default())
        .unwrap();
    assert_eq!(
        req.uri().authority().map(|a| a.as_str().to_owned()),
        Some(other_addr.to_string())
    );
    let res = client.request(req).await.map(|r| r.status());
    let base_seen = base_seen.lock().unwrap().clone();
    let other_seen = other_seen.lock().unwrap().clone();
    assert!(
        base_seen.is_empty()
            && (res.as_ref().is_err_and(|e| e.is_builder()) || other_seen.len() == 1),
        "a request for {other_addr}: {res:?}; the base URL's server got {base_seen:?}, \
         {other_addr} got {other_seen:?}"
    );
}

const MS: Duration = Duration::from_millis(1);

/// (From a review of 7bf2b65: `is_rested` said "rested" one window after the last withdrawal,
/// but tower's `TpsBudget` turns its slots lazily and counts it up to a tenth longer.)
/// An origin answering 429, 429, 200, 429, 429, ... with a retry budget of one retry per
/// second and no ratio (a reserve of one retry), at most one retry per request:
/// t=0: a request, 429, retried (the budget spent), 429;
/// t=960 ms: a request, 200 (its deposit rotates the budget's slots: the withdrawal's slot
///           comes round again and stays until the next rotation, 100 ms on);
/// t=1020 ms: a request to another origin (a sweep when `max_origins` is 1), then one to the
///           first, 429: retried only if the budget is full again.
/// Returns how many requests the first origin received.
async fn arrivals_after_a_window(max_origins: usize) -> u64 {
    let (throttled, count) =
        common::scripted(|n| if n == 3 { (200, vec![]) } else { (429, vec![]) }).await;
    let (other, _) = common::scripted(|_| (200, vec![])).await;
    let (base, _) = common::scripted(|_| (200, vec![])).await;
    let client = Client::builder(&base)
        .max_origins(max_origins)
        .pool_idle_timeout(20 * MS)
        .retries(
            Retries::new(1)
                .budget(0.0, 1, Duration::from_secs(1))
                .backoff(MS, MS),
        )
        .build()
        .unwrap();
    let t0 = Instant::now();
    let res = client.get(&format!("{throttled}a")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    res.bytes().await.unwrap();
    assert!(t0.elapsed() <= 5 * MS, "{:?}", t0.elapsed());
    assert_eq!(count.load(Ordering::SeqCst), 2, "retried once");

    tokio::time::sleep_until(t0 + 960 * MS).await;
    let res = client.get(&format!("{throttled}b")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.bytes().await.unwrap();

    // Its connection has closed (idle 20 ms): the origin is otherwise quiet.
    tokio::time::sleep_until(t0 + 1020 * MS).await;
    client
        .get(&format!("{other}x"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let res = client.get(&format!("{throttled}c")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    res.bytes().await.unwrap();
    count.load(Ordering::SeqCst)
}

#[tokio::test(start_paused = true)]
async fn forgetting_an_origin_one_window_after_its_last_retry_does_not_refill_its_budget() {
    let remembered = arrivals_after_a_window(1000).await;
    let forgetting = arrivals_after_a_window(1).await;
    assert_eq!(
        forgetting, remembered,
        "the 429 origin received {forgetting} requests when forgotten at t=1020 ms, \
         {remembered} when remembered: its budget still counted the retry made at t=0 \
         (1 s window), but is_rested() said it was rested and the sweep refilled it"
    );
}
