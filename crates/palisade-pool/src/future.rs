//! [`ResponseFuture`]: checkout (idle, connect or wait), readiness, the call, and the return.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{sleep, Instant, Sleep};
use tower_service::Service;

use crate::error::{ConnectTimeout, PoolClosed, PoolTimeout};
use crate::lease::{Lease, PoolKey, SlotGuard, WaitGuard};
use crate::pool::{Checkout, Grant, Refused, Shared};
use crate::BoxError;

enum State<K: PoolKey, Conn> {
    /// Not checked out yet (or an idle connection turned out stale: check out again).
    Start {
        shared: Arc<Shared<K, Conn>>,
        key: K,
    },
    /// Queued for a connection or a slot.
    Waiting(WaitGuard<K, Conn>),
    /// A slot is reserved; the connector is being made ready or is connecting.
    Connecting(SlotGuard<K, Conn>),
    /// A connection is leased: waiting for it to be ready (`fresh`: just connected), then
    /// (`calling`) the request in flight on it. One state for both, handled in place: moving
    /// the lease from one state to the next re-read bytes just stored, a stalled load per call.
    Leased {
        lease: Lease<K, Conn>,
        fresh: bool,
        calling: bool,
    },
    Done,
}

pin_project! {
    /// The response future of [`Pool`](crate::Pool).
    pub struct ResponseFuture<C, K, Req>
    where
        C: Service<K>,
        C::Response: Service<Req>,
        K: PoolKey,
    {
        // Declared first so they are dropped before the guards below.
        #[pin]
        connect: Option<C::Future>,
        #[pin]
        call: Option<<C::Response as Service<Req>>::Future>,
        // Boxed: armed only to connect, so the common path's future stays small.
        timer: Option<Pin<Box<Sleep>>>,
        // The duration the timer was armed with, for the error it reports.
        armed: Duration,
        // The clock reading of the checkout, while this poll has not returned `Pending` since:
        // the return then reuses it instead of reading the clock again (it is at most one
        // poll old, and an older idle-since only makes the idle timeout stricter).
        clock: Option<Instant>,
        connector: C,
        req: Option<Req>,
        state: State<K, C::Response>,
    }
}

impl<C, K, Req> fmt::Debug for ResponseFuture<C, K, Req>
where
    C: Service<K>,
    C::Response: Service<Req>,
    K: PoolKey,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Start { .. } => "checkout",
            State::Waiting(_) => "waiting",
            State::Connecting(_) => "connecting",
            State::Leased { calling: false, .. } => "ready",
            State::Leased { calling: true, .. } => "calling",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<C, K, Req> ResponseFuture<C, K, Req>
where
    C: Service<K>,
    C::Response: Service<Req>,
    K: PoolKey,
{
    pub(crate) fn new(shared: Arc<Shared<K, C::Response>>, connector: C, key: K, req: Req) -> Self {
        ResponseFuture {
            connect: None,
            call: None,
            timer: None,
            armed: Duration::ZERO,
            clock: None,
            connector,
            req: Some(req),
            state: State::Start { shared, key },
        }
    }
}

impl<C, K, Req> Future for ResponseFuture<C, K, Req>
where
    C: Service<K>,
    C::Error: Into<BoxError>,
    C::Response: Service<Req> + Send + 'static,
    <C::Response as Service<Req>>::Error: Into<BoxError>,
    K: PoolKey,
    Req: 'static,
{
    type Output = Result<<C::Response as Service<Req>>::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let State::Leased {
                lease,
                fresh,
                calling,
            } = &mut *this.state
            {
                if *calling {
                    let fut = this.call.as_mut().as_pin_mut().expect("set when calling");
                    let Poll::Ready(result) = fut.poll(cx) else {
                        *this.clock = None;
                        return Poll::Pending;
                    };
                    this.call.set(None);
                    lease.release::<Req>(this.clock.take());
                    *this.state = State::Done;
                    return Poll::Ready(result.map_err(Into::into));
                }
                let fresh = *fresh;
                match lease.conn_mut().poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        if fresh {
                            // Connected and ready: the key's run of connect failures is over.
                            lease.first_ready();
                        }
                        *this.timer = None;
                        let req = this.req.take().expect("the request is sent once");
                        let fut = lease.conn_mut().call(req);
                        this.call.set(Some(fut));
                        *calling = true;
                        continue;
                    }
                    // A new connection that fails or stalls before it is first ready: a failed
                    // connect, counted towards the key's backoff.
                    Poll::Ready(Err(e)) if fresh => {
                        *this.timer = None;
                        let e: BoxError = e.into();
                        take_lease(this.state).fresh_failed(&e);
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending if fresh => {
                        if timer_fired(this.timer, cx) {
                            let e = ConnectTimeout::new(*this.armed);
                            take_lease(this.state).fresh_failed(&e);
                            return Poll::Ready(Err(e.into()));
                        }
                        *this.clock = None;
                        return Poll::Pending;
                    }
                    // An idle or handed-over connection that is broken, or not ready: not used.
                    // The request was not sent, and this checkout keeps its turn: the slot is
                    // reused for another idle connection of the key or a new one.
                    Poll::Ready(Err(_)) | Poll::Pending => {
                        let (shared, key, next) = take_lease(this.state).replace(false);
                        tracing::debug!(key = ?key, "pool: connection broken at checkout; replaced");
                        if let Err(e) =
                            take_next(this.state, this.timer, this.armed, shared, key, next)
                        {
                            return Poll::Ready(Err(e));
                        }
                        continue;
                    }
                }
            }
            // Checked out by reference, and the result matched where the call left it: the
            // state was stored just before (by `new`), and moving it, or the result, whole
            // would re-read those bytes before the stores are done (a stalled load each).
            if let State::Start { shared, key } = &*this.state {
                let now = Instant::now();
                *this.clock = Some(now);
                match shared.checkout(key, now) {
                    Ok(Checkout::Idle(conn, meta)) => {
                        let (shared, key) = take_start(this.state);
                        *this.state = State::Leased {
                            lease: Lease::new(shared, key, conn, meta),
                            fresh: false,
                            calling: false,
                        };
                    }
                    Ok(Checkout::Connect) => {
                        let (shared, key) = take_start(this.state);
                        let timeout = shared.config.connect_timeout;
                        // The slot's guard first: should arming the timer panic (a runtime
                        // without timers), unwinding still frees the slot.
                        *this.state = State::Connecting(SlotGuard::new(shared, key));
                        arm_connect_timer(this.timer, this.armed, timeout);
                    }
                    Ok(Checkout::Wait(cell, idx, seq, wake_upkeep)) => {
                        let (shared, key) = take_start(this.state);
                        // The checkout timeout is kept by the pool's upkeep task, which fails
                        // the waiter with `Grant::TimedOut`: no timer per waiter.
                        shared.start_upkeep();
                        if wake_upkeep {
                            shared.wake_upkeep();
                        }
                        *this.state = State::Waiting(WaitGuard::new(shared, key, cell, idx, seq));
                    }
                    Err(refused) => {
                        *this.state = State::Done;
                        return Poll::Ready(Err(refusal(refused)));
                    }
                }
                continue;
            }
            match std::mem::replace(this.state, State::Done) {
                State::Waiting(mut guard) => match guard.poll(cx) {
                    Poll::Ready((Grant::Conn(conn, meta), shared, key)) => {
                        let lease = Lease::new(shared, key, conn, meta);
                        // Handed over in time, collected a wake-up later past its lifetime:
                        // not used; closed, and its slot serves this checkout.
                        if meta.expires.is_some_and(|at| Instant::now() >= at) {
                            let (shared, key, next) = lease.replace(true);
                            tracing::debug!(
                                key = ?key,
                                "pool: handed-over connection past its lifetime; replaced"
                            );
                            if let Err(e) =
                                take_next(this.state, this.timer, this.armed, shared, key, next)
                            {
                                return Poll::Ready(Err(e));
                            }
                            continue;
                        }
                        *this.state = State::Leased {
                            lease,
                            fresh: false,
                            calling: false,
                        };
                    }
                    Poll::Ready((Grant::Connect, shared, key)) => {
                        // Granted before a close or a backoff began, collected after: the
                        // slot is freed (the guard dropped) and the checkout refused.
                        let refused = shared.may_connect(&key);
                        let timeout = shared.config.connect_timeout;
                        let slot = SlotGuard::new(shared, key);
                        if let Err(refused) = refused {
                            drop(slot);
                            return Poll::Ready(Err(refusal(refused)));
                        }
                        *this.state = State::Connecting(slot);
                        arm_connect_timer(this.timer, this.armed, timeout);
                    }
                    Poll::Ready((Grant::Closed, _, _)) => {
                        return Poll::Ready(Err(PoolClosed.into()))
                    }
                    Poll::Ready((Grant::TimedOut, shared, _)) => {
                        let waited = shared.config.checkout_timeout.unwrap_or_default();
                        return Poll::Ready(Err(PoolTimeout::new(waited).into()));
                    }
                    Poll::Pending => {
                        // The upkeep task keeps this waiter's deadline: if the runtime it ran
                        // on has shut down, start it here, and fail this waiter now if its
                        // deadline passed meanwhile.
                        if guard.restart_upkeep() {
                            *this.state = State::Waiting(guard);
                            continue;
                        }
                        *this.state = State::Waiting(guard);
                        {
                            *this.clock = None;
                            return Poll::Pending;
                        }
                    }
                },
                State::Connecting(slot) => {
                    if this.connect.is_none() {
                        match this.connector.poll_ready(cx) {
                            Poll::Ready(Ok(())) => {
                                let fut = this.connector.call(slot.key.clone());
                                this.connect.set(Some(fut));
                            }
                            Poll::Ready(Err(e)) => {
                                let e: BoxError = e.into();
                                slot.failed(&e);
                                return Poll::Ready(Err(e));
                            }
                            Poll::Pending => {
                                if timer_fired(this.timer, cx) {
                                    let e = ConnectTimeout::new(*this.armed);
                                    slot.failed(&e);
                                    return Poll::Ready(Err(e.into()));
                                }
                                *this.state = State::Connecting(slot);
                                {
                                    *this.clock = None;
                                    return Poll::Pending;
                                }
                            }
                        }
                    }
                    let fut = this.connect.as_mut().as_pin_mut().expect("set above");
                    match fut.poll(cx) {
                        Poll::Ready(Ok(conn)) => {
                            // The connect timer stays armed until the new connection is ready:
                            // a handshake that stalls there is still a connect that took too long.
                            this.connect.set(None);
                            *this.state = State::Leased {
                                lease: slot.connected(conn),
                                fresh: true,
                                calling: false,
                            };
                        }
                        Poll::Ready(Err(e)) => {
                            this.connect.set(None);
                            *this.timer = None;
                            let e: BoxError = e.into();
                            slot.failed(&e);
                            return Poll::Ready(Err(e));
                        }
                        Poll::Pending => {
                            if timer_fired(this.timer, cx) {
                                this.connect.set(None);
                                let e = ConnectTimeout::new(*this.armed);
                                slot.failed(&e);
                                return Poll::Ready(Err(e.into()));
                            }
                            *this.state = State::Connecting(slot);
                            {
                                *this.clock = None;
                                return Poll::Pending;
                            }
                        }
                    }
                }
                State::Start { .. } | State::Leased { .. } => unreachable!("handled above"),
                State::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

/// After a leased connection was closed unused and replaced (`next`: another idle connection
/// of the key, or its slot to connect in): lease that one, or connect — unless the pool has
/// closed or the key is in backoff, when the slot is freed and the checkout refused.
fn take_next<K: PoolKey, Conn>(
    state: &mut State<K, Conn>,
    timer: &mut Option<Pin<Box<Sleep>>>,
    armed: &mut Duration,
    shared: Arc<Shared<K, Conn>>,
    key: K,
    next: Checkout<K, Conn>,
) -> Result<(), BoxError> {
    match next {
        Checkout::Idle(conn, meta) => {
            *state = State::Leased {
                lease: Lease::new(shared, key, conn, meta),
                fresh: false,
                calling: false,
            };
        }
        _ => {
            let refused = shared.may_connect(&key);
            let timeout = shared.config.connect_timeout;
            let slot = SlotGuard::new(shared, key);
            if let Err(refused) = refused {
                drop(slot);
                return Err(refusal(refused));
            }
            *state = State::Connecting(slot);
            arm_connect_timer(timer, armed, timeout);
        }
    }
    Ok(())
}

/// The shared state and key out of a `Start` state, leaving `Done`.
fn take_start<K: PoolKey, Conn>(state: &mut State<K, Conn>) -> (Arc<Shared<K, Conn>>, K) {
    match std::mem::replace(state, State::Done) {
        State::Start { shared, key } => (shared, key),
        _ => unreachable!("only called in the start state"),
    }
}

/// The lease out of a `Leased` state, leaving `Done`.
fn take_lease<K: PoolKey, Conn>(state: &mut State<K, Conn>) -> Lease<K, Conn> {
    match std::mem::replace(state, State::Done) {
        State::Leased { lease, .. } => lease,
        _ => unreachable!("only called in the leased state"),
    }
}

/// Arms the connect timer, if there is a timeout and a runtime to keep it. Outside a tokio
/// runtime the connect goes on without one (the pool says so once per connect), as the rest of
/// the pool works there.
fn arm_connect_timer(
    timer: &mut Option<Pin<Box<Sleep>>>,
    armed: &mut Duration,
    timeout: Option<Duration>,
) {
    *armed = timeout.unwrap_or_default();
    *timer = match timeout {
        Some(t) if tokio::runtime::Handle::try_current().is_ok() => Some(Box::pin(sleep(t))),
        Some(_) => {
            tracing::warn!("pool: no tokio runtime; connecting without the connect timeout");
            None
        }
        None => None,
    };
}

/// The error a refused checkout reports.
fn refusal(refused: Refused) -> BoxError {
    match refused {
        Refused::Closed(e) => e.into(),
        Refused::Full(e) => e.into(),
        Refused::Backoff(e) => e.into(),
    }
}

/// Whether the armed timer (if any) has fired.
fn timer_fired(timer: &mut Option<Pin<Box<Sleep>>>, cx: &mut Context<'_>) -> bool {
    timer
        .as_mut()
        .is_some_and(|t| t.as_mut().poll(cx).is_ready())
}
