//! A regression from a bug-hunting review: a UTF-8 `x-request-id` is the record's id.

mod common;

use common::Client;
use http::Method;
use hyper::body::Bytes;
use palisade_testkit::Upstream;

/// The record's id is documented as "the `x-request-id` header if present (and valid UTF-8)",
/// but it was read with `HeaderValue::to_str`, which refuses any byte outside visible ASCII:
/// a valid UTF-8 id (`café`) was recorded, counted and echoed as the path instead.
#[tokio::test(start_paused = true)]
async fn a_utf8_request_id_is_the_records_id() {
    let upstream = Upstream::builder().start().await.unwrap();
    let mut client = Client::connect(upstream.addr()).await;
    let reply = client
        .request(Method::GET, "/api/item/1", Some("café"), Bytes::new())
        .await
        .unwrap();
    assert_eq!(upstream.records()[0].id, "café");
    assert_eq!(upstream.count_by_id().get("café"), Some(&1));
    assert!(reply.body.contains("café"), "{}", reply.body);
}
