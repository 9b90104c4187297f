//! An HTTP client in front of an API: Palisade's four patterns composed with
//! `tower::ServiceBuilder` over hyper.
//!
//! Each request passes, in order (the README says why, and where this differs from the
//! intended design):
//!
//! 1. **shutdown** — refused once [`Client::shutdown`] has begun; nothing spent;
//! 2. **circuit breaker** of its origin — refused fast while the upstream is failing; nothing
//!    spent. Requests refused inside the client (rate limit, full queue, shutdown) are not
//!    counted as failures;
//! 3. **rate limit** of its origin — waits its turn, first come first served; pushed back when
//!    the upstream answers `429`/`503` with `Retry-After` or an exhausted `RateLimit` header;
//! 4. **pool** — an idle HTTP/1.1 connection to the origin or a new one, within hard limits per
//!    origin and in total;
//! 5. **connection** — hyper's HTTP/1.1 client over TCP, or TLS (rustls) for `https`; each
//!    exchange on it bounded by the **timeout**, inside the breaker so a hang is a failure, and
//!    below the waits above so that waiting is not mistaken for a slow upstream.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade_client::Client;
//! use palisade_testkit::Upstream;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let upstream = Upstream::builder().start().await?; // a local test API
//! let client = Client::builder(upstream.url("/"))
//!     .rate("50/s")
//!     .burst(5)
//!     .max_connections_per_host(4)
//!     .timeout(Duration::from_secs(5))
//!     .build()?;
//!
//! let res = client.get("/api/item/7").await?;
//! assert_eq!(res.status(), 200);
//! assert!(res.text().await?.contains("/api/item/7"));
//!
//! let report = client.shutdown(Duration::from_secs(5)).await;
//! assert!(report.drained);
//! assert!(client.get("/api/item/8").await.unwrap_err().is_shutdown());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod builder;
mod client;
mod connect;
mod error;
mod gate;
mod origin;
mod probe;
mod response;
mod retry;
#[cfg(feature = "tls")]
mod tls;

pub use builder::{ClientBuilder, Rate, TransitionListener};
pub use client::{Client, Host, ResponseFuture, ShutdownReport};
pub use error::{BoxError, ConnectError, Error, RequestNotSent};
pub use origin::Origin;
pub use response::Response;
pub use retry::{Idempotent, Retries, RetryRefused};

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The request body: bytes held in memory (so a request can be sent again as it was).
pub type Body = http_body_util::Full<bytes::Bytes>;

/// Re-exported so callers can name what the handles return.
pub use palisade_breaker::{Breaker, State as BreakerState, Transition};
pub use palisade_pool::{CloseReport, KeyStats, PoolHandle, PoolStats};
pub use palisade_ratelimit::{Quota, RateLimiter};
#[cfg(feature = "tls")]
pub use tokio_rustls::rustls;
