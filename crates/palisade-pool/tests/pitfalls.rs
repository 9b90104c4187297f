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

/// A request holds the only connection (lifetime 10 s) while a second waits; the first comes
/// back at `returned_at` and the waiter is polled `collected_after` later. The connection must
/// not serve the waiter past its lifetime: it is closed (evicted, not reused), and the waiter
/// connects a new one in its slot.
async fn hand_over_around_the_lifetime(returned_at: Duration, collected_after: Duration) {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(lifetime_config(1), &connector);
    let (r0, t0) = Req::new("k").id(0).held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut waiter = start(&mut pool, Req::new("k").id(1));
    pending(&mut waiter);
    tokio::time::advance(returned_at).await;
    t0.send(()).unwrap();
    ok(&mut f0);
    if !collected_after.is_zero() {
        // Handed over within its lifetime.
        assert!(!connector.conn(1).is_dropped());
        assert!(waiter.is_woken());
        tokio::time::advance(collected_after).await;
    }
    assert_eq!(ok(&mut waiter).conn, 2);
    assert!(connector.conn(1).is_dropped());
    let k = key(&handle, "k");
    assert_eq!((k.opened, k.evicted, k.reused), (2, 1, 0));
    assert_eq!(connector.violations(), Vec::<String>::new());
}

/// A connection passed from waiter to waiter, never idle, is not handed on past its lifetime:
/// the waiter connects a new one instead.
#[tokio::test(start_paused = true)]
async fn a_connection_past_its_lifetime_is_not_handed_to_a_waiter() {
    hand_over_around_the_lifetime(Duration::from_secs(11), Duration::ZERO).await;
}

/// Handed to a waiter within its lifetime (at 9 s), but collected after it (the waiter's task
/// ran a wake-up later, at 11 s): the connection is not used either.
#[tokio::test(start_paused = true)]
async fn a_handed_over_connection_collected_past_its_lifetime_is_not_used() {
    hand_over_around_the_lifetime(Duration::from_secs(9), Duration::from_secs(2)).await;
}
