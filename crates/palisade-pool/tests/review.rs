//! Regression tests from the second bug-hunting review: a connect timer armed outside a
//! runtime, backoff bypassed by waiters and by replacing a broken connection, a stalled first
//! readiness not counted as a failed connect, a queued waiter left without upkeep after its
//! runtime shut down, dials after close, failures forgotten by the sweep, an expired idle
//! connection turning a checkout into `PoolFull`, and a hand-off counted as a reuse.

mod common;

use std::task::Poll;
use std::time::Duration;

use common::*;
use palisade_pool::{ConnectBackoff, ConnectTimeout, PoolClosed, PoolTimeout};
use tokio::time::advance;
use tower::Service;

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// (1) A checkout that has to connect, polled outside a tokio runtime (the pool itself says it
/// works there: the upkeep only warns, a busy return is discarded): arming the connect timer
/// panics, and the slot reserved just before is never given back.
#[test]
fn a_connect_outside_a_runtime_neither_panics_nor_leaks_its_slot() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(limits(1, 1).build().unwrap(), &connector);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut fut = std::pin::pin!(pool.call(Req::new("k")));
        let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
        std::future::Future::poll(fut.as_mut(), &mut cx)
            .map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
    }));
    let t = handle.stats().total;
    assert_eq!(
        (t.connecting, t.leased),
        (0, 0),
        "slot leaked after the checkout panicked: {t:?}"
    );
    assert!(outcome.is_ok(), "the checkout panicked outside a runtime");
}

/// 1b. The same leak inside tokio, on a runtime without the time driver: the task panics
/// (tokio catches it), the slot stays reserved for good, and the key can never connect again.
#[test]
fn a_panicking_connect_timer_leaks_the_slot_for_good() {
    let connector = Connector::with_limits(1, 1);
    let (pool, handle) = pool(limits(1, 1).build().unwrap(), &connector);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut p = pool.clone();
    let joined =
        rt.block_on(async move { tokio::spawn(async move { p.call(Req::new("k")).await }).await });
    assert!(joined.is_err(), "expected the task to panic");
    let t = handle.stats().total;
    assert_eq!((t.connecting, t.leased), (0, 0), "slot leaked: {t:?}");
}

/// (2) Connect backoff (after 1 failure) is bypassed by checkouts that were queued: the failed
/// connect's slot goes to the next waiter, which dials the failing key at once; and a new
/// arrival behind queued waiters is queued (and will dial) instead of getting ConnectBackoff.
#[tokio::test(start_paused = true)]
async fn queued_waiters_do_not_dial_a_key_in_backoff() {
    let connector = Connector::with_limits(1, 1);
    connector.gated();
    let config = limits(1, 1)
        .connect_backoff(1, Duration::from_secs(10), Duration::from_secs(60))
        .build()
        .unwrap();
    let (mut pool, _handle) = pool(config, &connector);
    let mut f0 = start(&mut pool, Req::new("k").id(0));
    pending(&mut f0);
    let mut w1 = start(&mut pool, Req::new("k").id(1));
    pending(&mut w1);
    assert!(connector.finish_connect(Err("connection refused")));
    assert!(err(&mut f0).downcast_ref::<ConnectError>().is_some());
    // The key is in backoff now (10 s).
    let _ = w1.poll();
    assert_eq!(
        connector.connects(),
        1,
        "a queued waiter dialled a key in backoff"
    );
}

/// (3) ConnectTimeout on a new connection's first readiness (documented as part of the
/// connect) is not counted as a failed connect and resets the backoff: a host that accepts
/// TCP and then stalls the handshake is redialled by every checkout, never backed off.
#[tokio::test(start_paused = true)]
async fn a_connect_that_times_out_on_first_readiness_counts_as_a_failure() {
    let connector = Connector::with_limits(1, 1);
    connector.start_busy(true);
    let config = limits(1, 1)
        .connect_timeout(Duration::from_secs(1))
        .connect_backoff(1, Duration::from_secs(10), Duration::from_secs(60))
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    let mut f = start(&mut pool, Req::new("k"));
    pending(&mut f);
    advance(Duration::from_millis(1_001)).await;
    settle().await;
    assert!(err(&mut f).downcast_ref::<ConnectTimeout>().is_some());
    assert_eq!(
        key(&handle, "k").failed,
        1,
        "the timed-out connect is not counted as failed"
    );
    let mut f = start(&mut pool, Req::new("k"));
    let outcome = f.poll();
    assert!(
        matches!(&outcome, Poll::Ready(Err(e)) if e.downcast_ref::<ConnectBackoff>().is_some()),
        "no backoff after the timed-out connect: {outcome:?}, connects {}",
        connector.connects()
    );
}

/// (4) A queued checkout that was granted a slot (the connection ahead broke) but had not run
/// yet when the pool closed connects anyway, after close: a new connection on a closed pool.
#[tokio::test(start_paused = true)]
async fn no_new_connection_is_dialled_after_close() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(limits(1, 1).build().unwrap(), &connector);
    let (r0, t0) = Req::new("k").break_after().held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut w = start(&mut pool, Req::new("k"));
    pending(&mut w);
    t0.send(()).unwrap();
    ok(&mut f0); // broken on return: the slot goes to `w` (Grant::Connect)
    let close = handle.close(Duration::from_secs(5));
    let outcome = w.poll();
    assert_eq!(connector.connects(), 1, "dialled after close: {outcome:?}");
    assert!(
        matches!(&outcome, Poll::Ready(Err(e)) if e.downcast_ref::<PoolClosed>().is_some()),
        "{outcome:?}"
    );
    drop(close);
}

/// 4b. The same through a handed-over connection found broken after close: the checkout's
/// replacement is a new connect on the closed pool.
#[tokio::test(start_paused = true)]
async fn a_broken_hand_off_after_close_does_not_dial() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(limits(1, 1).build().unwrap(), &connector);
    let (r0, t0) = Req::new("k").held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut w = start(&mut pool, Req::new("k"));
    pending(&mut w);
    t0.send(()).unwrap();
    ok(&mut f0); // healthy: handed to `w`
    let close = handle.close(Duration::from_secs(5));
    connector.conn(1).set_broken();
    let outcome = w.poll();
    assert_eq!(connector.connects(), 1, "dialled after close: {outcome:?}");
    drop(close);
}

/// (5) Two runtimes: the upkeep task runs on A; a checkout waiting on B. A shuts down (its
/// upkeep task with it). Nothing restarts the upkeep for the waiter already queued, so it
/// never times out.
#[test]
// The checkouts are started on one runtime and polled on another: the blocks hand them out.
#[allow(clippy::async_yields_async)]
fn a_queued_waiter_times_out_after_the_upkeep_runtime_shuts_down() {
    let connector = Connector::with_limits(1, 1);
    let config = limits(1, 1)
        .checkout_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let (mut pool, _handle) = pool(config, &connector);
    let rt_a = paused_runtime();
    let rt_b = paused_runtime();
    let (r0, _t0) = Req::new("k").id(0).held();
    let mut f0 = rt_a.block_on(async {
        let mut f0 = start(&mut pool, r0);
        pending(&mut f0);
        f0
    });
    // A waiter on A starts the upkeep task there.
    let wa = rt_a.block_on(async {
        let mut w = start(&mut pool, Req::new("k").id(1));
        pending(&mut w);
        w
    });
    // A waiter on B while A's upkeep task is alive.
    let mut wb = rt_b.block_on(async {
        let mut w = start(&mut pool, Req::new("k").id(2));
        pending(&mut w);
        w
    });
    drop(wa);
    drop(rt_a);
    rt_b.block_on(async {
        advance(Duration::from_millis(1_001)).await;
        settle().await;
        let outcome = wb.poll();
        assert!(
            matches!(&outcome, Poll::Ready(Err(e)) if e.downcast_ref::<PoolTimeout>().is_some()),
            "the waiter did not time out: {outcome:?}"
        );
    });
    let _ = f0.poll();
}

/// (6) A connection handed to a waiter that leaves before it runs served nothing, yet is
/// counted as a reuse (twice if it is then handed on).
#[tokio::test(start_paused = true)]
async fn a_hand_off_to_a_waiter_that_leaves_is_not_a_reuse() {
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(limits(1, 1).build().unwrap(), &connector);
    let (r0, t0) = Req::new("k").held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut w = start(&mut pool, Req::new("k").id(1));
    pending(&mut w);
    t0.send(()).unwrap();
    ok(&mut f0);
    drop(w);
    let k = key(&handle, "k");
    assert_eq!((k.idle, k.reused), (1, 0), "{k:?}");
}

/// (7) Failures below the backoff threshold are forgotten by the idle sweep (the key has
/// nothing left and no backoff yet): two failures in a row, a sweep between them, and the
/// backoff configured `after 2` never starts.
#[tokio::test(start_paused = true)]
async fn the_sweep_does_not_forget_failures_below_the_backoff_threshold() {
    let connector = Connector::new();
    let config = limits(1, 2)
        .idle_timeout(Duration::from_secs(1))
        .connect_backoff(2, Duration::from_secs(10), Duration::from_secs(60))
        .build()
        .unwrap();
    let (mut pool, _handle) = pool(config, &connector);
    send_now(&mut pool, Req::new("healthy")); // starts the sweep (every 500 ms)
    settle().await;
    connector.fail_with("refused");
    let mut f = start(&mut pool, Req::new("k"));
    assert!(err(&mut f).downcast_ref::<ConnectError>().is_some());
    advance(Duration::from_millis(600)).await;
    settle().await;
    let mut f = start(&mut pool, Req::new("k"));
    assert!(err(&mut f).downcast_ref::<ConnectError>().is_some());
    let mut f = start(&mut pool, Req::new("k"));
    let e = err(&mut f);
    assert!(
        e.downcast_ref::<ConnectBackoff>().is_some(),
        "no backoff after 2 failures in a row: {e}; connects {}",
        connector.connects_for("k")
    );
}

/// (8) A checkout that finds only an expired idle connection closes it, and then — because the
/// closing connection still holds the key's slot — is refused with PoolFull when no waiter
/// may queue, although the slot is free the moment the close completes (in the same call).
#[tokio::test(start_paused = true)]
async fn an_expired_idle_connection_does_not_turn_a_checkout_into_pool_full() {
    let connector = Connector::with_limits(1, 1);
    let config = limits(1, 1)
        .max_waiters(0)
        .idle_timeout(Duration::from_secs(1))
        .sweep_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    send_now(&mut pool, Req::new("k"));
    advance(Duration::from_secs(2)).await;
    let mut f = start(&mut pool, Req::new("k"));
    let outcome = f.poll();
    assert!(
        matches!(&outcome, Poll::Ready(Ok(r)) if r.conn == 2),
        "{outcome:?}; stats {:?}",
        handle.stats().total
    );
}

/// 2b. The backoff is also bypassed when a checkout's idle connection turns out broken: the
/// replacement dials the key in backoff.
#[tokio::test(start_paused = true)]
async fn a_broken_idle_connection_is_not_replaced_by_a_dial_during_backoff() {
    let connector = Connector::with_limits(2, 2);
    let config = limits(2, 2)
        .connect_backoff(1, Duration::from_secs(10), Duration::from_secs(60))
        .build()
        .unwrap();
    let (mut pool, _handle) = pool(config, &connector);
    let (r0, t0) = Req::new("k").held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    connector.fail_with("refused");
    let mut f1 = start(&mut pool, Req::new("k"));
    assert!(err(&mut f1).downcast_ref::<ConnectError>().is_some());
    t0.send(()).unwrap();
    ok(&mut f0); // connection 1 idle; the key is in backoff for 10 s
    connector.succeed();
    connector.conn(1).set_broken();
    let mut f2 = start(&mut pool, Req::new("k"));
    let outcome = f2.poll();
    assert_eq!(
        connector.connects(),
        2,
        "dialled during the backoff: {outcome:?}"
    );
}

/// (9, from a review of these fixes) The waiter of (5) woken for real: a task waiting on
/// runtime B, never polled by hand, when the upkeep task dies with runtime A. Nothing woke it,
/// so it never timed out; the upkeep task's end now wakes the queue.
#[test]
// The checkouts are started on one runtime and polled on another: the blocks hand them out.
#[allow(clippy::async_yields_async)]
fn a_waiting_task_times_out_after_the_upkeep_runtime_shuts_down() {
    let connector = Connector::with_limits(1, 1);
    let config = limits(1, 1)
        .checkout_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let (mut pool, _handle) = pool(config, &connector);
    let (rt_a, rt_b) = (paused_runtime(), paused_runtime());
    let (r0, _t0) = Req::new("k").id(0).held();
    let mut f0 = rt_a.block_on(async {
        let mut f = start(&mut pool, r0);
        pending(&mut f);
        f
    });
    let wa = rt_a.block_on(async {
        let mut w = start(&mut pool, Req::new("k").id(1));
        pending(&mut w);
        w
    });
    let mut p = pool.clone();
    let waiter = rt_b.block_on(async move {
        let h = tokio::spawn(async move {
            futures::future::poll_fn(|cx| p.poll_ready(cx))
                .await
                .unwrap();
            p.call(Req::new("k").id(2)).await
        });
        settle().await;
        assert!(!h.is_finished());
        h
    });
    drop(wa);
    drop(rt_a);
    rt_b.block_on(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            waiter.is_finished(),
            "the waiting task was never woken: no PoolTimeout 59 s after its deadline"
        );
        let e = waiter.await.unwrap().unwrap_err();
        assert!(e.downcast_ref::<PoolTimeout>().is_some(), "{e}");
    });
    let _ = f0.poll();
}

/// (10, from a review of (9)) A waiter polled under the handle of a runtime already shut down:
/// `spawn` drops the new upkeep task on the spot, and its end woke the waiter asking, which
/// asked again at once — a busy loop. Only a task that was spawned wakes the queue.
#[test]
fn a_waiter_on_a_dead_runtime_handle_does_not_wake_itself_on_every_poll() {
    let connector = Connector::with_limits(1, 1);
    let config = limits(1, 1)
        .checkout_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let (mut pool, _handle) = pool(config, &connector);
    let rt_a = paused_runtime();
    let (r0, _t0) = Req::new("k").held();
    let (mut f0, mut w) = rt_a.block_on(async {
        let mut f0 = start(&mut pool, r0);
        pending(&mut f0);
        let mut w = start(&mut pool, Req::new("k").id(1));
        pending(&mut w);
        (f0, w)
    });
    let dead = rt_a.handle().clone();
    drop(rt_a);
    let _enter = dead.enter();
    let mut self_wakes = 0;
    for _ in 0..100 {
        pending(&mut w);
        if w.is_woken() {
            self_wakes += 1;
        }
    }
    assert_eq!(
        self_wakes, 0,
        "the waiter returned Pending after waking itself on {self_wakes} of 100 polls"
    );
    let _ = f0.poll();
}

// Review of ac81794 / cece1ec -----------------------------------------------------------------

/// A waiter is handed connection 1 within its lifetime, collects it after; meanwhile
/// connection 2 of the same key went idle. connection 2 takes connection 1's place, and connection 1's slot must be freed: it was
/// never taken off the pool's total, so one slot of the total was lost for good (with a total
/// of 2 and one connection open, a checkout of the key waited and timed out).
#[tokio::test(start_paused = true)]
async fn replacing_an_expired_handover_with_an_idle_connection_leaks_a_total_slot() {
    let connector = Connector::with_limits(2, 2);
    let config = limits(2, 2)
        .no_idle_timeout()
        .max_lifetime(Duration::from_secs(10))
        .lifetime_jitter(Duration::ZERO)
        .checkout_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    // Connection 1 opened at 0 s (expires at 10 s), connection 2 at 5 s (expires at 15 s).
    let (r0, t0) = Req::new("k").id(0).held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    tokio::time::advance(Duration::from_secs(5)).await;
    let (r1, t1) = Req::new("k").id(1).held();
    let mut f1 = start(&mut pool, r1);
    pending(&mut f1);
    let mut waiter = start(&mut pool, Req::new("k").id(2));
    pending(&mut waiter);
    tokio::time::advance(Duration::from_secs(4)).await;
    // 9 s: connection 1 handed to the waiter (in its lifetime), connection 2 goes idle.
    t0.send(()).unwrap();
    assert_eq!(ok(&mut f0).conn, 1);
    t1.send(()).unwrap();
    assert_eq!(ok(&mut f1).conn, 2);
    assert_eq!(handle.stats().total.idle, 1);
    // 11 s: the waiter collects connection 1, past its lifetime: it is replaced by 2.
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(ok(&mut waiter).conn, 2);
    assert!(connector.conn(1).is_dropped());
    let t = handle.stats().total;
    assert_eq!(
        (t.opened, t.closed, t.idle, t.leased),
        (2, 1, 1, 0),
        "{t:?}"
    );
    assert_eq!(connector.open(), 1);

    // One connection open, a total of 2: holding it, a second checkout of "k" may connect.
    let (r3, _t3) = Req::new("k").id(3).held();
    let mut f3 = start(&mut pool, r3);
    pending(&mut f3);
    let mut f4 = start(&mut pool, Req::new("k").id(4));
    let first = f4.poll();
    assert!(
        !first.is_pending(),
        "with one connection open of a total of 2, the checkout waits (stats {:?}, open {})",
        handle.stats().total,
        connector.open()
    );
}

/// Connections 1 and 2 of "k" opened side by side, then both returned: idle [1, 2].
fn two_idle(pool: &mut TestPool) {
    let (r0, t0) = Req::new("k").id(0).held();
    let mut f0 = start(pool, r0);
    pending(&mut f0);
    let (r1, t1) = Req::new("k").id(1).held();
    let mut f1 = start(pool, r1);
    pending(&mut f1);
    t0.send(()).unwrap();
    ok(&mut f0);
    t1.send(()).unwrap();
    ok(&mut f1);
}

/// The same leak on the older path that shares `replace_unused`: an idle connection found
/// broken at checkout is replaced by another idle connection of the key.
#[tokio::test(start_paused = true)]
async fn replacing_a_broken_idle_connection_with_another_idle_one_leaks_a_total_slot() {
    let connector = Connector::with_limits(2, 2);
    let config = limits(2, 2)
        .checkout_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    two_idle(&mut pool);
    // Idle: [1, 2]; the most recent (2) is taken first, and it is broken.
    connector.conn(2).set_broken();
    let (r2, _t2) = Req::new("k").id(2).held();
    let mut f2 = start(&mut pool, r2);
    pending(&mut f2);
    assert!(connector.conn(2).is_dropped());
    assert_eq!(connector.open(), 1);
    let t = handle.stats().total;
    assert_eq!(
        (t.opened, t.closed, t.idle, t.leased),
        (2, 1, 0, 1),
        "{t:?}"
    );
    // One connection open (held by f2), a total of 2: this checkout may connect.
    let mut f3 = start(&mut pool, Req::new("k").id(3));
    match f3.poll() {
        std::task::Poll::Ready(Ok(_)) => {}
        other => panic!(
            "a checkout with a free slot did not connect: {other:?} (stats {:?}, open {})",
            handle.stats().total,
            connector.open()
        ),
    }
}

/// The same leak seen by close: everything comes back, yet the pool never reports drained.
#[tokio::test(start_paused = true)]
async fn after_a_broken_idle_replacement_close_never_drains() {
    let connector = Connector::with_limits(2, 2);
    let (mut pool, handle) = pool(limits(2, 2).build().unwrap(), &connector);
    two_idle(&mut pool);
    connector.conn(2).set_broken();
    assert_eq!(send_now(&mut pool, Req::new("k").id(2)).conn, 1);
    assert_quiet(&handle.stats());
    let report = handle.close(Duration::from_secs(1)).await;
    assert_eq!(connector.open(), 0);
    assert!(report.drained, "nothing is open, yet: {report:?}");
}
