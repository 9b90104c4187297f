//! A rate limit shared by a fleet: palisade-ratelimit's layers over a GCRA kept in Redis.
//!
//! One API key used by many processes needs one budget, not one per process (3 instances ×
//! 100/s = 300/s). [`RedisRateLimiter`] keeps the limit in Redis — a Lua script runs the GCRA
//! atomically on Redis' own clock — and [`RedisRateLimitLayer`] / [`RedisKeyedRateLimitLayer`]
//! put it in a tower stack exactly as palisade-ratelimit's `RateLimitLayer` and
//! `KeyedRateLimitLayer` do: same [`Quota`](palisade_ratelimit::Quota), same
//! [`RateLimited`](palisade_ratelimit::RateLimited) error, same
//! [`Rejection`](palisade_ratelimit::Rejection)s (with feature `http`, `429` with `Retry-After`).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade_ratelimit::{Quota, RateLimited};
//! use palisade_ratelimit_redis::{FailurePolicy, RedisRateLimitLayer, RedisRateLimiter};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // 200 requests per second for the whole fleet, 20 at once.
//! let limiter = RedisRateLimiter::builder("redis://127.0.0.1:6379", Quota::per_second(200)?.burst(20)?)
//!     .name("partner-api")                                  // the key every process shares
//!     .timeout(Duration::from_millis(50))                   // no request waits on Redis longer
//!     .on_failure(FailurePolicy::Fallback { share: 0.25 })  // 4 processes: a quarter each
//!     .build()?;                                            // checks; connects on first use
//!
//! let api = ServiceBuilder::new()
//!     .layer(RedisRateLimitLayer::new(limiter).max_wait(Duration::from_secs(2)))
//!     .service_fn(|id: u32| async move { Ok::<_, std::convert::Infallible>(id) });
//! # let _ = api;
//! // In a tokio runtime: `api.ready().await?.call(7).await` waits for the fleet's next slot,
//! // or fails with a boxed `RateLimited` when that is more than 2 s away.
//! # Ok(()) }
//! ```
//!
//! # The algorithm
//!
//! The limit's key holds its theoretical arrival time (TAT) in integer microseconds of Redis'
//! `TIME`. With interval `T = period / count` (rounded up to a whole microsecond) and burst `B`,
//! a request conforms when `max(TAT, now) + T ≤ now + B·T`, and then advances the TAT by `T`.
//! The script reads, decides and writes in one atomic step, so processes cannot race; it reads
//! the clock of Redis, not of the caller, so their clocks do not matter. The key expires
//! (`PEXPIRE`) when the TAT passes — from then on it is as good as new, so expiry changes no
//! decision, and idle limits cost Redis nothing.
//!
//! # Guarantees
//!
//! - **Direct mode** (the default): over any interval of length `L` by the Redis clock, the
//!   fleet is granted at most `B + ⌊L / T⌋` tokens — exactly the in-process limiter's bound,
//!   whatever the number of processes.
//! - **Lease mode** ([`Builder::lease`]`(n)`): a process takes up to `n` tokens in one round
//!   trip and spends them locally; it never holds more than `n − 1` unspent. Over any interval,
//!   grants are at most `B + ⌊L / T⌋ + P·(n − 1)` for `P` processes: the tokens a process
//!   leased before the interval and spends inside it are the only excess. Tokens a process
//!   holds when it exits are lost to the fleet until their time passes (at most `(n − 1)·T`).
//! - **No request waits on Redis longer than the [timeout](Builder::timeout)** (connecting,
//!   waiting for another task's lease, the script itself); then the [`FailurePolicy`] decides:
//!   [`FailOpen`](FailurePolicy::FailOpen), [`FailClosed`](FailurePolicy::FailClosed), or a
//!   local [`Fallback`](FailurePolicy::Fallback) with a share of the quota. After a failure,
//!   Redis is left alone for the [probe interval](Builder::probe_interval), then asked again
//!   by one decision (the probe) while the others keep to the policy until it answers;
//!   redis-rs' `ConnectionManager` reconnects in the background, so a restarted Redis resumes
//!   the shared limit by itself.
//!
//! # Giving back
//!
//! The token is taken in `poll_ready`. A readied service dropped before `call` gives it back:
//! a lease token to the local pool; a token taken by the script through a refund script, sent
//! from a task spawned on the current runtime (bounded by the timeout). The refund lowers the
//! TAT by the token's cost when nothing was admitted since, and otherwise only by the part of
//! it still ahead of now — never crediting more than was taken. It is best effort: without a
//! runtime, or with Redis down, the token is lost, and the fleet admits one fewer. A decision
//! cancelled while its script is in flight cannot be undone either (the script may have run).
//!
//! # Fairness
//!
//! In wait mode, each request reserves its cell in Redis (one round trip) and sleeps until it
//! conforms: requests are served in the order Redis received them, across the fleet, and no
//! lock is held while waiting (a waiter never polled again blocks no one; an abandoned wait
//! gives its cell back). In lease mode the own key's waiters take local slots one interval
//! apart, first come first served in the process, and across processes there is no order.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
pub mod future;
mod key;
mod keyed;
mod limiter;
mod script;
mod service;

pub use config::{
    BuildError, Builder, FailurePolicy, DEFAULT_NAME, DEFAULT_PREFIX, DEFAULT_PROBE_INTERVAL,
    DEFAULT_TIMEOUT,
};
pub use key::RedisKey;
pub use keyed::{RedisKeyedRateLimit, RedisKeyedRateLimitLayer};
pub use limiter::{RedisRateLimiter, Stats};
pub use service::{RedisRateLimit, RedisRateLimitLayer};

/// The README's examples, compiled and run as doctests (they build, and connect to nothing).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
