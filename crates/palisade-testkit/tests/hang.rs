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

/// A hung request with a large body: the upstream still reads the body, so it sees the client
/// close the connection and counts it closed (hyper stops reading a connection while a body is
/// left unread).
#[tokio::test(start_paused = true)]
async fn a_hung_request_with_a_large_body_still_sees_the_client_close() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    let upstream = Upstream::builder().hang_path("/h").start().await.unwrap();
    let addr = upstream.addr();
    let len = 4 * 1024 * 1024;
    let writer = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let head = format!("POST /h HTTP/1.1\r\nhost: x\r\ncontent-length: {len}\r\n\r\n");
        tcp.write_all(head.as_bytes()).await.unwrap();
        // More than the socket buffers hold: the rest is written only as the upstream reads.
        let _ = tcp.write_all(&vec![b'a'; len]).await;
    });
    upstream.wait_for_requests(1).await;
    assert_eq!(upstream.open_connections(), 1);
    // The client gives up, whether or not its body was all written: its socket closes.
    writer.abort();
    let _ = writer.await;
    assert!(
        timeout(FOREVER, upstream.wait_for_open_connections(0))
            .await
            .is_ok(),
        "the client closed, but the upstream still counts {} open",
        upstream.open_connections()
    );
    assert_eq!(upstream.records()[0].outcome, Outcome::Hang);
}
