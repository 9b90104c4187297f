//! A circuit breaker for tower: sliding windows, probe-only half-open, generations, and a
//! closed path that costs one atomic load to admit.
//!
//! - [`Config`]: trip rules (failure rate, slow-call rate, consecutive failures) over a count or
//!   time window; half-open probes; open duration with backoff and jitter. `build()` checks it.
//! - [`Breaker`]: the state machine in one atomic word, and the handle — state, counts, time in
//!   state, force open, force closed, reset, a transition listener.
//! - [`CircuitBreakerLayer`]: a tower layer whose services all share one breaker. While open,
//!   `poll_ready` is `Ready` without polling the inner service and `call` returns
//!   [`CircuitOpen`] at once.
//! - [`classify`]: `Success`, `Failure` or `Ignore` for each result; `http` (feature) adds the
//!   HTTP preset (5xx, `Retry-After`) and a per-authority key for [`KeyedCircuitBreakerLayer`].
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade_breaker::{CircuitBreakerLayer, CircuitOpen, Config, State};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let config = Config::builder()
//!     .count_window(10)
//!     .minimum_calls(4)
//!     .failure_rate(50)
//!     .open_duration(Duration::from_secs(1), 2, Duration::from_secs(30))
//!     .jitter(0)
//!     .build()?;
//! let layer = CircuitBreakerLayer::new(config);
//! let breaker = layer.breaker().clone();
//! let mut svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|ok: bool| async move { if ok { Ok(()) } else { Err("upstream down") } });
//!
//! for ok in [true, false, true, false] {
//!     let _ = svc.ready().await?.call(ok).await;
//! }
//! assert_eq!(breaker.state(), State::Open); // 2 failures of 4 calls: 50 %
//! let refused = svc.ready().await?.call(true).await.unwrap_err();
//! assert_eq!(refused.downcast_ref::<CircuitOpen>().unwrap().retry_after(), Some(Duration::from_secs(1)));
//!
//! tokio::time::advance(Duration::from_secs(1)).await;
//! svc.ready().await?.call(true).await?; // the probe succeeds
//! assert_eq!(breaker.state(), State::Closed);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod classify;
mod config;
mod error;
pub mod future;
pub mod keyed;
mod layer;
mod loom;
mod service;
mod state;
mod window;

#[cfg(feature = "http")]
pub mod http;

pub use classify::{Classify, ErrorsAsFailures, Outcome};
pub use config::{Config, ConfigBuilder, ConfigError, WindowKind};
pub use error::CircuitOpen;
pub use keyed::{KeyedBreakers, KeyedCircuitBreakerLayer, Keyer};
pub use layer::CircuitBreakerLayer;
pub use service::CircuitBreaker;
pub use state::{Breaker, QueuedProbe, State, Transition};
pub use window::Counts;

/// The README's example, compiled and run as a doctest.
#[cfg(all(doctest, feature = "http"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The error type of the breaker's services: inner errors and [`CircuitOpen`], boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
