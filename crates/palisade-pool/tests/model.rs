//! Random sequences of checkouts, returns, cancellations, broken and busy connections and time
//! steps, on a paused runtime. After every step: the limits held on every open, the books
//! balance, what is open is exactly what is idle or leased, and no checkout waits while it
//! could be served (a free slot, or an idle connection it could use or evict).

mod common;

use std::time::Duration;

use common::*;
use palisade_pool::PoolTimeout;
use proptest::prelude::*;
use tokio::sync::oneshot;

#[derive(Debug, Clone)]
enum Op {
    /// A checkout of key `key`; `hold`: its request stays in flight until released.
    Start { key: u8, hold: bool, fate: u8 },
    /// Finish the request of checkout `i` (if it is held).
    Release(usize),
    /// Drop checkout `i`, wherever it is.
    Cancel(usize),
    /// Connection `i` (of those opened so far) breaks.
    Break(usize),
    /// Connection `i` is done being busy.
    Unbusy(usize),
    /// Time passes.
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, any::<bool>(), 0u8..10).prop_map(|(key, hold, fate)| Op::Start { key, hold, fate }),
        3 => (0usize..64).prop_map(Op::Release),
        1 => (0usize..64).prop_map(Op::Cancel),
        1 => (0usize..64).prop_map(Op::Break),
        1 => (0usize..64).prop_map(Op::Unbusy),
        1 => (1u16..4000).prop_map(Op::Advance),
    ]
}

struct Checkout {
    fut: Fut,
    hold: Option<oneshot::Sender<()>>,
    done: bool,
}

const KEYS: [&str; 3] = ["a", "b", "c"];

fn check(
    handle: &palisade_pool::PoolHandle<Key>,
    connector: &Connector,
    per_key: usize,
    total: usize,
    step: usize,
) {
    assert_eq!(connector.violations(), Vec::<String>::new(), "step {step}");
    let stats = handle.stats();
    assert_books(&stats);
    let t = stats.total;
    assert_eq!(
        connector.open(),
        t.idle + t.leased,
        "step {step}: open connections vs {t:?}"
    );
    let live = t.idle + t.leased + t.connecting;
    assert!(live <= total, "step {step}: {t:?}");
    for (k, s) in &stats.keys {
        let key_live = s.idle + s.leased + s.connecting;
        assert!(key_live <= per_key, "step {step}: {k}: {s:?}");
        if s.waiters > 0 {
            assert_eq!(
                s.idle, 0,
                "step {step}: {k} has waiters and idle connections: {s:?}"
            );
            if key_live < per_key {
                assert!(
                    live >= total && t.idle == 0,
                    "step {step}: {k} waits with room in its key, {t:?} in total (idle could be evicted)"
                );
            }
        }
    }
}

async fn run(ops: Vec<Op>, per_key: usize, total: usize) {
    let connector = Connector::with_limits(per_key, total);
    let config = limits(per_key, total)
        .checkout_timeout(Duration::from_secs(10))
        .idle_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    let mut checkouts: Vec<Checkout> = Vec::new();
    let poll_all = |checkouts: &mut Vec<Checkout>| {
        for c in checkouts.iter_mut().filter(|c| !c.done) {
            if let std::task::Poll::Ready(result) = c.fut.poll() {
                c.done = true;
                if let Err(e) = result {
                    assert!(
                        e.downcast_ref::<PoolTimeout>().is_some()
                            || e.downcast_ref::<ConnBroken>().is_some()
                            || e.downcast_ref::<CallFailed>().is_some(),
                        "unexpected error: {e}"
                    );
                }
            }
        }
    };
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Start { key, hold, fate } => {
                let mut req = Req::new(KEYS[key as usize]).id(checkouts.len() as u64);
                match fate {
                    0 => req = req.fail(),
                    1 => req = req.break_after(),
                    2 => req = req.busy_after(),
                    _ => {}
                }
                let (req, tx) = if hold {
                    let (r, t) = req.held();
                    (r, Some(t))
                } else {
                    (req, None)
                };
                let fut = start(&mut pool, req);
                checkouts.push(Checkout {
                    fut,
                    hold: tx,
                    done: false,
                });
            }
            Op::Release(i) => {
                if let Some(c) = checkouts.get_mut(i) {
                    if let Some(t) = c.hold.take() {
                        let _ = t.send(());
                    }
                }
            }
            Op::Cancel(i) => {
                if i < checkouts.len() {
                    let c = checkouts.remove(i);
                    drop(c);
                }
            }
            Op::Break(i) => {
                let conns = connector.conns();
                if !conns.is_empty() {
                    conns[i % conns.len()].set_broken();
                }
            }
            Op::Unbusy(i) => {
                let conns = connector.conns();
                if !conns.is_empty() {
                    // (Also one with a request in flight: harmless, the pool does not poll it then.)
                    conns[i % conns.len()].set_busy(false);
                }
            }
            Op::Advance(ms) => {
                tokio::time::advance(Duration::from_millis(ms as u64)).await;
            }
        }
        settle().await;
        poll_all(&mut checkouts);
        settle().await;
        check(&handle, &connector, per_key, total, step);
    }
    // Finish everything: release every request, let every busy connection be done.
    for c in checkouts.iter_mut() {
        if let Some(t) = c.hold.take() {
            let _ = t.send(());
        }
    }
    for _ in 0..40 {
        for c in connector.conns() {
            if c.is_busy() && !c.is_dropped() {
                c.set_busy(false);
            }
        }
        settle().await;
        poll_all(&mut checkouts);
        for c in checkouts.iter_mut() {
            if let Some(t) = c.hold.take() {
                let _ = t.send(());
            }
        }
        if checkouts.iter().all(|c| c.done) && handle.stats().total.leased == 0 {
            break;
        }
        tokio::time::advance(Duration::from_millis(500)).await;
    }
    assert!(
        checkouts.iter().all(|c| c.done),
        "some checkouts never finished"
    );
    settle().await;
    check(&handle, &connector, per_key, total, usize::MAX);
    assert_quiet(&handle.stats());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_keep_the_invariants(
        ops in proptest::collection::vec(op(), 1..60),
        per_key in 1usize..3,
        extra in 0usize..3,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(run(ops, per_key, per_key + extra));
    }
}
