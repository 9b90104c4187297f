//! `Breaker::open_remaining`: how long until a probe may go, only while open.

use std::time::Duration;

use palisade_breaker::{CircuitBreakerLayer, Config, State};
use tower::{Service, ServiceBuilder, ServiceExt};

#[tokio::test(start_paused = true)]
async fn open_remaining_counts_down_only_while_open() {
    let config = Config::builder()
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(1), 2, Duration::from_secs(8))
        .jitter(0)
        .build()
        .unwrap();
    let layer = CircuitBreakerLayer::new(config);
    let breaker = layer.breaker().clone();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|ok: bool| async move {
            if ok {
                Ok(())
            } else {
                Err("down")
            }
        });
    assert_eq!(breaker.open_remaining(), None, "closed");
    let _ = svc.ready().await.unwrap().call(false).await;
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(breaker.open_remaining(), Some(Duration::from_secs(1)));
    tokio::time::advance(Duration::from_millis(400)).await;
    assert_eq!(breaker.open_remaining(), Some(Duration::from_millis(600)));
    tokio::time::advance(Duration::from_millis(700)).await;
    assert_eq!(
        breaker.open_remaining(),
        Some(Duration::ZERO),
        "a probe may go"
    );
    svc.ready().await.unwrap().call(true).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.open_remaining(), None);
    breaker.force_open();
    assert_eq!(breaker.open_remaining(), None, "forced open has no end");
}
