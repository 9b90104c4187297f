//! [`Config`] and its builder.

use std::fmt;
use std::time::Duration;

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// The sliding window the trip rules read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// The last `n` outcomes.
    Count(u32),
    /// Outcomes of the last `span`, in buckets of `bucket` width (the window slides by one
    /// bucket at a time).
    Time {
        /// How far back the window reaches.
        span: Duration,
        /// The width of one bucket.
        bucket: Duration,
    },
}

/// How a circuit breaker decides; built with [`Config::builder`].
///
/// Defaults: a count window of the last 100 calls; open at a failure rate of 50 % once 20 calls
/// are in the window; no slow-call rule; no consecutive-failure rule; open for 5 s, doubling on
/// each opening in a row up to 60 s, ±10 % jitter; in half-open, 1 probe at a time, close after
/// 1 successful probe, reopen if the probes have not decided within 30 s (a probe queued below
/// the breaker excused for at most 300 s more).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub(crate) window: WindowKind,
    pub(crate) failure_rate: Option<u8>,
    pub(crate) minimum_calls: u32,
    pub(crate) slow: Option<(Duration, u8)>,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) probes: u16,
    pub(crate) close_after: u16,
    pub(crate) max_half_open_wait: Duration,
    pub(crate) max_probe_queue_wait: Duration,
    pub(crate) open_base: Duration,
    pub(crate) open_multiplier: u32,
    pub(crate) open_cap: Duration,
    pub(crate) jitter_percent: u8,
}

/// Why a [`Config`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    fn new(message: impl Into<String>) -> ConfigError {
        ConfigError {
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid circuit breaker config: {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Default for Config {
    fn default() -> Config {
        Config {
            window: WindowKind::Count(100),
            failure_rate: Some(50),
            minimum_calls: 20,
            slow: None,
            consecutive_failures: None,
            probes: 1,
            close_after: 1,
            max_half_open_wait: Duration::from_secs(30),
            max_probe_queue_wait: Duration::from_secs(300),
            open_base: Duration::from_secs(5),
            open_multiplier: 2,
            open_cap: Duration::from_secs(60),
            jitter_percent: 10,
        }
    }
}

impl Config {
    /// A builder starting from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Config::default(),
        }
    }

    /// The consecutive-failure rule's threshold, if one is set.
    pub fn consecutive_failures(&self) -> Option<u32> {
        self.consecutive_failures
    }

    /// The slow-call rule (the duration above which a call is slow, and the percentage of slow
    /// calls that opens the circuit), if one is set.
    pub fn slow_calls(&self) -> Option<(Duration, u8)> {
        self.slow
    }
}

/// Builds a [`Config`]; [`build`](ConfigBuilder::build) checks it.
#[derive(Debug, Clone)]
#[must_use]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// Read the last `n` outcomes.
    pub fn count_window(mut self, n: u32) -> Self {
        self.config.window = WindowKind::Count(n);
        self
    }

    /// Read the outcomes of the last `span`, kept in buckets of width `bucket`.
    pub fn time_window(mut self, span: Duration, bucket: Duration) -> Self {
        self.config.window = WindowKind::Time { span, bucket };
        self
    }

    /// Open when at least `percent` % of the calls in the window failed (1–100).
    pub fn failure_rate(mut self, percent: u8) -> Self {
        self.config.failure_rate = Some(percent);
        self
    }

    /// Never open on the failure rate (use another rule).
    pub fn no_failure_rate(mut self) -> Self {
        self.config.failure_rate = None;
        self
    }

    /// The rate rules apply only once the window holds at least `n` calls.
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.config.minimum_calls = n;
        self
    }

    /// Open when at least `percent` % of the calls in the window took `threshold` or longer.
    /// (Timing each call costs two clock reads; without this rule the closed path reads none.)
    pub fn slow_calls(mut self, threshold: Duration, percent: u8) -> Self {
        self.config.slow = Some((threshold, percent));
        self
    }

    /// Open after `n` failures in a row, whatever the window says (1 to 16,777,215).
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.config.consecutive_failures = Some(n);
        self
    }

    /// In half-open, let `n` probe calls run at once; every other caller is rejected.
    pub fn half_open_probes(mut self, n: u16) -> Self {
        self.config.probes = n;
        self
    }

    /// Close after `n` probes succeeded; any failed probe reopens.
    pub fn close_after(mut self, n: u16) -> Self {
        self.config.close_after = n;
        self
    }

    /// Reopen when half-open has not decided within `wait` (a hung probe cannot wedge it). The
    /// wait counts from the half-open's start or, in a stack that marks its probes
    /// ([`Breaker::probe_queued`](crate::Breaker::probe_queued)), from a probe's send, paused
    /// while a probe is queued below the breaker and none is out (for at most
    /// [`max_probe_queue_wait`](Self::max_probe_queue_wait) more).
    ///
    /// In a stack that marks no probes the whole half-open must fit in `wait`: with
    /// [`close_after`](Self::close_after) above [`half_open_probes`](Self::half_open_probes),
    /// probes run in rounds, and a `wait` shorter than those rounds' answers reopens a healthy
    /// but slow upstream every time (a marking stack restarts the wait on each success that
    /// does not close).
    pub fn max_half_open_wait(mut self, wait: Duration) -> Self {
        self.config.max_half_open_wait = wait;
        self
    }

    /// How much longer than `max_half_open_wait` a half-open may wait for a probe queued below
    /// the breaker ([`Breaker::probe_queued`](crate::Breaker::probe_queued)) before taking it
    /// for hung (default 300 s): a bound on the pause, so a queue that never moves — behind a
    /// call that hangs with no timeout below — cannot wedge the half-open.
    pub fn max_probe_queue_wait(mut self, wait: Duration) -> Self {
        self.config.max_probe_queue_wait = wait;
        self
    }

    /// Stay open `base` the first time; each opening in a row multiplies it by `multiplier`,
    /// up to `cap`. `multiplier` 1 keeps it fixed.
    pub fn open_duration(mut self, base: Duration, multiplier: u32, cap: Duration) -> Self {
        self.config.open_base = base;
        self.config.open_multiplier = multiplier;
        self.config.open_cap = cap;
        self
    }

    /// Spread each open duration by up to ± `percent` % (0–50), so breakers of many clients do
    /// not probe in step. The result never exceeds the cap.
    pub fn jitter(mut self, percent: u8) -> Self {
        self.config.jitter_percent = percent;
        self
    }

    /// Checks and returns the config.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] whose message names the setting and the valid range.
    pub fn build(self) -> Result<Config, ConfigError> {
        let c = self.config;
        match c.window {
            WindowKind::Count(0) => {
                return Err(ConfigError::new("count window must hold at least 1 call"))
            }
            WindowKind::Count(n) if n > 1_000_000 => {
                return Err(ConfigError::new(format!(
                    "count window of {n} calls is too large (at most 1000000)"
                )))
            }
            WindowKind::Count(_) => {}
            WindowKind::Time { span, bucket } => {
                if bucket.is_zero() {
                    return Err(ConfigError::new(
                        "time window bucket width must be longer than zero",
                    ));
                }
                if span < bucket {
                    return Err(ConfigError::new(format!(
                        "time window span {span:?} is shorter than its bucket width {bucket:?}"
                    )));
                }
                if span.as_nanos() % bucket.as_nanos() != 0 {
                    return Err(ConfigError::new(format!(
                        "time window span {span:?} is not a whole number of buckets of {bucket:?}"
                    )));
                }
                if span > YEAR {
                    return Err(ConfigError::new("time window span is longer than a year"));
                }
                let buckets = span.as_nanos() / bucket.as_nanos();
                if buckets > 3600 {
                    return Err(ConfigError::new(format!(
                        "time window of {buckets} buckets is too many (at most 3600)"
                    )));
                }
            }
        }
        for (name, p) in [
            ("failure rate", c.failure_rate),
            ("slow-call rate", c.slow.map(|s| s.1)),
        ] {
            if let Some(p) = p {
                if p == 0 || p > 100 {
                    return Err(ConfigError::new(format!("{name} must be 1–100 %, not {p}")));
                }
            }
        }
        if c.slow.is_some_and(|(t, _)| t.is_zero()) {
            return Err(ConfigError::new(
                "slow-call threshold must be longer than zero",
            ));
        }
        if c.consecutive_failures == Some(0) {
            return Err(ConfigError::new("consecutive failures must be at least 1"));
        }
        if c.consecutive_failures
            .is_some_and(|n| u64::from(n) > crate::state::RUN_MAX)
        {
            return Err(ConfigError::new(format!(
                "consecutive failures must be at most {} (the count the breaker keeps)",
                crate::state::RUN_MAX
            )));
        }
        if c.failure_rate.is_none() && c.slow.is_none() && c.consecutive_failures.is_none() {
            return Err(ConfigError::new(
                "no trip rule: set a failure rate, a slow-call rate or consecutive failures",
            ));
        }
        if c.probes == 0 {
            return Err(ConfigError::new("half-open needs at least 1 probe"));
        }
        if c.close_after == 0 {
            return Err(ConfigError::new(
                "close_after must be at least 1 successful probe",
            ));
        }
        if c.max_half_open_wait.is_zero() {
            return Err(ConfigError::new(
                "max_half_open_wait must be longer than zero",
            ));
        }
        if c.max_half_open_wait > YEAR {
            return Err(ConfigError::new("max_half_open_wait is longer than a year"));
        }
        if c.max_probe_queue_wait > YEAR {
            return Err(ConfigError::new(
                "max_probe_queue_wait is longer than a year",
            ));
        }
        if c.open_base.is_zero() {
            return Err(ConfigError::new("open duration must be longer than zero"));
        }
        if c.open_multiplier == 0 {
            return Err(ConfigError::new(
                "open duration multiplier must be at least 1",
            ));
        }
        if c.open_cap < c.open_base {
            return Err(ConfigError::new(format!(
                "open duration cap {:?} is shorter than the base {:?}",
                c.open_cap, c.open_base
            )));
        }
        if c.open_cap > YEAR {
            return Err(ConfigError::new("open duration cap is longer than a year"));
        }
        if c.jitter_percent > 50 {
            return Err(ConfigError::new(format!(
                "jitter must be 0–50 %, not {} (more could make an opening almost nothing)",
                c.jitter_percent
            )));
        }
        if let WindowKind::Count(n) = c.window {
            let rate_rule = c.failure_rate.is_some() || c.slow.is_some();
            if rate_rule && c.minimum_calls > n {
                return Err(ConfigError::new(format!(
                    "minimum_calls {} is more than the count window holds ({n}): the rate rules could never apply",
                    c.minimum_calls
                )));
            }
        }
        Ok(c)
    }
}
