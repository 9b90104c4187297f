//! Palisade: tower middleware for the patterns every production client and server needs.
//!
//! Each pattern is its own crate, re-exported here behind a feature of the same name:
//!
//! | feature | module | crate |
//! |---|---|---|
//! | `ratelimit` | [`ratelimit`] | `palisade-ratelimit`: a shared GCRA rate limit, wait or reject, keyed, HTTP 429 |
//! | `breaker` | [`breaker`] | `palisade-breaker`: a circuit breaker with sliding windows and probe-only half-open |
//! | `pool` | [`pool`] | `palisade-pool`: a keyed connection pool with hard limits, FIFO hand-off and an awaitable close |
//! | `shutdown` | [`shutdown`] | `palisade-shutdown`: graceful shutdown that drains servers, workers and clients |
//! | `client` | [`client`] | `palisade-client`: the four composed into an HTTP client in front of an API |
//! | `redis` (not default) | [`ratelimit_redis`] | `palisade-ratelimit-redis`: the rate-limit layers over a limit kept in Redis, shared by a fleet |
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "ratelimit")]
//! # {
//! use palisade::ratelimit::{Quota, RateLimitLayer};
//! let layer = RateLimitLayer::new("100/min".parse::<Quota>().unwrap());
//! assert_eq!(layer.limiter().quota().count(), 100);
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// Rate limiting: see [`palisade_ratelimit`].
#[cfg(feature = "ratelimit")]
pub use palisade_ratelimit as ratelimit;

/// Circuit breaking: see [`palisade_breaker`].
#[cfg(feature = "breaker")]
pub use palisade_breaker as breaker;

/// Connection pooling: see [`palisade_pool`].
#[cfg(feature = "pool")]
pub use palisade_pool as pool;

/// The HTTP client: see [`palisade_client`].
#[cfg(feature = "client")]
pub use palisade_client as client;

/// A rate limit shared by a fleet, kept in Redis: see [`palisade_ratelimit_redis`].
#[cfg(feature = "redis")]
pub use palisade_ratelimit_redis as ratelimit_redis;

/// Graceful shutdown: see [`palisade_shutdown`].
#[cfg(feature = "shutdown")]
pub use palisade_shutdown as shutdown;
