//! An upstream that misbehaves on purpose: a scripted HTTP/1.1 server on `127.0.0.1:0` for
//! tests, benchmarks, examples and demos of clients that sit in front of a rate-limited,
//! sometimes failing API.
//!
//! An [`Upstream`] is built from a script ([`Builder`]):
//!
//! - its own **rate limit** ([`RateLimit`]: fixed window, or GCRA with a burst): `429` with
//!   `Retry-After` (whole seconds, rounded up) and the IETF `RateLimit-Policy` / `RateLimit`
//!   headers (draft-ietf-httpapi-ratelimit-headers), which `200`s carry too;
//! - **outages** ([`Outage`]): a `5xx` for a time window or a range of request numbers;
//! - **latency** ([`Latency`]): fixed, or uniform from a seeded generator;
//! - **connection resets** (`RST`, no answer) and **`Connection: close`** after N requests on
//!   a connection;
//! - **hangs** (never answer) by request number or path;
//! - **slow bodies**: the body in chunks with a delay between them;
//! - optional **TLS** (feature `tls`): a CA and a certificate made on the spot (`TlsCert`).
//!
//! It records every request ([`Record`]: number, id, method, path, [`Outcome`], connection,
//! arrival), counts them by id ([`Upstream::count_by_id`]: no request lost, none sent twice),
//! and counts connections: accepted, open, and the most open at once.
//!
//! Every delay and window reads the tokio clock (`tokio::time::Instant`, `tokio::time::sleep`),
//! so a test on paused time (`#[tokio::test(start_paused = true)]`, `tokio::time::advance`)
//! drives the script, and nothing is random unless seeded: a script plays the same way every
//! run.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! use http_body_util::{BodyExt, Empty};
//! use hyper::body::Bytes;
//! use hyper_util::rt::TokioIo;
//! use palisade_testkit::{Outcome, Upstream};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let upstream = Upstream::builder()
//!     .rate_limit(2, Duration::from_secs(1)) // 2 requests per 1 s window, then 429
//!     .start()
//!     .await?;
//!
//! // A minimal hyper client on one connection.
//! let tcp = tokio::net::TcpStream::connect(upstream.addr()).await?;
//! let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
//! tokio::spawn(conn);
//!
//! let mut answers = Vec::new();
//! for i in 1..=3 {
//!     let req = http::Request::get(format!("/api/item/{i}"))
//!         .header(http::header::HOST, upstream.addr().to_string())
//!         .body(Empty::<Bytes>::new())?;
//!     let res = send.send_request(req).await?;
//!     let status = res.status().as_u16();
//!     let retry_after = res.headers().get("retry-after").cloned();
//!     let body = res.into_body().collect().await?.to_bytes();
//!     answers.push((status, retry_after, body));
//! }
//! assert_eq!(answers[0].0, 200);
//! assert_eq!(answers[0].2, r#"{"id":"/api/item/1","n":1}"#);
//! assert_eq!(answers[1].0, 200);
//! assert_eq!(answers[2].0, 429);
//! assert_eq!(answers[2].1.as_ref().unwrap(), "1");
//!
//! // What the upstream saw.
//! let records = upstream.records();
//! assert_eq!(records.len(), 3);
//! assert_eq!(records[2].outcome, Outcome::Answered(http::StatusCode::TOO_MANY_REQUESTS));
//! assert!(records.iter().all(|r| r.connection == 1));
//! assert_eq!(upstream.count_by_id()["/api/item/2"], 1);
//! assert_eq!(upstream.max_concurrent_connections(), 1);
//!
//! upstream.shutdown().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod body;
mod error;
mod record;
mod rng;
mod script;
#[cfg(feature = "tls")]
mod tls;
mod upstream;

pub use error::Error;
pub use record::{Outcome, Record};
pub use script::{Latency, Outage, RateLimit};
#[cfg(feature = "tls")]
pub use tls::TlsCert;
pub use upstream::{Builder, Upstream};

/// The rustls that [`TlsCert::client_config`] builds for (feature `tls`): use it to build
/// clients, so the versions match.
#[cfg(feature = "tls")]
pub use tokio_rustls::rustls;

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
