//! `Breaker::probe_queued`: a probe that waits below the breaker (for a rate-limit turn, a
//! pooled connection) is not taken for a hung one; the half-open patience counts from the
//! moment a probe is sent. Paused tokio time throughout.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use common::{flaky, quick_open, Gate, Svc};
use palisade_breaker::{BoxError, Breaker, CircuitBreakerLayer, CircuitOpen, QueuedProbe, State};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service, ServiceExt};

async fn send(svc: &mut Svc, ok: bool) -> Result<(), BoxError> {
    svc.ready().await?.call(ok).await
}

fn is_open(e: &BoxError) -> bool {
    e.is::<CircuitOpen>()
}

async fn trip(breaker: &Breaker) {
    let layer = CircuitBreakerLayer::from_breaker(breaker.clone());
    let mut svc = flaky(&layer);
    while breaker.state() == State::Closed {
        let _ = send(&mut svc, false).await;
    }
}

/// Opens on one failure, for 1 s; a half-open patience of 5 s; one probe, closing on its
/// success.
fn breaker() -> Breaker {
    breaker_with(1, 1)
}

/// As [`breaker`], with `probes` probe slots, closing after `close_after` successes.
fn breaker_with(probes: u16, close_after: u16) -> Breaker {
    Breaker::new(
        quick_open()
            .consecutive_failures(1)
            .half_open_probes(probes)
            .close_after(close_after)
            .max_half_open_wait(Duration::from_secs(5))
            .build()
            .unwrap(),
    )
}

type Acquire = Pin<Box<dyn Future<Output = OwnedSemaphorePermit> + Send>>;

/// A service just below the breaker that, like a pool with one connection, is ready only with a
/// permit of `slots`; it marks a probe queued while it waits, and sent when called. Its calls
/// wait for `release`.
struct Below {
    breaker: Breaker,
    slots: Arc<Semaphore>,
    acquire: Option<Acquire>,
    permit: Option<OwnedSemaphorePermit>,
    mark: Option<QueuedProbe>,
    release: Arc<Notify>,
    sent: Arc<AtomicUsize>,
}

impl Below {
    fn new(breaker: &Breaker, slots: &Arc<Semaphore>, release: &Arc<Notify>) -> Below {
        Below {
            breaker: breaker.clone(),
            slots: slots.clone(),
            acquire: None,
            permit: None,
            mark: None,
            release: release.clone(),
            sent: Arc::default(),
        }
    }
}

impl Service<bool> for Below {
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.mark.is_none() {
            self.mark = self.breaker.probe_queued();
        }
        if self.permit.is_none() {
            let slots = self.slots.clone();
            let acquire = self.acquire.get_or_insert_with(|| {
                Box::pin(async move { slots.acquire_owned().await.unwrap() })
            });
            let permit = std::task::ready!(acquire.as_mut().poll(cx));
            self.acquire = None;
            self.permit = Some(permit);
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ok: bool) -> Self::Future {
        if let Some(mark) = self.mark.take() {
            mark.sent();
        }
        self.sent.fetch_add(1, Ordering::SeqCst);
        let permit = self.permit.take().expect("called before ready");
        let release = self.release.clone();
        Box::pin(async move {
            release.notified().await;
            drop(permit);
            if ok {
                Ok(())
            } else {
                Err("upstream failed".into())
            }
        })
    }
}

/// A probe that waits for the only slot longer than the patience is not hung: callers meanwhile
/// are refused, but the breaker stays half-open, and the probe's success closes it. (Before,
/// the first caller past the patience reopened it, and the probe's success was stale.)
#[tokio::test(start_paused = true)]
async fn a_probe_waiting_below_the_breaker_is_not_taken_for_a_hung_one() {
    let breaker = breaker();
    trip(&breaker).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let slots = Arc::new(Semaphore::new(0)); // the only connection is busy
    let release = Arc::new(Notify::new());
    let layer = CircuitBreakerLayer::from_breaker(breaker.clone());
    let below = Below::new(&breaker, &slots, &release);
    let sent = below.sent.clone();
    let probe = tokio::spawn(layer.layer(below).oneshot(true));
    tokio::task::yield_now().await;
    assert_eq!(breaker.state(), State::HalfOpen);
    let generation = breaker.generation();
    assert_eq!(
        sent.load(Ordering::SeqCst),
        0,
        "the probe waits for its slot"
    );

    let mut other = flaky(&layer);
    tokio::time::advance(Duration::from_secs(20)).await;
    assert!(is_open(&send(&mut other, true).await.unwrap_err()));
    assert_eq!(
        (breaker.state(), breaker.generation()),
        (State::HalfOpen, generation),
        "a caller 20 s into a 5 s patience reopened the breaker while its probe was queued"
    );

    slots.add_permits(1);
    tokio::task::yield_now().await;
    assert_eq!(sent.load(Ordering::SeqCst), 1);
    // Sent: the patience runs from now. 4 s in, not yet.
    tokio::time::advance(Duration::from_secs(4)).await;
    assert!(is_open(&send(&mut other, true).await.unwrap_err()));
    assert_eq!(breaker.state(), State::HalfOpen);
    release.notify_waiters();
    probe.await.unwrap().unwrap();
    assert_eq!(breaker.state(), State::Closed);
    send(&mut other, true).await.unwrap();
}

/// Once sent, a probe that hangs for the patience reopens the breaker, counted from its
/// sending, not from the half-open's start.
#[tokio::test(start_paused = true)]
async fn a_sent_probe_that_hangs_reopens_after_the_patience_counted_from_its_send() {
    let breaker = breaker();
    trip(&breaker).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let slots = Arc::new(Semaphore::new(0));
    let release = Arc::new(Notify::new());
    let layer = CircuitBreakerLayer::from_breaker(breaker.clone());
    let probe = tokio::spawn(
        layer
            .layer(Below::new(&breaker, &slots, &release))
            .oneshot(true),
    );
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_secs(10)).await;
    slots.add_permits(1);
    tokio::task::yield_now().await; // sent 11 s after the half-open began; then hangs
    let mut other = flaky(&layer);
    tokio::time::advance(Duration::from_millis(4_900)).await;
    assert!(is_open(&send(&mut other, true).await.unwrap_err()));
    assert_eq!(
        breaker.state(),
        State::HalfOpen,
        "reopened before the patience ran out"
    );
    tokio::time::advance(Duration::from_millis(100)).await;
    assert!(is_open(&send(&mut other, true).await.unwrap_err()));
    assert_eq!(
        breaker.state(),
        State::Open,
        "a probe hung 5 s after its send"
    );
    probe.abort();
}

#[tokio::test(start_paused = true)]
async fn a_readied_service_dropped_unqueues_its_probe() {
    let breaker = breaker();
    trip(&breaker).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let slots = Arc::new(Semaphore::new(1));
    let release = Arc::new(Notify::new());
    let layer = CircuitBreakerLayer::from_breaker(breaker.clone());
    let mut readied = layer.layer(Below::new(&breaker, &slots, &release));
    readied.ready().await.unwrap();
    assert_eq!(breaker.state(), State::HalfOpen);
    drop(readied);
    // Neither the slot nor the queue is held: the next caller is the probe, and closes it.
    let mut other = flaky(&layer);
    send(&mut other, true).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
}

/// Marks are for the half-open they were made in: none while closed or open, and a mark from an
/// earlier half-open neither pauses a later one nor moves its patience when sent.
#[tokio::test(start_paused = true)]
async fn a_mark_from_an_earlier_half_open_changes_nothing() {
    let breaker = breaker();
    assert!(breaker.probe_queued().is_none(), "closed");
    trip(&breaker).await;
    assert!(breaker.probe_queued().is_none(), "open");
    tokio::time::advance(Duration::from_secs(1)).await;
    let gate = Gate {
        calls: Arc::default(),
        release: Arc::new(Notify::new()),
    };
    let layer = CircuitBreakerLayer::from_breaker(breaker.clone());
    let _hung = tokio::spawn(layer.layer(gate.clone()).oneshot(true));
    tokio::task::yield_now().await;
    let old = breaker.probe_queued().expect("half-open");
    let old_generation = old.generation();
    let old_sent = breaker.probe_queued().expect("half-open");
    // Reopen and half-open again, the old marks alive.
    breaker.reset();
    trip(&breaker).await;
    tokio::time::advance(Duration::from_secs(2)).await; // the second opening lasts 2 s
    let _hung2 = tokio::spawn(layer.layer(gate.clone()).oneshot(true));
    tokio::task::yield_now().await;
    assert_eq!(breaker.state(), State::HalfOpen);
    assert!(breaker.generation() > old_generation);
    let mut other = flaky(&layer);
    tokio::time::advance(Duration::from_secs(3)).await;
    old_sent.sent(); // from the earlier half-open: the patience still counts from this one's start
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(is_open(&send(&mut other, true).await.unwrap_err()));
    assert_eq!(
        breaker.state(),
        State::Open,
        "an earlier half-open's mark held this one past its patience"
    );
    drop(old);
}

/// Two probe slots, one connection below: probe 1 is sent and hangs, probe 2 waits for the
/// connection probe 1 holds. Probe 2 is queued only because probe 1 hangs, so it must not pause
/// the patience: the next caller past it reopens the breaker. (The first version of the pause
/// wedged this half-open for good. Found by a review of 64e670d.)
#[tokio::test(start_paused = true)]
async fn a_probe_queued_behind_a_hung_probe_does_not_pause_the_patience() {
    let breaker = breaker_with(2, 1);
    trip(&breaker).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let slots = Arc::new(Semaphore::new(1));
    let release = Arc::new(Notify::new()); // never notified: calls hang
    let layer = CircuitBreakerLayer::from_breaker(breaker.clone());
    let hung = tokio::spawn(
        layer
            .layer(Below::new(&breaker, &slots, &release))
            .oneshot(true),
    );
    tokio::task::yield_now().await;
    let below = Below::new(&breaker, &slots, &release);
    let sent = below.sent.clone();
    let queued = tokio::spawn(layer.layer(below).oneshot(true));
    tokio::task::yield_now().await;
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(
        sent.load(Ordering::SeqCst),
        0,
        "probe 2 waits for the connection"
    );

    let mut other = flaky(&layer);
    tokio::time::advance(Duration::from_secs(4)).await;
    assert!(is_open(&send(&mut other, true).await.unwrap_err()));
    assert_eq!(
        breaker.state(),
        State::HalfOpen,
        "reopened before the patience ran out"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(is_open(&send(&mut other, true).await.unwrap_err()));
    assert_eq!(
        breaker.state(),
        State::Open,
        "probe 1 sent and hung for 5 s, probe 2 queued behind it: still half-open"
    );
    hung.abort();
    queued.abort();
}

/// The patience counts from the first probe of a run sent while none was out, not from the
/// last one sent: later probes, sent and then dropped (their callers' own timeouts), do not
/// hide a probe that hangs. (The first version counted from the last send. Found by a review
/// of 64e670d.)
#[tokio::test(start_paused = true)]
async fn later_probes_sent_and_dropped_do_not_hide_a_hung_one() {
    let breaker = breaker_with(2, 1);
    trip(&breaker).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let slots = Arc::new(Semaphore::new(2)); // two connections: nothing waits
    let release = Arc::new(Notify::new()); // never notified: calls hang
    let layer = CircuitBreakerLayer::from_breaker(breaker.clone());
    let hung = tokio::spawn(
        layer
            .layer(Below::new(&breaker, &slots, &release))
            .oneshot(true),
    );
    tokio::task::yield_now().await;
    assert_eq!(breaker.state(), State::HalfOpen);
    let mut other = flaky(&layer);
    // A second probe sent 3 s later and given up by its caller 1 s after that; a third takes
    // its slot at once.
    tokio::time::advance(Duration::from_secs(3)).await;
    let given_up = tokio::spawn(
        layer
            .layer(Below::new(&breaker, &slots, &release))
            .oneshot(true),
    );
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_secs(1)).await;
    given_up.abort();
    let _ = given_up.await;
    let third = tokio::spawn(
        layer
            .layer(Below::new(&breaker, &slots, &release))
            .oneshot(true),
    );
    tokio::task::yield_now().await;
    // 5 s after probe 1 was sent (1 s after the third): both slots are out, the patience spent.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(is_open(&send(&mut other, true).await.unwrap_err()));
    assert_eq!(
        breaker.state(),
        State::Open,
        "probe 1 sent and hung for 5 s under a 5 s patience: a later probe hid it"
    );
    hung.abort();
    third.abort();
}

/// The probe of one half-open is sent and hangs on the only connection (no timeout below);
/// the patience reopens the breaker, as 8d5b870 intends. The next half-open's probe then waits
/// for the connection the *old* probe still holds: it is counted as queued, the old one is not
/// counted as out (`sent_undecided` reads only the current generation's slots), so the
/// patience is paused — for as long as the old probe hangs, here for ever. Every caller was
/// refused and the breaker never reopened (found by a review of 8d5b870): the pause is now
/// bounded by `max_probe_queue_wait` (300 s by default) past the patience.
#[tokio::test(start_paused = true)]
async fn a_probe_queued_behind_a_hung_probe_of_an_earlier_half_open_does_not_pause_the_patience_for_ever(
) {
    let breaker = breaker();
    trip(&breaker).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let slots = Arc::new(Semaphore::new(1)); // one connection
    let release = Arc::new(Notify::new()); // never notified: a sent call hangs
    let layer = CircuitBreakerLayer::from_breaker(breaker.clone());
    let hung = tokio::spawn(
        layer
            .layer(Below::new(&breaker, &slots, &release))
            .oneshot(true),
    );
    tokio::task::yield_now().await;
    assert_eq!(breaker.state(), State::HalfOpen);
    let mut other = flaky(&layer);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(is_open(&send(&mut other, true).await.unwrap_err()));
    assert_eq!(breaker.state(), State::Open, "the hung probe reopened it");

    // The second opening lasts 2 s; then a probe of the new half-open queues for the
    // connection the old probe holds.
    tokio::time::advance(Duration::from_secs(2)).await;
    let below = Below::new(&breaker, &slots, &release);
    let sent = below.sent.clone();
    let queued = tokio::spawn(layer.layer(below).oneshot(true));
    tokio::task::yield_now().await;
    assert_eq!(breaker.state(), State::HalfOpen);
    let generation = breaker.generation();
    assert_eq!(sent.load(Ordering::SeqCst), 0, "the new probe waits");

    // Ten minutes under a 5 s patience, a caller every minute.
    for _ in 0..10 {
        tokio::time::advance(Duration::from_secs(60)).await;
        let _ = send(&mut other, true).await;
    }
    assert!(
        !(breaker.state() == State::HalfOpen && breaker.generation() == generation),
        "still in the same half-open 10 min into a 5 s patience: its only probe waits behind \
         a probe of the previous half-open that hangs, and the patience stays paused"
    );
    hung.abort();
    queued.abort();
}

/// Two probes to close, three slots. Probe A is sent at the half-open's start; B is sent
/// 4 s later while A is out (so the patience keeps counting from A's send); A then succeeds.
/// C takes A's slot and is sent. 5.5 s after A's send — 1.5 s after B's, at once after C's,
/// both healthy and out — the next caller reopens the breaker: B and C are taken for hung,
/// with most of their patience unspent. (On 64e670d the patience counted from C's send; a
/// regression of 8d5b870, found by its review: a success that does not close restarts it.)
#[tokio::test(start_paused = true)]
async fn a_probe_sent_while_another_was_out_keeps_its_patience_once_that_one_succeeds() {
    let breaker = breaker_with(2, 2);
    trip(&breaker).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let slots = Arc::new(Semaphore::new(3)); // a connection each: nothing waits
    let layer = CircuitBreakerLayer::from_breaker(breaker.clone());
    let release_a = Arc::new(Notify::new());
    let a = tokio::spawn(
        layer
            .layer(Below::new(&breaker, &slots, &release_a))
            .oneshot(true),
    );
    tokio::task::yield_now().await;
    assert_eq!(breaker.state(), State::HalfOpen);
    let generation = breaker.generation();

    tokio::time::advance(Duration::from_secs(4)).await;
    let release_b = Arc::new(Notify::new());
    let b = tokio::spawn(
        layer
            .layer(Below::new(&breaker, &slots, &release_b))
            .oneshot(true),
    );
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_millis(500)).await;
    release_a.notify_one();
    a.await.unwrap().unwrap(); // one success of the two needed
    assert_eq!(
        (breaker.state(), breaker.generation()),
        (State::HalfOpen, generation)
    );
    let release_c = Arc::new(Notify::new());
    let c = tokio::spawn(
        layer
            .layer(Below::new(&breaker, &slots, &release_c))
            .oneshot(true),
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    tokio::task::yield_now().await;

    let mut other = flaky(&layer);
    assert!(is_open(&send(&mut other, true).await.unwrap_err()));
    assert_eq!(
        (breaker.state(), breaker.generation()),
        (State::HalfOpen, generation),
        "reopened 1.5 s after probe B was sent (5 s patience), A having succeeded: the \
         patience still counted from A's send"
    );
    release_b.notify_one();
    release_c.notify_one();
    b.await.unwrap().unwrap();
    c.await.unwrap().unwrap();
    assert_eq!(breaker.state(), State::Closed, "both probes succeeded");
}

/// (From a review of c807ede, whose restart on a success applied to unmarked stacks too.)
/// A stack that marks no probes (the plain `CircuitBreakerLayer` over a service). The docs
/// say the patience then counts from the half-open's start ("Without marks, nothing changes",
/// README; `max_half_open_wait`: "counts from the half-open's start or, in a stack that marks
/// its probes, from a probe's send"). c807ede's success-restart in `record_probe` applies to
/// unmarked stacks too: probe A, sent at the half-open's start, hangs; B succeeds at 4.5 s;
/// C takes B's slot. At 5.5 s, A has hung past the 5 s patience counted from the half-open's
/// start, yet the breaker stays half-open (until 9.5 s).
#[tokio::test(start_paused = true)]
async fn without_marks_the_patience_counts_from_the_half_opens_start() {
    let breaker = breaker_with(2, 2);
    trip(&breaker).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let layer = CircuitBreakerLayer::from_breaker(breaker.clone());
    let hang = Gate {
        calls: Arc::default(),
        release: Arc::new(Notify::new()), // never notified
    };
    let a = tokio::spawn(layer.layer(hang.clone()).oneshot(true));
    tokio::task::yield_now().await;
    assert_eq!(breaker.state(), State::HalfOpen);
    let generation = breaker.generation();
    assert_eq!(hang.calls.load(Ordering::SeqCst), 1);

    tokio::time::advance(Duration::from_secs(4)).await;
    let b_gate = Gate {
        calls: Arc::default(),
        release: Arc::new(Notify::new()),
    };
    let b = tokio::spawn(layer.layer(b_gate.clone()).oneshot(true));
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_millis(500)).await;
    b_gate.release.notify_one();
    b.await.unwrap().unwrap(); // 1 of 2 successes
    assert_eq!(
        (breaker.state(), breaker.generation()),
        (State::HalfOpen, generation)
    );
    let c = tokio::spawn(layer.layer(hang.clone()).oneshot(true)); // takes B's slot, hangs
    tokio::task::yield_now().await;
    assert_eq!(hang.calls.load(Ordering::SeqCst), 2);

    tokio::time::advance(Duration::from_secs(1)).await; // 5.5 s into the half-open
    let mut other = flaky(&layer);
    assert!(is_open(&send(&mut other, true).await.unwrap_err()));
    assert_eq!(
        breaker.state(),
        State::Open,
        "no marks: probe A hung 5.5 s from the half-open's start under a 5 s patience, but \
         B's success restarted the patience"
    );
    a.abort();
    c.abort();
}

/// (From a review of c807ede; since 8d5b870.) One probe slot, an upstream where every call hangs, callers that give up after 4 s (their
/// own deadline, shorter than the 5 s patience: the dropped probe is `Ignore`). Each new
/// probe is sent while none is out, so `QueuedProbe::sent` restarts the patience: the
/// half-open never reopens, however long the upstream hangs (here 2 minutes, 24 patiences),
/// whereas without marks the first caller past 5 s reopened it. The restarts c807ede bounds
/// for successes (close_after − 1) are unbounded for sends after dropped probes.
#[tokio::test(start_paused = true)]
async fn probes_dropped_by_their_callers_do_not_keep_a_hung_half_open_for_ever() {
    let breaker = breaker();
    trip(&breaker).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let slots = Arc::new(Semaphore::new(1000)); // nothing waits below
    let release = Arc::new(Notify::new()); // never notified: the upstream hangs
    let layer = CircuitBreakerLayer::from_breaker(breaker.clone());
    let mut other = flaky(&layer);
    let mut generation = None;
    let mut sent_total = 0;
    for _ in 0..30 {
        let below = Below::new(&breaker, &slots, &release);
        let sent = below.sent.clone();
        let probe = tokio::spawn(layer.layer(below).oneshot(true));
        tokio::task::yield_now().await;
        if breaker.state() != State::HalfOpen {
            break;
        }
        generation.get_or_insert(breaker.generation());
        sent_total += sent.load(Ordering::SeqCst);
        // Another caller each second while the probe is out.
        for _ in 0..4 {
            tokio::time::advance(Duration::from_secs(1)).await;
            let _ = send(&mut other, true).await;
        }
        probe.abort(); // the caller's own deadline: dropped, Ignore
        let _ = probe.await;
    }
    assert!(sent_total >= 2);
    assert!(
        !(breaker.state() == State::HalfOpen && Some(breaker.generation()) == generation),
        "every probe hung until its caller gave up, {sent_total} of them over {} s under a 5 s \
         patience: still in the same half-open",
        sent_total * 4
    );
}
