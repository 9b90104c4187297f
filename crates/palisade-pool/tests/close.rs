//! `PoolHandle::close(deadline)`: refuses new checkouts, fails queued waiters, closes idle
//! connections at once and the others as they come back; resolves when none is left, or at the
//! deadline with what was still in use.

mod common;

use std::time::Duration;

use common::*;
use palisade_pool::PoolClosed;
use tokio::time::{advance, Instant};

fn is_closed_error(e: &palisade_pool::BoxError) -> bool {
    e.downcast_ref::<PoolClosed>().is_some()
}

/// Nothing in use: close resolves at once, closes the idle connections, and every later
/// checkout fails with `PoolClosed` on its first poll.
#[tokio::test(start_paused = true)]
async fn close_with_nothing_in_use_resolves_at_once_and_refuses_checkouts() {
    let connector = Connector::new();
    let (mut pool, handle) = pool(limits(2, 4).build().unwrap(), &connector);
    send_now(&mut pool, Req::new("a"));
    send_now(&mut pool, Req::new("b"));
    assert!(!handle.is_closed());

    let t_start = Instant::now();
    let mut closing = tokio_test::task::spawn(handle.close(Duration::from_secs(5)));
    let report = match closing.poll() {
        std::task::Poll::Ready(report) => report,
        std::task::Poll::Pending => panic!("close waited with nothing in use"),
    };
    assert!(report.drained);
    assert_eq!(report.closed_idle, 2);
    assert!(report.still_leased.is_empty());
    assert_eq!(report.elapsed, Duration::ZERO);
    assert!(connector.conn(1).is_dropped() && connector.conn(2).is_dropped());
    assert!(handle.is_closed());
    let stats = handle.stats();
    assert!(stats.closed);
    assert_eq!((stats.total.idle, stats.total.closed), (0, 2));
    assert_books(&stats);

    let mut f = start(&mut pool, Req::new("a"));
    let e = err(&mut f);
    assert!(is_closed_error(&e), "{e}");
    assert_eq!(Instant::now(), t_start);
    assert_eq!(connector.connects(), 2);
}

/// Close with a connection in use and a waiter queued: the waiter fails with `PoolClosed` at
/// once, idle connections close at once, new checkouts are refused; the request in flight
/// finishes, its connection is closed on return, and close then resolves, drained.
#[tokio::test(start_paused = true)]
async fn close_fails_waiters_and_resolves_when_the_last_lease_returns() {
    let connector = Connector::new();
    let (mut pool, handle) = pool(limits(1, 4).build().unwrap(), &connector);
    send_now(&mut pool, Req::new("b"));
    let (r0, t0) = Req::new("a").id(0).held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut waiter = start(&mut pool, Req::new("a").id(1));
    pending(&mut waiter);

    let mut closing = tokio_test::task::spawn(handle.close(Duration::from_secs(30)));
    assert!(closing.poll().is_pending());
    assert!(waiter.is_woken());
    let e = err(&mut waiter);
    assert!(is_closed_error(&e), "{e}");
    assert!(
        connector.conn(1).is_dropped(),
        "the idle connection was kept"
    );
    let mut late = start(&mut pool, Req::new("c"));
    assert!(is_closed_error(&err(&mut late)));

    advance(Duration::from_secs(3)).await;
    assert!(closing.poll().is_pending());
    t0.send(()).unwrap();
    // The request in flight is still answered.
    assert_eq!(ok(&mut f0).conn, 2);
    assert!(connector.conn(2).is_dropped());
    assert!(closing.is_woken());
    let report = match closing.poll() {
        std::task::Poll::Ready(report) => report,
        std::task::Poll::Pending => panic!("close did not resolve when the last lease returned"),
    };
    assert!(report.drained);
    assert_eq!(report.closed_idle, 1);
    assert!(report.still_leased.is_empty());
    assert_eq!(report.elapsed, Duration::from_secs(3));
    assert_eq!(connector.open(), 0);
    let stats = handle.stats();
    assert_eq!(
        (stats.total.leased, stats.total.waiters, stats.total.idle),
        (0, 0, 0)
    );
    assert_books(&stats);
}

/// A connection that never comes back: close resolves at the deadline, not before, with
/// `drained == false` and the key listed in `still_leased`.
#[tokio::test(start_paused = true)]
async fn close_resolves_at_the_deadline_with_what_is_still_leased() {
    let connector = Connector::new();
    let (mut pool, handle) = pool(limits(2, 4).build().unwrap(), &connector);
    let (ra, ta) = Req::new("a").held();
    let (rb1, _tb1) = Req::new("b").held();
    let (rb2, _tb2) = Req::new("b").held();
    let mut fa = start(&mut pool, ra);
    let mut fb1 = start(&mut pool, rb1);
    let mut fb2 = start(&mut pool, rb2);
    pending(&mut fa);
    pending(&mut fb1);
    pending(&mut fb2);

    let mut closing = tokio_test::task::spawn(handle.close(Duration::from_secs(5)));
    assert!(closing.poll().is_pending());
    // "a" comes back in time; the two "b" never do.
    ta.send(()).unwrap();
    ok(&mut fa);
    advance(Duration::from_millis(4_999)).await;
    settle().await;
    assert!(closing.poll().is_pending());
    // Timers have a resolution of 1 ms: by then it has fired.
    advance(Duration::from_millis(2)).await;
    let report = match closing.poll() {
        std::task::Poll::Ready(report) => report,
        std::task::Poll::Pending => panic!("close did not resolve at its deadline"),
    };
    assert!(!report.drained);
    assert_eq!(report.still_leased, vec![("b".to_owned(), 2)]);
    assert!(
        report.elapsed >= Duration::from_secs(5) && report.elapsed <= Duration::from_millis(5_001),
        "{:?}",
        report.elapsed
    );
    assert!(report.to_string().contains("2 still in use"), "{report}");

    // They are still closed when they do come back.
    drop(fb1);
    assert!(connector.conn(2).is_dropped());
    assert_eq!(handle.stats().total.leased, 1);
}

/// A connect in progress when the pool closes serves its request, then its connection closes;
/// close counts it as still open until then.
#[tokio::test(start_paused = true)]
async fn a_connect_in_progress_at_close_serves_its_request_then_closes() {
    let connector = Connector::new();
    connector.gated();
    let (mut pool, handle) = pool(limits(2, 4).build().unwrap(), &connector);
    let mut f = start(&mut pool, Req::new("a"));
    pending(&mut f);
    let mut closing = tokio_test::task::spawn(handle.close(Duration::from_secs(5)));
    assert!(closing.poll().is_pending());
    assert!(connector.finish_connect(Ok(())));
    assert_eq!(ok(&mut f).conn, 1);
    assert!(connector.conn(1).is_dropped());
    let report = match closing.poll() {
        std::task::Poll::Ready(report) => report,
        std::task::Poll::Pending => panic!("close did not resolve"),
    };
    assert!(report.drained);
}

/// A connect in progress at close that fails also ends the close.
#[tokio::test(start_paused = true)]
async fn a_connect_failing_after_close_lets_close_resolve() {
    let connector = Connector::new();
    connector.gated();
    let (mut pool, handle) = pool(limits(2, 4).build().unwrap(), &connector);
    let mut f = start(&mut pool, Req::new("a"));
    pending(&mut f);
    let mut closing = tokio_test::task::spawn(handle.close(Duration::from_secs(5)));
    assert!(closing.poll().is_pending());
    assert!(connector.finish_connect(Err("refused")));
    assert!(err(&mut f).downcast_ref::<ConnectError>().is_some());
    assert!(closing.is_woken());
    assert!(closing.poll().is_ready());
}

/// A connection busy after its response (body still being read) when the pool closes is
/// closed once it is done, and close resolves then.
#[tokio::test(start_paused = true)]
async fn a_busy_connection_at_close_is_closed_when_done() {
    let connector = Connector::new();
    let (mut pool, handle) = pool(limits(2, 4).build().unwrap(), &connector);
    let resp = send_now(&mut pool, Req::new("a").busy_after());
    assert_eq!(handle.stats().total.leased, 1);
    let mut closing = tokio_test::task::spawn(handle.close(Duration::from_secs(5)));
    assert!(closing.poll().is_pending());
    connector.conn(resp.conn).set_busy(false);
    settle().await;
    assert!(connector.conn(resp.conn).is_dropped());
    assert!(closing.is_woken());
    let report = match closing.poll() {
        std::task::Poll::Ready(report) => report,
        std::task::Poll::Pending => panic!("close did not resolve"),
    };
    assert!(report.drained);
    assert_eq!(report.closed_idle, 0);
}

/// Calling close again is harmless: it reports again, with nothing more to close.
#[tokio::test(start_paused = true)]
async fn closing_twice_is_harmless() {
    let connector = Connector::new();
    let (mut pool, handle) = pool(limits(2, 4).build().unwrap(), &connector);
    send_now(&mut pool, Req::new("a"));
    let first = handle.close(Duration::from_secs(1)).await;
    let second = handle.clone().close(Duration::from_secs(1)).await;
    assert_eq!((first.closed_idle, first.drained), (1, true));
    assert_eq!((second.closed_idle, second.drained), (0, true));
    assert_eq!(handle.stats().total.closed, 1);
}

/// A waiter woken by close and dropped without being polled leaks nothing.
#[tokio::test(start_paused = true)]
async fn a_waiter_failed_by_close_and_dropped_unpolled_leaks_nothing() {
    let connector = Connector::new();
    let (mut pool, handle) = pool(limits(1, 1).build().unwrap(), &connector);
    let (r0, t0) = Req::new("a").held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut waiter = start(&mut pool, Req::new("a"));
    pending(&mut waiter);
    let mut closing = tokio_test::task::spawn(handle.close(Duration::from_secs(5)));
    assert!(closing.poll().is_pending());
    drop(waiter);
    t0.send(()).unwrap();
    ok(&mut f0);
    assert!(closing.poll().is_ready());
    let stats = handle.stats();
    assert_eq!((stats.total.waiters, stats.total.leased), (0, 0));
}
