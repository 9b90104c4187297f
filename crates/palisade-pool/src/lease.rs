//! The guards a checkout holds: a queued wait, a reserved connect slot, a leased connection.
//! Each gives back what it holds when dropped, so a cancelled checkout leaks no slot.

use std::fmt;
use std::future::poll_fn;
use std::hash::Hash;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};

use tokio::time::Instant;
use tower_service::Service;

use crate::pool::{close_conn, Checkout, Grant, Meta, Shared, WaitCell};

/// What a pool key must be: hashable, comparable, cheap enough to clone once per checkout,
/// printable for `tracing` events, and shareable between tasks. Implemented for every such type.
pub trait PoolKey: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static {}
impl<K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static> PoolKey for K {}

/// A grant, with the shared state and key it was waited for under.
pub(crate) type Granted<K, C> = (Grant<C>, Arc<Shared<K, C>>, K);

/// A checkout queued in its key's FIFO.
pub(crate) struct WaitGuard<K: PoolKey, C> {
    shared: Option<Arc<Shared<K, C>>>,
    key: K,
    cell: Arc<WaitCell<K, C>>,
    idx: usize,
    seq: u64,
}

impl<K: PoolKey, C> WaitGuard<K, C> {
    pub(crate) fn new(
        shared: Arc<Shared<K, C>>,
        key: K,
        cell: Arc<WaitCell<K, C>>,
        idx: usize,
        seq: u64,
    ) -> Self {
        WaitGuard {
            shared: Some(shared),
            key,
            cell,
            idx,
            seq,
        }
    }

    /// `Ready` with the grant; the guard is then spent and hands back the shared state and key.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Granted<K, C>> {
        match self.cell.poll(cx) {
            Poll::Ready(grant) => {
                let shared = self.shared.take().expect("polled after its grant");
                Poll::Ready((grant, shared, self.key.clone()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<K: PoolKey, C: Send + 'static> WaitGuard<K, C> {
    /// Starts the pool's upkeep task if it is not running (its runtime shut down) and, when it
    /// had to, runs one round of it here: true if that may have settled this waiter (poll
    /// again).
    pub(crate) fn restart_upkeep(&self) -> bool {
        match &self.shared {
            Some(shared) => shared.restart_upkeep(),
            None => false,
        }
    }
}

impl<K: PoolKey, C> Drop for WaitGuard<K, C> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.cancel_wait(&self.cell, self.idx, self.seq);
        }
    }
}

/// A slot reserved for a connect in progress.
pub(crate) struct SlotGuard<K: PoolKey, C> {
    shared: Option<Arc<Shared<K, C>>>,
    pub(crate) key: K,
}

impl<K: PoolKey, C> SlotGuard<K, C> {
    pub(crate) fn new(shared: Arc<Shared<K, C>>, key: K) -> Self {
        SlotGuard {
            shared: Some(shared),
            key,
        }
    }

    /// The connect succeeded: the slot now belongs to the leased connection.
    pub(crate) fn connected(mut self, conn: C) -> Lease<K, C>
    where
        C: Send + 'static,
    {
        let shared = self.shared.take().expect("present");
        let meta = shared.connected(&self.key);
        if shared.sweeps {
            shared.start_upkeep();
        }
        Lease {
            shared: Some(shared),
            key: self.key.clone(),
            conn: Some(conn),
            meta,
        }
    }

    /// The connect failed: free the slot and count the failure.
    pub(crate) fn failed(mut self, error: &dyn fmt::Display) {
        let shared = self.shared.take().expect("present");
        shared.connect_failed(&self.key, error);
    }
}

impl<K: PoolKey, C> Drop for SlotGuard<K, C> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.connect_abandoned(&self.key);
        }
    }
}

/// A connection checked out of the pool. Dropped without [`release`](Lease::release), the
/// connection is closed and its slot freed.
pub(crate) struct Lease<K: PoolKey, C> {
    shared: Option<Arc<Shared<K, C>>>,
    key: K,
    conn: Option<C>,
    meta: Meta,
}

impl<K: PoolKey, C> Lease<K, C> {
    pub(crate) fn new(shared: Arc<Shared<K, C>>, key: K, conn: C, meta: Meta) -> Self {
        Lease {
            shared: Some(shared),
            key,
            conn: Some(conn),
            meta,
        }
    }

    pub(crate) fn conn_mut(&mut self) -> &mut C {
        self.conn
            .as_mut()
            .expect("a live lease holds its connection")
    }

    /// A new connection failed or stalled before it was first ready: closed, its slot freed,
    /// and counted as a failed connect.
    pub(crate) fn fresh_failed(mut self, error: &dyn fmt::Display) {
        let shared = self.shared.take().expect("present");
        let conn = self.conn.take().expect("present");
        shared.fresh_failed(&self.key, conn, error);
    }

    /// A new connection is ready for the first time.
    pub(crate) fn first_ready(&self) {
        if let Some(shared) = &self.shared {
            shared.first_ready(&self.key);
        }
    }

    /// Closes the connection now; hands back the shared state and key for another checkout.
    pub(crate) fn discard(mut self) -> (Arc<Shared<K, C>>, K) {
        let shared = self.shared.take().expect("present");
        let conn = self.conn.take().expect("present");
        shared.discard(&self.key, conn);
        (shared, self.key.clone())
    }

    /// The connection is broken before its request was sent, or (`expired`) handed over but
    /// collected past its lifetime: close it and take its place with another idle connection
    /// of the key, or a slot to connect in ([`Checkout::Idle`] or [`Checkout::Connect`]).
    pub(crate) fn replace(mut self, expired: bool) -> (Arc<Shared<K, C>>, K, Checkout<K, C>) {
        let shared = self.shared.take().expect("present");
        if let Some(conn) = self.conn.take() {
            close_conn(conn);
        }
        let next = shared.replace_unused(&self.key, Instant::now(), expired);
        (shared, self.key.clone(), next)
    }

    /// Gives the connection back; the lease is left empty (its drop does nothing).
    fn give_back(&mut self, now: Instant)
    where
        C: Send + 'static,
    {
        let shared = self.shared.take().expect("present");
        let conn = self.conn.take().expect("present");
        shared.give_back(&self.key, conn, self.meta, now);
        // An idle connection needs the sweep; it is restarted here if its runtime went away.
        if shared.sweeps {
            shared.start_upkeep();
        }
    }

    /// The request is done: the connection goes back once it is ready for the next one. The
    /// lease is left empty.
    ///
    /// Ready now (checked without registering a wake-up): back at once. Not yet (an HTTP/1
    /// connection whose response body is still being read): a task waits for it and then gives
    /// it back, so it is never handed out busy. Broken: closed, slot freed.
    ///
    /// `now`: a clock reading taken since the request finished, if the caller has one (it saves
    /// reading the clock twice in one poll).
    ///
    /// By reference: the caller's lease was stored a few instructions before, and moving it
    /// out whole would re-read those bytes before the stores reach the cache (a stalled load
    /// on every request); only the fields needed are taken.
    pub(crate) fn release<Req>(&mut self, now: Option<Instant>)
    where
        C: Service<Req> + Send + 'static,
        Req: 'static,
    {
        let mut cx = Context::from_waker(noop_waker());
        match self.conn_mut().poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => self.give_back(now.unwrap_or_else(Instant::now)),
            Poll::Ready(Err(_)) => {
                if let (Some(shared), Some(conn)) = (self.shared.take(), self.conn.take()) {
                    shared.discard(&self.key, conn);
                }
            }
            Poll::Pending => {
                let mut lease = Lease {
                    shared: self.shared.take(),
                    key: self.key.clone(),
                    conn: self.conn.take(),
                    meta: self.meta,
                };
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        runtime.spawn(async move {
                            match poll_fn(|cx| lease.conn_mut().poll_ready(cx)).await {
                                Ok(()) => lease.give_back(Instant::now()),
                                Err(_) => drop(lease.discard()),
                            }
                        });
                    }
                    Err(_) => drop(lease.discard()),
                }
            }
        }
    }
}

impl<K: PoolKey, C> Drop for Lease<K, C> {
    fn drop(&mut self) {
        if let (Some(shared), Some(conn)) = (self.shared.take(), self.conn.take()) {
            shared.discard(&self.key, conn);
        }
    }
}

struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

fn noop_waker() -> &'static Waker {
    static NOOP: OnceLock<Waker> = OnceLock::new();
    NOOP.get_or_init(|| Waker::from(Arc::new(Noop)))
}
