//! A regression from a review of 81d6797: five live runtimes taking turns made a new Redis
//! connection on every decision (managers were dropped in insertion order, 4 kept).
mod support;

use palisade_ratelimit::Quota;
use palisade_ratelimit_redis::RedisRateLimiter;
use support::{raw, RedisServer};

async fn connections_received(url: &str) -> u64 {
    let mut conn = raw(url).await;
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Five live runtimes deciding in turn (thread-per-core servers run one per core): the
/// insertion-ordered list of four evicts a runtime still in use, and every decision makes a
/// new ConnectionManager, i.e. a new Redis connection.
#[test]
fn five_live_runtimes_do_not_reconnect_on_every_decision() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let l = RedisRateLimiter::builder(
        url.clone(),
        Quota::per_second(100_000).unwrap().burst(1000).unwrap(),
    )
    .name("rv-fx2-churn")
    .build()
    .unwrap();
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let probe = rt();
    let runtimes: Vec<_> = (0..5).map(|_| rt()).collect();
    // One round: each runtime's manager made once.
    for r in &runtimes {
        r.block_on(l.check()).unwrap();
    }
    let before = probe.block_on(connections_received(&url));
    for _ in 0..3 {
        for r in &runtimes {
            r.block_on(l.check()).unwrap();
        }
    }
    let after = probe.block_on(connections_received(&url));
    // `before` counted the probe's own connection; `after` counts one more for itself.
    let new = after - before - 1;
    assert_eq!(
        new, 0,
        "15 decisions on 5 live runtimes opened {new} new Redis connection(s)"
    );
    let s = l.stats();
    assert_eq!(s.failures, 0, "{s:?}");
}
