//! In-process tests of `ShutdownLayer` and the `Shutdown` coordinator without a server: the
//! in-flight count (completion, cancellation, panics), refusals, `drain()`, tracked workers and
//! the deadline. Every deadline runs on paused tokio time.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Ready;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_shutdown::{BoxError, ForceReason, Shutdown, ShutdownLayer, ShuttingDown};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_test::{assert_pending, assert_ready, task};
use tower::{service_fn, Layer, Service, ServiceExt};

const DEADLINE: Duration = Duration::from_secs(30);

/// A handler that answers a request `rx` with what is sent on it: in flight until then.
fn held() -> impl Service<
    oneshot::Receiver<u32>,
    Response = u32,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<u32, Infallible>> + Send,
> + Clone
       + Send {
    service_fn(|rx: oneshot::Receiver<u32>| async move {
        Ok::<_, Infallible>(rx.await.expect("the test keeps every sender"))
    })
}

fn assert_shutting_down(err: &BoxError) {
    assert!(err.is::<ShuttingDown>(), "expected ShuttingDown, got {err}");
}

/// Handler invocations per request id.
type Calls = Arc<Mutex<HashMap<u32, usize>>>;

#[tokio::test(start_paused = true)]
async fn in_flight_requests_complete_and_later_ones_are_refused() {
    const IN_FLIGHT: u32 = 8;
    const LATE: u32 = 5;
    let shutdown = Shutdown::new(DEADLINE);
    let calls = Calls::default();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (release, released) = watch::channel(false);
    let handler = {
        let calls = calls.clone();
        service_fn(move |id: u32| {
            *calls.lock().unwrap().entry(id).or_default() += 1;
            let started = started_tx.clone();
            let mut released = released.clone();
            async move {
                started.send(id).unwrap();
                released.wait_for(|go| *go).await.unwrap();
                Ok::<_, Infallible>(id * 10)
            }
        })
    };
    let svc = shutdown.layer().layer(handler);

    let early: Vec<_> = (0..IN_FLIGHT)
        .map(|id| (id, tokio::spawn(svc.clone().oneshot(id))))
        .collect();
    for _ in 0..IN_FLIGHT {
        started.recv().await.unwrap();
    }
    assert_eq!(shutdown.requests_in_flight(), IN_FLIGHT as usize);

    shutdown.trigger();
    for id in 100..100 + LATE {
        let err = svc.clone().oneshot(id).await.unwrap_err();
        assert_shutting_down(&err);
    }
    assert_eq!(shutdown.requests_in_flight(), IN_FLIGHT as usize);

    // The drain waits for the requests in flight.
    let mut drain = task::spawn({
        let shutdown = shutdown.clone();
        async move { shutdown.drain().await }
    });
    assert_pending!(drain.poll());

    release.send(true).unwrap();
    for (id, handle) in early {
        assert_eq!(handle.await.unwrap().unwrap(), id * 10, "request {id}");
    }
    assert!(drain.is_woken());
    let report = assert_ready!(drain.poll());

    // Every id answered exactly once; the late ones never reached the handler.
    let calls = calls.lock().unwrap().clone();
    let expected: HashMap<u32, usize> = (0..IN_FLIGHT).map(|id| (id, 1)).collect();
    assert_eq!(calls, expected);

    assert_eq!(report.forced, None);
    assert_eq!(report.elapsed, Duration::ZERO);
    assert_eq!(report.requests_completed, u64::from(IN_FLIGHT));
    assert_eq!(report.requests_refused, u64::from(LATE));
    assert_eq!(report.requests_cut_off, 0);
    assert_eq!(shutdown.requests_in_flight(), 0);
}

/// An inner service counting `poll_ready` and `call`; ready only when `ready` is set.
#[derive(Clone, Debug, Default)]
struct Probe {
    ready: Arc<AtomicBool>,
    ready_polls: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

impl Service<u32> for Probe {
    type Response = u32;
    type Error = Infallible;
    type Future = Ready<Result<u32, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.ready_polls.fetch_add(1, Ordering::SeqCst);
        if self.ready.load(Ordering::SeqCst) {
            Poll::Ready(Ok(()))
        } else {
            // The test polls by hand: nobody needs a wake-up.
            Poll::Pending
        }
    }

    fn call(&mut self, n: u32) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(n))
    }
}

#[tokio::test(start_paused = true)]
async fn refusals_never_poll_or_call_the_inner_service() {
    let layer = ShutdownLayer::new();
    let handle = layer.handle();

    // An inner service that is never ready: before closing, readiness waits on it.
    let stuck = Probe::default();
    let mut svc = layer.layer(stuck.clone());
    {
        let mut ready = task::spawn(ServiceExt::<u32>::ready(&mut svc));
        assert_pending!(ready.poll());
    }
    assert_eq!(stuck.ready_polls.load(Ordering::SeqCst), 1);

    handle.close();
    assert!(handle.is_closed());
    // Closed: ready at once, without asking the inner service, and the call refuses.
    let err = ServiceExt::<u32>::ready(&mut svc)
        .await
        .unwrap()
        .call(1)
        .await
        .unwrap_err();
    assert_shutting_down(&err);
    assert_eq!(stuck.ready_polls.load(Ordering::SeqCst), 1);
    assert_eq!(stuck.calls.load(Ordering::SeqCst), 0);

    // Made ready before the close, called after: refused too, the inner call never made.
    let eager = Probe::default();
    eager.ready.store(true, Ordering::SeqCst);
    let layer = ShutdownLayer::new();
    let handle2 = layer.handle();
    let mut svc = layer.layer(eager.clone());
    ServiceExt::<u32>::ready(&mut svc).await.unwrap();
    assert_eq!(eager.ready_polls.load(Ordering::SeqCst), 1);
    handle2.close();
    let err = svc.call(2).await.unwrap_err();
    assert_shutting_down(&err);
    assert_eq!(eager.calls.load(Ordering::SeqCst), 0);
    assert_eq!(handle2.in_flight(), 0);

    assert_eq!(handle.counts(), (0, 0, 1));
    assert_eq!(handle2.counts(), (0, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn clones_and_repeated_layers_share_one_counter() {
    let layer = ShutdownLayer::new();
    let mut a = layer.layer(held());
    let mut b = a.clone();
    let mut c = layer.clone().layer(held());
    let mut d = layer.layer(held());
    let mut senders = Vec::new();
    let mut futures = Vec::new();
    for svc in [&mut a, &mut b, &mut c, &mut d] {
        let (tx, rx) = oneshot::channel();
        senders.push(tx);
        futures.push(task::spawn(svc.ready().await.unwrap().call(rx)));
    }
    assert_eq!(layer.handle().in_flight(), 4);
    assert_eq!(layer.clone().handle().in_flight(), 4);

    for (n, (tx, mut fut)) in senders.into_iter().zip(futures).enumerate() {
        assert_pending!(fut.poll());
        tx.send(n as u32).unwrap();
        assert_eq!(assert_ready!(fut.poll()).unwrap(), n as u32);
        assert_eq!(layer.handle().in_flight(), 3 - n);
    }

    // One close refuses through every service of the layer.
    layer.handle().close();
    for svc in [&mut a, &mut b, &mut c, &mut d] {
        let (_tx, rx) = oneshot::channel();
        assert_shutting_down(&svc.ready().await.unwrap().call(rx).await.unwrap_err());
    }
    assert_eq!(layer.handle().counts(), (0, 0, 4));

    // Repeated `Shutdown::layer()` calls count into the same shutdown, and its trigger closes
    // them all.
    let shutdown = Shutdown::new(DEADLINE);
    let mut x = shutdown.layer().layer(held());
    let mut y = shutdown.layer().layer(held());
    let (tx_x, rx_x) = oneshot::channel();
    let (tx_y, rx_y) = oneshot::channel();
    let fx = tokio::spawn(x.ready().await.unwrap().call(rx_x));
    let fy = tokio::spawn(y.ready().await.unwrap().call(rx_y));
    assert_eq!(shutdown.requests_in_flight(), 2);
    shutdown.trigger();
    for svc in [&mut x, &mut y] {
        let (_tx, rx) = oneshot::channel();
        assert_shutting_down(&svc.ready().await.unwrap().call(rx).await.unwrap_err());
    }
    tx_x.send(1).unwrap();
    tx_y.send(2).unwrap();
    assert_eq!(fx.await.unwrap().unwrap(), 1);
    assert_eq!(fy.await.unwrap().unwrap(), 2);
    let report = shutdown.drain().await;
    assert_eq!(
        (
            report.requests_completed,
            report.requests_refused,
            report.requests_cut_off
        ),
        (2, 2, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn handle_drain_resolves_only_after_the_last_request() {
    let layer = ShutdownLayer::new();
    let handle = layer.handle();
    let mut svc = layer.layer(held());

    // Nothing in flight: at once, closed or not.
    assert_ready!(task::spawn(handle.drain()).poll());

    let (tx1, rx1) = oneshot::channel();
    let (tx2, rx2) = oneshot::channel();
    let mut first = task::spawn(svc.ready().await.unwrap().call(rx1));
    let mut second = task::spawn(svc.ready().await.unwrap().call(rx2));
    assert_pending!(first.poll());
    assert_pending!(second.poll());
    assert_eq!(handle.in_flight(), 2);

    handle.close();
    let mut drain = task::spawn(handle.drain());
    assert_pending!(drain.poll());

    tx1.send(1).unwrap();
    assert_eq!(assert_ready!(first.poll()).unwrap(), 1);
    assert_eq!(handle.in_flight(), 1);
    assert_pending!(drain.poll());

    tx2.send(2).unwrap();
    assert!(!drain.is_woken(), "woken before the last request completed");
    assert_eq!(assert_ready!(second.poll()).unwrap(), 2);
    assert_eq!(handle.in_flight(), 0);
    assert!(drain.is_woken(), "the last request must wake the drain");
    assert_ready!(drain.poll());
    assert_eq!(handle.counts(), (2, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn cancelled_response_future_counts_as_cut_off_after_close() {
    let layer = ShutdownLayer::new();
    let handle = layer.handle();
    let mut svc = layer.layer(held());

    // Cancelled before the close: counted out, but not as cut off.
    let (_tx0, rx0) = oneshot::channel();
    let early = svc.ready().await.unwrap().call(rx0);
    assert_eq!(handle.in_flight(), 1);
    drop(early);
    assert_eq!(handle.in_flight(), 0);

    let (_tx1, rx1) = oneshot::channel();
    let mut fut = task::spawn(svc.ready().await.unwrap().call(rx1));
    assert_pending!(fut.poll());
    handle.close();
    let mut drain = task::spawn(handle.drain());
    assert_pending!(drain.poll());
    drop(fut);
    assert_eq!(handle.in_flight(), 0);
    assert!(drain.is_woken());
    assert_ready!(drain.poll());
    assert_eq!(handle.counts(), (0, 1, 0));

    // Through a `Shutdown`: a task aborted mid-request shows up as cut off in the report.
    let shutdown = Shutdown::new(DEADLINE);
    let mut svc = shutdown.layer().layer(held());
    let (_tx, rx) = oneshot::channel();
    let request = tokio::spawn(svc.ready().await.unwrap().call(rx));
    assert_eq!(shutdown.requests_in_flight(), 1);
    shutdown.trigger();
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());
    assert_eq!(shutdown.requests_in_flight(), 0);
    let report = shutdown.drain().await;
    assert_eq!(report.forced, None);
    assert_eq!(report.elapsed, Duration::ZERO);
    assert_eq!((report.requests_completed, report.requests_cut_off), (0, 1));
}

/// A handler that panics on request 7 once it is let go.
fn panicky() -> impl Service<
    oneshot::Receiver<u32>,
    Response = u32,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<u32, Infallible>> + Send,
> + Clone
       + Send {
    service_fn(|rx: oneshot::Receiver<u32>| async move {
        let n = rx.await.expect("the test keeps every sender");
        if n == 7 {
            panic!("handler panicked on purpose");
        }
        Ok::<_, Infallible>(n)
    })
}

#[tokio::test(start_paused = true)]
async fn panic_in_handler_counts_the_request_out() {
    // A bare layer: the count goes back to zero and drain() resolves.
    let layer = ShutdownLayer::new();
    let handle = layer.handle();
    let svc = layer.layer(panicky());
    let (tx, rx) = oneshot::channel();
    let request = tokio::spawn(svc.clone().oneshot(rx));
    tokio::task::yield_now().await;
    assert_eq!(handle.in_flight(), 1);
    tx.send(7).unwrap();
    assert!(request.await.unwrap_err().is_panic());
    assert_eq!(handle.in_flight(), 0);
    handle.close();
    assert_ready!(task::spawn(handle.drain()).poll());

    // Through a shutdown: one request panics mid-drain, one completes; the drain ends without
    // waiting for the deadline and counts the panicked one as cut off.
    let shutdown = Shutdown::new(DEADLINE);
    let mut svc = shutdown.layer().layer(panicky());
    let (tx_panic, rx_panic) = oneshot::channel();
    let (tx_ok, rx_ok) = oneshot::channel();
    let panics = tokio::spawn(svc.ready().await.unwrap().call(rx_panic));
    let completes = tokio::spawn(svc.ready().await.unwrap().call(rx_ok));
    assert_eq!(shutdown.requests_in_flight(), 2);
    shutdown.trigger();
    tx_panic.send(7).unwrap();
    tx_ok.send(1).unwrap();
    assert!(panics.await.unwrap_err().is_panic());
    assert_eq!(completes.await.unwrap().unwrap(), 1);
    assert_eq!(shutdown.requests_in_flight(), 0);
    let report = shutdown.drain().await;
    assert_eq!(report.forced, None);
    assert_eq!(report.elapsed, Duration::ZERO);
    assert_eq!((report.requests_completed, report.requests_cut_off), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn deadline_cuts_a_hung_request() {
    let deadline = Duration::from_secs(10);
    let shutdown = Shutdown::with_log_interval(deadline, Duration::from_secs(1));
    let mut svc = shutdown.layer().layer(held());
    let (_never, rx_hung) = oneshot::channel();
    let (tx_ok, rx_ok) = oneshot::channel();
    let hung = tokio::spawn(svc.ready().await.unwrap().call(rx_hung));
    let ok = tokio::spawn(svc.ready().await.unwrap().call(rx_ok));
    shutdown.trigger();
    tx_ok.send(5).unwrap();
    assert_eq!(ok.await.unwrap().unwrap(), 5);

    let report = shutdown.drain().await;
    assert_eq!(report.forced, Some(ForceReason::Deadline));
    assert_eq!(report.elapsed, deadline);
    assert_eq!(report.requests_completed, 1);
    // Not on a server the shutdown can cut: still running, so reported as cut off.
    assert_eq!(report.requests_cut_off, 1);
    assert_eq!(report.cut_off(), 1);
    assert!(!hung.is_finished());
    hung.abort();
}

#[tokio::test(start_paused = true)]
async fn deadline_counts_from_the_trigger() {
    let deadline = Duration::from_secs(10);
    let shutdown = Shutdown::new(deadline);
    let mut svc = shutdown.layer().layer(held());
    let (_never, rx) = oneshot::channel();
    let hung = tokio::spawn(svc.ready().await.unwrap().call(rx));
    shutdown.trigger();
    tokio::time::advance(Duration::from_secs(4)).await;
    let started = tokio::time::Instant::now();
    let report = shutdown.drain().await;
    assert_eq!(report.forced, Some(ForceReason::Deadline));
    assert_eq!(report.elapsed, deadline);
    assert_eq!(started.elapsed(), Duration::from_secs(6));
    hung.abort();
}

#[tokio::test(start_paused = true)]
async fn workers_see_their_token_cancelled_and_finish() {
    let shutdown = Shutdown::new(DEADLINE);

    // Finished before the shutdown: its output is kept, it is not counted.
    let before = shutdown.spawn(|_stop| async { "before" });
    assert_eq!(before.await.unwrap(), Some("before"));

    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let mut jobs = Vec::new();
    let workers: Vec<_> = (0..3_u32)
        .map(|id| {
            let seen = seen_tx.clone();
            let (job_tx, mut job_rx) = mpsc::unbounded_channel::<u32>();
            jobs.push(job_tx);
            shutdown.spawn(move |stop| async move {
                let mut done = 0;
                loop {
                    tokio::select! {
                        biased;
                        Some(job) = job_rx.recv() => done += job,
                        () = stop.cancelled() => break,
                    }
                }
                seen.send(id).unwrap();
                done
            })
        })
        .collect();
    for (id, job) in (0_u32..).zip(&jobs) {
        job.send(id + 1).unwrap();
        job.send(10).unwrap();
    }
    let token = shutdown.token();
    tokio::time::advance(Duration::from_secs(3)).await;
    assert!(!token.is_cancelled());
    assert!(
        seen.try_recv().is_err(),
        "a worker stopped before the trigger"
    );
    assert!(workers.iter().all(|w| !w.is_finished()));
    assert_eq!(shutdown.tasks(), 3);

    shutdown.trigger();
    assert!(token.is_cancelled());
    let report = shutdown.drain().await;
    assert_eq!(report.forced, None);
    assert_eq!(report.elapsed, Duration::ZERO);
    assert_eq!((report.tasks_completed, report.tasks_cut_off), (3, 0));
    let mut ids: Vec<_> = std::iter::from_fn(|| seen.try_recv().ok()).collect();
    ids.sort_unstable();
    assert_eq!(ids, [0, 1, 2]);
    for (id, worker) in (0_u32..).zip(workers) {
        assert_eq!(worker.await.unwrap(), Some(id + 11));
    }
    assert_eq!(shutdown.tasks(), 0);
}

#[tokio::test(start_paused = true)]
async fn worker_ignoring_its_token_is_cut_at_the_deadline() {
    let deadline = Duration::from_secs(10);
    let shutdown = Shutdown::new(deadline);
    let ticks = Arc::new(AtomicUsize::new(0));
    let stubborn = shutdown.spawn({
        let ticks = ticks.clone();
        move |_stop| async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let polite = shutdown.spawn(|stop| async move {
        stop.cancelled().await;
        "stopped"
    });

    shutdown.trigger();
    let report = shutdown.drain().await;
    assert_eq!(report.forced, Some(ForceReason::Deadline));
    assert_eq!(report.elapsed, deadline);
    assert_eq!((report.tasks_completed, report.tasks_cut_off), (1, 1));
    assert_eq!(polite.await.unwrap(), Some("stopped"));
    assert_eq!(stubborn.await.unwrap(), None);
    assert_eq!(shutdown.tasks(), 0);

    // It was dropped, not left running.
    let at_cut = ticks.load(Ordering::SeqCst);
    assert!(at_cut > 0, "the stubborn worker never ran");
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(ticks.load(Ordering::SeqCst), at_cut);
}

#[tokio::test(start_paused = true)]
async fn force_during_the_drain_ends_it_at_once() {
    let shutdown = Shutdown::new(Duration::from_secs(60));
    let stubborn = shutdown.spawn(|_stop| std::future::pending::<()>());
    let mut svc = shutdown.layer().layer(held());
    let (_never, rx) = oneshot::channel();
    let hung = tokio::spawn(svc.ready().await.unwrap().call(rx));

    shutdown.trigger();
    let drain = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { shutdown.drain().await }
    });
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(!drain.is_finished());

    shutdown.force();
    let report = drain.await.unwrap();
    assert_eq!(report.forced, Some(ForceReason::Forced));
    assert_eq!(report.elapsed, Duration::from_secs(5));
    assert_eq!(report.tasks_cut_off, 1);
    assert_eq!(report.requests_cut_off, 1);
    assert_eq!(stubborn.await.unwrap(), None);
    hung.abort();
}

#[tokio::test(start_paused = true)]
async fn drain_after_the_deadline_with_nothing_left_is_not_forced() {
    // Triggered, then the application spends longer than the deadline before draining; by then
    // nothing is in flight. The drain has nothing to cut, so nothing was forced.
    for _ in 0..32 {
        let deadline = Duration::from_secs(10);
        let shutdown = Shutdown::new(deadline);
        let worker = shutdown.spawn(|stop| async move { stop.cancelled().await });
        shutdown.trigger();
        assert_eq!(worker.await.unwrap(), Some(()));
        tokio::time::advance(deadline + Duration::from_secs(1)).await;
        let report = shutdown.drain().await;
        assert_eq!(report.forced, None, "{report}");
        assert_eq!(report.cut_off(), 0);
    }
}

/// An inner service that is never ready (a saturated pool, say).
#[derive(Clone, Default)]
struct Saturated;

impl tower::Service<u32> for Saturated {
    type Response = u32;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<u32, std::convert::Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), std::convert::Infallible>> {
        std::task::Poll::Pending
    }

    fn call(&mut self, n: u32) -> Self::Future {
        std::future::ready(Ok(n))
    }
}

/// A caller already waiting in `poll_ready` on a busy inner service is refused as soon as the
/// shutdown begins, not when the inner service frees up.
#[tokio::test(start_paused = true)]
async fn a_caller_waiting_on_a_busy_inner_service_is_refused_at_the_trigger() {
    use tower::{Layer, ServiceExt};
    let shutdown = palisade_shutdown::Shutdown::new(std::time::Duration::from_secs(10));
    let svc = shutdown.layer().layer(Saturated);
    let mut waiter = tokio_test::task::spawn(svc.oneshot(1));
    assert!(waiter.poll().is_pending());
    shutdown.trigger();
    assert!(
        waiter.is_woken(),
        "the waiting caller was not woken by the trigger"
    );
    match waiter.poll() {
        std::task::Poll::Ready(Err(e)) => assert!(e.is::<palisade_shutdown::ShuttingDown>()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Two drains of one shutdown agree on why it was forced.
#[tokio::test(start_paused = true)]
async fn concurrent_drains_report_the_same_reason() {
    let shutdown = palisade_shutdown::Shutdown::new(std::time::Duration::from_secs(10));
    let _stuck = shutdown.spawn(|_| std::future::pending::<()>());
    let (a, b) = tokio::join!(shutdown.drain(), shutdown.drain());
    assert_eq!(a.forced, Some(palisade_shutdown::ForceReason::Deadline));
    assert_eq!(b.forced, Some(palisade_shutdown::ForceReason::Deadline));
}

/// `Duration::MAX` means "no deadline", not a panic.
#[tokio::test(start_paused = true)]
async fn an_endless_deadline_does_not_overflow() {
    let shutdown = palisade_shutdown::Shutdown::with_log_interval(
        std::time::Duration::MAX,
        std::time::Duration::MAX,
    );
    let report = shutdown.drain().await;
    assert_eq!(report.forced, None);
}

/// Listening twice would make one signal look like two.
#[tokio::test(start_paused = true)]
async fn listening_for_signals_twice_is_refused() {
    let shutdown = palisade_shutdown::Shutdown::new(std::time::Duration::from_secs(10));
    shutdown.listen_for_signals().unwrap();
    let err = shutdown.listen_for_signals().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
}

// ===== Found by a review: the deadline's own tick, tasks spawned late, panicking workers =====

/// A request that ends on the deadline's very tick was answered: it is completed, and the
/// drain is not a force.
#[tokio::test(start_paused = true)]
async fn a_request_finishing_exactly_at_the_deadline_is_completed_not_forced() {
    let d = Duration::from_secs(10);
    let shutdown = Shutdown::new(d);
    let svc = shutdown.layer().layer(service_fn(move |_: u32| async move {
        tokio::time::sleep(d).await;
        Ok::<_, Infallible>(())
    }));
    let req = tokio::spawn(svc.oneshot(1));
    tokio::task::yield_now().await;
    shutdown.trigger();
    let report = shutdown.drain().await;
    req.await.unwrap().unwrap();
    assert_eq!(
        (report.requests_completed, report.requests_cut_off),
        (1, 0),
        "{report}"
    );
    assert_eq!(report.forced, None, "{report}");
}

/// The same for a tracked worker.
#[tokio::test(start_paused = true)]
async fn a_worker_finishing_exactly_at_the_deadline_is_completed_not_forced() {
    let d = Duration::from_secs(10);
    let shutdown = Shutdown::new(d);
    let worker = shutdown.spawn(|_| tokio::time::sleep(d));
    shutdown.trigger();
    let report = shutdown.drain().await;
    assert_eq!(worker.await.unwrap(), Some(()));
    assert_eq!(
        (report.tasks_completed, report.tasks_cut_off),
        (1, 0),
        "{report}"
    );
    assert_eq!(report.forced, None, "{report}");
}

/// A handler in flight at the trigger that spawns a tracked task before it answers: the drain
/// waits for that task too.
#[tokio::test(start_paused = true)]
async fn a_task_spawned_by_a_request_during_the_drain_is_waited_for() {
    let shutdown = Shutdown::new(DEADLINE);
    let sd = shutdown.clone();
    let svc = shutdown.layer().layer(service_fn(move |_: u32| {
        let sd = sd.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            sd.spawn(|_| tokio::time::sleep(Duration::from_secs(5)));
            Ok::<_, Infallible>(())
        }
    }));
    let req = tokio::spawn(svc.oneshot(1));
    tokio::task::yield_now().await;
    shutdown.trigger();
    let report = shutdown.drain().await;
    req.await.unwrap().unwrap();
    assert_eq!(
        shutdown.tasks(),
        0,
        "returned with a task running: {report}"
    );
    assert_eq!(report.elapsed, Duration::from_secs(6), "{report}");
    assert_eq!(
        (report.tasks_completed, report.tasks_cut_off),
        (1, 0),
        "{report}"
    );
    assert_eq!(report.forced, None);
}

/// A tracked worker that panics during the drain is counted, as cut off.
#[tokio::test(start_paused = true)]
async fn a_worker_panicking_during_the_drain_is_counted_as_cut_off() {
    let shutdown = Shutdown::new(DEADLINE);
    let worker = shutdown.spawn(|stop| async move {
        stop.cancelled().await;
        panic!("boom")
    });
    shutdown.trigger();
    let report = shutdown.drain().await;
    assert!(worker.await.unwrap_err().is_panic());
    assert_eq!(
        (report.tasks_completed, report.tasks_cut_off),
        (0, 1),
        "{report}"
    );
}
