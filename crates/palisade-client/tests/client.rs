//! The client against the testkit upstream: builder errors, the error predicates and their
//! sources, timeouts, refusals (circuit open, rate limit, pool full, shutdown), the client as a
//! `tower::Service`, reading bodies, and URL resolution against a base path.
//!
//! Every test that involves time runs on paused tokio time: the upstream's latency and the
//! client's timers are driven by the tokio clock, so nothing here sleeps for real.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use http::{Request, StatusCode};
use palisade_breaker::State;
use palisade_client::{Body, BreakerState, Client, ConnectError, Error, Origin};
use palisade_testkit::{Latency, Outage, Outcome, Upstream};
use tokio::task::JoinSet;
use tower::limit::ConcurrencyLimitLayer;
use tower::{Service, ServiceBuilder, ServiceExt};

const SECOND: Duration = Duration::from_secs(1);

fn breaker_config() -> palisade_breaker::ConfigBuilder {
    palisade_breaker::Config::builder()
        .open_duration(Duration::from_secs(10), 1, Duration::from_secs(10))
        .jitter(0)
}

// ===== Builder errors =====

#[track_caller]
fn build_error(builder: palisade_client::ClientBuilder) -> Error {
    match builder.build() {
        Ok(client) => panic!("expected a builder error, built {client:?}"),
        Err(e) => e,
    }
}

#[test]
fn builder_errors_are_builder_errors_naming_the_setting() {
    let base = "http://127.0.0.1:9/";
    #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
    let mut cases: Vec<(&str, palisade_client::ClientBuilder, &[&str])> = vec![
        (
            "unparsable base URL",
            Client::builder("http://exa mple.com/"),
            &["base URL", "exa mple.com"],
        ),
        (
            "relative base URL",
            Client::builder("/v1/items"),
            &["base URL", "/v1/items", "absolute"],
        ),
        (
            "base URL without http(s)",
            Client::builder("ftp://files.example.com/"),
            &["base URL", "ftp://files.example.com/"],
        ),
        (
            "rate with an unknown unit",
            Client::builder(base).rate("10/parsec"),
            &["rate", "10/parsec", "unit"],
        ),
        (
            "zero rate",
            Client::builder(base).rate("0/s"),
            &["rate", "0/s"],
        ),
        ("zero burst", Client::builder(base).burst(0), &["burst"]),
        (
            "zero timeout",
            Client::builder(base).timeout(Duration::ZERO),
            &["timeout"],
        ),
        (
            "zero connect timeout",
            Client::builder(base).connect_timeout(Duration::ZERO),
            &["connect_timeout"],
        ),
        (
            "zero pool idle timeout",
            Client::builder(base).pool_idle_timeout(Duration::ZERO),
            &["pool_idle_timeout"],
        ),
        (
            "zero connections per host",
            Client::builder(base).max_connections_per_host(0),
            &["max_connections_per_host"],
        ),
        (
            "zero connections",
            Client::builder(base).max_connections(0),
            &["max_connections"],
        ),
        (
            "more per host than in total",
            Client::builder(base)
                .max_connections_per_host(20)
                .max_connections(10),
            &["max_connections_per_host", "max_connections", "20", "10"],
        ),
        (
            "user agent with a newline",
            Client::builder(base).user_agent("palisade\nevil: 1"),
            &["user agent"],
        ),
    ];
    #[cfg(feature = "tls")]
    cases.push((
        "unreadable root certificate",
        Client::builder(base).add_root_certificate(b"not a certificate".to_vec()),
        &["root certificate"],
    ));
    for (what, builder, needles) in cases {
        let e = build_error(builder);
        assert!(e.is_builder(), "{what}: {e:?} should be a builder error");
        assert_eq!(e.class(), "builder", "{what}");
        assert!(!e.is_refused(), "{what}");
        let msg = e.to_string();
        for needle in needles {
            assert!(
                msg.contains(needle),
                "{what}: {msg:?} should mention {needle:?}"
            );
        }
    }
}

#[test]
fn building_needs_no_runtime_and_accepts_good_settings() {
    let client = Client::builder("https://api.example.com/v1/")
        .rate("100/min")
        .burst(5)
        .max_rate_wait(SECOND)
        .max_connections_per_host(4)
        .max_connections(8)
        .timeout(Duration::from_secs(5))
        .user_agent("palisade-tests/1")
        .build()
        .expect("a valid configuration");
    let host = client.base_host();
    assert_eq!(host.origin().to_string(), "https://api.example.com");
    assert_eq!(host.limiter().quota().burst_size(), 5);
    assert_eq!(host.breaker().state(), BreakerState::Closed);
    assert_eq!(
        client.url("items/7?x=1").unwrap().to_string(),
        "https://api.example.com/v1/items/7?x=1"
    );
}

// ===== Connect errors =====

#[tokio::test]
async fn a_closed_port_is_a_connect_error_with_the_io_error_underneath() {
    // A port nothing listens on: bind one, note it, let it go.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);

    let client = Client::builder(format!("http://{addr}/")).build().unwrap();
    let e = client.get("/api/item/1").await.unwrap_err();
    assert!(e.is_connect(), "{e:?}");
    assert_eq!(e.class(), "connect");
    assert!(!e.is_refused() && !e.is_timeout() && !e.is_request() && !e.is_builder());
    let msg = e.to_string();
    assert!(msg.contains("tcp connect"), "{msg}");
    assert!(msg.contains(&addr.to_string()), "{msg}");

    let connect = e
        .source()
        .and_then(|s| s.downcast_ref::<ConnectError>())
        .unwrap_or_else(|| panic!("source of {e:?} should be a ConnectError"));
    let io = connect
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .unwrap_or_else(|| panic!("source of {connect:?} should be an io::Error"));
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);

    let stats = client.pool().stats();
    assert_eq!((stats.total.opened, stats.total.failed), (0, 1));
}

// ===== Timeouts =====

#[tokio::test(start_paused = true)]
async fn a_hung_request_times_out_and_counts_as_a_breaker_failure() {
    let upstream = Upstream::builder()
        .hang_path("/slow")
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();

    let e = client.get("/slow").await.unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    assert_eq!(e.class(), "timeout");
    assert!(!e.is_refused());
    assert!(e.to_string().contains("timed out"), "{e}");
    // It did reach the upstream, which never answered.
    assert_eq!(upstream.records()[0].outcome, Outcome::Hang);
    assert_eq!(client.base_host().breaker().counts().failures, 1);

    // The hung connection is not kept: the upstream sees it close, and the next request
    // goes out on a new one and succeeds.
    upstream.wait_for_open_connections(0).await;
    let res = client.get("/fast").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(upstream.connections_accepted(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_timeout_does_not_include_waiting_for_a_connection() {
    // Each answer takes 1 s; the timeout is 1.5 s; one connection. The third request waits
    // 2 s for the connection, but its own exchange takes 1 s: it must not time out.
    let upstream = Upstream::builder()
        .latency(Latency::fixed(SECOND))
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .max_connections_per_host(1)
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let mut set = JoinSet::new();
    for i in 0..3 {
        let client = client.clone();
        set.spawn(async move {
            let res = client.get(&format!("/api/item/{i}")).await?;
            let status = res.status();
            res.bytes().await?;
            Ok::<_, Error>(status)
        });
    }
    while let Some(joined) = set.join_next().await {
        assert_eq!(joined.unwrap().unwrap(), StatusCode::OK);
    }
    assert_eq!(upstream.requests_received(), 3);
    assert_eq!(client.base_host().breaker().counts().failures, 0);
}

#[tokio::test(start_paused = true)]
async fn a_hung_exchange_on_a_reused_connection_is_cut_off_a_timeout_after_it_began() {
    // The deadline is kept by the connection's task, whose timer was armed when the connection
    // opened: the hung exchange must still get its whole timeout, counted from its own start.
    let upstream = Upstream::builder()
        .hang_path("/slow")
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .max_connections_per_host(1)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    client.get("/fast").await.unwrap().bytes().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let began = tokio::time::Instant::now();
    let e = client.get("/slow").await.unwrap_err();
    let took = began.elapsed();
    assert!(e.is_timeout(), "{e:?}");
    assert_eq!(
        upstream.connections_accepted(),
        1,
        "it went out on the reused connection"
    );
    // Not cut when the connection's timer first fires (2 s after it opened, 0.5 s into this
    // exchange): after the exchange's own 2 s, to the timer's tick.
    assert!(took >= Duration::from_secs(2), "cut off after {took:?}");
    assert!(
        took <= Duration::from_millis(2001),
        "cut off after {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn exchanges_within_the_timeout_are_never_cut_off_whenever_they_start() {
    // Each answer takes 1 s, the timeout is 1.5 s, and requests start at odd offsets from the
    // connection's timer: none of them may be cut off.
    let upstream = Upstream::builder()
        .latency(Latency::fixed(SECOND))
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .max_connections_per_host(1)
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    for pause_ms in [0, 400, 499, 501, 1100, 1499, 1501, 3000, 20] {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        let res = client.get("/item").await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.bytes().await.unwrap();
    }
    assert_eq!(upstream.requests_received(), 9);
    assert_eq!(upstream.connections_accepted(), 1);
    assert_eq!(client.base_host().breaker().counts().failures, 0);
}

// ===== Refusals =====

#[tokio::test(start_paused = true)]
async fn an_open_circuit_refuses_with_retry_after_and_sends_nothing() {
    let upstream = Upstream::builder()
        .outage(Outage::requests(1..2))
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .breaker(breaker_config().consecutive_failures(1).build().unwrap())
        .build()
        .unwrap();

    let res = client.get("/a").await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(client.base_host().breaker().state(), State::Open);

    let e = client.get("/b").await.unwrap_err();
    assert!(e.is_circuit_open(), "{e:?}");
    assert!(e.is_refused());
    assert_eq!(e.class(), "circuit_open");
    let retry_after = e.retry_after().expect("an open breaker says when to retry");
    assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(10));
    assert!(e
        .source()
        .is_some_and(|s| s.is::<palisade_breaker::CircuitOpen>()));
    assert_eq!(upstream.requests_received(), 1);

    // After the open duration the next request is a probe; it succeeds and closes the breaker.
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(client.get("/c").await.unwrap().status(), StatusCode::OK);
    assert_eq!(client.base_host().breaker().state(), State::Closed);
    assert_eq!(upstream.requests_received(), 2);
}

#[tokio::test(start_paused = true)]
async fn max_rate_wait_refuses_with_retry_after_and_is_no_breaker_failure() {
    let upstream = Upstream::builder().start().await.unwrap();
    let client = Client::builder(upstream.url("/"))
        .rate("1/s")
        .burst(1)
        .max_rate_wait(Duration::from_millis(100))
        // One failure would open it: a client-side refusal must not count as one.
        .breaker(breaker_config().consecutive_failures(1).build().unwrap())
        .build()
        .unwrap();

    assert_eq!(client.get("/a").await.unwrap().status(), StatusCode::OK);
    let e = client.get("/b").await.unwrap_err();
    assert!(e.is_rate_limited(), "{e:?}");
    assert!(e.is_refused());
    assert_eq!(e.class(), "rate_limited");
    let retry_after = e
        .retry_after()
        .expect("a rate-limit refusal says when to retry");
    assert!(retry_after > Duration::from_millis(100) && retry_after <= SECOND);
    assert!(e
        .source()
        .is_some_and(|s| s.is::<palisade_ratelimit::RateLimited>()));
    assert_eq!(upstream.requests_received(), 1);

    let breaker = client.base_host().breaker().clone();
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.counts().failures, 0);
    // Waiting out the hint is enough.
    tokio::time::advance(retry_after).await;
    assert_eq!(client.get("/c").await.unwrap().status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_full_connection_queue_refuses_and_is_no_breaker_failure() {
    let upstream = Upstream::builder()
        .latency(Latency::fixed(SECOND))
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .max_connections_per_host(1)
        .max_waiting_for_connection(1)
        .breaker(breaker_config().consecutive_failures(1).build().unwrap())
        .build()
        .unwrap();
    let mut set = JoinSet::new();
    for i in 0..3 {
        let client = client.clone();
        set.spawn(async move {
            match client.get(&format!("/api/item/{i}")).await {
                Ok(res) => {
                    let status = res.status();
                    res.bytes().await.unwrap();
                    Ok(status)
                }
                Err(e) => Err(e),
            }
        });
    }
    let mut ok = 0;
    let mut full = 0;
    while let Some(joined) = set.join_next().await {
        match joined.unwrap() {
            Ok(status) => {
                assert_eq!(status, StatusCode::OK);
                ok += 1;
            }
            Err(e) => {
                assert!(e.is_pool_full(), "{e:?}");
                assert!(e.is_refused());
                full += 1;
            }
        }
    }
    assert_eq!((ok, full), (2, 1));
    assert_eq!(upstream.requests_received(), 2);
    assert_eq!(client.base_host().breaker().state(), State::Closed);
}

// ===== Shutdown =====

/// Polls `fut` once, so that whatever it does before its first await has happened.
async fn poll_once<F: Future>(fut: Pin<&mut F>) {
    let mut fut = Some(fut);
    std::future::poll_fn(|cx| {
        let _ = fut.take().expect("polled once").poll(cx);
        Poll::Ready(())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let upstream = Upstream::builder()
        .latency(Latency::fixed(SECOND))
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/")).build().unwrap();

    let in_flight = tokio::spawn({
        let client = client.clone();
        async move {
            let res = client.get("/api/item/1").await?;
            let status = res.status();
            Ok::<_, Error>((status, res.text().await?))
        }
    });
    upstream.wait_for_requests(1).await;
    assert_eq!(client.in_flight(), 1);

    let shutdown = client.shutdown(Duration::from_secs(5));
    tokio::pin!(shutdown);
    poll_once(shutdown.as_mut()).await;

    let e = client.get("/api/item/2").await.unwrap_err();
    assert!(e.is_shutdown(), "{e:?}");
    assert!(e.is_refused());
    assert_eq!(e.class(), "shutdown");

    let report = shutdown.await;
    let (status, body) = in_flight.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("/api/item/1"), "{body}");
    assert!(report.drained, "{report}");
    assert!(report.pool.drained, "{report}");
    assert_eq!(
        (report.completed, report.cut_off, report.refused),
        (1, 0, 1)
    );
    assert!(report.to_string().contains("1 completed"), "{report}");
    assert!(client.pool().is_closed());
    // The refused request never reached the upstream.
    assert_eq!(upstream.count_by_id().get("/api/item/2"), None);
    assert_eq!(upstream.requests_received(), 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_reports_a_request_that_outlives_the_deadline() {
    let upstream = Upstream::builder()
        .hang_path("/hang")
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let hung = tokio::spawn({
        let client = client.clone();
        async move { client.get("/hang").await.map(|r| r.status()) }
    });
    upstream.wait_for_requests(1).await;
    let report = client.shutdown(SECOND).await;
    assert!(!report.drained, "{report}");
    assert_eq!(report.completed, 0);
    hung.abort();
    let _ = hung.await;
}

// ===== The client as a tower Service =====

async fn read_body(res: http::Response<hyper::body::Incoming>) -> String {
    use http_body_util::BodyExt;
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_client_is_a_tower_service() {
    let upstream = Upstream::builder().start().await.unwrap();
    let client = Client::builder(upstream.url("/")).build().unwrap();
    let mut svc = client.clone();
    let req = Request::get(upstream.url("/api/item/3"))
        .header("x-request-id", "svc-1")
        .body(Body::default())
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = read_body(res).await;
    assert!(body.contains("svc-1"), "{body}");
    assert_eq!(upstream.count_by_id()["svc-1"], 1);

    // Its errors are the client's errors, with their predicates.
    client.base_host().breaker().force_open();
    let req = Request::get(upstream.url("/api/item/4"))
        .body(Body::default())
        .unwrap();
    let e: Error = svc.ready().await.unwrap().call(req).await.unwrap_err();
    assert!(e.is_circuit_open(), "{e:?}");
    assert_eq!(upstream.requests_received(), 1);
}

#[tokio::test(start_paused = true)]
async fn tower_layers_wrap_the_client() {
    // Every answer takes 100 ms; ten requests through a concurrency limit of 2.
    let latency = Duration::from_millis(100);
    let upstream = Upstream::builder()
        .latency(Latency::fixed(latency))
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/")).build().unwrap();
    let svc = ServiceBuilder::new()
        .layer(ConcurrencyLimitLayer::new(2))
        .service(client.clone());
    let mut set = JoinSet::new();
    for i in 0..10 {
        let svc = svc.clone();
        let req = Request::get(upstream.url(&format!("/api/item/{i}")))
            .body(Body::default())
            .unwrap();
        set.spawn(async move {
            let res = svc.oneshot(req).await?;
            let status = res.status();
            read_body(res).await;
            Ok::<_, Error>(status)
        });
    }
    while let Some(joined) = set.join_next().await {
        assert_eq!(joined.unwrap().unwrap(), StatusCode::OK);
    }
    // Without the limit all ten would arrive at once (the client allows 10 connections);
    // with it, no more than two arrive within any one latency.
    let records = upstream.records();
    assert_eq!(records.len(), 10);
    for r in &records {
        let overlapping = records
            .iter()
            .filter(|o| o.at >= r.at && o.at < r.at + latency)
            .count();
        assert!(
            overlapping <= 2,
            "{overlapping} requests within {latency:?} of {r:?}"
        );
    }
}

// ===== Responses and URLs =====

#[tokio::test(start_paused = true)]
async fn response_bytes_and_text_read_the_whole_body() {
    let upstream = Upstream::builder()
        .slow_body(4, Duration::from_millis(10))
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/")).build().unwrap();

    let res = client.get("/api/item/7").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), http::Version::HTTP_11);
    assert_eq!(res.headers()["content-type"], "application/json");
    let bytes = res.bytes().await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&bytes).trim_end(),
        r#"{"id":"/api/item/7","n":1}"#
    );

    let text = client
        .get("/api/item/8")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text.trim_end(), r#"{"id":"/api/item/8","n":2}"#);

    // Both connections' bodies were read to the end: one connection served both.
    assert_eq!(upstream.connections_accepted(), 1);
    assert_eq!(client.pool().stats().total.reused, 1);
}

#[tokio::test(start_paused = true)]
async fn relative_uris_resolve_against_the_base_path() {
    let upstream = Upstream::builder().start().await.unwrap();
    for base in [upstream.url("/v1"), upstream.url("/v1/")] {
        let client = Client::builder(&base).build().unwrap();
        let req = Request::get("/items?page=2").body(Body::default()).unwrap();
        assert_eq!(client.request(req).await.unwrap().status(), StatusCode::OK);
        let req = Request::post("/items/9").body(Body::from("x")).unwrap();
        assert_eq!(client.request(req).await.unwrap().status(), StatusCode::OK);
        assert_eq!(client.get("items").await.unwrap().status(), StatusCode::OK);
        // An absolute URL is sent as it is.
        let res = client.get(&upstream.url("/other")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let seen: Vec<(String, String, String)> = upstream
        .records()
        .iter()
        .map(|r| (r.method.to_string(), r.path.clone(), r.id.clone()))
        .collect();
    let once = [
        ("GET", "/v1/items", "/v1/items?page=2"),
        ("POST", "/v1/items/9", "/v1/items/9"),
        ("GET", "/v1/items", "/v1/items"),
        ("GET", "/other", "/other"),
    ];
    let expected: Vec<(String, String, String)> = once
        .iter()
        .chain(once.iter())
        .map(|(m, p, i)| (m.to_string(), p.to_string(), i.to_string()))
        .collect();
    assert_eq!(seen, expected);
}

#[tokio::test(start_paused = true)]
async fn each_origin_has_its_own_host() {
    let a = Upstream::builder().start().await.unwrap();
    let b = Upstream::builder()
        .outage(Outage::requests(1..100))
        .start()
        .await
        .unwrap();
    let client = Client::builder(a.url("/"))
        .breaker(breaker_config().consecutive_failures(2).build().unwrap())
        .build()
        .unwrap();
    let origin_b = Origin::of(&b.url("/").parse().unwrap()).unwrap();
    assert!(client.host(&origin_b).is_none());
    for _ in 0..2 {
        let res = client.get(&b.url("/x")).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let host_b = client.host(&origin_b).expect("made by the first request");
    assert_eq!(host_b.breaker().state(), State::Open);
    assert!(client
        .get(&b.url("/x"))
        .await
        .unwrap_err()
        .is_circuit_open());
    // The base origin is unaffected.
    assert_eq!(client.base_host().breaker().state(), State::Closed);
    assert_eq!(client.get("/y").await.unwrap().status(), StatusCode::OK);
    assert_eq!((a.requests_received(), b.requests_received()), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn bad_request_urls_are_builder_errors_not_panics() {
    let upstream = Upstream::builder().start().await.unwrap();
    let client = Client::builder(upstream.url("/")).build().unwrap();
    let e = client.get("/a path with spaces").await.unwrap_err();
    assert!(e.is_builder(), "{e:?}");
    assert!(e.to_string().contains("a path with spaces"), "{e}");
    // Through the Service, a URI must be absolute: nothing resolves it there.
    let mut svc = client.clone();
    let req = Request::get("/relative").body(Body::default()).unwrap();
    let e = svc.ready().await.unwrap().call(req).await.unwrap_err();
    assert!(e.is_builder(), "{e:?}");
    assert!(e.to_string().contains("/relative"), "{e}");
    let req = Request::get("ftp://127.0.0.1/x")
        .body(Body::default())
        .unwrap();
    let e = client.request(req).await.unwrap_err();
    assert!(e.is_builder(), "{e:?}");
    assert_eq!(upstream.requests_received(), 0);
}

// ===== Obeying the upstream =====

#[tokio::test(start_paused = true)]
async fn an_exhausted_ratelimit_header_holds_requests_so_no_429_comes() {
    // 2 per 1 s window. Its `200`s say how many remain (`RateLimit: "default";r=0;t=1` on the
    // second of each window): the client waits for the next window instead of hitting a 429.
    let upstream = Upstream::builder()
        .rate_limit(2, SECOND)
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/")).build().unwrap();
    for i in 0..6 {
        let res = client.get(&format!("/api/item/{i}")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "request {i}");
        res.bytes().await.unwrap();
    }
    let records = upstream.records();
    assert!(records
        .iter()
        .all(|r| r.outcome == Outcome::Answered(StatusCode::OK)));
    // Two per window: the 3rd and 5th waited for the next one.
    let start = upstream.started_at();
    let windows: Vec<u64> = records.iter().map(|r| (r.at - start).as_secs()).collect();
    assert_eq!(windows, [0, 0, 1, 1, 2, 2]);
    assert_eq!(client.base_host().holds(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_503_with_retry_after_holds_the_origin() {
    let upstream = Upstream::builder()
        .outage(Outage::requests(1..2).retry_after(Duration::from_secs(3)))
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/")).build().unwrap();
    let res = client.get("/a").await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "3");
    let held = client.base_host().held_until().expect("held");
    assert_eq!(client.get("/b").await.unwrap().status(), StatusCode::OK);
    let records = upstream.records();
    assert!(records[1].at >= held, "{records:?}");
    assert_eq!(records[1].at - records[0].at, Duration::from_secs(3));
}

// ===== Cancellation =====

#[tokio::test(start_paused = true)]
async fn a_cancelled_request_frees_its_connection_and_counts_nothing() {
    let upstream = Upstream::builder()
        .hang_path("/hang")
        .start()
        .await
        .unwrap();
    let client = Client::builder(upstream.url("/"))
        .max_connections_per_host(1)
        .breaker(breaker_config().consecutive_failures(1).build().unwrap())
        .build()
        .unwrap();
    let hung = tokio::spawn({
        let client = client.clone();
        async move { client.get("/hang").await.map(|r| r.status()) }
    });
    upstream.wait_for_requests(1).await;
    assert_eq!(client.in_flight(), 1);
    hung.abort();
    assert!(hung.await.unwrap_err().is_cancelled());
    assert_eq!(client.in_flight(), 0);
    // The connection is closed (its answer would never come), its slot freed, and the breaker
    // has no outcome to count.
    upstream.wait_for_open_connections(0).await;
    let stats = client.pool().stats();
    assert_eq!((stats.total.leased, stats.total.closed), (0, 1));
    assert_eq!(client.base_host().breaker().state(), State::Closed);
    assert_eq!(client.base_host().breaker().counts().calls, 0);
    // The only slot is free again.
    assert_eq!(client.get("/ok").await.unwrap().status(), StatusCode::OK);
}

#[cfg(feature = "json")]
#[tokio::test(start_paused = true)]
async fn response_json_decodes_or_says_why_not() {
    #[derive(serde::Deserialize)]
    struct Answer {
        id: String,
        n: u64,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Other {
        missing: u64,
    }
    let upstream = Upstream::builder().start().await.unwrap();
    let client = Client::builder(upstream.url("/")).build().unwrap();
    let answer: Answer = client
        .get("/api/item/5")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((answer.id.as_str(), answer.n), ("/api/item/5", 1));
    let e = client
        .get("/api/item/6")
        .await
        .unwrap()
        .json::<Other>()
        .await
        .unwrap_err();
    assert_eq!(e.class(), "decode");
    assert!(e.to_string().contains("missing"), "{e}");
}

// ===== Origins other than the base URL's =====

#[tokio::test(start_paused = true)]
async fn quiet_origins_beyond_max_origins_are_forgotten_and_the_others_kept() {
    let base = Upstream::builder().start().await.unwrap();
    let quiet1 = Upstream::builder().start().await.unwrap();
    let quiet2 = Upstream::builder().start().await.unwrap();
    let held = Upstream::builder()
        .outage(Outage::requests(1..100).retry_after(Duration::from_secs(60)))
        .start()
        .await
        .unwrap();
    let busy = Upstream::builder()
        .hang_path("/hang")
        .start()
        .await
        .unwrap();
    let newcomer = Upstream::builder().start().await.unwrap();
    let origin = |u: &Upstream| Origin::of(&u.url("/").parse().unwrap()).unwrap();
    let client = Client::builder(base.url("/"))
        .max_origins(2)
        .pool_idle_timeout(SECOND)
        .build()
        .unwrap();

    for u in [&quiet1, &quiet2] {
        client
            .get(&u.url("/a"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    let res = client.get(&held.url("/a")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    res.bytes().await.unwrap();
    assert!(client.host(&origin(&held)).unwrap().held_until().is_some());
    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = busy.url("/hang");
        async move { client.get(&url).await }
    });
    busy.wait_for_requests(1).await;
    // A handle keeps its origin, quiet or not.
    let handle = client.host(&origin(&quiet2)).unwrap();

    // Past the pool's idle timeout: the quiet origins' connections are closed.
    tokio::time::sleep(2 * SECOND).await;
    quiet1.wait_for_open_connections(0).await;
    client
        .get(&newcomer.url("/a"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();

    assert!(client.host(&origin(&quiet1)).is_none(), "quiet: forgotten");
    assert!(client.host(&origin(&quiet2)).is_some(), "a handle is held");
    assert!(client.host(&origin(&held)).is_some(), "its hold is ahead");
    assert!(
        client.host(&origin(&busy)).is_some(),
        "a request is in flight"
    );
    assert!(client.host(&origin(&newcomer)).is_some());
    assert!(client.base_host().origin() == &origin(&base));

    // A forgotten origin comes back fresh on its next request.
    let res = client.get(&quiet1.url("/b")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(quiet1.requests_received(), 2);
    drop(handle);
    in_flight.abort();
}

#[tokio::test(start_paused = true)]
async fn a_client_sent_to_many_origins_one_after_another_remembers_a_bounded_number() {
    let base = Upstream::builder().start().await.unwrap();
    let mut upstreams = Vec::new();
    for _ in 0..12 {
        upstreams.push(Upstream::builder().start().await.unwrap());
    }
    let client = Client::builder(base.url("/"))
        .max_origins(3)
        .pool_idle_timeout(SECOND)
        .build()
        .unwrap();
    let remembered = |client: &Client| {
        upstreams
            .iter()
            .filter(|u| {
                let origin = Origin::of(&u.url("/").parse().unwrap()).unwrap();
                client.host(&origin).is_some()
            })
            .count()
    };
    for (i, u) in upstreams.iter().enumerate() {
        client
            .get(&u.url("/a"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        // Its connection closes after the idle timeout; then the origin is quiet.
        tokio::time::sleep(2 * SECOND).await;
        u.wait_for_open_connections(0).await;
        assert!(
            remembered(&client) <= 4,
            "after {} origins: {}",
            i + 1,
            remembered(&client)
        );
    }
    assert!(remembered(&client) >= 1);
}
