//! A hyper server that drains on SIGTERM or SIGINT: the shape of a production `main`.
//!
//! Routes:
//! - `/` answers at once, with the number of requests in flight;
//! - `/slow?ms=N` answers after `N` ms (default 1000);
//! - `/stream` sends a chunk every 100 ms, forever.
//!
//! It binds `127.0.0.1:0`, or the address given as first argument or in `PALISADE_ADDR`, and
//! prints one line, `listening on ADDR`, on stdout.
//!
//! On SIGTERM or SIGINT it stops accepting, answers requests that still arrive with `503` and
//! `Connection: close`, and lets the requests in flight finish for at most
//! `PALISADE_DRAIN_SECS` seconds (default 10). At the deadline, or at a second signal, it cuts
//! what remains (a `/stream` response never ends by itself). Then it prints a line
//! `report: ...` (the [`DrainReport`]) on stdout and exits with status
//!
//! - `0` when everything in flight finished,
//! - `2` when the drain was cut short (deadline or second signal),
//! - `1` on a startup error.
//!
//! ```text
//! cargo run --example shutdown_hyper
//! curl localhost:PORT/slow?ms=5000 &  kill -TERM <pid>   # the request still gets its answer
//! ```
//!
//! `tests/signals.rs` runs this binary and sends it real signals.

use std::convert::Infallible;
use std::error::Error;
use std::io::Write;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use palisade_shutdown::{serve, DrainReport, Shutdown};
use tokio::net::TcpListener;
use tower::ServiceBuilder;

type ResBody = BoxBody<Bytes, Infallible>;

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn Error>> {
    let drain_secs = match std::env::var("PALISADE_DRAIN_SECS") {
        Ok(secs) => secs.parse()?,
        Err(_) => 10,
    };
    let shutdown = Shutdown::new(Duration::from_secs(drain_secs));
    // Before announcing the address: a signal sent as soon as we are up must drain, not kill.
    shutdown.listen_for_signals()?;

    // The layer counts requests in flight (the drain waits for them) and answers `503` once
    // the shutdown has begun.
    let app = ServiceBuilder::new()
        .layer(shutdown.layer().service_unavailable())
        .service_fn({
            let shutdown = shutdown.clone();
            move |req| route(req, shutdown.clone())
        });

    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PALISADE_ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;

    // Returns once the shutdown is triggered and the listener is closed.
    serve(listener, app, &shutdown).await?;
    eprintln!("shutting down: stopped accepting; draining for at most {drain_secs} s");

    // Waits for the requests and connections still open, until the deadline or a second signal.
    let report: DrainReport = shutdown.drain().await;
    println!("report: {report}");
    Ok(if report.forced.is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

async fn route(
    req: Request<Incoming>,
    shutdown: Shutdown,
) -> Result<Response<ResBody>, Infallible> {
    let res = match req.uri().path() {
        "/" => text(format!(
            "{} requests in flight\n",
            shutdown.requests_in_flight()
        )),
        "/slow" => {
            let ms = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(format!("slept {ms} ms\n"))
        }
        "/stream" => Response::new(Ticks::every(Duration::from_millis(100)).boxed()),
        _ => {
            let mut res = text("not found\n".to_owned());
            *res.status_mut() = StatusCode::NOT_FOUND;
            res
        }
    };
    Ok(res)
}

fn text(body: String) -> Response<ResBody> {
    Response::new(Full::new(Bytes::from(body)).boxed())
}

/// A body that never ends: `chunk 1`, `chunk 2`, ... one per tick.
struct Ticks {
    interval: tokio::time::Interval,
    sent: u64,
}

impl Ticks {
    fn every(period: Duration) -> Ticks {
        Ticks {
            interval: tokio::time::interval(period),
            sent: 0,
        }
    }
}

impl Body for Ticks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        ready!(self.interval.poll_tick(cx));
        self.sent += 1;
        let chunk = format!("chunk {}\n", self.sent);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }
}
