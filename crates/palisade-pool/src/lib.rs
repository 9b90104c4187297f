//! A keyed connection pool as a tower `Layer`: hard limits per key and in total, FIFO
//! hand-off, connect errors delivered as they are, an idle sweep that runs by default, and an
//! awaitable close.
//!
//! [`PoolLayer`] wraps a *connector* — a `tower::Service<K>` whose response is a connection,
//! itself a `tower::Service<Req>` — into [`Pool`], a `Service<Req>`. A key function picks the
//! key of each request (for HTTP: scheme and authority). Nothing here knows about HTTP.
//!
//! - **Limits held for a connection's whole life.** `max_connections_per_key` and
//!   `max_connections` count connections connecting, idle and in use; a slot is freed only when
//!   its connection is closed or evicted. (A limit on the connector only bounds dials in
//!   flight.)
//! - **First come, first served.** A checkout that finds no idle connection and no free slot
//!   joins its key's queue under the same lock that looked; a returned connection goes straight
//!   to the oldest waiter, and a freed slot lets the oldest waiter connect. A later arrival never
//!   overtakes. Beyond `max_waiters`: [`PoolFull`] at once; past the checkout timeout:
//!   [`PoolTimeout`].
//! - **Health.** A connection goes back only once its own `poll_ready` is `Ready` (for HTTP/1:
//!   after the response body is read); one that errors there is closed and its slot freed. Idle
//!   timeout and maximum lifetime (with jitter) are checked on checkout, on return, and by a
//!   background sweep.
//! - **Errors as they are.** The connector's error reaches the checkout that dialled, unchanged
//!   (downcast the `BoxError`); [`ConnectTimeout`] bounds a dial; an optional backoff refuses
//!   new connects to a failing key with [`ConnectBackoff`].
//! - **Close.** [`PoolHandle::close`] refuses new checkouts with [`PoolClosed`], closes idle
//!   connections, closes the others as they come back, and resolves when none is left or at the
//!   deadline, with a [`CloseReport`].
//! - **Stats.** [`PoolHandle::stats`]: idle, leased, connecting, waiters, and opened, reused,
//!   closed, evicted, failed — per key and in total. `tracing` events for each.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade_pool::{Config, PoolLayer};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! type BoxError = Box<dyn std::error::Error + Send + Sync>;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! // A connector: given a host, it makes a "connection" that answers requests for it.
//! let connector = service_fn(|host: String| async move {
//!     Ok::<_, BoxError>(service_fn(move |path: String| {
//!         let host = host.clone();
//!         async move { Ok::<_, BoxError>(format!("{host} served {path}")) }
//!     }))
//! });
//! let config = Config::builder().max_connections_per_key(2).max_connections(8).build()?;
//! // Requests look like "host/path"; the key is the host.
//! let layer = PoolLayer::new(config, |req: &String| req.split('/').next().unwrap_or("").to_owned());
//! let handle = layer.handle();
//! let mut pool = layer.layer(connector);
//!
//! for i in 0..3 {
//!     let answer = pool.ready().await?.call(format!("api.example/item/{i}")).await?;
//!     assert_eq!(answer, format!("api.example served api.example/item/{i}"));
//! }
//! let stats = handle.stats();
//! assert_eq!((stats.total.opened, stats.total.reused, stats.total.idle), (1, 2, 1));
//!
//! let report = handle.close(Duration::from_secs(5)).await;
//! assert!(report.drained);
//! assert!(pool.ready().await?.call("api.example/x".to_owned()).await.is_err());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod error;
mod future;
mod handle;
mod layer;
mod lease;
mod pool;
mod service;
mod stats;

pub use config::{Config, ConfigBuilder, ConfigError};
pub use error::{ConnectBackoff, ConnectTimeout, PoolClosed, PoolFull, PoolTimeout};
pub use future::ResponseFuture;
pub use handle::PoolHandle;
pub use layer::PoolLayer;
pub use lease::PoolKey;
pub use service::Pool;
pub use stats::{CloseReport, KeyStats, PoolStats};

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The error type of the pool's services: the connector's and the connection's errors, boxed
/// unchanged, or one of this crate's markers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
