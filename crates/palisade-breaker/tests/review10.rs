//! Review 10: single-threaded checks of documented claims, paused time. The `r10_doc_*` tests
//! pin behaviour whose docs were wrong on 720c129 (the docs were corrected, the behaviour
//! kept); `r10_ok_*` are claims checked and found true.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use common::{flaky, quick_open, Svc};
use palisade_breaker::classify::classify_fn;
use palisade_breaker::{
    BoxError, Breaker, CircuitBreakerLayer, CircuitOpen, Config, KeyedBreakers,
    KeyedCircuitBreakerLayer, Outcome, State, Transition,
};
use tower::{service_fn, Layer, Service, ServiceExt};

async fn send(svc: &mut Svc, ok: bool) -> Result<(), BoxError> {
    svc.ready().await?.call(ok).await
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The half-open's patience runs out exactly `left` from now: a call a millisecond before
/// finds the breaker still half-open, one at that instant finds it reopened.
async fn patience_ends_in(b: &Breaker, f: &mut Svc, left: Duration) {
    tokio::time::advance(left - Duration::from_millis(1)).await;
    let _ = send(f, true).await;
    assert_eq!(b.state(), State::HalfOpen);
    tokio::time::advance(Duration::from_millis(1)).await;
    let _ = send(f, true).await;
    assert_eq!(b.state(), State::Open);
}

// ---------------------------------------------------------------- docs corrected

/// README "Half-open" and `State::HalfOpen`: with a slow-call rule, a slow probe counts as
/// failed, even a successful one: it reopens the breaker.
#[tokio::test(start_paused = true)]
async fn r10_doc_a_slow_successful_probe_reopens() {
    let config = quick_open()
        .count_window(10)
        .minimum_calls(10)
        .consecutive_failures(1)
        .slow_calls(secs(2), 100)
        .build()
        .unwrap();
    let layer = CircuitBreakerLayer::new(config);
    let breaker = layer.breaker().clone();
    let mut svc = layer.layer(service_fn(|d: u64| async move {
        tokio::time::sleep(secs(d)).await;
        Ok::<_, Infallible>(())
    }));
    let layer2 = CircuitBreakerLayer::from_breaker(breaker.clone());
    let mut f = flaky(&layer2);
    let _ = send(&mut f, false).await;
    assert_eq!(breaker.state(), State::Open);
    tokio::time::advance(secs(1)).await;
    // The probe succeeds, in 3 s (slow).
    svc.ready().await.unwrap().call(3).await.unwrap();
    assert_eq!(
        breaker.state(),
        State::Open,
        "a slow probe (3 s, rule 2 s) reopens it"
    );
}

/// `Outcome::Failure` rustdoc, README "Open duration": a hint noted while closed floors any
/// opening until it expires — here one caused by other failures 10 s later, while the 60 s
/// hint is still in force: held to the cap (8 s).
#[tokio::test(start_paused = true)]
async fn r10_doc_a_hint_that_opened_nothing_floors_a_later_unrelated_opening() {
    let config = quick_open()
        .count_window(4)
        .minimum_calls(4)
        .failure_rate(50)
        .build()
        .unwrap();
    let layer = CircuitBreakerLayer::new(config).with_classifier(classify_fn(
        |r: &Result<(), &'static str>| match r {
            Ok(()) => Outcome::Success,
            Err(e) if *e == "hint" => Outcome::Failure {
                retry_after: Some(secs(60)),
            },
            Err(_) => Outcome::FAILURE,
        },
    ));
    let breaker = layer.breaker().clone();
    let mut svc = layer.layer(service_fn(|x: u8| async move {
        match x {
            0 => Ok(()),
            1 => Err("hint"),
            _ => Err("plain"),
        }
    }));
    let _ = svc.ready().await.unwrap().call(1).await; // hinted failure: 1 of 1, below minimum
    for _ in 0..8 {
        svc.ready().await.unwrap().call(0).await.unwrap(); // slides it out
    }
    assert_eq!(breaker.counts().failures, 0);
    tokio::time::advance(secs(10)).await;
    for _ in 0..2 {
        let _ = svc.ready().await.unwrap().call(2).await; // unhinted: 2 of 4 → opens
    }
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(
        breaker.open_remaining(),
        Some(secs(8)),
        "floored by the hint, to the cap"
    );
}

/// README and `KeyedBreakers` rustdoc: while breakers that carry failure state fill the bound,
/// the table is scanned once per `max_keys/64` new keys, and clean breakers added between two
/// scans are kept too.
#[tokio::test(start_paused = true)]
async fn r10_doc_clean_breakers_also_exceed_the_keyed_bound() {
    let max = 128;
    let config = Config::builder().consecutive_failures(1).build().unwrap();
    let breakers: KeyedBreakers<u32> = KeyedBreakers::with_limits(config, max, secs(1));
    let layer = KeyedCircuitBreakerLayer::from_breakers(breakers.clone(), |r: &(u32, bool)| r.0);
    let mut svc = layer.layer(service_fn(|(_, ok): (u32, bool)| async move {
        if ok {
            Ok(())
        } else {
            Err("down")
        }
    }));
    for k in 0..max as u32 {
        let _ = svc.ready().await.unwrap().call((k, false)).await;
    }
    tokio::time::advance(secs(10)).await;
    for k in 1000..1002 {
        svc.ready().await.unwrap().call((k, true)).await.unwrap();
    }
    let failing = (0..max as u32)
        .filter(|k| breakers.peek(k).is_some())
        .count();
    assert_eq!(failing, max);
    assert_eq!(
        breakers.len(),
        max + 2,
        "the two clean ones, between scans, are kept"
    );
}

/// README, `CircuitBreakerLayer` rustdoc: admission is decided in `poll_ready`; a service readied
/// while closed still makes its call after another caller opened the breaker, and its outcome,
/// stale, changes nothing.
#[tokio::test(start_paused = true)]
async fn r10_doc_a_service_readied_while_closed_is_called_through_after_opening() {
    let calls = Arc::new(AtomicUsize::new(0));
    let config = quick_open().consecutive_failures(1).build().unwrap();
    let layer = CircuitBreakerLayer::new(config);
    let breaker = layer.breaker().clone();
    let c = calls.clone();
    let mut a = layer.layer(service_fn(move |_: bool| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, &'static str>(()) }
    }));
    let mut b = flaky(&layer);
    let a = a.ready().await.unwrap();
    let _ = send(&mut b, false).await;
    assert_eq!(breaker.state(), State::Open);
    let generation = breaker.generation();
    let res = a.call(true).await;
    assert!(res.is_ok(), "{res:?}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "called through: admitted while closed"
    );
    assert_eq!(
        (breaker.state(), breaker.generation()),
        (State::Open, generation)
    );
}

// ---------------------------------------------------------------- passing: claims checked

#[tokio::test(start_paused = true)]
async fn r10_ok_failure_rate_minimum_calls_and_slow_rule() {
    // failure rate ≥ 50 % only once minimum_calls are in.
    let b = Breaker::new(
        quick_open()
            .count_window(10)
            .minimum_calls(6)
            .failure_rate(50)
            .build()
            .unwrap(),
    );
    let layer = CircuitBreakerLayer::from_breaker(b.clone());
    let mut s = flaky(&layer);
    for ok in [false, false, false, true, true] {
        let _ = send(&mut s, ok).await;
    }
    assert_eq!(b.state(), State::Closed); // 3 of 5, under minimum
    send(&mut s, true).await.unwrap(); // 3 of 6 = 50 %: a success brings it to minimum
    assert_eq!(b.state(), State::Open);

    // slow-call rate with minimum_calls, no failure rate
    let b = Breaker::new(
        quick_open()
            .count_window(4)
            .minimum_calls(4)
            .no_failure_rate()
            .slow_calls(secs(1), 50)
            .build()
            .unwrap(),
    );
    let mut s =
        CircuitBreakerLayer::from_breaker(b.clone()).layer(service_fn(|d: u64| async move {
            tokio::time::sleep(Duration::from_millis(d)).await;
            Ok::<_, Infallible>(())
        }));
    for d in [1000, 999, 1000] {
        s.ready().await.unwrap().call(d).await.unwrap();
    }
    assert_eq!(b.state(), State::Closed);
    s.ready().await.unwrap().call(0).await.unwrap(); // 2 of 4 slow (≥ threshold)
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn r10_ok_consecutive_and_ignore_and_counts() {
    let b = Breaker::new(
        quick_open()
            .no_failure_rate()
            .consecutive_failures(3)
            .build()
            .unwrap(),
    );
    let layer = CircuitBreakerLayer::from_breaker(b.clone()).with_classifier(classify_fn(
        |r: &Result<u8, String>| match r {
            Ok(_) => Outcome::Success,
            Err(e) if e == "0" => Outcome::Ignore,
            Err(_) => Outcome::FAILURE,
        },
    ));
    let mut s = layer.layer(service_fn(|x: u8| async move {
        if x == 9 {
            Ok(x)
        } else {
            Err(x.to_string())
        }
    }));
    for x in [1, 1, 9, 1, 0, 1] {
        let _ = s.ready().await.unwrap().call(x).await;
    }
    assert_eq!(b.consecutive_failures(), 2); // the Ignore neither counted nor ended the run
    assert_eq!(b.counts().calls, 5);
    assert_eq!(b.state(), State::Closed);
    let _ = s.ready().await.unwrap().call(1).await;
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.consecutive_failures(), 0);
}

#[tokio::test(start_paused = true)]
async fn r10_ok_time_window_slides() {
    let b = Breaker::new(
        quick_open()
            .time_window(secs(10), secs(1))
            .minimum_calls(4)
            .failure_rate(50)
            .build()
            .unwrap(),
    );
    let mut s = flaky(&CircuitBreakerLayer::from_breaker(b.clone()));
    for _ in 0..3 {
        let _ = send(&mut s, false).await;
    }
    tokio::time::advance(secs(11)).await;
    assert_eq!(b.counts().calls, 0);
    for ok in [true, true, false] {
        let _ = send(&mut s, ok).await;
    }
    assert_eq!(b.state(), State::Closed);
    let _ = send(&mut s, false).await;
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn r10_ok_backoff_cap_reset_and_jitter_bounds() {
    let b = Breaker::new(quick_open().consecutive_failures(1).build().unwrap());
    let mut s = flaky(&CircuitBreakerLayer::from_breaker(b.clone()));
    let _ = send(&mut s, false).await;
    let mut seen = vec![];
    for _ in 0..5 {
        let d = b.open_remaining().unwrap();
        seen.push(d.as_secs());
        tokio::time::advance(d).await;
        let _ = send(&mut s, false).await; // failed probe
    }
    assert_eq!(seen, [1, 2, 4, 8, 8]);
    tokio::time::advance(secs(8)).await;
    send(&mut s, true).await.unwrap();
    assert_eq!(b.state(), State::Closed);
    let _ = send(&mut s, false).await;
    assert_eq!(b.open_remaining(), Some(secs(1)));

    for (cap, lo, hi) in [(100u64, 5_000u64, 15_000u64), (10, 5_000, 10_000)] {
        for _ in 0..200 {
            let b = Breaker::new(
                Config::builder()
                    .consecutive_failures(1)
                    .open_duration(secs(10), 1, secs(cap))
                    .jitter(50)
                    .build()
                    .unwrap(),
            );
            let mut s = flaky(&CircuitBreakerLayer::from_breaker(b.clone()));
            let _ = send(&mut s, false).await;
            let ms = b.open_remaining().unwrap().as_millis() as u64;
            assert!((lo..=hi).contains(&ms), "{ms} ms outside [{lo}, {hi}]");
        }
    }
}

/// `b` over a service that succeeds on `true` and fails on `false`, each failure carrying the
/// Retry-After `hint` holds at the time.
fn hinting(
    b: &Breaker,
    hint: &Arc<Mutex<Option<Duration>>>,
) -> impl Service<bool, Response = (), Error = BoxError> {
    let hint = hint.clone();
    CircuitBreakerLayer::from_breaker(b.clone())
        .with_classifier(classify_fn(move |r: &Result<(), &'static str>| match r {
            Ok(()) => Outcome::Success,
            Err(_) => Outcome::Failure {
                retry_after: *hint.lock().unwrap(),
            },
        }))
        .layer(service_fn(|ok: bool| async move {
            if ok {
                Ok(())
            } else {
                Err("x")
            }
        }))
}

#[tokio::test(start_paused = true)]
async fn r10_ok_retry_after_floor_cap_and_forgotten_on_close() {
    let hint = Arc::new(Mutex::new(Some(secs(5))));
    let b = Breaker::new(
        quick_open()
            .no_failure_rate()
            .consecutive_failures(1)
            .build()
            .unwrap(),
    );
    let mut s = hinting(&b, &hint);
    let _ = s.ready().await.unwrap().call(false).await;
    assert_eq!(b.open_remaining(), Some(secs(5))); // floor over the 1 s base
    let e = s.ready().await.unwrap().call(true).await.unwrap_err();
    assert_eq!(
        e.downcast_ref::<CircuitOpen>().unwrap().retry_after(),
        Some(secs(5))
    );
    tokio::time::advance(secs(5)).await;
    *hint.lock().unwrap() = Some(secs(1000));
    let _ = s.ready().await.unwrap().call(false).await; // failed probe with a huge hint
    assert_eq!(b.open_remaining(), Some(secs(8))); // capped
    tokio::time::advance(secs(8)).await;
    // Still within the 1000 s hint: closing forgets it.
    s.ready().await.unwrap().call(true).await.unwrap();
    assert_eq!(b.state(), State::Closed);
    *hint.lock().unwrap() = None;
    let _ = s.ready().await.unwrap().call(false).await;
    assert_eq!(b.open_remaining(), Some(secs(1)));
    // reset forgets it too
    b.reset();
    *hint.lock().unwrap() = Some(secs(1000));
    let _ = s.ready().await.unwrap().call(true).await;
    b.reset(); // hint not noted (success), nothing to forget; now a noted one then reset
    let cfg2 = quick_open()
        .no_failure_rate()
        .consecutive_failures(2)
        .build()
        .unwrap();
    let b2 = Breaker::new(cfg2);
    let mut s2 = hinting(&b2, &hint);
    let _ = s2.ready().await.unwrap().call(false).await; // hint noted, no trip
    b2.reset();
    *hint.lock().unwrap() = None;
    let _ = s2.ready().await.unwrap().call(false).await;
    let _ = s2.ready().await.unwrap().call(false).await;
    assert_eq!(b2.open_remaining(), Some(secs(1)));
}

#[tokio::test(start_paused = true)]
async fn r10_ok_half_open_probes_close_after_hung_probe_and_ignore() {
    let b = Breaker::new(
        quick_open()
            .no_failure_rate()
            .consecutive_failures(1)
            .half_open_probes(2)
            .close_after(3)
            .max_half_open_wait(secs(10))
            .build()
            .unwrap(),
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = common::Gate {
        calls: calls.clone(),
        release: release.clone(),
    };
    let layer = CircuitBreakerLayer::from_breaker(b.clone());
    let mut f = flaky(&layer);
    let _ = send(&mut f, false).await;
    tokio::time::advance(secs(1)).await;
    let mut p1 = layer.layer(gate.clone());
    let mut p2 = layer.layer(gate.clone());
    let mut p3 = layer.layer(gate.clone());
    let f1 = p1.ready().await.unwrap().call(true);
    let f2 = p2.ready().await.unwrap().call(true);
    assert_eq!(b.state(), State::HalfOpen);
    let e = p3.ready().await.unwrap().call(true).await.unwrap_err();
    assert!(e.is::<CircuitOpen>());
    assert_eq!(b.rejected(), 1);
    // readied-and-dropped frees the slot
    drop(f2);
    let mut p4 = layer.layer(gate.clone());
    p4.ready().await.unwrap();
    drop(p4);
    let mut p5 = layer.layer(gate.clone());
    p5.ready().await.unwrap();
    // hung: after 10 s a refused caller reopens
    tokio::time::advance(secs(10)).await;
    let mut p6 = layer.layer(gate.clone());
    let e = p6.ready().await.unwrap().call(true).await.unwrap_err();
    assert!(e.is::<CircuitOpen>());
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.open_remaining(), Some(secs(2)));
    drop((f1, p5));
    // 3 successes (in rounds of 2 slots) close it.
    tokio::time::advance(secs(2)).await;
    for _ in 0..3 {
        send(&mut f, true).await.unwrap();
    }
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn r10_ok_handle_and_listener() {
    let log: Arc<Mutex<Vec<Transition>>> = Arc::default();
    let l = log.clone();
    let b = Breaker::with_listener(
        quick_open()
            .no_failure_rate()
            .consecutive_failures(1)
            .build()
            .unwrap(),
        move |t| l.lock().unwrap().push(*t),
    );
    let layer = CircuitBreakerLayer::from_breaker(b.clone());
    let mut s = flaky(&layer);
    b.force_open();
    assert_eq!(b.state(), State::ForcedOpen);
    assert_eq!(b.open_remaining(), None);
    let e = send(&mut s, true).await.unwrap_err();
    assert_eq!(e.downcast_ref::<CircuitOpen>().unwrap().retry_after(), None);
    tokio::time::advance(secs(3)).await;
    assert_eq!(b.time_in_state(), secs(3));
    b.force_closed();
    for _ in 0..5 {
        let _ = send(&mut s, false).await;
    }
    assert_eq!(b.state(), State::Disabled);
    assert_eq!(b.counts().calls, 0);
    b.reset();
    assert_eq!(b.generation(), 3);
    assert_eq!(b.rejected(), 1);
    let _ = send(&mut s, false).await;
    tokio::time::advance(secs(1)).await;
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.open_remaining(), Some(Duration::ZERO));
    send(&mut s, true).await.unwrap();
    let got: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .map(|t| (t.from, t.to, t.generation))
        .collect();
    use State::*;
    assert_eq!(
        got,
        [
            (Closed, ForcedOpen, 1),
            (ForcedOpen, Disabled, 2),
            (Disabled, Closed, 3),
            (Closed, Open, 4),
            (Open, HalfOpen, 5),
            (HalfOpen, Closed, 6)
        ]
    );
}

#[derive(Clone)]
struct PollCount<S>(S, Arc<AtomicUsize>);
impl<S: Service<bool>> Service<bool> for PollCount<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.poll_ready(cx)
    }
    fn call(&mut self, r: bool) -> S::Future {
        self.0.call(r)
    }
}

#[tokio::test(start_paused = true)]
async fn r10_ok_tower_contract() {
    let polls = Arc::new(AtomicUsize::new(0));
    let layer = CircuitBreakerLayer::new(quick_open().consecutive_failures(1).build().unwrap());
    let b = layer.breaker().clone();
    let inner = service_fn(|ok: bool| async move {
        if ok {
            Ok(())
        } else {
            Err("x")
        }
    });
    let mut s = layer.layer(PollCount(inner, polls.clone()));
    let mut s2 = s.clone();
    let _ = s.ready().await.unwrap().call(false).await;
    assert_eq!(polls.load(Ordering::SeqCst), 1);
    assert_eq!(s2.breaker().state(), State::Open); // clones share
    for _ in 0..3 {
        assert!(s2
            .ready()
            .await
            .unwrap()
            .call(true)
            .await
            .unwrap_err()
            .is::<CircuitOpen>());
    }
    assert_eq!(polls.load(Ordering::SeqCst), 1);
    assert_eq!(b.rejected(), 3);
}

#[cfg(feature = "http")]
#[test]
fn r10_ok_http_classifier() {
    use palisade_breaker::classify::Classify;
    use palisade_breaker::http::{parse_retry_after, HttpClassifier};
    let res = |s: u16, ra: Option<&str>| {
        let mut b = http::Response::builder().status(s);
        if let Some(ra) = ra {
            b = b.header("retry-after", ra);
        }
        Ok::<_, ()>(b.body(()).unwrap())
    };
    let c = HttpClassifier::server_errors();
    assert_eq!(c.classify(&res(500, None)), Outcome::FAILURE);
    assert_eq!(c.classify(&res(599, None)), Outcome::FAILURE);
    assert_eq!(c.classify(&res(429, Some("5"))), Outcome::Success);
    assert_eq!(c.classify(&res(404, None)), Outcome::Success);
    assert_eq!(
        c.classify(&Err::<http::Response<()>, ()>(())),
        Outcome::FAILURE
    );
    assert_eq!(
        c.count_429(true).classify(&res(429, Some(" 7 "))),
        Outcome::Failure {
            retry_after: Some(secs(7))
        }
    );
    assert_eq!(c.classify(&res(503, Some("abc"))), Outcome::FAILURE);
    assert_eq!(
        parse_retry_after("99999999999999999999999"),
        Some(Duration::from_secs(u64::MAX))
    );
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
        Some(Duration::ZERO)
    );
    assert_eq!(
        HttpClassifier::statuses(&[503, 429]).classify(&res(429, None)),
        Outcome::Success
    );
}

#[tokio::test(start_paused = true)]
async fn r10_ok_marked_probe_patience() {
    let b = Breaker::new(
        quick_open()
            .no_failure_rate()
            .consecutive_failures(1)
            .max_half_open_wait(secs(10))
            .max_probe_queue_wait(secs(300))
            .build()
            .unwrap(),
    );
    let layer = CircuitBreakerLayer::from_breaker(b.clone());
    let mut f = flaky(&layer);
    let gate = common::Gate {
        calls: Arc::default(),
        release: Arc::default(),
    };
    // 1. queued 100 s, then sent: patience counts from the send.
    let _ = send(&mut f, false).await;
    tokio::time::advance(secs(1)).await;
    let mut p = layer.layer(gate.clone());
    p.ready().await.unwrap();
    let mark = b.probe_queued().unwrap();
    tokio::time::advance(secs(100)).await;
    assert!(send(&mut f, true).await.is_err());
    assert_eq!(b.state(), State::HalfOpen);
    mark.sent();
    let fut = p.call(true);
    patience_ends_in(&b, &mut f, secs(10)).await;
    drop(fut);
    // 2. a queue that never moves: reopened at wait + max_probe_queue_wait.
    tokio::time::advance(b.open_remaining().unwrap()).await;
    let mut p = layer.layer(gate.clone());
    p.ready().await.unwrap();
    assert_eq!(b.state(), State::HalfOpen);
    let mark = b.probe_queued().unwrap();
    patience_ends_in(&b, &mut f, secs(310)).await;
    drop((mark, p));
    // 3. a mark dropped unsent: the paused time is not spent, the patience runs again.
    tokio::time::advance(b.open_remaining().unwrap()).await;
    let mut p = layer.layer(gate.clone());
    p.ready().await.unwrap();
    let mark = b.probe_queued().unwrap();
    tokio::time::advance(secs(50)).await;
    drop(mark);
    patience_ends_in(&b, &mut f, secs(10)).await;
    drop(p);
    // none outside half-open
    assert!(b.probe_queued().is_none());
}
