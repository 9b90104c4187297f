//! The in-flight request counter shared by a [`ShutdownLayer`](crate::ShutdownLayer)'s
//! services, and the guard each response future owns.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub(crate) struct Gate {
    closed: AtomicBool,
    /// Cancelled on close: wakes callers parked in `poll_ready` on a busy inner service.
    closing: CancellationToken,
    in_flight: AtomicUsize,
    idle: Notify,
    completed_after_close: AtomicU64,
    cut_after_close: AtomicU64,
    refused: AtomicU64,
}

/// Counts one request in flight; owned by its response future, so a completion, a
/// cancellation and a panic in the handler (which drops the future while unwinding) all
/// count it out.
#[derive(Debug)]
pub(crate) struct Guard {
    gate: Arc<Gate>,
    completed: bool,
}

impl Gate {
    /// Counts a request in, unless the gate is closed. In first, then check: a close racing
    /// with this either sees the request in flight, or the request sees the gate closed.
    pub(crate) fn enter(self: &Arc<Self>) -> Option<Guard> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            self.leave();
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Guard {
            gate: self.clone(),
            completed: false,
        })
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.closing.cancel();
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            self.idle.notify_waiters();
        }
    }

    pub(crate) fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// A request turned away at `poll_ready` (before it was counted in).
    pub(crate) fn refuse(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    fn leave(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Resolves when no request is in flight.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check: a last request leaving in between still wakes us.
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        (
            self.completed_after_close.load(Ordering::Relaxed),
            self.cut_after_close.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

impl Guard {
    pub(crate) fn complete(&mut self) {
        self.completed = true;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.gate.is_closed() {
            let counter = if self.completed {
                &self.gate.completed_after_close
            } else {
                &self.gate.cut_after_close
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.gate.leave();
    }
}
