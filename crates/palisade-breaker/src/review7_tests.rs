//! Review 7 of fd32e39. Deterministic, paused tokio time; hooks as in review5_tests.rs, plus
//! two test-only points: `AT("open")` (an opener between computing its duration and its CAS)
//! and `AT("record")` (a closed outcome past its generation check, before its writes to the
//! window and the consecutive count). Each failed on fd32e39.
use super::race_support::*;

// -------------------------------------------------------------------------------------------
// R7-1. `open` counts the opening (`openings += 1`) after its CAS; `reset` clears `openings`
// before its own CAS. A reset that lands between the two leaves `openings = 1` on a breaker
// just reset: its next opening is doubled ("reset: ... no backoff").

#[tokio::test(start_paused = true)]
async fn r7_1_a_reset_racing_an_opening_leaves_no_backoff() {
    let b = Breaker::new(cfg(1));
    let other = b.clone();
    after_cas(move || other.reset()); // the handle, while the opener is between CAS and count
    fail(&b);
    assert!(hooks_fired());
    assert_eq!(b.state(), State::Closed, "reset won");
    fail(&b); // the first opening since the reset
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        b.open_remaining(),
        Some(Duration::from_secs(1)),
        "the first opening after a reset lasts the base (openings = {})",
        b.core.openings.load(Ordering::SeqCst)
    );
}

// R7-2. `close` clears `openings` after its CAS. A failure of the new closed generation that
// opens the breaker in between reads the old count: the first opening after a recovery gets
// the full backoff of the outage before it (and the count is then zeroed under it).
#[tokio::test(start_paused = true)]
async fn r7_2_an_opening_racing_a_close_starts_from_the_base() {
    let b = Breaker::new(cfg(1));
    fail(&b); // opening 1: 1 s
    secs(1).await;
    let p = b.admit();
    assert!(matches!(p, Ticket::Probe(_)), "{p:?}");
    b.record(p, Outcome::FAILURE, None); // opening 2: 2 s
    assert_eq!(b.open_remaining(), Some(Duration::from_secs(2)));
    secs(2).await;
    let p = b.admit();
    assert!(matches!(p, Ticket::Probe(_)), "{p:?}");
    let other = b.clone();
    // Right after the closing CAS, a call of the new closed generation fails.
    after_cas(move || fail(&other));
    b.record(p, Outcome::Success, None);
    assert!(hooks_fired());
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        b.open_remaining(),
        Some(Duration::from_secs(1)),
        "closing from half-open resets the backoff: the next opening lasts the base"
    );
}

// R7-3. `open` reads the Retry-After floor before its CAS. A failing call that noted a 60 s
// Retry-After just after that read, and loses the CAS, has its hint dropped: the opening lasts
// the base, 1 s, and a probe goes out 59 s before the upstream asked.
#[tokio::test(start_paused = true)]
async fn r7_3_a_retry_after_noted_before_the_opening_is_its_floor() {
    let b = Breaker::new(cfg(1));
    let t1 = b.admit(); // a timeout, no hint
    let t2 = b.admit(); // a 503 with Retry-After: 60
    let other = b.clone();
    // t2's thread runs `note_hint`, and is preempted before it reads the state again.
    at("open", move || {
        other
            .core
            .note_hint(Duration::from_secs(60), pack(0, CLOSED))
    });
    b.record(t1, Outcome::FAILURE, None);
    assert!(hooks_fired());
    // t2's thread resumes: the state moved, its outcome is stale (its hint was noted first).
    b.record(
        t2,
        Outcome::Failure {
            retry_after: Some(Duration::from_secs(60)),
        },
        None,
    );
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        b.open_remaining(),
        Some(Duration::from_secs(60)),
        "a Retry-After noted before the opening's CAS floors it"
    );
}

// R7-4. A closed outcome checks its generation, then writes the window and the consecutive
// count. `reset` (window emptied, count zeroed, then its CAS) landing in between: the outcome
// of the old generation is written into the reset breaker — one stale failure and one fresh
// one trip a two-in-a-row rule.
#[tokio::test(start_paused = true)]
async fn r7_4_a_stale_closed_failure_does_not_land_after_a_reset() {
    let b = Breaker::new(cfg(2));
    let t = b.admit();
    let other = b.clone();
    at("record", move || other.reset());
    b.record(t, Outcome::FAILURE, None);
    assert!(hooks_fired());
    assert_eq!(b.generation(), 1, "reset moved it to generation 1");
    assert_eq!(
        b.consecutive_failures(),
        0,
        "a failure admitted before the reset counts in the reset breaker's run"
    );
    // (The window may still hold it: an outcome past its check is written; only the
    // consecutive count is kept per generation. README: one stale outcome, no more.)
    fail(&b); // one failure of generation 1
    assert_eq!(
        b.state(),
        State::Closed,
        "one failure of a two-in-a-row rule"
    );
}

// R7-6 (single thread). The Retry-After floor outlives the recovery it was about: a 503 with
// Retry-After: 3600 opens the breaker (held to the 100 s cap); 100 s later a probe succeeds
// and the breaker closes (the backoff is reset). 10 s later an unrelated failure opens it again
// and the old hint, still an hour "in the future", makes that opening the cap (100 s) instead
// of the base (1 s) — and every opening for the next hour.
#[tokio::test(start_paused = true)]
async fn r7_6_a_retry_after_does_not_outlive_a_close() {
    let b = Breaker::new(cfg(1));
    let t = b.admit();
    b.record(
        t,
        Outcome::Failure {
            retry_after: Some(Duration::from_secs(3600)),
        },
        None,
    );
    assert_eq!(b.open_remaining(), Some(Duration::from_secs(100)));
    secs(100).await;
    let p = b.admit();
    assert!(matches!(p, Ticket::Probe(_)), "{p:?}");
    b.record(p, Outcome::Success, None);
    assert_eq!(b.state(), State::Closed, "the upstream answered: recovered");
    secs(10).await;
    fail(&b); // a timeout, no hint
    assert_eq!(
        b.open_remaining(),
        Some(Duration::from_secs(1)),
        "an opening after a recovery lasts the base"
    );
}
