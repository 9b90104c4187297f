//! What the upstream received.

use std::fmt;

use http::{Method, StatusCode};
use tokio::time::Instant;

/// One request the upstream received, recorded when its head arrived (with the answer decided
/// then; latency and the body come after).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Record {
    /// The request number: 1 for the first request, counted across all connections in
    /// arrival order.
    pub n: u64,
    /// The `x-request-id` header if present (and valid UTF-8), else the path and query.
    pub id: String,
    /// The request method.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// What the upstream did with it.
    pub outcome: Outcome,
    /// The number of the connection it arrived on: 1 for the first connection accepted.
    pub connection: u64,
    /// When it arrived, on the tokio clock.
    pub at: Instant,
    /// The request body, once read (empty until then, and for a reset or hung request).
    pub body: Vec<u8>,
}

/// What the upstream did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered with this status (`200`, `429`, or an outage's `5xx`): what the upstream
    /// decided, written before the answer is sent (see the README's limits on a client that
    /// half-closes).
    Answered(StatusCode),
    /// The connection was reset (closed with `RST`, no answer).
    Reset,
    /// Never answered; the connection stays open until the client closes it or the upstream
    /// stops.
    Hang,
}

impl Outcome {
    /// The status answered, if any.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Outcome::Answered(s) => Some(*s),
            Outcome::Reset | Outcome::Hang => None,
        }
    }
}

/// `200`, `429`, …, `reset` or `hang`.
impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Answered(s) => write!(f, "{}", s.as_u16()),
            Outcome::Reset => f.write_str("reset"),
            Outcome::Hang => f.write_str("hang"),
        }
    }
}
