//! Idle timeout, maximum lifetime and the idle limit: checked on checkout, on return, and by a
//! background sweep that runs without being asked.

mod common;

use std::time::Duration;

use common::*;
use tokio::time::advance;

/// No checkout at all: the sweep alone closes a connection idle past the idle timeout
/// (sweep every 500 ms for a 1 s idle timeout), and not before.
#[tokio::test(start_paused = true)]
async fn the_sweep_closes_idle_connections_without_any_checkout() {
    let connector = Connector::new();
    let config = limits(2, 2)
        .idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    assert_eq!(config.sweep_interval(), Some(Duration::from_millis(500)));
    let (mut pool, handle) = pool(config, &connector);
    send_now(&mut pool, Req::new("k"));
    assert_eq!(handle.stats().total.idle, 1);
    // Let the pool's background task start.
    settle().await;

    advance(Duration::from_millis(999)).await;
    settle().await;
    assert_eq!(handle.stats().total.idle, 1);
    assert!(!connector.conn(1).is_dropped());

    // Past the idle timeout plus one sweep interval.
    advance(Duration::from_millis(501)).await;
    settle().await;
    let t = handle.stats().total;
    assert_eq!((t.idle, t.evicted, t.closed), (0, 1, 1), "{t:?}");
    assert!(connector.conn(1).is_dropped());
    assert_eq!(connector.open(), 0);
    // The key, with nothing left, is forgotten.
    assert!(handle.stats().keys.is_empty());
}

/// The sweep closes idle connections past their maximum lifetime.
#[tokio::test(start_paused = true)]
async fn the_sweep_closes_idle_connections_past_their_lifetime() {
    let connector = Connector::new();
    let config = limits(2, 2)
        .no_idle_timeout()
        .max_lifetime(Duration::from_secs(2))
        .lifetime_jitter(Duration::ZERO)
        .build()
        .unwrap();
    assert_eq!(config.sweep_interval(), Some(Duration::from_secs(1)));
    let (mut pool, handle) = pool(config, &connector);
    send_now(&mut pool, Req::new("k"));
    settle().await;
    advance(Duration::from_millis(1_999)).await;
    settle().await;
    assert_eq!(handle.stats().total.idle, 1);
    advance(Duration::from_millis(1_001)).await;
    settle().await;
    let t = handle.stats().total;
    assert_eq!((t.idle, t.evicted), (0, 1), "{t:?}");
    assert!(connector.conn(1).is_dropped());
}

/// A sweep interval set explicitly is the one used.
#[tokio::test(start_paused = true)]
async fn an_explicit_sweep_interval_is_used() {
    let connector = Connector::new();
    let config = limits(2, 2)
        .idle_timeout(Duration::from_secs(1))
        .sweep_interval(Duration::from_secs(10))
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    send_now(&mut pool, Req::new("k"));
    settle().await;
    advance(Duration::from_millis(9_999)).await;
    settle().await;
    assert_eq!(handle.stats().total.idle, 1, "swept before the interval");
    // Timers have a resolution of 1 ms.
    advance(Duration::from_millis(2)).await;
    settle().await;
    assert_eq!(handle.stats().total.idle, 0);
}

/// On checkout, an idle connection past the idle timeout is closed and a new one opened, even
/// before any sweep.
#[tokio::test(start_paused = true)]
async fn checkout_skips_an_idle_connection_past_the_idle_timeout() {
    let connector = Connector::with_limits(1, 1);
    let config = limits(1, 1)
        .idle_timeout(Duration::from_secs(1))
        .sweep_interval(Duration::from_secs(300))
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    send_now(&mut pool, Req::new("k"));
    advance(Duration::from_millis(999)).await;
    assert_eq!(send_now(&mut pool, Req::new("k")).conn, 1);
    advance(Duration::from_secs(1)).await;
    assert_eq!(send_now(&mut pool, Req::new("k")).conn, 2);
    assert!(connector.conn(1).is_dropped());
    let k = key(&handle, "k");
    assert_eq!(
        (k.opened, k.reused, k.evicted, k.closed, k.idle),
        (2, 1, 1, 1, 1)
    );
    assert_eq!(connector.violations(), Vec::<String>::new());
}

/// On checkout, an idle connection past its lifetime is closed and a new one opened.
#[tokio::test(start_paused = true)]
async fn checkout_skips_an_idle_connection_past_its_lifetime() {
    let connector = Connector::with_limits(1, 1);
    let config = limits(1, 1)
        .no_idle_timeout()
        .max_lifetime(Duration::from_secs(5))
        .lifetime_jitter(Duration::ZERO)
        .sweep_interval(Duration::from_secs(300))
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    send_now(&mut pool, Req::new("k"));
    advance(Duration::from_millis(4_999)).await;
    assert_eq!(send_now(&mut pool, Req::new("k")).conn, 1);
    advance(Duration::from_millis(1)).await;
    assert_eq!(send_now(&mut pool, Req::new("k")).conn, 2);
    assert!(connector.conn(1).is_dropped());
    assert_eq!(key(&handle, "k").evicted, 1);
}

/// The idle timeout counts from the last return, not from the open: a connection in steady use
/// is never closed by it.
#[tokio::test(start_paused = true)]
async fn the_idle_timeout_counts_from_the_last_return() {
    let connector = Connector::new();
    let config = limits(1, 1)
        .idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    for _ in 0..10 {
        assert_eq!(send_now(&mut pool, Req::new("k")).conn, 1);
        advance(Duration::from_millis(800)).await;
        settle().await;
    }
    assert_eq!(handle.stats().total.evicted, 0);
}

/// Lifetimes are shortened by at most the jitter: every connection expires within
/// `[lifetime - jitter, lifetime]`.
#[tokio::test(start_paused = true)]
async fn lifetimes_expire_within_the_jitter_window() {
    let connector = Connector::new();
    let config = limits(8, 8)
        .no_idle_timeout()
        .max_lifetime(Duration::from_secs(10))
        .lifetime_jitter(Duration::from_secs(4))
        .sweep_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    let mut holds = Vec::new();
    let mut futs = Vec::new();
    for i in 0..8 {
        let (r, t) = Req::new("k").id(i).held();
        let mut f = start(&mut pool, r);
        pending(&mut f);
        holds.push(t);
        futs.push(f);
    }
    for (t, mut f) in holds.into_iter().zip(futs) {
        t.send(()).unwrap();
        ok(&mut f);
    }
    assert_eq!(handle.stats().total.idle, 8);
    advance(Duration::from_millis(5_999)).await;
    settle().await;
    assert_eq!(
        handle.stats().total.idle,
        8,
        "expired before lifetime - jitter"
    );
    advance(Duration::from_millis(4_001)).await;
    settle().await;
    assert_eq!(handle.stats().total.idle, 0, "alive after the lifetime");
}

/// The default jitter is a tenth of the lifetime: a connection may go up to 10 % early, never
/// later than the lifetime.
#[tokio::test(start_paused = true)]
async fn the_default_jitter_is_a_tenth_of_the_lifetime() {
    let connector = Connector::new();
    let config = limits(4, 4)
        .no_idle_timeout()
        .max_lifetime(Duration::from_secs(10))
        .sweep_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    send_now(&mut pool, Req::new("k"));
    settle().await;
    advance(Duration::from_millis(8_999)).await;
    settle().await;
    assert_eq!(handle.stats().total.idle, 1);
    // The lifetime plus one sweep interval.
    advance(Duration::from_millis(1_101)).await;
    settle().await;
    assert_eq!(handle.stats().total.idle, 0);
}

/// Beyond `max_idle_per_key`, a returned connection is closed.
#[tokio::test(start_paused = true)]
async fn connections_beyond_max_idle_per_key_are_closed_on_return() {
    let connector = Connector::new();
    let config = limits(3, 3).max_idle_per_key(1).build().unwrap();
    let (mut pool, handle) = pool(config, &connector);
    let (r1, t1) = Req::new("k").held();
    let (r2, t2) = Req::new("k").held();
    let mut f1 = start(&mut pool, r1);
    let mut f2 = start(&mut pool, r2);
    pending(&mut f1);
    pending(&mut f2);
    t1.send(()).unwrap();
    t2.send(()).unwrap();
    ok(&mut f1);
    ok(&mut f2);
    let k = key(&handle, "k");
    assert_eq!((k.idle, k.closed, k.evicted), (1, 1, 1));
    assert!(connector.conn(2).is_dropped());
    assert!(!connector.conn(1).is_dropped());
}

/// A key with nothing left (no connection, no waiter, no backoff) is forgotten by the sweep,
/// also when its last connect failed: with an unbounded set of keys (a crawler, a proxy) the
/// map must not keep every host that ever failed.
#[tokio::test(start_paused = true)]
async fn a_key_whose_connect_failed_is_forgotten_by_the_sweep() {
    let connector = Connector::new();
    let config = limits(1, 2)
        .idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    // A successful connect starts the sweep.
    send_now(&mut pool, Req::new("alive"));
    settle().await;
    connector.fail_with("no route to host");
    let mut f = start(&mut pool, Req::new("dead"));
    assert!(err(&mut f).downcast_ref::<ConnectError>().is_some());
    for _ in 0..10 {
        advance(Duration::from_millis(500)).await;
        settle().await;
    }
    let stats = handle.stats();
    assert_eq!(stats.total.failed, 1);
    assert!(
        stats.keys.is_empty(),
        "keys still remembered after the sweep: {:?}",
        stats.keys
    );
}

/// Control for the test above: a key that only ever succeeded is forgotten once its idle
/// connection is swept.
#[tokio::test(start_paused = true)]
async fn a_key_with_nothing_left_is_forgotten_by_the_sweep() {
    let connector = Connector::new();
    let config = limits(1, 2)
        .idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    send_now(&mut pool, Req::new("a"));
    settle().await;
    assert_eq!(handle.stats().keys.len(), 1);
    for _ in 0..10 {
        advance(Duration::from_millis(500)).await;
        settle().await;
    }
    let stats = handle.stats();
    assert!(stats.keys.is_empty(), "{:?}", stats.keys);
    assert_eq!((stats.total.opened, stats.total.evicted), (1, 1));
}

/// With no idle timeout and no lifetime nothing expires and no sweep runs (no timer at all),
/// yet keys with nothing left do not pile up: once the map has doubled (64 keys at first), a
/// new key forgets them. A key that keeps an idle connection stays.
#[tokio::test(start_paused = true)]
async fn keys_with_nothing_left_are_forgotten_as_new_keys_come_when_nothing_expires() {
    let connector = Connector::new();
    let config = limits(1, 100).no_idle_timeout().build().unwrap();
    assert_eq!(config.sweep_interval(), None);
    let (mut pool, handle) = pool(config, &connector);
    // "k0" keeps its connection idle; the 63 others break after their request: discarded,
    // those keys have nothing left.
    send_now(&mut pool, Req::new("k0"));
    for i in 1..64 {
        send_now(&mut pool, Req::new(&format!("k{i}")).break_after());
    }
    settle().await;
    assert_eq!(handle.stats().keys.len(), 64);
    // The 65th key finds the map at 64: the unused ones go.
    send_now(&mut pool, Req::new("new"));
    let stats = handle.stats();
    let mut keys: Vec<_> = stats.keys.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["k0", "new"]);
    assert_eq!(stats.total.idle, 2);
    assert_eq!(stats.total.opened, 65);
}

/// A connection's idle time starts when it comes back, not when it was checked out: a call
/// that took 8 s, then 5 s idle, is 5 s idle (under a 10 s idle timeout), and is reused.
#[tokio::test(start_paused = true)]
async fn idle_time_counts_from_the_return_not_from_the_checkout() {
    let connector = Connector::new();
    let config = limits(1, 1)
        .idle_timeout(Duration::from_secs(10))
        .sweep_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    let (req, done) = Req::new("k").held();
    let mut call = start(&mut pool, req);
    pending(&mut call);
    advance(Duration::from_secs(8)).await;
    done.send(()).unwrap();
    ok(&mut call);
    assert_eq!(key(&handle, "k").idle, 1);

    advance(Duration::from_secs(5)).await;
    assert_eq!(
        send_now(&mut pool, Req::new("k")).conn,
        1,
        "reused, not evicted"
    );
    let t = handle.stats().total;
    assert_eq!((t.opened, t.reused, t.evicted), (1, 1, 0), "{t:?}");
    assert_eq!(connector.opened(), 1);
}
