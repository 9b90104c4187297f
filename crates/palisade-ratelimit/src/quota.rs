//! [`Quota`]: how many requests per period, and how many at once.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The largest period and `burst × interval`, in nanoseconds: with the limiter's clock under
/// 2^62 ns too (146 years of uptime), no sum in the algorithm can overflow.
const MAX_NS: u64 = 1 << 62;

/// A rate and a burst: `count` requests per `period` in the long run, at most `burst` at once.
///
/// The constructors say what they mean: `Quota::per_second(100)` is one hundred requests per
/// second, never "one request every 100 seconds". The burst is set apart with
/// [`burst`](Quota::burst) and defaults to **1**, which spaces requests evenly (one every
/// `period / count`); raise it to let idle time be saved up for a burst.
///
/// # The guarantee
///
/// With emission interval `T = period / count` (rounded *up* to a whole nanosecond, so the
/// long-run rate never exceeds the quota) and burst `B`, the limiter is a GCRA with tolerance
/// `(B − 1)·T`. Over any interval of length `L`, it admits at most `B + ⌊L / T⌋` requests: at most
/// `B` at the same instant, and `count` per `period` in the long run.
///
/// ```
/// use palisade_ratelimit::Quota;
/// use std::time::Duration;
///
/// let q: Quota = "100/min".parse()?;
/// assert_eq!(q.interval(), Duration::from_millis(600));
/// assert_eq!(q.burst_size(), 1);
///
/// let q = Quota::per_second(1000)?.burst(10)?;
/// assert_eq!(q.interval(), Duration::from_millis(1));
/// assert_eq!(q.burst_size(), 10);
/// # Ok::<(), palisade_ratelimit::QuotaError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    count: u64,
    period_ns: u64,
    interval_ns: u64,
    burst: u32,
}

/// Why a [`Quota`] could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuotaError {
    /// The request count is zero: nothing could ever be admitted.
    ZeroCount,
    /// The period is zero.
    ZeroPeriod,
    /// The burst is zero: nothing could ever be admitted.
    ZeroBurst,
    /// More than one request per nanosecond: finer than the limiter's clock.
    TooFine {
        /// The requested count.
        count: u64,
        /// The requested period.
        period: Duration,
    },
    /// A value does not fit the limiter's nanosecond arithmetic (2^62 ns, about 146 years).
    Overflow {
        /// What overflowed.
        what: &'static str,
    },
    /// A quota string could not be parsed.
    Parse {
        /// The text that was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl fmt::Display for QuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuotaError::ZeroCount => {
                f.write_str("invalid quota: the request count must be at least 1")
            }
            QuotaError::ZeroPeriod => {
                f.write_str("invalid quota: the period must be longer than zero")
            }
            QuotaError::ZeroBurst => f.write_str("invalid quota: the burst must be at least 1"),
            QuotaError::TooFine { count, period } => write!(
                f,
                "invalid quota: {count} per {period:?} is more than one request per nanosecond"
            ),
            QuotaError::Overflow { what } => {
                write!(
                    f,
                    "invalid quota: {what} is too large (limit: 2^62 ns, about 146 years)"
                )
            }
            QuotaError::Parse { input, reason } => {
                write!(f, "invalid quota {input:?}: {reason} (expected e.g. \"100/min\", \"10/s\", \"5000/h\", \"3/250ms\")")
            }
        }
    }
}

impl std::error::Error for QuotaError {}

impl Quota {
    /// `count` requests per `period`, burst 1.
    ///
    /// # Errors
    ///
    /// [`QuotaError::ZeroCount`], [`QuotaError::ZeroPeriod`], [`QuotaError::TooFine`] (more than
    /// one per nanosecond) or [`QuotaError::Overflow`] (a period over 2^62 ns).
    pub fn new(count: u64, period: Duration) -> Result<Quota, QuotaError> {
        if count == 0 {
            return Err(QuotaError::ZeroCount);
        }
        if period.is_zero() {
            return Err(QuotaError::ZeroPeriod);
        }
        let period_ns = u64::try_from(period.as_nanos())
            .ok()
            .filter(|&ns| ns <= MAX_NS)
            .ok_or(QuotaError::Overflow { what: "the period" })?;
        if count > period_ns {
            return Err(QuotaError::TooFine { count, period });
        }
        // Round up: the long-run rate may fall short of the quota by under a nanosecond per
        // request, but never exceeds it.
        let interval_ns = period_ns.div_ceil(count);
        Ok(Quota {
            count,
            period_ns,
            interval_ns,
            burst: 1,
        })
    }

    /// `count` requests per second, burst 1.
    ///
    /// # Errors
    ///
    /// As [`Quota::new`].
    pub fn per_second(count: u64) -> Result<Quota, QuotaError> {
        Quota::new(count, Duration::from_secs(1))
    }

    /// `count` requests per minute, burst 1.
    ///
    /// # Errors
    ///
    /// As [`Quota::new`].
    pub fn per_minute(count: u64) -> Result<Quota, QuotaError> {
        Quota::new(count, Duration::from_secs(60))
    }

    /// `count` requests per hour, burst 1.
    ///
    /// # Errors
    ///
    /// As [`Quota::new`].
    pub fn per_hour(count: u64) -> Result<Quota, QuotaError> {
        Quota::new(count, Duration::from_secs(3600))
    }

    /// The same rate with at most `burst` requests at once.
    ///
    /// # Errors
    ///
    /// [`QuotaError::ZeroBurst`], or [`QuotaError::Overflow`] when `burst × interval` is over
    /// 2^62 ns.
    pub fn burst(self, burst: u32) -> Result<Quota, QuotaError> {
        if burst == 0 {
            return Err(QuotaError::ZeroBurst);
        }
        self.interval_ns
            .checked_mul(u64::from(burst))
            .filter(|&ns| ns <= MAX_NS)
            .ok_or(QuotaError::Overflow {
                what: "burst × interval",
            })?;
        Ok(Quota { burst, ..self })
    }

    /// The emission interval `T`: the time one request costs.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns)
    }

    /// The burst `B`: how many requests may pass at the same instant.
    pub fn burst_size(&self) -> u32 {
        self.burst
    }

    /// The request count of the rate, as given.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The period of the rate, as given.
    pub fn period(&self) -> Duration {
        Duration::from_nanos(self.period_ns)
    }

    pub(crate) fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    /// The GCRA tolerance `(B − 1)·T` in nanoseconds; fits by construction.
    pub(crate) fn tolerance_ns(&self) -> u64 {
        self.interval_ns * (u64::from(self.burst) - 1)
    }
}

impl fmt::Debug for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quota")
            .field("count", &self.count)
            .field("period", &self.period())
            .field("burst", &self.burst)
            .finish()
    }
}

impl fmt::Display for Quota {
    /// `"100/min"`, or `"100/min burst 10"`: the first part parses back with [`FromStr`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 7] = [
            (86_400_000_000_000, "d"),
            (3_600_000_000_000, "h"),
            (60_000_000_000, "min"),
            (1_000_000_000, "s"),
            (1_000_000, "ms"),
            (1_000, "us"),
            (1, "ns"),
        ];
        let (unit_ns, unit) = UNITS
            .into_iter()
            .find(|(ns, _)| self.period_ns % ns == 0)
            .unwrap_or((1, "ns"));
        match self.period_ns / unit_ns {
            1 => write!(f, "{}/{unit}", self.count)?,
            n => write!(f, "{}/{n}{unit}", self.count)?,
        }
        if self.burst > 1 {
            write!(f, " burst {}", self.burst)?;
        }
        Ok(())
    }
}

impl FromStr for Quota {
    type Err = QuotaError;

    /// Parses `COUNT/PERIOD` with burst 1, where `PERIOD` is a unit (`ns`, `us`, `ms`, `s`,
    /// `sec`, `min`, `h`, `hour`, `d`, `day`) optionally preceded by a whole number: `"100/min"`,
    /// `"10/s"`, `"5000/h"`, `"3/250ms"`. Spaces around the parts are allowed.
    fn from_str(input: &str) -> Result<Quota, QuotaError> {
        let err = |reason| QuotaError::Parse {
            input: input.to_owned(),
            reason,
        };
        let (count, period) = input
            .split_once('/')
            .ok_or_else(|| err("missing '/' between count and period"))?;
        let (count, period) = (count.trim(), period.trim());
        if count.is_empty() {
            return Err(err("missing request count before '/'"));
        }
        if !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("the request count must be a whole number"));
        }
        let count: u64 = count
            .parse()
            .map_err(|_| err("the request count is too large"))?;
        let digits = period.bytes().take_while(u8::is_ascii_digit).count();
        let (amount, unit) = period.split_at(digits);
        let amount: u64 = if amount.is_empty() {
            1
        } else {
            amount.parse().map_err(|_| err("the period is too large"))?
        };
        let unit_ns: u64 = match unit.trim() {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" | "sec" | "second" => 1_000_000_000,
            "m" | "min" | "minute" => 60_000_000_000,
            "h" | "hr" | "hour" => 3_600_000_000_000,
            "d" | "day" => 86_400_000_000_000,
            "" => return Err(err("missing period unit after '/'")),
            _ => return Err(err("unknown period unit (use ns, us, ms, s, min, h or d)")),
        };
        let period_ns = amount
            .checked_mul(unit_ns)
            .ok_or(QuotaError::Overflow { what: "the period" })?;
        Quota::new(count, Duration::from_nanos(period_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let q: Quota = "100/min".parse().unwrap();
        assert_eq!((q.count(), q.period()), (100, Duration::from_secs(60)));
        assert_eq!(q.interval(), Duration::from_millis(600));
        let q: Quota = "10/s".parse().unwrap();
        assert_eq!(q.interval(), Duration::from_millis(100));
        let q: Quota = "5000/h".parse().unwrap();
        assert_eq!(q.interval(), Duration::from_millis(720));
        let q: Quota = "3/250ms".parse().unwrap();
        assert_eq!(q.period(), Duration::from_millis(250));
        // 250 ms / 3 rounds up to whole nanoseconds.
        assert_eq!(q.interval(), Duration::from_nanos(83_333_334));
        let q: Quota = " 7 / 2s ".parse().unwrap();
        assert_eq!((q.count(), q.period()), (7, Duration::from_secs(2)));
    }

    #[test]
    fn constructors_mean_what_they_say() {
        assert_eq!(
            Quota::per_second(100).unwrap().interval(),
            Duration::from_millis(10)
        );
        assert_eq!(
            Quota::per_minute(60).unwrap().interval(),
            Duration::from_secs(1)
        );
        assert_eq!(
            Quota::per_hour(3600).unwrap().interval(),
            Duration::from_secs(1)
        );
        let q = Quota::per_second(1000).unwrap().burst(10).unwrap();
        assert_eq!(q.tolerance_ns(), 9_000_000);
        assert_eq!(Quota::per_second(5).unwrap().burst_size(), 1);
    }

    #[test]
    fn display_round_trips_without_burst() {
        for s in ["100/min", "10/s", "5000/h", "3/250ms", "1/d"] {
            let q: Quota = s.parse().unwrap();
            assert_eq!(q.to_string().parse::<Quota>().unwrap(), q, "{s}");
        }
    }
}
