//! The TSC clock (`Clock::tsc`): the same decisions as on tokio's clock, read from the CPU's
//! counter; paused tokio time does not drive it.
//!
//! Real time passes in these tests, but nothing depends on how much: every bound below has
//! minutes of slack against the microseconds a test takes, and the wait-mode test asserts
//! only order and completion.

use std::cell::RefCell;
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::time::Duration;

use palisade_ratelimit::{Clock, KeyedRateLimiter, Quota, RateLimitLayer, RateLimiter};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

fn hourly(burst: u32) -> Quota {
    Quota::new(1, HOUR).unwrap().burst(burst).unwrap()
}

#[test]
fn clock_is_chosen_and_reported() {
    assert!(RateLimiter::new(hourly(1)).clock().is_tokio());
    assert!(Clock::default().is_tokio());
    let tsc = RateLimiter::with_clock(hourly(1), Clock::tsc());
    assert!(!tsc.clock().is_tokio());
    assert_eq!(format!("{:?}", tsc.clock()), "Clock::tsc");
    assert_eq!(format!("{:?}", Clock::tokio()), "Clock::tokio");
}

#[test]
fn tsc_clock_admits_the_burst_then_refuses_until_the_interval() {
    let limiter = RateLimiter::with_clock(hourly(3), Clock::tsc());
    assert_eq!(limiter.remaining_burst(), 3);
    for i in 0..3 {
        assert!(limiter.check().is_ok(), "request {i} of the burst refused");
    }
    assert_eq!(limiter.remaining_burst(), 0);
    let refused = limiter.check().unwrap_err();
    assert!(
        refused.retry_after() > HOUR - MINUTE && refused.retry_after() <= HOUR,
        "retry_after {:?} is not about an hour",
        refused.retry_after()
    );
    // The next conforming instant, mapped to tokio's clock, is about an hour ahead.
    let ahead = limiter.next_conforming() - Instant::now();
    assert!(
        ahead > HOUR - MINUTE && ahead <= HOUR,
        "next conforming in {ahead:?}"
    );
}

#[test]
fn tsc_clock_maps_defer_until_from_tokio_instants() {
    let limiter = RateLimiter::with_clock(hourly(5), Clock::tsc());
    limiter.defer_until(Instant::now() + 2 * HOUR);
    let refused = limiter.check().unwrap_err();
    assert!(
        refused.retry_after() > 2 * HOUR - MINUTE && refused.retry_after() <= 2 * HOUR,
        "retry_after {:?} is not about two hours",
        refused.retry_after()
    );
    // A deadline already past resumes from a single request, as on tokio's clock (less
    // than an interval has passed since it).
    for clock in [Clock::tsc(), Clock::tokio()] {
        let fresh = RateLimiter::with_clock(hourly(2), clock.clone());
        // (`checked_sub`: the OS clock can read under a minute just after boot.)
        let Some(past) = Instant::now().checked_sub(MINUTE) else {
            return;
        };
        fresh.defer_until(past);
        assert_eq!(fresh.remaining_burst(), 1, "{clock:?}");
        assert!(fresh.check().is_ok(), "{clock:?}");
        assert!(fresh.check().is_err(), "{clock:?}");
    }
}

#[test]
fn keyed_limiter_on_the_tsc_clock_limits_each_key() {
    let limiter =
        KeyedRateLimiter::with_clock(hourly(2), NonZeroUsize::new(8).unwrap(), Clock::tsc());
    assert!(!limiter.clock().is_tokio());
    assert!(limiter.check_key(&"a").is_ok());
    assert!(limiter.check_key(&"a").is_ok());
    assert!(limiter.check_key(&"a").is_err());
    assert!(limiter.check_key(&"b").is_ok(), "keys share no budget");
    assert_eq!(limiter.remaining_burst(&"b"), 1);
}

#[tokio::test(start_paused = true)]
async fn paused_time_drives_the_tokio_clock_but_not_the_tsc_clock() {
    let on_tokio = RateLimiter::new(hourly(1));
    let on_tsc = RateLimiter::with_clock(hourly(1), Clock::tsc());
    assert!(on_tokio.check().is_ok());
    assert!(on_tsc.check().is_ok());
    tokio::time::advance(HOUR).await;
    assert!(
        on_tokio.check().is_ok(),
        "an hour of paused time refills tokio's"
    );
    assert!(
        on_tsc.check().is_err(),
        "the counter did not move an hour: the TSC limiter still refuses"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn wait_mode_on_the_tsc_clock_admits_waiters_in_order() {
    // 1 per 200 µs, burst 1: five waiters take about a millisecond of real time.
    let quota = Quota::new(1, Duration::from_micros(200)).unwrap();
    let order = Rc::new(RefCell::new(Vec::new()));
    let log = order.clone();
    let svc = RateLimitLayer::from_limiter(RateLimiter::with_clock(quota, Clock::tsc())).layer(
        service_fn(move |i: usize| {
            log.borrow_mut().push(i);
            std::future::ready(Ok::<_, std::convert::Infallible>(()))
        }),
    );
    let local = tokio::task::LocalSet::new();
    let mut handles = Vec::new();
    for i in 0..5 {
        let mut svc = svc.clone();
        handles.push(local.spawn_local(async move {
            svc.ready().await.unwrap().call(i).await.unwrap();
        }));
        // Each waiter joins the queue before the next is spawned.
        local.run_until(tokio::task::yield_now()).await;
    }
    local
        .run_until(async {
            for h in handles {
                h.await.unwrap();
            }
        })
        .await;
    assert_eq!(*order.borrow(), vec![0, 1, 2, 3, 4]);
}
