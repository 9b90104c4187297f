//! The pool's bookkeeping: per-key idle lists, slot counts, FIFO wait queues and the hand-off
//! of connections and free slots to waiters. No tower types: a connection is any value.
//!
//! Every change happens under one mutex, held only for bookkeeping: connections are dropped,
//! grants written into the waiters' cells and waiters woken after it is released (see
//! [`Effects`]). A waiter is registered under the same lock that found no idle connection and
//! no free slot, and every connection returned or slot freed is assigned to the oldest waiter
//! directly (taken off its queue under the lock), so a wake-up can neither be lost nor stolen
//! by a later arrival.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::{Backoff, Config};
use crate::error::{ConnectBackoff, PoolClosed, PoolFull};
use crate::stats::{CloseReport, KeyStats, PoolStats};

/// When a connection was opened and when it expires.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub(crate) expires: Option<Instant>,
}

struct Idle<C> {
    conn: C,
    meta: Meta,
    since: Instant,
}

/// What a waiter is handed.
pub(crate) enum Grant<C> {
    /// A connection, already counted as leased.
    Conn(C, Meta),
    /// A reserved slot: connect.
    Connect,
    /// The pool closed while it waited.
    Closed,
    /// The checkout timeout passed.
    TimedOut,
}

enum WaitState<C> {
    /// The grant was taken.
    Vacant,
    Waiting,
    Granted(Grant<C>),
    /// The waiter left after the pool took it off the queue and before its grant arrived: the
    /// pool takes the grant back when it comes.
    Abandoned,
}

/// Where a waiter's grant is delivered. The pool takes the waiter off its queue under its own
/// lock and writes the grant here after releasing it; the waiter reads it taking only this
/// cell's lock. So neither the hand-off nor a woken waiter holds the pool's lock while touching
/// a cell last written on another core.
pub(crate) struct WaitCell<K, C> {
    /// The waiter's key: a grant that arrives after its waiter left goes back under it.
    key: K,
    inner: Mutex<CellState<C>>,
}

struct CellState<C> {
    state: WaitState<C>,
    waker: Option<Waker>,
}

impl<K, C> WaitCell<K, C> {
    fn new(key: K) -> Self {
        WaitCell {
            key,
            inner: Mutex::new(CellState {
                state: WaitState::Waiting,
                waker: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, CellState<C>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Ready` with the grant once there is one.
    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<Grant<C>> {
        let mut cell = self.lock();
        match std::mem::replace(&mut cell.state, WaitState::Vacant) {
            WaitState::Granted(grant) => {
                cell.waker = None;
                Poll::Ready(grant)
            }
            WaitState::Waiting => {
                cell.state = WaitState::Waiting;
                match &mut cell.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    w => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            WaitState::Vacant | WaitState::Abandoned => {
                unreachable!("a waiter polled after it took its grant or left")
            }
        }
    }

    /// Hands `grant` to the waiter and wakes it; `Err(grant)` if it has left.
    fn deliver(&self, grant: Grant<C>) -> Result<(), Grant<C>> {
        let mut cell = self.lock();
        match cell.state {
            WaitState::Waiting => {
                cell.state = WaitState::Granted(grant);
                let waker = cell.waker.take();
                drop(cell);
                if let Some(w) = waker {
                    w.wake();
                }
                Ok(())
            }
            WaitState::Abandoned => Err(grant),
            // One grant per wait: only a waiter can leave these.
            WaitState::Vacant | WaitState::Granted(_) => {
                debug_assert!(false, "a second grant for one wait");
                Err(grant)
            }
        }
    }
}

/// A place in the wait queue. The slot is free again as soon as its waiter is granted
/// something.
///
/// Each wait has a new cell, which the pool lets go of when it grants: reusing the cell meant
/// reading its reference count, last changed by the waiter on another core, inside the pool's
/// lock (a cache miss on every contended checkout); a new one is made in this core's cache.
struct WaitSlot<K, C> {
    seq: u64,
    deadline: Option<Instant>,
    /// `Some` while the slot's waiter is queued.
    cell: Option<Arc<WaitCell<K, C>>>,
}

#[derive(Default, Clone, Copy)]
struct Counters {
    opened: u64,
    reused: u64,
    closed: u64,
    evicted: u64,
    failed: u64,
}

struct KeyState<C> {
    /// Oldest first; reused from the back (the most recently used is the least likely to be
    /// stale), swept from the front.
    idle: VecDeque<Idle<C>>,
    connecting: usize,
    leased: usize,
    /// Connections being closed: they keep their slots until they have been dropped, so a
    /// new connection never opens beside one still closing.
    closing: usize,
    /// Waiters of this key in arrival order: `(slot index, sequence number)`.
    queue: VecDeque<(usize, u64)>,
    counters: Counters,
    failures: u32,
    /// When the last connect of the key failed (while `failures > 0`).
    last_failure: Option<Instant>,
    backoff_until: Option<Instant>,
    last_error: String,
}

impl<C> KeyState<C> {
    fn new() -> Self {
        KeyState {
            idle: VecDeque::new(),
            connecting: 0,
            leased: 0,
            closing: 0,
            queue: VecDeque::new(),
            counters: Counters::default(),
            failures: 0,
            last_failure: None,
            backoff_until: None,
            last_error: String::new(),
        }
    }

    fn live(&self) -> usize {
        self.idle.len() + self.connecting + self.leased + self.closing
    }

    /// Nothing left to keep: no connection, no waiter, no run of failures still counting. A
    /// run of failures is remembered for the backoff's maximum after its backoff ends (or
    /// after its last failure, below the threshold), so a failing key keeps doubling and
    /// failures spread over sweeps still add up to a backoff.
    fn is_unused(&self, now: Instant, backoff: Option<Backoff>) -> bool {
        self.live() == 0
            && self.queue.is_empty()
            && match (self.backoff_until.or(self.last_failure), backoff) {
                (Some(since), Some(b)) => now >= since + b.max,
                _ => true,
            }
    }
}

struct Inner<K, C> {
    keys: HashMap<K, KeyState<C>, foldhash::fast::RandomState>,
    /// Connections over all keys: connecting, idle and leased.
    live: usize,
    waiting: usize,
    closed: bool,
    slots: Vec<WaitSlot<K, C>>,
    free_slots: Vec<usize>,
    seq: u64,
    totals: Counters,
    rng: u64,
    /// When the upkeep task next wakes for a waiter's deadline (`None`: it does not).
    upkeep_at: Option<Instant>,
    /// The map's size at which a new key first forgets the unused ones.
    trim_at: usize,
}

/// The smallest map that is trimmed when a new key comes.
const MIN_TRIM: usize = 64;

/// A grant for the waiter whose cell this is.
type Delivery<K, C> = (Arc<WaitCell<K, C>>, Grant<C>);

/// Work to do once the lock is released: close connections (then free their slots), deliver
/// grants to waiters (waking them), tell `close` the pool is empty.
#[must_use]
pub(crate) struct Effects<K, C> {
    deliver: Option<Delivery<K, C>>,
    more_deliveries: Vec<Delivery<K, C>>,
    close: Option<(K, C)>,
    more_closes: Vec<(K, C)>,
    drained: bool,
}

impl<K, C> Effects<K, C>
where
    K: Hash + Eq + Clone + fmt::Debug,
{
    fn new() -> Self {
        Effects {
            deliver: None,
            more_deliveries: Vec::new(),
            close: None,
            more_closes: Vec::new(),
            drained: false,
        }
    }

    /// `grant` is to be handed to the waiter of `cell` (already off its queue).
    fn deliver(&mut self, cell: Arc<WaitCell<K, C>>, grant: Grant<C>) {
        if self.deliver.is_none() {
            self.deliver = Some((cell, grant));
        } else {
            self.more_deliveries.push((cell, grant));
        }
    }

    /// `conn` (counted as closing in `key`) is to be dropped, then its slot freed.
    fn close(&mut self, key: &K, conn: C) {
        if self.close.is_none() {
            self.close = Some((key.clone(), conn));
        } else {
            self.more_closes.push((key.clone(), conn));
        }
    }

    /// Nothing to do, and nothing allocated (`more_*` are filled only after their first
    /// slot is).
    #[inline]
    fn is_empty(&self) -> bool {
        let empty = self.close.is_none() && self.deliver.is_none() && !self.drained;
        debug_assert!(
            !empty || (self.more_closes.capacity() == 0 && self.more_deliveries.capacity() == 0)
        );
        empty
    }

    /// Runs the effects; call after the lock is released.
    pub(crate) fn run(self, shared: &Shared<K, C>) {
        if !self.is_empty() {
            self.run_all(shared);
        }
    }

    #[inline(never)]
    fn run_all(mut self, shared: &Shared<K, C>) {
        // Each round may make more work: a freed slot granted to a waiter, a grant whose
        // waiter left taken back (and perhaps granted to the next one).
        loop {
            if self.close.is_some() {
                let mut keys = Vec::with_capacity(1 + self.more_closes.len());
                for (key, conn) in self
                    .close
                    .take()
                    .into_iter()
                    .chain(self.more_closes.drain(..))
                {
                    close_conn(conn);
                    keys.push(key);
                }
                // Closed now: free the slots (which may grant them to waiters).
                let mut inner = shared.lock();
                for key in &keys {
                    if let Some(ks) = inner.keys.get_mut(key) {
                        ks.closing -= 1;
                    }
                    inner.live -= 1;
                    inner.grant_free_slot(&shared.config, &mut self);
                }
                if inner.closed && inner.live == 0 {
                    self.drained = true;
                }
            }
            let mut returned: Vec<Delivery<K, C>> = Vec::new();
            for (cell, grant) in self
                .deliver
                .take()
                .into_iter()
                .chain(std::mem::take(&mut self.more_deliveries))
            {
                if let Err(grant) = cell.deliver(grant) {
                    returned.push((cell, grant));
                }
            }
            if returned.is_empty() && self.close.is_none() && self.deliver.is_none() {
                break;
            }
            if !returned.is_empty() {
                let now = Instant::now();
                let mut inner = shared.lock();
                for (cell, grant) in returned {
                    inner.take_back(&cell.key, grant, now, &shared.config, &mut self);
                }
            }
        }
        if self.drained {
            shared.drained.notify_waiters();
        }
    }
}

/// One operation on the pool: its lock, and the effects to run once the lock is released.
/// Dropping it releases the lock, then runs the effects. An operation returns its result while
/// the `Op` is alive, so the result is built straight in the caller's place: kept in a local
/// across `Effects::run` and then copied, it was re-read right after being stored (a stalled
/// load on every checkout), as was the `Effects` moved into `run`.
struct Op<'a, K, C>
where
    K: Hash + Eq + Clone + fmt::Debug,
{
    shared: &'a Shared<K, C>,
    inner: Option<MutexGuard<'a, Inner<K, C>>>,
    /// A wait cell made before locking, for a checkout likely to queue (dropped, if unused,
    /// after the lock is released).
    spare: Spare<K, C>,
    /// Not dropped in place: `Drop` runs it, or, when it holds nothing, leaves it (its lists
    /// never allocated), which spares the drop glue's call.
    fx: ManuallyDrop<Effects<K, C>>,
}

/// A wait cell made ahead, if any.
type Spare<K, C> = Option<Arc<WaitCell<K, C>>>;

impl<K, C> Op<'_, K, C>
where
    K: Hash + Eq + Clone + fmt::Debug,
{
    fn checkout(&mut self, key: &K, now: Instant) -> Result<Checkout<K, C>, Refused> {
        let inner = self.inner.as_mut().expect("locked");
        inner.checkout(key, now, &self.shared.config, &mut self.fx, &mut self.spare)
    }

    fn give_back(&mut self, key: &K, conn: C, meta: Meta, now: Instant) {
        let inner = self.inner.as_mut().expect("locked");
        inner.give_back(key, conn, meta, now, &self.shared.config, &mut self.fx);
    }
}

impl<K, C> Drop for Op<'_, K, C>
where
    K: Hash + Eq + Clone + fmt::Debug,
{
    #[inline]
    fn drop(&mut self) {
        if let Some(inner) = &self.inner {
            let queued = inner.waiting > 0;
            if queued != self.shared.queued.load(Ordering::Relaxed) {
                self.shared.queued.store(queued, Ordering::Relaxed);
            }
        }
        self.inner = None;
        if self.fx.is_empty() {
            return;
        }
        std::mem::replace(&mut *self.fx, Effects::new()).run_all(self.shared);
    }
}

/// Clears the upkeep task's "running" flag when dropped.
///
/// Also wakes every queued waiter: if the task ended because its runtime shut down, the
/// waiters' deadlines have no keeper left, and each, polled again, starts a new upkeep task on
/// its own runtime (`restart_upkeep`).
struct RunningFlag<K, C> {
    running: Arc<CacheLines<AtomicBool>>,
    shared: Weak<Shared<K, C>>,
    /// Set once `spawn` has taken the task. A runtime already shut down drops the task inside
    /// `spawn`, on the caller's thread: waking the waiters then would wake the very waiter
    /// asking, which would ask again at once, for ever.
    spawned: Arc<AtomicBool>,
}

impl<K, C> Drop for RunningFlag<K, C> {
    fn drop(&mut self) {
        self.running.0.store(false, Ordering::Release);
        if !self.spawned.load(Ordering::Acquire) {
            return;
        }
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let wakers: Vec<Waker> = {
            let inner = shared.inner.0.lock().unwrap_or_else(|e| e.into_inner());
            inner
                .keys
                .values()
                .flat_map(|ks| ks.queue.iter())
                .filter_map(|&(idx, _)| {
                    let cell = inner.slots[idx].cell.as_ref()?;
                    let waker = cell.lock().waker.clone();
                    waker
                })
                .collect()
        };
        for w in wakers {
            w.wake();
        }
    }
}

/// A value aligned to two cache lines (the unit x86 prefetches in), so what it holds shares no
/// line with its neighbours.
#[repr(align(128))]
struct CacheLines<T>(T);

/// The state every service, layer and handle of one pool shares.
pub(crate) struct Shared<K, C> {
    pub(crate) config: Config,
    /// Whether the idle sweep runs (something expires), asked on every connect and return: a
    /// pool that times nothing starts no task and needs no timer.
    pub(crate) sweeps: bool,
    /// On cache lines of its own: both cores write it, while they only read `config`.
    inner: CacheLines<Mutex<Inner<K, C>>>,
    /// Whether checkouts were queueing at the end of the last checkout or return: a hint,
    /// read without the lock.
    queued: AtomicBool,
    drained: Notify,
    /// Wakes the upkeep task: a waiter with an earlier deadline than it sleeps for, or the
    /// pool is gone.
    upkeep: Arc<Notify>,
    /// Whether the upkeep task is alive (it clears this when it ends, including when its
    /// runtime shuts down, so the next user starts it again).
    upkeep_running: Arc<CacheLines<AtomicBool>>,
}

impl<K, C> Drop for Shared<K, C> {
    fn drop(&mut self) {
        // The upkeep task holds only a weak reference: let it see the pool is gone.
        self.upkeep.notify_one();
    }
}

/// The outcome of a checkout attempt.
pub(crate) enum Checkout<K, C> {
    /// An idle connection, now leased.
    Idle(C, Meta),
    /// A slot reserved for a new connection: connect.
    Connect,
    /// Queued: wait for a grant in this cell (slot index, sequence number). `true`: the
    /// upkeep task must be woken to watch this waiter's deadline.
    Wait(Arc<WaitCell<K, C>>, usize, u64, bool),
}

/// Why a checkout was refused at once.
pub(crate) enum Refused {
    Closed(PoolClosed),
    Full(PoolFull),
    Backoff(ConnectBackoff),
}

impl<K, C> fmt::Debug for Shared<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<K, C> Shared<K, C>
where
    K: Hash + Eq + Clone + fmt::Debug,
{
    pub(crate) fn new(config: Config) -> Self {
        Shared {
            sweeps: config.sweep_interval().is_some(),
            config,
            inner: CacheLines(Mutex::new(Inner {
                keys: HashMap::default(),
                live: 0,
                waiting: 0,
                closed: false,
                slots: Vec::new(),
                free_slots: Vec::new(),
                seq: 0,
                totals: Counters::default(),
                rng: 0x9E37_79B9_7F4A_7C15,
                upkeep_at: None,
                trim_at: MIN_TRIM,
            })),
            queued: AtomicBool::new(false),
            drained: Notify::new(),
            upkeep: Arc::new(Notify::new()),
            upkeep_running: Arc::new(CacheLines(AtomicBool::new(false))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<K, C>> {
        // Bookkeeping is finished before any call that could panic, so a poisoned lock still
        // holds consistent counts.
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the pool for one operation; see [`Op`].
    fn op(&self, spare: Spare<K, C>) -> Op<'_, K, C> {
        Op {
            shared: self,
            inner: Some(self.lock()),
            spare,
            fx: ManuallyDrop::new(Effects::new()),
        }
    }

    /// Takes an idle connection of `key`, reserves a slot to connect, or queues.
    pub(crate) fn checkout(&self, key: &K, now: Instant) -> Result<Checkout<K, C>, Refused> {
        // Checkouts were queueing a moment ago: this one likely will, and its cell is made
        // now rather than inside the lock.
        let spare = self
            .queued
            .load(Ordering::Relaxed)
            .then(|| Arc::new(WaitCell::new(key.clone())));
        self.op(spare).checkout(key, now)
    }

    /// A waiter gave up (dropped): leave the queue, or pass on what it was handed, or (its
    /// grant not delivered yet) leave word for the pool to take the grant back on arrival.
    pub(crate) fn cancel_wait(&self, cell: &Arc<WaitCell<K, C>>, idx: usize, seq: u64) {
        let mut fx = Effects::new();
        {
            let mut inner = self.lock();
            let mut cell_state = cell.lock();
            match std::mem::replace(&mut cell_state.state, WaitState::Vacant) {
                WaitState::Waiting => {
                    // Still queued while the slot holds this very cell.
                    let queued = inner.slots[idx]
                        .cell
                        .as_ref()
                        .is_some_and(|c| Arc::ptr_eq(c, cell));
                    if queued {
                        debug_assert_eq!(inner.slots[idx].seq, seq);
                        drop(cell_state);
                        inner.slots[idx].cell = None;
                        inner.waiting -= 1;
                        inner.free_slots.push(idx);
                        if let Some(ks) = inner.keys.get_mut(&cell.key) {
                            let pos = ks.queue.iter().position(|&(i, s)| i == idx && s == seq);
                            if let Some(pos) = pos {
                                ks.queue.remove(pos);
                            }
                        }
                    } else {
                        // Taken off the queue; the grant is on its way.
                        cell_state.state = WaitState::Abandoned;
                    }
                }
                WaitState::Granted(grant) => {
                    drop(cell_state);
                    inner.take_back(&cell.key, grant, Instant::now(), &self.config, &mut fx);
                }
                WaitState::Abandoned | WaitState::Vacant => {}
            }
        }
        fx.run(self);
    }

    /// A reserved slot produced a connection: count it as opened and leased.
    pub(crate) fn connected(&self, key: &K) -> Meta {
        let now = Instant::now();
        let meta = {
            let mut inner = self.lock();
            let jitter = inner.jitter(self.config.lifetime_jitter);
            let inner = &mut *inner;
            inner.totals.opened += 1;
            let ks = inner
                .keys
                .get_mut(key)
                .expect("a connecting key has an entry");
            ks.connecting -= 1;
            ks.leased += 1;
            ks.counters.opened += 1;
            Meta {
                expires: self.config.max_lifetime.map(|l| now + (l - jitter)),
            }
        };
        tracing::debug!(key = ?key, "pool: connection opened");
        meta
    }

    /// A reserved slot failed to connect: free it and count the failure.
    pub(crate) fn connect_failed(&self, key: &K, error: &dyn fmt::Display) {
        let now = Instant::now();
        let mut fx = Effects::new();
        {
            let mut inner = self.lock();
            inner.count_failure(key, now, error, self.config.backoff);
            inner.release_slot(key, &self.config, &mut fx, |ks| ks.connecting -= 1);
        }
        tracing::debug!(key = ?key, %error, "pool: connect failed");
        fx.run(self);
    }

    /// A new connection failed, or timed out, before it was first ready: a failed connect
    /// (counted, and towards the backoff), and a connection closed.
    pub(crate) fn fresh_failed(&self, key: &K, conn: C, error: &dyn fmt::Display) {
        close_conn(conn);
        let now = Instant::now();
        let mut fx = Effects::new();
        {
            let mut inner = self.lock();
            inner.totals.closed += 1;
            if let Some(ks) = inner.keys.get_mut(key) {
                ks.counters.closed += 1;
            }
            inner.count_failure(key, now, error, self.config.backoff);
            inner.release_slot(key, &self.config, &mut fx, |ks| ks.leased -= 1);
        }
        tracing::debug!(key = ?key, %error, "pool: new connection failed before it was ready");
        fx.run(self);
    }

    /// A new connection of `key` is ready: the run of connect failures is over.
    pub(crate) fn first_ready(&self, key: &K) {
        if self.config.backoff.is_none() {
            return;
        }
        if let Some(ks) = self.lock().keys.get_mut(key) {
            ks.failures = 0;
            ks.last_failure = None;
            ks.backoff_until = None;
        }
    }

    /// Whether a slot reserved earlier may still be used to dial `key` now: not once the pool
    /// is closed, nor while the key is in backoff. The caller frees the slot on a refusal.
    pub(crate) fn may_connect(&self, key: &K) -> Result<(), Refused> {
        let inner = self.lock();
        if inner.closed {
            return Err(Refused::Closed(PoolClosed));
        }
        if let Some(ks) = inner.keys.get(key) {
            if let Some(until) = ks.backoff_until {
                let now = Instant::now();
                if now < until {
                    return Err(Refused::Backoff(ConnectBackoff::new(
                        until - now,
                        ks.failures,
                        ks.last_error.clone(),
                    )));
                }
            }
        }
        Ok(())
    }

    /// A leased connection turned out broken before its request was sent, or past its
    /// lifetime (`past_lifetime`: counted as evicted), and is already dropped: its slot serves the
    /// same checkout, which keeps its turn — with another idle connection of the key if there
    /// is one, else by connecting.
    pub(crate) fn replace_unused(
        &self,
        key: &K,
        now: Instant,
        past_lifetime: bool,
    ) -> Checkout<K, C> {
        let mut fx = Effects::new();
        let next = {
            let mut inner = self.lock();
            let inner = &mut *inner;
            inner.totals.closed += 1;
            if past_lifetime {
                inner.totals.evicted += 1;
            }
            // It served nothing: its checkout does not count as a reuse.
            inner.totals.reused = inner.totals.reused.saturating_sub(1);
            let ks = inner
                .keys
                .get_mut(key)
                .expect("a leased connection's key has an entry");
            ks.counters.closed += 1;
            if past_lifetime {
                ks.counters.evicted += 1;
            }
            ks.counters.reused = ks.counters.reused.saturating_sub(1);
            ks.leased -= 1;
            let mut next = None;
            while let Some(idle) = ks.idle.pop_back() {
                if expired(&idle.meta, Some(idle.since), now, self.config.idle_timeout) {
                    ks.counters.closed += 1;
                    ks.counters.evicted += 1;
                    inner.totals.closed += 1;
                    inner.totals.evicted += 1;
                    ks.closing += 1;
                    fx.close(key, idle.conn);
                    continue;
                }
                ks.leased += 1;
                ks.counters.reused += 1;
                inner.totals.reused += 1;
                next = Some(Checkout::Idle(idle.conn, idle.meta));
                break;
            }
            match next {
                Some(next) => {
                    // The idle connection brings its own slot: the closed one's is free
                    // (`release_slot` with the key's counts already adjusted above).
                    inner.release_slot(key, &self.config, &mut fx, |_| {});
                    next
                }
                None => {
                    ks.connecting += 1;
                    Checkout::Connect
                }
            }
        };
        fx.run(self);
        next
    }

    /// A reserved slot was given up before it connected (the checkout was dropped).
    pub(crate) fn connect_abandoned(&self, key: &K) {
        let mut fx = Effects::new();
        self.lock()
            .release_slot(key, &self.config, &mut fx, |ks| ks.connecting -= 1);
        fx.run(self);
    }

    /// A leased connection is ready for another request: hand it to the oldest waiter, or
    /// keep it idle (closing it if it expired, the pool closed, or the key has enough idle).
    pub(crate) fn give_back(&self, key: &K, conn: C, meta: Meta, now: Instant) {
        self.op(None).give_back(key, conn, meta, now);
    }

    /// A leased connection is broken, or its request was abandoned: close it, then free its
    /// slot.
    pub(crate) fn discard(&self, key: &K, conn: C) {
        close_conn(conn);
        let mut fx = Effects::new();
        {
            let mut inner = self.lock();
            inner.totals.closed += 1;
            if let Some(ks) = inner.keys.get_mut(key) {
                ks.counters.closed += 1;
            }
            inner.release_slot(key, &self.config, &mut fx, |ks| ks.leased -= 1);
        }
        tracing::debug!(key = ?key, "pool: connection discarded");
        fx.run(self);
    }

    /// One round of upkeep: when `sweep` is set, close expired idle connections and forget
    /// unused keys; always, fail the waiters whose checkout timeout has passed. Returns the
    /// earliest deadline of the waiters left, and whether the pool is closed and empty.
    fn upkeep(&self, now: Instant, sweep: bool) -> (Option<Instant>, bool) {
        let mut fx = Effects::new();
        let (next, finished, evicted) = {
            let mut inner = self.lock();
            let evicted = if sweep {
                inner.sweep(now, &self.config, &mut fx)
            } else {
                0
            };
            let next = inner.expire_waiters(now, &mut fx);
            inner.upkeep_at = next;
            (next, inner.closed && inner.live == 0, evicted)
        };
        if evicted > 0 {
            tracing::debug!(evicted, "pool: idle sweep");
        }
        fx.run(self);
        if sweep {
            // After the closes above have freed their slots: forget keys with nothing left.
            let backoff = self.config.backoff;
            self.lock().keys.retain(|_, ks| !ks.is_unused(now, backoff));
        }
        (next, finished)
    }

    /// Tells the upkeep task to look again (a waiter with an earlier deadline arrived).
    pub(crate) fn wake_upkeep(&self) {
        self.upkeep.notify_one();
    }

    /// Starts the upkeep task once, on the current tokio runtime: the idle sweep, and the
    /// checkout timeouts of all waiters (one timer for the pool instead of one per waiter).
    #[inline]
    pub(crate) fn start_upkeep(self: &Arc<Self>)
    where
        K: Send + Sync + 'static,
        C: Send + 'static,
    {
        if !self.upkeep_running.0.load(Ordering::Acquire) {
            self.spawn_upkeep();
        }
    }

    #[inline(never)]
    fn spawn_upkeep(self: &Arc<Self>)
    where
        K: Send + Sync + 'static,
        C: Send + 'static,
    {
        if self.upkeep_running.0.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.upkeep_running.0.store(false, Ordering::Release);
            tracing::warn!(
                "pool: no tokio runtime; expired connections are closed only on checkout and \
                 return, and waiters do not time out"
            );
            return;
        };
        let every = self.config.sweep_interval();
        let notify = self.upkeep.clone();
        let weak: Weak<Self> = Arc::downgrade(self);
        let spawned = Arc::new(AtomicBool::new(false));
        let running = RunningFlag {
            running: self.upkeep_running.clone(),
            shared: Arc::downgrade(self),
            spawned: spawned.clone(),
        };
        let mut next_sweep = every.map(|e| Instant::now() + e);
        runtime.spawn(async move {
            // Cleared however the task ends: returning, or dropped with its runtime.
            let _running = running;
            let mut timers = true;
            loop {
                let notified = notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let next_deadline = {
                    let Some(shared) = weak.upgrade() else { return };
                    let now = Instant::now();
                    let sweep = next_sweep.is_some_and(|at| at <= now);
                    if sweep {
                        next_sweep = every.map(|e| now + e);
                    }
                    let (next, finished) = shared.upkeep(now, sweep);
                    if finished {
                        return;
                    }
                    next
                };
                let wake_at = match (next_sweep, next_deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                // A runtime built without timers cannot keep deadlines: making the sleep
                // panics. Ending the task then would have its waiters restart it at once, for
                // ever; it says so once and goes on waking only when told.
                let sleep = match wake_at {
                    Some(at) if timers => {
                        let made = std::panic::catch_unwind(|| tokio::time::sleep_until(at));
                        if made.is_err() {
                            timers = false;
                            tracing::error!(
                                "pool: the runtime has no timers (`enable_time`): checkout \
                                 timeouts and the idle sweep do not run"
                            );
                        }
                        made.ok()
                    }
                    _ => None,
                };
                match sleep {
                    Some(sleep) => {
                        tokio::select! {
                            () = &mut notified => {}
                            () = sleep => {}
                        }
                    }
                    None => notified.await,
                }
            }
        });
        spawned.store(true, Ordering::Release);
    }

    /// Starts the upkeep task if it is not running (the runtime it ran on shut down) and, if
    /// it did, runs one round here, so a waiter already past its deadline is failed now rather
    /// than when the new task first runs. True when it started one.
    pub(crate) fn restart_upkeep(self: &Arc<Self>) -> bool
    where
        K: Send + Sync + 'static,
        C: Send + 'static,
    {
        if self.upkeep_running.0.load(Ordering::Acquire) {
            return false;
        }
        self.start_upkeep();
        if !self.upkeep_running.0.load(Ordering::Acquire) {
            // No runtime here: nothing keeps deadlines (`start_upkeep` said so).
            return false;
        }
        self.upkeep(Instant::now(), false);
        true
    }

    /// Closes the pool: refuses new checkouts, fails waiters, closes idle connections.
    /// Returns how many idle connections were closed now.
    pub(crate) fn close(&self) -> usize {
        let mut fx = Effects::new();
        let closed_idle = {
            let mut inner = self.lock();
            if inner.closed {
                0
            } else {
                inner.closed = true;
                inner.close_all(&mut fx)
            }
        };
        fx.run(self);
        closed_idle
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    pub(crate) fn live(&self) -> usize {
        self.lock().live
    }

    /// Waits until the pool is empty or the deadline passes (after `close`).
    pub(crate) async fn wait_drained(&self, deadline: Instant) -> bool {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.live() == 0 {
                return true;
            }
            tokio::select! {
                biased;
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => return self.live() == 0,
            }
        }
    }

    pub(crate) fn close_report(&self, closed_idle: usize, elapsed: Duration) -> CloseReport<K> {
        let inner = self.lock();
        let mut still_leased: Vec<(K, usize)> = inner
            .keys
            .iter()
            .filter(|(_, ks)| ks.leased + ks.connecting > 0)
            .map(|(k, ks)| (k.clone(), ks.leased + ks.connecting))
            .collect();
        still_leased.sort_by_key(|b| std::cmp::Reverse(b.1));
        CloseReport {
            elapsed,
            closed_idle,
            still_leased,
            drained: inner.live == 0,
        }
    }

    pub(crate) fn stats(&self) -> PoolStats<K> {
        let inner = self.lock();
        let mut keys: Vec<(K, KeyStats)> = inner
            .keys
            .iter()
            .map(|(k, ks)| (k.clone(), key_stats(ks)))
            .collect();
        keys.sort_by(|a, b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
        let mut total = KeyStats::from_counters(
            inner.totals.opened,
            inner.totals.reused,
            inner.totals.closed,
            inner.totals.evicted,
            inner.totals.failed,
        );
        for (_, ks) in inner.keys.iter() {
            total.idle += ks.idle.len();
            total.leased += ks.leased;
            total.connecting += ks.connecting;
            total.waiters += ks.queue.len();
        }
        PoolStats {
            total,
            keys,
            closed: inner.closed,
        }
    }

    pub(crate) fn key_stats(&self, key: &K) -> Option<KeyStats> {
        self.lock().keys.get(key).map(key_stats)
    }
}

/// Drops a connection the pool closes. A panic in its `Drop` is caught and reported (a
/// `tracing` error; the panic hook has printed it too), not passed on: the bookkeeping that
/// follows — its slot, and the rest of the same batch of effects, such as grants to waiters
/// already taken off their queues — must still happen, and the caller, a checkout or return
/// of some other request, has nothing to do with that connection.
pub(crate) fn close_conn<C>(conn: C) {
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(conn)));
    if let Err(panic) = dropped {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(not a string)".to_owned());
        tracing::error!(panic = %message, "pool: a connection panicked while being closed");
    }
}

/// Assigns `grant` to the waiter in slot `idx` (already off its queue) and frees the slot:
/// the grant is written into the waiter's cell once the lock is released (see `Effects`).
fn grant<K: Hash + Eq + Clone + fmt::Debug, C>(
    slots: &mut [WaitSlot<K, C>],
    free_slots: &mut Vec<usize>,
    idx: usize,
    grant: Grant<C>,
    fx: &mut Effects<K, C>,
) {
    let cell = slots[idx]
        .cell
        .take()
        .expect("a queued waiter has its cell");
    fx.deliver(cell, grant);
    free_slots.push(idx);
}

/// Closes the idle connection that has waited longest, over all keys, to make room.
fn evict_oldest_idle<K: Hash + Eq + Clone + fmt::Debug, C>(
    keys: &mut HashMap<K, KeyState<C>, foldhash::fast::RandomState>,
    totals: &mut Counters,
    fx: &mut Effects<K, C>,
) -> bool {
    let oldest = keys
        .iter()
        .filter_map(|(k, ks)| ks.idle.front().map(|i| (i.since, k)))
        .min_by_key(|(since, _)| *since)
        .map(|(_, k)| k.clone());
    let Some(k) = oldest else { return false };
    let ks = keys.get_mut(&k).expect("present");
    let idle = ks.idle.pop_front().expect("has an idle connection");
    ks.counters.closed += 1;
    ks.counters.evicted += 1;
    totals.closed += 1;
    totals.evicted += 1;
    ks.closing += 1;
    fx.close(&k, idle.conn);
    tracing::debug!(key = ?k, "pool: idle connection closed to make room for another key");
    true
}

fn key_stats<C>(ks: &KeyState<C>) -> KeyStats {
    let c = ks.counters;
    let mut s = KeyStats::from_counters(c.opened, c.reused, c.closed, c.evicted, c.failed);
    s.idle = ks.idle.len();
    s.leased = ks.leased;
    s.connecting = ks.connecting;
    s.waiters = ks.queue.len();
    s
}

#[inline]
fn expired(
    meta: &Meta,
    since: Option<Instant>,
    now: Instant,
    idle_timeout: Option<Duration>,
) -> bool {
    if meta.expires.is_some_and(|at| now >= at) {
        return true;
    }
    match (since, idle_timeout) {
        (Some(since), Some(timeout)) => now.saturating_duration_since(since) >= timeout,
        _ => false,
    }
}

impl<K, C> Inner<K, C>
where
    K: Hash + Eq + Clone + fmt::Debug,
{
    fn checkout(
        &mut self,
        key: &K,
        now: Instant,
        config: &Config,
        fx: &mut Effects<K, C>,
        spare: &mut Spare<K, C>,
    ) -> Result<Checkout<K, C>, Refused> {
        if self.closed {
            return Err(Refused::Closed(PoolClosed));
        }
        let mut ks = match self.keys.get_mut(key) {
            Some(ks) => ks,
            None => {
                self.forget_unused_keys(now, config);
                self.keys.entry(key.clone()).or_insert_with(KeyState::new)
            }
        };

        // The most recently returned idle connection that has not expired.
        let mut found = None;
        // An expired one closed here frees its slot as soon as this call's effects run: room
        // for this checkout, which is not refused as if the queue were full.
        let mut room_made = false;
        while let Some(idle) = ks.idle.pop_back() {
            if expired(&idle.meta, Some(idle.since), now, config.idle_timeout) {
                room_made = true;
                ks.counters.closed += 1;
                ks.counters.evicted += 1;
                self.totals.closed += 1;
                self.totals.evicted += 1;
                ks.closing += 1;
                fx.close(key, idle.conn);
                tracing::debug!(key = ?key, "pool: expired idle connection closed at checkout");
                continue;
            }
            found = Some(idle);
            break;
        }
        if let Some(idle) = found {
            ks.leased += 1;
            ks.counters.reused += 1;
            self.totals.reused += 1;
            tracing::trace!(key = ?key, "pool: connection reused");
            return Ok(Checkout::Idle(idle.conn, idle.meta));
        }

        // First come, first served: behind waiters of the same key, a new arrival waits.
        if ks.queue.is_empty() {
            if let Some(until) = ks.backoff_until {
                if now < until {
                    return Err(Refused::Backoff(ConnectBackoff::new(
                        until - now,
                        ks.failures,
                        ks.last_error.clone(),
                    )));
                }
            }
            if ks.live() < config.max_per_key {
                if self.live < config.max_total {
                    ks.connecting += 1;
                    self.live += 1;
                    return Ok(Checkout::Connect);
                }
                // The total is reached: close the idle connection of any key that has waited
                // longest; its slot comes to the oldest waiter once it is closed.
                room_made |= evict_oldest_idle(&mut self.keys, &mut self.totals, fx);
                ks = self.keys.get_mut(key).expect("present");
            }
        }
        if self.waiting >= config.max_waiters && !room_made {
            return Err(Refused::Full(PoolFull::new(config.max_waiters)));
        }
        let seq = self.seq;
        self.seq += 1;
        let deadline = config.checkout_timeout.map(|t| now + t);
        let cell = spare
            .take()
            .unwrap_or_else(|| Arc::new(WaitCell::new(key.clone())));
        let slot = WaitSlot {
            seq,
            deadline,
            cell: Some(cell.clone()),
        };
        let idx = match self.free_slots.pop() {
            Some(idx) => {
                self.slots[idx] = slot;
                idx
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        self.waiting += 1;
        ks.queue.push_back((idx, seq));
        // Waiters share one timeout, so a new one's deadline is the latest: the upkeep task
        // needs waking only when it is not already watching an earlier one.
        let wake_upkeep = match (deadline, self.upkeep_at) {
            (Some(d), Some(at)) => d < at,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if wake_upkeep {
            self.upkeep_at = deadline;
        }
        Ok(Checkout::Wait(cell, idx, seq, wake_upkeep))
    }

    /// A grant its waiter will never use (the waiter left): a connection goes back, not
    /// counted as a reuse; a reserved slot is freed.
    fn take_back(
        &mut self,
        key: &K,
        grant: Grant<C>,
        now: Instant,
        config: &Config,
        fx: &mut Effects<K, C>,
    ) {
        match grant {
            Grant::Conn(conn, meta) => {
                self.totals.reused = self.totals.reused.saturating_sub(1);
                if let Some(ks) = self.keys.get_mut(key) {
                    ks.counters.reused = ks.counters.reused.saturating_sub(1);
                }
                self.give_back(key, conn, meta, now, config, fx);
            }
            Grant::Connect => self.release_slot(key, config, fx, |ks| ks.connecting -= 1),
            Grant::Closed | Grant::TimedOut => {}
        }
    }

    /// Before a new key is added: once the map has doubled since it was last trimmed, forget
    /// the keys with nothing left (as the sweep does). Amortized over the insertions, this
    /// keeps the map within about twice the keys in use even when nothing expires and no sweep
    /// runs.
    fn forget_unused_keys(&mut self, now: Instant, config: &Config) {
        if self.keys.len() < self.trim_at {
            return;
        }
        let before = self.keys.len();
        self.keys.retain(|_, ks| !ks.is_unused(now, config.backoff));
        self.trim_at = self.keys.len().saturating_mul(2).max(MIN_TRIM);
        tracing::debug!(
            forgotten = before - self.keys.len(),
            kept = self.keys.len(),
            "pool: keys with nothing left forgotten"
        );
    }

    /// One failed connect of `key`: counted, and towards its backoff.
    fn count_failure(
        &mut self,
        key: &K,
        now: Instant,
        error: &dyn fmt::Display,
        backoff: Option<Backoff>,
    ) {
        self.totals.failed += 1;
        if let Some(ks) = self.keys.get_mut(key) {
            ks.counters.failed += 1;
            if let Some(b) = backoff {
                ks.failures = ks.failures.saturating_add(1);
                ks.last_failure = Some(now);
                ks.last_error = error.to_string();
                if ks.failures >= b.after {
                    ks.backoff_until = Some(now + b.delay(ks.failures));
                }
            }
        }
    }

    /// A connection of `key` stops counting (`adjust` takes it off the key's counts): give the
    /// slot to a waiter.
    fn release_slot(
        &mut self,
        key: &K,
        config: &Config,
        fx: &mut Effects<K, C>,
        adjust: impl FnOnce(&mut KeyState<C>),
    ) {
        if let Some(ks) = self.keys.get_mut(key) {
            adjust(ks);
        }
        self.live -= 1;
        self.grant_free_slot(config, fx);
        if self.closed && self.live == 0 {
            fx.drained = true;
        }
    }

    /// One slot is free: the oldest waiter, over all keys, whose key has room gets it.
    fn grant_free_slot(&mut self, config: &Config, fx: &mut Effects<K, C>) {
        if self.waiting == 0 || self.live >= config.max_total {
            return;
        }
        let Some((_, target)) = self.oldest_waiter_with_room(config) else {
            return;
        };
        let ks = self.keys.get_mut(&target).expect("present");
        let (idx, _) = ks.queue.pop_front().expect("has a waiter");
        ks.connecting += 1;
        self.live += 1;
        self.waiting -= 1;
        grant(
            &mut self.slots,
            &mut self.free_slots,
            idx,
            Grant::Connect,
            fx,
        );
    }

    /// The oldest waiter whose key is below its limit: its sequence number and key.
    fn oldest_waiter_with_room(&self, config: &Config) -> Option<(u64, K)> {
        self.keys
            .iter()
            .filter(|(_, ks)| ks.live() < config.max_per_key)
            .filter_map(|(k, ks)| ks.queue.front().map(|&(_, seq)| (seq, k)))
            .min_by_key(|(seq, _)| *seq)
            .map(|(seq, k)| (seq, k.clone()))
    }

    fn give_back(
        &mut self,
        key: &K,
        conn: C,
        meta: Meta,
        now: Instant,
        config: &Config,
        fx: &mut Effects<K, C>,
    ) {
        let closed = self.closed;
        // An older waiter of another key, held back only by the total, comes first: this
        // connection is closed to make room for it. Only waiters of other keys can be such:
        // when every waiter is this key's (the common case under contention) the scan is
        // skipped.
        let older_elsewhere = self.waiting > 0 && self.live >= config.max_total && {
            let own = self.keys.get(key).map(|ks| &ks.queue);
            let own_front = own.and_then(|q| q.front()).map(|&(_, s)| s);
            self.waiting > own.map_or(0, VecDeque::len)
                && self
                    .oldest_waiter_with_room(config)
                    .is_some_and(|(seq, _)| own_front.map_or(true, |own| seq < own))
        };
        let Some(ks) = self.keys.get_mut(key) else {
            debug_assert!(false, "a leased connection's key has an entry");
            return;
        };
        let expired_now = expired(&meta, None, now, None);
        if closed || expired_now || older_elsewhere {
            ks.counters.closed += 1;
            self.totals.closed += 1;
            if !closed {
                ks.counters.evicted += 1;
                self.totals.evicted += 1;
            }
            if expired_now && !closed {
                tracing::debug!(key = ?key, "pool: connection past its lifetime closed on return");
            }
            ks.leased -= 1;
            ks.closing += 1;
            fx.close(key, conn);
            return;
        }
        // Straight to the oldest waiter of this key: it stays leased.
        if let Some((idx, _)) = ks.queue.pop_front() {
            ks.counters.reused += 1;
            self.totals.reused += 1;
            self.waiting -= 1;
            grant(
                &mut self.slots,
                &mut self.free_slots,
                idx,
                Grant::Conn(conn, meta),
                fx,
            );
            return;
        }
        ks.leased -= 1;
        if ks.idle.len() >= config.max_idle_per_key {
            ks.counters.closed += 1;
            ks.counters.evicted += 1;
            self.totals.closed += 1;
            self.totals.evicted += 1;
            ks.closing += 1;
            fx.close(key, conn);
            return;
        }
        ks.idle.push_back(Idle {
            conn,
            meta,
            since: now,
        });
    }

    fn sweep(&mut self, now: Instant, config: &Config, fx: &mut Effects<K, C>) -> usize {
        let mut evicted = 0usize;
        for (key, ks) in self.keys.iter_mut() {
            let before = ks.idle.len();
            let mut kept = VecDeque::with_capacity(before);
            for idle in ks.idle.drain(..) {
                if expired(&idle.meta, Some(idle.since), now, config.idle_timeout) {
                    fx.close(key, idle.conn);
                } else {
                    kept.push_back(idle);
                }
            }
            ks.idle = kept;
            let n = before - ks.idle.len();
            ks.closing += n;
            ks.counters.closed += n as u64;
            ks.counters.evicted += n as u64;
            evicted += n;
        }
        self.totals.closed += evicted as u64;
        self.totals.evicted += evicted as u64;
        evicted
    }

    /// Fails every waiter whose deadline has passed; returns the earliest deadline left.
    fn expire_waiters(&mut self, now: Instant, fx: &mut Effects<K, C>) -> Option<Instant> {
        if self.waiting == 0 {
            return None;
        }
        let mut earliest: Option<Instant> = None;
        for ks in self.keys.values_mut() {
            // Each key's queue is in arrival order, and every waiter has the same timeout:
            // deadlines rise from the front.
            while let Some(&(idx, _)) = ks.queue.front() {
                match self.slots[idx].deadline {
                    Some(d) if d <= now => {
                        ks.queue.pop_front();
                        self.waiting -= 1;
                        grant(
                            &mut self.slots,
                            &mut self.free_slots,
                            idx,
                            Grant::TimedOut,
                            fx,
                        );
                    }
                    Some(d) => {
                        earliest = Some(earliest.map_or(d, |e| e.min(d)));
                        break;
                    }
                    None => break,
                }
            }
        }
        earliest
    }

    fn close_all(&mut self, fx: &mut Effects<K, C>) -> usize {
        let mut closed_idle = 0;
        for (key, ks) in self.keys.iter_mut() {
            let n = ks.idle.len();
            for idle in ks.idle.drain(..) {
                fx.close(key, idle.conn);
            }
            ks.closing += n;
            ks.counters.closed += n as u64;
            closed_idle += n;
            for (idx, _) in ks.queue.drain(..) {
                grant(
                    &mut self.slots,
                    &mut self.free_slots,
                    idx,
                    Grant::Closed,
                    fx,
                );
            }
        }
        self.waiting = 0;
        self.totals.closed += closed_idle as u64;
        if self.live == 0 {
            fx.drained = true;
        }
        tracing::debug!(closed_idle, still_open = self.live, "pool: closed");
        closed_idle
    }

    /// A random part of `jitter` (splitmix64 over a counter: no dependency, no lock beyond the
    /// one held).
    fn jitter(&mut self, jitter: Duration) -> Duration {
        if jitter.is_zero() {
            return Duration::ZERO;
        }
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let nanos = jitter.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(z % (nanos + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_slot() -> Arc<Shared<&'static str, u32>> {
        let config = Config::builder()
            .max_connections_per_key(1)
            .max_connections(1)
            .build()
            .unwrap();
        Arc::new(Shared::new(config))
    }

    /// A connection leased, and a waiter queued behind it.
    fn leased_and_waiter(
        shared: &Shared<&'static str, u32>,
    ) -> (Meta, Arc<WaitCell<&'static str, u32>>, usize, u64) {
        let now = Instant::now();
        assert!(matches!(shared.checkout(&"k", now), Ok(Checkout::Connect)));
        let meta = shared.connected(&"k");
        let Ok(Checkout::Wait(cell, idx, seq, _)) = shared.checkout(&"k", now) else {
            panic!("the second checkout waits");
        };
        (meta, cell, idx, seq)
    }

    /// The window the hand-off leaves open: the waiter is off its queue (under the pool's
    /// lock), its grant not yet written (after the lock), and it leaves. The grant must come
    /// back to the pool instead of being lost with the cell.
    #[test]
    fn a_connection_handed_to_a_waiter_that_left_before_delivery_comes_back() {
        let shared = one_slot();
        let (meta, cell, idx, seq) = leased_and_waiter(&shared);
        let mut fx = Effects::new();
        shared
            .lock()
            .give_back(&"k", 7, meta, Instant::now(), &shared.config, &mut fx);
        assert_eq!(shared.stats().total.waiters, 0, "off the queue");
        shared.cancel_wait(&cell, idx, seq);
        drop(cell);
        fx.run(&shared);
        let t = shared.stats().total;
        assert_eq!((t.idle, t.leased, t.waiters), (1, 0, 0), "{t:?}");
        assert_eq!(t.reused, 0, "handed over but never used: {t:?}");
        // The connection is the one given back, and the next checkout gets it.
        match shared.checkout(&"k", Instant::now()) {
            Ok(Checkout::Idle(conn, _)) => assert_eq!(conn, 7),
            _ => panic!("the connection was idle"),
        }
    }

    /// The same for a slot: a waiter granted a connect that it left before receiving frees it.
    #[test]
    fn a_slot_granted_to_a_waiter_that_left_before_delivery_is_freed() {
        let shared = one_slot();
        let (_meta, cell, idx, seq) = leased_and_waiter(&shared);
        let mut fx = Effects::new();
        {
            let mut inner = shared.lock();
            inner.totals.closed += 1;
            inner.release_slot(&"k", &shared.config, &mut fx, |ks| ks.leased -= 1);
        }
        shared.cancel_wait(&cell, idx, seq);
        drop(cell);
        fx.run(&shared);
        let t = shared.stats().total;
        assert_eq!(
            (t.idle, t.leased, t.connecting, t.waiters),
            (0, 0, 0, 0),
            "{t:?}"
        );
        assert_eq!(shared.live(), 0);
        assert!(matches!(
            shared.checkout(&"k", Instant::now()),
            Ok(Checkout::Connect)
        ));
    }

    /// A slot granted to a waiter, the pool closed, the waiter gone, all before the delivery:
    /// the take-back frees the slot and the pool reports itself drained.
    #[tokio::test]
    async fn a_close_between_grant_and_delivery_then_the_waiter_leaving_drains() {
        let shared = one_slot();
        let (_meta, cell, idx, seq) = leased_and_waiter(&shared);
        let mut fx = Effects::new();
        {
            let mut inner = shared.lock();
            inner.totals.closed += 1;
            inner.release_slot(&"k", &shared.config, &mut fx, |ks| ks.leased -= 1);
        }
        assert_eq!(shared.close(), 0);
        let drained = shared.drained.notified();
        tokio::pin!(drained);
        drained.as_mut().enable();
        shared.cancel_wait(&cell, idx, seq);
        drop(cell);
        fx.run(&shared);
        let t = shared.stats().total;
        assert_eq!((t.leased, t.connecting, t.waiters), (0, 0, 0), "{t:?}");
        assert_eq!(shared.live(), 0);
        assert!(
            futures::poll!(drained.as_mut()).is_ready(),
            "close is told the pool is empty"
        );
    }

    /// A connection taken back from a waiter that left goes to a waiter that queued in the
    /// window, counted as one reuse.
    #[test]
    fn a_taken_back_connection_reaches_a_waiter_that_queued_meanwhile() {
        let shared = one_slot();
        let (meta, cell, idx, seq) = leased_and_waiter(&shared);
        let mut fx = Effects::new();
        shared
            .lock()
            .give_back(&"k", 7, meta, Instant::now(), &shared.config, &mut fx);
        shared.cancel_wait(&cell, idx, seq);
        let Ok(Checkout::Wait(cell2, _, _, _)) = shared.checkout(&"k", Instant::now()) else {
            panic!("the newcomer waits behind the connection in flight");
        };
        fx.run(&shared);
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        match cell2.poll(&mut cx) {
            Poll::Ready(Grant::Conn(7, _)) => {}
            _ => panic!("the newcomer got the connection"),
        }
        let t = shared.stats().total;
        assert_eq!(
            (t.leased, t.waiters, t.reused, t.idle),
            (1, 0, 1, 0),
            "{t:?}"
        );
    }

    /// A waiter that leaves after its grant arrived (the ordinary case) hands it back too.
    #[test]
    fn a_connection_delivered_to_a_waiter_that_then_left_comes_back() {
        let shared = one_slot();
        let (meta, cell, idx, seq) = leased_and_waiter(&shared);
        shared.give_back(&"k", 7, meta, Instant::now());
        shared.cancel_wait(&cell, idx, seq);
        let t = shared.stats().total;
        assert_eq!(
            (t.idle, t.leased, t.waiters, t.reused),
            (1, 0, 0, 0),
            "{t:?}"
        );
    }
}
