//! Palisade's layers in one `ServiceBuilder` with tower's `Buffer`, `Retry` and `Timeout`, around
//! a plain `service_fn` (no HTTP), in the order of `ARCHITECTURE.md`:
//!
//! ```text
//! Buffer      a Clone + Send handle, one worker driving the stack below
//! Retry       outside the breaker: a failure is tried again, a breaker refusal is not
//! Breaker     opens after 3 failures in a row
//! Timeout     inside the breaker: a backend that hangs is a recorded failure
//! RateLimit   20 jobs per second, burst 5, waiting in `poll_ready`
//! service_fn  the backend
//! ```
//!
//! 1. Eight clones of the buffered stack and a second stack built from the same layers send
//!    30 jobs at once: they take one budget's time, since all of them draw from one limiter.
//! 2. The backend hangs: timeouts, retries, the breaker opens, and both stacks are refused.
//! 3. The backend recovers: after the open duration a probe closes the breaker.
//!
//! Run it with `cargo run -p palisade --example tower_stack`.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use palisade::breaker::{BoxError, CircuitBreakerLayer, CircuitOpen, Config};
use palisade::ratelimit::{Quota, RateLimitLayer};
use tokio::time::{sleep, Instant, Sleep};
use tower::retry::Policy;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

/// Retries a failed job up to twice, 20 ms apart; never a job the breaker refused (retrying it
/// at once would only be refused again; the caller can wait its `retry_after`).
#[derive(Clone)]
struct RetryFailures(u32);

impl Policy<u32, u32, BoxError> for RetryFailures {
    type Future = Sleep;

    fn retry(&mut self, _job: &mut u32, result: &mut Result<u32, BoxError>) -> Option<Sleep> {
        match result {
            Err(e) if self.0 > 0 && !e.is::<CircuitOpen>() => {
                self.0 -= 1;
                Some(sleep(Duration::from_millis(20)))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, job: &u32) -> Option<u32> {
        Some(*job)
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Each layer is made once and owns its state; every service it makes shares that state.
    // (tower's own `RateLimitLayer` makes a fresh budget per `layer()` call.)
    let rate = RateLimitLayer::new(Quota::per_second(20)?.burst(5)?);
    let breaker = CircuitBreakerLayer::new(
        Config::builder()
            .consecutive_failures(3)
            .open_duration(Duration::from_millis(300), 2, Duration::from_secs(5))
            .jitter(0)
            .build()?,
    );
    let state = breaker.breaker().clone();

    let hanging = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU32::new(0));
    let backend = service_fn({
        let (hanging, calls) = (hanging.clone(), calls.clone());
        move |job: u32| {
            calls.fetch_add(1, Ordering::SeqCst);
            let hang = hanging.load(Ordering::SeqCst);
            async move {
                if hang {
                    sleep(Duration::from_secs(10)).await;
                }
                Ok::<_, BoxError>(job * 2)
            }
        }
    });
    let stack = ServiceBuilder::new()
        .retry(RetryFailures(2))
        .layer(breaker)
        .timeout(Duration::from_millis(100))
        .layer(rate);
    let buffered = ServiceBuilder::new()
        .buffer(64)
        .layer(stack.clone())
        .service(backend.clone());
    let mut other = stack.service(backend);

    println!("1. 30 jobs: 8 clones of the buffered stack (3 each), the other stack 6");
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for clone in 0..8 {
        tasks.spawn(send_jobs(buffered.clone(), clone * 10..clone * 10 + 3));
    }
    send_jobs(&mut other, 100..106).await?;
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    // With a budget per service (tower's `RateLimit`), each would pass its jobs at once.
    let took = start.elapsed();
    println!("   all done in {took:.2?}: 5 at once, then 25 at 20/s, one budget for all");

    println!("2. the backend hangs");
    hanging.store(true, Ordering::SeqCst);
    let mut svc = buffered.clone();
    run("buffered", &mut svc, &calls).await;
    run("buffered", &mut svc, &calls).await;
    run("other", &mut other, &calls).await;
    println!(
        "   breaker {}, {} calls refused",
        state.state(),
        state.rejected()
    );

    println!("3. the backend recovers");
    hanging.store(false, Ordering::SeqCst);
    sleep(Duration::from_millis(300)).await; // the open duration
    run("other", &mut other, &calls).await;
    println!("   breaker {}", state.state());
    Ok(())
}

/// Sends `jobs` one after the other. (Generic on purpose: for an `async` block spawned in place
/// and holding the `Buffer`, whose inner error is a `BoxError`, rustc fails to prove `Send`:
/// "implementation of `From` is not general enough", rust-lang/rust#102211.)
async fn send_jobs<S>(mut svc: S, jobs: Range<u32>) -> Result<(), BoxError>
where
    S: Service<u32, Response = u32, Error = BoxError>,
{
    for job in jobs {
        svc.ready().await?.call(job).await?;
    }
    Ok(())
}

/// Sends one job and prints what happened, with the backend calls it took.
async fn run<S>(name: &str, svc: &mut S, calls: &AtomicU32)
where
    S: Service<u32, Response = u32, Error = BoxError>,
{
    let (start, before) = (Instant::now(), calls.load(Ordering::SeqCst));
    let outcome = match svc.oneshot(7).await {
        Ok(n) => format!("ok: {n}"),
        Err(e) => format!("error: {e}"),
    };
    let made = calls.load(Ordering::SeqCst) - before;
    let took = start.elapsed();
    println!("   {name:<8} job 7 -> {outcome} ({made} backend calls, {took:.0?})");
}
