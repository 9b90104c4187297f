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
//! ```
//! use std::time::Duration;
//! use palisade_shutdown::{serve, Shutdown};
//! use tower::ServiceBuilder;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let shutdown = Shutdown::new(Duration::from_secs(30));
//! // In a real server: SIGTERM/SIGINT trigger it, a second one forces it.
//! shutdown.listen_for_signals()?;
//! let app = ServiceBuilder::new()
//!     .layer(shutdown.layer().service_unavailable())
//!     .service_fn(|_req: http::Request<hyper::body::Incoming>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello\n")))
//!     });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = tokio::spawn({
//!     let shutdown = shutdown.clone();
//!     async move { serve(listener, app, &shutdown).await }
//! });
//!
//! shutdown.trigger(); // here by hand; `serve` stops accepting
//! server.await??;
//! let report = shutdown.drain().await; // waits for in-flight work, up to 30 s
//! assert!(report.forced.is_none());
//! println!("{report}");
//! # Ok(()) }
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
