//! Review 6 of 4c3ccac (the half-open patience under one lock). Deterministic, paused tokio
//! time; hooks as in review5_tests.rs.
use super::race_support::*;

fn cfg(probes: u16) -> Config {
    builder()
        .half_open_probes(probes)
        .open_duration(Duration::from_secs(1), 1, Duration::from_secs(100))
        .build()
        .unwrap()
}

/// R6-2 (older than 4c3ccac; what R5-5 left). `publish` checked `stamp < to` and then stored
/// `since`/`open_until` in separate steps: a winner preempted between them overwrote a newer
/// state's values. (Now the check and the stores are one step under the patience lock, and
/// the `publish` hook stands for a preemption just before it.) Here this thread opens with a
/// 60 s Retry-After; before its stores, the handle forces open, resets and the breaker trips
/// again (a plain 1 s opening, published). The late store gives that newer opening 60 s.
#[tokio::test(start_paused = true)]
async fn r6_2_a_late_open_publish_does_not_stretch_a_newer_opening() {
    let b = Breaker::new(cfg(1));
    let t = b.admit();
    let other = b.clone();
    AT.with(|h| {
        h.borrow_mut().push((
            "publish",
            Box::new(move || {
                other.force_open();
                other.reset(); // clears the Retry-After floor
                trip(&other); // a fresh 1 s opening, published (stamp = its generation)
            }),
        ))
    });
    b.record(
        t,
        Outcome::Failure {
            retry_after: Some(Duration::from_secs(60)),
        },
        None,
    );
    assert!(AT.with(|h| h.borrow().is_empty()));
    assert_eq!((b.state(), b.generation()), (State::Open, 4));
    tokio::time::advance(Duration::from_secs(1)).await;
    let t = b.admit();
    assert!(
        matches!(t, Ticket::Probe(_)),
        "the opening of generation 4 lasts 1 s; 1 s later: {t:?}, open_remaining {:?}",
        b.open_remaining()
    );
}
