//! An axum server with a global rate limit and a per-client one, which then calls itself.
//!
//! - every route: 10 requests per second for the whole server, burst 5 (`RateLimitLayer`);
//! - `/api` also: 1 request per second per client IP, burst 2 (`KeyedRateLimitLayer` + `PeerIp`,
//!   reading axum's `ConnectInfo<SocketAddr>`).
//!
//! Refusals are answered `429 Too Many Requests` with `Retry-After`. The example binds
//! `127.0.0.1:0`, sends a few requests to itself over plain HTTP/1.1 and exits.
//!
//! ```text
//! cargo run -p palisade --example axum_ratelimit
//! ```

use std::error::Error;
use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use palisade::ratelimit::http::PeerIp;
use palisade::ratelimit::{KeyedRateLimitLayer, Quota, RateLimitLayer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // One budget for the whole server: axum applies the layer to every route, and all of them
    // draw from the limit the layer was made with.
    let global = RateLimitLayer::new("10/s".parse::<Quota>()?.burst(5)?).too_many_requests();
    // One budget per client IP, on `/api` only.
    let per_client =
        KeyedRateLimitLayer::new(Quota::per_second(1)?.burst(2)?, PeerIp).too_many_requests();

    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route("/api", get(|| async { "api\n" }).route_layer(per_client))
        .layer(global);

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    tokio::spawn(async move {
        // `ConnectInfo<SocketAddr>` on every request is what `PeerIp` keys on.
        let make_service = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, make_service).await {
            eprintln!("server error: {e}");
        }
    });

    // Sent back to back: `/api` allows this client 2 at once, the server 5 in all (a refused
    // `/api` request has already spent its global token).
    let paths = ["/api", "/api", "/api", "/", "/", "/", "/", "/"];
    let (mut ok, mut limited) = (0, 0);
    for path in paths {
        let status = get_status(addr, path).await?;
        println!("GET {path:<4} -> {status}");
        match status {
            200 => ok += 1,
            429 => limited += 1,
            _ => {}
        }
    }
    println!("{ok} admitted, {limited} rate limited");
    Ok(())
}

/// One `GET` over a fresh connection; returns the status code of the response.
async fn get_status(addr: SocketAddr, path: &str) -> Result<u16, Box<dyn Error>> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    // "HTTP/1.1 200 OK\r\n..."
    let text = String::from_utf8_lossy(&response);
    let status = text
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .ok_or("empty or malformed response")?;
    Ok(status.parse()?)
}
