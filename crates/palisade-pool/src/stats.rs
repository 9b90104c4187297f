//! Statistics and the close report.

use std::fmt;
use std::time::Duration;

/// Gauges and counters for one key, or for the whole pool.
///
/// Every connection ever opened is closed, idle or leased:
/// `opened == closed + idle + leased` holds whenever no call is between steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyStats {
    /// Connections waiting in the pool for a request.
    pub idle: usize,
    /// Connections in use (including those handed to a waiter and those waiting, after a
    /// response, to be ready again).
    pub leased: usize,
    /// Slots reserved for connects in progress.
    pub connecting: usize,
    /// Checkouts queued for a connection or a slot.
    pub waiters: usize,
    /// Connections opened.
    pub opened: u64,
    /// Checkouts served by a connection that had served a request before.
    pub reused: u64,
    /// Connections closed, for any reason (broken, expired, evicted, pool closed).
    pub closed: u64,
    /// Of the closed: evicted by the idle timeout, the lifetime, the idle limit, or to make
    /// room for another key.
    pub evicted: u64,
    /// Connects that failed.
    pub failed: u64,
}

impl KeyStats {
    pub(crate) fn from_counters(
        opened: u64,
        reused: u64,
        closed: u64,
        evicted: u64,
        failed: u64,
    ) -> Self {
        KeyStats {
            opened,
            reused,
            closed,
            evicted,
            failed,
            ..KeyStats::default()
        }
    }
}

/// A snapshot of a pool, from [`PoolHandle::stats`](crate::PoolHandle::stats).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats<K> {
    /// Over all keys, including keys the sweep has since forgotten.
    pub total: KeyStats,
    /// Per key that currently has an entry (connections, waiters, or a connect backoff).
    /// A key with nothing left is forgotten, with its counters, by the idle sweep — or, when
    /// nothing is swept (no idle timeout, no lifetime), when a new key comes once the map has
    /// doubled; until then it is listed at zero.
    pub keys: Vec<(K, KeyStats)>,
    /// Whether the pool has been closed.
    pub closed: bool,
}

/// What [`PoolHandle::close`](crate::PoolHandle::close) found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloseReport<K> {
    /// From the call to `close` until it resolved.
    pub elapsed: Duration,
    /// Idle connections closed at once.
    pub closed_idle: usize,
    /// Connections still leased or connecting when it resolved, per key, most first; empty
    /// when the pool drained before the deadline.
    pub still_leased: Vec<(K, usize)>,
    /// Whether every connection was closed before the deadline.
    pub drained: bool,
}

impl<K: fmt::Debug> fmt::Display for CloseReport<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pool closed in {:?}: {} idle closed",
            self.elapsed, self.closed_idle
        )?;
        if self.drained {
            f.write_str(", all connections returned")
        } else {
            let n: usize = self.still_leased.iter().map(|(_, n)| n).sum();
            write!(
                f,
                ", {n} still in use at the deadline: {:?}",
                self.still_leased
            )
        }
    }
}
