//! [`RateLimiter`]: one shared limit, its clock, and the queue of requests waiting for it.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::{Clock, Timebase};
use crate::error::{CheckNError, RateLimited};
use crate::gcra::{Deny, Gcra, Grant};
use crate::quota::Quota;

/// How much of a waiter's lateness is credited back to it.
///
/// tokio's timer fires at most once per millisecond tick, so a waiter is usually woken a little
/// after its slot. Charging it from the moment it woke would push every slot behind it later by
/// the same amount, and at one request per millisecond the rate would halve. Instead a waiter is
/// charged from its slot, up to this much in the past; the next waiter whose slot has already
/// passed is then admitted at once. The cost: in wait mode, up to `rate × 2 ms` requests may
/// pass closer together than the quota's spacing (never before their slots).
pub(crate) const LATE_WAKE_CREDIT: u64 = 2_000_000;

/// A rate limit that can be shared: by every service of a layer, by several layers, and by
/// code that checks it directly.
///
/// Cloning is cheap and every clone is the same limit. The handle answers how much burst is left
/// and when the next request conforms, and can change the quota while traffic flows.
///
/// Time is tokio's ([`tokio::time::Instant`]) unless another [`Clock`] is chosen with
/// [`with_clock`](Self::with_clock), so `tokio::time::pause()` drives every decision.
///
/// ```
/// use palisade_ratelimit::{Quota, RateLimiter};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let limiter = RateLimiter::new(Quota::per_second(10)?.burst(2)?);
/// assert!(limiter.check().is_ok());
/// assert!(limiter.check().is_ok());
/// let denied = limiter.check().unwrap_err();
/// assert_eq!(denied.retry_after(), std::time::Duration::from_millis(100));
/// assert_eq!(limiter.remaining_burst(), 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RateLimiter {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    time: Timebase,
    gcra: Gcra,
    quota: RwLock<Quota>,
    /// Number of queued waiters, read without the lock by the fast path.
    queued: AtomicUsize,
    waiters: Mutex<Waiters>,
}

#[derive(Default)]
struct Waiters {
    queue: VecDeque<Waiter>,
    /// Waiters admitted on their behalf, whose services have not come back for the token yet.
    granted: Vec<(u64, Grant)>,
    next_id: u64,
}

struct Waiter {
    id: u64,
    arrived: u64,
    waker: Option<Waker>,
}

/// What a waiter learns when it asks for its turn.
pub(crate) enum Turn {
    /// Admitted: it has left the queue holding this token.
    Admitted(Grant),
    /// Still queued; its slot is expected at this time (nanoseconds since the origin).
    SleepUntil(u64),
    /// Not known to the queue (cannot happen for a live waiter): start over.
    Gone,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The queue holds no invariant a panic in another holder could break half-way: every
    // critical section is a few pushes, pops and wakes.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RateLimiter {
    /// A new limit on tokio's clock, idle: the whole burst is available at once.
    pub fn new(quota: Quota) -> RateLimiter {
        RateLimiter::with_clock(quota, Clock::tokio())
    }

    /// A new limit on `clock`, idle. [`Clock::tsc`] makes each decision a few times cheaper;
    /// paused tokio time does not drive it.
    pub fn with_clock(quota: Quota, clock: Clock) -> RateLimiter {
        RateLimiter {
            shared: Arc::new(Shared {
                time: Timebase::new(clock),
                gcra: Gcra::new(&quota),
                quota: RwLock::new(quota),
                queued: AtomicUsize::new(0),
                waiters: Mutex::new(Waiters::default()),
            }),
        }
    }

    /// Admits one request now, or says how long until one would conform.
    ///
    /// Lock-free and allocation-free. It does not queue: a direct check may pass ahead of
    /// requests waiting in a wait-mode layer on the same limiter.
    ///
    /// # Errors
    ///
    /// [`RateLimited`] with the time until the next conforming instant.
    #[inline]
    pub fn check(&self) -> Result<(), RateLimited> {
        let now = self.shared.now();
        match self.shared.gcra.acquire(now, now, 1) {
            Ok(_) => Ok(()),
            Err(deny) => Err(self.shared.denied(deny, now)),
        }
    }

    /// Admits `n` requests at once, all or nothing.
    ///
    /// # Errors
    ///
    /// [`CheckNError::InsufficientCapacity`] when `n` exceeds the burst (it never could pass),
    /// [`CheckNError::RateLimited`] when it cannot pass now.
    pub fn check_n(&self, n: u32) -> Result<(), CheckNError> {
        if n == 0 {
            return Ok(());
        }
        let now = self.shared.now();
        match self.shared.gcra.acquire(now, now, n) {
            Ok(_) => Ok(()),
            Err(Deny::Insufficient) => Err(CheckNError::InsufficientCapacity {
                burst: self.quota().burst_size(),
            }),
            Err(deny) => Err(CheckNError::RateLimited(self.shared.denied(deny, now))),
        }
    }

    /// How many requests would pass right now if sent at once.
    pub fn remaining_burst(&self) -> u32 {
        self.shared.gcra.remaining(self.shared.now())
    }

    /// When the next request will conform (now, if one conforms now).
    pub fn next_conforming(&self) -> Instant {
        let now = self.shared.now();
        self.shared.instant(self.shared.gcra.earliest(now))
    }

    /// The quota in force.
    pub fn quota(&self) -> Quota {
        self.shared.quota()
    }

    /// Changes the quota while traffic flows, keeping what is owed measured in requests: a
    /// limiter two requests in debt is still two requests in debt under the new rate.
    ///
    /// Every service and handle of this limit sees the change at once: decisions made at the
    /// same moment wait the few instructions it takes, so none mixes the old state with the
    /// new quota. Waiters keep their places in the queue and are woken to recompute their
    /// slots. A [`defer_until`](Self::defer_until) still ahead stays in force.
    pub fn set_quota(&self, quota: Quota) {
        let mut q = self
            .shared
            .quota
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.shared.gcra.set_quota(&quota, self.shared.now());
        *q = quota;
        drop(q);
        tracing::debug!(%quota, "rate limit quota changed");
        self.shared.requeue_all();
    }

    /// Admits nothing before `until` — for an upstream that answered `429` or `503` with
    /// `Retry-After` — then resumes at the quota's rate, starting with a single request rather
    /// than a full burst. Never brings the next conforming time forward. Waiters keep their
    /// places and are woken to recompute their slots.
    pub fn defer_until(&self, until: Instant) {
        match self.shared.time.offset(until) {
            Ok(at) => self.shared.gcra.defer(at.min(1 << 62)),
            // Before this limit existed: it resumed at `until`, so only what has not been
            // earned back since is held.
            Err(early) => self.shared.gcra.defer_before(0, early),
        }
        tracing::debug!(?until, "rate limit deferred");
        self.shared.requeue_all();
    }

    /// The clock this limit reads.
    pub fn clock(&self) -> Clock {
        self.shared.time.clock()
    }

    /// How many requests are queued in wait-mode layers of this limit.
    pub fn waiting(&self) -> usize {
        self.shared.queued.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("quota", &self.quota())
            .field("remaining_burst", &self.remaining_burst())
            .field("waiting", &self.waiting())
            .finish()
    }
}

impl Shared {
    /// Nanoseconds since the origin, on the limit's clock.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.time.now()
    }

    /// The tokio instant of `at`, for tokio's timer.
    pub(crate) fn instant(&self, at: u64) -> Instant {
        self.time.instant(at)
    }

    pub(crate) fn quota(&self) -> Quota {
        *self.quota.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn denied(&self, deny: Deny, now: u64) -> RateLimited {
        let at = match deny {
            Deny::Until(at) => at,
            // Only `check_n` can ask for more than the burst; report a full interval.
            Deny::Insufficient => now + self.gcra.interval(),
        };
        RateLimited::new(Duration::from_nanos(at.saturating_sub(now)), self.quota())
    }

    /// Admission without queueing, when nobody waits.
    #[inline]
    pub(crate) fn try_acquire(&self, now: u64) -> Result<Grant, Deny> {
        self.gcra.acquire(now, now, 1)
    }

    /// Whether requests are queued (a new arrival must then queue behind them).
    #[inline]
    pub(crate) fn has_waiters(&self) -> bool {
        self.queued.load(Ordering::SeqCst) > 0
    }

    /// Where a request arriving now would be admitted, counting the waiters ahead of it.
    pub(crate) fn estimated_slot(&self, now: u64) -> u64 {
        let ahead = self.queued.load(Ordering::SeqCst) as u64;
        self.gcra
            .earliest(now)
            .saturating_add(ahead.saturating_mul(self.gcra.interval()))
    }

    /// Admits every waiter whose slot has come, on its behalf.
    pub(crate) fn admit_due(&self, now: u64) {
        let mut w = lock(&self.waiters);
        // Less than one interval of credit: this request, in reject mode or with `max_wait`,
        // decides right after, and must not find room left at `now` by a credited admission.
        let credit = LATE_WAKE_CREDIT.min(self.gcra.interval().saturating_sub(1));
        self.dispatch(&mut w, now, None, credit);
    }

    /// Joins the back of the queue.
    pub(crate) fn enqueue(&self, now: u64, waker: &Waker) -> u64 {
        let mut w = lock(&self.waiters);
        let id = w.next_id;
        w.next_id += 1;
        w.queue.push_back(Waiter {
            id,
            arrived: now,
            waker: Some(waker.clone()),
        });
        self.queued.store(w.queue.len(), Ordering::SeqCst);
        id
    }

    /// Admits, in order, every queued waiter whose slot has come, whoever is asking: a waiter
    /// whose task is not polled (its service parked) cannot hold up the ones behind it. Returns
    /// the slot of the new head, if any is left, and wakes it so that it sleeps until exactly
    /// then.
    fn dispatch(&self, w: &mut Waiters, now: u64, asking: Option<u64>, credit: u64) -> Option<u64> {
        let mut admitted = false;
        let next = loop {
            let Some(head) = w.queue.front() else {
                break None;
            };
            // A waiter the timer woke late is charged from up to `credit` back.
            // (`min`: a counter clock read on another core may put `arrived` a hair after now.)
            let base = head.arrived.max(now.saturating_sub(credit)).min(now);
            match self.gcra.acquire(now, base, 1) {
                Ok(grant) => {
                    let head = w.queue.pop_front().expect("front exists");
                    w.granted.push((head.id, grant));
                    if Some(head.id) != asking {
                        if let Some(waker) = head.waker {
                            waker.wake();
                        }
                    }
                    admitted = true;
                }
                Err(Deny::Until(at)) => break Some(at),
                Err(Deny::Insufficient) => break Some(now + self.gcra.interval()),
            }
        };
        self.queued.store(w.queue.len(), Ordering::SeqCst);
        if admitted {
            // The new head sleeps until its own slot, not the estimate it had.
            if let Some(head) = w.queue.front_mut() {
                if Some(head.id) != asking {
                    if let Some(waker) = head.waker.take() {
                        waker.wake();
                    }
                }
            }
        }
        next
    }

    /// The waiter `id` asks for its turn at `now`.
    pub(crate) fn turn(&self, id: u64, now: u64, waker: &Waker) -> Turn {
        let mut w = lock(&self.waiters);
        let next = self.dispatch(&mut w, now, Some(id), LATE_WAKE_CREDIT);
        if let Some(i) = w.granted.iter().position(|(g, _)| *g == id) {
            return Turn::Admitted(w.granted.swap_remove(i).1);
        }
        let Some(pos) = w.queue.iter().position(|e| e.id == id) else {
            return Turn::Gone;
        };
        set_waker(&mut w.queue[pos].waker, waker);
        // The head sleeps until its slot; the others until their estimated slots, in case the
        // head's task is never polled again.
        let slot = next.unwrap_or(now);
        Turn::SleepUntil(slot.saturating_add((pos as u64).saturating_mul(self.gcra.interval())))
    }

    /// A waiter leaves without taking its token: out of the queue (the one behind moves up), or
    /// its token, if one was already set aside for it, goes back.
    pub(crate) fn cancel(&self, id: u64) {
        let mut w = lock(&self.waiters);
        if let Some(pos) = w.queue.iter().position(|e| e.id == id) {
            w.queue.remove(pos);
            self.queued.store(w.queue.len(), Ordering::SeqCst);
            if pos == 0 {
                wake_front(&mut w.queue);
            }
        } else if let Some(i) = w.granted.iter().position(|(g, _)| *g == id) {
            let grant = w.granted.swap_remove(i).1;
            self.gcra.refund_with(grant, || self.now());
            let now = self.now();
            self.dispatch(&mut w, now, None, LATE_WAKE_CREDIT);
            wake_front(&mut w.queue);
        }
    }

    /// Gives back an admission that was never used, and lets the queue use it.
    pub(crate) fn refund(&self, grant: Grant) {
        self.gcra.refund_with(grant, || self.now());
        let now = self.now();
        // Always under the lock: a waiter that queued while we refunded either sees the
        // refunded state, or is in the queue for this dispatch to admit.
        let mut w = lock(&self.waiters);
        self.dispatch(&mut w, now, None, LATE_WAKE_CREDIT);
        wake_front(&mut w.queue);
    }

    /// After a quota change every estimate is off: admit what is due and wake everyone.
    fn requeue_all(&self) {
        let mut w = lock(&self.waiters);
        self.dispatch(&mut w, self.now(), None, LATE_WAKE_CREDIT);
        for e in w.queue.iter_mut() {
            if let Some(waker) = e.waker.take() {
                waker.wake();
            }
        }
    }
}

fn set_waker(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

fn wake_front(queue: &mut VecDeque<Waiter>) {
    if let Some(front) = queue.front_mut() {
        if let Some(w) = front.waker.take() {
            w.wake();
        }
    }
}
