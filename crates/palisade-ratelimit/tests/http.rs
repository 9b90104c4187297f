//! The HTTP adapter end to end: `429` responses and their headers, axum routers sharing one
//! budget, and the key extractors (`PeerIp`, `ForwardedFor`, `HeaderKey`) alone and in a layer.
//!
//! Every time-dependent test runs on tokio's paused clock and moves it with `advance`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use palisade_ratelimit::http::{
    retry_after_secs, ForwardedFor, HeaderKey, PeerAddr, PeerIp, TooManyRequests, RATELIMIT,
    RATELIMIT_POLICY,
};
use palisade_ratelimit::keyed::ExtractKey;
use palisade_ratelimit::{KeyedRateLimitLayer, Quota, RateLimitLayer};
use tokio::time::advance;
use tower::ServiceExt;

// ===== helpers =====

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn get_req(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// A request carrying axum's `ConnectInfo`, as `into_make_service_with_connect_info` inserts it.
fn from_connect_info(path: &str, peer: &str) -> Request<Body> {
    let mut req = get_req(path);
    req.extensions_mut().insert(ConnectInfo(sock(peer)));
    req
}

/// A request carrying the crate's own `PeerAddr`.
fn from_peer_addr(path: &str, peer: &str) -> Request<Body> {
    let mut req = get_req(path);
    req.extensions_mut().insert(PeerAddr(sock(peer)));
    req
}

/// A request from `peer` with one `X-Forwarded-For` field per entry of `xff`.
fn forwarded(peer: &str, xff: &[&str]) -> Request<Body> {
    let mut req = from_peer_addr("/", peer);
    for value in xff {
        req.headers_mut()
            .append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
    }
    req
}

async fn send(app: &Router, req: Request<Body>) -> Response<Body> {
    app.clone().oneshot(req).await.unwrap()
}

async fn status(app: &Router, req: Request<Body>) -> StatusCode {
    send(app, req).await.status()
}

fn header<'a>(res: &'a Response<Body>, name: &HeaderName) -> &'a str {
    res.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
}

fn one_route(layer: RateLimitLayer<TooManyRequests>) -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer)
}

fn trusted_10_8() -> ForwardedFor {
    ForwardedFor::parse(["10.0.0.0/8"]).unwrap()
}

// ===== 429 and its headers =====

#[test]
fn retry_after_secs_rounds_up_to_at_least_one() {
    assert_eq!(retry_after_secs(Duration::ZERO), 1);
    assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
    assert_eq!(retry_after_secs(Duration::from_millis(999)), 1);
    assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
    assert_eq!(
        retry_after_secs(Duration::from_secs(1) + Duration::from_nanos(1)),
        2
    );
    assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
    assert_eq!(retry_after_secs(Duration::from_secs(60)), 60);
}

#[tokio::test(start_paused = true)]
async fn refusal_is_429_with_retry_after_rounded_up() {
    // One request per 1.5 s: the refused request must wait 1.5 s, announced as 2 s.
    let quota = Quota::new(1, Duration::from_millis(1500)).unwrap();
    let app = one_route(RateLimitLayer::new(quota).too_many_requests());

    let ok = send(&app, get_req("/")).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(ok.headers().get(http::header::RETRY_AFTER).is_none());

    let refused = send(&app, get_req("/")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, &http::header::RETRY_AFTER), "2");
    // Without `ietf_headers(true)` the draft headers are not sent.
    assert!(refused.headers().get(&RATELIMIT).is_none());
    assert!(refused.headers().get(&RATELIMIT_POLICY).is_none());

    // 1 s later 500 ms remain: still refused, now "1".
    advance(Duration::from_millis(1000)).await;
    let refused = send(&app, get_req("/")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, &http::header::RETRY_AFTER), "1");

    // Just before the slot: refused; at the slot: admitted.
    advance(Duration::from_millis(499)).await;
    assert_eq!(
        status(&app, get_req("/")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    advance(Duration::from_millis(1)).await;
    assert_eq!(status(&app, get_req("/")).await, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn sub_second_wait_is_announced_as_one_second() {
    let app = one_route(RateLimitLayer::new(Quota::per_second(10).unwrap()).too_many_requests());

    assert_eq!(status(&app, get_req("/")).await, StatusCode::OK);
    let refused = send(&app, get_req("/")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // The real wait is 100 ms; "0" would make clients retry at once.
    assert_eq!(header(&refused, &http::header::RETRY_AFTER), "1");

    advance(Duration::from_millis(100)).await;
    assert_eq!(status(&app, get_req("/")).await, StatusCode::OK);
    assert_eq!(
        status(&app, get_req("/")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// The `429` of a reject-mode layer over `quota` with the IETF headers on, after the burst is spent.
async fn ietf_refusal(quota: Quota) -> Response<Body> {
    let layer = RateLimitLayer::new(quota)
        .reject()
        .with_rejection(TooManyRequests::new().ietf_headers(true));
    let app = one_route(layer);
    for _ in 0..quota.burst_size() {
        assert_eq!(status(&app, get_req("/")).await, StatusCode::OK);
    }
    let refused = send(&app, get_req("/")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    refused
}

#[tokio::test(start_paused = true)]
async fn ietf_headers_per_second() {
    let res = ietf_refusal(Quota::per_second(10).unwrap()).await;
    assert_eq!(header(&res, &http::header::RETRY_AFTER), "1");
    assert_eq!(header(&res, &RATELIMIT_POLICY), "\"default\";q=10;w=1");
    assert_eq!(header(&res, &RATELIMIT), "\"default\";r=0;t=1");
}

#[tokio::test(start_paused = true)]
async fn ietf_headers_per_minute_with_burst() {
    // 100/min: one every 600 ms; the burst does not change the policy header.
    let res = ietf_refusal("100/min".parse::<Quota>().unwrap().burst(3).unwrap()).await;
    assert_eq!(header(&res, &RATELIMIT_POLICY), "\"default\";q=100;w=60");
    assert_eq!(header(&res, &RATELIMIT), "\"default\";r=0;t=1");
    assert_eq!(header(&res, &http::header::RETRY_AFTER), "1");
}

#[tokio::test(start_paused = true)]
async fn ietf_headers_fractional_and_sub_second_periods() {
    // A 1.5 s window is announced in whole seconds, rounded up like Retry-After.
    let res = ietf_refusal(Quota::new(1, Duration::from_millis(1500)).unwrap()).await;
    assert_eq!(header(&res, &RATELIMIT_POLICY), "\"default\";q=1;w=2");
    assert_eq!(header(&res, &RATELIMIT), "\"default\";r=0;t=2");

    // A sub-second period is expressed per second: 3 per 250 ms = 12 per second.
    let res = ietf_refusal("3/250ms".parse().unwrap()).await;
    assert_eq!(header(&res, &RATELIMIT_POLICY), "\"default\";q=12;w=1");
    assert_eq!(header(&res, &RATELIMIT), "\"default\";r=0;t=1");
}

// ===== axum: one budget across routes =====

fn two_routes() -> Router {
    Router::new()
        .route("/a", get(|| async { "a" }))
        .route("/b", get(|| async { "b" }))
}

async fn assert_one_shared_budget(app: &Router) {
    assert_eq!(status(app, get_req("/a")).await, StatusCode::OK);
    assert_eq!(status(app, get_req("/b")).await, StatusCode::OK);
    // The burst of 2 is spent, whichever route asks.
    let refused = send(app, get_req("/a")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, &http::header::RETRY_AFTER), "1");
    assert_eq!(
        status(app, get_req("/b")).await,
        StatusCode::TOO_MANY_REQUESTS
    );

    // One interval later, exactly one more request passes, on either route.
    advance(Duration::from_secs(1)).await;
    assert_eq!(status(app, get_req("/b")).await, StatusCode::OK);
    assert_eq!(
        status(app, get_req("/a")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        status(app, get_req("/b")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(start_paused = true)]
async fn router_layer_shares_one_budget_across_routes() {
    let quota = Quota::per_second(1).unwrap().burst(2).unwrap();
    let app = two_routes().layer(RateLimitLayer::new(quota).too_many_requests());
    assert_one_shared_budget(&app).await;
}

#[tokio::test(start_paused = true)]
async fn route_layer_shares_one_budget_across_routes() {
    let quota = Quota::per_second(1).unwrap().burst(2).unwrap();
    let app = two_routes().route_layer(RateLimitLayer::new(quota).too_many_requests());

    // `route_layer` does not wrap the fallback: unmatched paths spend nothing.
    for _ in 0..5 {
        assert_eq!(
            status(&app, get_req("/missing")).await,
            StatusCode::NOT_FOUND
        );
    }
    assert_one_shared_budget(&app).await;
}

// ===== axum: keyed by peer address =====

#[tokio::test(start_paused = true)]
async fn peer_ip_gives_each_address_its_own_budget() {
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(KeyedRateLimitLayer::new(Quota::per_second(1).unwrap(), PeerIp).too_many_requests());

    assert_eq!(
        status(&app, from_connect_info("/", "192.0.2.1:1000")).await,
        StatusCode::OK
    );
    // Same IP, another port: same key.
    let refused = send(&app, from_connect_info("/", "192.0.2.1:2000")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, &http::header::RETRY_AFTER), "1");
    // Another IP has its own budget.
    assert_eq!(
        status(&app, from_connect_info("/", "192.0.2.2:1000")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&app, from_connect_info("/", "192.0.2.2:1000")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        status(&app, from_connect_info("/", "[2001:db8::1]:443")).await,
        StatusCode::OK
    );

    advance(Duration::from_secs(1)).await;
    assert_eq!(
        status(&app, from_connect_info("/", "192.0.2.1:3000")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&app, from_connect_info("/", "192.0.2.2:3000")).await,
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn peer_ip_reads_the_crates_own_peer_addr() {
    let layer = KeyedRateLimitLayer::new(Quota::per_second(1).unwrap(), PeerIp).too_many_requests();
    let limiter = layer.limiter().clone();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer);

    assert_eq!(
        status(&app, from_peer_addr("/", "198.51.100.1:1")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&app, from_peer_addr("/", "198.51.100.1:2")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        status(&app, from_peer_addr("/", "198.51.100.2:1")).await,
        StatusCode::OK
    );
    // The key is the IP, wherever it was read from: ConnectInfo of the same IP shares the budget.
    assert_eq!(
        status(&app, from_connect_info("/", "198.51.100.2:9")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(limiter.len(), 2);
    assert_eq!(limiter.remaining_burst(&ip("198.51.100.1")), 0);
    assert_eq!(limiter.remaining_burst(&ip("198.51.100.3")), 1);
}

#[tokio::test(start_paused = true)]
async fn request_without_peer_address_is_500() {
    let layer = KeyedRateLimitLayer::new(Quota::per_second(1).unwrap(), PeerIp).too_many_requests();
    let limiter = layer.limiter().clone();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer);

    for _ in 0..3 {
        let res = send(&app, get_req("/")).await;
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(res.headers().get(http::header::RETRY_AFTER).is_none());
    }
    // Nothing was keyed, and a request with an address is unaffected.
    assert!(limiter.is_empty());
    assert_eq!(
        status(&app, from_connect_info("/", "192.0.2.1:1")).await,
        StatusCode::OK
    );
}

#[test]
fn peer_ip_extract() {
    assert_eq!(
        PeerIp.extract(&from_connect_info("/", "192.0.2.7:80")),
        Some(ip("192.0.2.7"))
    );
    assert_eq!(
        PeerIp.extract(&from_peer_addr("/", "[2001:db8::7]:80")),
        Some(ip("2001:db8::7"))
    );
    assert_eq!(PeerIp.extract(&get_req("/")), None);
}

// ===== ForwardedFor =====

#[test]
fn forwarded_for_ignores_the_header_from_an_untrusted_peer() {
    let xff = trusted_10_8();
    // The peer is the client; whatever it claims is ignored.
    assert_eq!(
        xff.extract(&forwarded("203.0.113.9:5000", &["1.2.3.4"])),
        Some(ip("203.0.113.9"))
    );
    assert_eq!(
        xff.extract(&forwarded("203.0.113.9:5000", &["1.2.3.4, 10.0.0.5"])),
        Some(ip("203.0.113.9"))
    );
    assert_eq!(
        xff.extract(&forwarded("203.0.113.9:5000", &[])),
        Some(ip("203.0.113.9"))
    );
}

#[test]
fn forwarded_for_takes_the_right_most_untrusted_hop() {
    let xff = trusted_10_8();
    assert_eq!(
        xff.extract(&forwarded("10.0.0.1:80", &["1.2.3.4, 10.0.0.5"])),
        Some(ip("1.2.3.4"))
    );
    // A client-prepended fake sits left of the real client and is never used.
    assert_eq!(
        xff.extract(&forwarded("10.0.0.1:80", &["6.6.6.6, 1.2.3.4, 10.0.0.5"])),
        Some(ip("1.2.3.4"))
    );
    // Even when the fake is a trusted address.
    assert_eq!(
        xff.extract(&forwarded("10.0.0.1:80", &["10.9.9.9, 1.2.3.4, 10.0.0.5"])),
        Some(ip("1.2.3.4"))
    );
    // Spaces around hops do not matter.
    assert_eq!(
        xff.extract(&forwarded("10.0.0.1:80", &["  1.2.3.4 ,10.0.0.5 "])),
        Some(ip("1.2.3.4"))
    );
    // IPv6 networks.
    let v6 = ForwardedFor::parse(["fd00::/8"]).unwrap();
    assert_eq!(
        v6.extract(&forwarded("[fd00::1]:80", &["2001:db8::9, fd00::2"])),
        Some(ip("2001:db8::9"))
    );
}

#[test]
fn forwarded_for_all_trusted_takes_the_left_most() {
    let xff = trusted_10_8();
    assert_eq!(
        xff.extract(&forwarded("10.0.0.1:80", &["10.0.0.7, 10.0.0.6, 10.0.0.5"])),
        Some(ip("10.0.0.7"))
    );
    // A trusted peer and no header: the peer.
    assert_eq!(
        xff.extract(&forwarded("10.0.0.1:80", &[])),
        Some(ip("10.0.0.1"))
    );
}

#[test]
fn forwarded_for_joins_several_header_fields_into_one_list() {
    let xff = trusted_10_8();
    assert_eq!(
        xff.extract(&forwarded("10.0.0.1:80", &["6.6.6.6, 1.2.3.4", "10.0.0.5"])),
        Some(ip("1.2.3.4"))
    );
    assert_eq!(
        xff.extract(&forwarded(
            "10.0.0.1:80",
            &["1.2.3.4", "10.0.0.6, 10.0.0.5"]
        )),
        Some(ip("1.2.3.4"))
    );
    // The later field is nearer: its untrusted hop wins over the earlier field's.
    assert_eq!(
        xff.extract(&forwarded("10.0.0.1:80", &["1.2.3.4", "5.6.7.8, 10.0.0.5"])),
        Some(ip("5.6.7.8"))
    );
    // All trusted across fields: the left-most of the first field.
    assert_eq!(
        xff.extract(&forwarded(
            "10.0.0.1:80",
            &["10.0.0.9", "10.0.0.6, 10.0.0.5"]
        )),
        Some(ip("10.0.0.9"))
    );
}

#[test]
fn forwarded_for_garbage_hop_falls_back_to_the_trusted_hop_on_its_right() {
    let xff = trusted_10_8();
    assert_eq!(
        xff.extract(&forwarded("10.0.0.1:80", &["1.2.3.4, garbage, 10.0.0.5"])),
        Some(ip("10.0.0.5"))
    );
    assert_eq!(
        xff.extract(&forwarded(
            "10.0.0.1:80",
            &["1.2.3.4, 10.0.0.6, unknown, 10.0.0.5"]
        )),
        Some(ip("10.0.0.5"))
    );
    // The right-most hop is garbage: the trusted peer.
    assert_eq!(
        xff.extract(&forwarded("10.0.0.1:80", &["1.2.3.4, not-an-ip"])),
        Some(ip("10.0.0.1"))
    );
    // A hop with a port is not an address.
    assert_eq!(
        xff.extract(&forwarded("10.0.0.1:80", &["1.2.3.4:5678"])),
        Some(ip("10.0.0.1"))
    );
    // An empty hop is garbage too.
    assert_eq!(
        xff.extract(&forwarded("10.0.0.1:80", &["1.2.3.4, , 10.0.0.5"])),
        Some(ip("10.0.0.5"))
    );
    // Garbage in the later of two fields stops the walk there.
    assert_eq!(
        xff.extract(&forwarded("10.0.0.1:80", &["1.2.3.4", "bogus, 10.0.0.5"])),
        Some(ip("10.0.0.5"))
    );

    // A field that is not visible ASCII is garbage as a whole: the walk stops there, and the
    // earlier field is not read.
    let mut req = forwarded("10.0.0.1:80", &["1.2.3.4"]);
    req.headers_mut().append(
        "x-forwarded-for",
        HeaderValue::from_bytes(b"5.6.7.8, \xff").unwrap(),
    );
    assert_eq!(xff.extract(&req), Some(ip("10.0.0.1")));
}

#[test]
fn forwarded_for_needs_a_peer_address() {
    let xff = trusted_10_8();
    let mut req = get_req("/");
    req.headers_mut()
        .insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
    assert_eq!(xff.extract(&req), None);
    // axum's ConnectInfo serves as the peer too.
    let mut req = from_connect_info("/", "10.0.0.1:80");
    req.headers_mut()
        .insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
    assert_eq!(xff.extract(&req), Some(ip("1.2.3.4")));
}

#[test]
fn forwarded_for_parse_accepts_networks_and_bare_addresses() {
    let xff = ForwardedFor::parse(["10.0.0.0/8", "127.0.0.1", "::1"]).unwrap();
    // A bare address is a single host.
    assert_eq!(
        xff.extract(&forwarded("127.0.0.1:80", &["1.2.3.4"])),
        Some(ip("1.2.3.4"))
    );
    assert_eq!(
        xff.extract(&forwarded("127.0.0.2:80", &["1.2.3.4"])),
        Some(ip("127.0.0.2"))
    );
    assert_eq!(
        xff.extract(&forwarded("[::1]:80", &["1.2.3.4"])),
        Some(ip("1.2.3.4"))
    );
    // No trusted proxies at all: the peer, always.
    let none = ForwardedFor::parse([]).unwrap();
    assert_eq!(
        none.extract(&forwarded("10.0.0.1:80", &["1.2.3.4"])),
        Some(ip("10.0.0.1"))
    );
}

#[test]
fn forwarded_for_parse_names_the_bad_entry() {
    let expect = |entry: &str| {
        format!(
            "invalid trusted proxy \"{entry}\": expected an IP address or a network such as 10.0.0.0/8"
        )
    };
    let err = ForwardedFor::parse(["10.0.0.0/8", "proxy.example"]).unwrap_err();
    assert_eq!(err, expect("proxy.example"));
    assert_eq!(
        err,
        "invalid trusted proxy \"proxy.example\": expected an IP address or a network such as 10.0.0.0/8"
    );
    assert_eq!(
        ForwardedFor::parse(["10.0.0.0/33"]).unwrap_err(),
        expect("10.0.0.0/33")
    );
    assert_eq!(
        ForwardedFor::parse(["256.0.0.1"]).unwrap_err(),
        expect("256.0.0.1")
    );
    assert_eq!(ForwardedFor::parse([""]).unwrap_err(), expect(""));
}

#[tokio::test(start_paused = true)]
async fn forwarded_for_through_the_layer() {
    let layer =
        KeyedRateLimitLayer::new(Quota::per_second(1).unwrap(), trusted_10_8()).too_many_requests();
    let limiter = layer.limiter().clone();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer);

    // Behind the proxy 10.0.0.1: keyed by the client it reports.
    assert_eq!(
        status(&app, forwarded("10.0.0.1:80", &["1.2.3.4"])).await,
        StatusCode::OK
    );
    // Prepending a fake does not buy a new budget.
    assert_eq!(
        status(&app, forwarded("10.0.0.1:80", &["6.6.6.6, 1.2.3.4"])).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client behind the same proxy has its own.
    assert_eq!(
        status(&app, forwarded("10.0.0.1:80", &["5.6.7.8"])).await,
        StatusCode::OK
    );

    // An untrusted peer cannot change its key with a spoofed header.
    assert_eq!(
        status(&app, forwarded("203.0.113.9:1", &["9.9.9.9"])).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&app, forwarded("203.0.113.9:2", &["8.8.8.8"])).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        status(&app, forwarded("203.0.113.9:3", &[])).await,
        StatusCode::TOO_MANY_REQUESTS
    );

    let keys = [ip("1.2.3.4"), ip("5.6.7.8"), ip("203.0.113.9")];
    assert_eq!(limiter.len(), keys.len());
    for key in &keys {
        assert_eq!(limiter.remaining_burst(key), 0, "{key}");
    }
    assert_eq!(limiter.remaining_burst(&ip("9.9.9.9")), 1);

    advance(Duration::from_secs(1)).await;
    assert_eq!(
        status(&app, forwarded("10.0.0.1:80", &["1.2.3.4"])).await,
        StatusCode::OK
    );
}

// ===== HeaderKey =====

#[test]
fn header_key_extract() {
    let key = HeaderKey::new(HeaderName::from_static("x-api-key"));
    let mut req = get_req("/");
    req.headers_mut()
        .insert("x-api-key", HeaderValue::from_static("alpha"));
    assert_eq!(key.extract(&req), Some(HeaderValue::from_static("alpha")));
    assert_eq!(key.extract(&get_req("/")), None);
}

#[tokio::test(start_paused = true)]
async fn header_key_limits_per_api_key() {
    fn with_key(value: &'static str) -> Request<Body> {
        let mut req = get_req("/");
        req.headers_mut()
            .insert("x-api-key", HeaderValue::from_static(value));
        req
    }
    let layer = KeyedRateLimitLayer::new(
        Quota::per_minute(1).unwrap(),
        HeaderKey::new(HeaderName::from_static("x-api-key")),
    )
    .too_many_requests();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer);

    assert_eq!(status(&app, with_key("alpha")).await, StatusCode::OK);
    let refused = send(&app, with_key("alpha")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, &http::header::RETRY_AFTER), "60");
    assert_eq!(status(&app, with_key("beta")).await, StatusCode::OK);

    // No API key: the server is keyed on something the request lacks.
    assert_eq!(
        status(&app, get_req("/")).await,
        StatusCode::INTERNAL_SERVER_ERROR
    );

    advance(Duration::from_secs(59)).await;
    let refused = send(&app, with_key("alpha")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, &http::header::RETRY_AFTER), "1");
    advance(Duration::from_secs(1)).await;
    assert_eq!(status(&app, with_key("alpha")).await, StatusCode::OK);
}

#[test]
fn ipv4_mapped_peers_match_ipv4_networks_and_share_one_key() {
    // A dual-stack socket reports an IPv4 proxy as ::ffff:10.0.0.1.
    let xff = trusted_10_8();
    assert_eq!(
        xff.extract(&forwarded("[::ffff:10.0.0.1]:80", &["1.2.3.4"])),
        Some(ip("1.2.3.4"))
    );
    assert_eq!(
        xff.extract(&forwarded("10.0.0.1:80", &["::ffff:1.2.3.4"])),
        Some(ip("1.2.3.4"))
    );
    assert_eq!(
        PeerIp.extract(&from_peer_addr("/", "[::ffff:192.0.2.7]:443")),
        Some(ip("192.0.2.7"))
    );
}
