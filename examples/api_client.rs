//! The seed's API client, done properly: 1,000 requests to `/api/item/{i}` through
//! `palisade::client::Client` (rate limit, circuit breaker, bounded pool, graceful shutdown).
//!
//! The upstream is a `palisade-testkit` server started in-process. Its script: its own limit of
//! 500 requests per 1 s window (tighter than the 600/s the client was told), answered `429` with
//! `Retry-After`; a 503 outage from 0.3 s to 0.6 s; 1–5 ms of latency. Unlike the seed, where
//! one error cancels the whole `TaskGroup`, every request gets its own outcome; a request the
//! client refused *before sending it* (open circuit) is safe to send again, and is. At the end
//! the upstream's record proves that no request reached it twice, and none refused here at all.
//!
//! ```text
//! cargo run -p palisade --example api_client
//! ```

use std::collections::BTreeMap;
use std::error::Error;
use std::time::Duration;

use palisade::breaker::Config;
use palisade::client::Client;
use palisade_testkit::{Latency, Outage, Upstream};
use tokio::task::JoinSet;
use tokio::time::Instant;

const REQUESTS: usize = 1_000;
/// Requests in flight at once (the seed started all 1,000 tasks at the same moment).
const CONCURRENCY: usize = 32;

/// Whether a request reached the upstream, as far as the client can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Answered: it arrived exactly once.
    Once,
    /// Failed on the wire or timed out: it may or may not have arrived.
    Maybe,
    /// Refused by the client itself; never left this process.
    Never,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let ms = Duration::from_millis;
    let upstream = Upstream::builder()
        .rate_limit(500, Duration::from_secs(1))
        .outage(Outage::time(ms(300)..ms(600)))
        .latency(Latency::uniform(ms(1), ms(5)).seed(7))
        .start()
        .await?;

    let started = Instant::now();
    let client = Client::builder(upstream.url("/"))
        .rate("600/s")
        .burst(10)
        .max_connections_per_host(8)
        .timeout(Duration::from_secs(2))
        // Open after 5 failures in a row, for 100 ms, then 200 ms, ... (no jitter: a demo).
        .breaker(
            Config::builder()
                .consecutive_failures(5)
                .open_duration(ms(100), 2, Duration::from_secs(1))
                .jitter(0)
                .build()?,
        )
        .on_breaker_transition(move |origin, t| {
            let at = started.elapsed().as_millis();
            println!("{at:>5} ms  breaker of {origin}: {} -> {}", t.from, t.to);
        })
        .build()?;

    // Bounded concurrency: at most CONCURRENCY tasks at once, each with its own result.
    let mut tasks = JoinSet::new();
    let mut outcomes = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        if tasks.len() == CONCURRENCY {
            outcomes.extend(tasks.join_next().await.transpose()?);
        }
        let client = client.clone();
        tasks.spawn(async move { (i, fetch(&client, &format!("/api/item/{i}")).await) });
    }
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done?);
    }
    let elapsed = started.elapsed();

    let mut summary = BTreeMap::new();
    for (_, (label, _)) in &outcomes {
        *summary.entry(label.as_str()).or_insert(0) += 1;
    }
    println!("\n{REQUESTS} requests in {elapsed:.2?}:");
    for (label, n) in &summary {
        println!("  {n:>4}  {label}");
    }
    let host = client.base_host();
    println!(
        "  the upstream asked the client to hold off {} times; the open breaker refused {} \
         attempts (waited out, then sent)",
        host.holds(),
        host.breaker().rejected(),
    );

    // The upstream's record: every answered request arrived exactly once, and no request
    // refused here arrived at all.
    let seen = upstream.count_by_id();
    for (i, (label, sent)) in &outcomes {
        let count = seen.get(&format!("/api/item/{i}")).copied().unwrap_or(0);
        let ok = match sent {
            Sent::Once => count == 1,
            Sent::Maybe => count <= 1,
            Sent::Never => count == 0,
        };
        if !ok {
            return Err(format!("/api/item/{i}: {label}, but the upstream saw it {count}x").into());
        }
    }
    println!(
        "  the upstream saw {} requests for {} ids on {} connections: none twice",
        upstream.requests_received(),
        seen.len(),
        upstream.connections_accepted(),
    );

    let report = client.shutdown(Duration::from_secs(5)).await;
    println!("  {report}");
    upstream.shutdown().await;
    Ok(())
}

/// One request, tried again only while the client refuses it without sending it (the breaker
/// is open): it never reached the upstream, so trying again cannot send it twice. Answers
/// (`429` and `503` included) are final: the upstream has seen those requests.
async fn fetch(client: &Client, path: &str) -> (String, Sent) {
    let mut refused = "";
    for _ in 0..20 {
        let e = match client.get(path).await {
            Ok(res) => {
                let status = res.status();
                // Read the body to the end, so the connection goes back to the pool.
                match res.bytes().await {
                    Ok(_) => return (format!("answered {status}"), Sent::Once),
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        if !e.is_refused() {
            return (e.class().to_owned(), Sent::Maybe);
        }
        refused = e.class();
        // Half-open with its probe taken says no `retry_after`: try again soon.
        tokio::time::sleep(e.retry_after().unwrap_or(Duration::from_millis(20))).await;
    }
    (format!("{refused} (never sent)"), Sent::Never)
}
