//! Decisions per second from one process against a local `redis-server` (started here on a
//! free port): direct mode (one script round trip per decision) and lease mode.
//!
//! ```sh
//! cargo bench -p palisade-ratelimit-redis --bench redis
//! ```
//!
//! The quota never binds (10⁶/s, burst 2³² − 1), so every decision is an admission and the
//! figure is the limiter's own cost. Each case runs `RUNS` times for `SECS` seconds (after a
//! short warm-up), on a fresh key each time; the median and the range are printed. The first
//! row, a bare `PING` round trip, is the floor of direct mode on the machine at that moment.
#![allow(missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use palisade_ratelimit::Quota;
use palisade_ratelimit_redis::{RedisRateLimitLayer, RedisRateLimiter};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

const SECS: u64 = 2;
const RUNS: usize = 5;

fn limiter(url: &str, name: &str, lease: Option<u32>) -> RedisRateLimiter {
    let quota = Quota::per_second(1_000_000)
        .unwrap()
        .burst(u32::MAX)
        .unwrap();
    let mut b = RedisRateLimiter::builder(url, quota)
        .name(name)
        .timeout(Duration::from_secs(1));
    if let Some(n) = lease {
        b = b.lease(n);
    }
    b.build().unwrap()
}

/// `tasks` tasks calling `check()` in a loop for SECS seconds: admitted decisions per second,
/// and the round trips to Redis they took.
async fn run_checks(l: RedisRateLimiter, tasks: usize) -> (f64, u64, u64) {
    // Warm-up: connect and load the script.
    for _ in 0..100 {
        l.check().await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let before = l.stats().redis_decisions;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (l, stop, count) = (l.clone(), stop.clone(), count.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    l.check().await.expect("the quota never binds");
                    n += 1;
                    if n.is_multiple_of(64) {
                        // Let the timer task run on a busy current-thread runtime.
                        tokio::task::yield_now().await;
                    }
                }
                count.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(SECS)).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let n = count.load(Ordering::Relaxed);
    (n as f64 / secs, n, l.stats().redis_decisions - before)
}

/// The floor: a bare `PING` round trip over the same kind of connection (redis-rs'
/// `ConnectionManager`), one at a time. Decisions per second in direct mode are bounded by it.
async fn run_ping(url: &str) -> (f64, u64, u64) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(SECS);
    let mut n = 0u64;
    while Instant::now() < deadline {
        let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        n += 1;
    }
    (n as f64 / start.elapsed().as_secs_f64(), n, n)
}

/// One service through the reject-mode layer, `ready().call()` in a loop.
async fn run_layer(l: RedisRateLimiter) -> (f64, u64, u64) {
    let mut svc = ServiceBuilder::new()
        .layer(RedisRateLimitLayer::new(l.clone()).reject())
        .service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>(()) });
    for _ in 0..100 {
        svc.ready().await.unwrap().call(()).await.unwrap();
    }
    let before = l.stats().redis_decisions;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(SECS);
    let mut n = 0u64;
    while Instant::now() < deadline {
        svc.ready().await.unwrap().call(()).await.unwrap();
        n += 1;
    }
    (
        n as f64 / start.elapsed().as_secs_f64(),
        n,
        l.stats().redis_decisions - before,
    )
}

fn main() {
    let Some(redis) = support::RedisServer::start() else {
        eprintln!("redis-server not found: nothing to measure");
        return;
    };
    let url = redis.url();
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    println!(
        "{:<44} {:>12} {:>24} {:>16}",
        "case", "decisions/s", "(min–max of 5 runs)", "decisions/trip"
    );
    let mut key = 0u32;
    let mut case = |name: &str,
                    mut one: Box<dyn FnMut(RedisRateLimiter) -> (f64, u64, u64) + '_>,
                    lease: Option<u32>| {
        let mut rates = Vec::new();
        let mut per_trip = 0.0;
        for _ in 0..RUNS {
            key += 1;
            let (rate, decisions, trips) = one(limiter(&url, &format!("bench-{key}"), lease));
            per_trip = decisions as f64 / trips.max(1) as f64;
            rates.push(rate);
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "{name:<44} {:>12.0} {:>24} {:>16.1}",
            rates[RUNS / 2],
            format!("({:.0}–{:.0})", rates[0], rates[RUNS - 1]),
            per_trip
        );
    };
    case(
        "PING round trip (the floor), 1 task",
        Box::new(|_| current.block_on(run_ping(&url))),
        None,
    );
    case(
        "check(), direct, 1 task",
        Box::new(|l| current.block_on(run_checks(l, 1))),
        None,
    );
    case(
        "check(), direct, 32 tasks (pipelined)",
        Box::new(|l| multi.block_on(run_checks(l, 32))),
        None,
    );
    for n in [10, 100] {
        case(
            &format!("check(), lease {n}, 1 task"),
            Box::new(|l| current.block_on(run_checks(l, 1))),
            Some(n),
        );
        case(
            &format!("check(), lease {n}, 32 tasks"),
            Box::new(|l| multi.block_on(run_checks(l, 32))),
            Some(n),
        );
    }
    case(
        "layer (reject), direct, 1 service",
        Box::new(|l| current.block_on(run_layer(l))),
        None,
    );
    case(
        "layer (reject), lease 100, 1 service",
        Box::new(|l| current.block_on(run_layer(l))),
        Some(100),
    );
    drop(redis);
}
