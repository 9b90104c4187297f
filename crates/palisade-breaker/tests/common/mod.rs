//! Inner services shared by the integration tests.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Notify;
use tower::Service;

/// An inner service whose calls wait until released, counting calls.
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
