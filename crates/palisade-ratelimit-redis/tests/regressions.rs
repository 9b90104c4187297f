//! Regression tests for bugs found in review: each fails on the code before its fix.
mod support;

use std::future::Future;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use palisade_ratelimit::keyed::key_fn;
use palisade_ratelimit::Quota;
use palisade_ratelimit_redis::{
    BuildError, FailurePolicy, RedisKeyedRateLimitLayer, RedisRateLimitLayer, RedisRateLimiter,
};
use support::{raw, RedisServer};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

fn echo(
) -> impl Service<u32, Response = u32, Error = std::convert::Infallible, Future: Send> + Clone + Send
{
    tower::service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n) })
}

// #5: `max_wait(Duration::MAX)` is no deadline, not a panic ("overflow when adding duration
// to instant").
#[tokio::test]
async fn max_wait_duration_max_waits_without_panicking() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // T = 50 ms, B = 1, the token taken: the request waits about one interval.
    let l = RedisRateLimiter::builder(redis.url(), Quota::per_second(20).unwrap())
        .name("max-wait-max")
        .build()
        .unwrap();
    l.check().await.unwrap();
    let svc = RedisRateLimitLayer::new(l.clone())
        .max_wait(Duration::MAX)
        .layer(echo());
    let h = tokio::spawn(async move { svc.oneshot(1).await.map_err(|e| e.to_string()) });
    let r = tokio::time::timeout(Duration::from_secs(5), h)
        .await
        .unwrap();
    assert_eq!(r.expect("no panic"), Ok(1));
}

#[tokio::test]
async fn keyed_max_wait_duration_max_waits_without_panicking() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let l = RedisRateLimiter::builder(redis.url(), Quota::per_second(20).unwrap())
        .name("keyed-max-wait-max")
        .build()
        .unwrap();
    let svc = RedisKeyedRateLimitLayer::new(l.clone(), key_fn(|_: &u32| Some(String::from("k"))))
        .max_wait(Duration::MAX)
        .layer(echo());
    svc.clone().oneshot(1).await.unwrap();
    let h = tokio::spawn(async move { svc.oneshot(2).await.map_err(|e| e.to_string()) });
    let r = tokio::time::timeout(Duration::from_secs(5), h)
        .await
        .unwrap();
    assert_eq!(r.expect("no panic"), Ok(2));
}

#[tokio::test]
async fn timeout_and_probe_interval_duration_max_do_not_panic() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let l = RedisRateLimiter::builder(redis.url(), Quota::per_second(20).unwrap())
        .timeout(Duration::MAX)
        .probe_interval(Duration::MAX)
        .build()
        .unwrap();
    let h = tokio::spawn(async move { l.check().await });
    assert_eq!(h.await.expect("no panic"), Ok(()));
}

// #6: a request's key cannot address another limiter's key, and keys of different types that
// write the same bytes stay apart.
#[tokio::test]
async fn keyed_keys_are_escaped_and_cannot_reach_another_limiters_key() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let q = Quota::per_hour(1).unwrap().burst(3).unwrap();
    // A name with the separator is refused: it is what made the collision possible.
    let e = RedisRateLimiter::builder(redis.url(), q)
        .name("api:global")
        .build()
        .unwrap_err();
    assert!(matches!(e, BuildError::InvalidName { .. }), "{e:?}");
    assert!(e.to_string().contains("':'"), "{e}");

    let global = RedisRateLimiter::builder(redis.url(), q)
        .name("api")
        .build()
        .unwrap();
    let per_client = RedisRateLimiter::builder(redis.url(), q)
        .name("api")
        .build()
        .unwrap();
    assert_eq!(
        per_client.redis_key_for("global"),
        b"palisade:ratelimit:api:s=global"
    );
    assert_eq!(
        per_client.redis_key_for("a:b%"),
        b"palisade:ratelimit:api:s=a%3Ab%25"
    );
    // A client spending its key "global" (or one trying to smuggle a ':') leaves the
    // limiter's own budget alone.
    for _ in 0..3 {
        per_client.check_key("global").await.unwrap();
        per_client.check_key(":").await.unwrap();
    }
    assert!(per_client.check_key("global").await.is_err());
    for _ in 0..3 {
        global.check().await.unwrap();
    }
    // `()` and `""`, `5u32` and `"5"`: one budget each.
    for _ in 0..3 {
        per_client.check_key(&()).await.unwrap();
        per_client.check_key(&5u32).await.unwrap();
    }
    assert!(per_client.check_key(&()).await.is_err());
    assert!(per_client.check_key(&5u32).await.is_err());
    per_client.check_key("").await.unwrap();
    per_client.check_key("5").await.unwrap();
}

// #7: one key's reply error (WRONGTYPE) decides that request by the policy, and leaves Redis
// up for every other key.
#[tokio::test]
async fn one_keys_reply_error_does_not_mark_redis_down() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut conn = raw(&redis.url()).await;
    let l = RedisRateLimiter::builder(redis.url(), Quota::per_hour(1).unwrap().burst(5).unwrap())
        .probe_interval(Duration::from_secs(5))
        .build()
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(l.redis_key_for("victim"))
        .arg("f")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    // FailClosed (the default) refuses that request.
    assert!(l.check_key("victim").await.is_err());
    assert!(!l.is_degraded());
    assert_eq!(l.stats().failures, 1);
    assert_eq!(l.stats().policy_decisions, 1);
    // Everything else is still decided by Redis.
    l.check().await.unwrap();
    l.check_key("someone-else").await.unwrap();
    assert_eq!(l.stats().redis_decisions, 2);
    assert_eq!(l.stats().policy_decisions, 1);
}

// #8: after the probe interval one decision probes Redis; the others keep applying the policy
// at once rather than each waiting the full timeout on a frozen Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_after_the_interval_is_single_flight() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let l = RedisRateLimiter::builder(
        redis.url(),
        Quota::per_second(1000).unwrap().burst(1000).unwrap(),
    )
    .timeout(Duration::from_millis(100))
    .probe_interval(Duration::from_millis(300))
    .on_failure(FailurePolicy::FailOpen)
    .build()
    .unwrap();
    l.check().await.unwrap();
    redis.freeze();
    l.check().await.unwrap(); // times out, marks down
    assert!(l.is_degraded());
    tokio::time::sleep(Duration::from_millis(320)).await; // the probe interval is over
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let l = l.clone();
            tokio::spawn(async move {
                let s = Instant::now();
                let _ = l.check().await;
                s.elapsed()
            })
        })
        .collect();
    let mut slow = 0;
    for t in tasks {
        if t.await.unwrap() >= Duration::from_millis(95) {
            slow += 1;
        }
    }
    redis.thaw();
    assert!(slow <= 1, "{slow} requests paid the timeout for one probe");
    assert_eq!(l.stats().failures, 2, "{:?}", l.stats());
    // Redis thawed: the next probe (after the interval) brings the limiter back.
    tokio::time::sleep(Duration::from_millis(450)).await;
    l.check().await.unwrap();
    assert!(!l.is_degraded());
}

// #9: the fallback's burst is ⌊B·share⌋ of the exact product, not of its double.
#[tokio::test]
async fn fallback_share_burst_is_not_one_short() {
    // Nothing listens on port 1: every decision goes to the fallback.
    let q = Quota::per_hour(1).unwrap().burst(100).unwrap();
    let l = RedisRateLimiter::builder("redis://127.0.0.1:1", q)
        .on_failure(FailurePolicy::Fallback { share: 0.57 })
        .build()
        .unwrap();
    let mut admitted = 0;
    for _ in 0..200 {
        admitted += u32::from(l.check().await.is_ok());
    }
    assert_eq!(admitted, 57, "⌊100 × 0.57⌋ = 57");
}

// #10: a bad URL's error shows no password, in its message or its Debug.
#[test]
fn build_error_does_not_show_the_password() {
    let q = Quota::per_second(1).unwrap();
    for url in [
        "redis://app:s3cr3t-pass@redis.internal/x",
        "redis://s3cr3t-pass@redis.internal/x",
        "redis://redis.internal/x?password=s3cr3t-pass",
    ] {
        let e = RedisRateLimiter::builder(url, q).build().unwrap_err();
        assert!(matches!(e, BuildError::InvalidUrl { .. }), "{e:?}");
        let (shown, debug) = (e.to_string(), format!("{e:?}"));
        assert!(
            !shown.contains("s3cr3t"),
            "password in the message: {shown}"
        );
        assert!(!debug.contains("s3cr3t"), "password in Debug: {debug}");
        assert!(shown.contains("redis.internal"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }
}

// #11: a lease of u32::MAX granted while tokens came back to the pool: `before + extra`
// overflowed a u32.
#[tokio::test]
async fn lease_fill_does_not_overflow() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut conn = raw(&redis.url()).await;
    let b = u32::MAX;
    let l = RedisRateLimiter::builder(
        redis.url(),
        Quota::per_second(1_000_000).unwrap().burst(b).unwrap(),
    )
    .timeout(Duration::from_secs(2))
    .lease(b)
    .build()
    .unwrap();
    let key = l.redis_key().to_owned();
    // Leave exactly one conforming cell: TAT = now + (B − 1)·T (T = 1 µs).
    let squeeze = async |conn: &mut redis::aio::MultiplexedConnection| {
        let now = support::redis_time_us(conn).await;
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(now + u64::from(b) - 1)
            .query_async(conn)
            .await
            .unwrap();
    };
    squeeze(&mut conn).await;
    let mut a = RedisRateLimitLayer::new(l.clone()).reject().layer(echo());
    a.ready().await.unwrap();
    while l.leased() > 0 {
        l.check().await.unwrap();
    }
    squeeze(&mut conn).await;
    let mut c = RedisRateLimitLayer::new(l.clone()).reject().layer(echo());
    c.ready().await.unwrap();
    while l.leased() > 0 {
        l.check().await.unwrap();
    }
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    // A lease fetch in flight (pool empty) ...
    let l2 = l.clone();
    let mut f = Box::pin(async move { l2.check().await });
    assert!(f
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
        .is_pending());
    // ... two tokens come back to the pool meanwhile ...
    drop(a);
    drop(c);
    assert_eq!(l.leased(), 2);
    // ... and the fetch grants B: fill(extra = B − 1) with 2 in the pool.
    let r = tokio::spawn(f).await;
    assert_eq!(r.expect("no panic"), Ok(()));
    assert_eq!(l.leased(), b - 1, "the pool is full, the rest refunded");
}

fn poll_once<S: Service<u32>>(svc: &mut S) -> Poll<Result<(), S::Error>> {
    svc.poll_ready(&mut Context::from_waker(Waker::noop()))
}

// #1/#2: lease mode. A service polled once (its lease fetch started) and then left unpolled
// holds nothing the others wait for: they get the fetch's result, Redis is not marked down,
// and the quota holds.
#[tokio::test]
async fn lease_mode_a_parked_service_does_not_block_others_or_mark_redis_down() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let l = RedisRateLimiter::builder(redis.url(), Quota::per_minute(1).unwrap().burst(8).unwrap())
        .timeout(Duration::from_millis(100))
        .probe_interval(Duration::from_secs(5))
        .on_failure(FailurePolicy::FailOpen)
        .lease(4)
        .build()
        .unwrap();
    l.check_key("warm-up").await.unwrap(); // connect
    let mut a = RedisRateLimitLayer::new(l.clone()).reject().layer(echo());
    // One poll: A starts the lease fetch; then it is not polled again.
    assert!(poll_once(&mut a).is_pending());
    let start = Instant::now();
    l.check().await.unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
    let mut admitted = 1;
    for _ in 0..100 {
        admitted += u32::from(l.check().await.is_ok());
    }
    drop(a);
    assert!(
        !l.is_degraded(),
        "healthy Redis marked down: {:?}",
        l.stats()
    );
    assert_eq!(l.stats().policy_decisions, 0, "{:?}", l.stats());
    assert_eq!(admitted, 8, "{:?}", l.stats());
}

// #1/#2: lease mode on an exhausted limit, 1000 requests at once: they share Redis' "limited"
// answer (one round trip, not one each in turn), so none waits past the timeout and the
// failure policy (fail open: admit) never decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_mode_shares_limited_answers_and_does_not_trip_the_policy() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let l = RedisRateLimiter::builder(redis.url(), Quota::per_hour(1).unwrap().burst(2).unwrap())
        .timeout(Duration::from_millis(50))
        .on_failure(FailurePolicy::FailOpen)
        .lease(2)
        .build()
        .unwrap();
    assert!(l.check().await.is_ok());
    assert!(l.check().await.is_ok());
    assert!(l.check().await.is_err());
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let l = l.clone();
            tokio::spawn(async move { l.check().await.is_ok() })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += u32::from(t.await.unwrap());
    }
    let s = l.stats();
    assert_eq!(admitted, 0, "{s:?}");
    assert!(!l.is_degraded(), "{s:?}");
    assert_eq!(s.policy_decisions, 0, "{s:?}");
    assert!(s.redis_decisions <= 3, "{s:?}");
}

// #3: wait mode. A service whose wait has begun and that is then left unpolled (say, the
// caller's `timeout(d, svc.ready())` expired and the service was kept) does not block the
// process' other waiters: they get the next slots.
#[tokio::test]
async fn wait_mode_a_parked_waiter_does_not_block_the_process() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // T = 50 ms, B = 1, the token taken.
    let l = RedisRateLimiter::builder(redis.url(), Quota::per_second(20).unwrap())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    l.check().await.unwrap();
    let layer = RedisRateLimitLayer::new(l.clone());
    let mut a = layer.layer(echo());
    // Poll A for 20 ms: it is refused by Redis, takes a slot and sleeps.
    let _ = tokio::time::timeout(
        Duration::from_millis(20),
        std::future::poll_fn(|cx| a.poll_ready(cx)),
    )
    .await;
    assert_eq!(l.waiting(), 1);
    // A is parked. B gets a slot right after A's.
    let mut b = layer.layer(echo());
    let start = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(2), b.ready()).await;
    let took = start.elapsed();
    drop(a);
    assert!(r.is_ok(), "B waited 2 s (40 slots) behind a parked service");
    assert!(took < Duration::from_millis(300), "{took:?}");
    assert_eq!(l.waiting(), 0);
}

// #4: wait mode reserves the cell in one round trip and sleeps until it conforms: about one
// round trip per admission, and the rate holds at a sub-millisecond interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_mode_one_round_trip_per_admission_and_full_rate() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    for rate in [5000u64, 500] {
        let q = Quota::per_second(rate).unwrap();
        let count = u32::try_from(rate / 5).unwrap(); // 200 ms of quota
        let l = RedisRateLimiter::builder(redis.url(), q)
            .name(format!("throughput-{rate}"))
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let svc = RedisRateLimitLayer::new(l.clone()).layer(echo());
        let start = Instant::now();
        let tasks: Vec<_> = (0..count)
            .map(|n| {
                let svc = svc.clone();
                tokio::spawn(async move { svc.oneshot(n).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let took = start.elapsed();
        // (count − 1) intervals at least; well under twice the ideal 200 ms.
        assert!(took >= Duration::from_millis(190), "{rate}/s: {took:?}");
        assert!(took < Duration::from_millis(400), "{rate}/s: {took:?}");
        let asked = l.stats().redis_decisions;
        assert_eq!(asked, u64::from(count), "{rate}/s: {:?}", l.stats());
    }
}

// #4: a reserved cell whose wait is abandoned is given back: the next waiter goes sooner.
#[tokio::test]
async fn wait_mode_an_abandoned_reservation_is_given_back() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // T = 200 ms, B = 1, the token taken.
    let l = RedisRateLimiter::builder(redis.url(), Quota::per_second(5).unwrap())
        .name("abandoned")
        .build()
        .unwrap();
    l.check().await.unwrap();
    let layer = RedisRateLimitLayer::new(l.clone());
    let mut a = layer.layer(echo());
    // A reserves the cell at ~200 ms and sleeps; then it is dropped.
    let _ = tokio::time::timeout(
        Duration::from_millis(20),
        std::future::poll_fn(|cx| a.poll_ready(cx)),
    )
    .await;
    assert_eq!(l.waiting(), 1);
    drop(a);
    assert_eq!(l.waiting(), 0);
    let mut given_back = false;
    for _ in 0..300 {
        if l.stats().refunds == 1 {
            given_back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(given_back, "{:?}", l.stats());
    // B takes A's cell (~200 ms after the first), not the one after it (~400 ms).
    let mut b = layer.layer(echo());
    let start = Instant::now();
    b.ready().await.unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
}
