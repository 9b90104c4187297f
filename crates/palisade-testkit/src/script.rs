//! The pieces of a script: the upstream's own rate limit, outages and latency.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use crate::rng;

// ===== Rate limit =====

/// The upstream's own rate limit: requests beyond it are answered `429 Too Many Requests` with
/// `Retry-After` and the IETF `RateLimit` headers.
///
/// Both algorithms are exact (integer arithmetic on the tokio clock, no floating point) and
/// count every request that is not reset, hung or in an outage. Time is measured from
/// [`Builder::start`](crate::Builder::start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub(crate) quota: u64,
    pub(crate) window: Duration,
    pub(crate) algorithm: Algorithm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    FixedWindow,
    Gcra { burst: u64 },
}

impl RateLimit {
    /// `quota` requests in each fixed window of length `window`; windows are aligned on the
    /// start of the upstream (`[0, window)`, `[window, 2·window)`, …). A refused request is told
    /// to retry when the current window ends.
    pub fn fixed_window(quota: u64, window: Duration) -> Self {
        RateLimit {
            quota,
            window,
            algorithm: Algorithm::FixedWindow,
        }
    }

    /// GCRA (a token bucket without a refill task): `quota` requests per `window` on average,
    /// one every `window / quota`, with up to `burst` requests at once. A refused request is
    /// told to retry when the next one would conform.
    pub fn gcra(quota: u64, window: Duration, burst: u64) -> Self {
        RateLimit {
            quota,
            window,
            algorithm: Algorithm::Gcra { burst },
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.quota == 0 {
            return Err("rate limit: the quota must be at least 1 request".into());
        }
        if self.window.is_zero() {
            return Err("rate limit: the window must be longer than zero".into());
        }
        if let Algorithm::Gcra { burst: 0 } = self.algorithm {
            return Err("rate limit: the GCRA burst must be at least 1 request".into());
        }
        Ok(())
    }

    /// `(q, w)` of `RateLimit-Policy`: the draft counts windows in whole seconds, so a
    /// sub-second window is expressed per second, and a longer one is rounded up.
    pub(crate) fn policy_q_w(&self) -> (u64, u64) {
        if self.window < Duration::from_secs(1) {
            let per_sec = u128::from(self.quota) * 1_000_000_000 / self.window.as_nanos();
            (u64::try_from(per_sec).unwrap_or(u64::MAX), 1)
        } else {
            (self.quota, secs_rounded_up(self.window))
        }
    }
}

/// Whole seconds, rounded up.
pub(crate) fn secs_rounded_up(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// What the limiter said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) allowed: bool,
    /// Requests that would still be allowed right now, after this one.
    pub(crate) remaining: u64,
    /// Until the quota is whole again (end of the window; for GCRA, until the bucket is full).
    pub(crate) reset: Duration,
    /// For a refused request: until a request would be allowed.
    pub(crate) retry_after: Duration,
}

/// The rate limit's state. Times are nanoseconds since the upstream started.
#[derive(Debug)]
pub(crate) struct Limiter {
    policy: RateLimit,
    /// Fixed window: the index of the current window and the requests it admitted.
    window_index: u128,
    used: u64,
    /// GCRA: the theoretical arrival time, in nanoseconds × quota (so that the emission
    /// interval `window / quota` is the integer `window` and nothing is rounded).
    tat: u128,
}

impl Limiter {
    pub(crate) fn new(policy: RateLimit) -> Self {
        Limiter {
            policy,
            window_index: 0,
            used: 0,
            tat: 0,
        }
    }

    pub(crate) fn policy(&self) -> &RateLimit {
        &self.policy
    }

    pub(crate) fn check(&mut self, elapsed: Duration) -> Verdict {
        let now = elapsed.as_nanos();
        let window = self.policy.window.as_nanos().max(1);
        let quota = self.policy.quota;
        match self.policy.algorithm {
            Algorithm::FixedWindow => {
                let index = now / window;
                if index != self.window_index {
                    self.window_index = index;
                    self.used = 0;
                }
                let reset = nanos((index + 1) * window - now);
                if self.used < quota {
                    self.used += 1;
                    Verdict {
                        allowed: true,
                        remaining: quota - self.used,
                        reset,
                        retry_after: Duration::ZERO,
                    }
                } else {
                    Verdict {
                        allowed: false,
                        remaining: 0,
                        reset,
                        retry_after: reset,
                    }
                }
            }
            Algorithm::Gcra { burst } => {
                let q = u128::from(quota);
                let now = now.saturating_mul(q);
                let interval = window; // window / quota, scaled by quota
                let tolerance = interval.saturating_mul(u128::from(burst) - 1);
                let tat = self.tat.max(now);
                // Scaled back to nanoseconds, rounded up: never tell a client "too early".
                let unscale = |d: u128| nanos(d.div_ceil(q));
                if tat - now <= tolerance {
                    let tat = tat.saturating_add(interval);
                    self.tat = tat;
                    let ahead = tat - now;
                    let remaining = if ahead > tolerance {
                        0
                    } else {
                        (tolerance - ahead) / interval + 1
                    };
                    Verdict {
                        allowed: true,
                        remaining: u64::try_from(remaining).unwrap_or(u64::MAX),
                        reset: unscale(ahead),
                        retry_after: Duration::ZERO,
                    }
                } else {
                    Verdict {
                        allowed: false,
                        remaining: 0,
                        reset: unscale(tat - now),
                        retry_after: unscale(tat - tolerance - now),
                    }
                }
            }
        }
    }
}

fn nanos(n: u128) -> Duration {
    let secs = u64::try_from(n / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder is below 10^9, so it fits in u32.
    let sub = u32::try_from(n % 1_000_000_000).unwrap_or(0);
    Duration::new(secs, sub)
}

// ===== Outages =====

/// A window in which every request is answered with a `5xx` (default `503 Service
/// Unavailable`), before the rate limit is consulted (a request in an outage uses no quota).
///
/// When outages overlap, the first one added to the builder answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    pub(crate) when: OutageWindow,
    pub(crate) status: u16,
    pub(crate) retry_after: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OutageWindow {
    Time(Range<Duration>),
    Requests(Range<u64>),
}

impl Outage {
    /// Requests arriving in `range`, measured from [`Builder::start`](crate::Builder::start) on
    /// the tokio clock (so `tokio::time::pause()` / `advance()` drive it): `start` included,
    /// `end` excluded.
    pub fn time(range: Range<Duration>) -> Self {
        Outage {
            when: OutageWindow::Time(range),
            status: 503,
            retry_after: None,
        }
    }

    /// Requests whose number (1 for the first request the upstream receives, counted across
    /// all connections) is in `range`, e.g. `100..150` for the 100th to the 149th.
    pub fn requests(range: Range<u64>) -> Self {
        Outage {
            when: OutageWindow::Requests(range),
            status: 503,
            retry_after: None,
        }
    }

    /// The status to answer: `500..=599` (checked by [`Builder::start`](crate::Builder::start)).
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Also send `Retry-After` (whole seconds, rounded up) with each outage answer.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if !(500..=599).contains(&self.status) {
            return Err(format!(
                "outage: the status must be a 5xx (500..=599), got {}",
                self.status
            ));
        }
        match &self.when {
            OutageWindow::Time(r) if r.start >= r.end => Err(format!(
                "outage: the time range {:?}..{:?} is empty",
                r.start, r.end
            )),
            OutageWindow::Requests(r) if r.start >= r.end => Err(format!(
                "outage: the request range {}..{} is empty",
                r.start, r.end
            )),
            _ => Ok(()),
        }
    }

    pub(crate) fn covers(&self, request: u64, elapsed: Duration) -> bool {
        match &self.when {
            OutageWindow::Time(r) => r.contains(&elapsed),
            OutageWindow::Requests(r) => r.contains(&request),
        }
    }
}

// ===== Latency =====

/// How long the upstream waits before answering each request (`tokio::time::sleep`, so paused
/// time drives it). Applies to every answer (`200`, `429`, `5xx`), after the request body is
/// read; not to resets and hangs.
///
/// A uniform latency is deterministic: the delay of request number `n` is a pure function of
/// the seed and `n` ([`Latency::delay`]), whatever the interleaving of connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    kind: LatencyKind,
    seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LatencyKind {
    Fixed(Duration),
    Uniform { min: Duration, max: Duration },
}

impl Latency {
    /// The same delay for every request.
    pub fn fixed(delay: Duration) -> Self {
        Latency {
            kind: LatencyKind::Fixed(delay),
            seed: 0,
        }
    }

    /// A delay drawn uniformly from `min..=max` (nanosecond resolution) for each request, from a
    /// splitmix64 stream seeded with [`Latency::seed`] (0 unless set).
    pub fn uniform(min: Duration, max: Duration) -> Self {
        Latency {
            kind: LatencyKind::Uniform { min, max },
            seed: 0,
        }
    }

    /// The seed of a uniform latency; the same seed gives the same delays.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The delay of request number `request` (1 for the first request).
    pub fn delay(&self, request: u64) -> Duration {
        match self.kind {
            LatencyKind::Fixed(d) => d,
            LatencyKind::Uniform { min, max } => {
                let span = max.saturating_sub(min).as_nanos();
                let span = u64::try_from(span).unwrap_or(u64::MAX);
                let offset = rng::below_or_eq(rng::splitmix64(self.seed, request), span);
                min.checked_add(Duration::from_nanos(offset)).unwrap_or(max)
            }
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        match self.kind {
            LatencyKind::Uniform { min, max } if min > max => Err(format!(
                "latency: the uniform range {min:?}..={max:?} is empty (min > max)"
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            LatencyKind::Fixed(d) => write!(f, "fixed {d:?}"),
            LatencyKind::Uniform { min, max } => {
                write!(f, "uniform {min:?}..={max:?} (seed {})", self.seed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn fixed_window_counts_and_resets() {
        let mut l = Limiter::new(RateLimit::fixed_window(2, 10 * MS));
        let v = l.check(Duration::ZERO);
        assert!(v.allowed);
        assert_eq!((v.remaining, v.reset), (1, 10 * MS));
        let v = l.check(3 * MS);
        assert!(v.allowed);
        assert_eq!((v.remaining, v.reset), (0, 7 * MS));
        let v = l.check(4 * MS);
        assert!(!v.allowed);
        assert_eq!((v.remaining, v.reset, v.retry_after), (0, 6 * MS, 6 * MS));
        // The next window starts exactly at 10 ms.
        let v = l.check(10 * MS);
        assert!(v.allowed);
        assert_eq!((v.remaining, v.reset), (1, 10 * MS));
    }

    #[test]
    fn gcra_burst_then_one_per_interval() {
        // 10 per 100 ms: one every 10 ms, 3 at once.
        let mut l = Limiter::new(RateLimit::gcra(10, 100 * MS, 3));
        let remaining: Vec<u64> = (0..3).map(|_| l.check(Duration::ZERO).remaining).collect();
        assert_eq!(remaining, [2, 1, 0]);
        let v = l.check(Duration::ZERO);
        assert!(!v.allowed);
        assert_eq!(v.retry_after, 10 * MS);
        assert_eq!(v.reset, 30 * MS);
        let v = l.check(9 * MS);
        assert!(!v.allowed);
        assert_eq!(v.retry_after, MS);
        let v = l.check(10 * MS);
        assert!(v.allowed);
        assert_eq!(v.remaining, 0);
        // After a long idle time the burst is whole again.
        let v = l.check(Duration::from_secs(5));
        assert!(v.allowed);
        assert_eq!((v.remaining, v.reset), (2, 10 * MS));
    }

    #[test]
    fn gcra_uneven_interval_is_exact() {
        // 3 per second, no burst: one every 333_333_333.3… ns, computed without rounding.
        let mut l = Limiter::new(RateLimit::gcra(3, Duration::from_secs(1), 1));
        assert!(l.check(Duration::ZERO).allowed);
        // The hint is rounded up: never "retry now" when it is a fraction of a ns too early.
        let v = l.check(Duration::ZERO);
        assert!(!v.allowed);
        assert_eq!(v.retry_after, Duration::from_nanos(333_333_334));
        assert!(!l.check(Duration::from_nanos(333_333_333)).allowed);
        assert!(l.check(Duration::from_nanos(333_333_334)).allowed);
        // Sustained at exactly 3 per second (on whole seconds), nothing drifts.
        for s in 1..1_000 {
            let at = Duration::from_secs(s);
            assert!(l.check(at).allowed, "second {s}");
            assert!(!l.check(at).allowed, "second {s}");
        }
    }

    #[test]
    fn policy_header_values() {
        let p = RateLimit::fixed_window(100, Duration::from_secs(1));
        assert_eq!(p.policy_q_w(), (100, 1));
        let p = RateLimit::fixed_window(5, Duration::from_millis(100));
        assert_eq!(p.policy_q_w(), (50, 1));
        let p = RateLimit::fixed_window(5, Duration::from_millis(1500));
        assert_eq!(p.policy_q_w(), (5, 2));
    }

    #[test]
    fn validation_messages() {
        let e = RateLimit::fixed_window(0, MS).validate().unwrap_err();
        assert!(e.contains("quota"), "{e}");
        let e = RateLimit::fixed_window(1, Duration::ZERO)
            .validate()
            .unwrap_err();
        assert!(e.contains("window"), "{e}");
        let e = RateLimit::gcra(1, MS, 0).validate().unwrap_err();
        assert!(e.contains("burst"), "{e}");
        let e = Outage::requests(5..5).validate().unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = Outage::time(2 * MS..MS).validate().unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = Outage::requests(1..2).status(404).validate().unwrap_err();
        assert!(e.contains("404"), "{e}");
        let e = Latency::uniform(2 * MS, MS).validate().unwrap_err();
        assert!(e.contains("min > max"), "{e}");
    }

    #[test]
    fn uniform_latency_is_deterministic_and_bounded() {
        let a = Latency::uniform(MS, 5 * MS).seed(7);
        let b = Latency::uniform(MS, 5 * MS).seed(7);
        let c = Latency::uniform(MS, 5 * MS).seed(8);
        let da: Vec<_> = (1..=200).map(|n| a.delay(n)).collect();
        let db: Vec<_> = (1..=200).map(|n| b.delay(n)).collect();
        let dc: Vec<_> = (1..=200).map(|n| c.delay(n)).collect();
        assert_eq!(da, db);
        assert_ne!(da, dc);
        assert!(da.iter().all(|d| (MS..=5 * MS).contains(d)));
        // Spread over the range, not stuck at one end.
        assert!(da.iter().any(|d| *d < 2 * MS) && da.iter().any(|d| *d > 4 * MS));
        assert_eq!(Latency::uniform(MS, MS).delay(3), MS);
        assert_eq!(Latency::fixed(3 * MS).delay(99), 3 * MS);
    }
}
