//! [`KeyedCircuitBreakerLayer`]: one breaker per key (per upstream host), memory bounded.

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::classify::{Classify, ErrorsAsFailures};
use crate::config::Config;
use crate::error::CircuitOpen;
use crate::future::{Guard, ResponseFuture};
use crate::state::{Breaker, State, Ticket};
use crate::BoxError;

/// Picks the key of a request. Implemented by every `Fn(&Req) -> K`, and by
/// [`http::Authority`](crate::http::Authority) (feature `http`).
pub trait Keyer<Req> {
    /// The key: one breaker per distinct value.
    type Key: Hash + Eq + Clone + Send + Sync + 'static;

    /// The key of `req`.
    fn key(&self, req: &Req) -> Self::Key;
}

impl<F, Req, K> Keyer<Req> for F
where
    F: Fn(&Req) -> K,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Key = K;

    fn key(&self, req: &Req) -> K {
        self(req)
    }
}

/// The default bound on the number of breakers a keyed layer keeps.
pub const DEFAULT_MAX_KEYS: usize = 10_000;
/// The default idle time after which a clean breaker may be forgotten.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);

/// The breakers of a keyed layer, one per key, created on first use with one config.
///
/// # Memory policy
///
/// When a new key finds `max_keys` breakers already kept, breakers that are *clean* — closed,
/// with no failure or slow call in their window, no call in flight, and no run of
/// consecutive failures counting towards that rule (a run idle for `idle` no longer counts) —
/// and idle for `idle` are forgotten, and if
/// that frees nothing, the least recently used clean one. A breaker that is open, half-open,
/// forced, or holds failures is never forgotten: forgetting it would hand a failing host a fresh
/// breaker. So the bound is exceeded only while breakers that carry failure state fill it;
/// then the table is scanned for room once per `max_keys/64` new keys, not on every one, and
/// up to that many clean breakers added between two scans are kept too. (With
/// a count window, which slides only with calls, a host that failed and was not called again
/// holds its failure, and is kept, for good; a time window lets it go once the failure has
/// slid out.)
pub struct KeyedBreakers<K> {
    shared: Arc<Shared<K>>,
}

struct Shared<K> {
    config: Config,
    max_keys: usize,
    idle: Duration,
    origin: Instant,
    map: DashMap<K, Entry>,
    /// With the bound exceeded, the table size at which to scan for evictions next.
    scan_at: AtomicUsize,
}

struct Entry {
    breaker: Breaker,
    last_used: AtomicU64,
}

impl<K> Clone for KeyedBreakers<K> {
    fn clone(&self) -> Self {
        KeyedBreakers {
            shared: self.shared.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone> KeyedBreakers<K> {
    /// Breakers of `config`, at most [`DEFAULT_MAX_KEYS`], clean ones forgotten after
    /// [`DEFAULT_IDLE`].
    pub fn new(config: Config) -> Self {
        Self::with_limits(config, DEFAULT_MAX_KEYS, DEFAULT_IDLE)
    }

    /// Breakers of `config`, at most `max_keys` (at least 1), clean ones forgotten after `idle`.
    pub fn with_limits(config: Config, max_keys: usize, idle: Duration) -> Self {
        KeyedBreakers {
            shared: Arc::new(Shared {
                config,
                max_keys: max_keys.max(1),
                idle,
                origin: Instant::now(),
                map: DashMap::new(),
                scan_at: AtomicUsize::new(0),
            }),
        }
    }

    fn now(&self) -> u64 {
        let since = Instant::now().saturating_duration_since(self.shared.origin);
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The breaker of `key`, made if there is none.
    pub fn get(&self, key: &K) -> Breaker {
        let now = self.now();
        if let Some(e) = self.shared.map.get(key) {
            e.last_used.store(now, Ordering::Relaxed);
            return e.breaker.clone();
        }
        let len = self.shared.map.len();
        if len >= self.shared.max_keys && len >= self.shared.scan_at.load(Ordering::Relaxed) {
            self.evict(now);
            // Over the bound even so (every breaker carries failure state): scan again only
            // after another 1/64 of the bound has been added, not on every new key.
            let len = self.shared.map.len();
            let next = if len >= self.shared.max_keys {
                len + (self.shared.max_keys / 64).max(1)
            } else {
                0
            };
            self.shared.scan_at.store(next, Ordering::Relaxed);
        }
        self.shared
            .map
            .entry(key.clone())
            .or_insert_with(|| Entry {
                breaker: Breaker::new(self.shared.config.clone()),
                last_used: AtomicU64::new(now),
            })
            .breaker
            .clone()
    }

    /// The breaker of `key`, if one is kept.
    pub fn peek(&self, key: &K) -> Option<Breaker> {
        self.shared.map.get(key).map(|e| e.breaker.clone())
    }

    /// How many breakers are kept.
    pub fn len(&self) -> usize {
        self.shared.map.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.shared.map.is_empty()
    }

    fn evict(&self, now: u64) {
        let idle = u64::try_from(self.shared.idle.as_nanos()).unwrap_or(u64::MAX);
        // Clean: closed, nothing bad in the window, no call in flight (each holds a clone of
        // the breaker: its outcome must not land in a forgotten one while the host starts
        // afresh), and no run of failures still counting towards a consecutive-failure rule —
        // unless the host has been idle for `idle`: a run that old is let go, or every host
        // that failed once would be kept for ever.
        let consecutive_rule = self.shared.config.consecutive_failures().is_some();
        let clean = |e: &Entry| {
            let c = e.breaker.counts();
            e.breaker.state() == State::Closed
                && c.failures == 0
                && c.slow == 0
                && Arc::strong_count(&e.breaker.core) == 1
                && (!consecutive_rule
                    || e.breaker.consecutive_failures() == 0
                    || now.saturating_sub(e.last_used.load(Ordering::Relaxed)) >= idle)
        };
        let before = self.shared.map.len();
        self.shared.map.retain(|_, e| {
            !(clean(e) && now.saturating_sub(e.last_used.load(Ordering::Relaxed)) >= idle)
        });
        if self.shared.map.len() < self.shared.max_keys {
            tracing::debug!(
                evicted = before - self.shared.map.len(),
                "idle breakers forgotten"
            );
            return;
        }
        // Back under the bound (room for the new key) with the least recently used clean
        // breakers — as many as needed, not one: once the bound was passed by failing hosts,
        // forgetting one per scan let clean breakers grow the table without end.
        let excess = (self.shared.map.len() + 1).saturating_sub(self.shared.max_keys);
        let mut lru: Vec<(u64, K)> = self
            .shared
            .map
            .iter()
            .filter(|e| clean(e.value()))
            .map(|e| (e.value().last_used.load(Ordering::Relaxed), e.key().clone()))
            .collect();
        if lru.len() > excess {
            lru.select_nth_unstable_by_key(excess, |(t, _)| *t);
            lru.truncate(excess);
        }
        for (_, key) in lru {
            // Still clean: it may have recorded a failure since it was looked at.
            self.shared.map.remove_if(&key, |_, e| clean(e));
        }
        tracing::debug!("least recently used clean breakers forgotten");
    }
}

impl<K> fmt::Debug for KeyedBreakers<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreakers")
            .field("max_keys", &self.shared.max_keys)
            .field("idle", &self.shared.idle)
            .finish()
    }
}

/// Applies one circuit breaker per key: a failing host opens its own breaker, and the others
/// stay closed.
///
/// The key comes from the request, which `poll_ready` cannot see, so the breaker is consulted
/// in `call`: a refused request is answered at once without calling the inner service, but the
/// inner service was readied as usual. (For the strict "never poll while open", give each host
/// its own stack with a [`CircuitBreakerLayer`](crate::CircuitBreakerLayer).)
///
/// ```
/// use palisade_breaker::{Config, KeyedCircuitBreakerLayer, State};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let layer = KeyedCircuitBreakerLayer::new(
///     Config::builder().consecutive_failures(1).build()?,
///     |req: &(&'static str, bool)| req.0,
/// );
/// let breakers = layer.breakers().clone();
/// let mut svc = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|(_, fail): (&str, bool)| async move { if fail { Err("down") } else { Ok(()) } });
///
/// let _ = svc.ready().await?.call(("a.example", true)).await;
/// svc.ready().await?.call(("b.example", false)).await?;
/// assert_eq!(breakers.peek(&"a.example").unwrap().state(), State::Open);
/// assert_eq!(breakers.peek(&"b.example").unwrap().state(), State::Closed);
/// # Ok(()) }
/// ```
pub struct KeyedCircuitBreakerLayer<X: Keyer<Req>, Req, C = ErrorsAsFailures> {
    breakers: KeyedBreakers<X::Key>,
    keyer: X,
    classifier: C,
}

impl<X: Keyer<Req>, Req> KeyedCircuitBreakerLayer<X, Req> {
    /// One breaker of `config` per key that `keyer` finds.
    pub fn new(config: Config, keyer: X) -> Self {
        Self::from_breakers(KeyedBreakers::new(config), keyer)
    }

    /// Uses existing keyed breakers.
    pub fn from_breakers(breakers: KeyedBreakers<X::Key>, keyer: X) -> Self {
        KeyedCircuitBreakerLayer {
            breakers,
            keyer,
            classifier: ErrorsAsFailures,
        }
    }
}

impl<X: Keyer<Req>, Req, C> KeyedCircuitBreakerLayer<X, Req, C> {
    /// Classify results with `classifier`.
    pub fn with_classifier<C2>(self, classifier: C2) -> KeyedCircuitBreakerLayer<X, Req, C2> {
        KeyedCircuitBreakerLayer {
            breakers: self.breakers,
            keyer: self.keyer,
            classifier,
        }
    }

    /// The breakers, by key.
    pub fn breakers(&self) -> &KeyedBreakers<X::Key> {
        &self.breakers
    }
}

impl<X: Keyer<Req> + Clone, Req, C: Clone> Clone for KeyedCircuitBreakerLayer<X, Req, C> {
    fn clone(&self) -> Self {
        KeyedCircuitBreakerLayer {
            breakers: self.breakers.clone(),
            keyer: self.keyer.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<X: Keyer<Req>, Req, C> fmt::Debug for KeyedCircuitBreakerLayer<X, Req, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("breakers", &self.breakers)
            .finish()
    }
}

impl<S, X: Keyer<Req> + Clone, Req, C: Clone> Layer<S> for KeyedCircuitBreakerLayer<X, Req, C> {
    type Service = KeyedCircuitBreaker<S, X, Req, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            breakers: self.breakers.clone(),
            keyer: self.keyer.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// The service made by [`KeyedCircuitBreakerLayer`].
pub struct KeyedCircuitBreaker<S, X: Keyer<Req>, Req, C = ErrorsAsFailures> {
    inner: S,
    breakers: KeyedBreakers<X::Key>,
    keyer: X,
    classifier: C,
}

impl<S, X: Keyer<Req>, Req, C> KeyedCircuitBreaker<S, X, Req, C> {
    /// The breakers, by key.
    pub fn breakers(&self) -> &KeyedBreakers<X::Key> {
        &self.breakers
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

impl<S: Clone, X: Keyer<Req> + Clone, Req, C: Clone> Clone for KeyedCircuitBreaker<S, X, Req, C> {
    fn clone(&self) -> Self {
        KeyedCircuitBreaker {
            inner: self.inner.clone(),
            breakers: self.breakers.clone(),
            keyer: self.keyer.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: fmt::Debug, X: Keyer<Req>, Req, C> fmt::Debug for KeyedCircuitBreaker<S, X, Req, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("breakers", &self.breakers)
            .finish()
    }
}

impl<S, X, Req, C> Service<Req> for KeyedCircuitBreaker<S, X, Req, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    X: Keyer<Req>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let breaker = self.breakers.get(&self.keyer.key(&req));
        match breaker.admit() {
            Ticket::Rejected(retry_after) => {
                breaker.count_rejected();
                ResponseFuture::refused(CircuitOpen::new(retry_after))
            }
            Ticket::Pass => ResponseFuture::called(self.inner.call(req), None),
            ticket => {
                let guard = Guard::new(breaker, ticket, self.classifier.clone());
                ResponseFuture::called(self.inner.call(req), Some(guard))
            }
        }
    }
}
