//! Outages by request number and by time, and script errors.

mod common;

use std::time::Duration;

use common::Client;
use http::StatusCode;
use palisade_testkit::{Error, Latency, Outage, Outcome, RateLimit, Upstream};
use tokio::time::advance;

#[tokio::test(start_paused = true)]
async fn outage_by_request_numbers() {
    let upstream = Upstream::builder()
        .outage(Outage::requests(3..5).status(500))
        .start()
        .await
        .unwrap();
    let mut client = Client::connect(upstream.addr()).await;
    let mut statuses = Vec::new();
    for i in 1..=6 {
        let reply = client.get(&format!("/item/{i}")).await.unwrap();
        if reply.status == StatusCode::INTERNAL_SERVER_ERROR {
            assert_eq!(
                reply.body,
                format!(r#"{{"id":"/item/{i}","n":{i},"error":"outage"}}"#)
            );
            assert_eq!(reply.header("retry-after"), None);
        } else {
            assert_eq!(reply.body, format!(r#"{{"id":"/item/{i}","n":{i}}}"#));
        }
        statuses.push(reply.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 500, 500, 200, 200]);
    let records = upstream.records();
    assert_eq!(
        records[2].outcome,
        Outcome::Answered(StatusCode::INTERNAL_SERVER_ERROR)
    );
    assert_eq!(records[2].outcome.to_string(), "500");
}

#[tokio::test(start_paused = true)]
async fn outage_by_time_on_the_tokio_clock() {
    let upstream = Upstream::builder()
        .outage(
            Outage::time(Duration::from_secs(2)..Duration::from_secs(5))
                .retry_after(Duration::from_millis(1_500)),
        )
        .start()
        .await
        .unwrap();
    let mut client = Client::connect(upstream.addr()).await;

    assert_eq!(client.get("/").await.unwrap().status, StatusCode::OK);
    advance(Duration::from_secs(2)).await; // t = 2 s: the outage starts
    let reply = client.get("/").await.unwrap();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("retry-after"), Some("2"));
    advance(Duration::from_millis(2_999)).await; // t = 4.999 s
    assert_eq!(
        client.get("/").await.unwrap().status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    advance(Duration::from_millis(1)).await; // t = 5 s: over
    assert_eq!(client.get("/").await.unwrap().status, StatusCode::OK);

    let since_start: Vec<_> = upstream
        .records()
        .iter()
        .map(|r| r.at - upstream.started_at())
        .collect();
    assert_eq!(
        since_start,
        [0, 2_000, 4_999, 5_000].map(Duration::from_millis)
    );
}

#[tokio::test(start_paused = true)]
async fn the_first_outage_that_covers_a_request_answers() {
    let upstream = Upstream::builder()
        .outage(Outage::requests(1..3).status(502))
        .outage(Outage::requests(2..4).status(504))
        .start()
        .await
        .unwrap();
    let mut client = Client::connect(upstream.addr()).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(client.get("/").await.unwrap().status.as_u16());
    }
    assert_eq!(statuses, [502, 502, 504, 200]);
}

#[tokio::test]
async fn script_errors_are_readable_and_nothing_panics() {
    let cases = [
        (
            Upstream::builder().rate_limit(0, Duration::from_secs(1)),
            "rate limit: the quota must be at least 1 request",
        ),
        (
            Upstream::builder().rate_limit(10, Duration::ZERO),
            "rate limit: the window must be longer than zero",
        ),
        (
            Upstream::builder().rate_limit_with(RateLimit::gcra(10, Duration::from_secs(1), 0)),
            "burst",
        ),
        (
            Upstream::builder().outage(Outage::requests(5..5)),
            "outage: the request range 5..5 is empty",
        ),
        (
            Upstream::builder()
                .outage(Outage::time(Duration::from_secs(3)..Duration::from_secs(1))),
            "outage: the time range 3s..1s is empty",
        ),
        (
            Upstream::builder().outage(Outage::requests(1..2).status(404)),
            "outage: the status must be a 5xx (500..=599), got 404",
        ),
        (
            Upstream::builder().latency(Latency::uniform(
                Duration::from_millis(5),
                Duration::from_millis(1),
            )),
            "min > max",
        ),
        (Upstream::builder().reset_every(0), "reset_every"),
        (Upstream::builder().close_after(0), "close_after"),
        (Upstream::builder().hang_requests([0]), "start at 1"),
        (
            Upstream::builder().slow_body(0, Duration::ZERO),
            "slow_body",
        ),
    ];
    for (builder, expected) in cases {
        match builder.start().await {
            Err(Error::Config(msg)) => {
                assert!(
                    msg.contains(expected),
                    "{msg:?} should contain {expected:?}"
                );
                let shown = Error::Config(msg).to_string();
                assert!(shown.starts_with("invalid upstream script: "), "{shown}");
            }
            Err(other) => panic!("expected a script error, got {other}"),
            Ok(_) => panic!("expected a script error for {expected:?}"),
        }
    }
}
