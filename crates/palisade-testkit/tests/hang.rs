//! Hangs: requests that are never answered.

mod common;

use std::time::Duration;

use common::Client;
use http::StatusCode;
use palisade_testkit::{Outcome, Upstream};
use tokio::time::timeout;

/// Longer than any client would wait: on paused time, the clock jumps to it at once.
const FOREVER: Duration = Duration::from_secs(24 * 3_600);

#[tokio::test(start_paused = true)]
async fn hang_by_request_number() {
    let upstream = Upstream::builder()
        .hang_requests([2])
        .start()
        .await
        .unwrap();
    let mut client = Client::connect(upstream.addr()).await;
    assert_eq!(client.get("/").await.unwrap().status, StatusCode::OK);
    assert!(
        timeout(FOREVER, client.get("/")).await.is_err(),
        "request 2 must get no answer"
    );
    upstream.wait_for_requests(2).await;
    // The client gave up (dropping a request in flight closes hyper's client connection):
    // the upstream sees the close and lets the hung request go.
    upstream.wait_for_open_connections(0).await;

    // The rest of the upstream carries on.
    let mut other = Client::connect(upstream.addr()).await;
    let reply = other.get("/").await.unwrap();
    assert_eq!(reply.body, r#"{"id":"/","n":3}"#);
    let outcomes: Vec<_> = upstream.records().iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Answered(StatusCode::OK),
            Outcome::Hang,
            Outcome::Answered(StatusCode::OK)
        ]
    );
    assert_eq!(Outcome::Hang.to_string(), "hang");
    assert_eq!(upstream.connections_accepted(), 2);
    upstream.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn hang_by_path() {
    let upstream = Upstream::builder()
        .hang_path("/stuck")
        .start()
        .await
        .unwrap();
    let mut stuck = Client::connect(upstream.addr()).await;
    assert!(timeout(FOREVER, stuck.get("/stuck?x=1")).await.is_err());
    upstream.wait_for_requests(1).await;

    let mut fine = Client::connect(upstream.addr()).await;
    assert_eq!(fine.get("/stuck/not").await.unwrap().status, StatusCode::OK);

    let records = upstream.records();
    assert_eq!(records[0].path, "/stuck");
    assert_eq!(records[0].id, "/stuck?x=1");
    assert_eq!(records[0].outcome, Outcome::Hang);
    assert_eq!(records[0].outcome.status(), None);
    assert_eq!(records[1].outcome.status(), Some(StatusCode::OK));
}
