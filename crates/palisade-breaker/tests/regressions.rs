//! Regressions found by a bug-hunting review: a probe ticket kept across polls, the outcomes
//! that opened the breaker seen again after it closed, the keyed table's bound, the rate rules
//! read on a success, and a huge `Retry-After`. Each failed on the code before the fix.

mod common;

use common::{flaky, noop_waker, quick_open, Gate};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_breaker::classify::classify_fn;
use palisade_breaker::{
    Breaker, CircuitBreakerLayer, Config, KeyedBreakers, KeyedCircuitBreakerLayer, Outcome, State,
    Transition,
};
use tokio::sync::Notify;
use tower::{service_fn, Layer, Service, ServiceExt};

async fn trip(breaker: &Breaker) {
    let mut svc = flaky(&CircuitBreakerLayer::from_breaker(breaker.clone()));
    while breaker.state() == State::Closed {
        let _ = svc.ready().await.unwrap().call(false).await;
    }
}

/// Inner service: not ready until `ready` is set; counts calls.
#[derive(Clone, Default)]
struct Toggle {
    ready: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

impl Service<bool> for Toggle {
    type Response = ();
    type Error = Infallible;
    type Future = std::future::Ready<Result<(), Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.ready.load(Ordering::SeqCst) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
    fn call(&mut self, _: bool) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(()))
    }
}

fn poll_ready_once<S: Service<bool>>(svc: &mut S) -> Poll<Result<(), S::Error>> {
    svc.poll_ready(&mut Context::from_waker(&noop_waker()))
}

/// BUG 1a: a probe ticket kept across a re-poll is never re-decided: after force_open, the
/// request still reaches the inner service.
#[tokio::test(start_paused = true)]
async fn a_probe_ticket_kept_across_polls_does_not_pass_while_forced_open() {
    let breaker = Breaker::new(quick_open().consecutive_failures(1).build().unwrap());
    trip(&breaker).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let inner = Toggle::default();
    let mut svc = CircuitBreakerLayer::from_breaker(breaker.clone()).layer(inner.clone());
    assert!(poll_ready_once(&mut svc).is_pending()); // took the probe slot; inner not ready
    breaker.force_open();
    assert_eq!(breaker.state(), State::ForcedOpen);
    inner.ready.store(true, Ordering::SeqCst);
    assert!(poll_ready_once(&mut svc).is_ready());
    let res = svc.call(true).await;
    assert_eq!(
        inner.calls.load(Ordering::SeqCst),
        0,
        "a request reached the inner service while forced open (result: {res:?})"
    );
}

/// BUG 1b: the same kept probe ticket over-admits a later half-open generation.
#[tokio::test(start_paused = true)]
async fn a_probe_ticket_from_an_ended_half_open_does_not_count_in_the_next() {
    let breaker = Breaker::new(
        quick_open()
            .consecutive_failures(1)
            .half_open_probes(1)
            .max_half_open_wait(Duration::from_secs(5))
            .build()
            .unwrap(),
    );
    trip(&breaker).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let layer = CircuitBreakerLayer::from_breaker(breaker.clone());
    let a_inner = Toggle::default();
    let mut a = layer.layer(a_inner.clone());
    assert!(poll_ready_once(&mut a).is_pending()); // A holds the only slot of this half-open
                                                   // A "hangs" past max_half_open_wait: the next caller reopens it (for 2 s).
    tokio::time::advance(Duration::from_secs(5)).await;
    let mut other = flaky(&layer);
    let _ = other.ready().await.unwrap().call(true).await;
    assert_eq!(breaker.state(), State::Open);
    tokio::time::advance(Duration::from_secs(2)).await;
    // The new half-open: C takes its single slot and hangs in the inner service.
    let hang = Gate {
        calls: Arc::default(),
        release: Arc::new(Notify::new()),
    };
    let c = tokio::spawn(layer.layer(hang.clone()).oneshot(true));
    tokio::task::yield_now().await;
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(hang.calls.load(Ordering::SeqCst), 1);
    // A's inner becomes ready; A is polled again and calls.
    a_inner.ready.store(true, Ordering::SeqCst);
    let polled = poll_ready_once(&mut a);
    assert!(polled.is_ready());
    let res = a.call(true).await;
    let in_flight = hang.calls.load(Ordering::SeqCst) + a_inner.calls.load(Ordering::SeqCst);
    hang.release.notify_waiters();
    let _ = c.await;
    assert_eq!(
        in_flight, 1,
        "{in_flight} requests reached the inner service in a half-open with 1 probe slot (A: {res:?})"
    );
}

/// Sends one request through `breaker` synchronously (the service_fn future is ready at once).
fn send_now(breaker: &Breaker, ok: bool) {
    let mut svc = flaky(&CircuitBreakerLayer::from_breaker(breaker.clone()));
    let mut fut = std::pin::pin!(async move {
        let _ = svc.ready().await.unwrap().call(ok).await;
    });
    assert!(fut
        .as_mut()
        .poll(&mut Context::from_waker(&noop_waker()))
        .is_ready());
}

use std::future::Future;

/// A breaker whose listener, right as half-open closes, sends one failing call: standing in
/// for a call of another thread that lands just after the close (before `close()` has reset
/// the window and the consecutive count).
fn breaker_with_call_right_after_close(config: Config) -> Breaker {
    let cell: Arc<OnceLock<Breaker>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let breaker = {
        let cell = cell.clone();
        Breaker::with_listener(config, move |t: &Transition| {
            if t.from == State::HalfOpen
                && t.to == State::Closed
                && !done.swap(true, Ordering::SeqCst)
            {
                send_now(cell.get().unwrap(), false);
            }
        })
    };
    cell.set(breaker.clone()).ok();
    breaker
}

/// BUG 2: outcomes of the previous closed generation (consecutive count, window) are still in
/// force for the first calls of the new one: one failure right after closing reopens it.
#[tokio::test(start_paused = true)]
async fn one_failure_right_after_closing_does_not_reopen_through_the_old_run_of_failures() {
    let breaker = breaker_with_call_right_after_close(
        quick_open()
            .no_failure_rate()
            .consecutive_failures(3)
            .build()
            .unwrap(),
    );
    trip(&breaker).await; // 3 failures in a row
    tokio::time::advance(Duration::from_secs(1)).await;
    send_now(&breaker, true); // the probe succeeds: closes; the listener then sends 1 failure
    assert_eq!(
        breaker.state(),
        State::Closed,
        "1 failure in the new closed generation reopened it (consecutive rule of 3)"
    );
}

#[tokio::test(start_paused = true)]
async fn one_failure_right_after_closing_does_not_reopen_through_the_old_window() {
    let breaker = breaker_with_call_right_after_close(
        quick_open()
            .count_window(10)
            .minimum_calls(4)
            .failure_rate(50)
            .build()
            .unwrap(),
    );
    trip(&breaker).await; // 4 failures of 4
    tokio::time::advance(Duration::from_secs(1)).await;
    send_now(&breaker, true);
    assert_eq!(
        breaker.state(),
        State::Closed,
        "1 call in the new window (minimum 4) reopened it; counts now {:?}",
        breaker.counts()
    );
}

/// BUG 3: once the bound has been exceeded (by failing hosts), clean breakers keep growing the
/// table: each scan forgets only one clean breaker.
#[tokio::test(start_paused = true)]
async fn a_keyed_table_of_clean_breakers_stays_within_max_keys() {
    let config = Config::builder()
        .count_window(20)
        .minimum_calls(10)
        .failure_rate(50)
        .build()
        .unwrap();
    let breakers: KeyedBreakers<u32> =
        KeyedBreakers::with_limits(config, 128, Duration::from_secs(300));
    let layer = KeyedCircuitBreakerLayer::from_breakers(breakers.clone(), |r: &(u32, u16)| r.0)
        .with_classifier(classify_fn(|r: &Result<u16, Infallible>| match r {
            Ok(s) if *s >= 500 => Outcome::FAILURE,
            _ => Outcome::Success,
        }));
    let mut svc = layer.layer(service_fn(|(_, s): (u32, u16)| async move {
        Ok::<_, Infallible>(s)
    }));
    // 128 hosts with one failure each: the bound is reached by failing hosts.
    for k in 0..128 {
        svc.ready().await.unwrap().call((k, 500)).await.unwrap();
    }
    svc.ready().await.unwrap().call((1000, 200)).await.unwrap();
    assert_eq!(breakers.len(), 129); // allowed: every kept breaker held a failure
                                     // They all recover: 20 successes each push the failure out of their windows.
    for k in 0..128 {
        for _ in 0..20 {
            svc.ready().await.unwrap().call((k, 200)).await.unwrap();
        }
        assert_eq!(breakers.peek(&k).unwrap().counts().failures, 0);
    }
    // 1000 new clean hosts (within `idle`): every kept breaker is clean now.
    for k in 2000..3000 {
        svc.ready().await.unwrap().call((k, 200)).await.unwrap();
    }
    assert!(
        breakers.len() <= 129,
        "{} breakers kept with max_keys 128, all of them clean",
        breakers.len()
    );
}

/// BUG 4: the rate rule is read only when a failure (or slow call) is recorded: the success
/// that brings the window to minimum_calls does not open it at a 90 % failure rate.
#[tokio::test(start_paused = true)]
async fn the_success_that_reaches_minimum_calls_reads_the_failure_rate() {
    let layer = CircuitBreakerLayer::new(
        quick_open()
            .count_window(100)
            .minimum_calls(10)
            .failure_rate(50)
            .build()
            .unwrap(),
    );
    let breaker = layer.breaker().clone();
    let mut svc = flaky(&layer);
    for _ in 0..9 {
        let _ = svc.ready().await.unwrap().call(false).await;
    }
    let _ = svc.ready().await.unwrap().call(true).await;
    assert_eq!(breaker.counts().calls, 10);
    assert_eq!(breaker.counts().failures, 9);
    assert_eq!(
        breaker.state(),
        State::Open,
        "9 of 10 failed, minimum 10, rule 50 %"
    );
}

/// BUG 5 (http): a Retry-After beyond u64 seconds is dropped instead of saturating.
#[cfg(feature = "http")]
#[test]
fn a_huge_retry_after_is_held_to_the_cap() {
    let res = http::Response::builder()
        .status(503)
        .header("retry-after", "99999999999999999999")
        .body(())
        .unwrap();
    assert!(
        palisade_breaker::http::retry_after(&res).is_some(),
        "an absurd Retry-After should hold it open for the cap, not be ignored"
    );
}

/// Found by a review of the client: `Retry-After` as an HTTP-date (RFC 9110) was ignored, so a
/// 429 with a date was retried at once and held nothing.
#[cfg(feature = "http")]
#[test]
fn retry_after_as_an_http_date_is_read() {
    let with = |v: &str| {
        let res = http::Response::builder()
            .status(429)
            .header("retry-after", v)
            .body(())
            .unwrap();
        palisade_breaker::http::retry_after(&res)
    };
    let far = with("Fri, 31 Dec 2100 23:59:59 GMT").expect("a date is read");
    assert!(far > Duration::from_secs(50 * 365 * 86_400), "{far:?}");
    assert_eq!(with("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
    assert_eq!(with("soon"), None);
    assert_eq!(with("-5"), None);
    assert_eq!(with("120"), Some(Duration::from_secs(120)));
}
