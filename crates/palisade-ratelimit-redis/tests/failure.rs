//! Redis stopped, frozen and restarted: each failure policy does what it says, no request waits
//! on Redis longer than the timeout, and a restarted Redis takes the limit back.
//!
//! Every test is bounded by `tokio::time::timeout`; readiness is polled with bounded retries.

mod support;

use std::time::Duration;

use palisade_ratelimit::{Quota, RateLimited};
use palisade_ratelimit_redis::{FailurePolicy, RedisRateLimitLayer, RedisRateLimiter};
use support::RedisServer;
use tokio::time::{timeout, Instant};
use tower::{Service, ServiceBuilder, ServiceExt};

const TIMEOUT: Duration = Duration::from_millis(100);
const PROBE: Duration = Duration::from_millis(200);
/// What a decision may take beyond the timeout on a loaded 2-core CI machine.
const SLACK: Duration = Duration::from_millis(400);
/// Bound on each test body.
const TEST_BOUND: Duration = Duration::from_secs(30);

fn limiter(redis: &RedisServer, quota: Quota, policy: FailurePolicy) -> RedisRateLimiter {
    RedisRateLimiter::builder(redis.url(), quota)
        .timeout(TIMEOUT)
        .probe_interval(PROBE)
        .on_failure(policy)
        .build()
        .unwrap()
}

/// `check()`, asserting it took no longer than the timeout (plus scheduling slack).
async fn timed_check(l: &RedisRateLimiter) -> Result<(), RateLimited> {
    let start = Instant::now();
    let r = l.check().await;
    let took = start.elapsed();
    assert!(took <= TIMEOUT + SLACK, "a decision took {took:?}");
    r
}

#[tokio::test]
async fn fail_open_admits_while_redis_is_down() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    timeout(TEST_BOUND, async {
        let l = limiter(
            &redis,
            Quota::per_minute(1).unwrap(),
            FailurePolicy::FailOpen,
        );
        timed_check(&l).await.unwrap();
        assert!(
            timed_check(&l).await.is_err(),
            "Redis limits while it is up"
        );
        redis.kill();
        for i in 0..30 {
            timed_check(&l)
                .await
                .unwrap_or_else(|e| panic!("check {i} refused while failing open: {e}"));
        }
        assert!(l.is_degraded());
        let s = l.stats();
        assert!(s.policy_decisions >= 30 && s.failures >= 1, "{s:?}");
    })
    .await
    .expect("the test hung");
}

#[tokio::test]
async fn fail_closed_refuses_while_redis_is_down_in_both_modes() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    timeout(TEST_BOUND, async {
        let l = limiter(
            &redis,
            Quota::per_second(100).unwrap(),
            FailurePolicy::FailClosed,
        );
        timed_check(&l).await.unwrap();
        redis.kill();
        for _ in 0..30 {
            let e = timed_check(&l).await.unwrap_err();
            assert!(
                e.retry_after() >= Duration::from_millis(1) && e.retry_after() <= PROBE,
                "{:?}",
                e.retry_after()
            );
        }
        // A wait-mode layer does not wait for Redis to come back: refused at once.
        let mut svc = ServiceBuilder::new()
            .layer(RedisRateLimitLayer::new(l.clone()))
            .service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n) });
        let start = Instant::now();
        let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
        assert!(err.is::<RateLimited>(), "{err}");
        assert!(start.elapsed() <= TIMEOUT + SLACK, "{:?}", start.elapsed());
    })
    .await
    .expect("the test hung");
}

#[tokio::test]
async fn fallback_keeps_a_share_of_the_quota_while_redis_is_down() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    timeout(TEST_BOUND, async {
        // B = 4, T = 60 s; half of it locally: B = 2, T = 120 s.
        let quota = Quota::per_minute(1).unwrap().burst(4).unwrap();
        let l = limiter(&redis, quota, FailurePolicy::Fallback { share: 0.5 });
        timed_check(&l).await.unwrap();
        redis.kill();
        let mut admitted = 0;
        let mut refusals = Vec::new();
        for _ in 0..30 {
            match timed_check(&l).await {
                Ok(()) => admitted += 1,
                Err(e) => refusals.push(e),
            }
        }
        assert_eq!(admitted, 2, "the local share's burst");
        for e in refusals {
            // The local limiter's retry time, reported against the fleet's quota.
            assert!(
                e.retry_after() > Duration::from_secs(100),
                "{:?}",
                e.retry_after()
            );
            assert_eq!(e.quota(), quota);
        }
    })
    .await
    .expect("the test hung");
}

#[tokio::test]
async fn fallback_keyed_checks_use_a_local_keyed_share() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    timeout(TEST_BOUND, async {
        let quota = Quota::per_minute(1).unwrap().burst(2).unwrap();
        let l = limiter(&redis, quota, FailurePolicy::Fallback { share: 0.5 });
        l.check_key("a").await.unwrap();
        redis.kill();
        // One each per key locally (burst 2 × 0.5), keys apart.
        let mut a = 0;
        let mut b = 0;
        for _ in 0..10 {
            a += u32::from(l.check_key("a").await.is_ok());
            b += u32::from(l.check_key("b").await.is_ok());
        }
        assert_eq!((a, b), (1, 1));
    })
    .await
    .expect("the test hung");
}

#[tokio::test]
async fn a_frozen_redis_costs_no_request_more_than_the_timeout() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    timeout(TEST_BOUND, async {
        // A quota that does not bind here: only the failure policy refuses.
        let quota = Quota::per_second(1000).unwrap().burst(1000).unwrap();
        let open = limiter(&redis, quota, FailurePolicy::FailOpen);
        let closed = limiter(&redis, quota, FailurePolicy::FailClosed);
        open.check().await.unwrap();
        closed.check().await.unwrap();
        // SIGSTOP: the connection stays open, nothing answers. Only the timeout can end it.
        redis.freeze();
        let start = Instant::now();
        timed_check(&open).await.unwrap();
        assert!(
            start.elapsed() >= TIMEOUT,
            "decided before the timeout: {:?}",
            start.elapsed()
        );
        assert!(timed_check(&closed).await.is_err());
        // Within the probe interval, decided at once.
        let start = Instant::now();
        timed_check(&open).await.unwrap();
        assert!(start.elapsed() < TIMEOUT, "{:?}", start.elapsed());
        redis.thaw();
        // Thawed: Redis decides again (after the probe interval), polled with a bound.
        let before = open.stats().redis_decisions;
        let mut back = false;
        for _ in 0..300 {
            timed_check(&open).await.unwrap();
            if open.stats().redis_decisions > before {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(back, "Redis never decided again after SIGCONT");
        assert!(!open.is_degraded());
    })
    .await
    .expect("the test hung");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_takes_the_shared_limit_back() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    timeout(TEST_BOUND, async {
        // Two "processes" on one limit: B = 3, T = 60 s. FailClosed never admits, so every
        // admission below is Redis'.
        let quota = Quota::per_minute(1).unwrap().burst(3).unwrap();
        let a = limiter(&redis, quota, FailurePolicy::FailClosed);
        let b = limiter(&redis, quota, FailurePolicy::FailClosed);
        let mut admitted = 0;
        for _ in 0..5 {
            admitted += u32::from(a.check().await.is_ok());
            admitted += u32::from(b.check().await.is_ok());
        }
        assert_eq!(admitted, 3);

        redis.kill();
        assert!(timed_check(&a).await.is_err());
        assert!(timed_check(&b).await.is_err());
        assert!(a.is_degraded() && b.is_degraded());

        // Restarted empty on the same port: both reconnect by themselves.
        redis.restart();
        for l in [&a, &b] {
            let before = l.stats().redis_decisions;
            let mut back = false;
            for _ in 0..500 {
                let r = timed_check(l).await;
                if l.stats().redis_decisions > before {
                    admitted += u32::from(r.is_ok());
                    back = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(back, "no Redis decision within 5 s of the restart");
        }
        // The restarted Redis knows nothing: a fresh burst of 3, shared again by both.
        for _ in 0..10 {
            admitted += u32::from(timed_check(&a).await.is_ok());
            admitted += u32::from(timed_check(&b).await.is_ok());
        }
        assert_eq!(admitted, 3 + 3);
    })
    .await
    .expect("the test hung");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_mode_spends_what_it_holds_then_the_policy_decides_within_the_timeout() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    timeout(TEST_BOUND, async {
        // B = 8, T = 60 s, leases of 4, fail closed.
        let l =
            RedisRateLimiter::builder(redis.url(), Quota::per_minute(1).unwrap().burst(8).unwrap())
                .timeout(TIMEOUT)
                .probe_interval(PROBE)
                .lease(4)
                .build()
                .unwrap();
        timed_check(&l).await.unwrap();
        assert_eq!(l.leased(), 3);
        // Frozen: the 3 leased tokens are still good; then 20 tasks at once find the pool
        // empty. One fetches (and times out), the others wait for it: every one of them is
        // decided within the timeout, by the policy.
        redis.freeze();
        for _ in 0..3 {
            timed_check(&l).await.unwrap();
        }
        let start = Instant::now();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { l.check().await })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap().is_err(), "fail closed admitted");
        }
        assert!(start.elapsed() <= TIMEOUT + SLACK, "{:?}", start.elapsed());
        let s = l.stats();
        assert_eq!(s.lease_decisions, 3, "{s:?}");
        assert!(s.policy_decisions >= 20, "{s:?}");
        redis.thaw();
    })
    .await
    .expect("the test hung");
}
