//! Regressions from a second bug-hunting review: keyed eviction of a breaker with a call in
//! flight or a run of failures counting, a panicking listener leaving the backoff wrong, and
//! `rejected()` counting polls instead of refused calls.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_breaker::{
    Breaker, CircuitBreakerLayer, CircuitOpen, Config, KeyedBreakers, KeyedCircuitBreakerLayer,
    State, Transition,
};
use tokio::sync::Notify;

mod common;
use common::{flaky, noop_waker, quick_open};
use tower::{service_fn, Layer, Service, ServiceExt};

/// Keyed: a clean breaker with a call in flight is evicted (LRU) by a new key; the call's
/// failure then lands in the forgotten breaker, and the host gets a fresh one: the failure is
/// lost and the next request goes through although consecutive_failures(1) should have opened it.
#[tokio::test(start_paused = true)]
async fn keyed_eviction_of_a_breaker_with_a_call_in_flight_loses_its_outcome() {
    let config = quick_open()
        .no_failure_rate()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let breakers: KeyedBreakers<&'static str> =
        KeyedBreakers::with_limits(config, 1, Duration::from_secs(300));
    let release = Arc::new(Notify::new());
    let layer = KeyedCircuitBreakerLayer::from_breakers(breakers.clone(), |r: &&'static str| *r);
    let svc = layer.layer(service_fn({
        let release = release.clone();
        move |host: &'static str| {
            let release = release.clone();
            async move {
                if host == "slow.example" {
                    release.notified().await;
                    Err::<(), &str>("upstream failed")
                } else {
                    Ok(())
                }
            }
        }
    }));
    // A call to the slow host, in flight.
    let in_flight = tokio::spawn(svc.clone().oneshot("slow.example"));
    tokio::task::yield_now().await;
    // Another host arrives: the table is full (max_keys 1), the slow host's breaker is clean
    // (nothing recorded yet) and is the least recently used.
    svc.clone().oneshot("other.example").await.unwrap();
    // The slow call fails.
    release.notify_waiters();
    assert!(in_flight.await.unwrap().is_err());
    // consecutive_failures(1): the slow host's breaker should now be open.
    let state = breakers.peek(&"slow.example").map(|b| b.state());
    let next = svc.clone().oneshot("slow.example");
    let mut next = tokio_test::task::spawn(next);
    let polled = next.poll();
    let refused = matches!(&polled, Poll::Ready(Err(e)) if e.is::<CircuitOpen>());
    assert!(
        refused,
        "the failure of a call in flight was lost with its evicted breaker (breaker now: {state:?}); \
         the next request was not refused"
    );
}

/// Keyed: with a time window, a breaker whose window has slid past its failure is "clean" and
/// is evicted, taking its run of consecutive failures with it: a host failing on every call
/// never opens under key churn.
#[tokio::test(start_paused = true)]
async fn keyed_eviction_forgets_a_run_of_consecutive_failures() {
    let config = quick_open()
        .no_failure_rate()
        .consecutive_failures(2)
        .time_window(Duration::from_secs(1), Duration::from_secs(1))
        .build()
        .unwrap();
    let breakers: KeyedBreakers<&'static str> =
        KeyedBreakers::with_limits(config, 1, Duration::from_secs(300));
    let layer = KeyedCircuitBreakerLayer::from_breakers(breakers.clone(), |r: &&'static str| *r);
    let svc = layer.layer(service_fn(|host: &'static str| async move {
        if host == "down.example" {
            Err::<(), &str>("upstream failed")
        } else {
            Ok(())
        }
    }));
    let _ = svc.clone().oneshot("down.example").await;
    assert_eq!(
        breakers
            .peek(&"down.example")
            .unwrap()
            .consecutive_failures(),
        1
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    svc.clone().oneshot("other.example").await.unwrap();
    let _ = svc.clone().oneshot("down.example").await;
    let b = breakers.peek(&"down.example").unwrap();
    assert_eq!(
        b.state(),
        State::Open,
        "2 failures in a row with consecutive_failures(2); the first was forgotten with its \
         evicted breaker (consecutive now {})",
        b.consecutive_failures()
    );
}

/// A listener that panics (once) on closing: `close()` never reaches `openings.store(0)`, so
/// the backoff is not reset and the next opening lasts twice the base.
#[tokio::test(start_paused = true)]
async fn a_panicking_listener_does_not_corrupt_the_backoff() {
    let armed = Arc::new(AtomicBool::new(true));
    let breaker = {
        let armed = armed.clone();
        Breaker::with_listener(
            quick_open().consecutive_failures(1).build().unwrap(),
            move |t: &Transition| {
                if t.to == State::Closed && armed.swap(false, Ordering::SeqCst) {
                    panic!("listener bug");
                }
            },
        )
    };
    let mut svc = flaky(&CircuitBreakerLayer::from_breaker(breaker.clone()));
    let _ = svc.ready().await.unwrap().call(false).await;
    assert_eq!(breaker.open_remaining(), Some(Duration::from_secs(1)));
    tokio::time::advance(Duration::from_secs(1)).await;
    // The probe succeeds; the listener panics on the close (the request's task dies).
    let probe = tokio::spawn({
        let mut svc = svc.clone();
        async move { svc.ready().await.unwrap().call(true).await }
    });
    let _ = probe.await; // the request's task may die with the listener's panic
    assert_eq!(breaker.state(), State::Closed);
    // Trip it again: a first opening after closing should last the base, 1 s.
    let _ = svc.ready().await.unwrap().call(false).await;
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(
        breaker.open_remaining(),
        Some(Duration::from_secs(1)),
        "the backoff was not reset by the close whose listener panicked"
    );
}

/// Inner service that is never ready.
#[derive(Clone)]
struct NeverReady;
impl Service<bool> for NeverReady {
    type Response = ();
    type Error = Infallible;
    type Future = std::future::Ready<Result<(), Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Pending
    }
    fn call(&mut self, _: bool) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

/// `rejected()` — "how many calls were refused" — counts every poll_ready of an open
/// breaker: one refused call polled three times counts three.
#[tokio::test(start_paused = true)]
async fn rejected_counts_refused_calls_not_polls() {
    let breaker = Breaker::new(quick_open().consecutive_failures(1).build().unwrap());
    let mut svc = flaky(&CircuitBreakerLayer::from_breaker(breaker.clone()));
    let _ = svc.ready().await.unwrap().call(false).await;
    assert_eq!(breaker.state(), State::Open);
    let mut svc = CircuitBreakerLayer::from_breaker(breaker.clone()).layer(NeverReady);
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    for _ in 0..3 {
        assert!(svc.poll_ready(&mut cx).is_ready());
    }
    let err = svc.call(true).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());
    assert_eq!(breaker.rejected(), 1, "one call was refused");
}

/// From a review of the fix above: requiring no run of consecutive failures kept every host
/// that failed once (with no consecutive rule at all, the run is never reset), so the keyed
/// table grew without bound. A run counts only under that rule, and only until it is idle.
#[tokio::test(start_paused = true)]
async fn one_old_failure_does_not_pin_a_keyed_breaker_for_ever() {
    for consecutive in [None, Some(5)] {
        let mut b = Config::builder().time_window(Duration::from_secs(1), Duration::from_secs(1));
        if let Some(n) = consecutive {
            b = b.consecutive_failures(n);
        }
        let breakers: KeyedBreakers<String> =
            KeyedBreakers::with_limits(b.build().unwrap(), 4, Duration::from_secs(1));
        let layer =
            KeyedCircuitBreakerLayer::from_breakers(breakers.clone(), |r: &String| r.clone());
        let svc = layer.layer(service_fn(|_h: String| async {
            Err::<(), &str>("dns failure")
        }));
        for i in 0..100 {
            let _ = svc.clone().oneshot(format!("dead{i}.example")).await;
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        assert!(
            breakers.len() <= 5,
            "{} breakers kept with max_keys 4 (consecutive rule {consecutive:?})",
            breakers.len()
        );
    }
}
