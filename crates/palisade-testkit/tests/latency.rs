//! Latency, on the paused tokio clock.

mod common;

use std::time::Duration;

use common::Client;
use http::StatusCode;
use palisade_testkit::{Latency, Upstream};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn fixed_latency_delays_every_answer() {
    let delay = Duration::from_millis(250);
    let upstream = Upstream::builder()
        .latency(Latency::fixed(delay))
        .rate_limit(1, Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let mut client = Client::connect(upstream.addr()).await;
    for expected in [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS] {
        let sent = Instant::now();
        let reply = client.get("/").await.unwrap();
        assert_eq!(reply.status, expected);
        assert!(sent.elapsed() >= delay, "{:?}", sent.elapsed());
    }
    // Recorded on arrival, before the delay.
    let records = upstream.records();
    assert_eq!(records[0].at, upstream.started_at());
}

#[tokio::test(start_paused = true)]
async fn uniform_latency_is_seeded_per_request_number() {
    let latency = Latency::uniform(Duration::from_millis(10), Duration::from_millis(50)).seed(7);
    let upstream = Upstream::builder().latency(latency).start().await.unwrap();
    let mut client = Client::connect(upstream.addr()).await;
    let mut delays = Vec::new();
    for n in 1..=8u64 {
        let sent = Instant::now();
        client.get("/").await.unwrap();
        let expected = latency.delay(n);
        assert!(
            sent.elapsed() >= expected,
            "request {n}: {:?}",
            sent.elapsed()
        );
        delays.push(expected);
    }
    // The same seed gives the same delays; they spread over the range.
    let again = Latency::uniform(Duration::from_millis(10), Duration::from_millis(50)).seed(7);
    assert_eq!(delays, (1..=8).map(|n| again.delay(n)).collect::<Vec<_>>());
    assert!(delays
        .iter()
        .all(|d| (Duration::from_millis(10)..=Duration::from_millis(50)).contains(d)));
    assert!(delays.windows(2).any(|w| w[0] != w[1]));
}
