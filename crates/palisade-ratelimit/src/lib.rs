//! A shared, exact, lock-free GCRA rate limiter for tower.
//!
//! - [`Quota`]: `count` per `period`, burst set apart (`"100/min"`, `Quota::per_second(10)?.burst(5)?`).
//! - [`RateLimiter`]: the limit itself — one `AtomicU64` updated by compare-and-swap, on tokio's
//!   clock (or the CPU's counter, [`Clock::tsc`]); `check()`, `check_n()`, remaining burst, next
//!   conforming instant, live quota change.
//! - [`RateLimitLayer`]: a tower layer whose services all share one limit. *Wait* mode (clients)
//!   queues requests in `poll_ready`, first come first served; *reject* mode (servers) refuses
//!   at once with [`RateLimited`] and its `retry_after`.
//! - [`keyed`]: a limit per key (client address, API key, tenant) with bounded memory.
//! - `http` (feature): key extractors for HTTP requests and a `429 Too Many Requests` answer
//!   with `Retry-After` and the IETF `RateLimit` headers.
//!
//! # Example
//!
//! ```
//! use palisade_ratelimit::{Quota, RateLimitLayer, RateLimited};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // A server: 2 requests at once, then 1 per second; refuse the rest at once.
//! let mut svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(Quota::per_second(1)?.burst(2)?).reject())
//!     .service_fn(|req: &'static str| async move { Ok::<_, std::convert::Infallible>(req.len()) });
//!
//! assert_eq!(svc.ready().await?.call("a").await?, 1);
//! assert_eq!(svc.ready().await?.call("bb").await?, 2);
//! let err = svc.ready().await?.call("ccc").await.unwrap_err();
//! let limited = err.downcast_ref::<RateLimited>().expect("a rate-limit refusal");
//! assert_eq!(limited.retry_after(), std::time::Duration::from_secs(1));
//! # Ok(()) }
//! ```
//!
//! # Guarantee
//!
//! With burst `B` and interval `T = period / count`: over any interval of length `L`, a reject-mode
//! layer or [`RateLimiter::check`] admits at most `B + ⌊L / T⌋` requests — at most `B` at the same
//! instant and `count` per `period` in the long run. In wait mode no request passes before its
//! slot; a waiter that tokio's millisecond timer wakes late is charged from its slot (up to
//! 2 ms back), so the rate holds at fine grain, and requests may then pass up to `rate × 2 ms`
//! closer together than the spacing.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod clock;
mod error;
pub mod future;
mod gcra;
pub mod keyed;
mod layer;
mod limiter;
mod loom;
mod quota;
mod reject;
mod service;

#[cfg(feature = "http")]
pub mod http;

pub use clock::Clock;
pub use error::{CheckNError, KeyUnavailable, RateLimited};
pub use keyed::{KeyedRateLimitLayer, KeyedRateLimiter};
pub use layer::RateLimitLayer;
pub use limiter::RateLimiter;
pub use quota::{Quota, QuotaError};
pub use reject::{AsError, BoxError, Rejection};
pub use service::RateLimit;

/// The README's examples, compiled and run as doctests.
#[cfg(all(doctest, feature = "axum"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
