//! The end-of-run report shared by `demo` and `fetch`.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_client::{BreakerState, Client, Origin, Quota, Transition};
use tokio::time::Instant;

use crate::runner::{percentile, RunResult};

/// Breaker transitions with their times since the run started.
#[derive(Clone)]
pub(crate) struct Timeline {
    start: Instant,
    events: Arc<Mutex<Vec<(Duration, BreakerState)>>>,
}

impl Timeline {
    pub(crate) fn new() -> Self {
        Timeline {
            start: Instant::now(),
            events: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// A listener for `ClientBuilder::on_breaker_transition`.
    pub(crate) fn listener(&self) -> impl Fn(&Origin, &Transition) + Send + Sync + 'static {
        let this = self.clone();
        move |_origin, t| {
            let at = this.start.elapsed();
            this.events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((at, t.to));
        }
    }

    fn render(&self) -> String {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if events.is_empty() {
            return "closed throughout".to_owned();
        }
        events
            .iter()
            .map(|(at, to)| {
                let name = match to {
                    BreakerState::Closed => "closed",
                    BreakerState::Open => "opened",
                    BreakerState::HalfOpen => "half-open",
                    _ => "forced",
                };
                format!("+{:.2}s {name}", at.as_secs_f64())
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The report's lines (without the upstream check, which only the demo can make).
pub(crate) fn render(
    result: &RunResult,
    client: &Client,
    timeline: &Timeline,
    quota: Option<Quota>,
    sent: u64,
) -> String {
    let mut s = String::new();
    let classes = result
        .by_class()
        .iter()
        .map(|(c, n)| format!("{c}: {n}"))
        .collect::<Vec<_>>()
        .join("   ");
    let _ = writeln!(
        s,
        "outcomes:  {}",
        if classes.is_empty() {
            "none".to_owned()
        } else {
            classes
        }
    );
    let secs = result.elapsed.as_secs_f64().max(1e-9);
    let achieved = sent as f64 / secs;
    match quota {
        Some(q) => {
            let per_sec = q.count() as f64 / q.period().as_secs_f64();
            let _ = writeln!(
                s,
                "rate:      {achieved:.1} req/s sent over {secs:.1} s (quota {q} = {per_sec:.1} req/s, {:.0} %)",
                100.0 * achieved / per_sec
            );
        }
        None => {
            let _ = writeln!(
                s,
                "rate:      {achieved:.1} req/s sent over {secs:.1} s (no rate limit)"
            );
        }
    }
    let host = client.base_host();
    let _ = writeln!(
        s,
        "breaker:   {} (now {:?}; {} refused while open)",
        timeline.render(),
        host.breaker().state(),
        host.breaker().rejected()
    );
    if host.holds() > 0 {
        let _ = writeln!(
            s,
            "upstream:  asked to wait (429/503 Retry-After) {} time(s); every request held",
            host.holds()
        );
    }
    let stats = client.pool().stats().total;
    let _ = writeln!(
        s,
        "pool:      {} connection(s) opened, {} reuses, {} closed, {} connect failure(s)",
        stats.opened, stats.reused, stats.closed, stats.failed
    );
    let mut lat = result.latencies.clone();
    lat.sort_unstable();
    match (
        percentile(&lat, 50.0),
        percentile(&lat, 90.0),
        percentile(&lat, 99.0),
    ) {
        (Some(a), Some(b), Some(c)) => {
            let _ = writeln!(
                s,
                "latency:   p50 {}   p90 {}   p99 {}",
                ms(a),
                ms(b),
                ms(c)
            );
        }
        _ => {
            let _ = writeln!(s, "latency:   no responses");
        }
    }
    if result.retries > 0 {
        let _ = writeln!(
            s,
            "retries:   {} attempt(s) rescheduled; {} item(s) needed more than one",
            result.retries,
            result.attempts.values().filter(|(n, _)| *n > 1).count()
        );
    }
    if result.stopped {
        let _ = writeln!(
            s,
            "stopped:   {} finished, {} never started, {} cut off at the drain deadline, {} \
             waiting for a retry",
            result.outcomes.len(),
            result.not_started,
            result.cut_off,
            result.waiting_retry
        );
    }
    if result.write_errors > 0 {
        let _ = writeln!(
            s,
            "output:    {} result line(s) could not be written",
            result.write_errors
        );
    }
    s
}
