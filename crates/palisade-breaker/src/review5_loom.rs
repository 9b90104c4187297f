//! Review 5 of 4f95f55, loom models: the half-open slot setup conditioned on the state word,
//! and the pause bookkeeping's consistency at quiescence (both broken on 4f95f55, fixed by the
//! patience lock).
use super::loom_tests::opened;
use super::*;
use loom::thread;

fn is_probe(t: Ticket) -> bool {
    matches!(t, Ticket::Probe(_))
}

/// Two callers race to leave the same opening over slots that look *in use* for the next
/// generation (its tag, all slots taken: a stale word 2^32 generations old). Exactly one gets
/// the single probe: the setup is never lost, and never done twice over a taken slot.
#[test]
fn racing_leavers_over_stale_slots_set_them_up_once() {
    loom::model(|| {
        let b = opened(1);
        let next = b.generation() + 1;
        b.core
            .half_open
            .store(pack_half(next, 1, 0), Ordering::SeqCst);
        let b2 = b.clone();
        let h = thread::spawn(move || is_probe(b2.admit()));
        let mine = is_probe(b.admit());
        let theirs = h.join().unwrap();
        assert!(mine ^ theirs, "mine={mine} theirs={theirs}");
        let (hg, taken, ok) = unpack_half(b.core.half_open.load(Ordering::SeqCst));
        assert_eq!((hg, taken, ok), (next & 0xffff_ffff, 1, 0));
    });
}

/// A caller that read the opening runs late, while another leaves it, fails its probe and
/// leaves the next opening too. At the end the slots describe the half-open the state word is
/// in: its tag, one slot per probe of it still out — never a late setup over taken slots.
/// (Unbounded: seconds in a release build here; over 19 min on 4f95f55.)
#[test]
fn a_late_leaver_does_not_reset_a_newer_half_opens_slots() {
    loom::model(|| {
        let b = opened(1);
        let b2 = b.clone();
        let h = thread::spawn(move || {
            let mut held = Vec::new();
            let t = b2.admit();
            if is_probe(t) {
                b2.record(t, Outcome::FAILURE, None);
                b2.core.open_until.store(0, Ordering::SeqCst);
                let t = b2.admit();
                if let Ticket::Probe(g) = t {
                    held.push(g);
                }
            }
            held
        });
        let mut held = Vec::new();
        if let Ticket::Probe(g) = b.admit() {
            held.push(g);
        }
        held.extend(h.join().unwrap());
        let s = b.core.state.0.load(Ordering::SeqCst);
        if s & 7 == HALF_OPEN {
            let g = s >> 3;
            let out = held.iter().filter(|&&h| h == g).count() as u64;
            let (hg, taken, _) = unpack_half(b.core.half_open.load(Ordering::SeqCst));
            assert_eq!((hg, taken), (g & 0xffff_ffff, out), "held {held:?}");
        }
    });
}

/// R5-2 as a model. Two slots, both probes marked. B queued, A admitted (the pause ends while
/// A is unmarked). Then, at once: A's caller marks A; B's caller sends B. At the end B is out
/// and A queued behind it — not a pause — so no pause may be running.
#[test]
fn no_pause_runs_at_rest_when_a_probe_is_out() {
    loom::model(|| {
        let b = opened(2);
        assert!(is_probe(b.admit()));
        let mark_b = b.probe_queued().expect("half-open");
        assert!(is_probe(b.admit()));
        let b2 = b.clone();
        let h = thread::spawn(move || b2.probe_queued().expect("half-open"));
        mark_b.sent();
        let _mark_a = h.join().unwrap();
        let paused = b.core.paused_by_the_rules();
        let running = b.core.pause_running();
        assert_eq!(
            running, paused,
            "pause running: {running}, paused by the rules: {paused}"
        );
    });
}
