//! [`RedisRateLimiter`]: one limit kept in Redis, the failure policy, and the lease pool.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use palisade_ratelimit::{KeyedRateLimiter, Quota, RateLimited, RateLimiter};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use tokio::time::Instant;

use crate::config::{Builder, FailurePolicy};
use crate::key::RedisKey;
use crate::script;

/// A rate limit whose state lives in Redis, shared by every process that uses the same key.
///
/// Each decision runs a Lua script ([GCRA](crate#the-algorithm) on Redis' own clock) atomically
/// on the limit's key; a process keeps no state of its own except, in lease mode, a few
/// tokens taken ahead. Cloning is cheap: every clone is the same limiter, with one connection
/// (redis-rs' `ConnectionManager`, multiplexed and reconnecting) made on the first decision.
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
    /// Made on the first decision: redis-rs spawns its reconnect machinery on the runtime then.
    manager: OnceLock<Result<ConnectionManager, String>>,
    acquire: Script,
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
    /// Nanoseconds since `origin` until which Redis is not asked (0: Redis is believed up).
    down_until: AtomicU64,
    /// Whether the last word from Redis was a failure: logs the transitions, not every request.
    degraded: AtomicBool,
    /// Wait-mode requests for the limiter's own key queue here, first come first served.
    queue: tokio::sync::Mutex<()>,
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
    /// One fetch from Redis at a time per process: a burst of requests finding the pool empty
    /// waits for one lease rather than taking one each.
    refill: tokio::sync::Mutex<()>,
    /// The TAT the last lease wrote: tokens that do not fit the pool are refunded against it.
    last_tat_us: AtomicU64,
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
        (before + extra).saturating_sub(cap)
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

/// What one bounded attempt at Redis came to.
enum Attempt {
    /// Another task's lease fetch filled the pool meanwhile.
    Leased,
    /// Another task's lease fetch failed meanwhile.
    Down,
    /// The script's reply: `{granted, retry_after_us, tat_us}`.
    Reply((i64, i64, i64)),
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
                manager: OnceLock::new(),
                acquire: Script::new(script::ACQUIRE),
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
                    refill: tokio::sync::Mutex::new(()),
                    last_tat_us: AtomicU64::new(0),
                }),
                origin: Instant::now(),
                down_until: AtomicU64::new(0),
                degraded: AtomicBool::new(false),
                queue: tokio::sync::Mutex::new(()),
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

    /// Admits one request on the limit of `key` (Redis key `PREFIX:NAME:KEY`), each key with
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

    /// The Redis key a keyed check of `key` uses: `PREFIX:NAME:KEY`.
    pub fn redis_key_for<K: RedisKey + ?Sized>(&self, key: &K) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.inner.key.len() + 24);
        k.extend_from_slice(self.inner.key.as_bytes());
        k.push(b':');
        key.write_key(&mut k);
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
        self.inner.degraded.load(Ordering::Acquire)
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
        }
    }

    pub(crate) fn target<K: RedisKey + ?Sized>(&self, key: &K) -> Target {
        Target::Keyed(self.redis_key_for(key))
    }

    /// One decision: the lease pool, else Redis within the timeout, else the failure policy.
    pub(crate) async fn decide(&self, target: &Target) -> Outcome {
        let inner = &*self.inner;
        let lease = match target {
            Target::Own => inner.lease.as_ref(),
            Target::Keyed(_) => None,
        };
        if lease.is_some_and(Lease::take) {
            inner.stats.lease.fetch_add(1, Ordering::Relaxed);
            return Outcome::Admitted(Token::Lease);
        }
        if inner.is_down() {
            return inner.on_failure(target);
        }
        let key: &[u8] = match target {
            Target::Own => inner.key.as_bytes(),
            Target::Keyed(k) => k,
        };
        let want = lease.map_or(1, |l| l.size);
        // The refill lock is inside the timeout: waiting for another task's lease counts too.
        let attempt = async {
            let _refill = match lease {
                Some(l) => Some(l.refill.lock().await),
                None => None,
            };
            if lease.is_some_and(Lease::take) {
                return Ok(Attempt::Leased);
            }
            if lease.is_some() && inner.is_down() {
                // The fetch we waited for failed: do not pile on.
                return Ok(Attempt::Down);
            }
            inner.acquire(key, want).await.map(Attempt::Reply)
        };
        match tokio::time::timeout(inner.timeout, attempt).await {
            Ok(Ok(Attempt::Leased)) => {
                inner.stats.lease.fetch_add(1, Ordering::Relaxed);
                Outcome::Admitted(Token::Lease)
            }
            Ok(Ok(Attempt::Down)) => inner.on_failure(target),
            Ok(Ok(Attempt::Reply(reply))) => {
                inner.mark_up();
                inner.stats.redis.fetch_add(1, Ordering::Relaxed);
                let (outcome, overflow) = inner.outcome(reply, target, lease);
                if overflow > 0 {
                    self.refund(u64::try_from(reply.2).unwrap_or(0), overflow);
                }
                outcome
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
            Mode::Wait { max_wait } => self.wait(target, max_wait).await,
        }
    }

    /// Wait mode: sleep for the `retry_after` Redis computed, and ask again.
    ///
    /// Requests on the own key queue in this process first come, first served (a tokio mutex,
    /// which is fair): only the head asks Redis, so a hundred waiters cost one round trip per
    /// slot, not a hundred. Across processes there is no order: whoever asks first after a
    /// slot opens gets it.
    async fn wait(self, target: Target, max_wait: Option<Duration>) -> Verdict {
        let inner = &*self.inner;
        let start = Instant::now();
        let own = matches!(target, Target::Own);
        let mut retry = None;
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
        let estimate = retry.unwrap_or_default()
            + Duration::from_micros(inner.interval_us)
                .saturating_mul(u32::try_from(ahead).unwrap_or(u32::MAX));
        if max_wait.is_some_and(|max| estimate > max) {
            tracing::debug!(
                ?estimate,
                ?max_wait,
                "rate limited (Redis): wait would exceed max_wait"
            );
            return Verdict::Refused(RateLimited::new(estimate, inner.quota));
        }
        let deadline = max_wait.map(|max| start + max);
        let _turn = if own {
            let lock = inner.queue.lock();
            Some(match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, lock).await {
                    Ok(guard) => guard,
                    Err(_) => {
                        let queued = inner.queued.load(Ordering::SeqCst);
                        let left = Duration::from_micros(inner.interval_us)
                            .saturating_mul(u32::try_from(queued).unwrap_or(u32::MAX));
                        return Verdict::Refused(RateLimited::new(left, inner.quota));
                    }
                },
                None => lock.await,
            })
        } else {
            None
        };
        if ahead > 0 {
            // The retry time heard before queueing is stale after waiting our turn: ask again.
            retry = None;
        }
        loop {
            if let Some(wait) = retry.take() {
                if deadline.is_some_and(|d| Instant::now() + wait > d) {
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
        }
    }

    fn refund(&self, tat_after_us: u64, cells: u32) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!("no tokio runtime: an unused Redis token is not given back");
            return;
        };
        let this = self.clone();
        runtime.spawn(async move { this.inner.refund(tat_after_us, cells).await });
    }
}

impl Inner {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn is_down(&self) -> bool {
        let until = self.down_until.load(Ordering::Acquire);
        until != 0 && self.now_ns() < until
    }

    fn mark_down(&self, why: &Failure) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        let probe = u64::try_from(self.probe_interval.as_nanos()).unwrap_or(u64::MAX);
        let until = self.now_ns().saturating_add(probe).max(1);
        self.down_until.fetch_max(until, Ordering::AcqRel);
        if !self.degraded.swap(true, Ordering::AcqRel) {
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
        if self.degraded.load(Ordering::Acquire) && self.degraded.swap(false, Ordering::AcqRel) {
            self.down_until.store(0, Ordering::Release);
            tracing::info!(key = %self.key, "Redis rate limit reachable again");
        }
    }

    /// Time until Redis is asked again, at least 1 ms: the `retry_after` of a closed refusal.
    fn until_probe(&self) -> Duration {
        let until = self.down_until.load(Ordering::Acquire);
        Duration::from_nanos(until.saturating_sub(self.now_ns())).max(Duration::from_millis(1))
    }

    fn connection(&self) -> Result<ConnectionManager, RedisError> {
        let manager = self.manager.get_or_init(|| {
            ConnectionManager::new_lazy_with_config(
                self.client.clone(),
                self.manager_config.clone(),
            )
            .map_err(|e| e.to_string())
        });
        match manager {
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

    fn outcome(
        &self,
        (granted, retry_us, tat): (i64, i64, i64),
        target: &Target,
        lease: Option<&Lease>,
    ) -> (Outcome, u32) {
        let tat_after_us = u64::try_from(tat).unwrap_or(0);
        let mut overflow = 0;
        if granted > 0 {
            let token = match (lease, target) {
                (Some(lease), _) => {
                    let extra = u32::try_from(granted - 1).unwrap_or(u32::MAX);
                    overflow = lease.fill(extra, tat_after_us);
                    Token::Lease
                }
                (None, Target::Own) => Token::Redis {
                    tat_after_us,
                    cells: 1,
                },
                (None, Target::Keyed(_)) => Token::Untracked,
            };
            (Outcome::Admitted(token), overflow)
        } else {
            let retry = Duration::from_micros(u64::try_from(retry_us).unwrap_or(0).max(1));
            (Outcome::Limited(RateLimited::new(retry, self.quota)), 0)
        }
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

    async fn refund(&self, tat_after_us: u64, cells: u32) {
        let call = async {
            let mut conn = self.connection()?;
            let mut call = self.refund.key(self.key.as_bytes());
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
