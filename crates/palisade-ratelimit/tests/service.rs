//! The rate-limit service under paused tokio time: conformance, fairness, sharing, cancellation.

use std::cell::RefCell;
use std::convert::Infallible;
use std::rc::Rc;
use std::time::Duration;

use palisade_ratelimit::{Quota, RateLimitLayer, RateLimited, RateLimiter};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

type Log = Rc<RefCell<Vec<Duration>>>;

/// A service that records when each call reached it.
fn recorder(
    start: Instant,
    log: Log,
) -> impl Service<
    (),
    Response = (),
    Error = Infallible,
    Future = std::future::Ready<Result<(), Infallible>>,
> + Clone {
    service_fn(move |()| {
        log.borrow_mut().push(start.elapsed());
        std::future::ready(Ok(()))
    })
}

/// At every admission, the count so far is within `burst + elapsed / interval`.
fn assert_within_bound(log: &[Duration], burst: u64, interval: Duration) {
    for (i, at) in log.iter().enumerate() {
        let bound = burst + (at.as_nanos() / interval.as_nanos()) as u64;
        assert!(
            (i as u64 + 1) <= bound,
            "admission #{} at {at:?} exceeds burst {burst} + elapsed/interval = {bound}",
            i + 1
        );
    }
}

/// 16 tasks, each with its own clone, hammer a wait-mode service for `run` of simulated time.
async fn hammer(quota: Quota, tasks: usize, run: Duration) -> Vec<Duration> {
    let start = Instant::now();
    let log: Log = Rc::default();
    let svc = RateLimitLayer::new(quota).layer(recorder(start, log.clone()));
    let local = tokio::task::LocalSet::new();
    for _ in 0..tasks {
        let mut svc = svc.clone();
        local.spawn_local(async move {
            loop {
                svc.ready().await.unwrap();
                if start.elapsed() > run {
                    // Readied but never called: the token goes back when `svc` drops.
                    break;
                }
                svc.call(()).await.unwrap();
            }
        });
    }
    local.await;
    let log = log.borrow().clone();
    log
}

#[tokio::test(start_paused = true)]
async fn conformance_1000_per_second_burst_10() {
    let quota = Quota::per_second(1000).unwrap().burst(10).unwrap();
    let log = hammer(quota, 16, Duration::from_secs(3)).await;
    assert!(
        (3009..=3011).contains(&log.len()),
        "admitted {} in 3 s, expected 3010 ± 1",
        log.len()
    );
    assert_within_bound(&log, 10, MS);
}

#[tokio::test(start_paused = true)]
async fn fine_grained_rate_one_per_ms_burst_1() {
    let quota = Quota::new(1, MS).unwrap();
    let log = hammer(quota, 16, Duration::from_secs(3)).await;
    assert!(log.len() >= 2970, "admitted {} in 3 s at 1/ms", log.len());
    assert!(log.len() <= 3001, "admitted {} in 3 s at 1/ms", log.len());
    assert_within_bound(&log, 1, MS);
}

#[tokio::test(start_paused = true)]
async fn reject_mode_conforms_too() {
    let quota = Quota::per_second(1000).unwrap().burst(10).unwrap();
    let start = Instant::now();
    let log: Log = Rc::default();
    let svc = RateLimitLayer::new(quota)
        .reject()
        .layer(recorder(start, log.clone()));
    let local = tokio::task::LocalSet::new();
    let refused = Rc::new(RefCell::new(0u32));
    for _ in 0..16 {
        let mut svc = svc.clone();
        let refused = refused.clone();
        local.spawn_local(async move {
            while start.elapsed() <= Duration::from_secs(3) {
                match svc.ready().await.unwrap().call(()).await {
                    Ok(()) => {}
                    Err(e) => {
                        let limited = e.downcast_ref::<RateLimited>().expect("RateLimited");
                        *refused.borrow_mut() += 1;
                        tokio::time::sleep(limited.retry_after()).await;
                    }
                }
            }
        });
    }
    local.await;
    let log = log.borrow();
    assert!((3009..=3011).contains(&log.len()), "admitted {}", log.len());
    assert!(*refused.borrow() > 0, "the test never hit the limit");
    assert_within_bound(&log, 10, MS);
}

/// The seed's bug: after sleeping, its limiter let two requests pass for one token.
#[tokio::test(start_paused = true)]
async fn one_token_after_a_wait_admits_exactly_one_request() {
    let start = Instant::now();
    let log: Log = Rc::default();
    let svc =
        RateLimitLayer::new(Quota::per_second(1).unwrap()).layer(recorder(start, log.clone()));
    let local = tokio::task::LocalSet::new();
    for _ in 0..3 {
        let mut svc = svc.clone();
        local.spawn_local(async move { svc.ready().await.unwrap().call(()).await.unwrap() });
    }
    local.await;
    assert_eq!(
        *log.borrow(),
        vec![
            Duration::ZERO,
            Duration::from_secs(1),
            Duration::from_secs(2)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn services_from_two_layer_calls_and_their_clones_share_one_budget() {
    let layer = RateLimitLayer::new(Quota::per_second(1).unwrap().burst(3).unwrap()).reject();
    let inner = service_fn(|()| async { Ok::<_, Infallible>(()) });
    let a = layer.layer(inner);
    let b = layer.layer(inner);
    let mut services = vec![a.clone(), a, b.clone(), b];
    let mut admitted = 0;
    for svc in &mut services {
        if svc.ready().await.unwrap().call(()).await.is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3);
    assert_eq!(layer.limiter().remaining_burst(), 0);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_admitted_in_arrival_order() {
    let start = Instant::now();
    let order = Rc::new(RefCell::new(Vec::new()));
    let layer = RateLimitLayer::new(Quota::new(1, MS).unwrap());
    let svc = layer.layer(recorder(start, Rc::default()));
    // Spend the burst so that everyone queues.
    svc.clone().ready().await.unwrap().call(()).await.unwrap();
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let mut handles = Vec::new();
            for i in 0..100 {
                let mut svc = svc.clone();
                let order = order.clone();
                handles.push(tokio::task::spawn_local(async move {
                    svc.ready().await.unwrap();
                    order.borrow_mut().push(i);
                    svc.call(()).await.unwrap();
                }));
                // Let task i join the queue before task i + 1 arrives.
                tokio::task::yield_now().await;
                assert_eq!(layer.limiter().waiting(), i + 1);
            }
            for h in handles {
                h.await.unwrap();
            }
        })
        .await;
    assert_eq!(*order.borrow(), (0..100).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn max_wait_refuses_at_once_with_the_estimated_wait() {
    let layer =
        RateLimitLayer::new(Quota::per_second(10).unwrap()).max_wait(Duration::from_millis(150));
    let limiter = layer.limiter().clone();
    let svc = layer.layer(service_fn(|()| async { Ok::<_, Infallible>(()) }));
    svc.clone().oneshot(()).await.unwrap();
    // Next slot at 100 ms: within max_wait; queue one waiter there.
    let mut waiter = tokio_test::task::spawn(svc.clone().oneshot(()));
    assert!(waiter.poll().is_pending());
    assert_eq!(limiter.waiting(), 1);
    // A third request would wait 200 ms: refused at once, without waiting.
    let before = Instant::now();
    let err = svc.clone().oneshot(()).await.unwrap_err();
    assert_eq!(Instant::now(), before);
    let limited = err.downcast_ref::<RateLimited>().unwrap();
    assert_eq!(limited.retry_after(), Duration::from_millis(200));
    tokio::time::advance(Duration::from_millis(100)).await;
    assert!(waiter.poll().is_ready());
}

/// Drops a waiter's `ready()` future after k polls, for every k, with time moving between
/// polls; each time the waiter behind it must get the dropped one's slot, on time, and the
/// limiter must be left as it started.
#[tokio::test(start_paused = true)]
async fn waiter_dropped_at_every_await_point_leaves_nothing_behind() {
    for k in 0..5 {
        let t0 = Instant::now();
        let limiter = RateLimiter::new(Quota::new(1, Duration::from_millis(10)).unwrap());
        let svc = RateLimitLayer::from_limiter(limiter.clone())
            .layer(service_fn(|()| async { Ok::<_, Infallible>(()) }));
        limiter.check().unwrap();
        let mut a = svc.clone();
        let mut a_ready = tokio_test::task::spawn(a.ready());
        let mut b = tokio_test::task::spawn(svc.clone().oneshot(()));
        for poll in 0..k {
            assert!(a_ready.poll().is_pending(), "k = {k}");
            if poll == 0 {
                assert!(b.poll().is_pending());
                assert_eq!(limiter.waiting(), 2);
            }
            tokio::time::advance(Duration::from_millis(2)).await;
        }
        drop(a_ready);
        drop(a);
        if k == 0 {
            assert!(b.poll().is_pending());
        } else {
            assert!(b.is_woken(), "k = {k}: the next waiter was not woken");
            assert!(b.poll().is_pending());
        }
        assert_eq!(limiter.waiting(), 1, "k = {k}");
        // b takes the dropped waiter's slot at 10 ms, not a slot later.
        tokio::time::advance((t0 + Duration::from_millis(10)) - Instant::now()).await;
        assert!(b.poll().is_ready(), "k = {k}: b left hanging");
        assert_eq!(limiter.waiting(), 0);
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(limiter.remaining_burst(), 1, "k = {k}: a token leaked");
    }
}

#[tokio::test(start_paused = true)]
async fn readied_service_dropped_before_call_gives_its_token_back() {
    let layer = RateLimitLayer::new(Quota::per_second(1).unwrap());
    let limiter = layer.limiter().clone();
    let mut svc = layer.layer(service_fn(|()| async { Ok::<_, Infallible>(()) }));
    svc.ready().await.unwrap();
    assert_eq!(limiter.remaining_burst(), 0);
    drop(svc);
    assert_eq!(limiter.remaining_burst(), 1);
    assert!(limiter.check().is_ok());
}

#[tokio::test(start_paused = true)]
async fn refund_wakes_the_head_of_the_queue() {
    let layer = RateLimitLayer::new(Quota::per_second(1).unwrap());
    let limiter = layer.limiter().clone();
    let svc = layer.layer(service_fn(|()| async { Ok::<_, Infallible>(()) }));
    let mut holder = svc.clone();
    holder.ready().await.unwrap();
    let mut waiter = tokio_test::task::spawn(svc.clone().oneshot(()));
    assert!(waiter.poll().is_pending());
    drop(holder);
    assert!(
        waiter.is_woken(),
        "the waiter was not told a token came back"
    );
    assert!(waiter.poll().is_ready());
    assert_eq!(limiter.waiting(), 0);
}

/// Cancellations of every kind over a long run: what the others get still equals the bound.
#[tokio::test(start_paused = true)]
async fn drops_during_a_run_do_not_reduce_what_the_others_get() {
    let start = Instant::now();
    let log: Log = Rc::default();
    let layer = RateLimitLayer::new(Quota::new(1, MS).unwrap());
    let limiter = layer.limiter().clone();
    let svc = layer.layer(recorder(start, log.clone()));
    let run = Duration::from_secs(3);
    let local = tokio::task::LocalSet::new();
    for t in 0..16u64 {
        let svc = svc.clone();
        local.spawn_local(async move {
            let mut seed = t * 7919 + 1;
            while start.elapsed() <= run {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let mut s = svc.clone();
                match seed >> 62 {
                    // Give up waiting after 0–3 ms: the waiter is dropped mid-wait.
                    0 => {
                        let patience = MS * ((seed >> 40) % 4) as u32;
                        let _ = tokio::time::timeout(patience, s.ready()).await;
                    }
                    // Ready, then walk away without calling.
                    1 => {
                        s.ready().await.unwrap();
                    }
                    _ => {
                        s.ready().await.unwrap();
                        if start.elapsed() <= run {
                            s.call(()).await.unwrap();
                        }
                    }
                }
            }
        });
    }
    local.await;
    assert_eq!(limiter.waiting(), 0, "a waiter was left in the queue");
    let log = log.borrow();
    assert!(
        (3000..=3002).contains(&log.len()),
        "admitted {} in 3 s at 1/ms with drops",
        log.len()
    );
    assert_within_bound(&log, 1, MS);
}

#[tokio::test(start_paused = true)]
async fn quota_change_applies_to_waiters() {
    let layer = RateLimitLayer::new(Quota::per_second(1).unwrap());
    let limiter = layer.limiter().clone();
    let svc = layer.layer(service_fn(|()| async { Ok::<_, Infallible>(()) }));
    svc.clone().oneshot(()).await.unwrap();
    let mut waiter = tokio_test::task::spawn(svc.clone().oneshot(()));
    assert!(waiter.poll().is_pending());
    // Owes one interval of 1 s; at 100 per second it owes 10 ms.
    limiter.set_quota(Quota::per_second(100).unwrap());
    assert!(waiter.is_woken());
    assert!(waiter.poll().is_pending());
    tokio::time::advance(Duration::from_millis(10)).await;
    assert!(waiter.poll().is_ready());
    assert_eq!(limiter.quota(), Quota::per_second(100).unwrap());
}

#[tokio::test(start_paused = true)]
async fn handle_reports_remaining_burst_and_next_conforming() {
    let limiter = RateLimiter::new(Quota::per_second(10).unwrap().burst(3).unwrap());
    let t0 = Instant::now();
    assert_eq!(limiter.remaining_burst(), 3);
    assert_eq!(limiter.next_conforming(), t0);
    limiter.check_n(3).unwrap();
    assert_eq!(limiter.remaining_burst(), 0);
    assert_eq!(limiter.next_conforming(), t0 + Duration::from_millis(100));
    assert!(matches!(
        limiter.check_n(4),
        Err(palisade_ratelimit::CheckNError::InsufficientCapacity { burst: 3 })
    ));
    tokio::time::advance(Duration::from_millis(250)).await;
    assert_eq!(limiter.remaining_burst(), 2);
}

/// A service that gave up waiting (its `ready()` future dropped) but is kept, parked, at the
/// head of the queue must not hold up the waiters behind it.
#[tokio::test(start_paused = true)]
async fn a_parked_waiter_does_not_block_the_queue() {
    let t0 = Instant::now();
    let layer = RateLimitLayer::new(Quota::new(1, Duration::from_millis(10)).unwrap());
    let limiter = layer.limiter().clone();
    let svc = layer.layer(service_fn(|()| async { Ok::<_, Infallible>(()) }));
    svc.clone().oneshot(()).await.unwrap();
    let mut parked = svc.clone();
    assert!(tokio::time::timeout(MS, parked.ready()).await.is_err());
    assert_eq!(limiter.waiting(), 1);
    let out = tokio::time::timeout(Duration::from_secs(10), svc.clone().oneshot(())).await;
    out.expect("the waiter behind a parked one hung").unwrap();
    // The parked waiter was given its slot (10 ms) in its absence; the next one got 20 ms.
    assert_eq!(t0.elapsed(), Duration::from_millis(20));
    assert_eq!(limiter.next_conforming(), t0 + Duration::from_millis(30));
    // Dropping the parked service: its token's slot is past, so nothing comes back, and
    // nothing is lost either.
    drop(parked);
    assert_eq!(limiter.waiting(), 0);
    assert_eq!(limiter.next_conforming(), t0 + Duration::from_millis(30));
}

/// Burst > 1, others admitted while a readied service holds its token: dropping it gives the
/// whole token back.
#[tokio::test(start_paused = true)]
async fn a_token_held_while_others_pass_comes_back_whole() {
    let layer = RateLimitLayer::new(Quota::per_second(10).unwrap().burst(10).unwrap());
    let limiter = layer.limiter().clone();
    let mut held = layer.layer(service_fn(|()| async { Ok::<_, Infallible>(()) }));
    limiter.check_n(5).unwrap();
    held.ready().await.unwrap();
    limiter.check().unwrap();
    tokio::time::advance(Duration::from_millis(100)).await;
    drop(held);
    assert_eq!(limiter.remaining_burst(), 5);
}

/// In reject mode a refusal is a verdict for the next `call`; polled again later, the service
/// decides again.
#[tokio::test(start_paused = true)]
async fn a_refusal_does_not_go_stale() {
    let layer = RateLimitLayer::new(Quota::per_second(1).unwrap()).reject();
    let mut svc = layer.layer(service_fn(|()| async { Ok::<_, Infallible>(()) }));
    svc.ready().await.unwrap().call(()).await.unwrap();
    svc.ready().await.unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;
    svc.ready().await.unwrap().call(()).await.unwrap();
}

/// A reject-mode layer sharing a limiter with waiters does not pass them.
#[tokio::test(start_paused = true)]
async fn reject_mode_does_not_overtake_waiters() {
    let limiter = RateLimiter::new(Quota::per_second(1).unwrap());
    let inner = service_fn(|()| async { Ok::<_, Infallible>(()) });
    let waiting = RateLimitLayer::from_limiter(limiter.clone()).layer(inner);
    let rejecting = RateLimitLayer::from_limiter(limiter.clone())
        .reject()
        .layer(inner);
    limiter.check().unwrap();
    let mut waiter = tokio_test::task::spawn(waiting.oneshot(()));
    assert!(waiter.poll().is_pending());
    tokio::time::advance(Duration::from_secs(1)).await;
    // The token of 1 s belongs to the waiter, even though its task has not run yet.
    let err = rejecting.clone().oneshot(()).await.unwrap_err();
    assert!(err.is::<RateLimited>());
    assert!(waiter.poll().is_ready());
}

/// `max_wait` is one total deadline: a wait that grows past it (the quota was lowered) is
/// refused rather than served late.
#[tokio::test(start_paused = true)]
async fn max_wait_holds_when_the_wait_grows() {
    let layer =
        RateLimitLayer::new(Quota::per_second(10).unwrap()).max_wait(Duration::from_millis(150));
    let limiter = layer.limiter().clone();
    let svc = layer.layer(service_fn(|()| async { Ok::<_, Infallible>(()) }));
    svc.clone().oneshot(()).await.unwrap();
    let mut waiter = tokio_test::task::spawn(svc.clone().oneshot(()));
    assert!(waiter.poll().is_pending());
    limiter.set_quota(Quota::per_second(1).unwrap());
    let out = match waiter.poll() {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => panic!("a wait past max_wait was kept"),
    };
    assert!(out.unwrap_err().is::<RateLimited>());
    assert_eq!(limiter.waiting(), 0);
}
