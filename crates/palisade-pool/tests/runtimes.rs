//! A pool that outlives the runtime it was first used on (a client in a `static`, shared by
//! several `#[tokio::test]`s, or rebuilt runtimes): its background work (the idle sweep, and
//! the checkout timeouts) must keep working on the runtime it is used on now.

mod common;

use std::time::Duration;

use common::*;
use palisade_pool::PoolTimeout;

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// On the first runtime, a checkout times out as configured.
fn first_runtime_round(pool: &mut TestPool) {
    let rt = paused_runtime();
    rt.block_on(async {
        let (r0, t0) = Req::new("k").id(0).held();
        let mut f0 = start(pool, r0);
        pending(&mut f0);
        let mut waiter = start(pool, Req::new("k").id(1));
        pending(&mut waiter);
        tokio::time::advance(Duration::from_millis(1_001)).await;
        settle().await;
        assert!(err(&mut waiter).downcast_ref::<PoolTimeout>().is_some());
        t0.send(()).unwrap();
        ok(&mut f0);
    });
    // The runtime, and every task spawned on it, is gone.
    drop(rt);
}

#[test]
fn checkout_timeouts_still_fire_on_a_second_runtime() {
    let connector = Connector::with_limits(1, 1);
    let config = limits(1, 1)
        .checkout_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let (mut pool, _handle) = pool(config, &connector);
    first_runtime_round(&mut pool);

    let rt = paused_runtime();
    rt.block_on(async {
        let (r0, _t0) = Req::new("k").id(2).held();
        let mut f0 = start(&mut pool, r0);
        pending(&mut f0);
        let mut waiter = start(&mut pool, Req::new("k").id(3));
        pending(&mut waiter);
        tokio::time::advance(Duration::from_millis(1_001)).await;
        settle().await;
        let outcome = waiter.poll();
        assert!(
            matches!(&outcome, std::task::Poll::Ready(Err(e)) if e.downcast_ref::<PoolTimeout>().is_some()),
            "the waiter did not time out: {outcome:?}"
        );
    });
}

#[test]
fn the_idle_sweep_still_runs_on_a_second_runtime() {
    let connector = Connector::new();
    let config = limits(1, 1)
        .checkout_timeout(Duration::from_secs(1))
        .idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    first_runtime_round(&mut pool);

    let rt = paused_runtime();
    rt.block_on(async {
        let resp = send_now(&mut pool, Req::new("k"));
        settle().await;
        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(
            handle.stats().total.idle,
            0,
            "the idle connection was not swept"
        );
        assert!(connector.conn(resp.conn).is_dropped());
    });
}
