//! An axum server that drains on SIGTERM or SIGINT, with a deadline axum does not have.
//!
//! The same routes as `shutdown_hyper`: `/` at once, `/slow?ms=N` after `N` ms, `/stream` a
//! chunk every 100 ms forever. It binds `127.0.0.1:0` (or the first argument, or
//! `PALISADE_ADDR`), prints `listening on ADDR`, and runs until SIGTERM or SIGINT. Then it
//! drains for at most `PALISADE_DRAIN_SECS` seconds (default 10; a second signal cuts it short),
//! prints `report: ...` and exits with status 0, or 2 if the drain was cut short.
//!
//! ```text
//! cargo run --example shutdown_axum
//! ```
//!
//! axum's own graceful shutdown (`with_graceful_shutdown`) stops accepting and asks each
//! connection to close, then waits for all of them **with no deadline**: one `/stream` client,
//! or one that never finishes its request, keeps it waiting forever. So the axum server runs
//! as a task tracked by [`Shutdown`]: the drain waits for it only until the deadline (or a
//! second signal), `main` then returns, and ending the process cuts the connections axum is
//! still waiting for.

use std::convert::Infallible;
use std::error::Error;
use std::io::Write;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::Uri;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body::Frame;
use palisade_shutdown::Shutdown;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn Error>> {
    let drain_secs = match std::env::var("PALISADE_DRAIN_SECS") {
        Ok(secs) => secs.parse()?,
        Err(_) => 10,
    };
    let shutdown = Shutdown::new(Duration::from_secs(drain_secs));
    shutdown.listen_for_signals()?;

    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route("/slow", get(slow))
        .route("/stream", get(stream))
        // Counts requests in flight, and answers `503` + `Connection: close` once shutdown began.
        .layer(shutdown.layer().service_unavailable());

    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PALISADE_ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;

    // Tracked: the drain waits for axum's graceful shutdown, but only until the deadline.
    let trigger = shutdown.clone();
    let server = shutdown.spawn(move |_stop| async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { trigger.triggered().await })
            .await
    });

    shutdown.triggered().await;
    eprintln!("shutting down: stopped accepting; draining for at most {drain_secs} s");
    let report = shutdown.drain().await;
    println!("report: {report}");
    match server.await {
        // axum finished its graceful shutdown within the deadline.
        Ok(Some(result)) => result?,
        // Cut at the force: axum's connection tasks end with the process.
        Ok(None) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(if report.forced.is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

async fn slow(uri: Uri) -> String {
    let ms = uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(1000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms} ms\n")
}

async fn stream() -> Body {
    Body::new(Ticks(tokio::time::interval(Duration::from_millis(100))))
}

/// A body that never ends: one chunk per tick.
struct Ticks(tokio::time::Interval);

impl http_body::Body for Ticks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        ready!(self.0.poll_tick(cx));
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"chunk\n")))))
    }
}
