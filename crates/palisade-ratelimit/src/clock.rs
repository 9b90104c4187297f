//! [`Clock`]: where a limiter reads the time.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// Where a limiter reads the time.
///
/// - [`Clock::tokio`] (the default): [`tokio::time::Instant`]. `tokio::time::pause()` and
///   `advance()` drive every decision, so tests of code behind the limiter run in simulated
///   time. Outside paused time it is the OS monotonic clock (`clock_gettime` on Linux).
/// - [`Clock::tsc`]: the CPU's time-stamp counter, read through [`quanta`] and scaled to
///   nanoseconds — a few times cheaper than the OS clock, which is most of the cost of a
///   decision. Paused tokio time does **not** drive it: choose it for production paths where a
///   check is hot, and keep the default where tests pause time. (A waiter on it under paused
///   time with auto-advance busy-loops: each sleep ends at once, tokio's time jumps ahead, and
///   the counter has barely moved — until real time reaches its slot.)
///
/// The clock decides when requests conform; waiting still sleeps on tokio's timer, which the
/// limiter asks for the matching tokio instant.
///
/// ```
/// use palisade_ratelimit::{Clock, Quota, RateLimitLayer, RateLimiter};
///
/// # fn main() -> Result<(), palisade_ratelimit::QuotaError> {
/// let limiter = RateLimiter::with_clock(Quota::per_second(100)?, Clock::tsc());
/// assert!(limiter.check().is_ok());
/// let layer = RateLimitLayer::from_limiter(limiter);
/// # let _ = layer;
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct Clock(Kind);

#[derive(Clone, Default)]
enum Kind {
    #[default]
    Tokio,
    Tsc(quanta::Clock),
}

impl Clock {
    /// tokio's clock, which paused time drives (the default).
    pub fn tokio() -> Clock {
        Clock(Kind::Tokio)
    }

    /// The CPU's time-stamp counter (through [`quanta`]), where the CPU has an invariant one;
    /// otherwise the OS monotonic clock. The first call in a process calibrates the counter
    /// against the OS clock, which takes up to 200 ms. Paused tokio time does not drive it.
    pub fn tsc() -> Clock {
        Clock(Kind::Tsc(quanta::Clock::new()))
    }

    /// Whether this is tokio's clock (the one paused time drives).
    pub fn is_tokio(&self) -> bool {
        matches!(self.0, Kind::Tokio)
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Kind::Tokio => "Clock::tokio",
            Kind::Tsc(_) => "Clock::tsc",
        })
    }
}

/// A clock with its origin: the limiter's time is nanoseconds since the origin.
pub(crate) struct Timebase {
    origin: Instant,
    source: Source,
}

enum Source {
    Tokio,
    Tsc { clock: quanta::Clock, origin: u64 },
}

impl Timebase {
    pub(crate) fn new(clock: Clock) -> Timebase {
        let source = match clock.0 {
            Kind::Tokio => Source::Tokio,
            Kind::Tsc(clock) => Source::Tsc {
                origin: clock.raw(),
                clock,
            },
        };
        Timebase {
            origin: Instant::now(),
            source,
        }
    }

    /// Nanoseconds since the origin.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        match &self.source {
            Source::Tokio => {
                let since = Instant::now().saturating_duration_since(self.origin);
                u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
            }
            // A counter read a little behind the origin (another core) counts as the origin.
            Source::Tsc { clock, origin } => clock.delta_as_nanos(*origin, clock.raw()),
        }
    }

    /// The tokio instant of `at` (nanoseconds since the origin), for tokio's timer.
    pub(crate) fn instant(&self, at: u64) -> Instant {
        match self.source {
            Source::Tokio => self.origin + Duration::from_nanos(at),
            Source::Tsc { .. } => {
                let (now, tokio_now) = (self.now(), Instant::now());
                if at >= now {
                    tokio_now + Duration::from_nanos(at - now)
                } else {
                    let back = Duration::from_nanos(now - at);
                    tokio_now.checked_sub(back).unwrap_or(tokio_now)
                }
            }
        }
    }

    /// Where the tokio instant `at` falls: `Ok(nanoseconds since the origin)`, or
    /// `Err(nanoseconds before it)`.
    pub(crate) fn offset(&self, at: Instant) -> Result<u64, u64> {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        match self.source {
            Source::Tokio if at >= self.origin => Ok(nanos(at - self.origin)),
            Source::Tokio => Err(nanos(self.origin - at)),
            Source::Tsc { .. } => {
                let (now, tokio_now) = (self.now(), Instant::now());
                if at >= tokio_now {
                    Ok(now.saturating_add(nanos(at - tokio_now)))
                } else {
                    let back = nanos(tokio_now - at);
                    now.checked_sub(back).ok_or(back - now)
                }
            }
        }
    }

    /// Which clock this is.
    pub(crate) fn clock(&self) -> Clock {
        match &self.source {
            Source::Tokio => Clock::tokio(),
            Source::Tsc { clock, .. } => Clock(Kind::Tsc(clock.clone())),
        }
    }
}
