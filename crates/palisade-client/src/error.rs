//! [`Error`]: one opaque error with predicates, and the connect error under it.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use palisade_breaker::CircuitOpen;
use palisade_pool::{ConnectBackoff, ConnectTimeout, PoolClosed, PoolFull, PoolTimeout};
use palisade_ratelimit::RateLimited;
use palisade_shutdown::ShuttingDown;

/// A boxed error, as tower layers pass them.
pub type BoxError = Box<dyn StdError + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Builder,
    RateLimited,
    CircuitOpen,
    Timeout,
    Connect,
    Shutdown,
    PoolFull,
    Request,
    Body,
    #[cfg(feature = "json")]
    Decode,
}

/// What went wrong with a request, or with building a client.
///
/// Ask with the predicates; [`source`](StdError::source) is the error the layer or hyper
/// raised (downcast it for the details, e.g. to [`RateLimited`] or `std::io::Error`).
pub struct Error {
    kind: Kind,
    retry_after: Option<Duration>,
    message: Option<String>,
    source: Option<BoxError>,
}

impl Error {
    pub(crate) fn builder(message: impl Into<String>) -> Error {
        Error {
            kind: Kind::Builder,
            retry_after: None,
            message: Some(message.into()),
            source: None,
        }
    }

    pub(crate) fn builder_source(message: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error {
            kind: Kind::Builder,
            retry_after: None,
            message: Some(message.into()),
            source: Some(source.into()),
        }
    }

    pub(crate) fn body(source: impl Into<BoxError>) -> Error {
        Error {
            kind: Kind::Body,
            retry_after: None,
            message: None,
            source: Some(source.into()),
        }
    }

    #[cfg(feature = "json")]
    pub(crate) fn decode(source: impl Into<BoxError>) -> Error {
        Error {
            kind: Kind::Decode,
            retry_after: None,
            message: None,
            source: Some(source.into()),
        }
    }

    /// Classifies an error that came out of the stack.
    pub(crate) fn from_stack(e: BoxError) -> Error {
        let e = match e.downcast::<Error>() {
            Ok(e) => return *e,
            Err(e) => e,
        };
        let (kind, retry_after) = if let Some(r) = e.downcast_ref::<RateLimited>() {
            (Kind::RateLimited, Some(r.retry_after()))
        } else if let Some(c) = e.downcast_ref::<CircuitOpen>() {
            (Kind::CircuitOpen, c.retry_after())
        } else if e.is::<tower::timeout::error::Elapsed>() || e.is::<PoolTimeout>() {
            (Kind::Timeout, None)
        } else if e.is::<ConnectError>() || e.is::<ConnectTimeout>() {
            (Kind::Connect, None)
        } else if let Some(b) = e.downcast_ref::<ConnectBackoff>() {
            (Kind::Connect, Some(b.retry_after()))
        } else if e.is::<ShuttingDown>() || e.is::<PoolClosed>() {
            (Kind::Shutdown, None)
        } else if e.is::<PoolFull>() {
            (Kind::PoolFull, None)
        } else {
            (Kind::Request, None)
        };
        Error {
            kind,
            retry_after,
            message: None,
            source: Some(e),
        }
    }

    /// The request waited too long for a rate-limit token, or was refused one
    /// ([`RateLimited`]).
    pub fn is_rate_limited(&self) -> bool {
        self.kind == Kind::RateLimited
    }

    /// The circuit breaker of the origin is open: the request was not sent ([`CircuitOpen`]).
    pub fn is_circuit_open(&self) -> bool {
        self.kind == Kind::CircuitOpen
    }

    /// The per-request timeout elapsed, or no connection became free in time.
    pub fn is_timeout(&self) -> bool {
        self.kind == Kind::Timeout
    }

    /// Connecting failed (DNS, TCP, TLS), timed out, or is held back after repeated failures.
    pub fn is_connect(&self) -> bool {
        self.kind == Kind::Connect
    }

    /// The client is shutting down: the request was refused, not sent.
    pub fn is_shutdown(&self) -> bool {
        self.kind == Kind::Shutdown
    }

    /// Too many requests were already waiting for a connection to this origin.
    pub fn is_pool_full(&self) -> bool {
        self.kind == Kind::PoolFull
    }

    /// The request failed on the wire (the connection closed or reset before a response).
    pub fn is_request(&self) -> bool {
        self.kind == Kind::Request
    }

    /// Reading the response body failed.
    pub fn is_body(&self) -> bool {
        self.kind == Kind::Body
    }

    /// Building the client or the request failed (bad URL, bad quota, bad header).
    pub fn is_builder(&self) -> bool {
        self.kind == Kind::Builder
    }

    /// `true` when the request never left this process: refused by the rate limiter, the
    /// breaker or the shutdown, or the pool was full. Such a request is safe to send again.
    pub fn is_refused(&self) -> bool {
        matches!(
            self.kind,
            Kind::RateLimited | Kind::CircuitOpen | Kind::Shutdown | Kind::PoolFull
        )
    }

    /// When trying again makes sense, if the refusal said (rate limit, open circuit, connect
    /// backoff).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// A short name of the class, for reports: `rate_limited`, `circuit_open`, `timeout`,
    /// `connect`, `shutdown`, `pool_full`, `request`, `body`, `builder`, `decode`.
    pub fn class(&self) -> &'static str {
        match self.kind {
            Kind::Builder => "builder",
            Kind::RateLimited => "rate_limited",
            Kind::CircuitOpen => "circuit_open",
            Kind::Timeout => "timeout",
            Kind::Connect => "connect",
            Kind::Shutdown => "shutdown",
            Kind::PoolFull => "pool_full",
            Kind::Request => "request",
            Kind::Body => "body",
            #[cfg(feature = "json")]
            Kind::Decode => "decode",
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind);
        if let Some(m) = &self.message {
            d.field("message", m);
        }
        if let Some(r) = self.retry_after {
            d.field("retry_after", &r);
        }
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            Kind::Builder => "invalid client configuration",
            Kind::RateLimited => "rate limited",
            Kind::CircuitOpen => "circuit open",
            Kind::Timeout => "timed out",
            Kind::Connect => "connect failed",
            Kind::Shutdown => "client shutting down",
            Kind::PoolFull => "too many requests waiting for a connection",
            Kind::Request => "request failed",
            Kind::Body => "reading the response body failed",
            #[cfg(feature = "json")]
            Kind::Decode => "decoding the response body failed",
        };
        f.write_str(what)?;
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// The connection failed before any byte of the request was written (for example, a pooled
/// connection the server had just closed): the request can be sent again whatever its method.
#[derive(Debug)]
pub struct RequestNotSent {
    pub(crate) source: hyper::Error,
}

impl fmt::Display for RequestNotSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request not sent: {}", self.source)
    }
}

impl StdError for RequestNotSent {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.source)
    }
}

/// Connecting to an origin failed: resolving, TCP or TLS. The `source` is the I/O or TLS
/// error as it was raised.
#[derive(Debug)]
pub struct ConnectError {
    origin: String,
    stage: &'static str,
    source: BoxError,
}

impl ConnectError {
    pub(crate) fn new(origin: String, stage: &'static str, source: impl Into<BoxError>) -> Self {
        ConnectError {
            origin,
            stage,
            source: source.into(),
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} to {}: {}", self.stage, self.origin, self.source)
    }
}

impl StdError for ConnectError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source as &(dyn StdError + 'static))
    }
}
