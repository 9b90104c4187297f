//! `palisade demo`: a local upstream that misbehaves on purpose, the seed's workload through
//! the full stack, and a report checked against the upstream's own record.

use std::time::Duration;

use clap::Args;
use palisade_client::{Client, Quota};
use palisade_testkit::{Latency, Outage, Upstream};
use tokio_util::sync::CancellationToken;

use crate::args;
use crate::report::{self, Timeline};
use crate::runner::{self, Job, Options};

/// Flags of `palisade demo`. The defaults finish in well under 30 seconds.
#[derive(Debug, Clone, Args)]
pub(crate) struct DemoArgs {
    /// How many requests (to /api/item/0 .. /api/item/N-1), at most 10,000,000.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub(crate) requests: u64,
    /// The client's rate per origin.
    #[arg(long, default_value = "95/s", value_parser = args::rate)]
    pub(crate) rate: Quota,
    /// The client's burst.
    #[arg(long, default_value_t = 5)]
    pub(crate) burst: u32,
    /// The upstream's own quota, per second; beyond it, it answers 429 with Retry-After.
    #[arg(long, default_value_t = 100)]
    pub(crate) upstream_quota: u64,
    /// When the upstream's 5xx outage starts, from the start of the run.
    #[arg(long, default_value = "3s", value_parser = args::duration)]
    pub(crate) outage_start: Duration,
    /// How long the outage lasts (0s: none).
    #[arg(long, default_value = "3s", value_parser = args::duration)]
    pub(crate) outage_length: Duration,
    /// The upstream's shortest latency.
    #[arg(long, default_value = "2ms", value_parser = args::duration)]
    pub(crate) latency_min: Duration,
    /// The upstream's longest latency.
    #[arg(long, default_value = "25ms", value_parser = args::duration)]
    pub(crate) latency_max: Duration,
    /// How many connection resets the upstream injects, spread over the run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub(crate) resets: u64,
    /// Maximum connections to the upstream (at most 100,000).
    #[arg(long, default_value_t = 8, value_parser = args::count)]
    pub(crate) max_connections: usize,
    /// Requests in flight at once (each waits for its rate-limit turn; at most 100,000).
    #[arg(long, default_value_t = 16, value_parser = args::count)]
    pub(crate) concurrency: usize,
    /// Per-request timeout.
    #[arg(long, default_value = "5s", value_parser = args::positive_duration)]
    pub(crate) timeout: Duration,
    /// On Ctrl-C, how long in-flight requests may take to finish.
    #[arg(long, default_value = "5s", value_parser = args::duration)]
    pub(crate) drain_timeout: Duration,
    /// More attempts per item after a retryable failure (429/503 after their Retry-After,
    /// 5xx, timeouts, resets, refusals by the open breaker), before it counts as failed.
    #[arg(long, default_value_t = 3)]
    pub(crate) retries: u32,
    /// No progress bar.
    #[arg(long)]
    pub(crate) no_progress: bool,
}

/// Runs the demo; returns the process exit code.
pub(crate) async fn run(a: DemoArgs, stop: CancellationToken) -> Result<i32, String> {
    if a.latency_max < a.latency_min {
        return Err("--latency-max is below --latency-min".to_owned());
    }
    if a.upstream_quota == 0 || a.requests == 0 || a.max_connections == 0 || a.concurrency == 0 {
        return Err(
            "--upstream-quota, --requests, --max-connections and --concurrency must be at least 1"
                .to_owned(),
        );
    }
    let mut upstream = Upstream::builder()
        .rate_limit(a.upstream_quota, Duration::from_secs(1))
        .latency(Latency::uniform(a.latency_min, a.latency_max).seed(7));
    if !a.outage_length.is_zero() {
        let end = a.outage_start + a.outage_length;
        // Plain 503s, no Retry-After: the breaker is what keeps the client off.
        upstream = upstream.outage(Outage::time(a.outage_start..end).status(503));
    }
    if a.resets > 0 {
        let step = (a.requests / a.resets.saturating_add(1)).max(1);
        upstream = upstream.reset_requests((1..=a.resets).map(|k| k * step));
    }
    let upstream = upstream
        .start()
        .await
        .map_err(|e| format!("cannot start the demo upstream: {e}"))?;

    let timeline = Timeline::new();
    // Opens after 10 calls at a 50 % failure rate among the last 20; stays open 1 s, doubling
    // while the outage lasts.
    let breaker = palisade_breaker::Config::builder()
        .count_window(20)
        .minimum_calls(10)
        .failure_rate(50)
        .open_duration(Duration::from_secs(1), 2, Duration::from_secs(4))
        .jitter(0)
        .build()
        .map_err(|e| e.to_string())?;
    let client = Client::builder(upstream.url("/"))
        .rate(a.rate)
        .burst(a.burst)
        .max_connections_per_host(a.max_connections)
        .max_connections(a.max_connections)
        .timeout(a.timeout)
        .breaker(breaker)
        .on_breaker_transition(timeline.listener())
        .build()
        .map_err(|e| e.to_string())?;

    eprintln!(
        "palisade demo: {} requests to a local upstream at {} (quota {}/s, 429 beyond; 503 outage {:?}..{:?}; latency {:?}..{:?}; {} resets)",
        a.requests,
        upstream.addr(),
        a.upstream_quota,
        a.outage_start,
        a.outage_start + a.outage_length,
        a.latency_min,
        a.latency_max,
        a.resets
    );
    eprintln!(
        "client: rate {} burst {}, at most {} connections, timeout {:?}, {} in flight",
        a.rate, a.burst, a.max_connections, a.timeout, a.concurrency
    );
    let jobs: Vec<Job> = (0..a.requests)
        .map(|i| Job {
            id: format!("item-{i}"),
            url: upstream.url(&format!("/api/item/{i}")),
        })
        .collect();
    let opts = Options {
        concurrency: a.concurrency,
        drain_timeout: a.drain_timeout,
        headers: Vec::new(),
        out: None,
        progress: !a.no_progress,
        retries: a.retries,
    };
    let result = runner::run(&client, jobs, opts, stop).await;
    let shutdown = client.shutdown(Duration::from_secs(5)).await;

    // The upstream's own record, by the id the client sent: each id must have arrived exactly
    // as many times as its attempts left the client — none lost, none sent twice unknowingly.
    let seen = upstream.count_by_id();
    let mut lost = 0usize;
    let mut sent_twice = 0usize;
    // An attempt cut off at the drain deadline may or may not have reached the upstream.
    let cut: std::collections::HashSet<&String> = result.cut_ids.iter().collect();
    for (id, (_, sent)) in &result.attempts {
        let arrived = seen.get(id).copied().unwrap_or(0);
        let allowed = *sent as usize + usize::from(cut.contains(id));
        lost += (*sent as usize).saturating_sub(arrived);
        sent_twice += arrived.saturating_sub(allowed);
    }
    // Ids the upstream saw that the client never attempted (beyond one cut-off attempt).
    sent_twice += seen
        .iter()
        .filter(|(id, _)| !result.attempts.contains_key(*id))
        .map(|(id, n)| n.saturating_sub(usize::from(cut.contains(id))))
        .sum::<usize>();
    if !result.stopped {
        // Every item has its final outcome.
        lost += (a.requests as usize).saturating_sub(result.outcomes.len());
    }

    println!();
    println!(
        "palisade demo: {} requests in {:.1} s",
        a.requests,
        result.elapsed.as_secs_f64()
    );
    print!(
        "{}",
        report::render(
            &result,
            &client,
            &timeline,
            Some((a.rate, a.burst)),
            upstream.requests_received()
        )
    );
    println!(
        "upstream:  received {} request(s) on {} connection(s) (at most {} open at once)",
        upstream.requests_received(),
        upstream.connections_accepted(),
        upstream.max_concurrent_connections()
    );
    println!(
        "check:     lost: {lost}   sent twice: {sent_twice}   (per id, the upstream's arrivals equal the attempts that left the client)"
    );
    println!("shutdown:  {shutdown}");
    upstream.shutdown().await;
    // As `fetch`: 0 only when every item ended 2xx (and nothing was lost or sent twice).
    let all_ok = result.outcomes.len() as u64 == a.requests
        && result
            .outcomes
            .values()
            .all(|o| matches!(o, runner::Outcome::Status(200..=299)));
    if lost > 0 || sent_twice > 0 || !all_ok {
        return Ok(1);
    }
    Ok(0)
}
