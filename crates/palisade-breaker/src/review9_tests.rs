//! Review 9 of e0a7ade (reviewer's tests; each fails on e0a7ade). Paused tokio time, the
//! hooks of review7/8 (`AT("record")`, `AT("setup")`), a second thread held at a hook.
use super::race_support::*;
use std::sync::mpsc;

// R9-1. A hinted closed failure past its generation check, a reset before its `note_hint`:
// the hint is noted after `move_closed` cleared `retry_until`, so it survives the reset and
// floors the first opening after it (100 s, the cap, instead of the base 1 s). The same
// outcome a moment later (check failed) would be dropped: whether reset forgets it is a race.
#[tokio::test(start_paused = true)]
async fn r9_1_a_hint_of_a_call_admitted_before_a_reset_does_not_survive_it() {
    let b = Breaker::new(cfg(1));
    let t = b.admit();
    let other = b.clone();
    at("record", move || other.reset());
    b.record(t, hinted(3600), None); // stale after the hook: CLOSED 0 -> CLOSED 1
    assert_eq!(b.state(), State::Closed);
    fail(&b); // the first opening since the reset
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        b.open_remaining(),
        Some(Duration::from_secs(1)),
        "reset: no backoff, and no hint of a call admitted before it"
    );
}

// R9-2. The same, across a whole outage: the hinted failure (closed generation 0) is held past
// its check while another failure opens (1), the probe closes it (3), and a new outage opens
// it (4). The old hint then extends that unrelated opening to the cap, where `late_hint`
// only ever floors generation + 1.
#[tokio::test(start_paused = true)]
async fn r9_2_a_held_hint_does_not_extend_an_unrelated_later_opening() {
    let b = Breaker::new(cfg(1));
    let t1 = b.admit();
    let t2 = b.admit();
    let (paused_tx, paused_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let handle = tokio::runtime::Handle::current();
    let a = {
        let b = b.clone();
        std::thread::spawn(move || {
            let _rt = handle.enter();
            at("record", move || {
                paused_tx.send(()).unwrap();
                go_rx.recv().unwrap();
            });
            b.record(t1, hinted(3600), None);
        })
    };
    paused_rx.recv().unwrap(); // t1 passed its check (CLOSED 0)
    b.record(t2, Outcome::FAILURE, None); // OPEN 1, 1 s
    tokio::time::advance(Duration::from_secs(1)).await;
    let p = b.admit();
    assert!(matches!(p, Ticket::Probe(_)), "{p:?}");
    b.record(p, Outcome::Success, None); // CLOSED 3: recovered
    fail(&b); // a new outage: OPEN 4, 1 s
    assert_eq!(b.generation(), 4);
    assert_eq!(b.open_remaining(), Some(Duration::from_secs(1)));
    go_tx.send(()).unwrap();
    a.join().unwrap();
    assert_eq!(
        b.open_remaining(),
        Some(Duration::from_secs(1)),
        "a hint from the previous outage extended this one"
    );
}

// R9-3. `enter_half_open` does not re-read `open_until` under the lock. A caller that read the
// opening as over is preempted before the setup; a late hinted failure (its state's own
// opening, generation + 1) floors that opening to 30 s under the lock; the caller then enters
// half-open anyway and is admitted as a probe: open_remaining() said 30 s a moment before.
#[tokio::test(start_paused = true)]
async fn r9_3_a_hint_floored_before_the_setup_keeps_the_breaker_open() {
    let b = Breaker::new(cfg(2));
    fail(&b);
    let t2 = b.admit();
    let t3 = b.admit();
    b.record(t2, Outcome::FAILURE, None); // OPEN 1, 1 s
    tokio::time::advance(Duration::from_secs(1)).await;
    let (other, seen) = (b.clone(), std::rc::Rc::new(std::cell::Cell::new(None)));
    let seen2 = seen.clone();
    at("setup", move || {
        other.record(t3, hinted(30), None); // late: floors OPEN 1 (generation 0 + 1)
        seen2.set(other.open_remaining());
    });
    let p = b.admit();
    assert_eq!(
        seen.get(),
        Some(Duration::from_secs(30)),
        "the hint floored the opening"
    );
    assert!(
        matches!(p, Ticket::Rejected(Some(_))),
        "admitted as a probe 30 s before the floor: {p:?} ({:?})",
        b.state()
    );
}
