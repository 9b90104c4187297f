//! Regressions from a third bug-hunting review: a service that waited on one runtime could
//! not wait on another; a refund racing admissions gave back one request too many; a parked
//! waiter locked out reject-mode and `max_wait` requests on an idle limit. (The review also
//! found that the waiter behind a parked head waits up to one interval past its slot; charging
//! the parked head from its old slot instead would let two requests pass at once with burst 1,
//! so the README says what holds rather than change it.)

use std::convert::Infallible;
use std::time::Duration;

use palisade_ratelimit::{Quota, RateLimitLayer, RateLimiter};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

/// A current-thread runtime with paused time.
fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// A rate-limited service (1/s) that has waited once on `runtime`: its second call waits 1 s,
/// so its gate made a `Sleep` on that runtime's timer.
fn waited_on(
    runtime: &tokio::runtime::Runtime,
) -> impl Service<(), Response = (), Error = palisade_ratelimit::BoxError, Future: Send> {
    runtime.block_on(async {
        let mut svc = RateLimitLayer::new(Quota::per_second(1).unwrap())
            .layer(service_fn(|()| async { Ok::<_, Infallible>(()) }));
        svc.ready().await.unwrap().call(()).await.unwrap();
        svc.ready().await.unwrap().call(()).await.unwrap();
        svc
    })
}

/// A service that waited once on one runtime keeps that runtime's timer: used on another
/// runtime after the first is gone (a blocking client making a runtime per call, tests
/// sharing a client), its next wait polls a timer whose driver has shut down.
#[test]
fn a_service_that_waited_on_a_dropped_runtime_can_wait_on_another() {
    let rt1 = rt();
    let mut svc = waited_on(&rt1);
    drop(rt1);
    let rt2 = rt();
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt2.block_on(async {
            svc.ready().await.unwrap().call(()).await.unwrap();
        })
    }));
    assert!(out.is_ok(), "waiting on a second runtime panicked");
}

/// The same with the first runtime still alive but idle (a current-thread runtime nobody is
/// inside): the second runtime's wait sleeps on the first one's timer, which nobody drives,
/// and hangs. (The 1-hour bound is paused, virtual time.)
#[test]
fn a_service_that_waited_on_an_idle_runtime_is_woken_on_another() {
    let rt1 = rt();
    let mut svc = waited_on(&rt1);
    let rt2 = rt();
    let woken = rt2.block_on(async {
        tokio::select! {
            biased;
            _ = tokio::time::sleep(Duration::from_secs(3600)) => false,
            _ = svc.ready() => true,
        }
    });
    drop(rt1);
    assert!(
        woken,
        "the wait on the second runtime was never woken (1 h of virtual time)"
    );
}

/// Reject mode under threads: readied services dropped before `call` give their tokens back
/// while other threads check. A refund reads the clock, then lowers the TAT by the part of
/// the token still ahead of *that* reading: when its thread is preempted in between while
/// others are admitted, it gives back time those admissions already stood on, and one more
/// request passes than `B + ⌊L/T⌋` allows.
///
/// The invariant is sound whatever the scheduling: each admission's decision time lies
/// between the clock readings taken just before and after its `check()`, so a run of
/// admissions (in order of the earlier reading) whose readings span `L` can hold at most
/// `B + ⌊L/T⌋`.
#[test]
fn refunds_racing_checks_never_exceed_the_window_bound() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    let interval = Duration::from_micros(20);
    let limiter = RateLimiter::new(Quota::new(1, interval).unwrap());
    let layer = RateLimitLayer::from_limiter(limiter.clone()).reject();
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (limiter, stop) = (limiter.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut log = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let before = Instant::now();
                    if limiter.check().is_ok() {
                        log.push((before, Instant::now()));
                    }
                }
                log
            })
        })
        .collect();
    let refunder = {
        let layer = layer.clone();
        std::thread::spawn(move || {
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            let proto = layer.layer(service_fn(|()| async { Ok::<_, Infallible>(()) }));
            for _ in 0..3_000_000 {
                let mut svc = proto.clone();
                assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
                drop(svc); // a token, if it got one, goes back
            }
        })
    };
    refunder.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut log: Vec<(Instant, Instant)> = callers
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    log.sort();
    let t = interval.as_nanos();
    let mut worst = None;
    for i in 0..log.len() {
        let mut hi = log[i].1;
        for j in i + 1..log.len().min(i + 8) {
            hi = hi.max(log[j].1);
            let span = (hi - log[i].0).as_nanos();
            let count = (j - i + 1) as u128;
            if count > 1 + span / t {
                worst.get_or_insert((count, span));
            }
        }
    }
    assert!(
        worst.is_none(),
        "{} admissions; first violation: {:?} (count, span ns) with B = 1, T = {t} ns",
        log.len(),
        worst
    );
}

/// A parked waiter (its task gave up on `ready()`, the service kept) is only ever admitted
/// by someone's `dispatch`, and only a queued waiter dispatches. A reject-mode layer on the
/// same limit sees `has_waiters()` and refuses without dispatching; so does a wait-mode layer
/// whose `max_wait` is below the estimate. With nothing else queueing, the parked waiter
/// stays at the head for ever and every such request is refused, however idle the limit.
#[tokio::test(start_paused = true)]
async fn a_parked_waiter_does_not_lock_out_a_reject_mode_layer() {
    let limiter = RateLimiter::new(Quota::per_second(1).unwrap().burst(2).unwrap());
    let inner = service_fn(|()| async { Ok::<_, Infallible>(()) });
    let waiting = RateLimitLayer::from_limiter(limiter.clone()).layer(inner);
    let rejecting = RateLimitLayer::from_limiter(limiter.clone())
        .reject()
        .layer(inner);
    limiter.check_n(2).unwrap();
    let mut parked = waiting.clone();
    assert!(
        tokio::time::timeout(Duration::from_millis(1), parked.ready())
            .await
            .is_err()
    );
    assert_eq!(limiter.waiting(), 1);

    // Long after the parked waiter's slot (1 s), the limit is idle: its burst of 2 is back.
    tokio::time::advance(Duration::from_secs(100)).await;
    let mut admitted = 0;
    for _ in 0..10 {
        if rejecting.clone().oneshot(()).await.is_ok() {
            admitted += 1;
        }
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert!(
        admitted > 0,
        "10 reject-mode requests over 10 s on an idle limit, all refused; still queued: {}",
        limiter.waiting()
    );
    drop(parked);
}

#[tokio::test(start_paused = true)]
async fn a_parked_waiter_does_not_lock_out_a_max_wait_layer() {
    let limiter = RateLimiter::new(Quota::per_second(1).unwrap().burst(2).unwrap());
    let inner = service_fn(|()| async { Ok::<_, Infallible>(()) });
    let waiting = RateLimitLayer::from_limiter(limiter.clone()).layer(inner);
    let impatient = RateLimitLayer::from_limiter(limiter.clone())
        .max_wait(Duration::from_millis(500))
        .layer(inner);
    limiter.check_n(2).unwrap();
    let mut parked = waiting.clone();
    assert!(
        tokio::time::timeout(Duration::from_millis(1), parked.ready())
            .await
            .is_err()
    );

    tokio::time::advance(Duration::from_secs(100)).await;
    let mut admitted = 0;
    for _ in 0..10 {
        if impatient.clone().oneshot(()).await.is_ok() {
            admitted += 1;
        }
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert!(
        admitted > 0,
        "all 10 refused on an idle limit; still queued: {}",
        limiter.waiting()
    );
    drop(parked);
}
