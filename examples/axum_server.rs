//! The whole server-side stack on axum: a per-client-IP rate limit answering `429` with
//! `Retry-After`, the shutdown layer, and a graceful shutdown with a deadline and a report.
//!
//! - `/api/item/{id}`: at most 3 requests at once per client IP, then 4 per second
//!   (`KeyedRateLimitLayer` keyed by `PeerIp`, which reads axum's `ConnectInfo`);
//! - `/slow`: answers after 300 ms, not rate limited;
//! - every route: `ShutdownLayer` counts requests in flight, and answers `503` once the shutdown
//!   has begun.
//!
//! The example binds `127.0.0.1:0` and calls itself with `palisade::client::Client`, which
//! obeys the `Retry-After` it gets. Then, with `/slow` in flight, it triggers the shutdown: axum
//! stops accepting, the slow request still gets its answer, and the drain report is printed.
//!
//! ```text
//! cargo run -p palisade --example axum_server
//! ```

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use palisade::client::Client;
use palisade::ratelimit::http::{PeerIp, TooManyRequests};
use palisade::ratelimit::{KeyedRateLimitLayer, Quota};
use palisade::shutdown::Shutdown;
use tokio::net::TcpListener;
use tokio::time::Instant;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    // The drain waits at most 5 s for requests and connections; a real server would also call
    // `shutdown.listen_for_signals()?` so that SIGTERM/SIGINT trigger it.
    let shutdown = Shutdown::new(Duration::from_secs(5));

    let per_ip = KeyedRateLimitLayer::new(Quota::per_second(4)?.burst(3)?, PeerIp)
        // `429` + `Retry-After`, plus the IETF `RateLimit` and `RateLimit-Policy` headers.
        .with_rejection(TooManyRequests::new().ietf_headers(true));
    let keys = per_ip.limiter().clone();
    let app = Router::new()
        .route(
            "/api/item/{id}",
            get(|Path(id): Path<u32>| async move { format!("item {id}\n") }),
        )
        // Only the routes above are rate limited.
        .route_layer(per_ip)
        .route("/slow", get(slow))
        // Outermost, so a request refused during shutdown spends no rate-limit token.
        .layer(shutdown.layer().service_unavailable());

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    // axum's graceful shutdown has no deadline of its own: run it as a tracked task, so the
    // drain waits for it only until the deadline.
    let server = shutdown.spawn(move |token| async move {
        // `ConnectInfo<SocketAddr>` on every request is what `PeerIp` keys on.
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app)
            .with_graceful_shutdown(token.cancelled_owned())
            .await
    });

    // No client-side limit: the server's 429s and their `Retry-After` pace this client.
    let client = Client::builder(format!("http://{addr}")).build()?;
    let start = Instant::now();
    for id in 1..=8 {
        let res = client.get(&format!("/api/item/{id}")).await?;
        let retry_after = match res.headers().get("retry-after") {
            Some(secs) => format!(", Retry-After: {}", secs.to_str()?),
            None => String::new(),
        };
        let at = start.elapsed().as_millis();
        println!(
            "{at:>5} ms  GET /api/item/{id} -> {}{retry_after}",
            res.status()
        );
        res.bytes().await?;
    }
    println!(
        "the client held off {} times as told; the server tracks {} client IP(s)",
        client.base_host().holds(),
        keys.len()
    );

    // A slow request in flight when the shutdown begins still gets its answer.
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.get("/slow").await?.text().await }
    });
    while shutdown.requests_in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at = start.elapsed().as_millis();
    println!(
        "{at:>5} ms  shutdown triggered with {} request in flight",
        shutdown.requests_in_flight()
    );
    shutdown.trigger();
    let report = shutdown.drain().await;
    let at = start.elapsed().as_millis();
    println!("{at:>5} ms  GET /slow -> {}", slow.await??.trim_end());
    // axum keeps its connections to itself: the report counts the server as one tracked task.
    println!("server: {report}");
    match client.get("/api/item/9").await {
        Ok(res) => println!("after the drain: GET /api/item/9 -> {}", res.status()),
        Err(e) => println!("after the drain: GET /api/item/9 -> {e}"),
    }
    if let Some(served) = server.await? {
        served?; // axum's own result, when it finished within the deadline
    }
    println!("client: {}", client.shutdown(Duration::from_secs(1)).await);
    Ok(())
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_millis(300)).await;
    "slept 300 ms\n"
}
