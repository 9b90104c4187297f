//! Review 8 of ad394d1 (6d341a8). Deterministic, paused tokio time; the hooks of
//! review7_tests.rs, and for R8-2 a tracing subscriber on the opener's thread standing for a
//! preemption right after its publication (the `info!` at the end of `publish`).
use super::race_support::*;

// R8-1. `close` forgets the hint only after its CAS (and its publication). A failure of the new
// closed generation that opens the breaker in between has its opening floored by the hint of
// the outage just recovered from (R7-6 again, in a race): 100 s instead of the base 1 s.
#[tokio::test(start_paused = true)]
async fn r8_1_an_opening_racing_a_close_is_not_floored_by_the_old_hint() {
    let b = Breaker::new(cfg(1));
    let t = b.admit();
    b.record(t, hinted(3600), None);
    assert_eq!(b.open_remaining(), Some(Duration::from_secs(100)));
    secs(100).await;
    let p = b.admit();
    assert!(matches!(p, Ticket::Probe(_)), "{p:?}");
    let other = b.clone();
    after_cas(move || fail(&other)); // right after the closing CAS: a timeout, no hint
    b.record(p, Outcome::Success, None);
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        b.open_remaining(),
        Some(Duration::from_secs(1)),
        "the first opening after a recovery lasts the base"
    );
}

// R8-2. `open` stores the openings in a row after its publication: an opening from closed,
// preempted between its publication and that store for its (1 s) duration, lets a probe of
// the half-open after it fail and read the count the *previous* outage left (close no longer
// zeroes it): 2^3 s instead of 2 s.
#[tokio::test(start_paused = true)]
async fn r8_2_a_reopening_does_not_read_the_previous_outages_count() {
    use std::sync::mpsc;
    let b = Breaker::new(cfg(1));
    // An outage of three openings in a row (1, 2, 4 s), then a recovery.
    fail(&b);
    for d in [1, 2] {
        secs(d).await;
        let p = b.admit();
        assert!(matches!(p, Ticket::Probe(_)), "{p:?}");
        b.record(p, Outcome::FAILURE, None);
    }
    assert_eq!(b.open_remaining(), Some(Duration::from_secs(4)));
    secs(4).await;
    let p = b.admit();
    b.record(p, Outcome::Success, None);
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.core.openings.load(Ordering::SeqCst), 3);

    // Thread A: a failure opens it (from closed: 1 s), and is preempted after its publication.
    let (paused_tx, paused_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let gate = Gate(std::sync::Mutex::new(Some((paused_tx, go_rx))));
    let handle = tokio::runtime::Handle::current();
    let a = {
        let b = b.clone();
        std::thread::spawn(move || {
            let _rt = handle.enter(); // the paused clock
            tracing::subscriber::with_default(gate, || fail(&b));
        })
    };
    paused_rx.recv().unwrap();
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.open_remaining(), Some(Duration::from_secs(1)));
    // Meanwhile: the opening ends, the probe fails. The second opening in a row: 2 s.
    secs(1).await;
    let p = b.admit();
    assert!(matches!(p, Ticket::Probe(_)), "{p:?}");
    b.record(p, Outcome::FAILURE, None);
    let reopened = b.open_remaining();
    go_tx.send(()).unwrap();
    a.join().unwrap();
    assert_eq!(
        reopened,
        Some(Duration::from_secs(2)),
        "the second opening of a new outage is base × 2 (openings read: stale)"
    );
}

/// Blocks the first INFO event on its thread (the transition's, at the end of `publish`)
/// until told to go on.
struct Gate(std::sync::Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>>);

impl tracing::Subscriber for Gate {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        if *e.metadata().level() != tracing::Level::INFO {
            return;
        }
        let once = self.0.lock().unwrap().take();
        if let Some((paused, go)) = once {
            paused.send(()).unwrap();
            go.recv().unwrap();
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

// R8-4 (docs). A failure with a Retry-After while closed, one that trips nothing, takes the
// patience lock (`note_hint`: the hint is noted under the lock openings are published under);
// once, and the docs say so. No other closed call takes it (review_hook's test).
#[tokio::test(start_paused = true)]
async fn r8_4_a_hinted_closed_failure_takes_the_patience_lock_once() {
    let b = Breaker::new(cfg(3));
    let at = LOCKS.with(|n| n.get());
    let t = b.admit();
    b.record(t, hinted(5), None);
    assert_eq!(b.state(), State::Closed);
    assert_eq!(
        LOCKS.with(|n| n.get()) - at,
        1,
        "closed, a hinted failure: one lock"
    );
}

// Checked correct: a hinted failure that passed its check before the opening's CAS, and whose
// `floor_opening` runs while the opener is between its CAS and its publication (stamp not yet
// written), is read by that publication. (The opener on its own thread, held at the
// `publish` hook.)
#[tokio::test(start_paused = true)]
async fn r8_ok_a_hint_landing_before_the_publication_floors_it() {
    use std::sync::{mpsc, Arc, Mutex};
    let b = Breaker::new(cfg(2));
    fail(&b);
    let t2 = b.admit();
    let t3 = b.admit();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Arc::new(Mutex::new(Some(go_rx)));
    let joined: Arc<Mutex<Option<std::thread::JoinHandle<()>>>> = Arc::default();
    let handle = tokio::runtime::Handle::current();
    {
        let (b, joined) = (b.clone(), joined.clone());
        super::review_hook::AT.with(|h| {
            h.borrow_mut().push((
                "record",
                Box::new(move || {
                    // t3 passed its generation check; now t2's thread opens, up to its publication.
                    let (paused_tx, paused_rx) = mpsc::channel::<()>();
                    let go = go_rx.lock().unwrap().take().unwrap();
                    let (b2, handle) = (b.clone(), handle.clone());
                    *joined.lock().unwrap() = Some(std::thread::spawn(move || {
                        let _rt = handle.enter();
                        super::review_hook::AT.with(|h| {
                            h.borrow_mut().push((
                                "publish",
                                Box::new(move || {
                                    paused_tx.send(()).unwrap();
                                    go.recv().unwrap();
                                }),
                            ))
                        });
                        b2.record(t2, Outcome::FAILURE, None);
                    }));
                    paused_rx.recv().unwrap();
                    assert_eq!(b.state(), State::Open);
                    assert_eq!(b.open_remaining(), None, "not published yet");
                }),
            ))
        });
    }
    b.record(t3, hinted(30), None); // loses the CAS; its floor finds the opening unpublished
    go_tx.send(()).unwrap();
    joined.lock().unwrap().take().unwrap().join().unwrap();
    assert_eq!(b.open_remaining(), Some(Duration::from_secs(30)));
}

// R8-5 (pre-existing; the scope of R7-3's fix). A hinted failure whose answer comes back just
// after another failure (a timeout) opened the breaker is stale and dropped whole, its
// Retry-After with it: the opening lasts the base, 1 s, and a probe goes 29 s before the
// upstream asked.
#[tokio::test(start_paused = true)]
async fn r8_5_a_hint_arriving_just_after_the_opening_floors_it() {
    let b = Breaker::new(cfg(2));
    fail(&b);
    let t2 = b.admit();
    let t3 = b.admit();
    b.record(t2, Outcome::FAILURE, None); // opens: 1 s
    b.record(t3, hinted(30), None); // the same instant, just after
    assert_eq!(b.open_remaining(), Some(Duration::from_secs(30)));
}

// Checked correct: a hinted failure racing a forced open extends nothing, and reset forgets
// its hint.
#[tokio::test(start_paused = true)]
async fn r8_ok_a_forced_open_is_not_floored_and_reset_forgets() {
    let b = Breaker::new(cfg(2));
    let t = b.admit();
    b.force_open();
    b.record(t, hinted(30), None); // stale: changes nothing
    assert_eq!(b.state(), State::ForcedOpen);
    b.reset();
    fail(&b);
    fail(&b);
    assert_eq!(b.open_remaining(), Some(Duration::from_secs(1)));
}
