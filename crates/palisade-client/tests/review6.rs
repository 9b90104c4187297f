//! Regressions from a review of 4c23e3e: the origin's hold and the retry policy decide from
//! the same figure (`Retry-After`, or an exhausted `RateLimit` policy if longer).

use std::time::Duration;

use http::StatusCode;
use palisade_client::{Client, Retries};
use tokio::time::Instant;

mod common;

/// 1. A `429` with `Retry-After: 1` and an exhausted `RateLimit` policy for an hour: the origin
/// is held for the longer signal, and the retry policy decides from it too — an hour is more
/// than `Retries::max_retry_after` (30 s), so the `429` is returned at once, as a
/// `Retry-After: 3600` alone would be. (After 4c23e3e and before the fix, the policy read
/// `Retry-After` alone, retried, and each retry waited out the whole 300 s hold: 600 s.)
#[tokio::test(start_paused = true)]
async fn a_retry_does_not_wait_out_a_ratelimit_hold_beyond_max_retry_after() {
    let (url, count) = common::scripted(|_| {
        (
            429,
            vec![("retry-after", "1"), ("ratelimit", "\"hourly\";r=0;t=3600")],
        )
    })
    .await;
    let client = Client::builder(&url)
        .retries(Retries::new(2))
        .build()
        .unwrap();
    let start = Instant::now();
    let res = client.get("/a").await.unwrap();
    let took = start.elapsed();
    assert_eq!(res.status(), 429);
    assert!(
        took <= Duration::from_secs(30),
        "the caller waited {took:?} (upstream asked {} times) for retries of a 429 whose \
         upstream said nothing is left for an hour; Retries::max_retry_after is 30 s",
        count.load(std::sync::atomic::Ordering::SeqCst)
    );
}

/// 1b. The same answer with `max_rate_wait(10 s)`: the caller gets the upstream's `429`. (The
/// retry decided from `Retry-After: 1` met the 300 s hold in `HoldWait` and was refused: a
/// `RetryRefused` error instead.)
#[tokio::test(start_paused = true)]
async fn a_429_with_a_long_ratelimit_policy_is_returned_not_turned_into_a_refused_retry() {
    let (url, _count) = common::scripted(|_| {
        (
            429,
            vec![("retry-after", "1"), ("ratelimit", "\"hourly\";r=0;t=3600")],
        )
    })
    .await;
    let client = Client::builder(&url)
        .retries(Retries::new(2))
        .max_rate_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let res = client.get("/a").await.map(|r| r.status());
    assert!(
        matches!(res, Ok(StatusCode::TOO_MANY_REQUESTS)),
        "expected the upstream's 429, got {res:?}"
    );
}
