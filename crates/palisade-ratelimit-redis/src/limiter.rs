//! [`RedisRateLimiter`]: one limit kept in Redis, the failure policy, and the lease pool.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use palisade_ratelimit::{KeyedRateLimiter, Quota, RateLimited, RateLimiter};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{Builder, FailurePolicy};
use crate::key::RedisKey;
use crate::script;

/// A rate limit whose state lives in Redis, shared by every process that uses the same key.
///
/// Each decision runs a Lua script ([GCRA](crate#the-algorithm) on Redis' own clock) atomically
/// on the limit's key; a process keeps no state of its own except, in lease mode, a few
/// tokens taken ahead. Cloning is cheap: every clone is the same limiter, with one connection
/// per tokio runtime (redis-rs' `ConnectionManager`, multiplexed and reconnecting) made on the
/// first decision there.
///
/// Every call to Redis is bounded by the [timeout](Builder::timeout); when Redis errors or is
/// slower, the [failure policy](FailurePolicy) decides. Decisions need a tokio runtime.
///
/// ```
/// use palisade_ratelimit::Quota;
/// use palisade_ratelimit_redis::{FailurePolicy, RedisRateLimiter};
/// use std::time::Duration;
///
/// let limiter = RedisRateLimiter::builder("redis://127.0.0.1:6379", Quota::per_second(200)?.burst(20)?)
///     .name("partner-api")
///     .timeout(Duration::from_millis(50))
///     .on_failure(FailurePolicy::Fallback { share: 0.25 })
///     .build()?;                      // checks the configuration; does not connect
/// assert_eq!(limiter.redis_key(), "palisade:ratelimit:partner-api");
/// // In an async context: `limiter.check().await` admits or says when to retry.
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct RedisRateLimiter {
    pub(crate) inner: Arc<Inner>,
}

/// What `build` hands to the limiter.
pub(crate) struct Parts {
    pub(crate) client: redis::Client,
    pub(crate) quota: Quota,
    pub(crate) key: String,
    pub(crate) interval_us: u64,
    pub(crate) tolerance_us: u64,
    pub(crate) timeout: Duration,
    pub(crate) probe_interval: Duration,
    pub(crate) policy: FailurePolicy,
    pub(crate) fallback: Option<Quota>,
    pub(crate) lease: Option<u32>,
}

pub(crate) struct Inner {
    client: redis::Client,
    manager_config: ConnectionManagerConfig,
    /// One per tokio runtime the limiter decides on, made on its first decision there:
    /// redis-rs spawns its connection's task on that runtime, and the task ends with it. (A
    /// limiter kept past its first runtime would otherwise talk through a dead task.) The 16
    /// most recently used runtimes are kept.
    managers: std::sync::Mutex<Vec<(tokio::runtime::Id, Result<ConnectionManager, String>)>>,
    acquire: Script,
    reserve: Script,
    refund: Script,
    quota: Quota,
    key: String,
    interval_us: u64,
    tolerance_us: u64,
    timeout: Duration,
    probe_interval: Duration,
    policy: FailurePolicy,
    fallback: Option<Fallback>,
    lease: Option<Lease>,
    origin: Instant,
    /// Nanoseconds since `origin` until which Redis is not asked; 0: Redis is believed up.
    /// One atomic holds both "degraded" (non-zero) and the time of the next probe, so that a
    /// failure and a recovery racing each other never leave the two out of step.
    down_until: AtomicU64,
    /// Wait mode on the own key: nanoseconds since `origin` of the next free local slot. A
    /// waiter takes the slot `max(next, earliest)` and moves `next` one interval past it, then
    /// sleeps until its slot holding no lock, and asks Redis then: so waiters are spaced in
    /// arrival order, and one that stops being polled costs the others nothing (its slot
    /// passes; the next asks at its own).
    next_slot: AtomicU64,
    queued: AtomicUsize,
    stats: Counters,
}

/// The local limiters of [`FailurePolicy::Fallback`].
struct Fallback {
    own: RateLimiter,
    keyed: KeyedRateLimiter<Vec<u8>>,
}

/// Lease mode: tokens taken from Redis ahead of use.
struct Lease {
    size: u32,
    /// Tokens held, never more than `size − 1`: that is what bounds the over-admission.
    pool: AtomicU32,
    /// The fetch in flight, if any: one per process, run in a spawned task (so that no
    /// caller's future holds anything while it runs), its whole result shared with every
    /// request that found the pool empty meanwhile.
    fetch: std::sync::Mutex<Option<watch::Receiver<Option<Fetched>>>>,
    /// Nanoseconds since `origin` until which Redis' last answer says nothing conforms (0:
    /// none): requests finding the pool empty are refused without a round trip until then.
    limited_until: AtomicU64,
    /// The TAT the last lease wrote: tokens that do not fit the pool are refunded against it.
    last_tat_us: AtomicU64,
}

/// What a lease fetch came to, shared with every request waiting for it.
#[derive(Clone)]
enum Fetched {
    /// Cells were granted: all but one went to the pool; the one is `spare`'s, for the first
    /// waiter to claim it.
    Granted(Arc<Spare>),
    /// Nothing conforms: `limited_until` says until when.
    Limited,
    /// Redis failed (marked down when the failure is Redis', not this key's): the policy
    /// decides.
    Failed,
}

/// The first token of a lease, for one of the requests that waited for it. If none claims it
/// (all gave up), it is given back when the last of them lets go of the result.
struct Spare {
    taken: AtomicBool,
    limiter: RedisRateLimiter,
}

impl Spare {
    fn claim(&self) -> bool {
        !self.taken.swap(true, Ordering::AcqRel)
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        if !*self.taken.get_mut() {
            self.limiter.give_back(Token::Lease);
        }
    }
}

impl Lease {
    fn take(&self) -> bool {
        self.pool
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1))
            .is_ok()
    }

    /// Puts the rest of a new lease in the pool; returns how many did not fit (a token given
    /// back meanwhile may have taken a place), to be refunded to Redis.
    fn fill(&self, extra: u32, tat_after_us: u64) -> u32 {
        self.last_tat_us.store(tat_after_us, Ordering::Release);
        let cap = self.size - 1;
        let before = self
            .pool
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_add(extra).min(cap))
            })
            .unwrap_or(cap);
        // In u64: `before + extra` can pass u32::MAX (a lease of u32::MAX with tokens given
        // back meanwhile); what does not fit is at most `extra`, so it fits a u32.
        let over = (u64::from(before) + u64::from(extra)).saturating_sub(u64::from(cap));
        u32::try_from(over).unwrap_or(extra)
    }

    /// A token taken from the pool and not used goes back to it, unless the pool is full: the
    /// pool never holds more than `size − 1`, which is what bounds the over-admission. Returns
    /// whether it fit; one that does not is refunded to Redis.
    fn put_back(&self) -> bool {
        let cap = self.size - 1;
        self.pool
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p < cap).then_some(p + 1)
            })
            .is_ok()
    }
}

#[derive(Default)]
struct Counters {
    redis: AtomicU64,
    lease: AtomicU64,
    policy: AtomicU64,
    failures: AtomicU64,
    refunds: AtomicU64,
    hinted: AtomicU64,
}

/// Counts of decisions by who made them, since the limiter was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Decisions made by the Lua script in Redis (admitted or limited).
    pub redis_decisions: u64,
    /// Requests admitted from this process' lease pool, without a round trip.
    pub lease_decisions: u64,
    /// Decisions made by the failure policy, Redis being unreachable, erroring or too slow.
    pub policy_decisions: u64,
    /// Calls to Redis that failed or timed out.
    pub failures: u64,
    /// Unused admissions given back to Redis (a readied service dropped before `call`).
    pub refunds: u64,
    /// Lease mode: requests refused without a round trip, Redis' last answer ("nothing
    /// conforms until X") still holding.
    pub hinted_refusals: u64,
}

/// Whose limit a decision is about.
pub(crate) enum Target {
    /// The limiter's own key: `check()` and the unkeyed layer.
    Own,
    /// A keyed limit: the full Redis key.
    Keyed(Vec<u8>),
}

/// A token held between `poll_ready` and `call`, and what giving it back means.
#[derive(Debug)]
pub(crate) enum Token {
    /// Taken by the script on the own key: a refund script can give it back.
    Redis { tat_after_us: u64, cells: u32 },
    /// One cell reserved by the script on a keyed limit (wait mode): given back by the refund
    /// script on that key if the wait is abandoned.
    Keyed { key: Vec<u8>, tat_after_us: u64 },
    /// From the lease pool (or the first of a new lease): goes back to the pool.
    Lease,
    /// Admitted by the failure policy, or on a keyed limit: nothing to give back.
    Untracked,
}

/// What one decision says.
pub(crate) enum Outcome {
    Admitted(Token),
    /// Not now; waiting `retry_after` may help.
    Limited(RateLimited),
    /// Refused by [`FailurePolicy::FailClosed`]: do not wait.
    Closed(RateLimited),
}

/// What a request ends with: admitted holding a token, or refused.
pub(crate) enum Verdict {
    Granted(Token),
    Refused(RateLimited),
}

/// Wait or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Sleep until Redis says the request conforms, unless that takes more than `max_wait`.
    Wait { max_wait: Option<Duration> },
    /// Refuse at once.
    Reject,
}

enum Failure {
    Redis(RedisError),
    Timeout,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Redis(e) => write!(f, "{e}"),
            Failure::Timeout => f.write_str("timed out"),
        }
    }
}

/// Counts a waiter in the local queue while it lives.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RedisRateLimiter {
    /// Starts configuring a limit of `quota` kept in the Redis at `url`
    /// (`redis://[user:password@]host[:port][/db]` or `redis+unix:///path`).
    pub fn builder(url: impl Into<String>, quota: Quota) -> Builder {
        Builder::new(url.into(), quota)
    }

    pub(crate) fn from_parts(p: Parts) -> RedisRateLimiter {
        let manager_config = ConnectionManagerConfig::new()
            // Each connection attempt, in redis-rs' background reconnect; requests never wait
            // on it longer than the timeout.
            .set_connection_timeout(Some(p.timeout.max(Duration::from_secs(1))))
            .set_response_timeout(Some(p.timeout))
            // Reconnect soon after Redis comes back: at most a second between attempts.
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(6);
        let fallback = p.fallback.map(|q| Fallback {
            own: RateLimiter::new(q),
            keyed: KeyedRateLimiter::new(q),
        });
        RedisRateLimiter {
            inner: Arc::new(Inner {
                client: p.client,
                manager_config,
                managers: std::sync::Mutex::new(Vec::new()),
                acquire: Script::new(script::ACQUIRE),
                reserve: Script::new(script::RESERVE),
                refund: Script::new(script::REFUND),
                quota: p.quota,
                key: p.key,
                interval_us: p.interval_us,
                tolerance_us: p.tolerance_us,
                timeout: p.timeout,
                probe_interval: p.probe_interval,
                policy: p.policy,
                fallback,
                lease: p.lease.map(|size| Lease {
                    size,
                    pool: AtomicU32::new(0),
                    fetch: std::sync::Mutex::new(None),
                    limited_until: AtomicU64::new(0),
                    last_tat_us: AtomicU64::new(0),
                }),
                origin: Instant::now(),
                down_until: AtomicU64::new(0),
                next_slot: AtomicU64::new(0),
                queued: AtomicUsize::new(0),
                stats: Counters::default(),
            }),
        }
    }

    /// Admits one request on the limiter's own key now, or says how long until one would
    /// conform (by the Redis clock). Does not wait and does not queue. In lease mode it spends
    /// a leased token when it has one, and asks Redis for a new lease when not.
    ///
    /// # Errors
    ///
    /// [`RateLimited`]: from Redis, with the time until a request conforms; from the failure
    /// policy ([`FailClosed`](FailurePolicy::FailClosed), or the local limiter of
    /// [`Fallback`](FailurePolicy::Fallback)) when Redis could not decide in time.
    pub async fn check(&self) -> Result<(), RateLimited> {
        match self.decide(&Target::Own).await {
            Outcome::Admitted(_) => Ok(()),
            Outcome::Limited(why) | Outcome::Closed(why) => Err(why),
        }
    }

    /// Admits one request on the limit of `key` (Redis key `PREFIX:NAME:KIND=KEY`, see
    /// [`RedisKey`]), each key with
    /// the full quota. Always asks Redis (lease mode applies to the own key only).
    ///
    /// # Errors
    ///
    /// As [`check`](Self::check).
    pub async fn check_key<K: RedisKey + ?Sized>(&self, key: &K) -> Result<(), RateLimited> {
        match self.decide(&self.target(key)).await {
            Outcome::Admitted(_) => Ok(()),
            Outcome::Limited(why) | Outcome::Closed(why) => Err(why),
        }
    }

    /// The quota of this limit (of each key, for keyed checks).
    pub fn quota(&self) -> Quota {
        self.inner.quota
    }

    /// The Redis key of the limiter's own limit: `PREFIX:NAME`.
    pub fn redis_key(&self) -> &str {
        &self.inner.key
    }

    /// The Redis key a keyed check of `key` uses: `PREFIX:NAME:KIND=KEY`, the key's bytes
    /// escaped (`%` as `%25`, `:` as `%3A`) after its [kind](RedisKey::kind) — so that no key
    /// is another limiter's key, nor another key's of another type (`5u32` and `"5"`).
    pub fn redis_key_for<K: RedisKey + ?Sized>(&self, key: &K) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.inner.key.len() + 28);
        k.extend_from_slice(self.inner.key.as_bytes());
        crate::key::append(key, &mut k);
        k
    }

    /// The failure policy.
    pub fn policy(&self) -> FailurePolicy {
        self.inner.policy
    }

    /// The lease size, in lease mode.
    pub fn lease_size(&self) -> Option<u32> {
        self.inner.lease.as_ref().map(|l| l.size)
    }

    /// How many leased tokens this process holds now (0 outside lease mode).
    pub fn leased(&self) -> u32 {
        self.inner
            .lease
            .as_ref()
            .map_or(0, |l| l.pool.load(Ordering::Acquire))
    }

    /// How many requests of this process are queued in wait-mode layers on the own key.
    pub fn waiting(&self) -> usize {
        self.inner.queued.load(Ordering::SeqCst)
    }

    /// Whether Redis failed last time it was asked (the failure policy is deciding until it
    /// answers again).
    pub fn is_degraded(&self) -> bool {
        self.inner.down_until.load(Ordering::Acquire) != 0
    }

    /// Counts of decisions by who made them.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.stats;
        Stats {
            redis_decisions: c.redis.load(Ordering::Relaxed),
            lease_decisions: c.lease.load(Ordering::Relaxed),
            policy_decisions: c.policy.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            refunds: c.refunds.load(Ordering::Relaxed),
            hinted_refusals: c.hinted.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn target<K: RedisKey + ?Sized>(&self, key: &K) -> Target {
        Target::Keyed(self.redis_key_for(key))
    }

    /// One decision: the lease pool, else Redis within the timeout, else the failure policy.
    pub(crate) async fn decide(&self, target: &Target) -> Outcome {
        let inner = &*self.inner;
        if let (Target::Own, Some(lease)) = (target, inner.lease.as_ref()) {
            return self.decide_leased(lease).await;
        }
        if !inner.may_ask() {
            return inner.on_failure(target);
        }
        let key: &[u8] = match target {
            Target::Own => inner.key.as_bytes(),
            Target::Keyed(k) => k,
        };
        match tokio::time::timeout(inner.timeout, inner.acquire(key, 1)).await {
            Ok(Ok(reply)) => {
                inner.mark_up();
                inner.stats.redis.fetch_add(1, Ordering::Relaxed);
                inner.outcome(reply, target)
            }
            Ok(Err(e)) if !marks_down(&e) => {
                inner.key_failed(key, &e);
                inner.on_failure(target)
            }
            Ok(Err(e)) => {
                inner.mark_down(&Failure::Redis(e));
                inner.on_failure(target)
            }
            Err(_) => {
                inner.mark_down(&Failure::Timeout);
                inner.on_failure(target)
            }
        }
    }

    /// Lease mode, on the own key: the pool; else Redis' last "limited until"; else the lease
    /// fetch in flight, or a new one, awaited under this request's own timeout.
    ///
    /// The fetch runs in a task of its own: a request that stops being polled holds nothing
    /// that others wait for, and a request that gives up on its timeout marks nothing down —
    /// only the fetch's own failure (or timeout) does.
    async fn decide_leased(&self, lease: &Lease) -> Outcome {
        let inner = &*self.inner;
        let give_up = Instant::now().checked_add(inner.timeout);
        loop {
            if lease.take() {
                inner.stats.lease.fetch_add(1, Ordering::Relaxed);
                return Outcome::Admitted(Token::Lease);
            }
            let until = lease.limited_until.load(Ordering::Acquire);
            let now = inner.now_ns();
            if until > now {
                inner.stats.hinted.fetch_add(1, Ordering::Relaxed);
                let retry = Duration::from_nanos(until - now).max(Duration::from_micros(1));
                return Outcome::Limited(RateLimited::new(retry, inner.quota));
            }
            let Some(mut fetch) = self.join_or_fetch(lease) else {
                return inner.on_failure(&Target::Own);
            };
            let answer = async {
                fetch
                    .wait_for(Option::is_some)
                    .await
                    .map(|answer| answer.clone())
            };
            let answer = match give_up {
                Some(at) => tokio::time::timeout_at(at, answer).await,
                None => Ok(answer.await),
            };
            match answer {
                Ok(Ok(Some(Fetched::Granted(spare)))) => {
                    // A request polled only after its own timeout (its task parked) must not
                    // spend a token granted back then: the bucket has refilled since, and the
                    // token would come on top of the bound. It gives up instead, and the
                    // spare, unclaimed, goes back to the pool or to Redis.
                    if give_up.is_some_and(|at| Instant::now() > at) {
                        return inner.on_failure(&Target::Own);
                    }
                    if spare.claim() {
                        return Outcome::Admitted(Token::Lease);
                    }
                    // Others took the lease first: the pool, the hint, or the next fetch.
                }
                // Redis' answer, shared: nothing conforms until the hint it set.
                Ok(Ok(Some(Fetched::Limited))) => {
                    let until = lease.limited_until.load(Ordering::Acquire);
                    let left = Duration::from_nanos(until.saturating_sub(inner.now_ns()));
                    let retry = left.max(Duration::from_micros(1));
                    return Outcome::Limited(RateLimited::new(retry, inner.quota));
                }
                Ok(Ok(Some(Fetched::Failed))) => return inner.on_failure(&Target::Own),
                Ok(Ok(None)) => unreachable!("wait_for returns a value that is Some"),
                Ok(Err(_)) => {
                    // The fetch's task ended without an answer (its runtime shut down):
                    // forget it.
                    let mut slot = lease.fetch.lock().unwrap_or_else(|e| e.into_inner());
                    if slot.as_ref().is_some_and(|rx| rx.same_channel(&fetch)) {
                        *slot = None;
                    }
                    return inner.on_failure(&Target::Own);
                }
                // This request's own timeout: the policy decides it; the fetch goes on and
                // decides about Redis.
                Err(_) => return inner.on_failure(&Target::Own),
            }
        }
    }

    /// The lease fetch in flight, or a new one (when Redis may be asked: else `None`).
    fn join_or_fetch(&self, lease: &Lease) -> Option<watch::Receiver<Option<Fetched>>> {
        let mut slot = lease.fetch.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = slot.as_ref() {
            return Some(rx.clone());
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No tokio runtime to run the fetch on (redis-rs needs one anyway).
            self.inner.stats.failures.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if !self.inner.may_ask() {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        *slot = Some(rx.clone());
        drop(slot);
        runtime.spawn(self.clone().fetch_lease(tx));
        Some(rx)
    }

    /// One lease fetch: asks Redis for up to `size` cells within the timeout, fills the pool,
    /// sets or clears the "limited until" hint, marks Redis up or down, and shares the result.
    async fn fetch_lease(self, tx: watch::Sender<Option<Fetched>>) {
        let inner = &*self.inner;
        let Some(lease) = inner.lease.as_ref() else {
            return;
        };
        let key = inner.key.as_bytes();
        let result = tokio::time::timeout(inner.timeout, inner.acquire(key, lease.size)).await;
        let fetched = match result {
            Ok(Ok((granted, retry_us, tat))) => {
                inner.mark_up();
                inner.stats.redis.fetch_add(1, Ordering::Relaxed);
                if granted > 0 {
                    lease.limited_until.store(0, Ordering::Release);
                    let tat_after_us = u64::try_from(tat).unwrap_or(0);
                    let extra = u32::try_from(granted - 1).unwrap_or(u32::MAX);
                    let overflow = lease.fill(extra, tat_after_us);
                    if overflow > 0 {
                        self.refund(tat_after_us, overflow);
                    }
                    Fetched::Granted(Arc::new(Spare {
                        taken: AtomicBool::new(false),
                        limiter: self.clone(),
                    }))
                } else {
                    let retry_ns = u64::try_from(retry_us)
                        .unwrap_or(0)
                        .max(1)
                        .saturating_mul(1_000);
                    let until = inner.now_ns().saturating_add(retry_ns);
                    lease.limited_until.store(until, Ordering::Release);
                    Fetched::Limited
                }
            }
            Ok(Err(e)) if !marks_down(&e) => {
                inner.key_failed(key, &e);
                Fetched::Failed
            }
            Ok(Err(e)) => {
                inner.mark_down(&Failure::Redis(e));
                Fetched::Failed
            }
            Err(_) => {
                inner.mark_down(&Failure::Timeout);
                Fetched::Failed
            }
        };
        // The next request finding the pool empty starts the next fetch; those waiting get
        // this one's result.
        *lease.fetch.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let _ = tx.send(Some(fetched));
    }

    /// Decides in `mode`: once (reject), or until admitted or past `max_wait` (wait).
    pub(crate) async fn verdict(self, target: Target, mode: Mode) -> Verdict {
        match mode {
            Mode::Reject => match self.decide(&target).await {
                Outcome::Admitted(token) => Verdict::Granted(token),
                Outcome::Limited(why) | Outcome::Closed(why) => {
                    tracing::debug!(retry_after = ?why.retry_after(), "rate limited (Redis): request refused");
                    Verdict::Refused(why)
                }
            },
            Mode::Wait { max_wait } => {
                let leased = matches!(target, Target::Own) && self.inner.lease.is_some();
                if leased {
                    self.wait(target, max_wait).await
                } else {
                    self.wait_reserved(target, max_wait).await
                }
            }
        }
    }

    /// Wait mode in lease mode on the own key (the others reserve: see `wait_reserved`):
    /// sleep for the `retry_after` Redis computed, and ask again.
    ///
    /// Requests on the own key take local slots in this process, first come, first served,
    /// one interval apart: a waiter sleeps until its slot (holding no lock) and then asks
    /// Redis, so a hundred waiters cost about one round trip per slot, not a hundred, and a
    /// waiter that is never polled again blocks no one. Across processes there is no order:
    /// whoever asks first after a slot opens gets it.
    async fn wait(self, target: Target, max_wait: Option<Duration>) -> Verdict {
        let inner = &*self.inner;
        let start = Instant::now();
        // A `max_wait` too long for the clock (`Duration::MAX`) is no deadline at all.
        let deadline = max_wait.and_then(|max| start.checked_add(max));
        let own = matches!(target, Target::Own);
        let mut retry = None;
        // A newcomer asks at once only when no one of this process is waiting on the own key
        // (it would overtake them otherwise).
        if !own || inner.queued.load(Ordering::SeqCst) == 0 {
            match self.decide(&target).await {
                Outcome::Admitted(token) => return Verdict::Granted(token),
                Outcome::Closed(why) => return Verdict::Refused(why),
                Outcome::Limited(why) => retry = Some(why.retry_after()),
            }
        }
        let ahead = if own {
            inner.queued.fetch_add(1, Ordering::SeqCst)
        } else {
            0
        };
        let _queued = own.then(|| Queued(&inner.queued));
        if own {
            // Take the next local slot, not before Redis' retry time.
            let now = inner.now_ns();
            let earliest = now.saturating_add(nanos(retry.unwrap_or_default()));
            let interval = inner.interval_us.saturating_mul(1_000);
            let max_ns = max_wait.map(nanos);
            let mut slot = 0;
            let taken = inner
                .next_slot
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |next| {
                    // With no one waiting ahead, slots left by waiters that are gone say
                    // nothing: Redis' retry time alone does.
                    slot = if ahead == 0 {
                        earliest
                    } else {
                        next.max(earliest)
                    };
                    if max_ns.is_some_and(|max| slot - now > max) {
                        return None;
                    }
                    Some(slot.saturating_add(interval))
                });
            let wait = Duration::from_nanos(slot - now);
            if taken.is_err() {
                tracing::debug!(
                    estimate = ?wait,
                    ?max_wait,
                    "rate limited (Redis): wait would exceed max_wait"
                );
                return Verdict::Refused(RateLimited::new(wait, inner.quota));
            }
            retry = (!wait.is_zero()).then_some(wait);
        }
        loop {
            if let Some(wait) = retry.take() {
                if deadline.is_some_and(|d| Instant::now().checked_add(wait).is_none_or(|t| t > d))
                {
                    tracing::debug!(?wait, "rate limited (Redis): wait would pass max_wait");
                    return Verdict::Refused(RateLimited::new(wait, inner.quota));
                }
                tracing::trace!(?wait, "rate limit (Redis): waiting");
                tokio::time::sleep(wait).await;
            }
            match self.decide(&target).await {
                Outcome::Admitted(token) => return Verdict::Granted(token),
                Outcome::Closed(why) => return Verdict::Refused(why),
                Outcome::Limited(why) => retry = Some(why.retry_after()),
            }
        }
    }

    /// Gives back a token that was never used (a readied service dropped before `call`).
    ///
    /// A lease token goes back to the pool, or when the pool is full, to Redis against the
    /// last lease. A token the script took is given back by the refund script, sent from a
    /// task spawned on the current tokio runtime, bounded by the timeout; without a runtime, or
    /// if Redis fails, it is not given back (the limit then admits one fewer: the error is on
    /// the safe side).
    pub(crate) fn give_back(&self, token: Token) {
        match token {
            Token::Untracked => {}
            Token::Lease => {
                if let Some(lease) = &self.inner.lease {
                    if !lease.put_back() {
                        let tat_after_us = lease.last_tat_us.load(Ordering::Acquire);
                        self.refund(tat_after_us, 1);
                    }
                }
            }
            Token::Redis {
                tat_after_us,
                cells,
            } => self.refund(tat_after_us, cells),
            Token::Keyed { key, tat_after_us } => self.refund_key(key, tat_after_us, 1),
        }
    }

    fn refund(&self, tat_after_us: u64, cells: u32) {
        self.refund_key(self.inner.key.as_bytes().to_vec(), tat_after_us, cells);
    }

    fn refund_key(&self, key: Vec<u8>, tat_after_us: u64, cells: u32) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!("no tokio runtime: an unused Redis token is not given back");
            return;
        };
        let this = self.clone();
        runtime.spawn(async move { this.inner.refund(&key, tat_after_us, cells).await });
    }

    /// Wait mode without a lease: one reservation script within the timeout. `max_delay`:
    /// the longest wait accepted (`None`: any).
    async fn reserve(&self, target: &Target, max_delay: Option<Duration>) -> Reservation {
        let inner = &*self.inner;
        if !inner.may_ask() {
            return Reservation::Policy(inner.on_failure(target));
        }
        let key: &[u8] = match target {
            Target::Own => inner.key.as_bytes(),
            Target::Keyed(k) => k,
        };
        // Past 2^52 µs (142 years) the script's doubles are not exact: no bound then.
        let max_us = max_delay
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .filter(|&us| us < 1 << 52)
            .map_or(-1, |us| i64::try_from(us).unwrap_or(-1));
        let call = async {
            let mut conn = inner.connection()?;
            let mut call = inner.reserve.key(key);
            call.arg(inner.interval_us)
                .arg(inner.tolerance_us)
                .arg(max_us);
            call.invoke_async::<(i64, i64, i64)>(&mut conn).await
        };
        match tokio::time::timeout(inner.timeout, call).await {
            Ok(Ok((reserved, delay_us, tat))) => {
                inner.mark_up();
                inner.stats.redis.fetch_add(1, Ordering::Relaxed);
                let delay = Duration::from_micros(u64::try_from(delay_us).unwrap_or(0));
                if reserved > 0 {
                    let tat_after_us = u64::try_from(tat).unwrap_or(0);
                    let token = match target {
                        Target::Own => Token::Redis {
                            tat_after_us,
                            cells: 1,
                        },
                        Target::Keyed(k) => Token::Keyed {
                            key: k.clone(),
                            tat_after_us,
                        },
                    };
                    Reservation::Reserved(token, delay)
                } else {
                    Reservation::TooLong(RateLimited::new(
                        delay.max(Duration::from_micros(1)),
                        inner.quota,
                    ))
                }
            }
            Ok(Err(e)) if !marks_down(&e) => {
                inner.key_failed(key, &e);
                Reservation::Policy(inner.on_failure(target))
            }
            Ok(Err(e)) => {
                inner.mark_down(&Failure::Redis(e));
                Reservation::Policy(inner.on_failure(target))
            }
            Err(_) => {
                inner.mark_down(&Failure::Timeout);
                Reservation::Policy(inner.on_failure(target))
            }
        }
    }

    /// Wait mode without a lease: reserve the cell in Redis (one round trip), sleep until it
    /// conforms, go. Reservations are served in the order Redis received them, across the
    /// fleet; a wait abandoned (the future dropped) gives its cell back. While Redis cannot
    /// decide, the policy does, as in [`wait`](Self::wait).
    async fn wait_reserved(self, target: Target, max_wait: Option<Duration>) -> Verdict {
        let inner = &*self.inner;
        let deadline = max_wait.and_then(|max| Instant::now().checked_add(max));
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match self.reserve(&target, left.or(max_wait)).await {
                Reservation::Reserved(token, delay) => {
                    if delay.is_zero() {
                        return Verdict::Granted(token);
                    }
                    let mut held = Held {
                        limiter: &self,
                        token: Some(token),
                    };
                    let _queued = matches!(target, Target::Own).then(|| {
                        inner.queued.fetch_add(1, Ordering::SeqCst);
                        Queued(&inner.queued)
                    });
                    tracing::trace!(?delay, "rate limit (Redis): reserved; waiting");
                    tokio::time::sleep(delay).await;
                    let token = held.token.take().expect("held until now");
                    return Verdict::Granted(token);
                }
                Reservation::TooLong(why) => {
                    tracing::debug!(wait = ?why.retry_after(), ?max_wait, "rate limited (Redis): wait would exceed max_wait");
                    return Verdict::Refused(why);
                }
                Reservation::Policy(Outcome::Admitted(token)) => return Verdict::Granted(token),
                Reservation::Policy(Outcome::Closed(why)) => return Verdict::Refused(why),
                Reservation::Policy(Outcome::Limited(why)) => {
                    // The fallback limiter: wait for it, then ask again (Redis first, if the
                    // probe interval has passed).
                    let wait = why.retry_after();
                    if deadline
                        .is_some_and(|d| Instant::now().checked_add(wait).is_none_or(|t| t > d))
                    {
                        return Verdict::Refused(why);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// What a reservation came to.
enum Reservation {
    /// Reserved: go after the delay.
    Reserved(Token, Duration),
    /// Redis says the wait is longer than the caller accepts.
    TooLong(RateLimited),
    /// Redis could not decide: the policy did.
    Policy(Outcome),
}

/// A reserved token during its wait: given back if the wait is abandoned.
struct Held<'a> {
    limiter: &'a RedisRateLimiter,
    token: Option<Token>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            self.limiter.give_back(token);
        }
    }
}

/// `d` in nanoseconds, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Inner {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether this decision may ask Redis: yes when Redis is believed up; while it is down,
    /// no until the probe interval has passed, and then yes for exactly one decision — the
    /// probe — which pushes the next probe time on by the probe interval (at least the
    /// timeout), so that the others keep applying the policy until the probe answers (its
    /// success clears the state, its failure pushes it further, and if it is cancelled the
    /// next probe comes one interval later).
    fn may_ask(&self) -> bool {
        let until = self.down_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now_ns();
        if now < until {
            return false;
        }
        let hold =
            u64::try_from(self.probe_interval.max(self.timeout).as_nanos()).unwrap_or(u64::MAX);
        let next = now.saturating_add(hold).max(1);
        self.down_until
            .compare_exchange(until, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn mark_down(&self, why: &Failure) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        let probe = u64::try_from(self.probe_interval.as_nanos()).unwrap_or(u64::MAX);
        let until = self.now_ns().saturating_add(probe).max(1);
        if self.down_until.fetch_max(until, Ordering::AcqRel) == 0 {
            tracing::warn!(
                key = %self.key,
                error = %why,
                policy = ?self.policy,
                "Redis rate limit unavailable: the failure policy decides until Redis answers"
            );
        } else {
            tracing::debug!(key = %self.key, error = %why, "Redis rate limit still unavailable");
        }
    }

    fn mark_up(&self) {
        // One atomic swap: a failure marked after it is kept whole (never half undone).
        if self.down_until.load(Ordering::Acquire) != 0
            && self.down_until.swap(0, Ordering::AcqRel) != 0
        {
            tracing::info!(key = %self.key, "Redis rate limit reachable again");
        }
    }

    /// Time until Redis is asked again, at least 1 ms: the `retry_after` of a closed refusal.
    fn until_probe(&self) -> Duration {
        let until = self.down_until.load(Ordering::Acquire);
        Duration::from_nanos(until.saturating_sub(self.now_ns())).max(Duration::from_millis(1))
    }

    fn connection(&self) -> Result<ConnectionManager, RedisError> {
        /// Runtimes whose managers are kept; the least recently used is dropped (a runtime
        /// gone, most likely) when another arrives.
        const KEPT: usize = 16;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| {
                RedisError::from((redis::ErrorKind::Client, "no tokio runtime", e.to_string()))
            })?
            .id();
        let mut managers = self.managers.lock().unwrap_or_else(|e| e.into_inner());
        let found = managers.iter().position(|(id, _)| *id == runtime);
        let i = match found {
            // Most recently used last, so that the one dropped is the least recently used.
            Some(i) if i + 1 == managers.len() => i,
            Some(i) => {
                let entry = managers.remove(i);
                managers.push(entry);
                managers.len() - 1
            }
            None => {
                if managers.len() >= KEPT {
                    drop(managers.remove(0));
                }
                let made = ConnectionManager::new_lazy_with_config(
                    self.client.clone(),
                    self.manager_config.clone(),
                )
                .map_err(|e| e.to_string());
                managers.push((runtime, made));
                managers.len() - 1
            }
        };
        match &managers[i].1 {
            Ok(m) => Ok(m.clone()),
            Err(e) => Err(RedisError::from((
                redis::ErrorKind::Client,
                "cannot make a connection manager",
                e.clone(),
            ))),
        }
    }

    /// Runs the GCRA script: between 1 and `want` cells.
    async fn acquire(&self, key: &[u8], want: u32) -> Result<(i64, i64, i64), RedisError> {
        let mut conn = self.connection()?;
        let mut call = self.acquire.key(key);
        call.arg(self.interval_us)
            .arg(self.tolerance_us)
            .arg(want)
            .arg(1u32);
        call.invoke_async(&mut conn).await
    }

    fn outcome(&self, (granted, retry_us, tat): (i64, i64, i64), target: &Target) -> Outcome {
        let tat_after_us = u64::try_from(tat).unwrap_or(0);
        if granted > 0 {
            let token = match target {
                Target::Own => Token::Redis {
                    tat_after_us,
                    cells: 1,
                },
                Target::Keyed(_) => Token::Untracked,
            };
            Outcome::Admitted(token)
        } else {
            let retry = Duration::from_micros(u64::try_from(retry_us).unwrap_or(0).max(1));
            Outcome::Limited(RateLimited::new(retry, self.quota))
        }
    }

    /// A reply error about one request's key (`WRONGTYPE`, a script error): counted and
    /// logged; Redis is not marked down.
    fn key_failed(&self, key: &[u8], e: &RedisError) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            key = %String::from_utf8_lossy(key),
            error = %e,
            "Redis rate limit: this request's key failed; the policy decides it"
        );
    }

    fn on_failure(&self, target: &Target) -> Outcome {
        self.stats.policy.fetch_add(1, Ordering::Relaxed);
        match self.policy {
            FailurePolicy::FailOpen => Outcome::Admitted(Token::Untracked),
            FailurePolicy::FailClosed => {
                Outcome::Closed(RateLimited::new(self.until_probe(), self.quota))
            }
            FailurePolicy::Fallback { .. } => {
                let Some(fallback) = &self.fallback else {
                    // The builder always makes it with the policy.
                    return Outcome::Admitted(Token::Untracked);
                };
                let local = match target {
                    Target::Own => fallback.own.check(),
                    Target::Keyed(key) => fallback.keyed.check_key(key),
                };
                match local {
                    Ok(()) => Outcome::Admitted(Token::Untracked),
                    Err(why) => Outcome::Limited(RateLimited::new(why.retry_after(), self.quota)),
                }
            }
        }
    }

    async fn refund(&self, key: &[u8], tat_after_us: u64, cells: u32) {
        let call = async {
            let mut conn = self.connection()?;
            let mut call = self.refund.key(key);
            call.arg(tat_after_us)
                .arg(self.interval_us.saturating_mul(u64::from(cells)));
            call.invoke_async::<i64>(&mut conn).await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(back)) => {
                if back > 0 {
                    self.stats.refunds.fetch_add(1, Ordering::Relaxed);
                }
                tracing::trace!(
                    back_us = back,
                    "rate limit (Redis): unused token given back"
                );
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "rate limit (Redis): refund failed"),
            Err(_) => tracing::debug!("rate limit (Redis): refund timed out"),
        }
    }
}

/// Whether an error says Redis cannot decide for anyone — the connection, a timeout, or the
/// server's state (busy with a script, loading, a read-only replica, no master, a cluster
/// resharding or down, out of memory, refusing writes) — so that the limiter is marked down.
/// Any other reply error (`WRONGTYPE` on one key, a script error, a reply of an unexpected
/// type) is about that request alone.
fn marks_down(e: &RedisError) -> bool {
    use redis::ErrorKind;
    match e.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => false,
        ErrorKind::Io | ErrorKind::Client | ErrorKind::ClusterConnectionNotFound => true,
        _ if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal() =>
        {
            true
        }
        _ => match e.code() {
            Some(code) => matches!(
                code,
                "BUSY"
                    | "LOADING"
                    | "READONLY"
                    | "MASTERDOWN"
                    | "TRYAGAIN"
                    | "CLUSTERDOWN"
                    | "MISCONF"
                    | "OOM"
            ),
            // Not a reply from the server (authentication, configuration, ...): down.
            None => true,
        },
    }
}

impl fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("key", &self.inner.key)
            .field("quota", &self.inner.quota)
            .field("policy", &self.inner.policy)
            .field("lease", &self.lease_size())
            .field("timeout", &self.inner.timeout)
            .field("degraded", &self.is_degraded())
            .finish()
    }
}
