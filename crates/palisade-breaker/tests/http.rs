//! The HTTP preset: which statuses trip it, per-authority breakers.

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use palisade_breaker::http::{Authority, HttpClassifier};
use palisade_breaker::{
    CircuitBreakerLayer, CircuitOpen, Config, KeyedBreakers, KeyedCircuitBreakerLayer, State,
};
use tower::{service_fn, Layer, Service, ServiceExt};

fn config() -> Config {
    Config::builder()
        .count_window(20)
        .minimum_calls(10)
        .failure_rate(50)
        .open_duration(Duration::from_secs(5), 2, Duration::from_secs(60))
        .jitter(0)
        .build()
        .unwrap()
}

/// An upstream answering the status in the request's path, `/503` → 503.
fn upstream() -> impl Service<
    Request<()>,
    Response = Response<()>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<()>, Infallible>>,
> + Clone {
    service_fn(|req: Request<()>| {
        let status: u16 = req.uri().path()[1..].parse().unwrap();
        let mut res = Response::new(());
        *res.status_mut() = StatusCode::from_u16(status).unwrap();
        if status == 503 {
            res.headers_mut()
                .insert("retry-after", "30".parse().unwrap());
        }
        std::future::ready(Ok(res))
    })
}

fn get(uri: &str) -> Request<()> {
    Request::get(uri).body(()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_4xx_stream_never_opens_it_a_5xx_stream_does() {
    let layer = CircuitBreakerLayer::new(config()).with_classifier(HttpClassifier::server_errors());
    let breaker = layer.breaker().clone();
    let mut svc = layer.layer(upstream());
    for status in [400, 401, 404, 409, 422, 429]
        .into_iter()
        .cycle()
        .take(1_000)
    {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(get(&format!("/{status}")))
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status);
    }
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.counts().failures, 0);
    for _ in 0..10 {
        svc.ready().await.unwrap().call(get("/500")).await.unwrap();
    }
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn gateway_statuses_only_and_429_on_request() {
    let c = HttpClassifier::statuses(&[502, 503, 504]).count_429(true);
    let layer = CircuitBreakerLayer::new(config()).with_classifier(c);
    let breaker = layer.breaker().clone();
    let mut svc = layer.layer(upstream());
    for _ in 0..20 {
        svc.ready().await.unwrap().call(get("/500")).await.unwrap();
    }
    assert_eq!(breaker.state(), State::Closed, "500 is not a gateway error");
    for _ in 0..10 {
        svc.ready().await.unwrap().call(get("/429")).await.unwrap();
    }
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn retry_after_on_a_503_keeps_it_open_that_long() {
    let layer = CircuitBreakerLayer::new(config()).with_classifier(HttpClassifier::default());
    let mut svc = layer.layer(upstream());
    for _ in 0..10 {
        svc.ready().await.unwrap().call(get("/503")).await.unwrap();
    }
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(get("/200"))
        .await
        .unwrap_err();
    // Open for 30 s (the upstream's Retry-After), not the configured 5 s.
    assert_eq!(
        err.downcast_ref::<CircuitOpen>().unwrap().retry_after(),
        Some(Duration::from_secs(30))
    );
}

#[tokio::test(start_paused = true)]
async fn one_hosts_breaker_opens_another_stays_closed() {
    let layer = KeyedCircuitBreakerLayer::new(config(), Authority)
        .with_classifier(HttpClassifier::server_errors());
    let breakers = layer.breakers().clone();
    let mut svc = layer.layer(upstream());
    for _ in 0..10 {
        svc.ready()
            .await
            .unwrap()
            .call(get("http://down.example/503"))
            .await
            .unwrap();
        svc.ready()
            .await
            .unwrap()
            .call(get("http://up.example/200"))
            .await
            .unwrap();
    }
    let key = |uri: &str| palisade_breaker::http::Origin::of(&uri.parse().unwrap());
    assert_eq!(
        breakers.peek(&key("http://down.example/")).unwrap().state(),
        State::Open
    );
    assert_eq!(
        breakers.peek(&key("http://up.example/")).unwrap().state(),
        State::Closed
    );
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(get("http://down.example/200"))
        .await
        .unwrap_err();
    assert!(err.is::<CircuitOpen>());
    svc.ready()
        .await
        .unwrap()
        .call(get("http://up.example/200"))
        .await
        .unwrap();
    // The same host on another port is another origin; the default port spelled out is not.
    svc.ready()
        .await
        .unwrap()
        .call(get("http://down.example:8080/200"))
        .await
        .unwrap();
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(get("http://DOWN.example:80/200"))
        .await
        .unwrap_err();
    assert!(err.is::<CircuitOpen>());
}

#[tokio::test(start_paused = true)]
async fn idle_eviction_never_forgets_a_breaker_with_failure_state() {
    let breakers: KeyedBreakers<u32> =
        KeyedBreakers::with_limits(config(), 4, Duration::from_secs(60));
    let layer = KeyedCircuitBreakerLayer::from_breakers(breakers.clone(), |req: &(u32, u16)| req.0)
        .with_classifier(palisade_breaker::classify::classify_fn(
            |r: &Result<u16, Infallible>| match r {
                Ok(s) if *s >= 500 => palisade_breaker::Outcome::FAILURE,
                _ => palisade_breaker::Outcome::Success,
            },
        ));
    let mut svc = layer.layer(service_fn(|(_, s): (u32, u16)| async move {
        Ok::<_, Infallible>(s)
    }));
    // Key 0: open. Key 1: one failure. Keys 2, 3: clean.
    for _ in 0..10 {
        let _ = svc.ready().await.unwrap().call((0, 500)).await;
    }
    svc.ready().await.unwrap().call((1, 500)).await.unwrap();
    svc.ready().await.unwrap().call((2, 200)).await.unwrap();
    svc.ready().await.unwrap().call((3, 200)).await.unwrap();
    tokio::time::advance(Duration::from_secs(120)).await;
    // Four new keys: the clean idle breakers make room first, then the least recently used
    // clean ones; the open one and the one holding a failure are never forgotten.
    for k in 10..14 {
        svc.ready().await.unwrap().call((k, 200)).await.unwrap();
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    assert!(breakers.peek(&0).is_some_and(|b| b.state() == State::Open));
    assert!(breakers.peek(&1).is_some_and(|b| b.counts().failures == 1));
    assert!(breakers.peek(&2).is_none() && breakers.peek(&3).is_none());
    assert!(breakers.peek(&10).is_none() && breakers.peek(&11).is_none());
    assert_eq!(breakers.len(), 4);
    // When every kept breaker carries failure state, the bound gives way rather than forget
    // a failing host.
    for k in [12, 13] {
        svc.ready().await.unwrap().call((k, 500)).await.unwrap();
    }
    svc.ready().await.unwrap().call((20, 200)).await.unwrap();
    assert_eq!(breakers.len(), 5);
}
