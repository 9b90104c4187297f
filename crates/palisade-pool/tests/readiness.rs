//! A connection goes back only once its own `poll_ready` is `Ready`: an HTTP/1 connection whose
//! response body is still being read is not handed out busy.

mod common;

use common::*;

/// Per-key limit 2: the first connection is busy after its response; the next checkout opens a
/// second connection rather than getting the busy one. Once the body is read, the first goes
/// back idle.
#[tokio::test(start_paused = true)]
async fn a_busy_connection_is_not_handed_out_a_new_one_is_opened() {
    let connector = Connector::with_limits(2, 2);
    let (mut pool, handle) = pool(limits(2, 2).build().unwrap(), &connector);
    let first = send_now(&mut pool, Req::new("k").busy_after());
    let busy = connector.conn(first.conn);
    assert!(busy.is_busy());
    let k = key(&handle, "k");
    assert_eq!(
        (k.leased, k.idle),
        (1, 0),
        "a busy connection is still in use"
    );

    let second = send_now(&mut pool, Req::new("k"));
    assert_ne!(second.conn, first.conn);
    assert_eq!(busy.calls(), 1);

    busy.set_busy(false);
    settle().await;
    let k = key(&handle, "k");
    assert_eq!((k.leased, k.idle, k.opened), (0, 2, 2));
    assert!(!busy.is_dropped());
    assert_eq!(connector.violations(), Vec::<String>::new());
}

/// Per-key limit 1: the next checkout waits for the busy connection, and gets it once it is
/// ready; no second connection is opened.
#[tokio::test(start_paused = true)]
async fn a_waiter_gets_the_busy_connection_once_it_is_ready() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(limits(1, 1).build().unwrap(), &connector);
    let first = send_now(&mut pool, Req::new("k").busy_after());
    let mut waiter = start(&mut pool, Req::new("k").id(1));
    pending(&mut waiter);
    settle().await;
    pending(&mut waiter);
    assert_eq!(connector.conn(first.conn).calls(), 1);

    connector.conn(first.conn).set_busy(false);
    settle().await;
    assert!(waiter.is_woken());
    let got = ok(&mut waiter);
    assert_eq!((got.req, got.conn), (1, first.conn));
    assert_eq!(connector.connects(), 1);
    let k = key(&handle, "k");
    assert_eq!((k.idle, k.leased, k.reused), (1, 0, 1));
}

/// A busy connection that breaks instead of becoming ready is closed; its slot goes to the
/// waiter, which connects.
#[tokio::test(start_paused = true)]
async fn a_busy_connection_that_breaks_frees_its_slot() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(limits(1, 1).build().unwrap(), &connector);
    let first = send_now(&mut pool, Req::new("k").busy_after());
    let mut waiter = start(&mut pool, Req::new("k"));
    pending(&mut waiter);
    connector.conn(first.conn).set_broken();
    settle().await;
    assert!(connector.conn(first.conn).is_dropped());
    assert!(waiter.is_woken());
    assert_eq!(ok(&mut waiter).conn, 2);
    let k = key(&handle, "k");
    assert_eq!((k.opened, k.closed), (2, 1));
    assert_eq!(connector.violations(), Vec::<String>::new());
}

/// An idle connection that is not ready at checkout (busy for its own reasons) is not used for
/// the request.
#[tokio::test(start_paused = true)]
async fn an_idle_connection_not_ready_at_checkout_is_not_used() {
    let connector = Connector::new();
    let (mut pool, _handle) = pool(limits(2, 2).build().unwrap(), &connector);
    send_now(&mut pool, Req::new("k"));
    connector.conn(1).set_busy(true);
    let got = send_now(&mut pool, Req::new("k"));
    assert_eq!(got.conn, 2);
    assert_eq!(connector.conn(1).calls(), 1);
}

/// A fresh connection is waited for until it is ready, then used.
#[tokio::test(start_paused = true)]
async fn a_fresh_connection_is_used_once_ready() {
    let connector = Connector::with_limits(1, 1);
    connector.start_busy(true);
    let (mut pool, handle) = pool(limits(1, 1).build().unwrap(), &connector);
    let mut f = start(&mut pool, Req::new("k"));
    pending(&mut f);
    pending(&mut f);
    assert_eq!(connector.conn(1).calls(), 0);
    connector.conn(1).set_busy(false);
    assert!(f.is_woken());
    assert_eq!(ok(&mut f).conn, 1);
    assert_eq!(key(&handle, "k").opened, 1);
}
