//! The upstream's "not now" (`Retry-After`) against requests already queued inside the client,
//! and against the breaker's half-open probe. Paused tokio time throughout.

use std::time::Duration;

use http::StatusCode;
use palisade_client::{BreakerState, Client};
use palisade_testkit::{Outage, Upstream};

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn a_hold_stops_requests_already_waiting_for_a_connection() {
    // One request per 10 s window; one connection, so four requests queue behind the first.
    let upstream = Upstream::builder()
        .rate_limit(1, 10 * SECOND)
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .max_connections_per_host(1)
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..5 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let r = c.get(&format!("/x/{i}")).await.unwrap();
            let status = r.status();
            let _ = r.text().await;
            status
        }));
    }
    for t in tasks {
        let _ = t.await.unwrap();
    }
    let records = upstream.records();
    let first_refusal = records
        .iter()
        .find(|r| r.outcome.status() == Some(StatusCode::TOO_MANY_REQUESTS))
        .map(|r| (r.n, r.at));
    if let Some((n, at)) = first_refusal {
        let during: Vec<u64> = records
            .iter()
            .filter(|r| r.n > n && r.at < at + 9 * SECOND)
            .map(|r| r.n)
            .collect();
        assert!(
            during.is_empty(),
            "sent during the hold: {during:?} ({records:?})"
        );
    }
    // The IETF header on the first answer already holds the rest: they go in the next window.
    assert_eq!(
        records
            .iter()
            .filter(|r| r.at < records[0].at + 9 * SECOND)
            .count(),
        1 + usize::from(first_refusal.is_some())
    );
}

#[tokio::test(start_paused = true)]
async fn a_long_hold_does_not_make_the_probe_look_hung() {
    // The first request is answered 503 with Retry-After: 120 (longer than the breaker's cap).
    let upstream = Upstream::builder()
        .outage(
            Outage::requests(1..2)
                .status(503)
                .retry_after(Duration::from_secs(120)),
        )
        .start()
        .await
        .unwrap();
    let breaker = palisade_breaker::Config::builder()
        .consecutive_failures(1)
        .open_duration(5 * SECOND, 2, 60 * SECOND)
        .jitter(0)
        .build()
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .breaker(breaker)
        .build()
        .unwrap();
    let host = client.base_host();
    let res = client.get("/a").await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(host.breaker().state(), BreakerState::Open);

    tokio::time::sleep(61 * SECOND).await;
    let c = client.clone();
    let probe = tokio::spawn(async move { c.get("/probe").await.map(|r| r.status()) });
    tokio::time::sleep(34 * SECOND).await;
    // Other traffic meanwhile: both wait out the hold before asking the breaker, so neither
    // holds a probe ticket long enough to look hung.
    let other = client.get("/other").await.map(|r| r.status());
    let probe = probe.await.unwrap();
    let ok = [probe.as_ref().ok(), other.as_ref().ok()]
        .iter()
        .filter(|s| **s == Some(&StatusCode::OK))
        .count();
    assert!(
        ok >= 1,
        "a probe succeeded after the hold: {probe:?} {other:?}"
    );
    assert_eq!(host.breaker().state(), BreakerState::Closed);
    let records = upstream.records();
    for r in &records[1..] {
        assert!(
            r.at >= records[0].at + 120 * SECOND,
            "sent during the hold: {r:?}"
        );
    }
}
