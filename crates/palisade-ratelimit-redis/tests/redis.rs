//! The limiter and its layers against a real `redis-server`: the script's decisions, wait and
//! reject modes, keyed isolation, key expiry, giving back, lease mode, configuration errors.
//!
//! Counts are checked on immediate bursts (no timing involved); `retry_after` values are the
//! ones Redis computed from its own clock. Where a test needs time to pass, it sleeps for the
//! `retry_after` Redis gave, or polls with a bounded retry loop.

mod support;

use std::time::Duration;

use palisade_ratelimit::keyed::{key_fn, GlobalKey};
use palisade_ratelimit::{KeyUnavailable, Quota, RateLimited};
use palisade_ratelimit_redis::{
    BuildError, FailurePolicy, RedisKeyedRateLimitLayer, RedisRateLimitLayer, RedisRateLimiter,
};
use support::{raw, RedisServer};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn limiter(redis: &RedisServer, quota: Quota) -> RedisRateLimiter {
    RedisRateLimiter::builder(redis.url(), quota)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

fn echo(
) -> impl Service<u32, Response = u32, Error = std::convert::Infallible, Future: Send> + Clone + Send
{
    tower::service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n) })
}

fn limited(err: &BoxError) -> RateLimited {
    *err.downcast_ref::<RateLimited>()
        .unwrap_or_else(|| panic!("expected RateLimited, got {err}"))
}

/// Polls `cond` every 10 ms, up to `tries` times.
async fn eventually(tries: u32, mut cond: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..tries {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

// ===== The script =====

#[tokio::test]
async fn burst_at_once_then_refused_with_retry_after_from_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // T = 60 s, B = 5.
    let l = limiter(&redis, Quota::per_minute(1).unwrap().burst(5).unwrap());
    for i in 0..5 {
        l.check()
            .await
            .unwrap_or_else(|e| panic!("request {i} of the burst: {e}"));
    }
    let denied = l.check().await.unwrap_err();
    // The first of the burst set the TAT to t0 + 5T; at now = t0 + δ the 6th conforms at
    // TAT − τ = t0 + T: retry_after = T − δ, by Redis' clock.
    let r = denied.retry_after();
    assert!(
        r <= Duration::from_secs(60) && r > Duration::from_secs(58),
        "{r:?}"
    );
    assert_eq!(denied.quota(), l.quota());
    // A refusal writes nothing: asking again does not push the slot back.
    let again = l.check().await.unwrap_err().retry_after();
    assert!(again <= r, "{again:?} > {r:?}");
    assert_eq!(l.stats().redis_decisions, 7);
}

#[tokio::test]
async fn after_the_burst_one_per_interval() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // T = 1 s, B = 2.
    let l = limiter(&redis, Quota::per_second(1).unwrap().burst(2).unwrap());
    l.check().await.unwrap();
    l.check().await.unwrap();
    let r = l.check().await.unwrap_err().retry_after();
    assert!(
        r <= Duration::from_secs(1) && r > Duration::from_millis(500),
        "{r:?}"
    );
    // Sleep exactly what Redis said (tokio rounds up to the millisecond): one conforms.
    tokio::time::sleep(r).await;
    l.check().await.unwrap();
    // And only one: the next is a whole interval away (less the time since).
    let next = l.check().await.unwrap_err().retry_after();
    assert!(next > Duration::from_millis(500), "{next:?}");
}

#[tokio::test]
async fn two_limiters_on_one_name_share_one_budget_and_other_names_do_not() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let q = Quota::per_minute(1).unwrap().burst(4).unwrap();
    let build = |name: &str| {
        RedisRateLimiter::builder(redis.url(), q)
            .name(name)
            .build()
            .unwrap()
    };
    // Two "processes": separate limiters, separate connections, one key.
    let (a, b, other) = (build("shared"), build("shared"), build("other"));
    let mut admitted = 0;
    for i in 0..10 {
        let l = if i % 2 == 0 { &a } else { &b };
        admitted += u32::from(l.check().await.is_ok());
    }
    assert_eq!(admitted, 4);
    other.check().await.unwrap();
    assert_eq!(a.redis_key(), "palisade:ratelimit:shared");
}

#[tokio::test]
async fn the_key_expires_when_the_limit_is_as_good_as_new() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut conn = raw(&redis.url()).await;
    // T = 60 s, B = 5: one request sets the TAT 60 s ahead, and the key lives exactly that long.
    let l = limiter(&redis, Quota::per_minute(1).unwrap().burst(5).unwrap());
    l.check().await.unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(l.redis_key())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((58_000..=60_000).contains(&pttl), "PTTL {pttl}");
    l.check().await.unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(l.redis_key())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((118_000..=120_000).contains(&pttl), "PTTL {pttl}");

    // T = 100 ms: the key is gone within a few hundred ms of idling.
    let short = RedisRateLimiter::builder(redis.url(), Quota::per_second(10).unwrap())
        .name("short")
        .build()
        .unwrap();
    short.check().await.unwrap();
    let key = short.redis_key().to_owned();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=100).contains(&pttl), "PTTL {pttl}");
    let gone = eventually(200, async || {
        let n: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        n == 0
    })
    .await;
    assert!(gone, "the idle key did not expire");
    // And a fresh key is a fresh limit.
    short.check().await.unwrap();
}

// ===== Reject and wait through the layer =====

#[tokio::test]
async fn reject_mode_refuses_at_once_with_retry_after() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let l = limiter(&redis, Quota::per_minute(1).unwrap().burst(3).unwrap());
    let mut svc = ServiceBuilder::new()
        .layer(RedisRateLimitLayer::new(l.clone()).reject())
        .service(echo());
    for n in 0..3 {
        assert_eq!(svc.ready().await.unwrap().call(n).await.unwrap(), n);
    }
    let err = svc.ready().await.unwrap().call(3).await.unwrap_err();
    let r = limited(&err).retry_after();
    assert!(
        r > Duration::from_secs(58) && r <= Duration::from_secs(60),
        "{r:?}"
    );
}

#[tokio::test]
async fn clones_and_repeated_layer_calls_share_one_budget() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let layer = RedisRateLimitLayer::new(limiter(
        &redis,
        Quota::per_minute(1).unwrap().burst(3).unwrap(),
    ))
    .reject();
    let a = layer.layer(echo());
    let b = layer.layer(echo());
    let c = a.clone();
    let mut admitted = 0;
    for (i, mut svc) in [a, b, c].into_iter().cycle().take(9).enumerate() {
        admitted += u32::from(svc.ready().await.unwrap().call(i as u32).await.is_ok());
    }
    assert_eq!(admitted, 3);
}

#[tokio::test]
async fn wait_mode_spaces_requests_by_the_redis_interval() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // T = 100 ms, B = 1: 5 requests need at least 400 ms by Redis' clock.
    let l = limiter(&redis, Quota::per_second(10).unwrap());
    let mut svc = ServiceBuilder::new()
        .layer(RedisRateLimitLayer::new(l.clone()))
        .service(echo());
    let start = Instant::now();
    for n in 0..5 {
        assert_eq!(svc.ready().await.unwrap().call(n).await.unwrap(), n);
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(390), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn wait_mode_with_many_waiters_admits_all_and_asks_redis_once_per_slot() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // T = 50 ms, B = 1; 10 waiters in this process.
    let l = limiter(&redis, Quota::per_second(20).unwrap());
    let svc = ServiceBuilder::new()
        .layer(RedisRateLimitLayer::new(l.clone()))
        .service(echo());
    let start = Instant::now();
    let tasks: Vec<_> = (0..10u32)
        .map(|n| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.oneshot(n).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        start.elapsed() >= Duration::from_millis(440),
        "{:?}",
        start.elapsed()
    );
    // Only the head of the local queue asks Redis: about two asks per admission (one refused
    // with the retry time, one admitted), not one per waiter per slot.
    let asked = l.stats().redis_decisions;
    assert!(asked <= 40, "{asked} round trips for 10 admissions");
}

#[tokio::test]
async fn wait_mode_serves_a_process_waiters_in_arrival_order() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // T = 50 ms, B = 1, the token taken: every waiter below queues.
    let l = limiter(&redis, Quota::per_second(20).unwrap());
    l.check().await.unwrap();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let svc = ServiceBuilder::new()
        .layer(RedisRateLimitLayer::new(l.clone()))
        .service_fn({
            let order = order.clone();
            move |n: u32| {
                order.lock().unwrap().push(n);
                async move { Ok::<_, std::convert::Infallible>(n) }
            }
        });
    let mut tasks = Vec::new();
    for n in 0..8u32 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move { svc.oneshot(n).await.unwrap() }));
        // The next one arrives once this one is queued (or already served).
        let arrived = eventually(300, async || {
            l.waiting() + order.lock().unwrap().len() > n as usize
        })
        .await;
        assert!(arrived, "waiter {n} never queued");
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());
    assert_eq!(l.waiting(), 0);
}

#[tokio::test]
async fn max_wait_refuses_at_once_what_would_wait_longer() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let l = limiter(&redis, Quota::per_minute(1).unwrap());
    let mut svc = ServiceBuilder::new()
        .layer(RedisRateLimitLayer::new(l).max_wait(Duration::from_secs(1)))
        .service(echo());
    svc.ready().await.unwrap().call(1).await.unwrap();
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(2).await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "waited {:?}",
        start.elapsed()
    );
    assert!(limited(&err).retry_after() > Duration::from_secs(58));
}

#[tokio::test]
async fn max_wait_admits_what_fits() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // T = 200 ms: the second request waits about 200 ms, within 1 s.
    let l = limiter(&redis, Quota::per_second(5).unwrap());
    let mut svc = ServiceBuilder::new()
        .layer(RedisRateLimitLayer::new(l).max_wait(Duration::from_secs(1)))
        .service(echo());
    svc.ready().await.unwrap().call(1).await.unwrap();
    let start = Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(2).await.unwrap(), 2);
    assert!(
        start.elapsed() >= Duration::from_millis(150),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_readied_service_dropped_before_call_gives_its_token_back() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // B = 1, T = 60 s: without the refund the next request would wait a minute.
    let l = limiter(&redis, Quota::per_minute(1).unwrap());
    let mut svc = ServiceBuilder::new()
        .layer(RedisRateLimitLayer::new(l.clone()).reject())
        .service(echo());
    svc.ready().await.unwrap();
    drop(svc);
    // The refund script runs in a spawned task: poll for it, bounded.
    assert!(
        eventually(300, async || l.stats().refunds == 1).await,
        "no refund"
    );
    l.check().await.unwrap();
    assert!(l.check().await.is_err());
}

#[tokio::test]
async fn a_refund_after_later_admissions_never_over_credits() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // B = 2, T = 60 s: one held by a readied service, one taken after it.
    let l = limiter(&redis, Quota::per_minute(1).unwrap().burst(2).unwrap());
    let mut held = ServiceBuilder::new()
        .layer(RedisRateLimitLayer::new(l.clone()).reject())
        .service(echo());
    held.ready().await.unwrap();
    l.check().await.unwrap();
    drop(held);
    assert!(
        eventually(300, async || l.stats().refunds == 1).await,
        "no refund"
    );
    // The held token was still ahead of now: it comes back, exactly one.
    l.check().await.unwrap();
    assert!(l.check().await.is_err());
}

// ===== Keyed =====

#[tokio::test]
async fn keyed_limits_are_isolated_and_expire() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let l = limiter(&redis, Quota::per_minute(1).unwrap().burst(2).unwrap());
    let mut svc = ServiceBuilder::new()
        .layer(RedisKeyedRateLimitLayer::new(
            l.clone(),
            key_fn(|n: &u32| (*n != 0).then(|| format!("user-{}", n % 10))),
        ))
        .service(echo());
    // user-1 twice, then refused; user-2 untouched.
    svc.ready().await.unwrap().call(1).await.unwrap();
    svc.ready().await.unwrap().call(11).await.unwrap();
    let err = svc.ready().await.unwrap().call(21).await.unwrap_err();
    assert!(limited(&err).retry_after() > Duration::from_secs(58));
    svc.ready().await.unwrap().call(2).await.unwrap();
    // The own key is untouched too.
    l.check().await.unwrap();
    // No key: refused, never let through.
    let err = svc.ready().await.unwrap().call(0).await.unwrap_err();
    assert!(err.is::<KeyUnavailable>(), "{err}");

    let mut conn = raw(&redis.url()).await;
    let key = l.redis_key_for("user-1");
    assert_eq!(key, b"palisade:ratelimit:default:s=user-1");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((118_000..=120_000).contains(&pttl), "PTTL {pttl}");
    // check_key is the same limit.
    assert!(l.check_key("user-1").await.is_err());
    l.check_key("user-3").await.unwrap();
}

#[tokio::test]
async fn keyed_wait_mode_waits_for_the_key_only() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // T = 200 ms per key.
    let l = limiter(&redis, Quota::per_second(5).unwrap());
    let svc = ServiceBuilder::new()
        .layer(
            RedisKeyedRateLimitLayer::new(l, key_fn(|n: &u32| Some(n % 2)))
                .max_wait(Duration::from_secs(1)),
        )
        .service(echo());
    svc.clone().oneshot(0).await.unwrap();
    let start = Instant::now();
    // Key 1 is free: no wait.
    svc.clone().oneshot(1).await.unwrap();
    let other = start.elapsed();
    // Key 0 waits its interval.
    svc.clone().oneshot(2).await.unwrap();
    let same = start.elapsed();
    assert!(same >= Duration::from_millis(150), "{same:?}");
    assert!(other < same, "{other:?} vs {same:?}");
}

#[tokio::test]
async fn keyed_global_key_and_429_rejection() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let l = limiter(&redis, Quota::per_minute(1).unwrap());
    let layer = RedisKeyedRateLimitLayer::new(l, GlobalKey)
        .with_rejection(palisade_ratelimit::http::TooManyRequests::new());
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        }));
    let ok = svc.clone().oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(ok.status(), http::StatusCode::OK);
    let refused = svc.clone().oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(refused.status(), http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "60");
}

#[tokio::test]
async fn fits_axum_one_budget_across_routes_and_a_keyed_limit_per_client() {
    use axum::body::Body;
    use palisade_ratelimit::http::{PeerAddr, PeerIp, TooManyRequests};

    let Some(redis) = RedisServer::start() else {
        return;
    };
    let global = limiter(&redis, Quota::per_minute(1).unwrap().burst(3).unwrap());
    let per_client = RedisRateLimiter::builder(redis.url(), Quota::per_minute(1).unwrap())
        .name("per-client")
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/a", axum::routing::get(|| async { "a" }))
        .route(
            "/b",
            axum::routing::get(|| async { "b" }).route_layer(
                RedisKeyedRateLimitLayer::new(per_client, PeerIp)
                    .with_rejection(TooManyRequests::new()),
            ),
        )
        .layer(
            RedisRateLimitLayer::new(global)
                .reject()
                .with_rejection(TooManyRequests::new()),
        );
    let req = |path: &str, ip: [u8; 4]| {
        let mut r = http::Request::get(path).body(Body::empty()).unwrap();
        r.extensions_mut().insert(PeerAddr((ip, 4000).into()));
        r
    };
    let status = |r: http::Response<Body>| r.status().as_u16();
    assert_eq!(
        status(
            app.clone()
                .oneshot(req("/b", [192, 0, 2, 1]))
                .await
                .unwrap()
        ),
        200
    );
    // Same client on /b: its own limit refuses.
    assert_eq!(
        status(
            app.clone()
                .oneshot(req("/b", [192, 0, 2, 1]))
                .await
                .unwrap()
        ),
        429
    );
    // Another client: admitted; and that was the third of the global burst of 3 ...
    assert_eq!(
        status(
            app.clone()
                .oneshot(req("/b", [192, 0, 2, 2]))
                .await
                .unwrap()
        ),
        200
    );
    // ... so /a, another route, is refused by the same global budget.
    let refused = app
        .clone()
        .oneshot(req("/a", [192, 0, 2, 3]))
        .await
        .unwrap();
    assert_eq!(refused.status(), http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "60");
}

#[test]
fn services_are_send_and_sync() {
    fn send_sync<T: Send + Sync + 'static>(_: &T) {}
    let l = RedisRateLimiter::builder("redis://127.0.0.1:1", Quota::per_second(1).unwrap())
        .build()
        .unwrap();
    send_sync(&l);
    let layer = RedisRateLimitLayer::new(l.clone());
    send_sync(&layer);
    send_sync(&layer.layer(echo()));
    let keyed = RedisKeyedRateLimitLayer::new(l, GlobalKey);
    send_sync(&keyed);
    send_sync(&keyed.layer(echo()));
}

// ===== Lease mode =====

#[tokio::test]
async fn lease_mode_takes_tokens_in_batches_and_never_more_than_the_burst_at_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // B = 10, T = 60 s, leases of 4: 4 + 4 + 2 (what is left), then nothing.
    let l = RedisRateLimiter::builder(
        redis.url(),
        Quota::per_minute(1).unwrap().burst(10).unwrap(),
    )
    .lease(4)
    .build()
    .unwrap();
    let mut admitted = 0;
    for _ in 0..20 {
        admitted += u32::from(l.check().await.is_ok());
    }
    assert_eq!(admitted, 10);
    let s = l.stats();
    // Round trips: 3 grants and 1 refusal; 7 requests served from the lease pool, and the
    // other 9 refusals by Redis' "limited until" without a round trip.
    assert_eq!(
        (s.redis_decisions, s.lease_decisions, s.hinted_refusals),
        (4, 7, 9),
        "{s:?}"
    );
    assert_eq!(l.leased(), 0);
}

#[tokio::test]
async fn lease_over_admission_is_at_most_processes_times_lease_minus_one() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (p, n, b) = (4u32, 5u32, 20u32);
    let mut conn = raw(&redis.url()).await;
    // T = 60 s, B = 20. Four "processes" (separate limiters, separate connections) with
    // leases of 5.
    let quota = Quota::per_minute(1).unwrap().burst(b).unwrap();
    let fleet: Vec<_> = (0..p)
        .map(|_| {
            RedisRateLimiter::builder(redis.url(), quota)
                .name("leased")
                .lease(n)
                .build()
                .unwrap()
        })
        .collect();
    // Each takes one request: each leases 5 and keeps 4. The whole burst is taken.
    for l in &fleet {
        l.check().await.unwrap();
        assert_eq!(l.leased(), n - 1);
    }
    // The window starts. The limit goes idle long enough to be as good as new (deleting the
    // key is exactly that state: the script treats a missing key as a TAT in the past).
    let _: () = redis::cmd("DEL")
        .arg(fleet[0].redis_key())
        .query_async(&mut conn)
        .await
        .unwrap();
    // At one instant the quota allows B; the fleet admits B plus what it held.
    let mut admitted = 0;
    for _ in 0..200 {
        for l in &fleet {
            admitted += u32::from(l.check().await.is_ok());
        }
    }
    let bound = b + p * (n - 1);
    assert!(admitted <= bound, "{admitted} > {bound}");
    // And the bound is reached: the documented worst case is the real one.
    assert_eq!(admitted, bound);

    // Direct mode, same scenario: never more than B.
    let direct: Vec<_> = (0..p)
        .map(|_| {
            RedisRateLimiter::builder(redis.url(), quota)
                .name("direct")
                .build()
                .unwrap()
        })
        .collect();
    for l in &direct {
        l.check().await.unwrap();
    }
    let _: () = redis::cmd("DEL")
        .arg(direct[0].redis_key())
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut admitted = 0;
    for _ in 0..50 {
        for l in &direct {
            admitted += u32::from(l.check().await.is_ok());
        }
    }
    assert_eq!(admitted, b);
}

#[tokio::test]
async fn lease_mode_concurrent_tasks_share_one_lease() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // B = 8, leases of 4: 32 tasks at once get exactly 8 tokens, in at most a few round trips
    // (one fetch at a time per process).
    let l = RedisRateLimiter::builder(redis.url(), Quota::per_minute(1).unwrap().burst(8).unwrap())
        .lease(4)
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let l = l.clone();
            tokio::spawn(async move { l.check().await.is_ok() })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += u32::from(t.await.unwrap());
    }
    assert_eq!(admitted, 8);
    assert!(l.leased() == 0);
}

#[tokio::test]
async fn lease_mode_a_dropped_readied_service_returns_its_token_to_the_pool() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let l = RedisRateLimiter::builder(redis.url(), Quota::per_minute(1).unwrap().burst(8).unwrap())
        .lease(4)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(RedisRateLimitLayer::new(l.clone()).reject())
        .service(echo());
    // A lease of 4: one held by the service, 3 in the pool.
    svc.ready().await.unwrap();
    assert_eq!(l.leased(), 3);
    let mut other = ServiceBuilder::new()
        .layer(RedisRateLimitLayer::new(l.clone()).reject())
        .service(echo());
    other.ready().await.unwrap();
    assert_eq!(l.leased(), 2);
    // Dropped: back to the pool, which has room.
    drop(other);
    assert_eq!(l.leased(), 3);
    // The pool holds at most lease − 1: this one goes back to Redis instead.
    drop(svc);
    assert_eq!(l.leased(), 3);
    assert!(
        eventually(300, async || l.stats().refunds == 1).await,
        "no refund"
    );
    // Nothing was lost: the whole burst of 8 is still there to take.
    let mut admitted = 0;
    for _ in 0..20 {
        admitted += u32::from(l.check().await.is_ok());
    }
    assert_eq!(admitted, 8);
}

// ===== Configuration =====

#[test]
fn configuration_errors_are_readable() {
    let q = Quota::per_second(10).unwrap().burst(5).unwrap();
    let url = "redis://127.0.0.1:6379";
    let err = |b: palisade_ratelimit_redis::Builder| b.build().unwrap_err();

    let e = err(RedisRateLimiter::builder(url, q).timeout(Duration::ZERO));
    assert_eq!(e, BuildError::ZeroTimeout);
    assert_eq!(
        e.to_string(),
        "invalid Redis rate limit: the timeout must be longer than zero"
    );

    for share in [0.0, -0.5, 1.5, f64::NAN] {
        let e =
            err(RedisRateLimiter::builder(url, q).on_failure(FailurePolicy::Fallback { share }));
        assert!(matches!(e, BuildError::InvalidShare { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("the fallback share must be in (0, 1]"),
            "{e}"
        );
    }
    RedisRateLimiter::builder(url, q)
        .on_failure(FailurePolicy::Fallback { share: 1.0 })
        .build()
        .unwrap();

    let e = err(RedisRateLimiter::builder(url, q).lease(0));
    assert_eq!(e, BuildError::ZeroLease);
    assert_eq!(
        e.to_string(),
        "invalid Redis rate limit: the lease size must be at least 1"
    );
    let e = err(RedisRateLimiter::builder(url, q).lease(6));
    assert_eq!(e, BuildError::LeaseExceedsBurst { lease: 6, burst: 5 });
    assert!(
        e.to_string()
            .contains("a lease of 6 exceeds the quota's burst of 5"),
        "{e}"
    );
    RedisRateLimiter::builder(url, q).lease(5).build().unwrap();

    for bad in ["not a url", "http://127.0.0.1:6379", ""] {
        let e = err(RedisRateLimiter::builder(bad, q));
        assert!(matches!(e, BuildError::InvalidUrl { .. }), "{bad}: {e:?}");
        assert!(
            e.to_string()
                .starts_with(&format!("invalid Redis URL {bad:?}: ")),
            "{e}"
        );
    }
    // No TLS in this build.
    let e = err(RedisRateLimiter::builder("rediss://127.0.0.1:6379", q));
    assert!(matches!(e, BuildError::InvalidUrl { .. }), "{e:?}");

    let fine = Quota::new(1, Duration::from_nanos(500)).unwrap();
    let e = err(RedisRateLimiter::builder(url, fine));
    assert!(matches!(e, BuildError::QuotaTooFine { .. }), "{e:?}");
    assert!(e.to_string().contains("finer than Redis' clock"), "{e}");
}

#[test]
fn building_does_not_connect() {
    // Nothing listens on port 1; building (and making a layer) still succeeds.
    let l = RedisRateLimiter::builder("redis://127.0.0.1:1", Quota::per_second(1).unwrap())
        .build()
        .unwrap();
    let _svc = ServiceBuilder::new()
        .layer(RedisRateLimitLayer::new(l.clone()))
        .service(echo());
    assert_eq!(l.stats(), Default::default());
    assert!(!l.is_degraded());
}
