//! Review 5 of 4f95f55: the half-open pause bookkeeping under concurrency, simulated
//! deterministically. A hook runs "another thread's" steps at a chosen point of this thread, as
//! if it were preempted there: `AFTER_CAS` (right after a transition's CAS), `AT("patience")`
//! (just before the first step that takes the patience lock: a probe's step, or a setup),
//! `AT("setup")` (a caller leaving an opening, before the setup) and `AT("publish")` (a
//! transition's winner, before its stores). Paused tokio time: no wall clock.
//!
//! Config throughout: open 1 s, patience (max_half_open_wait) 5 s, max_probe_queue_wait 7 s,
//! so the ceiling is 12 s.
//!
//! On 4f95f55 each race test failed (the pause bookkeeping was separate atomics, read and
//! written in several steps, and `queued`/`runs` carried 32-bit wrapping-order tags); each has
//! a control that runs the same steps without the race. The fix keeps that bookkeeping, with
//! its whole generation, under one lock that only a probe's steps and a half-open's setup take
//! (the hook points were inside those steps; now the other thread's steps can only come before
//! or after them), and publishes when the patience is spent for the refused callers to read.
use super::race_support::*;
use std::cell::RefCell;
use std::rc::Rc;

fn cfg(probes: u16) -> Config {
    builder()
        .half_open_probes(probes)
        .open_duration(Duration::from_secs(1), 1, Duration::from_secs(1))
        .build()
        .unwrap()
}

async fn secs(s: f64) {
    tokio::time::advance(Duration::from_secs_f64(s)).await;
}

/// Admits every 0.5 s from `at_s` (seconds into the half-open) until the breaker leaves
/// the half-open; the second at which it did.
async fn reopens_at(b: &Breaker, mut at_s: f64, limit_s: f64) -> Option<f64> {
    while at_s <= limit_s {
        let t = b.admit();
        assert!(!matches!(t, Ticket::Probe(_)), "all slots are held: {t:?}");
        if b.state() != State::HalfOpen {
            return Some(at_s);
        }
        secs(0.5).await;
        at_s += 0.5;
    }
    None
}

// -------------------------------------------------------------------------------------------
// R5-1. A pause begun while the half-open is being entered is wiped by the winner's publish.

/// Probe A is admitted and marked queued by another thread between the transition's CAS and
/// its publication (`since`/`stamp`): the winner then stores `paused = 0, pause_from = 0`
/// (transition, the reset for a fresh half-open) over A's running pause. A waits 4 s, is
/// given up unsent; probe B goes out unmarked and hangs (a mixed stack). By the rules 4 s were
/// paused: 6 s in, 2 s of the 5 s patience are spent. The lost pause counts them as spent.
async fn lost_pause(racing: bool) -> Option<f64> {
    let b = Breaker::new(cfg(1));
    trip(&b);
    secs(1.0).await;
    let got: Rc<RefCell<Option<(Ticket, QueuedProbe)>>> = Rc::default();
    let mark_a = {
        let other = b.clone();
        let got = got.clone();
        move || {
            let a = probe(other.admit());
            let mark = other.probe_queued().expect("half-open");
            *got.borrow_mut() = Some((a, mark));
        }
    };
    if racing {
        // "Another thread" admits and marks A right after this thread's CAS to half-open.
        AFTER_CAS.with(|h| *h.borrow_mut() = Some(Box::new(mark_a)));
        let t = b.admit(); // enters half-open: the hook runs inside
        assert!(matches!(t, Ticket::Rejected(_)), "{t:?}");
    } else {
        mark_a(); // the same steps, after the half-open was entered
    }
    assert!(hooks_fired());
    assert_eq!(b.state(), State::HalfOpen);
    let (a, mark) = got.borrow_mut().take().unwrap();
    secs(4.0).await; // A waits below the breaker: paused
    drop(mark); // A's caller gives up before it was sent
    b.release(a);
    let _b = probe(b.admit()); // B goes out (unmarked) and hangs
    secs(2.0).await;
    reopens_at(&b, 6.0, 20.0).await
}

/// Control: the same steps without the race. The 4 s paused are excluded: it reopens at 9 s.
#[tokio::test(start_paused = true)]
async fn r5_1_control_a_pause_from_the_half_opens_start_is_excluded() {
    assert_eq!(lost_pause(false).await, Some(9.0));
}

#[tokio::test(start_paused = true)]
async fn r5_1_a_pause_begun_while_the_half_open_is_published_is_not_lost() {
    let at = lost_pause(true).await;
    assert_eq!(
        at,
        Some(9.0),
        "A queued 0-4 s (paused), B out from 4 s and hung: the 5 s patience is spent at 9 s; \
         the breaker reopened at {at:?} s"
    );
}

// -------------------------------------------------------------------------------------------
// R5-2. A pause decided on a stale read starts after the probe it waited for went out.

/// Every probe marked (as palisade-client does), two slots. B is marked (queued: paused);
/// A is admitted (one more out until marked: the pause ends); A's caller marks it, and
/// `repause` reads "queued 2, none out, no pause running" — then, before it stores
/// `pause_from`, B's caller sends B (restart; `repause` sees B out and nothing running).
/// A's `repause` now starts a pause with B out: `pause_from` stays set while B hangs with A
/// queued behind it (the README's own case: "a probe queued behind one that is out does not
/// pause it"), all that time counts as paused, and the half-open holds until the ceiling.
async fn stale_pause_start(racing: bool) -> Option<f64> {
    let b = Breaker::new(cfg(2));
    trip(&b);
    secs(1.0).await;
    let _bt = probe(b.admit()); // enters half-open
    let mark_b = b.probe_queued().expect("half-open");
    let _at = probe(b.admit());
    let mark_b = Rc::new(RefCell::new(Some(mark_b)));
    let send_b = {
        let mark_b = mark_b.clone();
        move || mark_b.borrow_mut().take().unwrap().sent()
    };
    let _mark_a = if racing {
        at("patience", send_b);
        b.probe_queued().expect("half-open") // the hook runs inside
    } else {
        let m = b.probe_queued().expect("half-open");
        send_b();
        m
    };
    assert!(hooks_fired());
    // B out (sent at 0 s) and hung; A queued behind it.
    reopens_at(&b, 0.0, 20.0).await
}

#[tokio::test(start_paused = true)]
async fn r5_2_control_a_hung_probe_with_one_queued_behind_reopens_after_the_patience() {
    assert_eq!(stale_pause_start(false).await, Some(5.0));
}

#[tokio::test(start_paused = true)]
async fn r5_2_a_pause_decided_before_a_send_does_not_run_after_it() {
    let at = stale_pause_start(true).await;
    assert_eq!(
        at,
        Some(5.0),
        "B sent at 0 s and hung, A queued behind it (not a pause): 5 s patience; the breaker \
         left the half-open at {at:?} s (ceiling 12 s)"
    );
}

// -------------------------------------------------------------------------------------------
// R5-3. Two `repause`s ending the same pause both add it.

/// Every probe marked, two slots. P1 is sent at 0 s and dropped by its caller at 1 s (later
/// sends no longer restart the patience). A is queued 1-5 s (paused). At 5 s A is sent; its
/// `repause` reads `pause_from` (1 s) — and before it adds and clears, another caller is
/// admitted as B (its `repause` adds the same 4 s and clears). `paused` is 8 s. A and B hang.
/// By the rules 1 s + (t - 5 s) are spent: it reopens at 9 s. With 8 s "paused", at 12 s
/// (the ceiling).
async fn double_count(racing: bool) -> Option<f64> {
    let b = Breaker::new(cfg(2));
    trip(&b);
    secs(1.0).await;
    let p1 = probe(b.admit()); // enters half-open: 0 s
    b.probe_queued().expect("half-open").sent();
    secs(1.0).await;
    b.release(p1); // P1's caller gives up: sent, dropped undecided
    let _a = probe(b.admit());
    let mark_a = b.probe_queued().expect("half-open"); // 1 s: paused
    secs(4.0).await;
    let admit_b = {
        let other = b.clone();
        move || {
            let _bt = probe(other.admit());
            other.probe_queued().expect("half-open").sent();
        }
    };
    if racing {
        at("patience", admit_b);
        mark_a.sent(); // 5 s; the hook runs inside its repause
    } else {
        mark_a.sent();
        admit_b();
    }
    assert!(hooks_fired());
    eprintln!("paused = {:?}", Duration::from_nanos(b.core.paused_ns()));
    reopens_at(&b, 5.0, 20.0).await
}

#[tokio::test(start_paused = true)]
async fn r5_3_control_the_pause_is_excluded_once() {
    assert_eq!(double_count(false).await, Some(9.0));
}

#[tokio::test(start_paused = true)]
async fn r5_3_a_pause_ended_by_two_threads_is_counted_once() {
    let at = double_count(true).await;
    assert_eq!(
        at,
        Some(9.0),
        "1 s out, 4 s paused, then A and B out and hung: 5 s patience spent at 9 s; the \
         breaker left the half-open at {at:?} s"
    );
}

// -------------------------------------------------------------------------------------------
// R5-4. A late `repause` of an earlier half-open writes into the next one.

/// One slot, every probe marked. In half-open g, A's caller marks A; `repause(g)` checks the
/// state word (half-open g), reads "queued, none out, no pause" — and before it stores
/// `pause_from`, A fails, the breaker reopens, the open duration passes (simulated: the
/// hook sets `open_until` to 0, as the loom tests do) and half-open g+2 begins (its
/// transition resets the pause), B is admitted, marked and sent, and hangs. The late store
/// then starts a pause in g+2 (no probe queued there): it runs until the ceiling.
async fn inherited_pause(racing: bool) -> Option<f64> {
    let b = Breaker::new(cfg(1));
    trip(&b);
    secs(1.0).await;
    let a = probe(b.admit()); // half-open g
    let g = b.generation();
    let next = {
        let other = b.clone();
        move || {
            other.record(a, Outcome::FAILURE, None); // open g+1
            other.core.open_until.store(0, Ordering::SeqCst); // its duration has passed
            let _bt = probe(other.admit()); // half-open g+2
            other.probe_queued().expect("half-open").sent(); // B out, hangs
        }
    };
    let stale_mark = if racing {
        at("patience", next);
        b.probe_queued() // A's mark; the hook runs inside
    } else {
        let m = b.probe_queued();
        next();
        m
    };
    assert!(hooks_fired());
    drop(stale_mark);
    assert_eq!((b.state(), b.generation()), (State::HalfOpen, g + 2));
    eprintln!(
        "after: pause running = {}, paused = {}",
        b.core.pause_running(),
        b.core.paused_ns()
    );
    reopens_at(&b, 0.0, 20.0).await
}

#[tokio::test(start_paused = true)]
async fn r5_4_control_a_hung_probe_reopens_after_the_patience() {
    assert_eq!(inherited_pause(false).await, Some(5.0));
}

#[tokio::test(start_paused = true)]
async fn r5_4_a_late_repause_of_an_earlier_half_open_does_not_pause_the_next() {
    let at = inherited_pause(true).await;
    assert_eq!(
        at,
        Some(5.0),
        "B sent at the half-open's start and hung, nothing queued in that half-open: 5 s \
         patience; the breaker left the half-open at {at:?} s (ceiling 12 s)"
    );
}

// -------------------------------------------------------------------------------------------
// R5-5. A late publisher (past its stamp check) wipes a newer half-open's pause.

/// This thread moves open → half-open g+1 and passes `stamp < g+1`; before its stores, the
/// half-open g+1 fails its probe, reopens (g+2, published), the opening ends (simulated:
/// `open_until` = 0) and half-open g+3 begins (published) with probe B marked queued. This
/// thread's stores then reset `paused`/`pause_from` (and `since`) of g+3. B waits 4 s and is
/// given up unsent; C goes out unmarked and hangs: as in R5-1, the 4 s paused count as spent.
#[tokio::test(start_paused = true)]
async fn r5_5_a_late_publish_does_not_wipe_a_newer_half_opens_pause() {
    let b = Breaker::new(cfg(1));
    trip(&b);
    secs(1.0).await;
    let got: Rc<RefCell<Option<(Ticket, QueuedProbe)>>> = Rc::default();
    {
        let other = b.clone();
        let got = got.clone();
        at("publish", move || {
            let a = probe(other.admit()); // half-open g+1 (state word), stamp still g
            other.record(a, Outcome::FAILURE, None); // open g+2, published
            other.core.open_until.store(0, Ordering::SeqCst);
            let bt = probe(other.admit()); // half-open g+3, published
            let mark = other.probe_queued().expect("half-open");
            *got.borrow_mut() = Some((bt, mark));
        });
    }
    let g = b.generation();
    let t = b.admit(); // open → half-open g+1; the hook runs inside its publication
    assert!(matches!(t, Ticket::Rejected(_)), "{t:?}");
    assert!(hooks_fired());
    assert_eq!((b.state(), b.generation()), (State::HalfOpen, g + 3));
    let (bt, mark) = got.borrow_mut().take().unwrap();
    secs(4.0).await;
    drop(mark);
    b.release(bt);
    let _c = probe(b.admit());
    secs(2.0).await;
    let at = reopens_at(&b, 6.0, 20.0).await;
    assert_eq!(
        at,
        Some(9.0),
        "B queued 0-4 s (paused), C out from 4 s and hung: spent at 9 s; left at {at:?} s"
    );
}

// -------------------------------------------------------------------------------------------
// R5-6 (not concurrency). `queued` and `runs` keep the 32-bit wrapping-order tags the commit
// removed from `half_open`.

/// As if 2^31 transitions had happened while closed (2^31 `reset()`s; generation set
/// directly, as generation_wrap_tests.rs does): the last marked half-open's tag in `queued`
/// now looks *newer* than the current one, so `queue_probe` refuses — `probe_queued()` is
/// `None` in half-open for the next 2^31 generations and the pause is silently off. (`runs`
/// has the same check: `count_run` returns (0, 0) without counting, so sends always restart
/// the patience — a wedge, if `queued`'s tag is recent and `runs`' is 2^31 old.)
#[tokio::test(start_paused = true)]
async fn r5_6_a_half_open_2_pow_31_generations_after_the_last_marked_one_gives_marks() {
    let b = Breaker::new(cfg(1));
    trip(&b); // 1
    secs(1.0).await;
    let a = probe(b.admit()); // 2: half-open
    b.probe_queued().expect("half-open").sent();
    b.record(a, Outcome::Success, None); // 3: closed
    let s = b.core.state.0.load(Ordering::SeqCst);
    let g = (s >> 3) + (1 << 31) - 2; // the next half-open is 2 + 2^31 + 1
    b.core.state.0.store(pack(g, CLOSED), Ordering::SeqCst);
    b.core.stamp.store(g, Ordering::SeqCst);
    trip(&b);
    secs(1.0).await;
    let _p = probe(b.admit());
    assert_eq!(b.state(), State::HalfOpen);
    assert!(
        b.probe_queued().is_some(),
        "half-open generation {} refuses to mark a probe",
        b.generation()
    );
}

// -------------------------------------------------------------------------------------------
// R5-7. The slot setup's check of the state word and its CAS on `half_open` are two steps:
// the CAS only sees `half_open` unchanged (ABA) — and the stale word of a half-open 2^32
// generations back is a value the new half-open reaches.

/// A half-open (generation 2) ends with its one probe out (hung; force_open, reset). 2^32
/// generations later (set directly, as generation_wrap_tests.rs does) the breaker trips and
/// its opening ends: the slots word still reads (tag 2, taken 1), and the next half-open,
/// 2^32 + 2, has tag 2. This thread's setup reads that word and checks the state word (still
/// the opening) — then another thread sets up the slots, enters the half-open and takes the
/// one probe: the word is (tag 2, taken 1) again. This thread's CAS succeeds over it (same
/// value) and resets the slots to (tag 2, taken 0): its own admission then takes a second
/// probe. One slot, two probes out. (Loom finds the same: review5_loom.rs.)
async fn probes_out_after_a_wrap(racing: bool) -> usize {
    let b = Breaker::new(cfg(1));
    trip(&b); // 1
    secs(1.0).await;
    let _hung = probe(b.admit()); // 2: half-open, its probe never answers
    b.force_open(); // 3
    b.reset(); // 4
    let s = b.core.state.0.load(Ordering::SeqCst);
    let g = (s >> 3) + (1 << 32) - 4; // as if 2^32 - 4 resets: closed, 2^32
    b.core.state.0.store(pack(g, CLOSED), Ordering::SeqCst);
    b.core.stamp.store(g, Ordering::SeqCst);
    trip(&b); // 2^32 + 1: open
    secs(1.0).await;
    let theirs: Rc<RefCell<Option<Ticket>>> = Rc::default();
    let other_admits = {
        let other = b.clone();
        let theirs = theirs.clone();
        move || *theirs.borrow_mut() = Some(other.admit())
    };
    let mine = if racing {
        at("setup", other_admits);
        b.admit()
    } else {
        other_admits();
        b.admit()
    };
    assert!(hooks_fired());
    let theirs = theirs.borrow_mut().take().unwrap();
    assert_eq!(theirs, Ticket::Probe((1 << 32) + 2));
    eprintln!("theirs {theirs:?}, mine {mine:?}");
    [theirs, mine]
        .iter()
        .filter(|t| matches!(t, Ticket::Probe(_)))
        .count()
}

#[tokio::test(start_paused = true)]
async fn r5_7_control_one_slot_one_probe_after_a_wrap() {
    assert_eq!(probes_out_after_a_wrap(false).await, 1);
}

#[tokio::test(start_paused = true)]
async fn r5_7_racing_leavers_after_a_wrap_take_one_probe_of_one_slot() {
    let n = probes_out_after_a_wrap(true).await;
    assert_eq!(
        n, 1,
        "one probe slot, {n} probes admitted in half-open 2^32 + 2"
    );
}
