//! [`KeyedRateLimitLayer`]: one GCRA per key (client address, API key, ...), memory bounded.

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use dashmap::DashMap;
use tower_layer::Layer;
use tower_service::Service;

use crate::clock::{Clock, Timebase};
use crate::error::RateLimited;
use crate::future::ResponseFuture;
use crate::gcra::{Deny, Gcra};
use crate::quota::Quota;
use crate::reject::{AsError, Rejection};

/// The default bound on the number of keys a keyed limiter remembers.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Names the key type of a key extractor.
pub trait KeyExtractor {
    /// The key requests are limited by.
    type Key: Hash + Eq + Clone + Send + Sync + 'static;
}

/// Finds the key of a request.
pub trait ExtractKey<Req>: KeyExtractor {
    /// The key, or `None` when the request carries none (the request is then refused with
    /// [`KeyUnavailable`](crate::KeyUnavailable) rather than let through unlimited).
    fn extract(&self, req: &Req) -> Option<Self::Key>;
}

/// A key extractor made from a function; see [`key_fn`].
pub struct KeyFn<F, K> {
    f: F,
    _key: PhantomData<fn() -> K>,
}

/// Uses `f` as a key extractor.
///
/// ```
/// use palisade_ratelimit::keyed::key_fn;
/// let by_tenant = key_fn(|req: &(String, u32)| Some(req.0.clone()));
/// # let _ = by_tenant;
/// ```
pub fn key_fn<Req, K, F>(f: F) -> KeyFn<F, K>
where
    F: Fn(&Req) -> Option<K>,
{
    KeyFn {
        f,
        _key: PhantomData,
    }
}

impl<F: Clone, K> Clone for KeyFn<F, K> {
    fn clone(&self) -> Self {
        KeyFn {
            f: self.f.clone(),
            _key: PhantomData,
        }
    }
}

impl<F, K> fmt::Debug for KeyFn<F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFn")
    }
}

impl<F, K: Hash + Eq + Clone + Send + Sync + 'static> KeyExtractor for KeyFn<F, K> {
    type Key = K;
}

impl<F, K, Req> ExtractKey<Req> for KeyFn<F, K>
where
    F: Fn(&Req) -> Option<K>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    fn extract(&self, req: &Req) -> Option<K> {
        (self.f)(req)
    }
}

/// One key for every request: a single global limit, through the keyed machinery.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlobalKey;

impl KeyExtractor for GlobalKey {
    type Key = ();
}

impl<Req> ExtractKey<Req> for GlobalKey {
    fn extract(&self, _: &Req) -> Option<()> {
        Some(())
    }
}

/// A rate limit per key, with a bound on how many keys it remembers.
///
/// # Memory policy
///
/// At most `max_keys` keys are kept (a few more while several new keys arrive at the same
/// moment). When a new key arrives and the table is full:
/// 1. every key whose state equals a fresh one (idle long enough to have its whole burst back)
///    is dropped — forgetting it changes no decision;
/// 2. if more than `max_keys − max_keys/64` are left, the keys closest to fresh are dropped
///    down to that mark. Such a key, when it comes back, starts with a full burst: it may get
///    up to one burst more than its quota. Rotating keys cannot grow memory past the bound.
///
/// Either way the table is left at least 1/64 below the bound, so a pass over it happens at
/// most once per `max_keys/64` new keys: O(64) per new key on average, whatever the keys do.
pub struct KeyedRateLimiter<K> {
    shared: Arc<KeyedShared<K>>,
}

struct KeyedShared<K> {
    time: Timebase,
    quota: RwLock<Quota>,
    max_keys: usize,
    map: DashMap<K, Gcra>,
}

impl<K> Clone for KeyedRateLimiter<K> {
    fn clone(&self) -> Self {
        KeyedRateLimiter {
            shared: self.shared.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone> KeyedRateLimiter<K> {
    /// A keyed limit of `quota` per key, remembering at most [`DEFAULT_MAX_KEYS`] keys.
    pub fn new(quota: Quota) -> Self {
        Self::with_max_keys(
            quota,
            NonZeroUsize::new(DEFAULT_MAX_KEYS).expect("non-zero"),
        )
    }

    /// A keyed limit of `quota` per key, remembering at most `max_keys` keys.
    pub fn with_max_keys(quota: Quota, max_keys: NonZeroUsize) -> Self {
        Self::with_clock(quota, max_keys, Clock::tokio())
    }

    /// A keyed limit of `quota` per key, remembering at most `max_keys` keys, on `clock`
    /// ([`Clock::tsc`] makes each decision a few times cheaper; paused tokio time does not
    /// drive it).
    pub fn with_clock(quota: Quota, max_keys: NonZeroUsize, clock: Clock) -> Self {
        KeyedRateLimiter {
            shared: Arc::new(KeyedShared {
                time: Timebase::new(clock),
                quota: RwLock::new(quota),
                max_keys: max_keys.get(),
                map: DashMap::new(),
            }),
        }
    }

    fn now(&self) -> u64 {
        self.shared.time.now()
    }

    /// The clock this limit reads.
    pub fn clock(&self) -> Clock {
        self.shared.time.clock()
    }

    /// Admits one request for `key` now, or says how long until one would conform.
    ///
    /// # Errors
    ///
    /// [`RateLimited`] with the time until `key`'s next conforming instant.
    pub fn check_key(&self, key: &K) -> Result<(), RateLimited> {
        let now = self.now();
        let verdict = match self.shared.map.get(key) {
            Some(gcra) => gcra.acquire(now, now, 1),
            None => self.insert(key.clone(), now),
        };
        verdict.map(drop).map_err(|deny| {
            let at = match deny {
                Deny::Until(at) => at,
                Deny::Insufficient => now,
            };
            RateLimited::new(Duration::from_nanos(at.saturating_sub(now)), self.quota())
        })
    }

    #[cold]
    fn insert(&self, key: K, now: u64) -> Result<crate::gcra::Grant, Deny> {
        if self.shared.map.len() >= self.shared.max_keys {
            self.evict(now);
        }
        // Held across the insertion: a concurrent set_quota either sees this key in its pass
        // or runs after it, never in between with the key made from the old quota.
        let quota = self
            .shared
            .quota
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let gcra = self
            .shared
            .map
            .entry(key)
            .or_insert_with(|| Gcra::new(&quota));
        drop(quota);
        gcra.acquire(now, now, 1)
    }

    /// Makes room down to a low-water mark 1/64 below the bound, so that the next 1/64 of new
    /// keys insert without a pass over the table.
    fn evict(&self, now: u64) {
        let map = &self.shared.map;
        let max = self.shared.max_keys;
        let low_water = max - (max / 64).max(1);
        let before = map.len();
        map.retain(|_, g| g.tat() > now);
        let after_fresh = map.len();
        if after_fresh > low_water {
            // Still too full: every key left is in debt. Drop those closest to fresh.
            let mut tats: Vec<u64> = map.iter().map(|e| e.value().tat()).collect();
            // Re-count: another thread may have evicted since `after_fresh` was read.
            let excess = tats.len().saturating_sub(low_water);
            if excess == 0 {
                return;
            }
            let (_, threshold, _) = tats.select_nth_unstable(excess - 1);
            let threshold = *threshold;
            let mut dropped = 0;
            map.retain(|_, g| {
                if dropped < excess && g.tat() <= threshold {
                    dropped += 1;
                    false
                } else {
                    true
                }
            });
        }
        tracing::debug!(
            // Other threads insert meanwhile: the counts are approximate, never negative.
            fresh = before.saturating_sub(after_fresh),
            in_debt = after_fresh.saturating_sub(map.len()),
            "rate limit keys evicted"
        );
    }

    /// How many keys are remembered now.
    pub fn len(&self) -> usize {
        self.shared.map.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.shared.map.is_empty()
    }

    /// How many requests `key` could send right now at once.
    pub fn remaining_burst(&self, key: &K) -> u32 {
        let now = self.now();
        match self.shared.map.get(key) {
            Some(g) => g.remaining(now),
            None => self.quota().burst_size(),
        }
    }

    /// The quota each key gets.
    pub fn quota(&self) -> Quota {
        *self
            .shared
            .quota
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes every key's quota while traffic flows (see
    /// [`RateLimiter::set_quota`](crate::RateLimiter::set_quota)).
    pub fn set_quota(&self, quota: Quota) {
        let mut q = self
            .shared
            .quota
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let now = self.now();
        for entry in self.shared.map.iter() {
            entry.value().set_quota(&quota, now);
        }
        *q = quota;
    }
}

impl<K: Hash + Eq> fmt::Debug for KeyedRateLimiter<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimiter")
            .field("keys", &self.shared.map.len())
            .field("max_keys", &self.shared.max_keys)
            .finish()
    }
}

/// Applies a rate limit per key, refusing at once what does not conform (server mode).
///
/// The key comes from the request, which `poll_ready` cannot see, so the decision is made in
/// `call`: the inner service is readied as usual, and a refused request is answered without
/// calling it. State is created with the layer and shared by every service it makes.
///
/// ```
/// use palisade_ratelimit::keyed::{key_fn, KeyedRateLimitLayer};
/// use palisade_ratelimit::{Quota, RateLimited};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let layer = KeyedRateLimitLayer::new(Quota::per_minute(1)?, key_fn(|user: &&'static str| Some(user.to_string())));
/// let mut svc = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|user: &'static str| async move { Ok::<_, std::convert::Infallible>(user.len()) });
///
/// assert_eq!(svc.ready().await?.call("alice").await?, 5);
/// assert_eq!(svc.ready().await?.call("bob").await?, 3);
/// let err = svc.ready().await?.call("alice").await.unwrap_err();
/// assert!(err.downcast_ref::<RateLimited>().is_some());
/// # Ok(()) }
/// ```
pub struct KeyedRateLimitLayer<X: KeyExtractor, R = AsError> {
    limiter: KeyedRateLimiter<X::Key>,
    extractor: X,
    rejection: R,
}

impl<X: KeyExtractor> KeyedRateLimitLayer<X> {
    /// A layer limiting each key found by `extractor` to `quota`.
    pub fn new(quota: Quota, extractor: X) -> Self {
        Self::from_limiter(KeyedRateLimiter::new(quota), extractor)
    }

    /// A layer drawing from an existing keyed limit.
    pub fn from_limiter(limiter: KeyedRateLimiter<X::Key>, extractor: X) -> Self {
        KeyedRateLimitLayer {
            limiter,
            extractor,
            rejection: AsError::default(),
        }
    }
}

impl<X: KeyExtractor, R> KeyedRateLimitLayer<X, R> {
    /// Use `rejection` to turn refusals into the service's output.
    pub fn with_rejection<R2>(self, rejection: R2) -> KeyedRateLimitLayer<X, R2> {
        KeyedRateLimitLayer {
            limiter: self.limiter,
            extractor: self.extractor,
            rejection,
        }
    }

    /// The shared keyed limit.
    pub fn limiter(&self) -> &KeyedRateLimiter<X::Key> {
        &self.limiter
    }
}

impl<X: KeyExtractor + Clone, R: Clone> Clone for KeyedRateLimitLayer<X, R> {
    fn clone(&self) -> Self {
        KeyedRateLimitLayer {
            limiter: self.limiter.clone(),
            extractor: self.extractor.clone(),
            rejection: self.rejection.clone(),
        }
    }
}

impl<X: KeyExtractor + fmt::Debug, R> fmt::Debug for KeyedRateLimitLayer<X, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimitLayer")
            .field("limiter", &self.limiter)
            .field("extractor", &self.extractor)
            .finish()
    }
}

impl<S, X: KeyExtractor + Clone, R: Clone> Layer<S> for KeyedRateLimitLayer<X, R> {
    type Service = KeyedRateLimit<S, X, R>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedRateLimit {
            inner,
            limiter: self.limiter.clone(),
            extractor: self.extractor.clone(),
            rejection: self.rejection.clone(),
        }
    }
}

/// The service made by [`KeyedRateLimitLayer`].
pub struct KeyedRateLimit<S, X: KeyExtractor, R = AsError> {
    inner: S,
    limiter: KeyedRateLimiter<X::Key>,
    extractor: X,
    rejection: R,
}

impl<S, X: KeyExtractor, R> KeyedRateLimit<S, X, R> {
    /// The keyed limit this service draws from.
    pub fn limiter(&self) -> &KeyedRateLimiter<X::Key> {
        &self.limiter
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, X: KeyExtractor + Clone, R: Clone> Clone for KeyedRateLimit<S, X, R> {
    fn clone(&self) -> Self {
        KeyedRateLimit {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            extractor: self.extractor.clone(),
            rejection: self.rejection.clone(),
        }
    }
}

impl<S: fmt::Debug, X: KeyExtractor + fmt::Debug, R> fmt::Debug for KeyedRateLimit<S, X, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .field("extractor", &self.extractor)
            .finish()
    }
}

impl<S, X, R, Req> Service<Req> for KeyedRateLimit<S, X, R>
where
    S: Service<Req>,
    X: ExtractKey<Req>,
    R: Rejection<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = R::Error;
    type Future = ResponseFuture<S::Future, S::Response, R::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(R::Error::from)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(key) = self.extractor.extract(&req) else {
            tracing::debug!("rate limited: no key in request");
            return ResponseFuture::refused(self.rejection.key_unavailable());
        };
        match self.limiter.check_key(&key) {
            Ok(()) => ResponseFuture::called(self.inner.call(req)),
            Err(why) => {
                tracing::debug!(retry_after = ?why.retry_after(), "rate limited: keyed request refused");
                ResponseFuture::refused(self.rejection.rate_limited(why))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn memory_stays_bounded_under_rotating_keys() {
        let limiter = KeyedRateLimiter::with_max_keys(
            Quota::per_second(1).unwrap(),
            NonZeroUsize::new(128).unwrap(),
        );
        for k in 0..10_000u32 {
            limiter.check_key(&k).unwrap();
            assert!(limiter.len() <= 128, "len {} at key {k}", limiter.len());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_leaves_room_for_a_batch_of_new_keys() {
        let limiter = KeyedRateLimiter::with_max_keys(
            Quota::per_second(1).unwrap(),
            NonZeroUsize::new(640).unwrap(),
        );
        for k in 0..640u32 {
            limiter.check_key(&k).unwrap();
        }
        // Every key is in debt. One new key makes one pass, down to 640 − 10 = 630 ...
        limiter.check_key(&10_000).unwrap();
        assert_eq!(limiter.len(), 631);
        // ... and one key going fresh at a time does not bring a pass per insert: the next
        // nine new keys fit without evicting anything.
        for k in 10_001..10_010u32 {
            limiter.check_key(&k).unwrap();
        }
        assert_eq!(limiter.len(), 640);
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_keys_go_first() {
        let limiter = KeyedRateLimiter::with_max_keys(
            Quota::per_second(1).unwrap(),
            NonZeroUsize::new(2).unwrap(),
        );
        limiter.check_key(&"old").unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        limiter.check_key(&"hot").unwrap();
        // "old" is fresh again, "hot" is not: the newcomer must evict "old", and "hot" keeps its debt.
        limiter.check_key(&"new").unwrap();
        assert!(limiter.check_key(&"hot").is_err());
        assert_eq!(limiter.len(), 2);
    }
}
