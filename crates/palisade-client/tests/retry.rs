//! Retries (`ClientBuilder::retries`) against the testkit upstream, on paused tokio time: what
//! is retried, when, with what body, and how much an outage can cost the upstream.

use std::time::Duration;

use http::{Method, Request, StatusCode};
use palisade_client::{Body, BreakerState, Client, Idempotent, Retries};
use palisade_testkit::{Outage, Upstream};

const SECOND: Duration = Duration::from_secs(1);

/// A breaker that never opens within these tests' volumes.
fn lenient_breaker() -> palisade_breaker::Config {
    palisade_breaker::Config::builder()
        .count_window(1000)
        .minimum_calls(1000)
        .build()
        .unwrap()
}

fn request(method: Method, url: String, id: &str, body: &'static str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(url)
        .header("x-request-id", id)
        .body(Body::from(body))
        .unwrap()
}

fn arrivals(upstream: &Upstream, id: &str) -> Vec<palisade_testkit::Record> {
    upstream
        .records()
        .into_iter()
        .filter(|r| r.id == id)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_is_retried_no_earlier_and_succeeds() {
    // One request per 2 s window: of two sent at once, the second to arrive is answered 429
    // with Retry-After: 2.
    let upstream = Upstream::builder()
        .rate_limit(1, 2 * SECOND)
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .retries(Retries::new(2))
        .breaker(lenient_breaker())
        .build()
        .unwrap();
    let (a, b) = tokio::join!(
        client.request(request(Method::GET, upstream.url("/a"), "a", "")),
        client.request(request(Method::GET, upstream.url("/b"), "b", "")),
    );
    assert_eq!(a.unwrap().status(), StatusCode::OK);
    assert_eq!(
        b.unwrap().status(),
        StatusCode::OK,
        "the retry after Retry-After succeeds"
    );

    let records = upstream.records();
    assert_eq!(records.len(), 3, "two requests and one retry: {records:?}");
    let refused = &records[1];
    assert_eq!(
        refused.outcome.status(),
        Some(StatusCode::TOO_MANY_REQUESTS)
    );
    let retry = &records[2];
    assert_eq!(
        retry.id, refused.id,
        "the refused request is the one retried"
    );
    assert_eq!(retry.outcome.status(), Some(StatusCode::OK));
    assert!(
        retry.at >= refused.at + 2 * SECOND,
        "retried {:?} after the 429",
        retry.at - refused.at
    );
    assert_eq!(client.base_host().retries(), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn an_outage_costs_the_upstream_at_most_the_budget() {
    const REQUESTS: usize = 200;
    let upstream = Upstream::builder()
        .outage(Outage::time(Duration::ZERO..Duration::from_secs(3600)).status(502))
        .start()
        .await
        .unwrap();
    // 3 retries allowed per request, but a budget of 10 % and no floor.
    let client = Client::builder(upstream.url("/"))
        .retries(Retries::new(3).budget(0.1, 0, Duration::from_secs(10)))
        .breaker(lenient_breaker())
        .build()
        .unwrap();
    for i in 0..REQUESTS {
        let res = client.get(&format!("/api/item/{i}")).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    }
    let received = upstream.requests_received() as usize;
    let (retries, refused) = client.base_host().retries();
    assert!(received > REQUESTS, "some retries were made: {received}");
    assert!(
        received <= REQUESTS + REQUESTS / 10,
        "the upstream received {received} for {REQUESTS} requests: more than the 10 % budget"
    );
    assert_eq!(received, REQUESTS + retries as usize);
    assert!(refused > 0, "the budget refused retries");
}

#[tokio::test(start_paused = true)]
async fn once_the_breaker_opens_nothing_arrives_until_half_open() {
    let upstream = Upstream::builder()
        .outage(Outage::time(Duration::ZERO..Duration::from_secs(3600)).status(503))
        .start()
        .await
        .unwrap();
    let breaker = palisade_breaker::Config::builder()
        .count_window(10)
        .minimum_calls(10)
        .failure_rate(50)
        .open_duration(SECOND, 1, SECOND)
        .jitter(0)
        .build()
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .retries(Retries::new(3).budget(1.0, 100, Duration::from_secs(10)))
        .breaker(breaker)
        .build()
        .unwrap();
    let host = client.base_host();
    let mut sent = 0;
    while host.breaker().state() != BreakerState::Open {
        let _ = client.get(&format!("/x/{sent}")).await;
        sent += 1;
        assert!(sent < 50, "the breaker never opened");
    }
    let at_open = upstream.requests_received();
    // Refused at once, and never retried.
    for i in 0..20 {
        let e = client.get(&format!("/y/{i}")).await.unwrap_err();
        assert!(e.is_circuit_open(), "{e}");
    }
    assert_eq!(
        upstream.requests_received(),
        at_open,
        "nothing reaches the upstream while open"
    );
    // After the open time, one probe goes; it fails, the breaker reopens, its retry is refused.
    tokio::time::advance(SECOND).await;
    let res = client.get("/probe").await;
    assert!(
        matches!(&res, Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE),
        "{res:?}"
    );
    assert_eq!(
        upstream.requests_received(),
        at_open + 1,
        "only the probe arrived"
    );
    assert_eq!(host.breaker().state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_post_is_retried_only_when_marked_idempotent() {
    let upstream = Upstream::builder()
        .outage(Outage::time(Duration::ZERO..Duration::from_secs(3600)).status(503))
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .retries(Retries::new(2).budget(1.0, 100, Duration::from_secs(10)))
        .breaker(lenient_breaker())
        .build()
        .unwrap();
    let res = client
        .request(request(Method::POST, upstream.url("/p"), "plain", "x"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        arrivals(&upstream, "plain").len(),
        1,
        "a POST is not retried"
    );

    let mut marked = request(Method::POST, upstream.url("/p"), "marked", "x");
    marked.extensions_mut().insert(Idempotent);
    let res = client.request(marked).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        arrivals(&upstream, "marked").len(),
        3,
        "a marked POST is retried twice"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retried_put_sends_the_same_body() {
    // Only the first request fails.
    let upstream = Upstream::builder()
        .outage(Outage::requests(1..2).status(502))
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .retries(Retries::new(2))
        .breaker(lenient_breaker())
        .build()
        .unwrap();
    let body = "{\"name\":\"palisade\",\"bytes\":\"\\u00e9t\\u00e9\"}";
    let res = client
        .request(request(Method::PUT, upstream.url("/doc/1"), "put", body))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seen = arrivals(&upstream, "put");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].outcome.status(), Some(StatusCode::BAD_GATEWAY));
    for r in &seen {
        assert_eq!(
            r.body,
            body.as_bytes(),
            "attempt {} carried another body",
            r.n
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_written_request_that_lost_its_connection_is_retried_only_if_idempotent() {
    // The first request of each upstream is read, then its connection reset.
    let upstream = Upstream::builder()
        .reset_requests([1])
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .retries(Retries::new(2))
        .breaker(lenient_breaker())
        .build()
        .unwrap();
    let e = client
        .request(request(Method::POST, upstream.url("/p"), "post", "x"))
        .await
        .unwrap_err();
    assert!(e.is_request(), "{e}");
    assert_eq!(arrivals(&upstream, "post").len(), 1, "not retried");

    let upstream = Upstream::builder()
        .reset_requests([1])
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .retries(Retries::new(2))
        .breaker(lenient_breaker())
        .build()
        .unwrap();
    let res = client
        .request(request(Method::GET, upstream.url("/g"), "get", ""))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        arrivals(&upstream, "get").len(),
        2,
        "the GET was sent again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_connect_error_is_retried_whatever_the_method() {
    // A port nothing listens on: the request never leaves, so even a POST may go again.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = Client::builder(format!("http://{addr}/"))
        .retries(Retries::new(2).budget(1.0, 100, Duration::from_secs(10)))
        .breaker(lenient_breaker())
        .build()
        .unwrap();
    let e = client
        .request(request(Method::POST, format!("http://{addr}/p"), "p", "x"))
        .await
        .unwrap_err();
    assert!(e.is_connect(), "{e}");
    assert_eq!(client.base_host().retries(), (2, 0));
}

#[test]
fn bad_retry_settings_are_builder_errors() {
    for (retries, words) in [
        (
            Retries::new(1).budget(-1.0, 0, Duration::from_secs(10)),
            "ratio",
        ),
        (
            Retries::new(1).budget(0.1, 0, Duration::from_millis(10)),
            "window",
        ),
        (
            Retries::new(1).backoff(Duration::ZERO, Duration::from_secs(1)),
            "backoff",
        ),
        (
            Retries::new(1).backoff(Duration::from_secs(2), Duration::from_secs(1)),
            "backoff",
        ),
    ] {
        let e = Client::builder("http://127.0.0.1:9/")
            .retries(retries)
            .build()
            .unwrap_err();
        assert!(e.is_builder());
        assert!(e.to_string().contains(words), "{e}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_force_closed_breaker_still_lets_retries_through() {
    let upstream = Upstream::builder()
        .outage(Outage::requests(1..2).status(502))
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .retries(Retries::new(2))
        .build()
        .unwrap();
    client.base_host().breaker().force_closed();
    let res = client.get("/a").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(client.base_host().retries(), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn refusals_do_not_fund_the_retry_budget() {
    let upstream = Upstream::builder()
        .outage(Outage::time(Duration::ZERO..Duration::from_secs(3600)).status(502))
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .retries(Retries::new(3).budget(0.1, 0, Duration::from_secs(10)))
        .build()
        .unwrap();
    let host = client.base_host();
    host.breaker().force_open();
    for i in 0..100 {
        assert!(client
            .get(&format!("/r/{i}"))
            .await
            .unwrap_err()
            .is_circuit_open());
    }
    host.breaker().reset();
    for i in 0..3 {
        let res = client.get(&format!("/s/{i}")).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    }
    assert_eq!(
        upstream.requests_received(),
        3,
        "100 refusals bought no retries"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_refused_by_a_breaker_opened_meanwhile_says_the_request_was_sent() {
    let upstream = Upstream::builder()
        .outage(Outage::time(Duration::ZERO..Duration::from_secs(3600)).status(502))
        .start()
        .await
        .unwrap();
    let breaker = palisade_breaker::Config::builder()
        .consecutive_failures(2)
        .open_duration(60 * SECOND, 1, 60 * SECOND)
        .jitter(0)
        .build()
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .retries(Retries::new(1).backoff(10 * SECOND, 10 * SECOND).budget(
            1.0,
            100,
            Duration::from_secs(10),
        ))
        .breaker(breaker)
        .build()
        .unwrap();
    let c = client.clone();
    let a = tokio::spawn(async move { c.get("/a").await.map(|r| r.status()) });
    upstream.wait_for_requests(1).await;
    // A second failure opens the breaker while "/a" waits to retry.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let b = client.get("/b").await.unwrap();
    assert_eq!(b.status(), StatusCode::BAD_GATEWAY);
    let e = a.await.unwrap().unwrap_err();
    assert!(!e.is_refused(), "the request reached the upstream: {e}");
    assert!(e.is_request(), "{e}");
    let refused = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<palisade_client::RetryRefused>())
        .expect("RetryRefused underneath");
    assert_eq!(refused.attempts(), 1);
    assert!(
        refused.last().unwrap().contains("502"),
        "{:?}",
        refused.last()
    );
    assert_eq!(
        upstream.records().iter().filter(|r| r.path == "/a").count(),
        1
    );
}
