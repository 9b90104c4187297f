//! The tower contract, driven by hand with `tower_test::mock`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_ratelimit::{Quota, RateLimitLayer, RateLimited};
use tokio_test::{assert_pending, assert_ready, assert_ready_ok};
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;

/// An inner service that counts how often it was polled and called.
#[derive(Clone, Default)]
struct Probe {
    polls: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

impl Service<()> for Probe {
    type Response = ();
    type Error = Infallible;
    type Future = std::future::Ready<Result<(), Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(()))
    }
}

#[tokio::test(start_paused = true)]
async fn the_token_is_taken_before_the_inner_service_is_polled() {
    let layer = RateLimitLayer::new(Quota::per_second(1).unwrap());
    let limiter = layer.limiter().clone();
    let (mut svc, mut handle) = mock::spawn_layer::<(), (), _>(layer);
    handle.allow(0);
    // Our gate is passed (the token is held), the inner service is not ready yet.
    assert_pending!(svc.poll_ready());
    assert_eq!(limiter.remaining_burst(), 0);
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(());
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, ());
    send.send_response(());
    fut.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_waiting_request_does_not_poll_the_inner_service() {
    let probe = Probe::default();
    let layer = RateLimitLayer::new(Quota::per_second(1).unwrap());
    let mut first = layer.layer(probe.clone());
    first.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(probe.polls.load(Ordering::SeqCst), 1);
    let mut second = tokio_test::task::spawn(layer.layer(probe.clone()).oneshot(()));
    assert_pending!(second.poll());
    assert_eq!(
        probe.polls.load(Ordering::SeqCst),
        1,
        "inner polled while waiting for a token"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_ready!(second.poll()).unwrap();
    assert_eq!(probe.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_refused_request_neither_polls_nor_calls_the_inner_service() {
    let probe = Probe::default();
    let layer = RateLimitLayer::new(Quota::per_second(1).unwrap()).reject();
    layer.layer(probe.clone()).oneshot(()).await.unwrap();
    let err = layer.layer(probe.clone()).oneshot(()).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<RateLimited>().unwrap().retry_after(),
        Duration::from_secs(1)
    );
    assert_eq!(probe.polls.load(Ordering::SeqCst), 1);
    assert_eq!(probe.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "poll_ready must return Ready before call")]
async fn call_without_poll_ready_panics() {
    let mut svc = RateLimitLayer::new(Quota::per_second(1).unwrap()).layer(Probe::default());
    let _never_polled = svc.call(());
}

#[tokio::test(start_paused = true)]
async fn a_clone_does_not_inherit_the_token() {
    let layer = RateLimitLayer::new(Quota::per_second(1).unwrap()).reject();
    let mut svc = layer.layer(Probe::default());
    svc.ready().await.unwrap();
    let mut clone = svc.clone();
    // The token belongs to `svc`; the clone must ask for its own, and there is none.
    let err = clone.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(err.downcast_ref::<RateLimited>().is_some());
    svc.call(()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn every_waiting_clone_is_woken_in_turn() {
    let layer = RateLimitLayer::new(Quota::per_second(1).unwrap());
    let limiter = layer.limiter().clone();
    let svc = layer.layer(Probe::default());
    svc.clone().oneshot(()).await.unwrap();
    let mut waiters: Vec<_> = (0..5)
        .map(|_| tokio_test::task::spawn(svc.clone().oneshot(())))
        .collect();
    for w in &mut waiters {
        assert_pending!(w.poll());
    }
    assert_eq!(limiter.waiting(), 5);
    for i in 0..5 {
        tokio::time::advance(Duration::from_secs(1)).await;
        // Only the head sleeps on a timer; when it leaves, it wakes the next one.
        assert!(
            waiters[i].is_woken(),
            "waiter {i} was not woken at its turn"
        );
        assert_ready!(waiters[i].poll()).unwrap();
        if i + 1 < 5 {
            assert!(
                waiters[i + 1].is_woken(),
                "waiter {} not handed the turn",
                i + 1
            );
            assert_pending!(waiters[i + 1].poll());
        }
    }
    assert_eq!(limiter.waiting(), 0);
}
