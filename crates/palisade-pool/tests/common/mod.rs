//! Instrumented mock connector and connections for the pool's integration tests.
//!
//! - [`Connector`] is a `Service<Key>` that opens [`Conn`]s. Every open is checked against the
//!   limits the test gives it (a live count per key and in total, incremented on open and
//!   decremented when the connection is dropped); a breach is recorded, never panicked on, so
//!   the test asserts on [`Connector::violations`]. It can succeed at once, fail with a given
//!   message ([`ConnectError`]), or be gated so the test finishes each connect by hand.
//! - [`Conn`] is a `Service<Req>`. Its [`ConnCtl`] makes it report "broken" in `poll_ready`
//!   (`Ready(Err)`) or "busy" (`Pending` until the flag is cleared, with the waker stored), as an
//!   HTTP/1 connection does while a response body is still being read.
//! - [`Req`] carries the key and what the connection should do with it: hold the call until the
//!   test says so, yield a few times, fail, or leave the connection busy or broken afterwards.
#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use palisade_pool::{BoxError, Config, KeyStats, Pool, PoolHandle, PoolStats, ResponseFuture};
use tokio::sync::oneshot;
use tower::Service;

pub type Key = String;
pub type KeyFn = fn(&Req) -> Key;
pub type TestPool = Pool<Connector, Key, KeyFn>;
pub type Fut = tokio_test::task::Spawn<ResponseFuture<Connector, Key, Req>>;
type BoxFut<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// The key function every test pool uses: the request's key.
pub fn key_of(req: &Req) -> Key {
    req.key.clone()
}

// ---------------------------------------------------------------------------------------------
// Requests and responses

/// A request for the mock connections.
#[derive(Debug)]
pub struct Req {
    pub key: Key,
    pub id: u64,
    hold: Option<oneshot::Receiver<()>>,
    yields: usize,
    busy_after: bool,
    break_after: bool,
    fail: bool,
}

impl Req {
    pub fn new(key: &str) -> Req {
        Req {
            key: key.to_owned(),
            id: 0,
            hold: None,
            yields: 0,
            busy_after: false,
            break_after: false,
            fail: false,
        }
    }

    pub fn id(mut self, id: u64) -> Req {
        self.id = id;
        self
    }

    /// The call does not finish until the returned sender is used (or dropped).
    pub fn held(mut self) -> (Req, oneshot::Sender<()>) {
        let (tx, rx) = oneshot::channel();
        self.hold = Some(rx);
        (self, tx)
    }

    /// The call yields `n` times before it answers.
    pub fn yields(mut self, n: usize) -> Req {
        self.yields = n;
        self
    }

    /// After answering, the connection is busy (`poll_ready` Pending) until the test clears it.
    pub fn busy_after(mut self) -> Req {
        self.busy_after = true;
        self
    }

    /// After answering, the connection is broken (`poll_ready` Err).
    pub fn break_after(mut self) -> Req {
        self.break_after = true;
        self
    }

    /// The call fails (the connection stays healthy).
    pub fn fail(mut self) -> Req {
        self.fail = true;
        self
    }
}

/// What a mock connection answers: which connection served which request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resp {
    pub conn: u64,
    pub key: Key,
    pub req: u64,
}

/// The connector's error, with the message the test chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectError(pub String);

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectError {}

/// A connection's `poll_ready` error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnBroken(pub u64);

impl fmt::Display for ConnBroken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection {} broken", self.0)
    }
}

impl std::error::Error for ConnBroken {}

/// A request that failed on a healthy connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFailed(pub u64);

impl fmt::Display for CallFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request {} failed", self.0)
    }
}

impl std::error::Error for CallFailed {}

// ---------------------------------------------------------------------------------------------
// Connections

/// The controls and observations of one mock connection.
#[derive(Debug)]
pub struct ConnCtl {
    pub id: u64,
    pub key: Key,
    broken: AtomicBool,
    busy: AtomicBool,
    waker: Mutex<Option<Waker>>,
    dropped: AtomicBool,
    calls: AtomicUsize,
    ready_polls: AtomicUsize,
}

impl ConnCtl {
    /// From now on `poll_ready` answers `Ready(Err(ConnBroken))`; wakes a task parked on it.
    pub fn set_broken(&self) {
        self.broken.store(true, SeqCst);
        self.wake();
    }

    /// Busy: `poll_ready` is `Pending` (waker stored). Not busy: wakes the stored waker.
    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, SeqCst);
        if !busy {
            self.wake();
        }
    }

    fn wake(&self) {
        if let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(SeqCst)
    }

    pub fn is_dropped(&self) -> bool {
        self.dropped.load(SeqCst)
    }

    /// Requests this connection was called with.
    pub fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }

    pub fn ready_polls(&self) -> usize {
        self.ready_polls.load(SeqCst)
    }
}

/// A mock connection: a `Service<Req>`.
#[derive(Debug)]
pub struct Conn {
    ctl: Arc<ConnCtl>,
    state: Arc<ConnectorState>,
}

impl Service<Req> for Conn {
    type Response = Resp;
    type Error = BoxError;
    type Future = BoxFut<Resp>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let ctl = &self.ctl;
        ctl.ready_polls.fetch_add(1, SeqCst);
        if ctl.broken.load(SeqCst) {
            return Poll::Ready(Err(Box::new(ConnBroken(ctl.id))));
        }
        if ctl.busy.load(SeqCst) {
            *ctl.waker.lock().unwrap() = Some(cx.waker().clone());
            // The flag may have been cleared between the check and the store.
            if ctl.busy.load(SeqCst) {
                return Poll::Pending;
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let ctl = self.ctl.clone();
        ctl.calls.fetch_add(1, SeqCst);
        assert!(!ctl.broken.load(SeqCst), "a broken connection was called");
        assert!(!ctl.busy.load(SeqCst), "a busy connection was called");
        assert_eq!(req.key, ctl.key, "a connection was used for another key");
        // An HTTP/1 connection is busy from the moment the request is sent.
        ctl.busy.store(true, SeqCst);
        Box::pin(async move {
            if let Some(hold) = req.hold {
                let _ = hold.await;
            }
            for _ in 0..req.yields {
                tokio::task::yield_now().await;
            }
            if req.break_after {
                ctl.broken.store(true, SeqCst);
            }
            if !req.busy_after {
                ctl.busy.store(false, SeqCst);
                ctl.wake();
            }
            if req.fail {
                return Err(Box::new(CallFailed(req.id)) as BoxError);
            }
            Ok(Resp {
                conn: ctl.id,
                key: req.key,
                req: req.id,
            })
        })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The hook runs while the connection still counts as open (a real one closes its socket
        // during the drop).
        let hook = self.state.on_drop.lock().unwrap().clone();
        if let Some(hook) = hook {
            hook(self.ctl.id);
        }
        self.ctl.dropped.store(true, SeqCst);
        self.state.live_total.fetch_sub(1, SeqCst);
        *self
            .state
            .live_keys
            .lock()
            .unwrap()
            .get_mut(&self.ctl.key)
            .expect("opened") -= 1;
    }
}

// ---------------------------------------------------------------------------------------------
// The connector

#[derive(Debug, Clone)]
enum Mode {
    Succeed,
    Fail(String),
    Gated,
}

pub struct ConnectorState {
    max_per_key: usize,
    max_total: usize,
    live_total: AtomicUsize,
    live_keys: Mutex<HashMap<Key, usize>>,
    violations: Mutex<Vec<String>>,
    connects: AtomicUsize,
    connects_per_key: Mutex<HashMap<Key, usize>>,
    next_id: AtomicU64,
    mode: Mutex<Mode>,
    pending: Mutex<VecDeque<(Key, Gate)>>,
    conns: Mutex<Vec<Arc<ConnCtl>>>,
    start_busy: AtomicBool,
    on_drop: Mutex<Option<DropHook>>,
}

type DropHook = Arc<dyn Fn(u64) + Send + Sync>;
/// Finishes one gated connect: `Ok` opens the connection, `Err` fails it with the message.
type Gate = oneshot::Sender<Result<(), String>>;

impl fmt::Debug for ConnectorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectorState")
            .field("live_total", &self.live_total)
            .field("connects", &self.connects)
            .finish_non_exhaustive()
    }
}

/// A connector: `Service<Key>` answering a fresh [`Conn`].
#[derive(Debug, Clone)]
pub struct Connector {
    state: Arc<ConnectorState>,
}

impl Default for Connector {
    fn default() -> Self {
        Connector::new()
    }
}

impl Connector {
    /// No limits checked.
    pub fn new() -> Connector {
        Connector::with_limits(usize::MAX, usize::MAX)
    }

    /// Every open is checked against these limits.
    pub fn with_limits(max_per_key: usize, max_total: usize) -> Connector {
        Connector {
            state: Arc::new(ConnectorState {
                max_per_key,
                max_total,
                live_total: AtomicUsize::new(0),
                live_keys: Mutex::new(HashMap::new()),
                violations: Mutex::new(Vec::new()),
                connects: AtomicUsize::new(0),
                connects_per_key: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                mode: Mutex::new(Mode::Succeed),
                pending: Mutex::new(VecDeque::new()),
                conns: Mutex::new(Vec::new()),
                start_busy: AtomicBool::new(false),
                on_drop: Mutex::new(None),
            }),
        }
    }

    /// Connects succeed at once (the default).
    pub fn succeed(&self) {
        *self.state.mode.lock().unwrap() = Mode::Succeed;
    }

    /// Connects fail at once with `ConnectError(message)`.
    pub fn fail_with(&self, message: &str) {
        *self.state.mode.lock().unwrap() = Mode::Fail(message.to_owned());
    }

    /// Connects wait until [`finish_connect`](Self::finish_connect).
    pub fn gated(&self) {
        *self.state.mode.lock().unwrap() = Mode::Gated;
    }

    /// New connections start busy (`poll_ready` Pending until cleared).
    pub fn start_busy(&self, busy: bool) {
        self.state.start_busy.store(busy, SeqCst);
    }

    /// Runs `hook(id)` at the start of every connection's drop, while it still counts as open.
    pub fn on_drop(&self, hook: impl Fn(u64) + Send + Sync + 'static) {
        *self.state.on_drop.lock().unwrap() = Some(Arc::new(hook));
    }

    /// Finishes the oldest gated connect still waited on: `Ok` opens the connection, `Err`
    /// fails it with that message. False if none was waiting.
    pub fn finish_connect(&self, outcome: Result<(), &str>) -> bool {
        let mut pending = self.state.pending.lock().unwrap();
        while let Some((_, tx)) = pending.pop_front() {
            if tx.send(outcome.map_err(str::to_owned)).is_ok() {
                return true;
            }
        }
        false
    }

    /// Gated connects still waited on.
    pub fn pending_connects(&self) -> usize {
        let pending = self.state.pending.lock().unwrap();
        pending.iter().filter(|(_, tx)| !tx.is_closed()).count()
    }

    /// Calls to the connector.
    pub fn connects(&self) -> usize {
        self.state.connects.load(SeqCst)
    }

    pub fn connects_for(&self, key: &str) -> usize {
        let map = self.state.connects_per_key.lock().unwrap();
        map.get(key).copied().unwrap_or(0)
    }

    /// Connections opened and not yet dropped.
    pub fn open(&self) -> usize {
        self.state.live_total.load(SeqCst)
    }

    pub fn open_for(&self, key: &str) -> usize {
        let map = self.state.live_keys.lock().unwrap();
        map.get(key).copied().unwrap_or(0)
    }

    /// Connections opened so far.
    pub fn opened(&self) -> usize {
        self.state.conns.lock().unwrap().len()
    }

    /// Every limit breach seen on open.
    pub fn violations(&self) -> Vec<String> {
        self.state.violations.lock().unwrap().clone()
    }

    /// The controls of connection `id` (ids start at 1, in order of opening).
    pub fn conn(&self, id: u64) -> Arc<ConnCtl> {
        let conns = self.state.conns.lock().unwrap();
        conns
            .iter()
            .find(|c| c.id == id)
            .unwrap_or_else(|| panic!("no connection {id}"))
            .clone()
    }

    pub fn conns(&self) -> Vec<Arc<ConnCtl>> {
        self.state.conns.lock().unwrap().clone()
    }

    fn open_conn(state: &Arc<ConnectorState>, key: Key) -> Conn {
        let id = state.next_id.fetch_add(1, SeqCst) + 1;
        let total = state.live_total.fetch_add(1, SeqCst) + 1;
        let per_key = {
            let mut map = state.live_keys.lock().unwrap();
            let n = map.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        if total > state.max_total {
            let msg = format!("connection {id} ({key}): {total} open in total");
            state.violations.lock().unwrap().push(msg);
        }
        if per_key > state.max_per_key {
            let msg = format!("connection {id} ({key}): {per_key} open for the key");
            state.violations.lock().unwrap().push(msg);
        }
        let ctl = Arc::new(ConnCtl {
            id,
            key,
            broken: AtomicBool::new(false),
            busy: AtomicBool::new(state.start_busy.load(SeqCst)),
            waker: Mutex::new(None),
            dropped: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
            ready_polls: AtomicUsize::new(0),
        });
        state.conns.lock().unwrap().push(ctl.clone());
        Conn {
            ctl,
            state: state.clone(),
        }
    }
}

impl Service<Key> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = BoxFut<Conn>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, key: Key) -> Self::Future {
        let state = self.state.clone();
        state.connects.fetch_add(1, SeqCst);
        *state
            .connects_per_key
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_insert(0) += 1;
        let mode = state.mode.lock().unwrap().clone();
        match mode {
            Mode::Succeed => {
                let conn = Connector::open_conn(&state, key);
                Box::pin(async move { Ok(conn) })
            }
            Mode::Fail(message) => {
                Box::pin(async move { Err(Box::new(ConnectError(message)) as BoxError) })
            }
            Mode::Gated => {
                let (tx, rx) = oneshot::channel();
                state.pending.lock().unwrap().push_back((key.clone(), tx));
                Box::pin(async move {
                    match rx.await {
                        Ok(Ok(())) => Ok(Connector::open_conn(&state, key)),
                        Ok(Err(message)) => Err(Box::new(ConnectError(message)) as BoxError),
                        Err(_) => Err("gate dropped".into()),
                    }
                })
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pools, checkouts and stats

/// A pool over `connector`, and its handle.
pub fn pool(config: Config, connector: &Connector) -> (TestPool, PoolHandle<Key>) {
    let pool = Pool::new(connector.clone(), config, key_of as KeyFn);
    let handle = pool.handle();
    (pool, handle)
}

/// `poll_ready` then `call`, the response future wrapped for manual polling.
pub fn start(pool: &mut TestPool, req: Req) -> Fut {
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    match Service::<Req>::poll_ready(pool, &mut cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("the pool was not ready: {other:?}"),
    }
    tokio_test::task::spawn(pool.call(req))
}

/// Polls once; panics unless it answered.
#[track_caller]
pub fn ready(fut: &mut Fut) -> Result<Resp, BoxError> {
    match fut.poll() {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("the checkout is still pending"),
    }
}

/// Polls once; panics unless it answered `Ok`.
#[track_caller]
pub fn ok(fut: &mut Fut) -> Resp {
    match ready(fut) {
        Ok(resp) => resp,
        Err(e) => panic!("the checkout failed: {e}"),
    }
}

/// Polls once; panics unless it answered `Err`.
#[track_caller]
pub fn err(fut: &mut Fut) -> BoxError {
    match ready(fut) {
        Ok(resp) => panic!("the checkout answered {resp:?}, expected an error"),
        Err(e) => e,
    }
}

/// Polls once; panics unless it is still pending.
#[track_caller]
pub fn pending(fut: &mut Fut) {
    if let Poll::Ready(result) = fut.poll() {
        panic!("expected the checkout to be pending, it answered {result:?}");
    }
}

/// One request, start to finish, on a pool whose connector answers at once.
#[track_caller]
pub fn send_now(pool: &mut TestPool, req: Req) -> Resp {
    let mut fut = start(pool, req);
    ok(&mut fut)
}

/// The stats of `key`, or all zero when it has no entry.
pub fn key(handle: &PoolHandle<Key>, key: &str) -> KeyStats {
    handle.key_stats(&key.to_owned()).unwrap_or_default()
}

/// `opened == closed + idle + leased`, per key and in total.
#[track_caller]
pub fn assert_books(stats: &PoolStats<Key>) {
    let t = &stats.total;
    assert_eq!(
        t.opened,
        t.closed + t.idle as u64 + t.leased as u64,
        "total books do not add up: {t:?}"
    );
    for (k, s) in &stats.keys {
        assert_eq!(
            s.opened,
            s.closed + s.idle as u64 + s.leased as u64,
            "books of {k} do not add up: {s:?}"
        );
    }
}

/// Nothing in use, connecting or waiting.
#[track_caller]
pub fn assert_quiet(stats: &PoolStats<Key>) {
    let t = &stats.total;
    assert_eq!(
        (t.leased, t.connecting, t.waiters),
        (0, 0, 0),
        "leased, connecting, waiters: {t:?}"
    );
    assert_books(stats);
}

/// Lets spawned tasks (the pool's sweep, its release tasks) run; paused time does not move.
pub async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// A config builder with small limits and the given per-key and total maximum.
pub fn limits(per_key: usize, total: usize) -> palisade_pool::ConfigBuilder {
    Config::builder()
        .max_connections_per_key(per_key)
        .max_connections(total)
}

/// A small deterministic generator (xorshift64*), one per task.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Polls `fut` at most `polls` times, yielding between; drops it unfinished after that.
pub async fn poll_at_most<F: std::future::Future>(fut: F, polls: u64) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    for _ in 0..polls {
        if let std::task::Poll::Ready(out) = futures::poll!(fut.as_mut()) {
            return Some(out);
        }
        tokio::task::yield_now().await;
    }
    None
}
