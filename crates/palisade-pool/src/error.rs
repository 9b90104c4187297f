//! Error types. Each is a marker a caller can downcast a `BoxError` to.

use std::fmt;
use std::time::Duration;

/// The pool is closed (see [`PoolHandle::close`](crate::PoolHandle::close)): no new checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PoolClosed;

impl fmt::Display for PoolClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection pool closed")
    }
}

impl std::error::Error for PoolClosed {}

/// Every connection of the key (or of the pool) is in use and the wait queue is full
/// (`max_waiters`): refused at once instead of queueing without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolFull {
    max_waiters: usize,
}

impl PoolFull {
    pub(crate) const fn new(max_waiters: usize) -> PoolFull {
        PoolFull { max_waiters }
    }

    /// The configured bound on waiting checkouts that was reached.
    pub fn max_waiters(&self) -> usize {
        self.max_waiters
    }
}

impl fmt::Display for PoolFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connection pool full: {} checkouts already waiting",
            self.max_waiters
        )
    }
}

impl std::error::Error for PoolFull {}

/// A checkout waited longer than the checkout timeout for a connection or a free slot.
///
/// This is the wait in the queue only; a dial that takes too long fails with
/// [`ConnectTimeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolTimeout {
    waited: Duration,
}

impl PoolTimeout {
    pub(crate) const fn new(waited: Duration) -> PoolTimeout {
        PoolTimeout { waited }
    }

    /// The checkout timeout that elapsed.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl fmt::Display for PoolTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for a pooled connection",
            self.waited
        )
    }
}

impl std::error::Error for PoolTimeout {}

/// The connector did not produce a connection within the connect timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectTimeout {
    after: Duration,
}

impl ConnectTimeout {
    pub(crate) const fn new(after: Duration) -> ConnectTimeout {
        ConnectTimeout { after }
    }

    /// The connect timeout that elapsed.
    pub fn after(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for ConnectTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connect timed out after {:?}", self.after)
    }
}

impl std::error::Error for ConnectTimeout {}

/// Connecting to this key failed several times in a row, so new connects are held back until
/// `retry_after` has passed (see [`ConfigBuilder::connect_backoff`](crate::ConfigBuilder::connect_backoff)).
/// Idle connections of the key are still handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectBackoff {
    retry_after: Duration,
    failures: u32,
    last_error: String,
}

impl ConnectBackoff {
    pub(crate) fn new(retry_after: Duration, failures: u32, last_error: String) -> ConnectBackoff {
        ConnectBackoff {
            retry_after,
            failures,
            last_error,
        }
    }

    /// How long until the pool tries to connect to this key again.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// Consecutive connect failures for the key.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The message of the last connect error.
    pub fn last_error(&self) -> &str {
        &self.last_error
    }
}

impl fmt::Display for ConnectBackoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not connecting for {:?} after {} connect failures in a row (last: {})",
            self.retry_after, self.failures, self.last_error
        )
    }
}

impl std::error::Error for ConnectBackoff {}
