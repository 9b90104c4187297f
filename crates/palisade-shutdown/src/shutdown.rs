//! [`Shutdown`]: the coordinator — trigger, stop accepting, drain until a deadline, force,
//! report.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::gate::Gate;
use crate::layer::ShutdownLayer;

/// After the force, how long cut tasks get to unwind before the report is written.
const FORCE_GRACE: Duration = Duration::from_millis(100);

/// Coordinates a graceful shutdown: what triggers it, what it waits for, and for how long.
///
/// Phases: **triggered** (by SIGTERM or SIGINT once [`listen_for_signals`] runs, or by
/// [`trigger`]) → **stop accepting** (the server's accept loop ends, [`ShutdownLayer`]s refuse,
/// workers see their token cancelled) → **drain** in-flight requests, connections and tasks
/// until the deadline → **force** (connections are cut, tracked tasks dropped) → a
/// [`DrainReport`]. A second signal during the drain forces at once. While draining it logs,
/// every `log_interval`, what it is still waiting for.
///
/// Cloning is cheap; every clone is the same shutdown. Built on tokio-util's
/// [`CancellationToken`] and [`TaskTracker`].
///
/// [`listen_for_signals`]: Shutdown::listen_for_signals
/// [`trigger`]: Shutdown::trigger
///
/// ```
/// use std::time::Duration;
/// use palisade_shutdown::Shutdown;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let shutdown = Shutdown::new(Duration::from_secs(10));
/// // A worker that stops at the next item once shutdown begins.
/// shutdown.spawn(|stop| async move {
///     let mut done = 0;
///     while !stop.is_cancelled() {
///         tokio::time::sleep(Duration::from_millis(100)).await; // one item of work
///         done += 1;
///     }
///     done
/// });
/// tokio::time::sleep(Duration::from_secs(1)).await;
/// shutdown.trigger();
/// let report = shutdown.drain().await;
/// assert_eq!((report.tasks_completed, report.tasks_cut_off), (1, 0));
/// assert!(report.forced.is_none());
/// # }
/// ```
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

struct Inner {
    triggered: CancellationToken,
    forced: CancellationToken,
    tracker: TaskTracker,
    requests: Arc<Gate>,
    deadline: Duration,
    log_interval: Duration,
    triggered_at: OnceLock<Instant>,
    force_reason: OnceLock<ForceReason>,
    listening: AtomicBool,
    connections: AtomicUsize,
    connections_closed: AtomicU64,
    connections_cut: AtomicU64,
    tasks_completed: AtomicU64,
    tasks_cut: AtomicU64,
    /// Workers spawned and not yet ended (counted from before they are spawned).
    workers: AtomicUsize,
}

/// Why the drain was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForceReason {
    /// The drain deadline passed.
    Deadline,
    /// A second signal (or [`Shutdown::force`]) arrived during the drain.
    Forced,
}

/// What a shutdown did: how long it took, what completed and what was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// From the trigger to the end of the drain.
    pub elapsed: Duration,
    /// `None` when everything finished before the deadline.
    pub forced: Option<ForceReason>,
    /// Requests in flight at the trigger (or arriving just as it happened) that completed.
    /// A request counts from its call until its response *head* is ready: the body of a
    /// streaming response is the connection's, and its cut shows in `connections_cut_off`.
    pub requests_completed: u64,
    /// Requests that never completed: cut with their connection, or still running at the end.
    pub requests_cut_off: u64,
    /// Requests refused because shutdown had begun.
    pub requests_refused: u64,
    /// Connections that closed during the drain (gracefully, or by the client).
    pub connections_closed: u64,
    /// Connections cut at the force, or still open at the report.
    pub connections_cut_off: u64,
    /// Tracked tasks that finished during the drain.
    pub tasks_completed: u64,
    /// Tracked tasks dropped at the force, or still running at the report (blocked where the
    /// force cannot reach them).
    pub tasks_cut_off: u64,
}

impl DrainReport {
    /// Everything that finished: requests, connections, tasks.
    pub fn completed(&self) -> u64 {
        self.requests_completed + self.connections_closed + self.tasks_completed
    }

    /// Everything cut off.
    pub fn cut_off(&self) -> u64 {
        self.requests_cut_off + self.connections_cut_off + self.tasks_cut_off
    }
}

impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "drained in {:?}{}: requests {} completed, {} cut off, {} refused; connections {} closed, {} cut off; tasks {} completed, {} cut off",
            self.elapsed,
            match self.forced {
                None => "",
                Some(ForceReason::Deadline) => " (deadline reached)",
                Some(ForceReason::Forced) => " (forced)",
            },
            self.requests_completed,
            self.requests_cut_off,
            self.requests_refused,
            self.connections_closed,
            self.connections_cut_off,
            self.tasks_completed,
            self.tasks_cut_off,
        )
    }
}

impl Shutdown {
    /// A shutdown that drains for at most `deadline`, logging progress every 5 s.
    pub fn new(deadline: Duration) -> Shutdown {
        Shutdown::with_log_interval(deadline, Duration::from_secs(5))
    }

    /// A shutdown that drains for at most `deadline`, logging progress every `log_interval`.
    pub fn with_log_interval(deadline: Duration, log_interval: Duration) -> Shutdown {
        Shutdown {
            inner: Arc::new(Inner {
                triggered: CancellationToken::new(),
                forced: CancellationToken::new(),
                tracker: TaskTracker::new(),
                requests: Arc::default(),
                deadline,
                log_interval: log_interval.max(Duration::from_millis(1)),
                triggered_at: OnceLock::new(),
                force_reason: OnceLock::new(),
                listening: AtomicBool::new(false),
                connections: AtomicUsize::new(0),
                connections_closed: AtomicU64::new(0),
                connections_cut: AtomicU64::new(0),
                tasks_completed: AtomicU64::new(0),
                tasks_cut: AtomicU64::new(0),
                workers: AtomicUsize::new(0),
            }),
        }
    }

    /// Spawns a task that triggers the shutdown on the first SIGTERM or SIGINT (Ctrl-C where
    /// there are no unix signals) and forces it on the second. A signal that arrives when the
    /// shutdown was already triggered by code forces it.
    ///
    /// # Errors
    ///
    /// Outside a tokio runtime (or on one without its IO driver), when the signal handlers
    /// cannot be registered, or when this shutdown already listens (`AlreadyExists`; a
    /// listener whose runtime has shut down no longer counts). On a runtime without its IO
    /// driver tokio panics inside; the panic is caught and returned as this error, but it
    /// still goes through the panic hook (and aborts under `panic = "abort"`).
    pub fn listen_for_signals(&self) -> std::io::Result<JoinHandle<()>> {
        // Clears `listening` when dropped: a listener that ended (its runtime shut down) or
        // never started lets a later call listen again.
        struct Listening(Shutdown);
        impl Drop for Listening {
            fn drop(&mut self) {
                self.0.inner.listening.store(false, Ordering::SeqCst);
            }
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(std::io::Error::other(
                "listening for shutdown signals needs a tokio runtime",
            ));
        }
        // Two listeners would both see one signal, and the second would take it for a
        // second signal.
        if self.inner.listening.swap(true, Ordering::SeqCst) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "already listening for shutdown signals",
            ));
        }
        let listening = Listening(self.clone());
        // tokio panics, rather than errs, on a runtime without its IO driver.
        let mut signals = match std::panic::catch_unwind(Signals::new) {
            Ok(Ok(signals)) => signals,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(std::io::Error::other(
                    "listening for shutdown signals needs a runtime with IO enabled",
                ))
            }
        };
        let this = self.clone();
        Ok(tokio::spawn(async move {
            let _listening = listening;
            let name = signals.recv().await;
            if this.is_triggered() {
                // Already draining (triggered by code): this signal is the second word.
                tracing::warn!(signal = name, "shutdown signal during the drain: forcing");
                this.force();
                return;
            }
            tracing::info!(signal = name, "shutdown signal received: draining");
            this.trigger();
            let name = signals.recv().await;
            tracing::warn!(signal = name, "second shutdown signal: forcing");
            this.force();
        }))
    }

    /// Begins the shutdown: stop accepting, refuse new requests, cancel workers' tokens.
    /// Idempotent.
    pub fn trigger(&self) {
        let _ = self.inner.triggered_at.set(Instant::now());
        self.inner.requests.close();
        self.inner.triggered.cancel();
    }

    /// Ends the drain now: cut connections, drop tasks. Triggers first if needed.
    pub fn force(&self) {
        self.trigger();
        let _ = self.inner.force_reason.set(ForceReason::Forced);
        self.inner.forced.cancel();
    }

    /// Whether the shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.is_cancelled()
    }

    /// Resolves when the shutdown begins.
    pub async fn triggered(&self) {
        self.inner.triggered.cancelled().await;
    }

    /// Resolves when the drain is cut short (deadline or second signal).
    pub async fn forced(&self) {
        self.inner.forced.cancelled().await;
    }

    /// A token cancelled when the shutdown begins: hand it to work that should stop taking
    /// more.
    pub fn token(&self) -> CancellationToken {
        self.inner.triggered.child_token()
    }

    /// A [`ShutdownLayer`] whose requests this shutdown counts, refuses once triggered, and
    /// waits for.
    pub fn layer(&self) -> ShutdownLayer {
        ShutdownLayer::with_gate(self.inner.requests.clone())
    }

    /// Spawns a tracked task, handing it a token that is cancelled when the shutdown begins.
    /// The drain waits for it; at the force it is dropped (at its next `.await`), and its
    /// handle then yields `None`.
    pub fn spawn<F, Fut>(&self, work: F) -> JoinHandle<Option<Fut::Output>>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        /// Counts the task once it ends after the trigger: completed when it finished, cut off
        /// otherwise (at the force, or by a panic unwinding through it).
        struct Counted {
            shutdown: Shutdown,
            finished: bool,
        }
        impl Counted {
            fn finish(&mut self) {
                self.finished = true;
            }
        }
        impl Drop for Counted {
            fn drop(&mut self) {
                self.shutdown.inner.workers.fetch_sub(1, Ordering::SeqCst);
                if self.shutdown.is_triggered() {
                    let inner = &self.shutdown.inner;
                    let counter = if self.finished {
                        &inner.tasks_completed
                    } else {
                        &inner.tasks_cut
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let fut = work(self.token());
        let this = self.clone();
        // Counted from before the spawn, and owned by the task's future: a task never polled
        // (its runtime shutting down) is counted out when that future is dropped.
        self.inner.workers.fetch_add(1, Ordering::SeqCst);
        let counted = Counted {
            shutdown: this.clone(),
            finished: false,
        };
        self.inner.tracker.spawn(async move {
            let mut counted = counted;
            tokio::select! {
                // Work that finishes just as the force comes has finished.
                biased;
                out = fut => {
                    counted.finish();
                    Some(out)
                }
                () = this.forced() => None,
            }
        })
    }

    /// Tracks a server connection: counted open until `conn` resolves; `cut` tells whether it
    /// was cut at the force. The count is kept by a guard, so a handler panicking through the
    /// connection task counts the connection out too (as cut).
    #[cfg(feature = "server")]
    pub(crate) fn track_connection<F>(&self, conn: F)
    where
        F: Future<Output = bool> + Send + 'static,
    {
        struct Open {
            shutdown: Shutdown,
            cut: bool,
        }
        impl Drop for Open {
            fn drop(&mut self) {
                let inner = &self.shutdown.inner;
                inner.connections.fetch_sub(1, Ordering::SeqCst);
                if self.shutdown.is_triggered() {
                    let counter = if self.cut {
                        &inner.connections_cut
                    } else {
                        &inner.connections_closed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.inner.connections.fetch_add(1, Ordering::SeqCst);
        let mut open = Open {
            shutdown: self.clone(),
            // Until the connection says otherwise (a panic unwinding through it leaves this).
            cut: true,
        };
        self.inner.tracker.spawn(async move {
            open.cut = conn.await;
            drop(open);
        });
    }

    /// Holds the drain open while a server's accept loop runs: on a multi-thread runtime, a
    /// connection accepted just before the trigger is then tracked before the drain can find
    /// nothing left. Counted among [`tasks`](Self::tasks) until dropped.
    #[cfg(feature = "server")]
    pub(crate) fn hold_open(&self) -> tokio_util::task::task_tracker::TaskTrackerToken {
        self.inner.tracker.token()
    }

    /// Requests in flight through this shutdown's layers.
    pub fn requests_in_flight(&self) -> usize {
        self.inner.requests.in_flight()
    }

    /// Open server connections.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::SeqCst)
    }

    /// Tracked tasks still running (connections included, and a running `serve` accept
    /// loop).
    pub fn tasks(&self) -> usize {
        self.inner.tracker.len()
    }

    /// Triggers (if not yet), drains until everything tracked is done or the deadline passes
    /// (or a second signal arrives), forces what remains, and reports.
    pub async fn drain(&self) -> DrainReport {
        self.trigger();
        let inner = &self.inner;
        let start = *inner.triggered_at.get().unwrap_or(&Instant::now());
        inner.tracker.close();
        let everything = async {
            // A request in flight may spawn a tracked task before it answers: the tracker is
            // checked again once the requests are done.
            loop {
                inner.tracker.wait().await;
                inner.requests.drained().await;
                if inner.tracker.is_empty() {
                    break;
                }
            }
        };
        tokio::pin!(everything);
        let deadline = tokio::time::sleep_until(far(start, inner.deadline));
        tokio::pin!(deadline);
        let mut progress =
            tokio::time::interval_at(far(start, inner.log_interval), inner.log_interval);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let forced = loop {
            tokio::select! {
                // In this order: a force (whose cuts end the work at once) is a force; work
                // done just as the deadline passes is done.
                biased;
                // Forced by a signal, by `force()`, or by another drain's deadline: report why.
                () = inner.forced.cancelled() => {
                    break Some(*inner.force_reason.get().unwrap_or(&ForceReason::Forced))
                }
                () = &mut everything => break None,
                () = &mut deadline => {
                    // Work due to end on this very tick may not have run yet: let it, then
                    // look once more. (A force meanwhile is still a force.)
                    tokio::task::yield_now().await;
                    if inner.forced.is_cancelled() {
                        break Some(*inner.force_reason.get().unwrap_or(&ForceReason::Forced));
                    }
                    let done = std::future::poll_fn(|cx| {
                        std::task::Poll::Ready(everything.as_mut().poll(cx).is_ready())
                    })
                    .await;
                    break if done { None } else { Some(ForceReason::Deadline) };
                }
                _ = progress.tick() => tracing::info!(
                    requests = self.requests_in_flight(),
                    connections = self.connections(),
                    tasks = self.tasks().saturating_sub(self.connections()),
                    "draining: waiting for"
                ),
            }
        };
        if let Some(reason) = forced {
            let _ = inner.force_reason.set(reason);
            tracing::warn!(?reason, "drain cut short: forcing");
            inner.forced.cancel();
            let _ = tokio::time::timeout(FORCE_GRACE, inner.tracker.wait()).await;
        }
        let (completed, cut, refused) = inner.requests.counts();
        let report = DrainReport {
            elapsed: start.elapsed(),
            forced,
            requests_completed: completed,
            // Requests still running (e.g. on a server that is not ours to cut) are cut off
            // too: the process is about to end under them.
            requests_cut_off: cut + inner.requests.in_flight() as u64,
            requests_refused: refused,
            connections_closed: inner.connections_closed.load(Ordering::Relaxed),
            // Likewise connections whose task has not ended (a handler blocking it).
            connections_cut_off: inner.connections_cut.load(Ordering::Relaxed)
                + inner.connections.load(Ordering::SeqCst) as u64,
            tasks_completed: inner.tasks_completed.load(Ordering::Relaxed),
            // As for requests: workers still running after the force's grace (blocked, not
            // reaching an `.await`) are cut off — the process is about to end under them.
            tasks_cut_off: inner.tasks_cut.load(Ordering::Relaxed)
                + inner.workers.load(Ordering::SeqCst) as u64,
        };
        tracing::info!(%report, "shutdown complete");
        report
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .field("requests", &self.requests_in_flight())
            .field("connections", &self.connections())
            .field("tasks", &self.tasks())
            .finish()
    }
}

/// `start + d`, or about 30 years on for a `d` too large (`Duration::MAX` = "no deadline").
fn far(start: Instant, d: Duration) -> Instant {
    start
        .checked_add(d)
        .unwrap_or_else(|| start + Duration::from_secs(30 * 365 * 24 * 3600))
}

/// SIGTERM and SIGINT, or Ctrl-C where there are no unix signals.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "ctrl-c"
        }
    }
}
