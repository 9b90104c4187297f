//! Checkout + return of a trivial connection: palisade-pool beside deadpool 0.12 and bb8 0.9.
//!
//! Everything runs in one `cargo bench -p palisade-pool`. The "connection" does nothing: for
//! palisade it is a `Service<()>` whose call is ready at once (or yields once, see below); for
//! deadpool and bb8 it is a unit value whose manager never fails (bb8 with its defaults, which
//! test each connection on checkout; deadpool with its defaults, which recycle on checkout).
//!
//! Groups:
//!
//! 1. `one_task`: one checkout + return per iteration on a current-thread runtime, pool of 8,
//!    one key. palisade: `ready().await`, `call(())`, `.await` (the call is the checkout, the
//!    request and the return). deadpool/bb8: `get().await`, then drop.
//! 2. `contended/64x8` and `contended/512x8`: 64 (and 512) tasks on a 2-worker runtime share a
//!    pool of 8, each holding its connection across one `yield_now().await` per operation
//!    (palisade: the connection's call future yields once). Time per iteration is wall time for
//!    all tasks / total operations, so the figure is aggregate ns per operation.
//! 3. `rounds` (printed, not criterion): the 64×8 workload run for each pool back to back, 7
//!    rounds of 200,000 operations, printing operations per second and palisade's ratio to each
//!    peer per round. The machine has slow phases; a ratio within one round compares like with
//!    like. Set `POOL_BENCH_NO_ROUNDS=1` to skip them (when profiling one group).
//!
//! Wall-clock time is read with `tokio::time::Instant` (std's unless a runtime pauses time).

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use criterion::{Criterion, Throughput};
use palisade_pool::{Config, Pool};
use tokio::runtime::Runtime;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

const SLOTS: usize = 8;
const WORKERS: usize = 2;

// ===== palisade =====

/// A connection whose call completes at once, or after yielding once.
struct Conn {
    yields: bool,
}

impl Service<()> for Conn {
    type Response = ();
    type Error = Infallible;
    type Future = YieldOnce;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> YieldOnce {
        YieldOnce {
            yielded: !self.yields,
        }
    }
}

/// Ready on the second poll (like `tokio::task::yield_now`), or at once.
struct YieldOnce {
    yielded: bool,
}

impl Future for YieldOnce {
    type Output = Result<(), Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.yielded {
            Poll::Ready(Ok(()))
        } else {
            self.yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

#[derive(Clone, Copy)]
struct Connector {
    yields: bool,
}

impl Service<()> for Connector {
    type Response = Conn;
    type Error = Infallible;
    type Future = Ready<Result<Conn, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        ready(Ok(Conn {
            yields: self.yields,
        }))
    }
}

type Ours = Pool<Connector, (), fn(&()) -> ()>;

fn key_of(_: &()) {}

fn ours(yields: bool) -> Ours {
    let config = Config::builder()
        .max_connections_per_key(SLOTS)
        .max_connections(SLOTS)
        .build()
        .unwrap();
    Pool::new(Connector { yields }, config, key_of as fn(&()) -> ())
}

async fn ours_op(pool: &mut Ours) {
    pool.ready().await.unwrap().call(()).await.unwrap();
}

// ===== deadpool =====

struct DeadpoolManager;

impl deadpool::managed::Manager for DeadpoolManager {
    type Type = ();
    type Error = Infallible;

    async fn create(&self) -> Result<(), Infallible> {
        Ok(())
    }

    async fn recycle(
        &self,
        _: &mut (),
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Infallible> {
        Ok(())
    }
}

type Deadpool = deadpool::managed::Pool<DeadpoolManager>;

fn deadpool() -> Deadpool {
    deadpool::managed::Pool::builder(DeadpoolManager)
        .max_size(SLOTS)
        .build()
        .unwrap()
}

// ===== bb8 =====

struct Bb8Manager;

impl bb8::ManageConnection for Bb8Manager {
    type Connection = ();
    type Error = Infallible;

    async fn connect(&self) -> Result<(), Infallible> {
        Ok(())
    }

    async fn is_valid(&self, _: &mut ()) -> Result<(), Infallible> {
        Ok(())
    }

    fn has_broken(&self, _: &mut ()) -> bool {
        false
    }
}

type Bb8 = bb8::Pool<Bb8Manager>;

fn bb8(rt: &Runtime) -> Bb8 {
    rt.block_on(
        bb8::Pool::builder()
            .max_size(SLOTS as u32)
            .build(Bb8Manager),
    )
    .unwrap()
}

// ===== workloads =====

fn one_task(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("one_task");
    g.throughput(Throughput::Elements(1));

    let mut pool = ours(false);
    g.bench_function("palisade", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    ours_op(&mut pool).await;
                }
                start.elapsed()
            })
        })
    });
    let stats = pool.handle().stats();
    assert!(
        stats.total.opened <= 1,
        "one connection served every checkout"
    );

    let pool = deadpool();
    g.bench_function("deadpool", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    drop(black_box(pool.get().await.unwrap()));
                }
                start.elapsed()
            })
        })
    });

    let pool = bb8(&rt);
    g.bench_function("bb8", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    drop(black_box(pool.get().await.unwrap()));
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

fn multi_thread() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `ops` operations spread over `tasks` tasks; returns the wall time.
fn run_ours(rt: &Runtime, pool: &Ours, tasks: u64, ops: u64) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let mut pool = pool.clone();
                let n = ops / tasks + u64::from(t < ops % tasks);
                tokio::spawn(async move {
                    for _ in 0..n {
                        ours_op(&mut pool).await;
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        start.elapsed()
    })
}

fn run_deadpool(rt: &Runtime, pool: &Deadpool, tasks: u64, ops: u64) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let pool = pool.clone();
                let n = ops / tasks + u64::from(t < ops % tasks);
                tokio::spawn(async move {
                    for _ in 0..n {
                        let obj = pool.get().await.unwrap();
                        tokio::task::yield_now().await;
                        drop(obj);
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        start.elapsed()
    })
}

fn run_bb8(rt: &Runtime, pool: &Bb8, tasks: u64, ops: u64) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let pool = pool.clone();
                let n = ops / tasks + u64::from(t < ops % tasks);
                tokio::spawn(async move {
                    for _ in 0..n {
                        let conn = pool.get().await.unwrap();
                        tokio::task::yield_now().await;
                        drop(conn);
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        start.elapsed()
    })
}

fn contended(c: &mut Criterion) {
    let rt = multi_thread();
    let ours = ours(true);
    let dp = deadpool();
    let b8 = bb8(&rt);
    for tasks in [64u64, 512] {
        let mut g = c.benchmark_group(format!("contended/{tasks}x{SLOTS}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("palisade", |b| {
            b.iter_custom(|iters| run_ours(&rt, &ours, tasks, iters.max(tasks)))
        });
        g.bench_function("deadpool", |b| {
            b.iter_custom(|iters| run_deadpool(&rt, &dp, tasks, iters.max(tasks)))
        });
        g.bench_function("bb8", |b| {
            b.iter_custom(|iters| run_bb8(&rt, &b8, tasks, iters.max(tasks)))
        });
        g.finish();
    }
    let stats = ours.handle().stats();
    assert!(
        stats.total.opened <= SLOTS as u64,
        "never more than {SLOTS} connections"
    );
    assert_eq!((stats.total.leased, stats.total.waiters), (0, 0));
}

fn rounds() {
    const OPS: u64 = 200_000;
    const TASKS: u64 = 64;
    let rt = multi_thread();
    let ours = ours(true);
    let dp = deadpool();
    let b8 = bb8(&rt);
    let per_sec = |d: Duration| OPS as f64 / d.as_secs_f64();
    println!("\nrounds: {TASKS} tasks x {SLOTS} slots, {OPS} operations per pool per round, ops/s");
    println!("round  palisade    deadpool    bb8         vs deadpool  vs bb8");
    for round in 1..=7 {
        let a = per_sec(run_ours(&rt, &ours, TASKS, OPS));
        let d = per_sec(run_deadpool(&rt, &dp, TASKS, OPS));
        let b = per_sec(run_bb8(&rt, &b8, TASKS, OPS));
        println!(
            "{round:>5}  {a:>10.0}  {d:>10.0}  {b:>10.0}  {:>10.2}x  {:>5.2}x",
            a / d,
            a / b
        );
    }
}

fn main() {
    // What `criterion_group!` and `criterion_main!` expand to, plus the printed rounds.
    let mut c = Criterion::default().configure_from_args();
    one_task(&mut c);
    contended(&mut c);
    let skip_rounds = std::env::var_os("POOL_BENCH_NO_ROUNDS").is_some();
    if !skip_rounds && !std::env::args().any(|a| a == "--test" || a == "--list") {
        rounds();
    }
    Criterion::default().configure_from_args().final_summary();
}
