//! Review 11 of 720c129 (no bug found): its checks kept as tests. A caller that read an opening
//! as over and is preempted past a floor still makes progress (p1) or refuses with the time
//! left (p2); a failure whose own record trips is floored by its hint (p3); a hint arriving
//! after its outage moved on is dropped (p4); a stale failure without a hint takes no lock (p5).
use super::race_support::*;
use std::sync::mpsc;

// A leaver with a stale `now` (read before a floor that has since passed) returns from the
// setup, and admit's loop re-reads the clock: it becomes the probe, no spin, no refusal.
#[tokio::test(start_paused = true)]
async fn p1_stale_now_past_a_floor_loops_and_progresses() {
    let b = Breaker::new(cfg(2));
    let t = b.admit();
    b.record(t, Outcome::FAILURE, None);
    let t2 = b.admit();
    let t3 = b.admit();
    b.record(t2, Outcome::FAILURE, None); // OPEN 1, 1 s
    tokio::time::advance(Duration::from_secs(1)).await;
    let (paused_tx, paused_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let handle = tokio::runtime::Handle::current();
    let a = {
        let b = b.clone();
        std::thread::spawn(move || {
            let _rt = handle.enter();
            AT.with(|h| {
                h.borrow_mut().push((
                    "setup",
                    Box::new(move || {
                        paused_tx.send(()).unwrap();
                        go_rx.recv().unwrap();
                    }),
                ))
            });
            b.admit()
        })
    };
    paused_rx.recv().unwrap(); // A read now = 1 s, the opening over
    b.record(t3, hinted(2), None); // late: floors OPEN 1 to 3 s
    assert_eq!(b.open_remaining(), Some(Duration::from_secs(2)));
    tokio::time::advance(Duration::from_secs(3)).await; // past the floor
    go_tx.send(()).unwrap();
    let got = a.join().unwrap();
    assert!(matches!(got, Ticket::Probe(2)), "{got:?}");
}

// Same, but the floor is still in force when A resumes: refused with the time left.
#[tokio::test(start_paused = true)]
async fn p2_stale_now_before_the_floor_refuses_with_time_left() {
    let b = Breaker::new(cfg(2));
    let t = b.admit();
    b.record(t, Outcome::FAILURE, None);
    let t2 = b.admit();
    let t3 = b.admit();
    b.record(t2, Outcome::FAILURE, None);
    tokio::time::advance(Duration::from_secs(1)).await;
    let other = b.clone();
    AT.with(|h| {
        h.borrow_mut()
            .push(("setup", Box::new(move || other.record(t3, hinted(2), None))))
    });
    let got = b.admit();
    assert_eq!(got, Ticket::Rejected(Some(Duration::from_secs(2))));
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(matches!(b.admit(), Ticket::Probe(2)));
}

// Own failure opens: closed (note, then open) and probe (note, then open) both floored.
#[tokio::test(start_paused = true)]
async fn p3_own_trip_is_floored() {
    let b = Breaker::new(cfg(1));
    let t = b.admit();
    b.record(t, hinted(30), None);
    assert_eq!(b.open_remaining(), Some(Duration::from_secs(30)));
    tokio::time::advance(Duration::from_secs(30)).await;
    let p = b.admit();
    assert!(matches!(p, Ticket::Probe(_)));
    b.record(p, hinted(50), None);
    assert_eq!(b.open_remaining(), Some(Duration::from_secs(50)));
}

// A closed call's hint that comes back once its opening has moved on to half-open (same
// outage) is dropped: the next opening is not floored by it.
#[tokio::test(start_paused = true)]
async fn p4_hint_after_the_opening_ended_same_outage_is_dropped() {
    let b = Breaker::new(cfg(1));
    let t1 = b.admit();
    let t2 = b.admit();
    b.record(t2, Outcome::FAILURE, None); // OPEN 1, 1 s
    tokio::time::advance(Duration::from_secs(1)).await;
    let p = b.admit(); // HALF_OPEN 2
    assert!(matches!(p, Ticket::Probe(2)));
    b.record(t1, hinted(3600), None); // stale, state HALF_OPEN 2: dropped
    b.record(p, Outcome::FAILURE, None); // OPEN 3, 2 s
    assert_eq!(
        b.open_remaining(),
        Some(Duration::from_secs(2)),
        "hint dropped"
    );
}

// Non-hinted paths take no lock (closed failures, stale outcomes without a hint).
#[tokio::test(start_paused = true)]
async fn p5_stale_unhinted_takes_no_lock() {
    let b = Breaker::new(cfg(1));
    let t1 = b.admit();
    let t2 = b.admit();
    b.record(t2, Outcome::FAILURE, None);
    let at = super::review_hook::LOCKS.with(|n| n.get());
    b.record(t1, Outcome::FAILURE, None);
    b.record(t1, hinted(5), None); // hinted stale into its opening: one lock
    assert_eq!(super::review_hook::LOCKS.with(|n| n.get()) - at, 1);
    b.reset();
    let at = super::review_hook::LOCKS.with(|n| n.get());
    b.record(t1, hinted(5), None); // stale, state CLOSED 3: pre-check, no lock
    assert_eq!(super::review_hook::LOCKS.with(|n| n.get()) - at, 0);
}
