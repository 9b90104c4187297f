//! [`Config`] and its builder.

use std::fmt;
use std::time::Duration;

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
const MIN_SWEEP: Duration = Duration::from_millis(10);

/// How a pool bounds, waits, connects and expires; built with [`Config::builder`].
///
/// Defaults:
/// - at most 10 connections per key and 100 in total (connecting, idle and in use all count);
/// - at most 10 idle connections per key (every connection may idle);
/// - at most 1,024 checkouts waiting; a checkout waits at most 30 s for a connection or a slot;
/// - a connect may take 10 s;
/// - an idle connection is closed after 30 s — below the keep-alive of common servers (nginx
///   75 s, AWS ALB 60 s), so the pool closes first and does not hand out a connection the
///   server is about to drop (hyper#2136); Node's 5 s default needs a shorter one;
/// - no maximum lifetime;
/// - no connect backoff;
/// - the idle sweep runs every `min(idle_timeout, max_lifetime) / 2`, between 100 ms and 30 s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub(crate) max_per_key: usize,
    pub(crate) max_total: usize,
    pub(crate) max_idle_per_key: usize,
    pub(crate) max_waiters: usize,
    pub(crate) checkout_timeout: Option<Duration>,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) lifetime_jitter: Duration,
    pub(crate) backoff: Option<Backoff>,
    pub(crate) sweep_interval: Option<Duration>,
}

/// Backoff after repeated connect failures for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) after: u32,
    pub(crate) base: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// How long to hold back after `failures` failures in a row (`failures >= after`).
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        let doublings = (failures - self.after).min(31);
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_per_key: 10,
            max_total: 100,
            max_idle_per_key: 10,
            max_waiters: 1024,
            checkout_timeout: Some(Duration::from_secs(30)),
            connect_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(30)),
            max_lifetime: None,
            lifetime_jitter: Duration::ZERO,
            backoff: None,
            sweep_interval: None,
        }
    }
}

impl Config {
    /// A builder starting from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Config::default(),
            max_idle_set: false,
            jitter_set: false,
            per_key_set: false,
        }
    }

    /// Maximum connections per key.
    pub fn max_connections_per_key(&self) -> usize {
        self.max_per_key
    }

    /// Maximum connections in total.
    pub fn max_connections(&self) -> usize {
        self.max_total
    }

    /// The idle timeout, if any.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// The maximum lifetime, if any.
    pub fn max_lifetime(&self) -> Option<Duration> {
        self.max_lifetime
    }

    /// How often the idle sweep runs (`None` when nothing expires, so nothing is swept: the
    /// pool then needs no timer at all, and forgets keys with nothing left as new keys come).
    pub fn sweep_interval(&self) -> Option<Duration> {
        if let Some(every) = self.sweep_interval {
            return Some(every);
        }
        let shortest = match (self.idle_timeout, self.max_lifetime) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return None,
        };
        Some((shortest / 2).clamp(Duration::from_millis(100), Duration::from_secs(30)))
    }
}

/// Builds a [`Config`]; [`build`](ConfigBuilder::build) checks it.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
    max_idle_set: bool,
    jitter_set: bool,
    per_key_set: bool,
}

impl ConfigBuilder {
    /// Maximum connections per key, counting those connecting, idle and in use (default 10,
    /// or the total if that is lower). A connection
    /// holds its place for its whole life, until it is closed or evicted.
    pub fn max_connections_per_key(mut self, n: usize) -> Self {
        self.config.max_per_key = n;
        self.per_key_set = true;
        self
    }

    /// Maximum connections in total, over all keys.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_total = n;
        self
    }

    /// Maximum idle connections per key (default: the per-key maximum); a connection returned
    /// beyond it is closed.
    pub fn max_idle_per_key(mut self, n: usize) -> Self {
        self.config.max_idle_per_key = n;
        self.max_idle_set = true;
        self
    }

    /// Maximum checkouts waiting at once, over all keys; the next one fails at once with
    /// [`PoolFull`](crate::PoolFull). `0` means a checkout never waits.
    pub fn max_waiters(mut self, n: usize) -> Self {
        self.config.max_waiters = n;
        self
    }

    /// How long a checkout waits in the queue for a connection or a free slot before it fails
    /// with [`PoolTimeout`](crate::PoolTimeout). Dialling is bounded separately by
    /// [`connect_timeout`](Self::connect_timeout).
    pub fn checkout_timeout(mut self, timeout: Duration) -> Self {
        self.config.checkout_timeout = Some(timeout);
        self
    }

    /// Wait in the queue without a time limit.
    pub fn no_checkout_timeout(mut self) -> Self {
        self.config.checkout_timeout = None;
        self
    }

    /// How long one connect may take before it fails with
    /// [`ConnectTimeout`](crate::ConnectTimeout).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = Some(timeout);
        self
    }

    /// Connect without a time limit (the connector's own, if any, still applies).
    pub fn no_connect_timeout(mut self) -> Self {
        self.config.connect_timeout = None;
        self
    }

    /// Close a connection that has been idle this long.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = Some(timeout);
        self
    }

    /// Keep idle connections without a time limit.
    pub fn no_idle_timeout(mut self) -> Self {
        self.config.idle_timeout = None;
        self
    }

    /// Close a connection this long after it was opened: on checkout, on return and by the
    /// sweep. Each connection's lifetime is shortened by a random part of the jitter (default:
    /// a tenth of the lifetime), so connections opened together do not all expire together.
    pub fn max_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.max_lifetime = Some(lifetime);
        self
    }

    /// The most by which a connection's lifetime is shortened at random.
    pub fn lifetime_jitter(mut self, jitter: Duration) -> Self {
        self.config.lifetime_jitter = jitter;
        self.jitter_set = true;
        self
    }

    /// After `after` connect failures in a row for a key, refuse new connects to it with
    /// [`ConnectBackoff`](crate::ConnectBackoff) for `base`, doubling with each further failure
    /// up to `max`. A new connection that becomes ready resets it; one that fails or times out
    /// before its first readiness counts as a failure.
    pub fn connect_backoff(mut self, after: u32, base: Duration, max: Duration) -> Self {
        self.config.backoff = Some(Backoff { after, base, max });
        self
    }

    /// How often the idle sweep closes expired idle connections (default: half the shorter of
    /// the idle timeout and the lifetime, between 100 ms and 30 s). At least 10 ms.
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.config.sweep_interval = Some(every);
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<Config, ConfigError> {
        let mut c = self.config;
        if !self.per_key_set {
            // The default per-key limit never exceeds a total set below it.
            c.max_per_key = c.max_per_key.min(c.max_total.max(1));
        }
        if !self.max_idle_set {
            c.max_idle_per_key = c.max_per_key;
        }
        if c.max_per_key == 0 {
            return Err(ConfigError::new(
                "max_connections_per_key must be at least 1",
            ));
        }
        if c.max_total == 0 {
            return Err(ConfigError::new("max_connections must be at least 1"));
        }
        if c.max_per_key > c.max_total {
            return Err(ConfigError::new(format!(
                "max_connections_per_key ({}) exceeds max_connections ({})",
                c.max_per_key, c.max_total
            )));
        }
        if c.max_idle_per_key > c.max_per_key {
            return Err(ConfigError::new(format!(
                "max_idle_per_key ({}) exceeds max_connections_per_key ({})",
                c.max_idle_per_key, c.max_per_key
            )));
        }
        for (name, value) in [
            ("checkout_timeout", c.checkout_timeout),
            ("connect_timeout", c.connect_timeout),
            ("idle_timeout", c.idle_timeout),
            ("max_lifetime", c.max_lifetime),
        ] {
            if let Some(d) = value {
                check_duration(name, d)?;
            }
        }
        if let Some(lifetime) = c.max_lifetime {
            if !self.jitter_set {
                c.lifetime_jitter = lifetime / 10;
            } else if c.lifetime_jitter >= lifetime {
                return Err(ConfigError::new(format!(
                    "lifetime_jitter ({:?}) must be shorter than max_lifetime ({lifetime:?})",
                    c.lifetime_jitter
                )));
            }
        } else if self.jitter_set {
            return Err(ConfigError::new("lifetime_jitter needs a max_lifetime"));
        }
        if let Some(b) = c.backoff {
            if b.after == 0 {
                return Err(ConfigError::new(
                    "connect_backoff: `after` must be at least 1 failure",
                ));
            }
            check_duration("connect_backoff base", b.base)?;
            check_duration("connect_backoff max", b.max)?;
            if b.max < b.base {
                return Err(ConfigError::new(format!(
                    "connect_backoff: max ({:?}) is shorter than base ({:?})",
                    b.max, b.base
                )));
            }
        }
        if let Some(every) = c.sweep_interval {
            if every < MIN_SWEEP {
                return Err(ConfigError::new(format!(
                    "sweep_interval ({every:?}) is below the minimum of {MIN_SWEEP:?}: \
                     a sweep that often would spin"
                )));
            }
            check_duration("sweep_interval", every)?;
        }
        Ok(c)
    }
}

fn check_duration(name: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::new(format!("{name} must be longer than zero")));
    }
    if d > YEAR {
        return Err(ConfigError::new(format!(
            "{name} ({d:?}) is longer than a year"
        )));
    }
    Ok(())
}

/// Why a [`Config`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
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
        write!(f, "invalid pool config: {}", self.message)
    }
}

impl std::error::Error for ConfigError {}
