//! [`PoolHandle`]: statistics and close, without the connection type.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::pool::Shared;
use crate::stats::{CloseReport, KeyStats, PoolStats};

/// What a handle needs from the shared state, with the connection type erased.
trait Control<K>: Send + Sync {
    fn stats(&self) -> PoolStats<K>;
    fn key_stats(&self, key: &K) -> Option<KeyStats>;
    fn is_closed(&self) -> bool;
    fn close(&self) -> usize;
    fn wait_drained(
        &self,
        deadline: Instant,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>;
    fn close_report(&self, closed_idle: usize, elapsed: Duration) -> CloseReport<K>;
}

impl<K, C> Control<K> for Shared<K, C>
where
    K: Hash + Eq + Clone + fmt::Debug + Send + Sync,
    C: Send,
{
    fn stats(&self) -> PoolStats<K> {
        Shared::stats(self)
    }
    fn key_stats(&self, key: &K) -> Option<KeyStats> {
        Shared::key_stats(self, key)
    }
    fn is_closed(&self) -> bool {
        Shared::is_closed(self)
    }
    fn close(&self) -> usize {
        Shared::close(self)
    }
    fn wait_drained(
        &self,
        deadline: Instant,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(Shared::wait_drained(self, deadline))
    }
    fn close_report(&self, closed_idle: usize, elapsed: Duration) -> CloseReport<K> {
        Shared::close_report(self, closed_idle, elapsed)
    }
}

/// Inspects and closes a pool; from [`PoolLayer::handle`](crate::PoolLayer::handle) or
/// [`Pool::handle`](crate::Pool::handle). Cheap to clone; every clone controls the same pool.
#[derive(Clone)]
pub struct PoolHandle<K> {
    shared: Arc<dyn Control<K>>,
}

impl<K> fmt::Debug for PoolHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolHandle").finish_non_exhaustive()
    }
}

impl<K> PoolHandle<K>
where
    K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
{
    pub(crate) fn new<C: Send + 'static>(shared: Arc<Shared<K, C>>) -> Self {
        PoolHandle { shared }
    }

    /// A snapshot of the gauges and counters, in total and per key.
    pub fn stats(&self) -> PoolStats<K> {
        self.shared.stats()
    }

    /// The gauges and counters of one key, if it has an entry.
    pub fn key_stats(&self, key: &K) -> Option<KeyStats> {
        self.shared.key_stats(key)
    }

    /// Whether [`close`](Self::close) has been called.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Closes the pool and waits for it to empty, for at most `deadline`.
    ///
    /// At once: new checkouts fail with [`PoolClosed`](crate::PoolClosed), queued checkouts
    /// fail with it too, and idle connections are closed. Connections in use close when they
    /// come back; a connect already in progress serves its request and then closes. The
    /// future resolves when no connection is left, or at the deadline with what was still in
    /// use. The pool closes when this is called, before the future is first polled. Calling it
    /// again is harmless: it waits again and reports.
    pub fn close(&self, deadline: Duration) -> impl Future<Output = CloseReport<K>> + Send + '_ {
        let started = Instant::now();
        let closed_idle = self.shared.close();
        let until = started
            .checked_add(deadline)
            .unwrap_or_else(|| started + Duration::from_secs(365 * 24 * 3600));
        async move {
            self.shared.wait_drained(until).await;
            self.shared.close_report(closed_idle, started.elapsed())
        }
    }
}
