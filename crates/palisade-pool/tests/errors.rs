//! Errors as they are: the connector's own error, unchanged and at once; the pool's markers
//! (`ConnectTimeout`, `PoolTimeout`, `PoolFull`, `ConnectBackoff`) when their condition holds,
//! and not a moment before.

mod common;

use std::time::Duration;

use common::*;
use palisade_pool::{ConnectBackoff, ConnectTimeout, PoolFull, PoolTimeout};
use tokio::time::{advance, Instant};

/// The connector's error reaches the caller with its type and message, on the first poll,
/// without any time passing, and is counted as a failed connect.
#[tokio::test(start_paused = true)]
async fn a_connect_error_reaches_the_caller_unchanged_and_at_once() {
    let connector = Connector::new();
    connector.fail_with("dns error: no such host api.example");
    let (mut pool, handle) = pool(limits(1, 1).build().unwrap(), &connector);
    let t_start = Instant::now();
    let mut f = start(&mut pool, Req::new("api.example"));
    let e = err(&mut f);
    assert_eq!(Instant::now(), t_start);
    assert_eq!(
        e.downcast_ref::<ConnectError>(),
        Some(&ConnectError("dns error: no such host api.example".into())),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "dns error: no such host api.example");
    let k = key(&handle, "api.example");
    assert_eq!((k.failed, k.opened, k.connecting, k.waiters), (1, 0, 0, 0));
    assert_eq!(handle.stats().total.failed, 1);
    // The slot is free again.
    connector.succeed();
    assert_eq!(send_now(&mut pool, Req::new("api.example")).conn, 1);
}

/// A connect that fails after a while (gated): the error reaches its caller as soon as the
/// connector answers; each waiter behind it is woken in turn to connect itself and gets its own
/// outcome.
#[tokio::test(start_paused = true)]
async fn waiters_behind_a_failed_connect_connect_themselves() {
    let connector = Connector::with_limits(1, 1);
    connector.gated();
    let (mut pool, handle) = pool(limits(1, 1).build().unwrap(), &connector);
    let mut f0 = start(&mut pool, Req::new("k").id(0));
    let mut w1 = start(&mut pool, Req::new("k").id(1));
    let mut w2 = start(&mut pool, Req::new("k").id(2));
    pending(&mut f0);
    pending(&mut w1);
    pending(&mut w2);
    assert_eq!(connector.connects(), 1);

    assert!(connector.finish_connect(Err("connection refused (1)")));
    assert!(f0.is_woken());
    let e = err(&mut f0);
    assert_eq!(
        e.downcast_ref::<ConnectError>().map(|e| e.0.as_str()),
        Some("connection refused (1)")
    );
    assert!(w1.is_woken());
    assert!(!w2.is_woken());
    pending(&mut w1);
    assert_eq!(connector.connects(), 2);

    assert!(connector.finish_connect(Err("connection refused (2)")));
    let e = err(&mut w1);
    assert_eq!(e.to_string(), "connection refused (2)");
    assert!(w2.is_woken());
    pending(&mut w2);
    assert_eq!(connector.connects(), 3);
    assert!(connector.finish_connect(Ok(())));
    let got = ok(&mut w2);
    assert_eq!((got.req, got.conn), (2, 1));

    let k = key(&handle, "k");
    assert_eq!((k.failed, k.opened, k.idle, k.waiters), (2, 1, 1, 0));
}

/// A connect that takes longer than the connect timeout fails with `ConnectTimeout` at the
/// timeout, not before; the dial is abandoned and its slot freed.
#[tokio::test(start_paused = true)]
async fn a_slow_connect_fails_with_connect_timeout_at_the_timeout() {
    let connector = Connector::with_limits(1, 1);
    connector.gated();
    let config = limits(1, 1)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    let mut f = start(&mut pool, Req::new("k"));
    pending(&mut f);
    advance(Duration::from_millis(1_999)).await;
    settle().await;
    pending(&mut f);
    // Timers have a resolution of 1 ms: by then it has fired.
    advance(Duration::from_millis(2)).await;
    settle().await;
    assert!(f.is_woken());
    let e = err(&mut f);
    let timeout = e
        .downcast_ref::<ConnectTimeout>()
        .expect("a ConnectTimeout");
    assert_eq!(timeout.after(), Duration::from_secs(2));
    assert_eq!(
        connector.pending_connects(),
        0,
        "the dial was not abandoned"
    );
    let k = key(&handle, "k");
    assert_eq!((k.failed, k.connecting), (1, 0));
    connector.succeed();
    assert_eq!(send_now(&mut pool, Req::new("k")).conn, 1);
}

/// A waiter that gets no connection within the checkout timeout fails with `PoolTimeout` at
/// the timeout, not before, and leaves the queue: the connection returned later goes idle.
#[tokio::test(start_paused = true)]
async fn a_waiter_fails_with_pool_timeout_at_the_checkout_timeout() {
    let connector = Connector::with_limits(1, 1);
    let config = limits(1, 1)
        .checkout_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    let (r0, t0) = Req::new("k").id(0).held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut waiter = start(&mut pool, Req::new("k").id(1));
    pending(&mut waiter);
    advance(Duration::from_millis(4_999)).await;
    settle().await;
    pending(&mut waiter);
    // Timers have a resolution of 1 ms: by then it has fired.
    advance(Duration::from_millis(2)).await;
    settle().await;
    assert!(waiter.is_woken());
    let e = err(&mut waiter);
    let timeout = e.downcast_ref::<PoolTimeout>().expect("a PoolTimeout");
    assert_eq!(timeout.waited(), Duration::from_secs(5));
    assert_eq!(key(&handle, "k").waiters, 0);

    t0.send(()).unwrap();
    ok(&mut f0);
    let k = key(&handle, "k");
    assert_eq!((k.idle, k.leased), (1, 0));
}

/// Waiters time out at their own deadlines, over keys, even when no connection was ever
/// opened (the only connect is still in progress).
#[tokio::test(start_paused = true)]
async fn each_waiter_times_out_at_its_own_deadline() {
    let connector = Connector::with_limits(1, 1);
    connector.gated();
    let config = limits(1, 1)
        .checkout_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    let mut f0 = start(&mut pool, Req::new("a").id(0));
    pending(&mut f0);
    let mut w1 = start(&mut pool, Req::new("a").id(1));
    pending(&mut w1);
    advance(Duration::from_secs(2)).await;
    settle().await;
    let mut w2 = start(&mut pool, Req::new("b").id(2));
    pending(&mut w2);
    let mut w3 = start(&mut pool, Req::new("a").id(3));
    pending(&mut w3);

    advance(Duration::from_millis(2_999)).await;
    settle().await;
    pending(&mut w1);
    advance(Duration::from_millis(2)).await;
    settle().await;
    assert!(err(&mut w1).downcast_ref::<PoolTimeout>().is_some());
    assert!(!w2.is_woken() && !w3.is_woken());
    pending(&mut w2);
    pending(&mut w3);
    assert_eq!(handle.stats().total.waiters, 2);

    advance(Duration::from_millis(1_997)).await;
    settle().await;
    pending(&mut w2);
    pending(&mut w3);
    advance(Duration::from_millis(2)).await;
    settle().await;
    assert!(err(&mut w2).downcast_ref::<PoolTimeout>().is_some());
    assert!(err(&mut w3).downcast_ref::<PoolTimeout>().is_some());
    assert_eq!(handle.stats().total.waiters, 0);
    // The connect itself is still in progress, and still completes.
    assert!(connector.finish_connect(Ok(())));
    assert_eq!(ok(&mut f0).req, 0);
}

/// A waiter served before its deadline is not failed at its deadline; a waiter that arrives
/// later still gets its own full timeout.
#[tokio::test(start_paused = true)]
async fn a_served_waiter_does_not_shorten_the_next_ones_timeout() {
    let connector = Connector::with_limits(1, 1);
    let config = limits(1, 1)
        .checkout_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (mut pool, _handle) = pool(config, &connector);
    let (r0, t0) = Req::new("a").id(0).held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let (r1, t1) = Req::new("a").id(1).held();
    let mut w1 = start(&mut pool, r1);
    pending(&mut w1);
    settle().await;
    advance(Duration::from_secs(1)).await;
    t0.send(()).unwrap();
    ok(&mut f0);
    pending(&mut w1); // served: its request is in flight
    advance(Duration::from_secs(3)).await;
    settle().await;
    let mut w2 = start(&mut pool, Req::new("a").id(2));
    pending(&mut w2);
    // w1's old deadline (t = 5 s) passes: nothing happens to either.
    advance(Duration::from_secs(2)).await;
    settle().await;
    pending(&mut w1);
    pending(&mut w2);
    // w2's own deadline is t = 9 s.
    advance(Duration::from_millis(2_998)).await;
    settle().await;
    pending(&mut w2);
    t1.send(()).unwrap();
    assert_eq!(ok(&mut w1).req, 1);
    assert_eq!(ok(&mut w2).req, 2);
}

/// The checkout timeout bounds the wait in the queue only: a waiter granted a slot just before
/// its checkout timeout is then bounded by the connect timeout.
#[tokio::test(start_paused = true)]
async fn the_checkout_timeout_does_not_cut_short_a_granted_connect() {
    let connector = Connector::with_limits(1, 1);
    let config = limits(1, 1)
        .checkout_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let (mut pool, _handle) = pool(config, &connector);
    let (r0, t0) = Req::new("k").id(0).break_after().held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut waiter = start(&mut pool, Req::new("k").id(1));
    pending(&mut waiter);
    advance(Duration::from_secs(4)).await;
    connector.gated();
    t0.send(()).unwrap();
    ok(&mut f0);
    pending(&mut waiter);
    // Past the checkout timeout, within the connect timeout.
    advance(Duration::from_secs(2)).await;
    pending(&mut waiter);
    assert!(connector.finish_connect(Ok(())));
    assert_eq!(ok(&mut waiter).conn, 2);
}

/// With `max_waiters` checkouts queued, the next is refused at once with `PoolFull`.
#[tokio::test(start_paused = true)]
async fn the_checkout_beyond_max_waiters_fails_with_pool_full_at_once() {
    let connector = Connector::with_limits(1, 1);
    let config = limits(1, 1).max_waiters(2).build().unwrap();
    let (mut pool, handle) = pool(config, &connector);
    let (r0, t0) = Req::new("a").held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    // Waiters of different keys count together.
    let mut w1 = start(&mut pool, Req::new("a").id(1));
    let mut w2 = start(&mut pool, Req::new("b").id(2));
    pending(&mut w1);
    pending(&mut w2);
    let t_start = Instant::now();
    let mut w3 = start(&mut pool, Req::new("a").id(3));
    let e = err(&mut w3);
    assert_eq!(Instant::now(), t_start);
    let full = e.downcast_ref::<PoolFull>().expect("a PoolFull");
    assert_eq!(full.max_waiters(), 2);
    assert_eq!(handle.stats().total.waiters, 2);
    // Once one waiter is served the queue has room again.
    t0.send(()).unwrap();
    ok(&mut f0);
    ok(&mut w1);
    let (r4, _t4) = Req::new("a").id(4).held();
    let mut w4 = start(&mut pool, r4);
    pending(&mut w4);
}

/// `max_waiters(0)`: a checkout never waits.
#[tokio::test(start_paused = true)]
async fn zero_max_waiters_means_a_checkout_never_waits() {
    let connector = Connector::with_limits(1, 1);
    let config = limits(1, 1).max_waiters(0).build().unwrap();
    let (mut pool, _handle) = pool(config, &connector);
    let (r0, _t0) = Req::new("a").held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut w = start(&mut pool, Req::new("a"));
    assert!(err(&mut w).downcast_ref::<PoolFull>().is_some());
}

fn backoff_config(after: u32, base: u64, max: u64) -> palisade_pool::Config {
    limits(1, 1)
        .connect_backoff(after, Duration::from_secs(base), Duration::from_secs(max))
        .build()
        .unwrap()
}

/// After N failures in a row, new connects to the key are refused with `ConnectBackoff` (with
/// `retry_after`, the failure count and the last error), without calling the connector; once
/// the backoff has passed, the pool connects again.
#[tokio::test(start_paused = true)]
async fn connect_backoff_after_n_failures_then_connects_again() {
    let connector = Connector::new();
    connector.fail_with("connection refused");
    let (mut pool, handle) = pool(backoff_config(2, 1, 10), &connector);
    for _ in 0..2 {
        let mut f = start(&mut pool, Req::new("k"));
        assert!(err(&mut f).downcast_ref::<ConnectError>().is_some());
    }
    assert_eq!(connector.connects(), 2);

    let mut f = start(&mut pool, Req::new("k"));
    let e = err(&mut f);
    let backoff = e
        .downcast_ref::<ConnectBackoff>()
        .expect("a ConnectBackoff");
    assert_eq!(backoff.retry_after(), Duration::from_secs(1));
    assert_eq!(backoff.failures(), 2);
    assert_eq!(backoff.last_error(), "connection refused");
    assert!(e.to_string().contains("connection refused"), "{e}");
    assert_eq!(
        connector.connects(),
        2,
        "the connector was called during the backoff"
    );

    advance(Duration::from_millis(400)).await;
    let mut f = start(&mut pool, Req::new("k"));
    let e = err(&mut f);
    let backoff = e
        .downcast_ref::<ConnectBackoff>()
        .expect("a ConnectBackoff");
    assert_eq!(backoff.retry_after(), Duration::from_millis(600));
    // Other keys are not held back.
    connector.succeed();
    send_now(&mut pool, Req::new("other"));

    advance(Duration::from_millis(600)).await;
    assert_eq!(send_now(&mut pool, Req::new("k")).key, "k");
    assert_eq!(connector.connects_for("k"), 3);
    assert_eq!(key(&handle, "k").failed, 2);
}

/// Each further failure doubles the backoff, up to the maximum; a success resets it.
#[tokio::test(start_paused = true)]
async fn connect_backoff_doubles_up_to_max_and_resets_on_success() {
    let connector = Connector::new();
    connector.fail_with("refused");
    let (mut pool, _handle) = pool(backoff_config(1, 1, 3), &connector);
    let mut expect = Vec::new();
    for _ in 0..4 {
        let mut f = start(&mut pool, Req::new("k"));
        assert!(err(&mut f).downcast_ref::<ConnectError>().is_some());
        let mut f = start(&mut pool, Req::new("k"));
        let e = err(&mut f);
        let retry = e
            .downcast_ref::<ConnectBackoff>()
            .expect("a ConnectBackoff")
            .retry_after();
        expect.push(retry);
        advance(retry).await;
    }
    assert_eq!(
        expect,
        [1, 2, 3, 3].map(Duration::from_secs),
        "backoff after failures 1..4"
    );
    connector.succeed();
    // (The connection breaks after its response, so the next checkout has to connect.)
    send_now(&mut pool, Req::new("k").break_after());
    connector.fail_with("refused again");
    let mut f = start(&mut pool, Req::new("k"));
    assert!(err(&mut f).downcast_ref::<ConnectError>().is_some());
    let mut f = start(&mut pool, Req::new("k"));
    let e = err(&mut f);
    assert_eq!(
        e.downcast_ref::<ConnectBackoff>().unwrap().retry_after(),
        Duration::from_secs(1),
        "a success did not reset the backoff"
    );
}

/// The backoff keeps doubling while the idle sweep runs: the sweep must not forget a key's
/// failure count merely because the current backoff window has passed.
#[tokio::test(start_paused = true)]
async fn the_idle_sweep_does_not_reset_the_connect_backoff() {
    let connector = Connector::new();
    let config = limits(1, 2)
        .idle_timeout(Duration::from_secs(1))
        .connect_backoff(2, Duration::from_secs(1), Duration::from_secs(60))
        .build()
        .unwrap();
    let (mut pool, _handle) = pool(config, &connector);
    // A successful connect elsewhere starts the sweep (every 500 ms).
    send_now(&mut pool, Req::new("healthy"));
    settle().await;
    connector.fail_with("refused");
    for _ in 0..2 {
        let mut f = start(&mut pool, Req::new("k"));
        assert!(err(&mut f).downcast_ref::<ConnectError>().is_some());
    }
    let mut f = start(&mut pool, Req::new("k"));
    assert_eq!(
        err(&mut f)
            .downcast_ref::<ConnectBackoff>()
            .unwrap()
            .retry_after(),
        Duration::from_secs(1)
    );
    // The window passes and a sweep runs before the next attempt.
    advance(Duration::from_millis(1_500)).await;
    settle().await;
    let mut f = start(&mut pool, Req::new("k"));
    assert!(err(&mut f).downcast_ref::<ConnectError>().is_some());
    // Third failure in a row: the backoff doubles to 2 s.
    let mut f = start(&mut pool, Req::new("k"));
    let e = err(&mut f);
    let backoff = e
        .downcast_ref::<ConnectBackoff>()
        .unwrap_or_else(|| panic!("expected a ConnectBackoff, got {e}"));
    assert_eq!(backoff.failures(), 3);
    assert_eq!(backoff.retry_after(), Duration::from_secs(2));
}

/// A connection that fails its first `poll_ready` (before any request) reaches the caller with
/// its own error.
#[tokio::test(start_paused = true)]
async fn a_fresh_connection_that_is_broken_reports_its_own_error() {
    let connector = Connector::with_limits(1, 1);
    connector.gated();
    let (mut pool, handle) = pool(limits(1, 1).build().unwrap(), &connector);
    let mut f = start(&mut pool, Req::new("k"));
    pending(&mut f);
    connector.start_busy(true);
    assert!(connector.finish_connect(Ok(())));
    pending(&mut f);
    connector.conn(1).set_broken();
    assert!(f.is_woken());
    let e = err(&mut f);
    assert_eq!(e.downcast_ref::<ConnBroken>(), Some(&ConnBroken(1)));
    assert!(connector.conn(1).is_dropped());
    let k = key(&handle, "k");
    assert_eq!((k.leased, k.closed, k.opened), (0, 1, 1));
}

/// A connection that is established but never becomes ready (a handshake that stalls after
/// the connector answered, a connection driver that never runs) is bounded by the connect
/// timeout like the rest of the connect: the checkout must not hang.
#[tokio::test(start_paused = true)]
async fn a_fresh_connection_that_never_becomes_ready_is_bounded_by_the_connect_timeout() {
    let connector = Connector::with_limits(1, 1);
    connector.start_busy(true);
    let config = limits(1, 1)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    let mut f = start(&mut pool, Req::new("k"));
    pending(&mut f);
    advance(Duration::from_millis(2_001)).await;
    settle().await;
    let outcome = f.poll();
    let timed_out = matches!(
        &outcome,
        std::task::Poll::Ready(Err(e)) if e.downcast_ref::<ConnectTimeout>().is_some()
    );
    assert!(timed_out, "still waiting for readiness: {outcome:?}");
    assert_eq!(key(&handle, "k").leased, 0);
}

/// A request's own error reaches the caller unchanged; the healthy connection goes back idle.
#[tokio::test(start_paused = true)]
async fn a_request_error_reaches_the_caller_and_the_connection_is_kept() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(limits(1, 1).build().unwrap(), &connector);
    let mut f = start(&mut pool, Req::new("k").id(7).fail());
    let e = err(&mut f);
    assert_eq!(e.downcast_ref::<CallFailed>(), Some(&CallFailed(7)));
    let k = key(&handle, "k");
    assert_eq!((k.idle, k.closed), (1, 0));
    assert_eq!(send_now(&mut pool, Req::new("k")).conn, 1);
}
