//! Error types.

use std::fmt;
use std::time::Duration;

/// The circuit is open (or half-open with every probe slot taken): the request was refused
/// without reaching the inner service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitOpen {
    retry_after: Option<Duration>,
}

impl CircuitOpen {
    pub(crate) const fn new(retry_after: Option<Duration>) -> CircuitOpen {
        CircuitOpen { retry_after }
    }

    /// How long until the breaker lets a probe through, when known (open, not forced open or
    /// half-open).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.retry_after {
            Some(d) => write!(f, "circuit open: retry after {d:?}"),
            None => f.write_str("circuit open"),
        }
    }
}

impl std::error::Error for CircuitOpen {}
