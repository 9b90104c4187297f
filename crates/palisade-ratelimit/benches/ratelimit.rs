//! Benchmarks of `palisade-ratelimit` beside `governor` and `tower::limit::RateLimit`.
//!
//! Three groups, all run by `cargo bench -p palisade-ratelimit`:
//!
//! 1. `core_check`: one admitted `check()` on a direct limiter, 1 and 2 threads.
//! 2. `service_path`: one `poll_ready` + `call` + poll of the response, through a layer.
//!
//! Both run palisade on each of its clocks: `palisade` on tokio's (the default, which paused
//! time drives) and `palisade_tsc` on `Clock::tsc()` (the CPU's counter through quanta, the
//! clock governor reads by default). `governor_std_clock` is governor on std's clock.
//! 3. `achieved_rate`: 1 request per ms, burst 1, 16 waiters; the time per iteration is the
//!    time to admit 1000 requests (ideal 1.000 s). A table of achieved rates follows the run.
//!
//! Wall-clock time is read with `tokio::time::Instant`, which is `std::time::Instant` unless a
//! runtime pauses time (no bench does): benches measure the real clock on purpose.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{ready, Future};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

/// A rate so high it never binds: one request per nanosecond, burst `u32::MAX`.
fn huge_quota() -> palisade_ratelimit::Quota {
    palisade_ratelimit::Quota::per_second(1_000_000_000)
        .and_then(|q| q.burst(u32::MAX))
        .expect("valid quota")
}

fn huge_governor_quota() -> governor::Quota {
    governor::Quota::per_second(NonZeroU32::new(1_000_000_000).expect("non-zero"))
        .allow_burst(NonZeroU32::MAX)
}

// ===== 1. core check =====

/// Runs `iters` checks split over two threads; returns the wall time from the start signal
/// until both have finished.
fn two_threads<F: Fn() -> bool + Sync>(iters: u64, check: F) -> Duration {
    let barrier = Barrier::new(3);
    let admitted = AtomicU64::new(0);
    let halves = [iters / 2, iters - iters / 2];
    let elapsed = std::thread::scope(|s| {
        for n in halves {
            let (barrier, admitted, check) = (&barrier, &admitted, &check);
            s.spawn(move || {
                barrier.wait();
                let mut ok = 0;
                for _ in 0..n {
                    ok += u64::from(black_box(check()));
                }
                admitted.fetch_add(ok, Ordering::Relaxed);
            });
        }
        barrier.wait();
        let start = Instant::now();
        // The scope joins both threads before it returns: measure after that.
        start
    })
    .elapsed();
    assert_eq!(
        admitted.load(Ordering::Relaxed),
        iters,
        "a check was refused"
    );
    elapsed
}

fn core_check(c: &mut Criterion) {
    let mut g = c.benchmark_group("core_check");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));

    let ours = palisade_ratelimit::RateLimiter::new(huge_quota());
    let ours_tsc =
        palisade_ratelimit::RateLimiter::with_clock(huge_quota(), palisade_ratelimit::Clock::tsc());
    let theirs = governor::RateLimiter::direct(huge_governor_quota());
    // governor on the clock ours reads (std's monotonic `Instant`, which tokio's is outside
    // paused time): the algorithms side by side, without the clocks' difference.
    let theirs_std = governor::RateLimiter::direct_with_clock(
        huge_governor_quota(),
        governor::clock::MonotonicClock,
    );
    assert!(ours.check().is_ok());
    assert!(ours_tsc.check().is_ok());
    assert!(theirs.check().is_ok());
    assert!(theirs_std.check().is_ok());

    g.bench_function("palisade/1_thread", |b| {
        b.iter(|| black_box(&ours).check().is_ok())
    });
    g.bench_function("palisade_tsc/1_thread", |b| {
        b.iter(|| black_box(&ours_tsc).check().is_ok())
    });
    g.bench_function("governor/1_thread", |b| {
        b.iter(|| black_box(&theirs).check().is_ok())
    });
    g.bench_function("governor_std_clock/1_thread", |b| {
        b.iter(|| black_box(&theirs_std).check().is_ok())
    });
    g.bench_function("palisade/2_threads", |b| {
        b.iter_custom(|iters| two_threads(iters, || ours.check().is_ok()))
    });
    g.bench_function("palisade_tsc/2_threads", |b| {
        b.iter_custom(|iters| two_threads(iters, || ours_tsc.check().is_ok()))
    });
    g.bench_function("governor/2_threads", |b| {
        b.iter_custom(|iters| two_threads(iters, || theirs.check().is_ok()))
    });
    g.bench_function("governor_std_clock/2_threads", |b| {
        b.iter_custom(|iters| two_threads(iters, || theirs_std.check().is_ok()))
    });
    g.finish();
}

/// The clock reads inside the checks above: tokio's `Instant::now()` (what palisade reads, so
/// that paused time drives it; std's monotonic clock underneath) and governor's default quanta
/// clock (the CPU's time-stamp counter).
fn clocks(c: &mut Criterion) {
    use governor::clock::Clock;
    let mut g = c.benchmark_group("clock");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    g.bench_function("tokio_instant_now", |b| {
        b.iter(|| black_box(Instant::now()))
    });
    let quanta = governor::clock::QuantaClock::default();
    g.bench_function("governor_quanta_now", |b| {
        b.iter(|| black_box(quanta.now()))
    });
    g.finish();
}

// ===== 2. service path =====

/// One request through `svc`: `poll_ready`, `call`, and one poll of the response, which must
/// all complete at once (the rate never binds and the inner service answers at once).
#[inline]
fn one_request<S>(svc: &mut S, cx: &mut Context<'_>)
where
    S: Service<u32, Response = u32>,
    S::Error: Debug,
{
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("service not ready: {other:?}"),
    }
    let fut = pin!(svc.call(black_box(7)));
    match fut.poll(cx) {
        Poll::Ready(Ok(out)) => {
            black_box(out);
        }
        Poll::Ready(Err(e)) => panic!("request failed: {e:?}"),
        Poll::Pending => panic!("response pending"),
    }
}

fn service_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("service_path");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));

    // tower's RateLimit makes its `Sleep` at construction: it needs a runtime's timer.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let inner = || tower::service_fn(|n: u32| ready(Ok::<_, Infallible>(n + 1)));
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());

    let mut ours = ServiceBuilder::new()
        .layer(palisade_ratelimit::RateLimitLayer::new(huge_quota()))
        .service(inner());
    let mut ours_tsc = ServiceBuilder::new()
        .layer(palisade_ratelimit::RateLimitLayer::from_limiter(
            palisade_ratelimit::RateLimiter::with_clock(
                huge_quota(),
                palisade_ratelimit::Clock::tsc(),
            ),
        ))
        .service(inner());
    let mut theirs = ServiceBuilder::new()
        .layer(tower::limit::RateLimitLayer::new(
            u64::MAX,
            Duration::from_secs(1),
        ))
        .service(inner());

    g.bench_function("palisade", |b| b.iter(|| one_request(&mut ours, &mut cx)));
    g.bench_function("palisade_tsc", |b| {
        b.iter(|| one_request(&mut ours_tsc, &mut cx))
    });
    g.bench_function("tower", |b| b.iter(|| one_request(&mut theirs, &mut cx)));
    g.finish();
}

// ===== 3. achieved rate =====

/// Requests admitted per iteration of the `achieved_rate` group.
const PER_ITER: u64 = 1000;
/// Concurrent waiters.
const WAITERS: usize = 16;

/// Counts admissions across the waiters and times them.
///
/// The clock starts at the first admission and stops at admission `target + 1`: the time of
/// `target` whole intervals, `target` ms at 1 per ms. (Burst 1 lets the first request of an
/// idle limiter through at once, so timing from before it would flatter every limiter by one.)
struct Race {
    target: u64,
    admitted: AtomicU64,
    start: OnceLock<Instant>,
    end: OnceLock<Instant>,
    done: tokio::sync::Notify,
}

impl Race {
    fn new(target: u64) -> Arc<Race> {
        Arc::new(Race {
            target,
            admitted: AtomicU64::new(0),
            start: OnceLock::new(),
            end: OnceLock::new(),
            done: tokio::sync::Notify::new(),
        })
    }

    /// Records one admission; false once the race is over.
    fn admit(&self) -> bool {
        let now = Instant::now();
        let k = self.admitted.fetch_add(1, Ordering::AcqRel) + 1;
        if k == 1 {
            let _ = self.start.set(now);
        }
        if k == self.target + 1 {
            let _ = self.end.set(now);
            self.done.notify_one();
        }
        k <= self.target
    }

    /// Spawns the waiters (each running `waiter` until the race is over), waits for the race
    /// to end, stops the waiters and returns the time of `target` intervals.
    fn run<F, Fut>(
        rt: &tokio::runtime::Runtime,
        who: &'static str,
        target: u64,
        waiter: F,
    ) -> Duration
    where
        F: Fn(Arc<Race>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let race = Race::new(target);
        rt.block_on(async {
            let tasks: Vec<_> = (0..WAITERS)
                .map(|_| tokio::spawn(waiter(race.clone())))
                .collect();
            race.done.notified().await;
            for t in &tasks {
                t.abort();
            }
            for t in tasks {
                let _ = t.await;
            }
        });
        let (start, end) = (
            race.start.get().expect("started"),
            race.end.get().expect("ended"),
        );
        let elapsed = end.duration_since(*start);
        RATES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((who, target, elapsed));
        elapsed
    }
}

/// One waiter: sends through its own clone of a service until the race is over.
async fn drive<S>(mut svc: S, race: Arc<Race>)
where
    S: Service<(), Response = ()>,
    S::Error: Debug,
{
    loop {
        svc.ready()
            .await
            .expect("the service stays open")
            .call(())
            .await
            .expect("infallible");
        if !race.admit() {
            break;
        }
    }
}

/// Every race run: (limiter, intervals, elapsed), for the table printed at the end.
static RATES: Mutex<Vec<(&'static str, u64, Duration)>> = Mutex::new(Vec::new());

fn achieved_rate(c: &mut Criterion) {
    let mut g = c.benchmark_group("achieved_rate");
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.warm_up_time(Duration::from_millis(1));
    g.measurement_time(Duration::from_secs(10));
    // Elements per second is the achieved rate: the ideal is 1000/s.
    g.throughput(Throughput::Elements(PER_ITER));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");

    let one_per_ms =
        palisade_ratelimit::Quota::new(1, Duration::from_millis(1)).expect("valid quota");
    // palisade on each of its clocks: clones of one layer's service.
    for (id, who, clock) in [
        (
            "palisade_wait",
            "palisade (wait mode)",
            palisade_ratelimit::Clock::tokio(),
        ),
        (
            "palisade_tsc_wait",
            "palisade tsc clock (wait)",
            palisade_ratelimit::Clock::tsc(),
        ),
    ] {
        g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let limiter =
                    palisade_ratelimit::RateLimiter::with_clock(one_per_ms, clock.clone());
                let svc = ServiceBuilder::new()
                    .layer(palisade_ratelimit::RateLimitLayer::from_limiter(limiter))
                    .service_fn(|()| ready(Ok::<_, Infallible>(())));
                Race::run(&rt, who, iters * PER_ITER, move |race| {
                    drive(svc.clone(), race)
                })
            })
        });
    }

    g.bench_function("governor_until_ready", |b| {
        b.iter_custom(|iters| {
            let quota =
                governor::Quota::with_period(Duration::from_millis(1)).expect("non-zero period");
            let lim = Arc::new(governor::RateLimiter::direct(quota));
            Race::run(&rt, "governor until_ready", iters * PER_ITER, move |race| {
                let lim = lim.clone();
                async move {
                    loop {
                        lim.until_ready().await;
                        if !race.admit() {
                            break;
                        }
                    }
                }
            })
        })
    });

    g.bench_function("tower_buffer", |b| {
        b.iter_custom(|iters| {
            // tower's RateLimit is not Clone: share one through a Buffer (made in the runtime,
            // which runs its worker).
            let svc = rt.block_on(async {
                tower::buffer::Buffer::new(
                    ServiceBuilder::new()
                        .layer(tower::limit::RateLimitLayer::new(
                            1,
                            Duration::from_millis(1),
                        ))
                        .service_fn(|()| ready(Ok::<_, Infallible>(()))),
                    WAITERS,
                )
            });
            Race::run(
                &rt,
                "tower RateLimit + Buffer(16)",
                iters * PER_ITER,
                move |race| drive(svc.clone(), race),
            )
        })
    });
    g.finish();
}

/// Prints the achieved rate of every limiter over all its runs (warm-up included).
fn print_rate_table() {
    let runs = RATES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if runs.is_empty() {
        return;
    }
    println!("\nachieved rate, 1 per ms, burst 1, {WAITERS} waiters, 2-worker tokio runtime:");
    println!(
        "{:<30} {:>5} {:>12} {:>9} {:>9} {:>9}",
        "limiter", "runs", "intervals", "mean %", "min %", "max %"
    );
    let mut names: Vec<&str> = runs.iter().map(|r| r.0).collect();
    names.dedup();
    for name in names {
        let mine: Vec<_> = runs.iter().filter(|r| r.0 == name).collect();
        let pct = |n: u64, d: Duration| 100.0 * n as f64 / (d.as_secs_f64() * 1000.0);
        let total_n: u64 = mine.iter().map(|r| r.1).sum();
        let total_d: Duration = mine.iter().map(|r| r.2).sum();
        let each: Vec<f64> = mine.iter().map(|r| pct(r.1, r.2)).collect();
        let min = each.iter().copied().fold(f64::INFINITY, f64::min);
        let max = each.iter().copied().fold(0.0, f64::max);
        println!(
            "{:<30} {:>5} {:>12} {:>9.2} {:>9.2} {:>9.2}",
            name,
            mine.len(),
            total_n,
            pct(total_n, total_d),
            min,
            max
        );
    }
}

fn main() {
    // What `criterion_group!` and `criterion_main!` expand to, then the rate table.
    let mut c = Criterion::default().configure_from_args();
    core_check(&mut c);
    clocks(&mut c);
    service_path(&mut c);
    achieved_rate(&mut c);
    Criterion::default().configure_from_args().final_summary();
    print_rate_table();
}
