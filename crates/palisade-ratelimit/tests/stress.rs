//! Many threads on one limiter, with the GCRA bound checked.
//!
//! These run on the real clock (tokio's clock cannot be paused across threads), so they assert
//! only what holds however the threads are scheduled: the admitted count never exceeds
//! `burst + elapsed / interval`, counted from the limiter's creation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use palisade_ratelimit::{Clock, Quota, RateLimitLayer, RateLimiter};
use tower::{service_fn, Layer, Service, ServiceExt};

#[test]
fn threads_hammering_check_never_exceed_the_bound() {
    hammer_check(Clock::tokio(), 0);
}

/// The same on the CPU's counter. The bound is measured on the OS clock, which the counter's
/// calibration can differ from by parts per million: one admission of slack covers that (a
/// fault in the algorithm would overshoot by far more).
#[test]
fn threads_hammering_check_on_the_tsc_clock_never_exceed_the_bound() {
    hammer_check(Clock::tsc(), 1);
}

fn hammer_check(clock: Clock, slack: u64) {
    let interval = Duration::from_micros(50);
    let burst = 20u64;
    let origin = tokio::time::Instant::now();
    let limiter = RateLimiter::with_clock(
        Quota::new(1, interval)
            .unwrap()
            .burst(burst as u32)
            .unwrap(),
        clock,
    );
    let admitted = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let limiter = limiter.clone();
            let admitted = admitted.clone();
            std::thread::spawn(move || {
                for _ in 0..50_000 {
                    if limiter.check().is_ok() {
                        let n = admitted.fetch_add(1, Ordering::SeqCst) + 1;
                        // The bound at this instant (the limiter's origin is after `origin`).
                        let bound = burst
                            + slack
                            + (origin.elapsed().as_nanos() / interval.as_nanos()) as u64;
                        assert!(n <= bound, "admission {n} above bound {bound}");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(admitted.load(Ordering::SeqCst) >= burst);
}

#[test]
fn tasks_waiting_on_a_multi_thread_runtime_stay_within_the_bound() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let interval = Duration::from_micros(200);
        let origin = tokio::time::Instant::now();
        let admitted = Arc::new(AtomicU64::new(0));
        let counter = admitted.clone();
        let layer = RateLimitLayer::new(Quota::new(1, interval).unwrap().burst(5).unwrap());
        let limiter = layer.limiter().clone();
        let svc = layer.layer(service_fn(move |()| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            // Wait mode credits a late-woken waiter up to 2 ms of its lateness.
            let credit = Duration::from_millis(2);
            let bound = 5 + ((origin.elapsed() + credit).as_nanos() / interval.as_nanos()) as u64;
            assert!(n <= bound, "admission {n} above bound {bound}");
            std::future::ready(Ok::<_, std::convert::Infallible>(()))
        }));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let mut svc = svc.clone();
                tokio::spawn(async move {
                    for _ in 0..40 {
                        svc.ready().await.unwrap().call(()).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(admitted.load(Ordering::SeqCst), 32 * 40);
        assert_eq!(limiter.waiting(), 0);
    });
}
