//! Inner services shared by the integration tests.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Notify;
use tower::Service;

/// An inner service whose calls wait until released, counting calls.
#[allow(dead_code)] // each test binary uses part of this module
#[derive(Clone)]
pub(crate) struct Gate {
    pub(crate) calls: Arc<AtomicUsize>,
    pub(crate) release: Arc<Notify>,
}

impl Service<bool> for Gate {
    type Response = ();
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: bool) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let release = self.release.clone();
        Box::pin(async move {
            release.notified().await;
            Ok(())
        })
    }
}

/// A breaker-wrapped service: `true` succeeds, `false` fails.
#[allow(dead_code)] // each test binary uses part of this module
pub(crate) type Svc = tower::util::BoxCloneService<bool, (), palisade_breaker::BoxError>;

/// A service answering `Ok` for `true` and `Err` for `false`, behind `layer`.
#[allow(dead_code)]
pub(crate) fn flaky(layer: &palisade_breaker::CircuitBreakerLayer) -> Svc {
    use tower::Layer;
    tower::util::BoxCloneService::new(layer.layer(tower::service_fn(|ok: bool| async move {
        if ok {
            Ok(())
        } else {
            Err("upstream failed")
        }
    })))
}

/// Opens for 1 s, doubling up to 8 s, without jitter: open times the tests can name.
#[allow(dead_code)]
pub(crate) fn quick_open() -> palisade_breaker::ConfigBuilder {
    palisade_breaker::Config::builder()
        .open_duration(
            std::time::Duration::from_secs(1),
            2,
            std::time::Duration::from_secs(8),
        )
        .jitter(0)
}

/// A waker that does nothing (`Waker::noop` needs a newer Rust than the crate's minimum).
#[allow(dead_code)]
pub(crate) fn noop_waker() -> std::task::Waker {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    std::task::Waker::from(Arc::new(Noop))
}
