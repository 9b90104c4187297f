//! The hand-off to a waiter after the pool's lock is released: a waiter is taken off its queue
//! under the lock, and its grant written into its cell afterwards. Checkouts dropped at every
//! stage must leak nothing, whatever the interleaving; and a connection whose drop panics
//! while the pool closes it must not take the grants of the same batch down with it. (The
//! narrowest window, a waiter leaving between being taken off the queue and receiving its
//! grant, is staged step by step in the unit tests of `src/pool.rs`.)

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use palisade_pool::{Config, PoolClosed};
use tower::{Service, ServiceExt};

const KEYS: [&str; 5] = ["a", "b", "c", "d", "e"];

/// One task: requests on random keys, one in three given up after a few polls — while
/// queued, connecting, handed a connection not yet collected, or in flight.
async fn cancelling_task(mut pool: TestPool, task: u64, given_up: Arc<AtomicUsize>) {
    let mut rng = Rng::new(task + 7);
    for round in 0..8 {
        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
        let req = Req::new(key)
            .id(task * 100 + round)
            .yields(rng.below(6) as usize);
        let svc = pool.ready().await.expect("the pool is always ready");
        let fut = svc.call(req);
        if rng.below(3) == 0 {
            match poll_at_most(fut, rng.below(4)).await {
                Some(result) => {
                    result.expect("served");
                }
                None => {
                    given_up.fetch_add(1, SeqCst);
                }
            }
        } else {
            fut.await.expect("served");
        }
        for _ in 0..rng.below(3) {
            tokio::task::yield_now().await;
        }
    }
}

/// Waits (yielding) until nothing is leased or connecting: connections left busy are handed
/// back by release tasks that may still be running on other workers.
async fn until_quiet(handle: &palisade_pool::PoolHandle<Key>) {
    for _ in 0..100_000 {
        let t = handle.stats().total;
        if t.leased == 0 && t.connecting == 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// 300 tasks over 5 keys on a 4-worker runtime, checkouts dropped at every stage: no slot or
/// connection leaks, the limits hold, and every key serves again afterwards.
#[test]
fn cancelled_checkouts_on_a_multi_thread_runtime_leak_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let connector = Connector::with_limits(3, 8);
        let config = limits(3, 8).max_idle_per_key(3).build().unwrap();
        let (pool, handle) = pool(config, &connector);
        let given_up = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..300)
            .map(|i| tokio::spawn(cancelling_task(pool.clone(), i, given_up.clone())))
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        until_quiet(&handle).await;
        assert!(given_up.load(SeqCst) > 0, "some checkouts were given up");
        assert_eq!(connector.violations(), Vec::<String>::new());
        let stats = handle.stats();
        assert_quiet(&stats);
        // What is still open is exactly what the pool keeps idle, per key and in total.
        assert_eq!(connector.open(), stats.total.idle, "{:?}", stats.total);
        for (k, s) in &stats.keys {
            assert_eq!(connector.open_for(k), s.idle, "{k}: {s:?}");
        }
        for key in KEYS {
            let mut pool = pool.clone();
            let svc = pool.ready().await.unwrap();
            svc.call(Req::new(key))
                .await
                .expect("served after the storm");
        }
    });
}

/// Many waiters on one connection per key, dropped at random points, on two worker threads,
/// the pool closed mid-run in one iteration of three: nothing leaks, and a closed pool
/// drains.
#[test]
fn waiters_dropped_around_the_hand_off_and_a_close_leak_nothing() {
    for iter in 0..150u64 {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let connector = Connector::with_limits(1, 2);
            let config = Config::builder()
                .max_connections_per_key(1)
                .max_connections(2)
                .max_waiters(10_000)
                .build()
                .unwrap();
            let (pool, handle) = pool(config, &connector);
            let close_at = (iter % 3 == 0).then_some(iter * 7 % 40);
            let tasks: Vec<_> = (0..24u64)
                .map(|i| {
                    let mut pool = pool.clone();
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        let mut rng = Rng::new(iter * 1000 + i);
                        for round in 0..60u64 {
                            if close_at == Some(round) && i == 0 {
                                drop(handle.close(Duration::from_secs(1)));
                            }
                            let key = ["a", "b"][rng.below(2) as usize];
                            let req = Req::new(key)
                                .id(i * 1000 + round)
                                .yields(rng.below(3) as usize);
                            let svc = pool.ready().await.unwrap();
                            let fut = svc.call(req);
                            if rng.below(2) == 0 {
                                drop(poll_at_most(fut, rng.below(3)).await);
                            } else {
                                // Refused once the pool is closed.
                                let _ = fut.await;
                            }
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            until_quiet(&handle).await;
            assert_eq!(connector.violations(), Vec::<String>::new());
            let stats = handle.stats();
            assert_quiet(&stats);
            assert_eq!(connector.open(), stats.total.idle, "{:?}", stats.total);
            if close_at.is_some() {
                let report = handle.close(Duration::from_secs(1)).await;
                assert!(report.drained, "iteration {iter}: {report:?}");
            }
        });
    }
}

/// A connection whose drop panics while `close()` closes it: the panic is caught and
/// reported, and the close's grants to queued waiters, made in the same batch, still reach
/// them (before the catch they were lost with the batch, and a waiter already off its queue
/// was never settled: not by a poll, not by its checkout timeout).
#[tokio::test(start_paused = true)]
async fn a_connection_panicking_in_drop_during_close_loses_no_waiters_grant() {
    let connector = Connector::new();
    let config = limits(1, 4)
        .checkout_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    // An idle connection of "a", whose drop will panic.
    let a = send_now(&mut pool, Req::new("a"));
    // "b" at its per-key limit, and a checkout queued behind it.
    let (req, release) = Req::new("b").held();
    let mut held = start(&mut pool, req);
    pending(&mut held);
    let mut waiter = start(&mut pool, Req::new("b"));
    pending(&mut waiter);
    assert_eq!(handle.stats().total.waiters, 1);

    let a_id = a.conn;
    connector.on_drop(move |id| {
        if id == a_id {
            panic!("connection {id}: close failed");
        }
    });
    let closing = handle.close(Duration::from_secs(1));
    connector.on_drop(|_| {});
    assert!(waiter.is_woken());
    let e = err(&mut waiter);
    assert!(e.downcast_ref::<PoolClosed>().is_some(), "{e}");
    // The panicking connection was still counted closed: only "b"'s leased one is left.
    let t = handle.stats().total;
    assert_eq!((t.idle, t.leased, t.waiters), (0, 1, 0), "{t:?}");
    // And the close completes once that one comes back.
    release.send(()).unwrap();
    ok(&mut held);
    let report = closing.await;
    assert!(report.drained, "{report:?}");
}
