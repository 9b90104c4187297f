//! Regressions from a third bug-hunting review of the client: a request still connecting at
//! the shutdown deadline was sent after it; a refused retry after a connect error was reported
//! as sent; a port written `+8080` made an origin of its own.

use std::time::Duration;

use http::{Method, Request};
use palisade_client::{Client, Origin, Retries};
use palisade_testkit::Upstream;

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn a_request_still_connecting_at_the_shutdown_deadline_is_not_sent_after_it() {
    let upstream = Upstream::builder().tls().start().await.unwrap();
    let ca = upstream.tls().unwrap().ca_der().to_vec();
    // A proxy that holds each connection 5 s before passing it on: the connect takes 5 s.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let target = upstream.addr();
    tokio::spawn(async move {
        loop {
            let (mut inbound, _) = proxy.accept().await.unwrap();
            tokio::spawn(async move {
                tokio::time::sleep(5 * SECOND).await;
                let mut outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    let client = Client::builder(format!("https://127.0.0.1:{}/", proxy_addr.port()))
        .add_root_certificate(ca)
        .no_system_roots()
        .connect_timeout(30 * SECOND)
        .build()
        .unwrap();
    let a = tokio::spawn({
        let client = client.clone();
        async move { client.get("/a").await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(client.pool().stats().total.connecting, 1);
    let report = client.shutdown(SECOND).await;
    assert!(!report.drained, "{report}");
    let res = a.await.unwrap();
    assert!(
        matches!(&res, Err(e) if e.is_shutdown()) && upstream.requests_received() == 0,
        "still connecting at the 1 s deadline; then: {res:?}, upstream received {} request(s) \
         ({report})",
        upstream.requests_received()
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_retry_after_a_connect_error_is_a_refusal() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener); // connection refused
    let client = Client::builder(format!("http://{addr}/"))
        .rate("1/s")
        .burst(1)
        .max_rate_wait(Duration::from_millis(100))
        .retries(Retries::new(2).backoff(Duration::from_millis(10), Duration::from_millis(10)))
        .build()
        .unwrap();
    let req = Request::builder()
        .method(Method::POST)
        .uri("/orders")
        .body(bytes::Bytes::from_static(b"{}"))
        .unwrap();
    let e = client.request(req).await.map(|r| r.status()).unwrap_err();
    let refused = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<palisade_client::RetryRefused>());
    assert!(
        e.is_refused() && refused.is_none(),
        "never reached the upstream, yet: {e} (is_refused {}, RetryRefused: {})",
        e.is_refused(),
        refused.is_some()
    );
}

#[test]
fn a_port_with_a_plus_sign_is_the_same_origin() {
    let o = |s: &str| Origin::of(&s.parse().unwrap());
    let plus = o("http://api.example:+8080/");
    let plain = o("http://api.example:8080/");
    assert!(
        plus.is_none() || plus == plain,
        "http://api.example:+8080 is the origin {plus:?}, not {plain:?}"
    );
}
