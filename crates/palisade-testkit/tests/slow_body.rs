//! Slow bodies: the answer's head at once, the body in chunks with a delay between them.

mod common;

use std::time::Duration;

use common::Client;
use http::StatusCode;
use http_body_util::BodyExt;
use palisade_testkit::Upstream;
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn the_body_comes_in_chunks_with_delays() {
    let delay = Duration::from_millis(100);
    let upstream = Upstream::builder()
        .slow_body(4, delay)
        .start()
        .await
        .unwrap();
    let mut client = Client::connect(upstream.addr()).await;

    let sent = Instant::now();
    let res = client.send_head("/api/item/7").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let expected = r#"{"id":"/api/item/7","n":1}"#;
    // The length is known: Content-Length, not chunked transfer encoding.
    assert_eq!(
        res.headers()["content-length"],
        expected.len().to_string().as_str()
    );

    let mut body = res.into_body();
    let mut received = Vec::new();
    while let Some(frame) = body.frame().await {
        received.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert_eq!(received, expected.as_bytes());
    // The last chunk cannot come before three delays have passed on the upstream's clock.
    assert!(sent.elapsed() >= 3 * delay, "{:?}", sent.elapsed());

    // The connection is reusable afterwards.
    assert_eq!(client.get("/next").await.unwrap().status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_tiny_body_is_padded_to_the_chunk_count() {
    let upstream = Upstream::builder()
        .slow_body(64, Duration::from_millis(1))
        .start()
        .await
        .unwrap();
    let mut client = Client::connect(upstream.addr()).await;
    let reply = client.get("/").await.unwrap();
    assert_eq!(reply.body.len(), 64);
    assert_eq!(reply.body.trim_end(), r#"{"id":"/","n":1}"#);
}

/// A chunk count too large to pad the body to is a configuration error, not a panic on every
/// answer.
#[tokio::test]
async fn too_many_chunks_is_a_config_error() {
    let err = Upstream::builder()
        .slow_body(usize::MAX, std::time::Duration::from_millis(1))
        .start()
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("slow_body"), "{message}");
    assert!(message.contains("at most"), "{message}");
}
