//! Graceful shutdown that drains: servers, workers and clients.
//!
//! - [`Shutdown`]: triggered by SIGTERM or SIGINT (a second one forces) or by `trigger()`;
//!   stops accepting, drains in-flight work until a deadline, forces what remains, and returns a
//!   [`DrainReport`]. Built on tokio-util's `CancellationToken` and `TaskTracker`.
//! - [`ShutdownLayer`]: counts requests in flight with a guard owned by the response future
//!   (right under panics and cancellation), refuses new ones with [`ShuttingDown`] once closed
//!   (`503` + `Connection: close` over HTTP), and its handle's `drain()` resolves when the last
//!   one is done — the building block for draining a client stack.
//! - [`serve`] (feature `server`): a hyper server that stops accepting, closes each connection
//!   gracefully, and cuts the rest at the deadline.
//! - [`Shutdown::spawn`]: tracked workers, each handed a cancellation token.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use palisade_shutdown::{serve, Shutdown};
//! use tower::ServiceBuilder;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let shutdown = Shutdown::new(Duration::from_secs(30));
//!     shutdown.listen_for_signals()?;
//!     let app = ServiceBuilder::new()
//!         .layer(shutdown.layer().service_unavailable())
//!         .service_fn(|_req: http::Request<hyper::body::Incoming>| async {
//!             Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello\n")))
//!         });
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//!     serve(listener, app, &shutdown).await?; // returns once a signal arrived
//!     let report = shutdown.drain().await;
//!     println!("{report}");
//!     Ok(())
//! }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod gate;
mod layer;
#[cfg(feature = "server")]
mod server;
mod shutdown;

pub use error::ShuttingDown;
pub use layer::{AsError, Refusal, ResponseFuture, ShutdownHandle, ShutdownLayer, ShutdownService};
#[cfg(feature = "server")]
pub use server::{serve, ServiceUnavailable};
pub use shutdown::{DrainReport, ForceReason, Shutdown};

/// The README's example, compiled as a doctest.
#[cfg(all(doctest, feature = "server"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The error type of services that report refusals as errors.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
