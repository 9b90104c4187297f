//! A regression from a bug-hunting review: the keyed limiter's eviction event read the map's
//! length again while other threads inserted, and its counts underflowed (a panic in debug
//! builds). Alone in its own test binary: tracing caches each event's interest process-wide,
//! and a test elsewhere in the same process could settle it before this one's subscriber is
//! set.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use palisade_ratelimit::{KeyedRateLimiter, Quota};

/// A subscriber that inserts a key into the limiter when the eviction event is about to be
/// recorded, as another thread might: the event's counts read the map's length again.
struct InsertOnEvict {
    limiter: std::sync::Mutex<Option<KeyedRateLimiter<u32>>>,
}

impl tracing::Subscriber for InsertOnEvict {
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        if meta.fields().field("in_debt").is_some() {
            if let Some(l) = self.limiter.lock().unwrap().take() {
                l.check_key(&1_000_000).unwrap();
            }
        }
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test(start_paused = true)]
async fn the_eviction_event_does_not_underflow_when_a_key_arrives_meanwhile() {
    let limiter = KeyedRateLimiter::with_max_keys(
        Quota::per_second(1).unwrap(),
        NonZeroUsize::new(64).unwrap(),
    );
    for k in 0..64u32 {
        limiter.check_key(&k).unwrap();
    }
    tokio::time::advance(Duration::from_secs(2)).await;
    // Half the keys in debt again, half fresh: the next new key evicts the fresh ones.
    for k in 0..32u32 {
        limiter.check_key(&k).unwrap();
    }
    let _g = tracing::subscriber::set_default(Arc::new(InsertOnEvict {
        limiter: std::sync::Mutex::new(Some(limiter.clone())),
    }));
    limiter.check_key(&500).unwrap();
    assert!(limiter.len() <= 64, "{} keys", limiter.len());
}
