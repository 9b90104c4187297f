//! The classic pool bugs, one test each: lost wake-ups, leaked slots of broken connections,
//! hot connections living past their lifetime, one checkout connecting twice, and a checkout
//! parked while an idle connection could serve it.

mod common;

use std::time::Duration;

use common::*;
use tokio::time::Instant;

// (a) Lost wake-up ------------------------------------------------------------------------------

/// A checkout registers as a waiter; the connection comes back before the waiter runs again.
/// The waiter is woken and gets it at once: no time passes, no timeout is needed.
#[tokio::test(start_paused = true)]
async fn a_connection_returned_before_the_waiter_runs_again_still_reaches_it() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(limits(1, 1).build().unwrap(), &connector);
    let t_start = Instant::now();
    let (r0, t0) = Req::new("k").id(0).held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut waiter = start(&mut pool, Req::new("k").id(1));
    pending(&mut waiter);
    assert_eq!(key(&handle, "k").waiters, 1);
    assert!(!waiter.is_woken());

    // Returned while the waiter is parked.
    t0.send(()).unwrap();
    ok(&mut f0);
    assert!(
        waiter.is_woken(),
        "the waiter was not woken: a lost wake-up"
    );
    let got = ok(&mut waiter);
    assert_eq!((got.req, got.conn), (1, 1));
    assert_eq!(Instant::now(), t_start);
    assert_eq!(connector.connects(), 1);
}

/// The same on a runtime: the waiter is a task that awaits, the connection comes back from
/// another task; the waiter finishes without any time passing.
#[tokio::test(start_paused = true)]
async fn a_waiting_task_is_woken_by_a_return_from_another_task() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, _handle) = pool(limits(1, 1).build().unwrap(), &connector);
    let t_start = Instant::now();
    let (r0, t0) = Req::new("k").id(0).held();
    let mut holder = pool.clone();
    let first = tokio::spawn(async move {
        use tower::{Service, ServiceExt};
        holder.ready().await.unwrap().call(r0).await
    });
    settle().await;
    let mut waiter_pool = pool.clone();
    let waiter = tokio::spawn(async move {
        use tower::{Service, ServiceExt};
        waiter_pool
            .ready()
            .await
            .unwrap()
            .call(Req::new("k").id(1))
            .await
    });
    settle().await;
    assert!(!waiter.is_finished());
    t0.send(()).unwrap();
    // Awaiting with paused time would jump the clock if the waiter were never woken: the
    // clock must not have moved when it finishes.
    let second = waiter.await.unwrap().unwrap();
    assert_eq!(first.await.unwrap().unwrap().conn, 1);
    assert_eq!(second.conn, 1);
    assert_eq!(Instant::now(), t_start);
    assert_eq!(send_now(&mut pool, Req::new("k")).conn, 1);
}

// (b) Broken connections free their slot ----------------------------------------------------------

/// A connection whose `poll_ready` fails when it comes back is closed; its slot goes to the
/// waiter, which connects.
#[tokio::test(start_paused = true)]
async fn a_connection_broken_on_return_frees_its_slot_for_a_waiter() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(limits(1, 1).build().unwrap(), &connector);
    let (r0, t0) = Req::new("k").id(0).held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut waiter = start(&mut pool, Req::new("k").id(1));
    pending(&mut waiter);

    // The server closes the connection while the response is being sent.
    connector.conn(1).set_broken();
    t0.send(()).unwrap();
    assert_eq!(ok(&mut f0).conn, 1);
    assert!(connector.conn(1).is_dropped());
    assert!(waiter.is_woken());
    let got = ok(&mut waiter);
    assert_eq!(got.conn, 2);
    let k = key(&handle, "k");
    assert_eq!((k.opened, k.closed, k.leased, k.idle), (2, 1, 0, 1));
    assert_eq!(connector.connects(), 2);
    assert_eq!(connector.violations(), Vec::<String>::new());
}

/// A request abandoned mid-call closes its connection (its state is unknown) and frees the slot
/// for a waiter.
#[tokio::test(start_paused = true)]
async fn a_connection_dropped_mid_call_frees_its_slot_for_a_waiter() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(limits(1, 1).build().unwrap(), &connector);
    let (r0, _t0) = Req::new("k").id(0).held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut waiter = start(&mut pool, Req::new("k").id(1));
    pending(&mut waiter);

    drop(f0);
    assert!(connector.conn(1).is_dropped());
    assert!(waiter.is_woken());
    assert_eq!(ok(&mut waiter).conn, 2);
    let k = key(&handle, "k");
    assert_eq!((k.opened, k.closed, k.leased, k.idle), (2, 1, 0, 1));
    assert_eq!(connector.violations(), Vec::<String>::new());
}

/// A connection that broke while idle is not handed out: the checkout connects instead, and
/// the request is still served.
#[tokio::test(start_paused = true)]
async fn an_idle_connection_broken_while_idle_is_replaced_transparently() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(limits(1, 1).build().unwrap(), &connector);
    send_now(&mut pool, Req::new("k"));
    connector.conn(1).set_broken();
    let got = send_now(&mut pool, Req::new("k").id(1));
    assert_eq!(got.conn, 2);
    assert_eq!(connector.conn(1).calls(), 1);
    assert!(connector.conn(1).is_dropped());
    let k = key(&handle, "k");
    assert_eq!((k.opened, k.closed, k.idle, k.failed), (2, 1, 1, 0));
    assert_eq!(connector.violations(), Vec::<String>::new());
}

// (c) Hot connections past their lifetime --------------------------------------------------------

fn lifetime_config(per_key: usize) -> palisade_pool::Config {
    limits(per_key, per_key)
        .no_idle_timeout()
        .max_lifetime(Duration::from_secs(10))
        .lifetime_jitter(Duration::ZERO)
        .build()
        .unwrap()
}

/// A connection in use past its lifetime is closed when it comes back, not kept idle, though
/// it never sat idle.
#[tokio::test(start_paused = true)]
async fn a_hot_connection_past_its_lifetime_is_closed_on_return() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(lifetime_config(1), &connector);
    let (r0, t0) = Req::new("k").id(0).held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    tokio::time::advance(Duration::from_secs(10)).await;
    t0.send(()).unwrap();
    assert_eq!(ok(&mut f0).conn, 1);
    assert!(connector.conn(1).is_dropped());
    let k = key(&handle, "k");
    assert_eq!((k.idle, k.closed, k.evicted), (0, 1, 1));
    assert_eq!(send_now(&mut pool, Req::new("k")).conn, 2);
}

/// Just before its lifetime, the same connection goes back idle and is reused.
#[tokio::test(start_paused = true)]
async fn a_hot_connection_within_its_lifetime_is_kept() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(lifetime_config(1), &connector);
    let (r0, t0) = Req::new("k").id(0).held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    tokio::time::advance(Duration::from_millis(9_999)).await;
    t0.send(()).unwrap();
    ok(&mut f0);
    assert_eq!(key(&handle, "k").idle, 1);
    assert_eq!(send_now(&mut pool, Req::new("k")).conn, 1);
}

/// A connection passed from waiter to waiter, never idle, is not handed on past its lifetime:
/// the waiter connects a new one instead.
#[tokio::test(start_paused = true)]
async fn a_connection_past_its_lifetime_is_not_handed_to_a_waiter() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(lifetime_config(1), &connector);
    let (r0, t0) = Req::new("k").id(0).held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut waiter = start(&mut pool, Req::new("k").id(1));
    pending(&mut waiter);
    tokio::time::advance(Duration::from_secs(11)).await;
    t0.send(()).unwrap();
    ok(&mut f0);
    assert!(connector.conn(1).is_dropped());
    assert_eq!(ok(&mut waiter).conn, 2);
    let k = key(&handle, "k");
    assert_eq!((k.opened, k.evicted, k.reused), (2, 1, 0));
    assert_eq!(connector.violations(), Vec::<String>::new());
}

/// Handed to a waiter within its lifetime, but collected after it (the waiter's task ran a
/// wake-up later): the connection is not used either; it is closed, and the waiter connects
/// a new one in its slot.
#[tokio::test(start_paused = true)]
async fn a_handed_over_connection_collected_past_its_lifetime_is_not_used() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(lifetime_config(1), &connector);
    let (r0, t0) = Req::new("k").id(0).held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut waiter = start(&mut pool, Req::new("k").id(1));
    pending(&mut waiter);
    tokio::time::advance(Duration::from_secs(9)).await;
    t0.send(()).unwrap();
    ok(&mut f0);
    // Handed over at 9 s, within its lifetime.
    assert!(!connector.conn(1).is_dropped());
    assert!(waiter.is_woken());
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(ok(&mut waiter).conn, 2);
    assert!(connector.conn(1).is_dropped());
    let k = key(&handle, "k");
    assert_eq!((k.opened, k.evicted, k.reused), (2, 1, 0));
    assert_eq!(connector.violations(), Vec::<String>::new());
    assert_quiet(&handle.stats());
}

// (d) Over-approval -------------------------------------------------------------------------------

/// Each checkout connects at most once, however often it is polled: with a per-key limit of 2,
/// three concurrent checkouts make exactly two connects; the third is served by a returned
/// connection.
#[tokio::test(start_paused = true)]
async fn one_checkout_never_causes_two_connects() {
    let connector = Connector::with_limits(2, 2);
    connector.gated();
    let (mut pool, handle) = pool(limits(2, 2).build().unwrap(), &connector);
    let mut f1 = start(&mut pool, Req::new("k").id(1));
    let mut f2 = start(&mut pool, Req::new("k").id(2));
    let mut f3 = start(&mut pool, Req::new("k").id(3));
    for _ in 0..5 {
        pending(&mut f1);
        pending(&mut f2);
        pending(&mut f3);
    }
    assert_eq!(connector.connects(), 2);
    let k = key(&handle, "k");
    assert_eq!((k.connecting, k.waiters), (2, 1));

    assert!(connector.finish_connect(Ok(())));
    let first = ok(&mut f1);
    // f1's connection went straight to f3.
    assert!(f3.is_woken());
    assert_eq!(ok(&mut f3).conn, first.conn);
    assert!(connector.finish_connect(Ok(())));
    ok(&mut f2);
    assert_eq!(connector.connects(), 2);
    let k = key(&handle, "k");
    assert_eq!((k.opened, k.reused, k.idle), (2, 1, 2));
}

/// A waiter granted a slot connects once, even when polled again and again while connecting,
/// and even when a connection comes back idle meanwhile.
#[tokio::test(start_paused = true)]
async fn a_waiter_granted_a_slot_connects_once() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(limits(1, 1).build().unwrap(), &connector);
    let (r0, t0) = Req::new("k").id(0).break_after().held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut waiter = start(&mut pool, Req::new("k").id(1));
    pending(&mut waiter);
    connector.gated();
    t0.send(()).unwrap();
    ok(&mut f0);
    for _ in 0..5 {
        pending(&mut waiter);
    }
    assert_eq!(connector.connects(), 2);
    assert_eq!(key(&handle, "k").connecting, 1);
    assert!(connector.finish_connect(Ok(())));
    assert_eq!(ok(&mut waiter).conn, 2);
    assert_eq!(connector.connects(), 2);
}

/// A failed connect is not retried behind the caller's back: one checkout, one connect, one
/// error.
#[tokio::test(start_paused = true)]
async fn a_failed_connect_is_not_retried_by_the_same_checkout() {
    let connector = Connector::new();
    connector.fail_with("refused");
    let (mut pool, _handle) = pool(limits(1, 1).build().unwrap(), &connector);
    let mut f = start(&mut pool, Req::new("k"));
    let _ = err(&mut f);
    assert_eq!(connector.connects(), 1);
}

// (e) A checkout parked while an idle connection could serve it ----------------------------------

/// Max 1 per key, the one connection idle: the next checkout reuses it at once (its slot is
/// not "in use" by the idle connection).
#[tokio::test(start_paused = true)]
async fn an_idle_connection_at_the_per_key_limit_is_reused_not_waited_for() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(limits(1, 1).build().unwrap(), &connector);
    send_now(&mut pool, Req::new("k"));
    assert_eq!(key(&handle, "k").idle, 1);
    let mut f = start(&mut pool, Req::new("k").id(1));
    let got = ok(&mut f);
    assert_eq!(got.conn, 1);
    let k = key(&handle, "k");
    assert_eq!((k.opened, k.reused, k.idle, k.waiters), (1, 1, 1, 0));
}

/// The total reached by idle connections of other keys: a checkout of a new key closes the
/// connection idle longest and connects, instead of waiting.
#[tokio::test(start_paused = true)]
async fn idle_connections_of_other_keys_are_evicted_for_a_new_key() {
    let connector = Connector::with_limits(2, 2);
    let (mut pool, handle) = pool(limits(2, 2).build().unwrap(), &connector);
    send_now(&mut pool, Req::new("a"));
    tokio::time::advance(Duration::from_millis(10)).await;
    send_now(&mut pool, Req::new("b"));
    assert_eq!(handle.stats().total.idle, 2);

    let mut f = start(&mut pool, Req::new("c"));
    let got = ok(&mut f);
    assert_eq!((got.key.as_str(), got.conn), ("c", 3));
    // "a" was idle longest.
    assert!(connector.conn(1).is_dropped());
    assert!(!connector.conn(2).is_dropped());
    assert_eq!(key(&handle, "a").evicted, 1);
    assert_eq!(key(&handle, "b").idle, 1);
    let stats = handle.stats();
    assert_eq!((stats.total.idle, stats.total.waiters), (2, 0));
    assert_eq!(connector.violations(), Vec::<String>::new());
    assert_books(&stats);
}

/// The same when only some of the total is idle: the idle one is evicted, the ones in use are
/// left alone.
#[tokio::test(start_paused = true)]
async fn only_idle_connections_are_evicted_for_a_new_key() {
    let connector = Connector::with_limits(2, 2);
    let (mut pool, handle) = pool(limits(2, 2).build().unwrap(), &connector);
    let (r1, _t1) = Req::new("a").held();
    let mut f1 = start(&mut pool, r1);
    pending(&mut f1);
    send_now(&mut pool, Req::new("b"));
    let got = send_now(&mut pool, Req::new("c"));
    assert_eq!(got.conn, 3);
    assert!(!connector.conn(1).is_dropped());
    assert!(connector.conn(2).is_dropped());
    // With the total in use again (a leased, c idle), "d" evicts c.
    let got = send_now(&mut pool, Req::new("d"));
    assert_eq!(got.conn, 4);
    assert!(connector.conn(3).is_dropped());
    assert_eq!(handle.stats().total.leased, 1);
    assert_eq!(connector.violations(), Vec::<String>::new());
}
