//! Review 6 of 4c3ccac, loom models: the lock-free slot take of an admission racing a probe's
//! locked steps; at rest the pause and the published deadline follow the rules.
use super::loom_tests::opened;
use super::*;
use loom::thread;

/// In the half-open the patience names: the pause runs iff the rules say so, and the
/// published deadline is the patience's.
fn check_at_rest(b: &Breaker) {
    let core = &b.core;
    let p = core.patience.lock().unwrap();
    if core.state.0.load(Ordering::SeqCst) != pack(p.generation, HALF_OPEN) {
        return;
    }
    let taken = core.slots_taken(p.generation);
    let paused = p.queued != 0 && taken <= p.queued;
    assert_eq!(p.pause_from.is_some(), paused, "taken {taken}: {p:?}");
    let wait = nanos(core.config.max_half_open_wait);
    let ceiling = p.start + wait + nanos(core.config.max_probe_queue_wait);
    let until = if paused {
        ceiling
    } else {
        (p.start + p.paused + wait).min(ceiling)
    };
    assert_eq!(core.patience_until.load(Ordering::SeqCst), until, "{p:?}");
}

/// A queued (pause running); another caller is admitted (take_probe lock-free, then its
/// step) while A's caller sends A, or gives A up.
#[test]
fn r6_an_admission_racing_a_send_or_an_unqueue_leaves_the_pause_by_the_rules() {
    for send in [true, false] {
        loom::model(move || {
            let b = opened(2);
            assert!(matches!(b.admit(), Ticket::Probe(_)));
            let mark_a = b.probe_queued().expect("half-open");
            assert!(b.core.pause_running());
            let b2 = b.clone();
            let h = thread::spawn(move || b2.admit());
            if send {
                mark_a.sent();
            } else {
                drop(mark_a);
            }
            let t = h.join().unwrap();
            assert!(matches!(t, Ticket::Probe(_)), "{t:?}");
            check_at_rest(&b);
        });
    }
}

/// A queued, B out; B answers with a success (close_after 1 would close: use 2 slots and an
/// ignored answer instead) while a third caller is admitted into the freed slot.
#[test]
fn r6_a_release_racing_an_admission_leaves_the_pause_by_the_rules() {
    loom::model(|| {
        let b = opened(2);
        assert!(matches!(b.admit(), Ticket::Probe(_)));
        let _mark_a = b.probe_queued().expect("half-open");
        let tb = b.admit();
        assert!(matches!(tb, Ticket::Probe(_)));
        let b2 = b.clone();
        let h = thread::spawn(move || b2.admit());
        b.record(tb, Outcome::Ignore, None);
        let _t = h.join().unwrap();
        check_at_rest(&b);
    });
}
