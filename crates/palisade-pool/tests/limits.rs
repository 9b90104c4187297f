//! Hard limits: per key and in total, counted over connections connecting, idle and in use, and
//! shared by every service made from one layer. The connector checks the limits on every open
//! against its own live count (incremented on open, decremented on the connection's drop).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::*;
use palisade_pool::{Config, PoolLayer, PoolTimeout};
use tower::{Layer, Service, ServiceExt};

const KEYS: [&str; 5] = ["a", "b", "c", "d", "e"];

/// What one stress task observed.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    call_failed: AtomicUsize,
}

/// One stress task: several requests on random keys; the connection holds each request for a
/// random number of yields; some requests fail, some leave their connection broken, some leave
/// it busy for a while (as an HTTP/1 connection whose body is still being read).
async fn stress_task(mut pool: TestPool, connector: Connector, task: u64, tally: Arc<Tally>) {
    let mut rng = Rng::new(task + 1);
    for round in 0..6 {
        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
        let mut req = Req::new(key)
            .id(task * 100 + round)
            .yields(rng.below(12) as usize);
        let fate = rng.below(10);
        match fate {
            0 => req = req.fail(),
            1 => req = req.break_after(),
            2 => req = req.busy_after(),
            _ => {}
        }
        let svc = pool.ready().await.expect("the pool is always ready");
        match svc.call(req).await {
            Ok(resp) => {
                assert_eq!(resp.key, key);
                tally.ok.fetch_add(1, SeqCst);
                if fate == 2 {
                    // The body is read a little later; only then may the connection go back.
                    for _ in 0..rng.below(6) {
                        tokio::task::yield_now().await;
                    }
                    connector.conn(resp.conn).set_busy(false);
                }
            }
            Err(e) if e.downcast_ref::<CallFailed>().is_some() => {
                tally.call_failed.fetch_add(1, SeqCst);
            }
            Err(e) => panic!("task {task} round {round} ({key}): unexpected error: {e}"),
        }
        for _ in 0..rng.below(4) {
            tokio::task::yield_now().await;
        }
    }
}

/// The end state of a stress run: every limit held on every open, nothing in use or waiting,
/// and the books balance per key and in total.
fn assert_stress_end(
    handle: &palisade_pool::PoolHandle<Key>,
    connector: &Connector,
    tally: &Tally,
    tasks: u64,
) {
    assert_eq!(connector.violations(), Vec::<String>::new());
    let stats = handle.stats();
    assert_quiet(&stats);
    let t = stats.total;
    assert_eq!(
        tally.ok.load(SeqCst) + tally.call_failed.load(SeqCst),
        tasks as usize * 6
    );
    assert_eq!(t.failed, 0, "{t:?}");
    assert_eq!(t.opened, connector.opened() as u64, "{t:?}");
    // What is still open is exactly what the pool keeps idle.
    assert_eq!(connector.open(), t.idle, "{t:?}");
    for (k, s) in &stats.keys {
        assert_eq!(connector.open_for(k), s.idle, "{k}: {s:?}");
        assert!(s.idle <= 3, "{k}: {s:?}");
    }
    // Requests served: every one was served by a connection opened for it or reused.
    assert_eq!(
        t.opened + t.reused,
        (tally.ok.load(SeqCst) + tally.call_failed.load(SeqCst)) as u64,
        "{t:?}"
    );
    // Connections were shared: far fewer opened than requests sent.
    assert!(t.reused > 0, "{t:?}");
}

/// The checkout timeout stays on (30 s): a lost wake-up shows as a `PoolTimeout` (the paused
/// runtime jumps the clock when every task is parked) instead of a hang.
fn stress_config() -> Config {
    limits(3, 8).max_idle_per_key(3).build().unwrap()
}

/// 200 tasks over 5 keys on a paused current-thread runtime: deterministic interleavings,
/// driven by yields.
#[tokio::test(start_paused = true)]
async fn stress_paused_runtime_keeps_limits_and_books() {
    let connector = Connector::with_limits(3, 8);
    let (pool, handle) = pool(stress_config(), &connector);
    let tally = Arc::new(Tally::default());
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(stress_task(
                pool.clone(),
                connector.clone(),
                i,
                tally.clone(),
            ))
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // Connections left busy are handed back by the pool's release tasks.
    settle().await;
    assert_stress_end(&handle, &connector, &tally, 200);
}

/// The same on a multi-thread runtime, on the real clock: any interleaving the scheduler
/// produces must keep the limits.
#[test]
fn stress_multi_thread_runtime_keeps_limits_and_books() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let connector = Connector::with_limits(3, 8);
        let (pool, handle) = pool(stress_config(), &connector);
        let tally = Arc::new(Tally::default());
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                tokio::spawn(stress_task(
                    pool.clone(),
                    connector.clone(),
                    i,
                    tally.clone(),
                ))
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        // Release tasks of busy connections may still be finishing on other workers.
        for _ in 0..100_000 {
            if handle.stats().total.leased == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_stress_end(&handle, &connector, &tally, 200);
    });
}

/// The per-key limit: the next checkout of a full key waits, even with room in the total.
#[tokio::test(start_paused = true)]
async fn per_key_limit_makes_the_next_checkout_wait() {
    let connector = Connector::with_limits(2, 10);
    let (mut pool, handle) = pool(limits(2, 10).build().unwrap(), &connector);
    let (r1, t1) = Req::new("a").held();
    let (r2, _t2) = Req::new("a").held();
    let mut f1 = start(&mut pool, r1);
    let mut f2 = start(&mut pool, r2);
    pending(&mut f1);
    pending(&mut f2);
    let mut f3 = start(&mut pool, Req::new("a").id(3));
    pending(&mut f3);
    let a = key(&handle, "a");
    assert_eq!((a.leased, a.waiters, a.opened), (2, 1, 2));
    // Another key still connects.
    assert_eq!(send_now(&mut pool, Req::new("b")).key, "b");
    assert_eq!(connector.connects(), 3);
    // The first connection back serves the waiter.
    t1.send(()).unwrap();
    let first = ok(&mut f1);
    let third = ok(&mut f3);
    assert_eq!(third.conn, first.conn);
    assert_eq!(connector.connects(), 3);
    assert_eq!(connector.violations(), Vec::<String>::new());
}

/// The total limit: with every slot in use over other keys, a checkout of a new key waits; the
/// first connection to come back makes room for it (it is closed, as its key has no waiter).
#[tokio::test(start_paused = true)]
async fn total_limit_makes_a_new_key_wait_until_a_slot_frees() {
    let connector = Connector::with_limits(2, 3);
    let (mut pool, handle) = pool(limits(2, 3).build().unwrap(), &connector);
    let mut holds = Vec::new();
    let mut futs = Vec::new();
    for k in ["a", "a", "b"] {
        let (r, t) = Req::new(k).held();
        let mut f = start(&mut pool, r);
        pending(&mut f);
        holds.push(t);
        futs.push(f);
    }
    let mut c = start(&mut pool, Req::new("c"));
    pending(&mut c);
    assert_eq!(handle.stats().total.waiters, 1);
    assert_eq!(connector.open(), 3);
    // The "b" connection comes back: "b" has no waiter, so it is closed to make room for "c".
    holds.pop().unwrap().send(()).unwrap();
    let b = ok(&mut futs[2]);
    assert!(c.is_woken());
    let resp = ok(&mut c);
    assert_eq!(resp.key, "c");
    assert!(connector.conn(b.conn).is_dropped());
    let stats = handle.stats();
    assert_eq!(key(&handle, "b").evicted, 1);
    assert_eq!((stats.total.leased, stats.total.idle), (2, 1));
    assert_eq!(connector.violations(), Vec::<String>::new());
    assert_books(&stats);
}

/// Clones of a service and services from repeated `layer()` calls share one pool: one set of
/// connections, one set of limits.
#[tokio::test(start_paused = true)]
async fn clones_and_repeated_layer_calls_share_one_pool() {
    let connector = Connector::with_limits(1, 2);
    let layer = PoolLayer::new(limits(1, 2).build().unwrap(), key_of as KeyFn);
    let handle = layer.handle();
    let mut first: TestPool = layer.layer(connector.clone());
    let mut second: TestPool = layer.layer(connector.clone());
    let mut clone = first.clone();
    let mut from_cloned_layer: TestPool = layer.clone().layer(connector.clone());

    let (r0, t0) = Req::new("a").id(0).held();
    let mut f0 = start(&mut first, r0);
    pending(&mut f0);
    // The same key through the others: the per-key limit of 1 already holds.
    let mut f1 = start(&mut second, Req::new("a").id(1));
    let mut f2 = start(&mut clone, Req::new("a").id(2));
    pending(&mut f1);
    pending(&mut f2);
    // Another key fills the total of 2; a third key waits on the total.
    let (rb, tb) = Req::new("b").id(3).held();
    let mut fb = start(&mut from_cloned_layer, rb);
    pending(&mut fb);
    let mut fc = start(&mut second, Req::new("c").id(4));
    pending(&mut fc);

    let stats = handle.stats();
    assert_eq!(
        (stats.total.leased, stats.total.waiters, stats.total.opened),
        (2, 3, 2)
    );
    assert_eq!(connector.connects(), 2);
    // The connection opened through `first` serves the waiters of `second` and `clone`.
    t0.send(()).unwrap();
    let c0 = ok(&mut f0).conn;
    assert_eq!(ok(&mut f1).conn, c0);
    assert_eq!(ok(&mut f2).conn, c0);
    tb.send(()).unwrap();
    ok(&mut fb);
    ok(&mut fc);
    assert_eq!(connector.violations(), Vec::<String>::new());
    assert_books(&handle.stats());
}

/// A pool made with `Pool::new` is its own pool: two of them do not share limits.
#[tokio::test(start_paused = true)]
async fn separate_pools_do_not_share_limits() {
    let connector = Connector::new();
    let (mut one, h1) = pool(limits(1, 1).build().unwrap(), &connector);
    let (mut two, h2) = pool(limits(1, 1).build().unwrap(), &connector);
    let (r1, _t1) = Req::new("a").held();
    let (r2, _t2) = Req::new("a").held();
    let mut f1 = start(&mut one, r1);
    let mut f2 = start(&mut two, r2);
    pending(&mut f1);
    pending(&mut f2);
    assert_eq!(h1.stats().total.leased, 1);
    assert_eq!(h2.stats().total.leased, 1);
    assert_eq!(h1.stats().total.waiters + h2.stats().total.waiters, 0);
}

/// A waiter never connects above the limit, however long it waits: with the limit reached and
/// nothing returned, it times out rather than connecting.
#[tokio::test(start_paused = true)]
async fn a_waiter_never_connects_above_the_limit() {
    let connector = Connector::with_limits(1, 1);
    let config = limits(1, 1)
        .checkout_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let (mut pool, _handle) = pool(config, &connector);
    let (r0, _t0) = Req::new("a").held();
    let mut f0 = start(&mut pool, r0);
    pending(&mut f0);
    let mut f1 = start(&mut pool, Req::new("b"));
    pending(&mut f1);
    tokio::time::advance(Duration::from_millis(3_001)).await;
    settle().await;
    let e = err(&mut f1);
    assert!(e.downcast_ref::<PoolTimeout>().is_some(), "{e}");
    assert_eq!(connector.connects(), 1);
}

/// The slot of a closed connection is handed on only once the connection is really gone.
///
/// A connection's drop (a socket close, a TLS close_notify) runs on whichever thread closes it.
/// While it runs, the connection is still open; a checkout on another thread must not be able
/// to open a new one in its place above the limit.
#[test]
fn a_slot_is_not_reused_while_its_connection_is_still_closing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let connector = Connector::with_limits(1, 1);
        let (mut pool, _handle) = pool(limits(1, 1).build().unwrap(), &connector);
        let (r0, _t0) = Req::new("a").held();
        let mut f0 = Box::pin(pool.ready().await.unwrap().call(r0));
        assert!(futures::poll!(&mut f0).is_pending());

        // The first connection's drop signals, then blocks until the test says so.
        let (entered_tx, entered_rx) = mpsc::channel::<u64>();
        let (proceed_tx, proceed_rx) = mpsc::channel::<()>();
        let entered_tx = Mutex::new(entered_tx);
        let proceed_rx = Mutex::new(proceed_rx);
        connector.on_drop(move |id| {
            if id == 1 {
                entered_tx.lock().unwrap().send(id).unwrap();
                proceed_rx.lock().unwrap().recv().unwrap();
            }
        });
        // Another thread abandons the request in flight: the connection is closed there.
        let closer = std::thread::spawn(move || drop(f0));
        assert_eq!(entered_rx.recv().unwrap(), 1);

        // Meanwhile, on this thread: a checkout of the same key.
        let mut f1 = start(&mut pool, Req::new("a"));
        let outcome = f1.poll();
        proceed_tx.send(()).unwrap();
        closer.join().unwrap();
        assert_eq!(
            connector.violations(),
            Vec::<String>::new(),
            "a second connection was opened while the first was still closing ({outcome:?})"
        );
    });
}
