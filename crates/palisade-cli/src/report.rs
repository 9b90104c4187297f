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

/// The rate line: what was sent per second, and how much of what the limit allows in that
/// time — the burst at once, then the rate (the rate alone made a short run that spent its
/// burst look far over the quota).
fn rate_line(sent: u64, secs: f64, limit: Option<(Quota, u32)>) -> String {
    let achieved = sent as f64 / secs;
    match limit {
        Some((q, burst)) => {
            let per_sec = q.count() as f64 / q.period().as_secs_f64();
            let allowed = (f64::from(burst) + per_sec * secs).floor().max(1.0);
            format!(
                "rate:      {achieved:.1} req/s sent over {secs:.1} s (quota {q}, burst {burst}: \
                 {sent} sent of the {allowed:.0} it allows in that time, {:.0} %)",
                100.0 * sent as f64 / allowed
            )
        }
        None => format!("rate:      {achieved:.1} req/s sent over {secs:.1} s (no rate limit)"),
    }
}

/// The report's lines (without the upstream check, which only the demo can make).
pub(crate) fn render(
    result: &RunResult,
    client: &Client,
    timeline: &Timeline,
    limit: Option<(Quota, u32)>,
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
    let _ = writeln!(s, "{}", rate_line(sent, secs, limit));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_line_counts_the_burst() {
        let q = Quota::per_second(10).unwrap();
        // A short run that spent its burst of 20 and 1 s of rate: 30 allowed, 30 sent.
        let line = rate_line(30, 1.0, Some((q, 20)));
        assert!(
            line.contains("30 sent of the 30 it allows in that time, 100 %"),
            "{line}"
        );
        // A long run at three quarters of the rate.
        let line = rate_line(770, 100.0, Some((q, 20)));
        assert!(line.contains("770 sent of the 1020 it allows"), "{line}");
        assert!(line.contains(", 75 %)"), "{line}");
        assert!(rate_line(5, 1.0, None).contains("no rate limit"));
    }
}
