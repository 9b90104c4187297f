//! Regressions from a bug-hunting review: a lease token spent by a request polled after its
//! timeout (beyond the bound), a limiter used after its first runtime ended, and a check that
//! a flushed script is loaded again.
mod support;

use std::future::Future;
use std::task::{Context, Waker};

use palisade_ratelimit::Quota;
use palisade_ratelimit_redis::RedisRateLimiter;
use support::{raw, redis_time_us, RedisServer};

/// Lease mode's bound: over any interval `L`, at most `B + ⌊L/T⌋ + P·(n − 1)` admitted.
/// A request that started a lease fetch and was then left unpolled keeps the fetch's first
/// token (the "spare") reserved for itself for as long as it lives — beyond the `n − 1` of
/// the pool. When it is polled again, however late (its own timeout is checked only after
/// the answer), it is admitted on a cell Redis granted long before. So one process admits
/// `B + n` in an interval shorter than `T`: one more than the bound (one more per such
/// parked request, each from an earlier refill).
#[tokio::test]
async fn lease_mode_a_parked_requests_token_is_beyond_the_bound() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (t_us, b, n) = (100_000u64, 2u64, 2u64);
    let l = RedisRateLimiter::builder(
        redis.url(),
        Quota::per_second(10).unwrap().burst(2).unwrap(),
    )
    .name("review3-parked-spare")
    .lease(2)
    .build()
    .unwrap();
    let mut conn = raw(&redis.url()).await;

    // A finds the pool empty, starts the fetch, and is left unpolled.
    let mut a = Box::pin(l.check());
    assert!(a
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
        .is_pending());
    // The fetch answers in its own task: B cells, one kept for A, the rest in the pool.
    while l.leased() == 0 {
        tokio::task::yield_now().await;
    }
    // Redis forgets the key when its TAT passes: the bucket is full again (Redis' clock).
    loop {
        let exists: i64 = redis::cmd("EXISTS")
            .arg(l.redis_key())
            .query_async(&mut conn)
            .await
            .unwrap();
        if exists == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }

    let t0 = redis_time_us(&mut conn).await;
    let mut admitted = 0u64;
    if a.await.is_ok() {
        admitted += 1;
    }
    while l.check().await.is_ok() {
        admitted += 1;
    }
    let t1 = redis_time_us(&mut conn).await;
    let bound = b + (t1 - t0) / t_us + (n - 1);
    assert!(
        admitted <= bound,
        "{admitted} admitted in {} µs of Redis time; the bound is {bound}",
        t1 - t0
    );
}

/// `SCRIPT FLUSH` (or a restart) between two decisions: redis-rs reloads the script on
/// NOSCRIPT; the decision is Redis', not the policy's.
#[tokio::test]
async fn a_flushed_script_is_loaded_again() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let l = RedisRateLimiter::builder(
        redis.url(),
        Quota::per_second(100).unwrap().burst(10).unwrap(),
    )
    .name("review3-noscript")
    .build()
    .unwrap();
    let mut conn = raw(&redis.url()).await;
    l.check().await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    l.check().await.unwrap();
    let s = l.stats();
    assert_eq!(
        (s.redis_decisions, s.policy_decisions, s.failures),
        (2, 0, 0)
    );
}

/// A limiter first used on one runtime, then (that runtime gone) on another: the first
/// decision on the new runtime fails (redis-rs' connection task died with the old runtime),
/// Redis is marked down, and for the probe interval (500 ms by default) the policy decides —
/// with the default `FailClosed`, every request is refused although Redis is up.
#[test]
fn a_limiter_outlives_the_runtime_of_its_first_decision() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let l = RedisRateLimiter::builder(
        redis.url(),
        Quota::per_second(100).unwrap().burst(10).unwrap(),
    )
    .name("review3-runtimes")
    .build()
    .unwrap();
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    rt().block_on(l.check()).unwrap();
    let r = rt().block_on(l.check());
    let s = l.stats();
    assert_eq!((r, s.failures, s.policy_decisions), (Ok(()), 0, 0), "{s:?}");
}
