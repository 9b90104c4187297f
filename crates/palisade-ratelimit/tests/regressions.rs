//! Regressions found by a bug-hunting review: deferrals that a refund or a quota change undid,
//! a quota change racing admissions, `max_wait` truncated, and the keyed limiter's eviction
//! under concurrency. (The review also found a keyed quota change racing the creation of a key,
//! which could leave that key on the old quota; it is fixed by holding the quota's read lock
//! across the insertion. Its stress test reproduced it only now and then and took minutes, so
//! it is not kept here.)
//!
//! Time-dependent tests run on paused tokio time; the thread tests check invariants, not
//! timings.

use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use palisade_ratelimit::{KeyedRateLimiter, Quota, RateLimitLayer, RateLimiter};
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

#[tokio::test(start_paused = true)]
async fn a_refund_after_defer_until_does_not_bring_the_deferral_forward() {
    let t0 = Instant::now();
    let limiter = RateLimiter::new(Quota::per_second(1).unwrap());
    let mut held = RateLimitLayer::from_limiter(limiter.clone())
        .layer(service_fn(|()| async { Ok::<_, Infallible>(()) }));
    held.ready().await.unwrap();
    let until = t0 + Duration::from_secs(60);
    limiter.defer_until(until);
    assert_eq!(limiter.next_conforming(), until);
    // The readied service is dropped: its token comes back, but not before the deferral.
    drop(held);
    assert_eq!(limiter.next_conforming(), until);
    assert!(limiter.check().is_err());
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(limiter.check().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_quota_change_does_not_cancel_defer_until() {
    let t0 = Instant::now();
    let q = Quota::per_second(10).unwrap();
    let limiter = RateLimiter::new(q);
    let until = t0 + Duration::from_secs(60);
    limiter.defer_until(until);
    // The same quota (a configuration reload that changed nothing), then another one.
    limiter.set_quota(q);
    assert_eq!(limiter.next_conforming(), until);
    limiter.set_quota(Quota::per_second(1000).unwrap().burst(50).unwrap());
    assert_eq!(limiter.next_conforming(), until);
    assert!(limiter.check().is_err());
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(limiter.check().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_huge_max_wait_does_not_refuse_short_waits() {
    let layer =
        RateLimitLayer::new(Quota::per_second(10).unwrap()).max_wait(Duration::from_secs(1 << 60));
    let svc = layer.layer(service_fn(|()| async { Ok::<_, Infallible>(()) }));
    svc.clone().oneshot(()).await.unwrap();
    // The next turn is 100 ms away: well within the limit.
    let started = Instant::now();
    svc.clone().oneshot(()).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(100));
}

/// Quota changes back and forth between two quotas that both leave the limiter fully spent
/// (each refills at most one cell per second), while another thread checks: nothing may be
/// admitted beyond what time refills. A check that mixed one quota's tolerance with the state
/// rescaled for the other admitted hundreds.
#[test]
fn quota_changes_racing_checks_admit_nothing_beyond_the_refill() {
    let q1 = Quota::per_second(1).unwrap().burst(1000).unwrap();
    let q2 = Quota::new(1, Duration::from_secs(2))
        .unwrap()
        .burst(1000)
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let limiter = RateLimiter::new(q1);
    limiter.check_n(1000).unwrap();
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let admitted = Arc::new(AtomicU64::new(0));
    let checker = std::thread::spawn({
        let (limiter, stop, admitted) = (limiter.clone(), stop.clone(), admitted.clone());
        let handle = runtime.handle().clone();
        move || {
            let _entered = handle.enter();
            while !stop.load(Ordering::Relaxed) {
                if limiter.check().is_ok() {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    for _ in 0..200_000 {
        limiter.set_quota(q2);
        limiter.set_quota(q1);
    }
    stop.store(true, Ordering::Relaxed);
    checker.join().unwrap();
    // Under either quota at most one cell comes back per second.
    let allowance = started.elapsed().as_secs() + 1;
    let admitted = admitted.load(Ordering::Relaxed);
    assert!(
        admitted <= allowance,
        "{admitted} admitted by a spent limiter; time refilled {allowance}"
    );
}

/// Eviction with a tiny `max_keys` while several threads insert fresh keys: no panic.
#[test]
fn keyed_eviction_under_concurrent_inserts_does_not_panic() {
    for max_keys in [1usize, 2, 3] {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let limiter = KeyedRateLimiter::with_max_keys(
            Quota::per_hour(1).unwrap(),
            NonZeroUsize::new(max_keys).unwrap(),
        );
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let limiter = limiter.clone();
                let handle = runtime.handle().clone();
                std::thread::spawn(move || {
                    let _entered = handle.enter();
                    for k in 0..50_000u64 {
                        let _ = limiter.check_key(&(t << 32 | k));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join()
                .unwrap_or_else(|_| panic!("a thread panicked with max_keys = {max_keys}"));
        }
        assert!(limiter.len() <= max_keys + 4, "{} keys", limiter.len());
    }
}

// ===== second review (with the clock change) =====

/// The waiters behind the head sleep until `head's slot + position × interval`: with a long
/// interval that product overflowed (a panic in debug builds, inside `poll_ready`).
#[tokio::test(start_paused = true)]
async fn deep_waiters_on_a_long_interval_do_not_overflow() {
    use std::task::{Context, Poll};
    use tower::Service;
    let quota = Quota::new(1, Duration::from_nanos(1 << 62)).unwrap();
    let svc = RateLimitLayer::new(quota).layer(service_fn(|()| async { Ok::<_, Infallible>(()) }));
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut first = svc.clone();
    assert!(matches!(first.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let mut waiters: Vec<_> = (0..5).map(|_| svc.clone()).collect();
    for (i, w) in waiters.iter_mut().enumerate() {
        assert!(w.poll_ready(&mut cx).is_pending(), "waiter {i} queued");
    }
}

/// A deadline from before the limiter existed was taken as its creation instant, taking the
/// burst away for up to a whole tolerance.
#[tokio::test(start_paused = true)]
async fn defer_until_long_before_creation_changes_nothing() {
    let long_ago = Instant::now();
    tokio::time::advance(Duration::from_secs(2 * 3600)).await;
    let limiter = RateLimiter::new(
        Quota::new(1, Duration::from_secs(3600))
            .unwrap()
            .burst(2)
            .unwrap(),
    );
    limiter.defer_until(long_ago);
    assert_eq!(limiter.remaining_burst(), 2);
    // Half an interval before creation: one request held, earned back half an interval later.
    let limiter = RateLimiter::new(
        Quota::new(1, Duration::from_secs(3600))
            .unwrap()
            .burst(2)
            .unwrap(),
    );
    limiter.defer_until(Instant::now() - Duration::from_secs(1800));
    assert_eq!(limiter.remaining_burst(), 1);
    tokio::time::advance(Duration::from_secs(1800)).await;
    assert_eq!(limiter.remaining_burst(), 2);
}
