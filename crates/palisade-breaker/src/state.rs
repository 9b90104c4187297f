//! The breaker itself: a state machine in one atomic word, with no tower types in it.
//!
//! The state word packs a *generation* with the state. Every transition bumps the generation,
//! and every admitted call carries the generation it was admitted under: a result that comes
//! back under a later generation is stale and changes nothing. Closed admission is one atomic
//! load of that word.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::classify::Outcome;
use crate::config::{Config, WindowKind};
use crate::loom::{AtomicU32, AtomicU64, Mutex, MutexGuard, Ordering};
use crate::window::{CountWindow, Counts, Mark, TimeWindow, Window};

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const FORCED_OPEN: u64 = 3;
const DISABLED: u64 = 4;

/// The consecutive-failure count's width: it saturates at `RUN_MAX`, and the builder refuses a
/// consecutive-failure rule above it.
const RUN_BITS: u32 = 24;
pub(crate) const RUN_MAX: u64 = (1 << RUN_BITS) - 1;
/// The generation bits kept beside the count (2^40 transitions: never reached).
const GEN_MASK: u64 = (1 << (64 - RUN_BITS)) - 1;

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls pass; outcomes are recorded and the trip rules read.
    Closed,
    /// Calls are refused until the open duration has passed.
    Open,
    /// A few probe calls pass; the rest are refused. Successful probes close it, a failed one
    /// reopens it (with a slow-call rule, so does a slow one).
    HalfOpen,
    /// Held open by the handle until reset.
    ForcedOpen,
    /// Held closed by the handle: every call passes, nothing is recorded, it never trips.
    Disabled,
}

impl State {
    fn from_code(code: u64) -> State {
        match code {
            CLOSED => State::Closed,
            OPEN => State::Open,
            HALF_OPEN => State::HalfOpen,
            FORCED_OPEN => State::ForcedOpen,
            _ => State::Disabled,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
            State::ForcedOpen => "forced open",
            State::Disabled => "disabled",
        })
    }
}

/// A transition, as reported to a listener: every move of the state machine, including a
/// handle's `reset`, `force_open` or `force_closed` to the state it is already in (a new
/// generation, same state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
    /// The generation entered (one more than the one left).
    pub generation: u64,
}

type Listener = Box<dyn Fn(&Transition) + Send + Sync>;

/// What admission decided for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ticket {
    /// Closed: pass, and record the outcome under this generation.
    Closed(u64),
    /// Half-open: pass as a probe, holding a probe slot of this generation.
    Probe(u64),
    /// Disabled: pass, record nothing.
    Pass,
    /// Refused.
    Rejected(Option<Duration>),
}

/// An `Option<Ticket>` in one word, for a service to keep between `poll_ready` and `call`.
///
/// The enum itself is 16 bytes whose tag shares a word with padding: written by `poll_ready` in
/// parts and read back whole by `call` a few nanoseconds later, it made the processor wait for
/// the stores to drain (a failed store-to-load forwarding) on every call. One word is written
/// and read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PackedTicket(u64);

const PAYLOAD: u64 = (1 << 61) - 1;

impl PackedTicket {
    /// No ticket.
    pub(crate) const NONE: PackedTicket = PackedTicket(0);

    /// Packs a ticket. A generation or a retry-after beyond 2⁶¹ − 1 nanoseconds (73 years) is
    /// saturated.
    #[inline]
    pub(crate) fn new(ticket: Ticket) -> PackedTicket {
        let (kind, payload) = match ticket {
            Ticket::Closed(g) => (1, g),
            Ticket::Probe(g) => (2, g),
            Ticket::Pass => (3, 0),
            Ticket::Rejected(None) => (4, 0),
            Ticket::Rejected(Some(d)) => (5, u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        };
        PackedTicket(kind << 61 | payload.min(PAYLOAD))
    }

    /// The ticket, if there is one.
    #[inline]
    pub(crate) fn get(self) -> Option<Ticket> {
        let payload = self.0 & PAYLOAD;
        match self.0 >> 61 {
            1 => Some(Ticket::Closed(payload)),
            2 => Some(Ticket::Probe(payload)),
            3 => Some(Ticket::Pass),
            4 => Some(Ticket::Rejected(None)),
            5 => Some(Ticket::Rejected(Some(Duration::from_nanos(payload)))),
            _ => None,
        }
    }

    /// The ticket, leaving none.
    #[inline]
    pub(crate) fn take(&mut self) -> Option<Ticket> {
        std::mem::replace(self, PackedTicket::NONE).get()
    }
}

/// Keeps hot, often-written words off the state word's cache line.
#[derive(Debug)]
#[repr(align(128))]
struct Padded<T>(T);

/// The bookkeeping of one half-open's patience, under `Core::patience`. Its steps come from
/// several threads at once (a probe marked while another is sent, answered or dropped), and
/// each reads and writes several of these fields: one lock makes every step whole, where
/// separate atomics let a step decide on a stale read (the races review 5 found).
#[derive(Debug, Default)]
struct Patience {
    /// The half-open these belong to (its whole generation, no wrapping tag).
    generation: u64,
    /// When the patience began counting (ns since origin): the half-open's start, a send with
    /// none out, a success that did not close the breaker.
    start: u64,
    /// Time since `start` in pauses that have ended, ns.
    paused: u64,
    /// When the pause now running began (ns since origin), if one is.
    pause_from: Option<u64>,
    /// Probes marked and waiting below the breaker, not yet sent.
    queued: u64,
    /// Probes sent, and of those decided (answered with a success): a sent probe neither out
    /// nor decided was dropped by its caller or answered with an ignored outcome.
    sent: u64,
    decided: u64,
    /// A probe was marked in this half-open (a stack that marks its probes).
    marked: bool,
}

/// What the winner of an opening publishes: until when, and how many openings in a row.
#[derive(Debug, Clone, Copy)]
struct Opening {
    until: u64,
    in_a_row: u32,
}

/// A circuit breaker: the shared state, and the handle to inspect and control it.
///
/// Cloning is cheap and every clone is the same breaker. A [`CircuitBreakerLayer`] made from it
/// (or one that made it) applies it to services.
///
/// [`CircuitBreakerLayer`]: crate::CircuitBreakerLayer
///
/// ```
/// use palisade_breaker::{Breaker, Config, State};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let breaker = Breaker::new(Config::builder().consecutive_failures(3).build()?);
/// assert_eq!(breaker.state(), State::Closed);
/// breaker.force_open();
/// assert_eq!(breaker.state(), State::ForcedOpen);
/// breaker.reset();
/// assert_eq!(breaker.state(), State::Closed);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Breaker {
    pub(crate) core: Arc<Core>,
}

pub(crate) struct Core {
    state: Padded<AtomicU64>,
    origin: Instant,
    config: Config,
    /// When the current state was entered (ns since origin).
    since: AtomicU64,
    open_until: AtomicU64,
    /// The generation whose `since` and `open_until` are written: until it matches the state
    /// word, a transition is still being published and those two are not to be read.
    stamp: AtomicU64,
    /// Half-open bookkeeping: generation (low 32 bits) | slots taken (16) | successes (16).
    half_open: AtomicU64,
    /// The half-open patience ([`QueuedProbe`] marks pause it). Taken by a probe's own steps
    /// (admitted, marked, sent, answered, dropped), by each caller that meets the end of an
    /// opening (the setup), by a transition's publication, and once by a failure carrying a
    /// `Retry-After` (`note_hint`); never by a call refused in half-open, which reads
    /// [`patience_until`](Self::patience_until), nor by any other call on the closed path.
    patience: Mutex<Patience>,
    /// When the current half-open's patience is spent (ns since origin), published under the
    /// `patience` lock: a refused caller at or past it reopens the breaker.
    patience_until: AtomicU64,
    /// Failures in a row, tagged with the closed generation they belong to:
    /// generation (high 40 bits) | count (low 24, saturating). A failure of an earlier
    /// generation, late (its caller preempted across a reset or a close), counts in its own
    /// generation's run, never in the new one's.
    consecutive: AtomicU64,
    /// Openings in a row, published with each opening: the exponent of the backoff. Read only
    /// when opening from half-open (an opening from closed is the first of its row).
    openings: AtomicU32,
    /// The latest instant (ns since origin) until which a failure's `Retry-After` asked callers
    /// to stay away: an opening lasts at least until then (capped at the open cap).
    retry_until: AtomicU64,
    rejected: AtomicU64,
    window: Padded<Window>,
    jitter_seed: u64,
    listener: Option<Listener>,
}

/// A duration in nanoseconds, saturated.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn pack(generation: u64, code: u64) -> u64 {
    (generation << 3) | code
}

fn pack_half(generation: u64, taken: u64, successes: u64) -> u64 {
    (generation & 0xffff_ffff) | (taken << 32) | (successes << 48)
}

fn unpack_half(v: u64) -> (u64, u64, u64) {
    (v & 0xffff_ffff, (v >> 32) & 0xffff, v >> 48)
}

impl Breaker {
    /// A closed breaker with `config`.
    pub fn new(config: Config) -> Breaker {
        Breaker::build(config, None)
    }

    /// A closed breaker with `config` that calls `listener` on every transition (after it
    /// happened, on the thread that made it; keep it short).
    pub fn with_listener(
        config: Config,
        listener: impl Fn(&Transition) + Send + Sync + 'static,
    ) -> Breaker {
        Breaker::build(config, Some(Box::new(listener)))
    }

    fn build(config: Config, listener: Option<Listener>) -> Breaker {
        let window = match config.window {
            WindowKind::Count(n) => Window::Count(CountWindow::new(n)),
            WindowKind::Time { span, bucket } => Window::Time(TimeWindow::new(
                u64::try_from(span.as_nanos()).unwrap_or(u64::MAX),
                u64::try_from(bucket.as_nanos()).unwrap_or(u64::MAX).max(1),
            )),
        };
        let mut seed = std::collections::hash_map::RandomState::new().build_hasher();
        seed.write_u64(0x9e37_79b9_7f4a_7c15);
        Breaker {
            core: Arc::new(Core {
                state: Padded(AtomicU64::new(pack(0, CLOSED))),
                origin: Instant::now(),
                config,
                since: AtomicU64::new(0),
                open_until: AtomicU64::new(0),
                stamp: AtomicU64::new(0),
                half_open: AtomicU64::new(0),
                patience: Mutex::new(Patience::default()),
                patience_until: AtomicU64::new(0),
                consecutive: AtomicU64::new(0),
                openings: AtomicU32::new(0),
                retry_until: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                window: Padded(window),
                jitter_seed: seed.finish(),
                listener,
            }),
        }
    }

    /// The state now. An open breaker whose open duration has passed reports `Open` until the
    /// next call moves it to half-open.
    pub fn state(&self) -> State {
        State::from_code(self.core.state.0.load(Ordering::Acquire) & 7)
    }

    /// While open: how long until the next call may go as a probe (zero once that time has
    /// come). `None` in any other state, or while an opening is being recorded.
    pub fn open_remaining(&self) -> Option<Duration> {
        let s = self.core.state.0.load(Ordering::Acquire);
        if s & 7 != OPEN || self.core.stamp.load(Ordering::Acquire) != s >> 3 {
            return None;
        }
        let until = self.core.open_until.load(Ordering::Acquire);
        Some(Duration::from_nanos(until.saturating_sub(self.core.now())))
    }

    /// The generation: how many transitions the breaker has made.
    pub fn generation(&self) -> u64 {
        self.core.state.0.load(Ordering::Acquire) >> 3
    }

    /// The outcomes in the window now (in closed; the window restarts empty on closing).
    pub fn counts(&self) -> Counts {
        self.core.window.0.counts(self.core.now())
    }

    /// Failures in a row since the last success, in the current closed state (what the
    /// consecutive-failure rule counts); 0 in any other state.
    pub fn consecutive_failures(&self) -> u32 {
        let generation = self.core.state.0.load(Ordering::Acquire) >> 3;
        let run = self.core.consecutive.load(Ordering::Acquire);
        if run >> RUN_BITS == generation & GEN_MASK {
            (run & RUN_MAX) as u32
        } else {
            0
        }
    }

    /// How long the breaker has been in its current state.
    pub fn time_in_state(&self) -> Duration {
        let since = self.core.since.load(Ordering::Acquire);
        Duration::from_nanos(self.core.now().saturating_sub(since))
    }

    /// How many calls were refused since the breaker was made.
    pub fn rejected(&self) -> u64 {
        self.core.rejected.load(Ordering::Relaxed)
    }

    /// The config in force.
    pub fn config(&self) -> &Config {
        &self.core.config
    }

    /// Holds the breaker open: every call is refused until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.core.force(FORCED_OPEN);
    }

    /// Holds the breaker closed: every call passes, nothing is recorded, it never trips, until
    /// [`reset`](Self::reset).
    pub fn force_closed(&self) {
        self.core.force(DISABLED);
    }

    /// Back to closed with an empty window and no backoff, whatever the state.
    pub fn reset(&self) {
        self.core.force(CLOSED);
    }

    /// For a stack where a call can wait *below* the breaker before it is sent (for a
    /// rate-limit turn, a pooled connection): while half-open, marks the call about to go down
    /// as a probe that is queued, not hung, and returns the mark; `None` in any other state.
    ///
    /// The half-open patience ([`ConfigBuilder::max_half_open_wait`]) is paused while a probe
    /// of the current half-open is queued and none is out (admitted and not queued: sent, or
    /// not yet marked; and not yet decided), and counts
    /// from the moment a probe is sent ([`QueuedProbe::sent`]) while none other is out —
    /// instead of from the half-open's start, which would take a probe that waited its turn
    /// for the patience's length for a hung one. A probe queued behind one that is out does
    /// not pause it (it may be waiting for the very connection the hung one holds), and later
    /// probes sent while one is out do not restart it (they would hide the hung one), nor do
    /// sends after a sent probe was dropped undecided or answered with an ignored outcome
    /// (callers that keep giving up would keep a hung upstream half-open); a success that does
    /// not close the breaker does. Time paused is not spent patience. The pause lasts at most
    /// [`ConfigBuilder::max_probe_queue_wait`] past the patience. Dropping the mark unqueues
    /// the probe; tie it to the call (its request, its future).
    ///
    /// [`ConfigBuilder::max_probe_queue_wait`]: crate::ConfigBuilder::max_probe_queue_wait
    ///
    /// Call it between the breaker's admission and the wait (in the `poll_ready` of a service
    /// just below the breaker): while half-open, only probes pass the breaker.
    ///
    /// [`ConfigBuilder::max_half_open_wait`]: crate::ConfigBuilder::max_half_open_wait
    ///
    /// ```
    /// use std::time::Duration;
    /// use palisade_breaker::{Breaker, Config, State};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let breaker = Breaker::new(Config::builder().build()?);
    /// assert!(breaker.probe_queued().is_none()); // closed: nothing to mark
    /// # Ok(()) }
    /// ```
    pub fn probe_queued(&self) -> Option<QueuedProbe> {
        let s = self.core.state.0.load(Ordering::Acquire);
        if s & 7 != HALF_OPEN {
            return None;
        }
        let generation = s >> 3;
        self.core.queue_probe(generation).then(|| QueuedProbe {
            core: self.core.clone(),
            generation,
            queued: true,
        })
    }

    #[inline]
    pub(crate) fn admit(&self) -> Ticket {
        self.core.admit()
    }

    /// One call was refused (its `Rejected` ticket used).
    pub(crate) fn count_rejected(&self) {
        self.core.rejected.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn needs_clock(&self) -> bool {
        self.core.config.slow.is_some()
    }

    pub(crate) fn now(&self) -> u64 {
        self.core.now()
    }

    /// Records the outcome of a call admitted with `ticket`; `elapsed` when slow calls are
    /// timed.
    #[inline]
    pub(crate) fn record(&self, ticket: Ticket, outcome: Outcome, elapsed: Option<Duration>) {
        self.core.record(ticket, outcome, elapsed);
    }

    /// A call admitted with `ticket` ended without an outcome (dropped): free its probe slot.
    #[inline]
    pub(crate) fn release(&self, ticket: Ticket) {
        if let Ticket::Probe(generation) = ticket {
            self.core.release_probe(generation);
        }
    }
}

/// A half-open probe waiting below the breaker to be sent, from [`Breaker::probe_queued`]:
/// while it lives unsent and no probe is out, the half-open patience is paused.
#[must_use = "dropping it unqueues the probe at once"]
pub struct QueuedProbe {
    core: Arc<Core>,
    generation: u64,
    queued: bool,
}

impl QueuedProbe {
    /// The probe is being sent now: it is no longer queued and, unless another probe is
    /// already out, the half-open patience counts from this moment (a probe that then hangs
    /// for the patience's length reopens the breaker). Does nothing once the breaker has left
    /// that half-open.
    pub fn sent(mut self) {
        self.queued = false;
        self.core.probe_sent(self.generation);
    }

    /// The half-open generation the probe was queued in.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl Drop for QueuedProbe {
    fn drop(&mut self) {
        if self.queued {
            self.core.unqueue_probe(self.generation);
        }
    }
}

impl fmt::Debug for QueuedProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuedProbe")
            .field("generation", &self.generation)
            .field("queued", &self.queued)
            .finish()
    }
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("state", &self.state())
            .field("generation", &self.generation())
            .field("counts", &self.counts())
            .finish()
    }
}

impl Core {
    #[inline]
    fn now(&self) -> u64 {
        let since = Instant::now().saturating_duration_since(self.origin);
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    }

    #[inline]
    fn admit(&self) -> Ticket {
        let mut s = self.state.0.load(Ordering::Acquire);
        loop {
            let generation = s >> 3;
            match s & 7 {
                CLOSED => return Ticket::Closed(generation),
                DISABLED => return Ticket::Pass,
                FORCED_OPEN => return self.reject(None),
                OPEN => {
                    if self.stamp.load(Ordering::Acquire) != generation {
                        // Opening right now; its duration is not written yet.
                        return self.reject(None);
                    }
                    let now = self.now();
                    let until = self.open_until.load(Ordering::Acquire);
                    if now < until {
                        return self.reject(Some(Duration::from_nanos(until - now)));
                    }
                    // The open duration is over: half-open, with fresh slots and patience.
                    self.enter_half_open(s, now);
                }
                _ /* HALF_OPEN */ => {
                    if self.take_probe(generation) {
                        self.probe_step(generation, |_, _| {}); // one more out (until marked)
                        return Ticket::Probe(generation);
                    }
                    if self.stamp.load(Ordering::Acquire) != generation {
                        return self.reject(None); // half-open is being entered right now
                    }
                    let now = self.now();
                    // The patience (from the half-open's start, or from the send that began
                    // the present run of probes out, or the last success of a run; time
                    // paused excluded; at most `max_probe_queue_wait` paused past it).
                    if now < self.patience_until.load(Ordering::Acquire) {
                        return self.reject(None);
                    }
                    // The probes have had their time and not decided: one has hung. Reopen;
                    // its result, when it comes, belongs to an old generation.
                    tracing::warn!("circuit breaker: half-open probes hung past max_half_open_wait");
                    self.open(s, now);
                }
            }
            s = self.state.0.load(Ordering::Acquire);
        }
    }

    /// Leaves the opening `s` (its duration over) for the next generation's half-open, unless
    /// another caller already did: the slots and the patience are set up, and the state word
    /// moved, under the patience lock — so a racing leaver finds the state word moved and
    /// leaves the new half-open's slots alone, whatever values they hold (a stale word 2^32
    /// generations old has the same tag). Only the callers that meet the end of an opening
    /// take that lock, once each.
    #[cold]
    fn enter_half_open(&self, s: u64, now: u64) {
        // Test hook (review 5): preempted after reading the opening, before the setup.
        #[cfg(all(test, not(palisade_loom)))]
        review_hook::fire("setup");
        let next = (s >> 3) + 1;
        let moved = {
            let mut p = self.lock_patience();
            if self.state.0.load(Ordering::Acquire) != s {
                return; // another caller left it (or a handle moved it)
            }
            if now < self.open_until.load(Ordering::Acquire) {
                return; // a hint floored it meanwhile (under this lock): still open
            }
            self.half_open
                .store(pack_half(next, 0, 0), Ordering::Release);
            *p = Patience {
                generation: next,
                start: now,
                ..Patience::default()
            };
            self.publish_patience(&p);
            self.move_state(s, HALF_OPEN)
        };
        if let Some(to) = moved {
            let t = self.publish(s, to, now, None);
            self.announce(&t);
        }
    }

    fn reject(&self, retry_after: Option<Duration>) -> Ticket {
        // Counted where the refusal is delivered (`count_rejected`), not here: a service
        // polled again while open decides again, and each decision is not a refused call.
        Ticket::Rejected(retry_after)
    }

    fn take_probe(&self, generation: u64) -> bool {
        let probes = u64::from(self.config.probes);
        self.half_open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                let (hg, taken, ok) = unpack_half(h);
                (hg == generation & 0xffff_ffff && taken < probes)
                    .then(|| pack_half(hg, taken + 1, ok))
            })
            .is_ok()
    }

    /// The patience lock. A panic cannot leave the bookkeeping half-written (its steps do not
    /// panic), so a poisoned lock is taken as it is.
    fn lock_patience(&self) -> MutexGuard<'_, Patience> {
        // Test hook (review 5): preempted just before the lock.
        #[cfg(all(test, not(palisade_loom)))]
        review_hook::fire("patience");
        #[cfg(all(test, not(palisade_loom)))]
        review_hook::count_lock();
        self.patience
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs one step of a probe of half-open `generation` on the patience, then settles the
    /// pause and publishes when the patience is spent — if the breaker is still in that
    /// half-open (a late step of an earlier one changes nothing). Returns whether it ran.
    fn probe_step(&self, generation: u64, step: impl FnOnce(&Self, &mut Patience)) -> bool {
        let mut p = self.lock_patience();
        if p.generation != generation
            || self.state.0.load(Ordering::Acquire) != pack(generation, HALF_OPEN)
        {
            return false;
        }
        step(self, &mut p);
        let now = self.now();
        // Paused while a probe is queued and none is out (a slot taken and not queued: sent,
        // or admitted and not yet marked).
        let out = self.slots_taken(generation).saturating_sub(p.queued);
        let pausing = out == 0 && p.queued != 0;
        match (pausing, p.pause_from) {
            (true, None) => p.pause_from = Some(now),
            (false, Some(from)) => {
                p.paused = p.paused.saturating_add(now.saturating_sub(from));
                p.pause_from = None;
            }
            _ => {}
        }
        self.publish_patience(&p);
        true
    }

    /// Publishes when `p`'s patience is spent: `max_half_open_wait` of time not paused after
    /// its start, and never later than `max_probe_queue_wait` past that (what a queued probe
    /// waits behind may hang too).
    fn publish_patience(&self, p: &Patience) {
        let wait = nanos(self.config.max_half_open_wait);
        let ceiling = p
            .start
            .saturating_add(wait)
            .saturating_add(nanos(self.config.max_probe_queue_wait));
        let until = match p.pause_from {
            Some(_) => ceiling,
            None => p
                .start
                .saturating_add(p.paused)
                .saturating_add(wait)
                .min(ceiling),
        };
        self.patience_until.store(until, Ordering::Release);
    }

    /// The patience counts from now: a send with none out, a success that does not close.
    fn restart_patience(&self, p: &mut Patience) {
        let now = self.now();
        p.start = p.start.max(now);
        p.paused = 0;
        if p.pause_from.is_some() {
            p.pause_from = Some(now);
        }
    }

    /// (Review 5 tests.) Whether a pause is running; the time paused in ended pauses, ns;
    /// whether the rules say the patience is paused (a probe queued, none out).
    #[cfg(test)]
    fn pause_running(&self) -> bool {
        self.patience.lock().unwrap().pause_from.is_some()
    }
    #[cfg(all(test, not(palisade_loom)))]
    fn paused_ns(&self) -> u64 {
        self.patience.lock().unwrap().paused
    }
    #[cfg(all(test, palisade_loom))]
    fn paused_by_the_rules(&self) -> bool {
        let p = self.patience.lock().unwrap();
        p.queued != 0 && self.slots_taken(p.generation) <= p.queued
    }

    /// Slots of half-open `generation` taken (probes admitted and not yet decided).
    fn slots_taken(&self, generation: u64) -> u64 {
        let (hg, taken, _) = unpack_half(self.half_open.load(Ordering::Acquire));
        if hg == generation & 0xffff_ffff {
            taken
        } else {
            0
        }
    }

    /// One more probe of half-open `generation` waits below the breaker; false if the breaker
    /// is no longer in that half-open.
    fn queue_probe(&self, generation: u64) -> bool {
        self.probe_step(generation, |_, p| {
            p.queued += 1;
            p.marked = true;
        })
    }

    /// A queued probe of half-open `generation` was given up before its send.
    fn unqueue_probe(&self, generation: u64) {
        self.probe_step(generation, |_, p| p.queued = p.queued.saturating_sub(1));
    }

    /// A queued probe of half-open `generation` is being sent.
    fn probe_sent(&self, generation: u64) {
        self.probe_step(generation, |core, p| {
            // Others out (this one is still counted queued), and sent probes dropped
            // undecided (callers that keep giving up would otherwise restart it for ever).
            let out = core.slots_taken(generation).saturating_sub(p.queued);
            if out == 0 && p.sent == p.decided {
                core.restart_patience(p);
            }
            p.sent += 1;
            p.queued = p.queued.saturating_sub(1);
        });
    }

    fn release_probe(&self, generation: u64) {
        // Under the lock, and only in that half-open: a new half-open's setup, also under the
        // lock, is never undone by a late release of an earlier one.
        self.probe_step(generation, |core, _| {
            let _ = core
                .half_open
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                    let (hg, taken, ok) = unpack_half(h);
                    (hg == generation & 0xffff_ffff && taken > 0)
                        .then(|| pack_half(hg, taken - 1, ok))
                });
        });
    }

    #[inline]
    fn record(&self, ticket: Ticket, outcome: Outcome, elapsed: Option<Duration>) {
        let slow = match (self.config.slow, elapsed) {
            (Some((threshold, _)), Some(took)) => took >= threshold,
            _ => false,
        };
        match ticket {
            Ticket::Closed(generation) => self.record_closed(generation, outcome, slow),
            Ticket::Probe(generation) => self.record_probe(generation, outcome, slow),
            Ticket::Pass | Ticket::Rejected(_) => {}
        }
    }

    #[inline]
    fn record_closed(&self, generation: u64, outcome: Outcome, slow: bool) {
        let s = self.state.0.load(Ordering::Acquire);
        if s != pack(generation, CLOSED) {
            // Admitted under an earlier state: changes nothing now — but an upstream's
            // `Retry-After` that arrives just after another failure opened it floors that
            // opening (the next generation's).
            self.late_hint(outcome, pack(generation, CLOSED));
            return;
        }
        // Test hook (review 7): preempted after the generation check, before the writes.
        #[cfg(all(test, not(palisade_loom)))]
        review_hook::fire("record");
        let failed = match outcome {
            Outcome::Ignore => return,
            Outcome::Success => {
                // The run ends: only this generation's (another's count is not this one's).
                // (Again if a failure moved it meanwhile: the success comes after it.)
                let mut run = self.consecutive.load(Ordering::Relaxed);
                while run & RUN_MAX != 0 && run >> RUN_BITS == generation & GEN_MASK {
                    match self.consecutive.compare_exchange(
                        run,
                        (generation & GEN_MASK) << RUN_BITS,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => break,
                        Err(now) => run = now,
                    }
                }
                false
            }
            Outcome::Failure { retry_after } => {
                if let Some(ra) = retry_after {
                    self.note_hint(ra, pack(generation, CLOSED));
                }
                true
            }
        };
        let window = &self.window.0;
        let now = if window.needs_clock() || failed || slow {
            self.now()
        } else {
            0
        };
        window.record(Mark { failed, slow }, now);
        if !(failed || slow) {
            // A success can bring the window to minimum_calls (or slide old successes out of a
            // time window) with the rate already over: read the rate rules then too — only when
            // the window holds failures or slow calls, so the healthy path stays as it was.
            if self.config.failure_rate.is_none() && self.config.slow.is_none()
                || !window.may_hold_bad()
            {
                return;
            }
            let c = window.counts(now);
            if (c.failures != 0 || c.slow != 0) && self.should_trip(0, c) {
                self.open(s, self.now());
            }
            return;
        }
        let consecutive = if failed {
            self.count_failure(generation)
        } else {
            0
        };
        if self.should_trip(consecutive, window.counts(now)) {
            self.open(s, now);
        }
    }

    /// One more failure in a row in closed generation `generation`; the run's length (0 when a
    /// later generation's run has begun: this failure is stale).
    fn count_failure(&self, generation: u64) -> u32 {
        let g = generation & GEN_MASK;
        let mut run = self.consecutive.load(Ordering::Acquire);
        loop {
            let (rg, n) = (run >> RUN_BITS, run & RUN_MAX);
            let next = match rg.cmp(&g) {
                std::cmp::Ordering::Equal => (g << RUN_BITS) | (n + 1).min(RUN_MAX),
                std::cmp::Ordering::Less => (g << RUN_BITS) | 1, // an earlier generation's run
                std::cmp::Ordering::Greater => return 0,
            };
            match self.consecutive.compare_exchange_weak(
                run,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return (next & RUN_MAX) as u32,
                Err(now) => run = now,
            }
        }
    }

    fn should_trip(&self, consecutive: u32, c: Counts) -> bool {
        let cfg = &self.config;
        if cfg.consecutive_failures.is_some_and(|n| consecutive >= n) {
            return true;
        }
        if c.calls == 0 || c.calls < u64::from(cfg.minimum_calls) {
            return false;
        }
        let over = |count: u64, percent: u8| count * 100 >= u64::from(percent) * c.calls;
        cfg.failure_rate.is_some_and(|p| over(c.failures, p))
            || cfg.slow.is_some_and(|(_, p)| over(c.slow, p))
    }

    fn record_probe(&self, generation: u64, outcome: Outcome, slow: bool) {
        let s = self.state.0.load(Ordering::Acquire);
        if s != pack(generation, HALF_OPEN) {
            // A probe of an earlier half-open: its slot is gone with that generation (its
            // `Retry-After`, just after another probe's failure reopened it, floors that).
            self.late_hint(outcome, pack(generation, HALF_OPEN));
            return;
        }
        match outcome {
            Outcome::Ignore => {
                // (Not counted as decided. The breaker cannot tell an ignored
                // answer from a probe refused below before it was sent — palisade-client's
                // RateLimited, PoolFull, ShuttingDown — and each of those cancelled out one
                // sent probe dropped undecided. A sent probe ends decided only by a success.)
                self.release_probe(generation);
            }
            Outcome::Success if !slow => {
                let close_after = u64::from(self.config.close_after);
                let mut closing = false;
                self.probe_step(generation, |core, p| {
                    let before =
                        core.half_open
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                                let (hg, taken, ok) = unpack_half(h);
                                (hg == generation & 0xffff_ffff)
                                    .then(|| pack_half(hg, taken.saturating_sub(1), ok + 1))
                            });
                    // Never more decided than sent: a success of a probe sent without a mark
                    // (a caller that marks nothing) must not cancel out a dropped one.
                    p.decided = (p.decided + 1).min(p.sent);
                    if let Ok(before) = before {
                        // Exactly one probe's success is the closing one.
                        if unpack_half(before).2 + 1 == close_after {
                            closing = true;
                        } else if p.marked {
                            // Only in a stack that marks its probes: without marks, the
                            // patience counts from its start. A probe answered: the others
                            // out get a patience of their own from here, not what is left of
                            // the one that began with that probe's send.
                            core.restart_patience(p);
                        }
                    }
                });
                if closing {
                    self.close(s);
                }
            }
            Outcome::Success | Outcome::Failure { .. } => {
                if let Outcome::Failure {
                    retry_after: Some(ra),
                } = outcome
                {
                    self.note_hint(ra, s);
                }
                self.open(s, self.now());
            }
        }
    }

    /// Remembers until when the upstream asked to be left alone (an absolute instant, so an old
    /// hint cannot lengthen a later, unrelated opening), and floors the opening in force with
    /// it. Under the lock an opening's publication reads the hint under, and `close` forgets
    /// it under: either that publication comes after and reads this hint, or the opening is
    /// published already and is extended here (within the cap from its start). Only while the
    /// breaker is still in `own`, the state the outcome was admitted under, or in the opening
    /// that state led to: a hint noted later would outlive a reset or a recovery, or floor an
    /// unrelated opening. A failure that carries a `Retry-After` takes the lock once; no other
    /// call on the closed path does.
    fn note_hint(&self, ra: Duration, own: u64) {
        let until = self.now().saturating_add(nanos(ra));
        let _one_step = self.lock_publication();
        let s = self.state.0.load(Ordering::Acquire);
        if s != own && s != pack((own >> 3) + 1, OPEN) {
            return; // the outcome's state and the opening it led to are both gone
        }
        self.retry_until.fetch_max(until, Ordering::AcqRel);
        if s & 7 != OPEN || self.stamp.load(Ordering::Acquire) != s >> 3 {
            return; // not open, or its opening not published yet (its publication reads it)
        }
        let cap_until = self
            .since
            .load(Ordering::Acquire)
            .saturating_add(nanos(self.config.open_cap));
        self.open_until
            .fetch_max(until.min(cap_until), Ordering::AcqRel);
    }

    /// A stale outcome's `Retry-After` (its own state `own` is gone), if the breaker is in the
    /// opening that state led to, by another call's failure: that opening is floored. (The
    /// state word is read first, without the lock: most stale outcomes take none.)
    #[cold]
    fn late_hint(&self, outcome: Outcome, own: u64) {
        if let Outcome::Failure {
            retry_after: Some(ra),
        } = outcome
        {
            if self.state.0.load(Ordering::Acquire) == pack((own >> 3) + 1, OPEN) {
                self.note_hint(ra, own);
            }
        }
    }

    /// Opens from `from` (closed or half-open), for a duration that grows with each opening in
    /// a row, jittered, no shorter than the upstream's `Retry-After`, never longer than the cap.
    fn open(&self, from: u64, now: u64) {
        let cfg = &self.config;
        // Openings in a row: from closed this is the first (whatever a racing close or reset
        // left in the count); from half-open, one more than the opening before it.
        let k = if from & 7 == CLOSED {
            0
        } else {
            self.openings.load(Ordering::Acquire)
        };
        let base = cfg.open_base.as_nanos() as u64;
        let cap = cfg.open_cap.as_nanos() as u64;
        let mut d = base;
        // Multiplier 1 keeps it fixed: no loop over the (unbounded) openings in a row.
        let steps = if cfg.open_multiplier > 1 { k } else { 0 };
        for _ in 0..steps {
            d = d.saturating_mul(u64::from(cfg.open_multiplier)).min(cap);
            if d == cap {
                break;
            }
        }
        if cfg.jitter_percent > 0 {
            // ±jitter%, from a per-breaker random seed and the generation.
            let r = splitmix(self.jitter_seed ^ (from >> 3));
            let span = d / 100 * u64::from(cfg.jitter_percent);
            if span > 0 {
                d = d - span + r % (2 * span + 1);
            }
        }
        // (No shorter than the upstream's `Retry-After`: `publish` reads that floor, under the
        // lock a racing failure's hint is noted under — see `note_hint`.)
        d = d.min(cap);
        // Test hook (review 7): preempted after computing the duration, before the CAS.
        #[cfg(all(test, not(palisade_loom)))]
        review_hook::fire("open");
        // Only the winner of the transition writes the duration (see `stamp`).
        let opening = Opening {
            until: now.saturating_add(d),
            in_a_row: k.saturating_add(1),
        };
        if let Some(t) = self.transition(from, OPEN, now, Some(opening)) {
            let open_for = self.open_until.load(Ordering::Acquire).saturating_sub(now);
            tracing::warn!(open_for = ?Duration::from_nanos(open_for), openings = k + 1, "circuit breaker opened");
            self.announce(&t);
        }
    }

    /// The patience lock, taken for a transition's publication, a move to closed, and a
    /// failure's `Retry-After` (`note_hint`).
    fn lock_publication(&self) -> MutexGuard<'_, Patience> {
        #[cfg(all(test, not(palisade_loom)))]
        review_hook::count_lock();
        self.patience
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn close(&self, from: u64) {
        // Empty the window *before* the state says closed: half-open records nothing into it,
        // and once closed, a call of the new generation must not meet the outcomes that opened
        // it (one failure would reopen it at once). (The run of failures is per generation.)
        self.window.0.reset();
        let now = self.now();
        if let Some(to) = self.move_closed(from) {
            let t = self.publish(from, to, now, None);
            // And once more after the CAS: an outcome of the old generation that passed its
            // check before it may have landed in between.
            self.window.0.reset();
            self.announce(&t);
        }
    }

    fn force(&self, code: u64) {
        let mut s = self.state.0.load(Ordering::Acquire);
        loop {
            if code == CLOSED {
                self.window.0.reset();
            }
            let now = self.now();
            let moved = if code == CLOSED {
                self.move_closed(s)
            } else {
                self.move_state(s, code)
            };
            if let Some(to) = moved {
                let t = self.publish(s, to, now, None);
                if code == CLOSED {
                    // Once more after the CAS, as `close` does.
                    self.window.0.reset();
                }
                self.announce(&t);
                return;
            }
            s = self.state.0.load(Ordering::Acquire);
        }
    }

    /// Moves from the exact state word `from` to `code` in the next generation; `None` if
    /// another thread moved first. The winner then writes when the state began (and, when
    /// opening, until when) and stamps them with the new generation; the caller finishes its
    /// own bookkeeping, then [`announce`](Self::announce)s the transition.
    fn transition(
        &self,
        from: u64,
        code: u64,
        now: u64,
        opening: Option<Opening>,
    ) -> Option<Transition> {
        let to = self.move_state(from, code)?;
        Some(self.publish(from, to, now, opening))
    }

    /// The CAS of a move to closed, and the upstream's last `Retry-After` forgotten with it,
    /// in one step under the lock hints are noted under: a hint of the generation left is not
    /// a floor for the next, unrelated opening (whose publication, under the same lock, comes
    /// after), and a hint noted after the move is kept.
    fn move_closed(&self, from: u64) -> Option<u64> {
        let _one_step = self.lock_publication();
        let to = self.move_state(from, CLOSED)?;
        self.retry_until.store(0, Ordering::Release);
        Some(to)
    }

    /// The CAS of a transition: the new state word, or `None` if another thread moved first.
    fn move_state(&self, from: u64, code: u64) -> Option<u64> {
        let to = pack((from >> 3) + 1, code);
        self.state
            .0
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| to)
    }

    /// What the winner of a transition from `from` to `to` writes after its CAS.
    fn publish(&self, from: u64, to: u64, now: u64, opening: Option<Opening>) -> Transition {
        #[cfg(all(test, not(palisade_loom)))]
        {
            // Test hook: stands for this thread being preempted right after its CAS.
            let hook = review_hook::AFTER_CAS.with(|h| h.borrow_mut().take());
            if let Some(mut f) = hook {
                f();
            }
        }
        // Test hook (review 5): preempted before the stores.
        #[cfg(all(test, not(palisade_loom)))]
        review_hook::fire("publish");
        // A winner delayed here (preempted) may find that later transitions have already
        // published theirs: its older values must not overwrite theirs (an opening's length,
        // when it began), nor its older stamp, or the state word's generation never matches
        // the stamp again and an open breaker refuses forever. The check and the stores are
        // one step: under the patience lock (transitions are rare; admission never waits on
        // it, it reads the stamp).
        {
            let _one_step = self.lock_publication();
            if self.stamp.load(Ordering::Acquire) < to >> 3 {
                self.since.store(now, Ordering::Release);
                if let Some(Opening { until, in_a_row }) = opening {
                    // No shorter than the upstream's `Retry-After` (read here, under the lock
                    // a failure's `note_hint` takes), never past the cap.
                    let cap_until = now.saturating_add(nanos(self.config.open_cap));
                    let floor = self.retry_until.load(Ordering::Acquire).min(cap_until);
                    self.open_until.store(until.max(floor), Ordering::Release);
                    // With the stamp, so a later opening never reads an older count.
                    self.openings.store(in_a_row, Ordering::Release);
                }
                self.stamp.store(to >> 3, Ordering::Release);
            }
        }
        let t = Transition {
            from: State::from_code(from & 7),
            to: State::from_code(to & 7),
            generation: to >> 3,
        };
        tracing::info!(from = %t.from, to = %t.to, generation = t.generation, "circuit breaker transition");
        t
    }

    /// Tells the listener, once the transition's bookkeeping is done. A listener that panics
    /// is reported and does not unwind into the request whose outcome moved the breaker.
    fn announce(&self, t: &Transition) {
        if let Some(listener) = &self.listener {
            let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| listener(t)));
            if called.is_err() {
                tracing::error!(from = %t.from, to = %t.to, "circuit breaker listener panicked");
            }
        }
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(all(test, palisade_loom))]
mod loom_tests {
    use super::*;
    use loom::thread;

    /// The loom models' breaker: trips on one failure, `probes` probe slots, opens for a
    /// nanosecond, no jitter.
    fn cfg(probes: u16) -> Config {
        Config::builder()
            .consecutive_failures(1)
            .half_open_probes(probes)
            .open_duration(Duration::from_nanos(1), 1, Duration::from_nanos(1))
            .jitter(0)
            .count_window(4)
            .minimum_calls(4)
            .build()
            .unwrap()
    }

    /// [`cfg`]'s breaker, tripped, its opening over: the next admission leaves it (here and
    /// in `review5_loom` and `review6_loom`).
    pub(super) fn opened(probes: u16) -> Breaker {
        let b = Breaker::new(cfg(probes));
        let t = b.admit();
        b.record(t, Outcome::FAILURE, None);
        b.core.open_until.store(0, Ordering::SeqCst);
        b
    }

    /// Two callers race for the single probe slot: exactly one gets it.
    #[test]
    fn one_probe_slot_one_probe() {
        loom::model(|| {
            let b = opened(1);
            let b2 = b.clone();
            let h = thread::spawn(move || matches!(b2.admit(), Ticket::Probe(_)));
            let mine = matches!(b.admit(), Ticket::Probe(_));
            let theirs = h.join().unwrap();
            assert!(mine ^ theirs, "mine={mine} theirs={theirs}");
        });
    }

    /// A stale probe result racing a new half-open cycle never closes the new one.
    #[test]
    fn stale_release_does_not_refill_a_new_cycle() {
        loom::model(|| {
            let b = opened(1);
            let probe = b.admit();
            assert!(matches!(probe, Ticket::Probe(_)));
            let b2 = b.clone();
            let h = thread::spawn(move || b2.release(probe));
            // Meanwhile the probe's slot is counted: nobody else gets one.
            let other = b.admit();
            h.join().unwrap();
            let after = b.admit();
            let probes = [other, after]
                .iter()
                .filter(|t| matches!(t, Ticket::Probe(_)))
                .count();
            assert!(probes <= 1);
        });
    }
}

/// The state machine under many threads, with its invariants checked at every admission.
///
/// Real clock (tokio's cannot be paused across threads): the open duration is a few
/// microseconds, so the breaker cycles open → half-open → closed many times during the run.
#[cfg(all(test, not(palisade_loom)))]
mod stress {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Threads failing at the same instant race to open it: only the winner sets the open
    /// duration, so a loser that saw the backoff grow cannot stretch it.
    #[test]
    fn racing_openers_do_not_stretch_the_open_duration() {
        let config = Config::builder()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(10), 100, Duration::from_secs(1000))
            .jitter(0)
            .build()
            .unwrap();
        for _ in 0..500 {
            let breaker = Breaker::new(config.clone());
            let tickets: Vec<_> = (0..4).map(|_| breaker.admit()).collect();
            let threads: Vec<_> = tickets
                .into_iter()
                .map(|t| {
                    let b = breaker.clone();
                    std::thread::spawn(move || b.record(t, Outcome::FAILURE, None))
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            match breaker.admit() {
                Ticket::Rejected(Some(d)) => {
                    assert!(d <= Duration::from_secs(10), "open for {d:?}")
                }
                Ticket::Rejected(None) => {}
                other => panic!("not open: {other:?}"),
            }
        }
    }

    /// Threads run marked probes at once (admitted, marked, then sent or given up, then
    /// answered or dropped) through many half-opens. Once every thread is done and no mark is
    /// alive, if the breaker is in the half-open the patience names, its bookkeeping holds what
    /// the rules say: nothing queued, no pause running, never more decided than sent, and the
    /// published deadline is the patience's. (A mark's step after its half-open ended changes
    /// nothing, so a half-open left with a mark queued keeps that count until the next setup:
    /// rounds are run until three of them end in a half-open.)
    #[test]
    fn marked_probes_leave_the_patience_consistent_at_rest() {
        let config = Config::builder()
            .consecutive_failures(2)
            .half_open_probes(3)
            .close_after(3)
            .open_duration(Duration::from_micros(20), 1, Duration::from_micros(20))
            .jitter(0)
            .build()
            .unwrap();
        let breaker = Breaker::new(config);
        let marks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut checked = 0;
        for round in 0..200u64 {
            let threads: Vec<_> = (0..8u64)
                .map(|t| {
                    let breaker = breaker.clone();
                    let marks = marks.clone();
                    std::thread::spawn(move || {
                        let mut seed = (round * 8 + t) * 0x9e37_79b9 + 7;
                        for _ in 0..1_000 {
                            seed ^= seed << 13;
                            seed ^= seed >> 7;
                            seed ^= seed << 17;
                            let ticket = breaker.admit();
                            if let Ticket::Probe(_) = ticket {
                                if let Some(mark) = breaker.probe_queued() {
                                    marks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    std::thread::yield_now();
                                    if seed % 3 != 0 {
                                        mark.sent();
                                    }
                                }
                            }
                            std::thread::yield_now();
                            match seed % 9 {
                                0 => breaker.release(ticket),
                                1 | 2 => breaker.record(ticket, Outcome::FAILURE, None),
                                3 => breaker.record(ticket, Outcome::Ignore, None),
                                _ => breaker.record(ticket, Outcome::Success, None),
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let core = &breaker.core;
            let p = core.patience.lock().unwrap();
            if core.state.0.load(Ordering::SeqCst) != pack(p.generation, HALF_OPEN) {
                continue;
            }
            assert_eq!(p.queued, 0, "every mark was sent or dropped: {p:?}");
            assert_eq!(
                p.pause_from, None,
                "nothing queued, yet a pause runs: {p:?}"
            );
            assert!(p.decided <= p.sent, "{p:?}");
            let wait = nanos(core.config.max_half_open_wait);
            let ceiling = p.start + wait + nanos(core.config.max_probe_queue_wait);
            assert_eq!(
                core.patience_until.load(Ordering::SeqCst),
                (p.start + p.paused + wait).min(ceiling),
                "{p:?}"
            );
            checked += 1;
            if checked == 3 {
                break;
            }
        }
        assert_eq!(checked, 3, "the rounds hardly ever ended in a half-open");
        assert!(breaker.generation() > 10, "the breaker hardly moved");
        assert!(
            marks.load(std::sync::atomic::Ordering::Relaxed) > 10,
            "no probe was marked"
        );
    }

    #[test]
    fn probes_in_flight_per_half_open_never_exceed_the_slots() {
        const PROBES: u64 = 2;
        let config = Config::builder()
            .consecutive_failures(3)
            .half_open_probes(PROBES as u16)
            .close_after(2)
            .open_duration(Duration::from_micros(20), 1, Duration::from_micros(20))
            .jitter(0)
            .build()
            .unwrap();
        let breaker = Breaker::new(config);
        let in_flight: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
        let probes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let breaker = breaker.clone();
                let in_flight = in_flight.clone();
                let probes = probes.clone();
                std::thread::spawn(move || {
                    let mut seed = t * 0x9e37_79b9 + 1;
                    for _ in 0..5_000 {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let outcome = match seed % 4 {
                            0 => Outcome::FAILURE,
                            1 => Outcome::Ignore,
                            _ => Outcome::Success,
                        };
                        let ticket = breaker.admit();
                        if let Ticket::Probe(g) = ticket {
                            probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let mut m = in_flight.lock().unwrap();
                            let n = m.entry(g).or_default();
                            *n += 1;
                            assert!(*n <= PROBES, "{n} probes in flight in generation {g}");
                        }
                        std::thread::yield_now();
                        if let Ticket::Probe(g) = ticket {
                            *in_flight.lock().unwrap().get_mut(&g).unwrap() -= 1;
                        }
                        if seed % 7 == 0 {
                            breaker.release(ticket); // dropped before completing
                        } else {
                            breaker.record(ticket, outcome, None);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(breaker.generation() > 10, "the breaker hardly moved");
        assert!(probes.load(std::sync::atomic::Ordering::Relaxed) > 10);
        // Nothing is wedged: with only successes from here on, it closes (once the open
        // duration, 20 µs, has passed on the real clock).
        for _ in 0..10_000_000 {
            let ticket = breaker.admit();
            breaker.record(ticket, Outcome::Success, None);
            if breaker.state() == State::Closed {
                return;
            }
        }
        panic!("stuck in {:?}", breaker.state());
    }
}

#[cfg(test)]
mod packed_ticket_tests {
    use super::*;

    #[test]
    fn every_ticket_packs_and_unpacks_to_itself() {
        let tickets = [
            Ticket::Closed(0),
            Ticket::Closed(7),
            Ticket::Closed(PAYLOAD),
            Ticket::Probe(0),
            Ticket::Probe(123_456_789),
            Ticket::Pass,
            Ticket::Rejected(None),
            Ticket::Rejected(Some(Duration::ZERO)),
            Ticket::Rejected(Some(Duration::from_millis(1500))),
        ];
        for t in tickets {
            let mut packed = PackedTicket::new(t);
            assert_ne!(packed, PackedTicket::NONE, "{t:?}");
            assert_eq!(packed.get(), Some(t));
            assert_eq!(packed.take(), Some(t));
            assert_eq!(packed, PackedTicket::NONE);
            assert_eq!(packed.get(), None);
        }
        // Beyond 2⁶¹ − 1: saturated, never another kind.
        assert_eq!(
            PackedTicket::new(Ticket::Closed(u64::MAX)).get(),
            Some(Ticket::Closed(PAYLOAD))
        );
        assert_eq!(
            PackedTicket::new(Ticket::Rejected(Some(Duration::MAX))).get(),
            Some(Ticket::Rejected(Some(Duration::from_nanos(PAYLOAD))))
        );
    }
}

#[cfg(all(test, not(palisade_loom)))]
#[path = "generation_wrap_tests.rs"]
mod generation_wrap_tests;

#[cfg(all(test, not(palisade_loom)))]
#[path = "race_support.rs"]
mod race_support;

#[cfg(all(test, not(palisade_loom)))]
#[path = "review5_tests.rs"]
mod review5_tests;

#[cfg(all(test, palisade_loom))]
#[path = "review5_loom.rs"]
mod review5_loom;

#[cfg(all(test, not(palisade_loom)))]
#[path = "review6_tests.rs"]
mod review6_tests;

#[cfg(all(test, palisade_loom))]
#[path = "review6_loom.rs"]
mod review6_loom;

#[cfg(all(test, not(palisade_loom)))]
#[path = "review7_tests.rs"]
mod review7_tests;

#[cfg(all(test, not(palisade_loom)))]
#[path = "review8_tests.rs"]
mod review8_tests;

#[cfg(all(test, palisade_loom))]
#[path = "review8_loom.rs"]
mod review8_loom;

#[cfg(all(test, not(palisade_loom)))]
#[path = "review9_tests.rs"]
mod review9_tests;

#[cfg(all(test, not(palisade_loom)))]
#[path = "review11_tests.rs"]
mod review11_tests;

#[cfg(all(test, not(palisade_loom)))]
/// Interleavings found by a review, simulated deterministically: a hook runs "another
/// thread's" steps right after a transition's CAS, as if this one were preempted there.
mod review_hook {
    use super::*;
    use std::cell::RefCell;
    use std::sync::Mutex;

    thread_local! {
        pub(super) static AFTER_CAS: RefCell<Option<Box<dyn FnMut()>>> = RefCell::new(None);
    }

    /// A named one-shot hook.
    pub(super) type Hook = (&'static str, Box<dyn FnMut()>);

    thread_local! {
        /// Named one-shot hooks (review 5): `fire(point)` runs and removes the hook set for it.
        pub(super) static AT: RefCell<Vec<Hook>> = RefCell::new(Vec::new());
    }

    thread_local! {
        /// How many times this thread took the patience lock.
        pub(super) static LOCKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    pub(super) fn count_lock() {
        LOCKS.with(|n| n.set(n.get() + 1));
    }

    fn locks() -> u64 {
        LOCKS.with(|n| n.get())
    }

    /// The patience lock is off the request path: a call admitted and recorded while closed,
    /// refused while open, or refused in half-open (slots held, with or without a pause
    /// running) takes it not once; only a probe's own steps, a setup and a transition do.
    #[tokio::test(start_paused = true)]
    async fn no_call_but_a_probes_takes_the_patience_lock() {
        let b = Breaker::new(
            Config::builder()
                .consecutive_failures(3)
                .half_open_probes(1)
                .close_after(1)
                .open_duration(Duration::from_secs(1), 1, Duration::from_secs(1))
                .jitter(0)
                .max_half_open_wait(Duration::from_secs(5))
                .build()
                .unwrap(),
        );
        let at = locks();
        for i in 0..1_000 {
            let t = b.admit();
            assert!(matches!(t, Ticket::Closed(_)), "{t:?}");
            assert!(b.probe_queued().is_none());
            // Failures that do not trip (one in three, never two in a row), and successes.
            let outcome = if i % 3 == 0 {
                Outcome::FAILURE
            } else {
                Outcome::Success
            };
            b.record(t, outcome, None);
        }
        assert_eq!(locks() - at, 0, "closed: admitted and recorded");
        for _ in 0..3 {
            let t = b.admit();
            b.record(t, Outcome::FAILURE, None);
        }
        assert_eq!(b.state(), State::Open);
        let at = locks();
        for _ in 0..1_000 {
            assert!(matches!(b.admit(), Ticket::Rejected(Some(_))));
        }
        assert_eq!(locks() - at, 0, "open: refused");
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = b.admit(); // leaves the opening: setup, publication, the probe's step
        assert!(matches!(probe, Ticket::Probe(_)), "{probe:?}");
        let mark = b.probe_queued().expect("half-open"); // queued, none out: paused
        assert!(b.core.pause_running());
        let at = locks();
        for _ in 0..1_000 {
            assert!(matches!(b.admit(), Ticket::Rejected(None)));
        }
        assert_eq!(locks() - at, 0, "half-open, paused: refused");
        mark.sent();
        let at = locks();
        for _ in 0..1_000 {
            assert!(matches!(b.admit(), Ticket::Rejected(None)));
        }
        assert_eq!(locks() - at, 0, "half-open, a probe out: refused");
        let at = locks();
        b.record(probe, Outcome::Success, None);
        assert_eq!(b.state(), State::Closed);
        assert!(
            locks() - at >= 1,
            "a probe's answer is a step under the lock"
        );
    }

    pub(super) fn fire(point: &'static str) {
        let hook = AT.with(|h| {
            let mut v = h.borrow_mut();
            v.iter()
                .position(|(p, _)| *p == point)
                .map(|i| v.remove(i).1)
        });
        if let Some(mut f) = hook {
            f();
        }
    }

    /// The thread that moves open → half-open is preempted between its CAS and its stamp;
    /// meanwhile a probe is taken and fails (half-open → open, stamped). The first thread then
    /// stores its older stamp over the newer one: the breaker is open with a stamp that never
    /// matches, and every admit refuses "being opened right now" — forever.
    #[tokio::test(start_paused = true)]
    async fn a_late_stamp_from_a_preempted_transition_does_not_wedge_it_open() {
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let b = {
            let seen = seen.clone();
            Breaker::with_listener(
                Config::builder()
                    .consecutive_failures(1)
                    .open_duration(Duration::from_secs(1), 1, Duration::from_secs(1))
                    .jitter(0)
                    .build()
                    .unwrap(),
                move |t: &Transition| seen.lock().unwrap().push((t.generation, t.from, t.to)),
            )
        };
        let t = b.admit();
        b.record(t, Outcome::FAILURE, None);
        assert_eq!(b.state(), State::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        let other = b.clone();
        AFTER_CAS.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                // "Another thread", while the first is preempted after its CAS to half-open.
                let probe = other.admit();
                assert!(matches!(probe, Ticket::Probe(_)), "{probe:?}");
                other.record(probe, Outcome::FAILURE, None);
                assert_eq!(other.state(), State::Open);
            }))
        });
        let _ = b.admit(); // enters half-open (and is "preempted" inside)
        assert_eq!(b.state(), State::Open);
        eprintln!("listener saw, in order: {:?}", seen.lock().unwrap());
        // The reopening lasted 1 s. Long after, a caller should get a probe.
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(3600)).await;
            let t = b.admit();
            assert!(
                matches!(t, Ticket::Probe(_)),
                "still refused an hour later: {t:?}, state {:?}, generation {}, stamp {}",
                b.state(),
                b.generation(),
                b.core.stamp.load(Ordering::SeqCst)
            );
            b.record(t, Outcome::FAILURE, None);
        }
    }

    /// No consecutive rule (slow-call rule only): failures still count up; past 2²⁴ − 1 the
    /// count saturates (it overflowed, a panic in a debug build).
    #[tokio::test(start_paused = true)]
    async fn the_consecutive_count_saturates_without_a_consecutive_rule() {
        let b = Breaker::new(
            Config::builder()
                .no_failure_rate()
                .slow_calls(Duration::from_secs(1), 50)
                .build()
                .unwrap(),
        );
        // As many failures in a row as the count keeps, in this generation.
        let g = b.generation() & GEN_MASK;
        b.core
            .consecutive
            .store((g << RUN_BITS) | RUN_MAX, Ordering::SeqCst);
        let t = b.admit();
        b.record(t, Outcome::FAILURE, None);
        // No panic, and no rule that this one failure could trip.
        assert_eq!(b.state(), State::Closed);
    }
}
