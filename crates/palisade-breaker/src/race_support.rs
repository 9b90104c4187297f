//! What the race tests (`review5_tests.rs` to `review11_tests.rs`) share: one configuration,
//! the hooks standing for a preemption, and one-line steps of a caller.
pub(super) use super::review_hook::{AFTER_CAS, AT, LOCKS};
pub(super) use super::*;

/// The tests' breaker, before each file's changes: trips on one failure, one probe slot,
/// closes on one success, opens for 1 s (doubling, up to 100 s), no jitter, a 5 s patience and
/// 7 s more for a queued probe (so the ceiling is 12 s).
pub(super) fn builder() -> crate::ConfigBuilder {
    Config::builder()
        .consecutive_failures(1)
        .half_open_probes(1)
        .close_after(1)
        .open_duration(Duration::from_secs(1), 2, Duration::from_secs(100))
        .jitter(0)
        .max_half_open_wait(Duration::from_secs(5))
        .max_probe_queue_wait(Duration::from_secs(7))
}

/// [`builder`] with a consecutive-failure rule of `consecutive`.
pub(super) fn cfg(consecutive: u32) -> Config {
    builder().consecutive_failures(consecutive).build().unwrap()
}

/// One call admitted while closed, and failed.
pub(super) fn fail(b: &Breaker) {
    let t = b.admit();
    assert!(matches!(t, Ticket::Closed(_)), "{t:?}");
    b.record(t, Outcome::FAILURE, None);
}

/// [`fail`], which opens it.
pub(super) fn trip(b: &Breaker) {
    fail(b);
    assert_eq!(b.state(), State::Open);
}

/// `t`, which must be a probe.
pub(super) fn probe(t: Ticket) -> Ticket {
    assert!(matches!(t, Ticket::Probe(_)), "not a probe: {t:?}");
    t
}

/// A failure whose upstream asked for `secs` seconds.
pub(super) fn hinted(secs: u64) -> Outcome {
    Outcome::Failure {
        retry_after: Some(Duration::from_secs(secs)),
    }
}

/// Paused tokio time moves `s` seconds.
pub(super) async fn secs(s: u64) {
    tokio::time::advance(Duration::from_secs(s)).await;
}

/// "Another thread" runs `f` when this one reaches `point` (a `review_hook::fire`).
pub(super) fn at(point: &'static str, f: impl FnMut() + 'static) {
    AT.with(|h| h.borrow_mut().push((point, Box::new(f))));
}

/// "Another thread" runs `f` right after this one's next transition CAS.
pub(super) fn after_cas(f: impl FnMut() + 'static) {
    AFTER_CAS.with(|h| *h.borrow_mut() = Some(Box::new(f)));
}

/// Every hook set has run.
pub(super) fn hooks_fired() -> bool {
    AT.with(|h| h.borrow().is_empty()) && AFTER_CAS.with(|h| h.borrow().is_none())
}
