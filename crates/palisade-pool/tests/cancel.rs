//! Cancellation at every await point of a checkout leaks no slot. Each test runs with a limit
//! of one connection (per key and in total): after the drop, the stats show nothing leased,
//! connecting or waiting, and a new checkout succeeds at once, which it could not if the one
//! slot had leaked.

mod common;

use common::*;

fn one_slot() -> (Connector, TestPool, palisade_pool::PoolHandle<Key>) {
    let connector = Connector::with_limits(1, 1);
    let (pool, handle) = pool(limits(1, 1).build().unwrap(), &connector);
    (connector, pool, handle)
}

/// The slot is free: a new checkout (of another key, so an idle connection cannot serve it)
/// connects at once.
#[track_caller]
fn assert_slot_free(pool: &mut TestPool, handle: &palisade_pool::PoolHandle<Key>) {
    assert_quiet(&handle.stats());
    let mut f = start(pool, Req::new("other"));
    let got = ok(&mut f);
    assert_eq!(got.key, "other");
    assert_quiet(&handle.stats());
}

/// (a) Dropped while queued: it leaves the queue; the connection back later goes idle.
#[tokio::test(start_paused = true)]
async fn dropped_while_waiting_in_the_queue() {
    let (connector, mut pool, handle) = one_slot();
    let (r0, t0) = Req::new("k").held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut waiter = start(&mut pool, Req::new("k"));
    pending(&mut waiter);
    assert_eq!(handle.stats().total.waiters, 1);

    drop(waiter);
    assert_eq!(handle.stats().total.waiters, 0);
    t0.send(()).unwrap();
    ok(&mut f0);
    assert_eq!(key(&handle, "k").idle, 1);
    assert_eq!(send_now(&mut pool, Req::new("k")).conn, 1);
    assert_slot_free(&mut pool, &handle);
    assert_eq!(connector.violations(), Vec::<String>::new());
}

/// (b) Dropped after a connection was handed to it, before it ran: the connection goes back
/// (idle, or to the next waiter), not lost with the waiter.
#[tokio::test(start_paused = true)]
async fn dropped_with_a_connection_granted_but_not_yet_polled() {
    let (connector, mut pool, handle) = one_slot();
    let (r0, t0) = Req::new("k").held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut waiter = start(&mut pool, Req::new("k"));
    pending(&mut waiter);
    t0.send(()).unwrap();
    ok(&mut f0);
    assert!(waiter.is_woken());
    assert_eq!(key(&handle, "k").leased, 1, "granted: counted as leased");

    drop(waiter);
    let k = key(&handle, "k");
    assert_eq!((k.leased, k.idle), (0, 1));
    assert!(
        !connector.conn(1).is_dropped(),
        "a healthy connection was closed"
    );
    assert_slot_free(&mut pool, &handle);
    assert_eq!(connector.violations(), Vec::<String>::new());
}

/// (b) The same with the connection passed on to the next waiter.
#[tokio::test(start_paused = true)]
async fn dropped_with_a_connection_granted_passes_it_to_the_next_waiter() {
    let (connector, mut pool, handle) = one_slot();
    let (r0, t0) = Req::new("k").held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut first = start(&mut pool, Req::new("k").id(1));
    let mut second = start(&mut pool, Req::new("k").id(2));
    pending(&mut first);
    pending(&mut second);
    t0.send(()).unwrap();
    ok(&mut f0);
    drop(first);
    assert!(second.is_woken());
    assert_eq!(ok(&mut second).conn, 1);
    assert_slot_free(&mut pool, &handle);
    assert_eq!(connector.connects(), 2);
}

/// (b) Dropped after a free slot was handed to it (the connection came back broken), before
/// it ran: the slot is freed again.
#[tokio::test(start_paused = true)]
async fn dropped_with_a_slot_granted_but_not_yet_polled() {
    let (connector, mut pool, handle) = one_slot();
    let (r0, t0) = Req::new("k").break_after().held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut waiter = start(&mut pool, Req::new("k"));
    pending(&mut waiter);
    t0.send(()).unwrap();
    ok(&mut f0);
    assert!(waiter.is_woken());
    assert_eq!(
        key(&handle, "k").connecting,
        1,
        "granted: counted as connecting"
    );

    drop(waiter);
    assert_eq!(connector.connects(), 1);
    assert_slot_free(&mut pool, &handle);
    assert_eq!(connector.violations(), Vec::<String>::new());
}

/// (c) Dropped while connecting (the connector has not answered): the dial is abandoned and
/// the slot freed.
#[tokio::test(start_paused = true)]
async fn dropped_while_connecting() {
    let (connector, mut pool, handle) = one_slot();
    connector.gated();
    let mut f = start(&mut pool, Req::new("k"));
    pending(&mut f);
    assert_eq!(key(&handle, "k").connecting, 1);
    assert_eq!(connector.pending_connects(), 1);

    drop(f);
    assert_eq!(
        connector.pending_connects(),
        0,
        "the dial was not abandoned"
    );
    assert_eq!(key(&handle, "k").failed, 0, "abandoning is not a failure");
    connector.succeed();
    assert_slot_free(&mut pool, &handle);
}

/// (c) Dropped while connecting, with a waiter behind: the waiter gets the slot.
#[tokio::test(start_paused = true)]
async fn dropped_while_connecting_hands_the_slot_to_a_waiter() {
    let (connector, mut pool, handle) = one_slot();
    connector.gated();
    let mut f = start(&mut pool, Req::new("k"));
    pending(&mut f);
    let mut waiter = start(&mut pool, Req::new("k").id(1));
    pending(&mut waiter);
    drop(f);
    assert!(waiter.is_woken());
    pending(&mut waiter);
    assert!(connector.finish_connect(Ok(())));
    assert_eq!(ok(&mut waiter).req, 1);
    connector.succeed();
    assert_slot_free(&mut pool, &handle);
}

/// (d) Dropped while a fresh connection is not ready yet: the connection is closed and the
/// slot freed.
#[tokio::test(start_paused = true)]
async fn dropped_while_waiting_for_a_fresh_connection_to_be_ready() {
    let (connector, mut pool, handle) = one_slot();
    connector.start_busy(true);
    let mut f = start(&mut pool, Req::new("k"));
    pending(&mut f);
    assert_eq!(key(&handle, "k").leased, 1);
    assert_eq!(connector.conn(1).calls(), 0);

    drop(f);
    assert!(connector.conn(1).is_dropped());
    assert_eq!(key(&handle, "k").closed, 1);
    connector.start_busy(false);
    assert_slot_free(&mut pool, &handle);
}

/// (e) Dropped with the request in flight: the connection (in an unknown state) is closed and
/// the slot freed.
#[tokio::test(start_paused = true)]
async fn dropped_with_the_request_in_flight() {
    let (connector, mut pool, handle) = one_slot();
    let (r0, _t0) = Req::new("k").held();
    let mut f = start(&mut pool, r0);
    pending(&mut f);
    assert_eq!(connector.conn(1).calls(), 1);

    drop(f);
    assert!(connector.conn(1).is_dropped());
    let k = key(&handle, "k");
    assert_eq!((k.closed, k.leased), (1, 0));
    assert_slot_free(&mut pool, &handle);
    assert_eq!(connector.violations(), Vec::<String>::new());
}

/// A timed-out waiter is a cancelled waiter too: nothing leaks.
#[tokio::test(start_paused = true)]
async fn a_timed_out_waiter_leaks_nothing() {
    let connector = Connector::with_limits(1, 1);
    let config = limits(1, 1)
        .checkout_timeout(std::time::Duration::from_secs(1))
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    let (r0, t0) = Req::new("k").held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut waiter = start(&mut pool, Req::new("k"));
    pending(&mut waiter);
    tokio::time::advance(std::time::Duration::from_millis(1_001)).await;
    settle().await;
    assert!(err(&mut waiter)
        .downcast_ref::<palisade_pool::PoolTimeout>()
        .is_some());
    t0.send(()).unwrap();
    ok(&mut f0);
    assert_slot_free(&mut pool, &handle);
}

/// Cancelling every checkout of a crowd at a random point leaves the pool empty and usable.
#[tokio::test(start_paused = true)]
async fn cancelling_a_crowd_at_every_stage_leaks_nothing() {
    let connector = Connector::with_limits(2, 3);
    let (mut pool, handle) = pool(limits(2, 3).build().unwrap(), &connector);
    connector.gated();
    let mut futs = Vec::new();
    let mut holds = Vec::new();
    for i in 0..12u64 {
        let (r, t) = Req::new(["a", "b", "c"][(i % 3) as usize]).id(i).held();
        let mut f = start(&mut pool, r);
        pending(&mut f);
        futs.push(f);
        holds.push(t);
    }
    // Finish one connect: that checkout's request is now in flight.
    assert!(connector.finish_connect(Ok(())));
    for f in futs.iter_mut() {
        let _ = f.poll();
    }
    let stats = handle.stats();
    assert_eq!(stats.total.leased + stats.total.connecting, 3);
    assert_eq!(stats.total.waiters, 9);
    // Drop in an interleaved order: waiters, connecting, in flight.
    let mut order: Vec<usize> = (0..12).rev().step_by(2).collect();
    order.extend((0..12).step_by(2));
    let mut futs: Vec<Option<Fut>> = futs.into_iter().map(Some).collect();
    for i in order {
        // What a drop hands on (a connection, a slot) goes to a waiter nobody polls again:
        // it is dropped later in the order and must hand it on in turn.
        drop(futs[i].take());
    }
    drop(holds);
    assert_quiet(&handle.stats());
    connector.succeed();
    for k in ["a", "b", "c"] {
        send_now(&mut pool, Req::new(k));
    }
    assert_eq!(connector.violations(), Vec::<String>::new());
    assert_quiet(&handle.stats());
}
