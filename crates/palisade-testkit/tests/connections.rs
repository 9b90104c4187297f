//! Resets, `Connection: close` after N, connection counts, records, stopping.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::Client;
use http::{Method, StatusCode};
use hyper::body::Bytes;
use palisade_testkit::{Outcome, Upstream};
use tokio::net::TcpStream;
use tokio::time::{advance, timeout};

const OK: Outcome = Outcome::Answered(StatusCode::OK);

#[tokio::test(start_paused = true)]
async fn a_reset_closes_the_connection_without_an_answer() {
    let upstream = Upstream::builder()
        .reset_requests([2])
        .start()
        .await
        .unwrap();
    let mut client = Client::connect(upstream.addr()).await;
    assert_eq!(client.get("/a").await.unwrap().status, StatusCode::OK);

    let err = client.get("/b").await.unwrap_err();
    // A real reset (RST), not a clean close: the client reads ECONNRESET.
    let io = std::error::Error::source(&err)
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .unwrap_or_else(|| panic!("not an I/O error: {err:?}"));
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset, "{err:?}");
    assert!(client.is_closed());

    // A new connection works.
    let mut again = Client::connect(upstream.addr()).await;
    assert_eq!(again.get("/c").await.unwrap().status, StatusCode::OK);

    let records = upstream.records();
    let seen: Vec<_> = records
        .iter()
        .map(|r| (r.n, r.path.as_str(), r.outcome, r.connection))
        .collect();
    assert_eq!(
        seen,
        [
            (1, "/a", OK, 1),
            (2, "/b", Outcome::Reset, 1),
            (3, "/c", OK, 2)
        ]
    );
    assert_eq!(records[1].outcome.to_string(), "reset");
    assert_eq!(upstream.connections_accepted(), 2);
    upstream.wait_for_open_connections(1).await;
}

#[tokio::test(start_paused = true)]
async fn reset_every_nth_request() {
    let upstream = Upstream::builder().reset_every(3).start().await.unwrap();
    let mut outcomes = Vec::new();
    for _ in 0..7 {
        // A reset kills the connection: one connection per request.
        let mut client = Client::connect(upstream.addr()).await;
        outcomes.push(client.get("/").await.map(|r| r.status.as_u16()).ok());
    }
    assert_eq!(
        outcomes,
        [
            Some(200),
            Some(200),
            None,
            Some(200),
            Some(200),
            None,
            Some(200)
        ]
    );
    let recorded: Vec<_> = upstream.records().iter().map(|r| r.outcome).collect();
    let r = Outcome::Reset;
    assert_eq!(recorded, [OK, OK, r, OK, OK, r, OK]);
    assert_eq!(upstream.connections_accepted(), 7);
}

#[tokio::test(start_paused = true)]
async fn connection_close_after_n_requests() {
    let upstream = Upstream::builder().close_after(2).start().await.unwrap();
    let mut client = Client::connect(upstream.addr()).await;

    let first = client.get("/1").await.unwrap();
    assert_eq!(first.header("connection"), None);
    let second = client.get("/2").await.unwrap();
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.header("connection"), Some("close"));

    // The upstream closes the connection after that answer: the client's connection ends
    // cleanly, and it cannot send a third request on it.
    client.conn.await.unwrap().unwrap();
    upstream.wait_for_open_connections(0).await;

    let mut fresh = Client::connect(upstream.addr()).await;
    assert_eq!(fresh.get("/3").await.unwrap().header("connection"), None);
    let connections: Vec<_> = upstream.records().iter().map(|r| r.connection).collect();
    assert_eq!(connections, [1, 1, 2]);
    assert_eq!(upstream.connections_accepted(), 2);
    assert_eq!(upstream.max_concurrent_connections(), 1);
}

#[tokio::test(start_paused = true)]
async fn counts_open_and_most_concurrent_connections() {
    let upstream = Upstream::builder().start().await.unwrap();
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut client = Client::connect(upstream.addr()).await;
        // An answer proves the upstream accepted the connection.
        assert_eq!(client.get("/").await.unwrap().status, StatusCode::OK);
        clients.push(client);
    }
    assert_eq!(upstream.open_connections(), 5);
    assert_eq!(upstream.max_concurrent_connections(), 5);
    assert_eq!(upstream.connections_accepted(), 5);

    // Let three go: dropping the sender ends hyper's client connection, which closes it.
    for client in clients.drain(..3) {
        drop(client);
    }
    upstream.wait_for_open_connections(2).await;
    assert_eq!(upstream.max_concurrent_connections(), 5);

    let mut another = Client::connect(upstream.addr()).await;
    another.get("/").await.unwrap();
    assert_eq!(upstream.open_connections(), 3);
    assert_eq!(upstream.max_concurrent_connections(), 5);
    assert_eq!(upstream.connections_accepted(), 6);
}

#[tokio::test(start_paused = true)]
async fn records_each_request_and_counts_them_by_id() {
    let upstream = Upstream::builder().start().await.unwrap();
    let mut one = Client::connect(upstream.addr()).await;
    let mut two = Client::connect(upstream.addr()).await;

    let body = Bytes::from_static(b"{\"qty\":1}");
    let reply = one
        .request(Method::POST, "/orders", Some("order-a"), body.clone())
        .await
        .unwrap();
    assert_eq!(reply.body, r#"{"id":"order-a","n":1}"#);
    advance(Duration::from_secs(3)).await;
    // The same id again (a retry) on another connection, and a request without an id.
    two.request(Method::POST, "/orders", Some("order-a"), body)
        .await
        .unwrap();
    let reply = two.get("/items/7?full=1").await.unwrap();
    assert_eq!(reply.body, r#"{"id":"/items/7?full=1","n":3}"#);
    one.request(Method::DELETE, "/orders/b", Some("order-b"), Bytes::new())
        .await
        .unwrap();

    let records = upstream.records();
    let start = upstream.started_at();
    let seen: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.n,
                r.id.as_str(),
                r.method.clone(),
                r.path.as_str(),
                r.connection,
                r.at - start,
            )
        })
        .collect();
    let secs = Duration::from_secs;
    assert_eq!(
        seen,
        [
            (1, "order-a", Method::POST, "/orders", 1, secs(0)),
            (2, "order-a", Method::POST, "/orders", 2, secs(3)),
            (3, "/items/7?full=1", Method::GET, "/items/7", 2, secs(3)),
            (4, "order-b", Method::DELETE, "/orders/b", 1, secs(3)),
        ]
    );
    assert!(records.iter().all(|r| r.outcome == OK));

    let expected: HashMap<String, usize> = [("order-a", 2), ("/items/7?full=1", 1), ("order-b", 1)]
        .into_iter()
        .map(|(id, n)| (id.to_owned(), n))
        .collect();
    assert_eq!(upstream.count_by_id(), expected);
    assert_eq!(upstream.requests_received(), 4);
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_everything_and_keeps_the_records() {
    let upstream = Upstream::builder()
        .hang_path("/hang")
        .start()
        .await
        .unwrap();
    let addr = upstream.addr();
    let mut idle = Client::connect(addr).await;
    idle.get("/").await.unwrap();
    let mut hung = Client::connect(addr).await;
    let pending = tokio::spawn(async move { hung.get("/hang").await.map(|r| r.status) });
    upstream.wait_for_requests(2).await;
    assert_eq!(upstream.open_connections(), 2);

    upstream.shutdown().await;
    assert_eq!(upstream.open_connections(), 0);
    // The hung request gets an error (the connection closed), the idle connection ends.
    assert!(pending.await.unwrap().is_err());
    idle.conn.await.unwrap().unwrap();
    // Nothing listens any more.
    assert!(TcpStream::connect(addr).await.is_err());
    // What it received is still there.
    let outcomes: Vec<_> = upstream.records().iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, [OK, Outcome::Hang]);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_upstream_stops_it() {
    let upstream = Upstream::builder()
        .hang_requests([1])
        .start()
        .await
        .unwrap();
    let mut hung = Client::connect(upstream.addr()).await;
    let pending = tokio::spawn(async move { hung.get("/").await.map(|r| r.status) });
    upstream.wait_for_requests(1).await;
    drop(upstream);
    // The connection is closed: the hung request ends with an error. (Were it not, the clock
    // would jump to the timeout and fail the test.)
    let result = timeout(Duration::from_secs(3_600), pending).await;
    assert!(result.expect("closed, not left hanging").unwrap().is_err());
}
