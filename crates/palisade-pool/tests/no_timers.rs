//! A pool that times nothing (no idle timeout, no lifetime, no checkout or connect timeout)
//! needs no timer and no task: it works on a tokio runtime built without the time driver, and
//! outside any runtime, without complaint; with a checkout timeout there, it says once that it
//! cannot keep it, and works on. (Its own binary: it installs a panic hook, and counts
//! `tracing` events.)

mod common;

use common::*;

thread_local! {
    static PANICS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Panics so far on this thread. The hook that counts them is installed once for the binary
/// (tests run on threads of their own) and passes every panic on to the default hook.
fn panics_here() -> usize {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            prev(info);
        }));
    });
    PANICS.with(std::cell::Cell::get)
}

/// On a current-thread runtime built without timers: one checkout holds the only connection
/// and a second waits 50 yields; then the first returns it to the second. Returns the panics
/// on this thread while the second waited, and in all.
fn one_waiter_without_timers(config: palisade_pool::Config) -> (usize, usize) {
    let before = panics_here();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let connector = Connector::with_limits(1, 1);
    let (mut pool, handle) = pool(config, &connector);
    rt.block_on(async {
        let (r0, t0) = Req::new("k").id(0).held();
        let mut f0 = start(&mut pool, r0);
        pending(&mut f0);
        let mut p = pool.clone();
        let waiter = tokio::spawn(async move {
            use tower::{Service, ServiceExt};
            p.ready().await.unwrap().call(Req::new("k").id(1)).await
        });
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        let while_waiting = panics_here() - before;
        t0.send(()).unwrap();
        ok(&mut f0);
        assert_eq!(waiter.await.unwrap().unwrap().conn, 1);
        assert_quiet(&handle.stats());
        (while_waiting, panics_here() - before)
    })
}

/// A pool whose config times nothing (no idle timeout, lifetime, checkout or connect
/// timeout) creates no timer, so it runs on a runtime without the time driver. (For a while
/// after ac81794 the upkeep task always slept towards a 30 s sweep: `sleep_until` panicked
/// there on every connect and return, and with a waiter queued the dying task woke the
/// waiter, whose poll restarted the task: a busy loop of panics while it waited.)
#[test]
fn a_pool_that_times_nothing_does_not_panic_on_a_runtime_without_timers() {
    let config = limits(1, 1)
        .no_idle_timeout()
        .no_checkout_timeout()
        .no_connect_timeout()
        .build()
        .unwrap();
    assert_eq!(one_waiter_without_timers(config), (0, 0));
}

/// With a checkout timeout (the default) on such a runtime, the upkeep task that keeps the
/// waiter's deadline cannot make its timer: it says so once (one panic, caught, and an error
/// event) and goes on without it; the waiter is served when the connection comes back. (It
/// used to end at the panic, and the waiter it woke restarted it at once: 1,500 panics in 50
/// yields.)
#[test]
fn a_checkout_timeout_on_a_runtime_without_timers_does_not_loop() {
    let config = limits(1, 1)
        .no_idle_timeout()
        .no_connect_timeout()
        .build()
        .unwrap();
    assert_eq!(config.sweep_interval(), None);
    let (while_waiting, total) = one_waiter_without_timers(config);
    assert!(
        while_waiting <= 1,
        "{while_waiting} panics while one checkout waited"
    );
    assert!(total <= 1, "{total} panics in all");
}

/// Counts `WARN` events.
struct CountWarns(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl tracing::Subscriber for CountWarns {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Outside a tokio runtime, a pool that times nothing asks for no upkeep task, so it does not
/// warn that there is no runtime on every connect and return (nothing expires and nobody
/// waits).
#[test]
fn outside_a_runtime_a_pool_that_times_nothing_does_not_warn_on_every_return() {
    let warns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let _guard = tracing::subscriber::set_default(CountWarns(warns.clone()));
    let connector = Connector::new();
    let config = limits(1, 1)
        .no_idle_timeout()
        .no_checkout_timeout()
        .no_connect_timeout()
        .build()
        .unwrap();
    let (mut pool, handle) = pool(config, &connector);
    for i in 0..10 {
        assert_eq!(send_now(&mut pool, Req::new("k").id(i)).conn, 1);
    }
    assert_quiet(&handle.stats());
    assert_eq!(
        warns.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "warnings for 1 connect and 10 returns"
    );
}
