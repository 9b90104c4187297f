//! The breaker as a tower service, under paused tokio time.

mod common;

use common::{flaky, quick_open, Gate, Svc};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_breaker::classify::classify_fn;
use palisade_breaker::{
    BoxError, Breaker, CircuitBreakerLayer, CircuitOpen, Config, Outcome, State, Transition,
};
use tokio::sync::Notify;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

async fn send(svc: &mut Svc, ok: bool) -> Result<(), BoxError> {
    svc.ready().await?.call(ok).await
}

fn is_open(e: &BoxError) -> bool {
    e.is::<CircuitOpen>()
}

#[tokio::test(start_paused = true)]
async fn count_window_slides_after_a_long_healthy_stretch() {
    let layer = CircuitBreakerLayer::new(
        quick_open()
            .count_window(100)
            .minimum_calls(20)
            .failure_rate(50)
            .build()
            .unwrap(),
    );
    let breaker = layer.breaker().clone();
    let mut svc = flaky(&layer);
    for _ in 0..10_000 {
        send(&mut svc, true).await.unwrap();
    }
    let mut failures = 0;
    while breaker.state() == State::Closed {
        assert!(send(&mut svc, false).await.is_err());
        failures += 1;
        assert!(
            failures <= 100,
            "still closed after a whole window of failures"
        );
    }
    // 50 % of the last 100 calls.
    assert_eq!(failures, 50);
}

#[tokio::test(start_paused = true)]
async fn time_window_slides_after_a_long_healthy_stretch() {
    let span = Duration::from_secs(10);
    let layer = CircuitBreakerLayer::new(
        quick_open()
            .time_window(span, Duration::from_secs(1))
            .minimum_calls(20)
            .failure_rate(50)
            .build()
            .unwrap(),
    );
    let breaker = layer.breaker().clone();
    let mut svc = flaky(&layer);
    // 10,000 successes, one per millisecond.
    for _ in 0..10_000 {
        send(&mut svc, true).await.unwrap();
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    let outage = tokio::time::Instant::now();
    while breaker.state() == State::Closed {
        assert!(send(&mut svc, false).await.is_err());
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(
            outage.elapsed() <= span,
            "still closed a whole span into the outage"
        );
    }
    assert!(outage.elapsed() < span);
}

async fn trip(breaker: &Breaker) {
    let layer = CircuitBreakerLayer::from_breaker(breaker.clone());
    let mut svc = flaky(&layer);
    while breaker.state() == State::Closed {
        let _ = send(&mut svc, false).await;
    }
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_exactly_the_probes_through() {
    let config = quick_open()
        .consecutive_failures(1)
        .half_open_probes(3)
        .close_after(3)
        .build()
        .unwrap();
    let breaker = Breaker::new(config);
    trip(&breaker).await;
    tokio::time::advance(Duration::from_secs(1)).await;

    let gate = Gate {
        calls: Arc::default(),
        release: Arc::new(Notify::new()),
    };
    let svc = CircuitBreakerLayer::from_breaker(breaker.clone()).layer(gate.clone());
    let refused = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let svc = svc.clone();
        let refused = refused.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = svc.oneshot(true).await {
                assert!(e.is::<CircuitOpen>());
                refused.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Let every caller reach the breaker.
    tokio::task::yield_now().await;
    while refused.load(Ordering::SeqCst) + gate.calls.load(Ordering::SeqCst) < 100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(gate.calls.load(Ordering::SeqCst), 3);
    assert_eq!(refused.load(Ordering::SeqCst), 97);
    assert_eq!(breaker.state(), State::HalfOpen);
    gate.release.notify_waiters();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_frees_its_slot_without_counting() {
    let breaker = Breaker::new(quick_open().consecutive_failures(1).build().unwrap());
    trip(&breaker).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let gate = Gate {
        calls: Arc::default(),
        release: Arc::new(Notify::new()),
    };
    let layer = CircuitBreakerLayer::from_breaker(breaker.clone());
    // The probe's future is dropped while the call is in flight.
    let mut probe = tokio_test::task::spawn(layer.layer(gate.clone()).oneshot(true));
    assert!(probe.poll().is_pending());
    assert_eq!(gate.calls.load(Ordering::SeqCst), 1);
    let err = layer.layer(gate.clone()).oneshot(true).await.unwrap_err();
    assert!(is_open(&err), "a second probe got through");
    drop(probe);
    assert_eq!(breaker.state(), State::HalfOpen);
    // The slot is free again: the next caller probes, and closes it.
    let mut svc = flaky(&layer);
    send(&mut svc, true).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);

    // Also a readied service dropped before `call`.
    trip(&breaker).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    let mut readied = layer.layer(gate.clone());
    readied.ready().await.unwrap();
    drop(readied);
    send(&mut svc, true).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_hung_probe_cannot_wedge_half_open() {
    let breaker = Breaker::new(
        quick_open()
            .consecutive_failures(1)
            .max_half_open_wait(Duration::from_secs(5))
            .build()
            .unwrap(),
    );
    trip(&breaker).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let gate = Gate {
        calls: Arc::default(),
        release: Arc::new(Notify::new()),
    };
    let layer = CircuitBreakerLayer::from_breaker(breaker.clone());
    let hung = tokio::spawn(layer.layer(gate.clone()).oneshot(true));
    tokio::task::yield_now().await;
    assert_eq!(gate.calls.load(Ordering::SeqCst), 1);
    let mut svc = flaky(&layer);
    assert!(is_open(&send(&mut svc, true).await.unwrap_err()));
    // Past max_half_open_wait the next caller reopens it, for the next (doubled) duration.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(is_open(&send(&mut svc, true).await.unwrap_err()));
    assert_eq!(breaker.state(), State::Open);
    tokio::time::advance(Duration::from_secs(2)).await;
    send(&mut svc, true).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
    // The hung probe finally answers: it belongs to an old generation and changes nothing.
    let generation = breaker.generation();
    gate.release.notify_waiters();
    hung.await.unwrap().unwrap();
    assert_eq!(
        (breaker.state(), breaker.generation()),
        (State::Closed, generation)
    );
}

#[tokio::test(start_paused = true)]
async fn results_from_before_a_transition_change_nothing() {
    let breaker = Breaker::new(quick_open().consecutive_failures(1).build().unwrap());
    let layer = CircuitBreakerLayer::from_breaker(breaker.clone());
    let release = Arc::new(Notify::new());
    let slow_failure = {
        let release = release.clone();
        layer.layer(service_fn(move |_: bool| {
            let release = release.clone();
            async move {
                release.notified().await;
                Err::<(), _>("late failure")
            }
        }))
    };
    // Admitted while closed...
    let late = tokio::spawn(slow_failure.oneshot(true));
    tokio::task::yield_now().await;
    // ...then the breaker opens, goes half-open and closes again.
    trip(&breaker).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut svc = flaky(&layer);
    send(&mut svc, true).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
    // The failure of the call admitted two generations ago does not reopen it.
    release.notify_waiters();
    assert!(late.await.unwrap().is_err());
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.counts().failures, 0);

    // And a success from before an opening does not close it.
    let release = Arc::new(Notify::new());
    let slow_success = {
        let release = release.clone();
        layer.layer(service_fn(move |_: bool| {
            let release = release.clone();
            async move {
                release.notified().await;
                Ok::<(), &str>(())
            }
        }))
    };
    let late = tokio::spawn(slow_success.oneshot(true));
    tokio::task::yield_now().await;
    trip(&breaker).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    release.notify_waiters();
    late.await.unwrap().unwrap();
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn cancelled_calls_count_for_neither() {
    let layer = CircuitBreakerLayer::new(quick_open().consecutive_failures(1).build().unwrap());
    let breaker = layer.breaker().clone();
    let svc = layer.layer(service_fn(|_: bool| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Err::<(), _>("would fail")
    }));
    for _ in 0..50 {
        let mut call = tokio_test::task::spawn(svc.clone().oneshot(true));
        assert!(call.poll().is_pending());
        drop(call);
    }
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.counts().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_count_for_neither() {
    let classifier = classify_fn(|r: &Result<u16, &str>| match r {
        Ok(404) => Outcome::Ignore,
        Ok(s) if *s >= 500 => Outcome::FAILURE,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::FAILURE,
    });
    let layer = CircuitBreakerLayer::new(quick_open().consecutive_failures(3).build().unwrap())
        .with_classifier(classifier);
    let breaker = layer.breaker().clone();
    let mut svc = layer.layer(service_fn(|s: u16| async move { Ok::<_, &str>(s) }));
    for s in [500, 404, 500, 404, 200, 500, 500] {
        svc.ready().await.unwrap().call(s).await.unwrap();
    }
    // 404s neither broke nor continued the run of failures; the 200 reset it.
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.counts().calls, 5);
    svc.ready().await.unwrap().call(503).await.unwrap();
    assert_eq!(breaker.state(), State::Open);
}

/// Counts how often it is polled for readiness.
#[derive(Clone, Default)]
struct PollCounter {
    polls: Arc<AtomicUsize>,
}

impl Service<bool> for PollCounter {
    type Response = ();
    type Error = Infallible;
    type Future = std::future::Ready<Result<(), Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: bool) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_never_polls_the_inner_service() {
    let breaker = Breaker::new(quick_open().consecutive_failures(1).build().unwrap());
    trip(&breaker).await;
    let counter = PollCounter::default();
    let stack = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::from_breaker(breaker.clone()))
        .concurrency_limit(1)
        .service(counter.clone());
    for _ in 0..10 {
        // Ready at once; refused without a poll of the concurrency limit or the probe.
        let mut svc = stack.clone();
        let mut ready = tokio_test::task::spawn(svc.ready());
        assert!(ready.poll().is_ready());
        drop(ready);
        let err = svc.call(true).await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<CircuitOpen>().unwrap().retry_after(),
            Some(Duration::from_secs(1))
        );
    }
    assert_eq!(counter.polls.load(Ordering::SeqCst), 0);
    // Nor took the concurrency permit: once reset, a request goes straight through.
    breaker.reset();
    stack.clone().oneshot(true).await.unwrap();
    assert_eq!(counter.polls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn open_duration_backs_off_and_resets_on_close() {
    let breaker = Breaker::new(quick_open().consecutive_failures(1).build().unwrap());
    let layer = CircuitBreakerLayer::from_breaker(breaker.clone());
    let mut svc = flaky(&layer);
    trip(&breaker).await;
    for expected in [1u64, 2, 4, 8, 8] {
        let err = send(&mut svc, true).await.unwrap_err();
        let retry = err.downcast_ref::<CircuitOpen>().unwrap().retry_after();
        assert_eq!(retry, Some(Duration::from_secs(expected)));
        tokio::time::advance(Duration::from_secs(expected)).await;
        // The probe fails: open again, for longer.
        let _ = send(&mut svc, false).await;
    }
    tokio::time::advance(Duration::from_secs(8)).await;
    send(&mut svc, true).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
    trip(&breaker).await;
    let err = send(&mut svc, true).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<CircuitOpen>().unwrap().retry_after(),
        Some(Duration::from_secs(1))
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_from_the_upstream_is_a_floor() {
    let classifier = classify_fn(|r: &Result<u64, Infallible>| match r {
        Ok(0) => Outcome::Success,
        Ok(secs) => Outcome::Failure {
            retry_after: Some(Duration::from_secs(*secs)),
        },
        Err(_) => Outcome::FAILURE,
    });
    let config = Config::builder()
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(1), 2, Duration::from_secs(60))
        .jitter(0)
        .build()
        .unwrap();
    let layer = CircuitBreakerLayer::new(config).with_classifier(classifier);
    let breaker = layer.breaker().clone();
    let mut svc = layer.layer(service_fn(|s: u64| async move { Ok::<_, Infallible>(s) }));
    let retry = |e: BoxError| e.downcast_ref::<CircuitOpen>().unwrap().retry_after();

    // The upstream says 30 s: open 30 s, not the base 1 s.
    svc.ready().await.unwrap().call(30).await.unwrap();
    let err = svc.ready().await.unwrap().call(0).await.unwrap_err();
    assert_eq!(retry(err), Some(Duration::from_secs(30)));

    // An absurd Retry-After is held to the open cap.
    breaker.reset();
    svc.ready()
        .await
        .unwrap()
        .call(u64::MAX / 1_000_000_000)
        .await
        .unwrap();
    let err = svc.ready().await.unwrap().call(0).await.unwrap_err();
    assert_eq!(retry(err), Some(Duration::from_secs(60)));

    // An old hint does not lengthen a later, unrelated opening.
    breaker.reset();
    let quiet = Config::builder()
        .consecutive_failures(2)
        .open_duration(Duration::from_secs(1), 2, Duration::from_secs(600))
        .jitter(0)
        .build()
        .unwrap();
    let layer = CircuitBreakerLayer::new(quiet).with_classifier(classifier);
    let breaker = layer.breaker().clone();
    let mut svc = layer.layer(service_fn(|s: u64| async move { Ok::<_, Infallible>(s) }));
    svc.ready().await.unwrap().call(300).await.unwrap(); // one failure: not open
    svc.ready().await.unwrap().call(0).await.unwrap();
    tokio::time::advance(Duration::from_secs(3600)).await;
    svc.ready().await.unwrap().call(5).await.unwrap();
    svc.ready().await.unwrap().call(5).await.unwrap();
    assert_eq!(breaker.state(), State::Open);
    let err = svc.ready().await.unwrap().call(0).await.unwrap_err();
    assert_eq!(retry(err), Some(Duration::from_secs(5)));
}

#[tokio::test(start_paused = true)]
async fn the_handle_forces_and_resets_and_reports() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let breaker = {
        let seen = seen.clone();
        Breaker::with_listener(
            quick_open().consecutive_failures(2).build().unwrap(),
            move |t: &Transition| seen.lock().unwrap().push((t.from, t.to)),
        )
    };
    let layer = CircuitBreakerLayer::from_breaker(breaker.clone());
    let mut svc = flaky(&layer);
    breaker.force_open();
    assert!(is_open(&send(&mut svc, true).await.unwrap_err()));
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(
        is_open(&send(&mut svc, true).await.unwrap_err()),
        "forced open must not expire"
    );
    assert_eq!(breaker.time_in_state(), Duration::from_secs(3600));
    breaker.force_closed();
    for _ in 0..10 {
        let _ = send(&mut svc, false).await;
    }
    assert_eq!(breaker.state(), State::Disabled);
    assert_eq!(breaker.counts().calls, 0);
    breaker.reset();
    let _ = send(&mut svc, false).await;
    assert_eq!(breaker.counts().failures, 1);
    let _ = send(&mut svc, false).await;
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(breaker.rejected(), 2);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (State::Closed, State::ForcedOpen),
            (State::ForcedOpen, State::Disabled),
            (State::Disabled, State::Closed),
            (State::Closed, State::Open),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn services_from_two_layer_calls_and_clones_share_one_breaker() {
    let layer = CircuitBreakerLayer::new(quick_open().consecutive_failures(2).build().unwrap());
    let mut a = flaky(&layer);
    let mut b = flaky(&layer);
    let _ = send(&mut a.clone(), false).await;
    let _ = send(&mut b.clone(), false).await;
    assert!(is_open(&send(&mut a, true).await.unwrap_err()));
    assert!(is_open(&send(&mut b, true).await.unwrap_err()));
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_it() {
    let layer = CircuitBreakerLayer::new(
        quick_open()
            .no_failure_rate()
            .slow_calls(Duration::from_millis(500), 50)
            .minimum_calls(4)
            .count_window(10)
            .build()
            .unwrap(),
    );
    let breaker = layer.breaker().clone();
    let mut svc = layer.layer(service_fn(|ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, Infallible>(())
    }));
    for ms in [10, 600, 10] {
        svc.ready().await.unwrap().call(ms).await.unwrap();
    }
    assert_eq!(breaker.state(), State::Closed);
    svc.ready().await.unwrap().call(700).await.unwrap();
    assert_eq!(breaker.state(), State::Open);
    // The window starts over only on closing: it still shows what tripped it.
    assert_eq!(breaker.counts().slow, 2);
}

/// A classifier that knows the call's own time (`Classify::elapsed`) overrides the breaker's
/// clock for the slow-call rule: a client whose layers below the breaker waited (for a
/// connection, say) reports the exchange alone. The response here carries its own time.
#[tokio::test(start_paused = true)]
async fn a_classifier_can_report_the_calls_own_time() {
    #[derive(Clone)]
    struct OwnTime;
    impl palisade_breaker::classify::Classify<Duration, Infallible> for OwnTime {
        fn classify(&self, _: &Result<Duration, Infallible>) -> Outcome {
            Outcome::Success
        }
        fn elapsed(&self, result: &Result<Duration, Infallible>) -> Option<Duration> {
            result.as_ref().ok().copied()
        }
    }
    let config = quick_open()
        .no_failure_rate()
        .slow_calls(Duration::from_millis(500), 50)
        .minimum_calls(4)
        .count_window(10)
        .build()
        .unwrap();
    assert_eq!(config.slow_calls(), Some((Duration::from_millis(500), 50)));
    let layer = CircuitBreakerLayer::new(config).with_classifier(OwnTime);
    let breaker = layer.breaker().clone();
    // Each call waits 700 ms (as if queued below the breaker) but reports 10 ms of its own.
    let mut svc = layer.layer(service_fn(|own: u64| async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        Ok::<_, Infallible>(Duration::from_millis(own))
    }));
    for _ in 0..4 {
        svc.ready().await.unwrap().call(10).await.unwrap();
    }
    assert_eq!(breaker.counts().slow, 0, "{:?}", breaker.counts());
    assert_eq!(breaker.state(), State::Closed);
    // Reported slow: counted slow, whatever the breaker's clock says.
    for _ in 0..4 {
        svc.ready().await.unwrap().call(900).await.unwrap();
    }
    assert_eq!(breaker.state(), State::Open, "{:?}", breaker.counts());
}

/// A probe of an earlier half-open that succeeds late does not close the current one.
#[tokio::test(start_paused = true)]
async fn a_stale_probe_success_does_not_close_a_later_half_open() {
    let breaker = Breaker::new(
        quick_open()
            .consecutive_failures(1)
            .half_open_probes(2)
            .close_after(1)
            .build()
            .unwrap(),
    );
    trip(&breaker).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let layer = CircuitBreakerLayer::from_breaker(breaker.clone());
    let release = Arc::new(Notify::new());
    let slow_ok = {
        let release = release.clone();
        layer.layer(service_fn(move |_: bool| {
            let release = release.clone();
            async move {
                release.notified().await;
                Ok::<(), &str>(())
            }
        }))
    };
    // Probe B (slow, will succeed) and probe A (fails now) of the same half-open.
    let b = tokio::spawn(slow_ok.clone().oneshot(true));
    tokio::task::yield_now().await;
    let mut svc = flaky(&layer);
    let _ = send(&mut svc, false).await;
    assert_eq!(breaker.state(), State::Open);
    // Next half-open: a new probe C holds its slot.
    tokio::time::advance(Duration::from_secs(2)).await;
    let c = tokio::spawn(slow_ok.oneshot(true));
    tokio::task::yield_now().await;
    assert_eq!(breaker.state(), State::HalfOpen);
    let generation = breaker.generation();
    // B's late success belongs to the old half-open: nothing closes.
    release.notify_one();
    b.await.unwrap().unwrap();
    assert_eq!(
        (breaker.state(), breaker.generation()),
        (State::HalfOpen, generation)
    );
    release.notify_one();
    c.await.unwrap().unwrap();
    assert_eq!(breaker.state(), State::Closed);
}

/// A refusal kept from an earlier `poll_ready` is decided again: the breaker may have
/// recovered since.
#[tokio::test(start_paused = true)]
async fn a_stale_refusal_is_decided_again() {
    let breaker = Breaker::new(quick_open().consecutive_failures(1).build().unwrap());
    trip(&breaker).await;
    let mut svc = flaky(&CircuitBreakerLayer::from_breaker(breaker.clone()));
    svc.ready().await.unwrap(); // refused, kept
    tokio::time::advance(Duration::from_secs(10)).await;
    // Polled again after the open duration: it is a probe now, and succeeds.
    svc.ready().await.unwrap().call(true).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
}
