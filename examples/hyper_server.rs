//! A plain hyper server on `palisade::shutdown::serve`, with a circuit breaker around a flaky
//! downstream call and a `ShutdownLayer` that answers `503` once the shutdown has begun.
//!
//! - `/item/{id}` calls a downstream service (a `service_fn` standing in for a database or an
//!   API) through a `CircuitBreakerLayer`: its calls 4 to 6 fail, the breaker opens after 3
//!   failures in a row, and while it is open the server answers `503` with `Retry-After` at
//!   once, without calling the downstream; a failed call is a `502`.
//! - `/slow` answers after 300 ms.
//!
//! It drives itself with `palisade::client::Client` (which obeys that `Retry-After`), then
//! triggers the shutdown with `/slow` in flight and a slow client half-way through a request:
//! the first is answered, the second gets `503` + `Connection: close`; then the drain report.
//!
//! ```text
//! cargo run -p palisade --example hyper_server
//! ```

use std::convert::Infallible;
use std::error::Error;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use palisade::breaker::{BoxError, CircuitBreakerLayer, CircuitOpen, Config};
use palisade::client::Client;
use palisade::ratelimit::http::retry_after_secs;
use palisade::shutdown::{serve, Shutdown};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let shutdown = Shutdown::new(Duration::from_secs(5));

    // The flaky downstream: its calls 4, 5 and 6 fail.
    let calls = Arc::new(AtomicU32::new(0));
    let breaker = CircuitBreakerLayer::new(
        Config::builder()
            .consecutive_failures(3)
            .open_duration(Duration::from_millis(500), 2, Duration::from_secs(5))
            .jitter(0)
            .build()?,
    );
    let state = breaker.breaker().clone();
    let downstream = ServiceBuilder::new()
        .layer(breaker)
        .service_fn(move |id: u32| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                match n {
                    4..=6 => Err("downstream failed"),
                    _ => Ok(format!("item {id} (downstream call {n})")),
                }
            }
        });

    let app = ServiceBuilder::new()
        .layer(shutdown.layer().service_unavailable())
        .service_fn(move |req| route(req, downstream.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { serve(listener, app, &shutdown).await }
    });

    let client = Client::builder(format!("http://{addr}")).build()?;
    let start = Instant::now();
    for id in 1..=9 {
        let res = client.get(&format!("/item/{id}")).await?;
        let (at, status) = (start.elapsed().as_millis(), res.status());
        let note = match res.headers().get(header::RETRY_AFTER) {
            Some(secs) => format!("Retry-After: {}; the client waits", secs.to_str()?),
            None => format!("breaker {}", state.state()),
        };
        let body = res.text().await?;
        println!(
            "{at:>5} ms  GET /item/{id} -> {status}: {} ({note})",
            body.trim_end()
        );
    }

    // Shutdown, with one request in flight and one half sent.
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.get("/slow").await?.text().await }
    });
    let mut late = TcpStream::connect(addr).await?;
    late.write_all(b"GET /item/10 HTTP/1.1\r\n").await?;
    while shutdown.requests_in_flight() < 1 || shutdown.connections() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await; // let hyper read the first line
    println!("shutdown triggered: /slow in flight, /item/10 half sent");
    shutdown.trigger();
    server.await??; // the accept loop has ended and the listener is closed

    // The rest of the late request arrives after the trigger: refused, never reaching `route`.
    late.write_all(b"host: palisade.example\r\n\r\n").await?;
    let mut raw = String::new();
    late.read_to_string(&mut raw).await?;
    // "HTTP/1.1 503 Service Unavailable", then the headers, `connection: close` among them.
    println!(
        "GET /item/10 -> {}",
        raw.lines().next().unwrap_or("no answer")
    );

    let report = shutdown.drain().await;
    println!("GET /slow -> {}", slow.await??.trim_end());
    println!("{report}");
    Ok(())
}

async fn route<S>(req: Request<Incoming>, downstream: S) -> Result<Response<String>, Infallible>
where
    S: Service<u32, Response = String, Error = BoxError>,
{
    let path = req.uri().path();
    if path == "/slow" {
        tokio::time::sleep(Duration::from_millis(300)).await;
        return Ok(Response::new("slept 300 ms\n".to_owned()));
    }
    let Some(id) = path.strip_prefix("/item/").and_then(|id| id.parse().ok()) else {
        return Ok(answer(StatusCode::NOT_FOUND, "not found".to_owned()));
    };
    let e = match downstream.oneshot(id).await {
        Ok(item) => return Ok(Response::new(format!("{item}\n"))),
        Err(e) => e,
    };
    Ok(match e.downcast_ref::<CircuitOpen>() {
        // Refused at once: tell the caller when to come back (whole seconds, rounded up).
        Some(open) => {
            let wait = open.retry_after().unwrap_or(Duration::from_secs(1));
            let mut res = answer(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            res.headers_mut()
                .insert(header::RETRY_AFTER, retry_after_secs(wait).into());
            res
        }
        None => answer(StatusCode::BAD_GATEWAY, e.to_string()),
    })
}

fn answer(status: StatusCode, body: String) -> Response<String> {
    let mut res = Response::new(body + "\n");
    *res.status_mut() = status;
    res
}
