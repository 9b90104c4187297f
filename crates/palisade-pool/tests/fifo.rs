//! First come, first served: waiters get connections and free slots in arrival order, and a
//! later arrival never overtakes a queued waiter.

mod common;

use common::*;

/// Max 1 per key; one request holds the connection; A, B and C queue in that order. Each
/// connection back goes to the oldest waiter, whatever order the waiters are polled in, and
/// only the oldest is woken.
#[tokio::test(start_paused = true)]
async fn waiters_get_a_returned_connection_in_arrival_order() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(limits(1, 4).build().unwrap(), &connector);
    let (r0, t0) = Req::new("k").id(0).held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);

    let mut a = start(&mut pool, Req::new("k").id(1));
    let mut b = start(&mut pool, Req::new("k").id(2));
    let mut c = start(&mut pool, Req::new("k").id(3));
    pending(&mut a);
    pending(&mut b);
    pending(&mut c);
    assert_eq!(key(&handle, "k").waiters, 3);

    t0.send(()).unwrap();
    assert_eq!(ok(&mut f0).req, 0);
    assert!(a.is_woken());
    assert!(!b.is_woken() && !c.is_woken());
    // Polled youngest first: the youngest do not get it.
    pending(&mut c);
    pending(&mut b);
    let got = ok(&mut a);
    assert_eq!((got.req, got.conn), (1, 1));

    // A's request finished at once: the connection went straight on to B.
    assert!(b.is_woken());
    assert!(!c.is_woken());
    pending(&mut c);
    assert_eq!(ok(&mut b).conn, 1);
    assert!(c.is_woken());
    assert_eq!(ok(&mut c).conn, 1);

    assert_eq!(connector.connects(), 1);
    let k = key(&handle, "k");
    assert_eq!((k.opened, k.reused, k.idle, k.waiters), (1, 3, 1, 0));
}

/// A checkout that arrives just as the connection is handed to the oldest waiter (granted, not
/// yet polled) queues behind the waiters instead of taking it.
#[tokio::test(start_paused = true)]
async fn a_later_arrival_never_overtakes_a_granted_waiter() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(limits(1, 4).build().unwrap(), &connector);
    let (r0, t0) = Req::new("k").id(0).held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut a = start(&mut pool, Req::new("k").id(1));
    pending(&mut a);

    t0.send(()).unwrap();
    ok(&mut f0);
    // The connection is A's now, though A has not run yet. D arrives.
    let mut d = start(&mut pool, Req::new("k").id(4));
    pending(&mut d);
    assert_eq!(key(&handle, "k").waiters, 1);
    assert_eq!(ok(&mut a).req, 1);
    assert_eq!(ok(&mut d).req, 4);
    assert_eq!(connector.connects(), 1);
}

/// A later arrival does not overtake a waiter granted a free slot either (the connection came
/// back broken, so the waiter is to connect itself).
#[tokio::test(start_paused = true)]
async fn a_later_arrival_never_overtakes_a_waiter_granted_a_slot() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(limits(1, 4).build().unwrap(), &connector);
    let (r0, t0) = Req::new("k").id(0).break_after().held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut a = start(&mut pool, Req::new("k").id(1));
    pending(&mut a);

    t0.send(()).unwrap();
    ok(&mut f0);
    assert!(connector.conn(1).is_dropped());
    let k = key(&handle, "k");
    assert_eq!((k.connecting, k.waiters), (1, 0));
    let mut d = start(&mut pool, Req::new("k").id(4));
    pending(&mut d);
    assert_eq!(connector.connects(), 1, "D must not connect ahead of A");
    let got = ok(&mut a);
    assert_eq!((got.req, got.conn), (1, 2));
    assert_eq!(ok(&mut d).conn, 2);
    assert_eq!(connector.violations(), Vec::<String>::new());
}

/// Free slots go to the oldest waiter over all keys: with the total reached, waiters of "b"
/// then "c" queue; the first slot freed goes to "b", the next to "c".
#[tokio::test(start_paused = true)]
async fn a_freed_slot_goes_to_the_oldest_waiter_of_any_key() {
    let connector = Connector::with_limits(2, 2);
    let (mut pool, handle) = pool(limits(2, 2).build().unwrap(), &connector);
    let (r1, t1) = Req::new("a").id(1).break_after().held();
    let (r2, t2) = Req::new("a").id(2).break_after().held();
    let mut f1 = start(&mut pool, r1);
    let mut f2 = start(&mut pool, r2);
    pending(&mut f1);
    pending(&mut f2);
    let mut b = start(&mut pool, Req::new("b").id(3));
    let mut c = start(&mut pool, Req::new("c").id(4));
    pending(&mut b);
    pending(&mut c);
    assert_eq!(handle.stats().total.waiters, 2);

    t2.send(()).unwrap();
    ok(&mut f2);
    assert!(b.is_woken() && !c.is_woken());
    pending(&mut c);
    assert_eq!(ok(&mut b).key, "b");
    t1.send(()).unwrap();
    ok(&mut f1);
    assert!(c.is_woken());
    assert_eq!(ok(&mut c).key, "c");
    assert_eq!(connector.violations(), Vec::<String>::new());
}

/// FIFO across keys when the total is what blocks: a waiter of "c" queued first (blocked by the
/// total) must not be overtaken by a later waiter of "a" when an "a" connection comes back.
#[tokio::test(start_paused = true)]
async fn cross_key_fifo_under_the_total_limit() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(limits(1, 1).build().unwrap(), &connector);
    let (r0, t0) = Req::new("a").id(0).held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    // "c" arrives first and waits on the total; "a" arrives later and waits on its key.
    let mut c = start(&mut pool, Req::new("c").id(1));
    pending(&mut c);
    let (ra, _ta) = Req::new("a").id(2).held();
    let mut a = start(&mut pool, ra);
    pending(&mut a);
    assert_eq!(handle.stats().total.waiters, 2);

    t0.send(()).unwrap();
    ok(&mut f0);
    // The oldest waiter is "c": it gets the slot (the "a" connection is closed for it).
    assert!(c.is_woken(), "the oldest waiter (c) was not served");
    assert_eq!(ok(&mut c).key, "c");
    pending(&mut a);
}

/// A waiter handed a connection that turns out broken before it can use it keeps its turn:
/// it connects in that slot instead of going to the back of the queue behind later waiters.
#[tokio::test(start_paused = true)]
async fn a_waiter_handed_a_stale_connection_keeps_its_turn() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(limits(1, 4).build().unwrap(), &connector);
    let (r0, t0) = Req::new("k").id(0).held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut a = start(&mut pool, Req::new("k").id(1));
    let mut b = start(&mut pool, Req::new("k").id(2));
    pending(&mut a);
    pending(&mut b);

    t0.send(()).unwrap();
    ok(&mut f0);
    // Handed to A; the server closes it before A runs.
    connector.conn(1).set_broken();
    let got = ready(&mut a);
    assert!(
        matches!(&got, Ok(r) if r.req == 1 && r.conn == 2),
        "A (the oldest waiter) should have connected at once, got {got:?}; B woken: {}",
        b.is_woken()
    );
    // A's request is done: its new connection goes straight to B, the next in line.
    let got = ready(&mut b);
    assert!(
        matches!(&got, Ok(r) if r.req == 2 && r.conn == 2),
        "got {got:?}"
    );
    assert_eq!(key(&handle, "k").waiters, 0);
    assert_eq!(connector.opened(), 2);
}
