//! Closed-path cost of `palisade-breaker` beside tower-resilience 0.13 and failsafe 1.3.
//!
//! Everything runs in one `cargo bench -p palisade-breaker`. The inner service is
//! `tower::service_fn(|x| ready(Ok::<_, Infallible>(x)))`, always ready; every call succeeds, so
//! every breaker stays closed (checked after each benchmark). Four stacks:
//!
//! - `baseline`: the bare service.
//! - `palisade`: `CircuitBreakerLayer::new(Config::default())`.
//! - `tower_resilience`: `tower_resilience_circuitbreaker::CircuitBreakerLayer::builder().build()`
//!   (its defaults), built once and applied once; clones of that one service share its circuit.
//! - `failsafe`: `failsafe::Config::new().build()` (its defaults), through its futures API
//!   (`failsafe::futures::CircuitBreaker::call`, which wraps the inner future) in a small tower
//!   adapter below: `poll_ready` is the inner one, `call` is one protected call.
//!
//! Groups:
//!
//! 1. `closed_1_task`: one request per iteration — `ready().await`, `call`, `.await` — in a loop
//!    inside one `block_on` of a current-thread runtime.
//! 2. `closed_8_tasks`: 8 tasks on a 2-worker multi-thread runtime, each doing `iters / 8`
//!    requests through its own clone of one service (one shared breaker). Criterion's time per
//!    iteration is wall time for all of them / total requests: aggregate ns per call.
//! 3. `closed_manual_poll` (supplementary): the same request polled by hand with a no-op waker,
//!    outside any runtime; every future must complete on its first poll. Plus
//!    `failsafe_sync_call`: failsafe's synchronous `CircuitBreaker::call` around a closure that
//!    returns `Ok` — no service and no future — for reference.
//!
//! Wall-clock time is read with `tokio::time::Instant`, which is `std::time::Instant` unless a
//! runtime pauses time (none here).

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{ready, Future};
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use tokio::runtime::Runtime;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// Tasks sharing one breaker in the `closed_8_tasks` group.
const TASKS: u64 = 8;
/// Worker threads of the multi-thread runtime.
const WORKERS: usize = 2;

// ===== the four stacks =====

/// The always-ready inner service.
fn inner() -> impl Service<u64, Response = u64, Error = Infallible, Future: Send> + Clone + Send {
    tower::service_fn(|x: u64| ready(Ok::<_, Infallible>(x)))
}

/// failsafe as a tower service: `poll_ready` is the inner service's, `call` wraps the inner
/// future in `failsafe::futures::CircuitBreaker::call` (admission on first poll, outcome
/// recorded when it completes).
#[derive(Clone)]
struct Failsafe<S, B> {
    inner: S,
    breaker: B,
}

impl<S, B, Req> Service<Req> for Failsafe<S, B>
where
    S: Service<Req>,
    B: failsafe::futures::CircuitBreaker,
{
    type Response = S::Response;
    type Error = failsafe::Error<S::Error>;
    type Future = failsafe::futures::ResponseFuture<
        S::Future,
        B::FailurePolicy,
        B::Instrument,
        failsafe::Any,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(failsafe::Error::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        failsafe::futures::CircuitBreaker::call(&self.breaker, self.inner.call(req))
    }
}

// ===== one request =====

/// One request: `poll_ready` until ready, `call`, await the response.
#[inline]
async fn one_call<S>(svc: &mut S)
where
    S: Service<u64, Response = u64>,
    S::Error: Debug,
{
    let out = svc
        .ready()
        .await
        .expect("service ready")
        .call(black_box(7))
        .await
        .expect("call succeeds");
    black_box(out);
}

/// One request polled by hand; everything must complete at once.
#[inline]
fn one_call_manual<S>(svc: &mut S, cx: &mut Context<'_>)
where
    S: Service<u64, Response = u64>,
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
        Poll::Ready(Err(e)) => panic!("call failed: {e:?}"),
        Poll::Pending => panic!("response pending on first poll"),
    }
}

struct NoopWaker;

impl Wake for NoopWaker {
    fn wake(self: Arc<Self>) {}
}

// ===== group drivers =====

fn one_task<S>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, rt: &Runtime, mut svc: S)
where
    S: Service<u64, Response = u64>,
    S::Error: Debug,
{
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    one_call(&mut svc).await;
                }
                start.elapsed()
            })
        })
    });
}

fn eight_tasks<S>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, rt: &Runtime, svc: &S)
where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug,
{
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            // Clones made before the clock starts.
            let clones: Vec<S> = (0..TASKS).map(|_| svc.clone()).collect();
            rt.block_on(async move {
                let start = Instant::now();
                let tasks: Vec<_> = clones
                    .into_iter()
                    .zip(0..TASKS)
                    .map(|(mut s, i)| {
                        let n = iters / TASKS + u64::from(i < iters % TASKS);
                        tokio::spawn(async move {
                            for _ in 0..n {
                                one_call(&mut s).await;
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("task completes");
                }
                start.elapsed()
            })
        })
    });
}

fn manual<S>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut svc: S)
where
    S: Service<u64, Response = u64>,
    S::Error: Debug,
{
    let waker = Waker::from(Arc::new(NoopWaker));
    let mut cx = Context::from_waker(&waker);
    g.bench_function(name, |b| b.iter(|| one_call_manual(&mut svc, &mut cx)));
}

// ===== the run =====

type Tr = tower_resilience_circuitbreaker::CircuitBreakerLayer;

fn tower_resilience_layer() -> Tr {
    Tr::builder().build().expect("tower-resilience defaults")
}

fn configure(g: &mut BenchmarkGroup<'_, WallTime>) {
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
}

fn closed_1_task(c: &mut Criterion) {
    let mut g = c.benchmark_group("closed_1_task");
    configure(&mut g);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");

    let ours = palisade_breaker::CircuitBreakerLayer::new(palisade_breaker::Config::default());
    let breaker = ours.breaker().clone();
    let theirs = tower_resilience_layer().layer(inner());
    let fs = failsafe::Config::new().build();

    one_task(&mut g, "baseline", &rt, inner());
    one_task(&mut g, "palisade", &rt, ours.layer(inner()));
    one_task(&mut g, "tower_resilience", &rt, theirs.clone());
    one_task(
        &mut g,
        "failsafe",
        &rt,
        Failsafe {
            inner: inner(),
            breaker: fs.clone(),
        },
    );
    g.finish();
    still_closed(&breaker, &theirs, &fs);
}

fn closed_8_tasks(c: &mut Criterion) {
    let mut g = c.benchmark_group("closed_8_tasks");
    configure(&mut g);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_time()
        .build()
        .expect("runtime");

    let ours = palisade_breaker::CircuitBreakerLayer::new(palisade_breaker::Config::default());
    let breaker = ours.breaker().clone();
    let theirs = tower_resilience_layer().layer(inner());
    let fs = failsafe::Config::new().build();

    eight_tasks(&mut g, "baseline", &rt, &inner());
    eight_tasks(&mut g, "palisade", &rt, &ours.layer(inner()));
    eight_tasks(&mut g, "tower_resilience", &rt, &theirs);
    eight_tasks(
        &mut g,
        "failsafe",
        &rt,
        &Failsafe {
            inner: inner(),
            breaker: fs.clone(),
        },
    );
    g.finish();
    still_closed(&breaker, &theirs, &fs);
}

fn closed_manual_poll(c: &mut Criterion) {
    let mut g = c.benchmark_group("closed_manual_poll");
    configure(&mut g);

    let ours = palisade_breaker::CircuitBreakerLayer::new(palisade_breaker::Config::default());
    let breaker = ours.breaker().clone();
    let theirs = tower_resilience_layer().layer(inner());
    let fs = failsafe::Config::new().build();

    manual(&mut g, "baseline", inner());
    manual(&mut g, "palisade", ours.layer(inner()));
    manual(&mut g, "tower_resilience", theirs.clone());
    manual(
        &mut g,
        "failsafe",
        Failsafe {
            inner: inner(),
            breaker: fs.clone(),
        },
    );
    // failsafe's synchronous API for reference: no service, no future, no handle clone.
    g.bench_function("failsafe_sync_call", |b| {
        b.iter(|| {
            failsafe::CircuitBreaker::call(&fs, || Ok::<_, Infallible>(black_box(7_u64)))
                .expect("call succeeds")
        })
    });
    g.finish();
    still_closed(&breaker, &theirs, &fs);
}

/// Every breaker measured must have stayed closed: otherwise the figure is not the closed path.
fn still_closed<S, C, P, I>(
    ours: &palisade_breaker::Breaker,
    theirs: &tower_resilience_circuitbreaker::CircuitBreaker<S, C>,
    fs: &failsafe::StateMachine<P, I>,
) where
    P: failsafe::FailurePolicy,
    I: failsafe::Instrument,
{
    assert_eq!(ours.state(), palisade_breaker::State::Closed);
    assert_eq!(
        theirs.state_sync(),
        tower_resilience_circuitbreaker::CircuitState::Closed
    );
    assert!(fs.is_call_permitted());
}

fn main() {
    // What `criterion_group!` and `criterion_main!` expand to.
    let mut c = Criterion::default().configure_from_args();
    closed_1_task(&mut c);
    closed_8_tasks(&mut c);
    closed_manual_poll(&mut c);
    Criterion::default().configure_from_args().final_summary();
}
