//! The upstream's own rate limit: 429, Retry-After and the IETF RateLimit headers.

mod common;

use std::time::Duration;

use common::Client;
use http::StatusCode;
use palisade_testkit::{Outage, Outcome, RateLimit, Upstream};
use tokio::time::advance;

#[tokio::test(start_paused = true)]
async fn fixed_window_answers_429_with_retry_after_and_ietf_headers() {
    let upstream = Upstream::builder()
        .rate_limit(3, Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    let mut client = Client::connect(upstream.addr()).await;

    for remaining in [2, 1, 0] {
        let reply = client.get("/api/item").await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some("\"default\";q=3;w=10")
        );
        let state = format!("\"default\";r={remaining};t=10");
        assert_eq!(reply.header("ratelimit"), Some(state.as_str()));
        assert_eq!(reply.header("retry-after"), None);
    }

    // Over quota: 429 until the window ends, 10 s after the start.
    let reply = client.get("/api/item").await.unwrap();
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), Some("10"));
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some("\"default\";q=3;w=10")
    );
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=0;t=10"));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply.body,
        r#"{"id":"/api/item","n":4,"error":"too many requests"}"#
    );

    // 5.5 s left: rounded up to 6.
    advance(Duration::from_millis(4_500)).await;
    let reply = client.get("/api/item").await.unwrap();
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), Some("6"));
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=0;t=6"));

    // The next window starts exactly at 10 s.
    advance(Duration::from_millis(5_499)).await;
    let reply = client.get("/api/item").await.unwrap();
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), Some("1"));
    advance(Duration::from_millis(1)).await;
    let reply = client.get("/api/item").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=2;t=10"));

    let outcomes: Vec<_> = upstream.records().iter().map(|r| r.outcome).collect();
    let ok = Outcome::Answered(StatusCode::OK);
    let limited = Outcome::Answered(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(outcomes, [ok, ok, ok, limited, limited, limited, ok]);
}

#[tokio::test(start_paused = true)]
async fn a_sub_second_window_is_expressed_per_second() {
    let upstream = Upstream::builder()
        .rate_limit(5, Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let mut client = Client::connect(upstream.addr()).await;
    let reply = client.get("/").await.unwrap();
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some("\"default\";q=50;w=1")
    );
    // 100 ms to the end of the window: rounded up to 1 s.
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=4;t=1"));
}

#[tokio::test(start_paused = true)]
async fn gcra_allows_a_burst_then_one_per_interval() {
    // 2 per second on average (one every 500 ms), 3 at once.
    let upstream = Upstream::builder()
        .rate_limit_with(RateLimit::gcra(2, Duration::from_secs(1), 3))
        .start()
        .await
        .unwrap();
    let mut client = Client::connect(upstream.addr()).await;

    for remaining in [2, 1, 0] {
        let reply = client.get("/").await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        let state = reply.header("ratelimit").unwrap().to_owned();
        assert!(
            state.starts_with(&format!("\"default\";r={remaining};")),
            "{state}"
        );
    }
    let reply = client.get("/").await.unwrap();
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    // The next request conforms in 500 ms: rounded up to 1 s.
    assert_eq!(reply.header("retry-after"), Some("1"));
    // The bucket is full again 1.5 s from now.
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=0;t=2"));

    advance(Duration::from_millis(499)).await;
    assert_eq!(
        client.get("/").await.unwrap().status,
        StatusCode::TOO_MANY_REQUESTS
    );
    advance(Duration::from_millis(1)).await;
    assert_eq!(client.get("/").await.unwrap().status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn requests_in_an_outage_use_no_quota() {
    let upstream = Upstream::builder()
        .rate_limit(2, Duration::from_secs(1))
        .outage(Outage::requests(1..3))
        .start()
        .await
        .unwrap();
    let mut client = Client::connect(upstream.addr()).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let reply = client.get("/").await.unwrap();
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            // An outage answer says nothing about the rate limit.
            assert_eq!(reply.header("ratelimit"), None);
        }
        statuses.push(reply.status.as_u16());
    }
    assert_eq!(statuses, [503, 503, 200, 200, 429]);
}
