//! [`Builder`], [`FailurePolicy`] and [`BuildError`].

use std::fmt;
use std::time::Duration;

use palisade_ratelimit::{Quota, QuotaError};

use crate::limiter::RedisRateLimiter;

/// The default time a decision may wait for Redis: [`Builder::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
/// The default time Redis is left alone after a failure: [`Builder::probe_interval`].
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// The default key prefix: [`Builder::prefix`].
pub const DEFAULT_PREFIX: &str = "palisade:ratelimit";
/// The default limit name: [`Builder::name`].
pub const DEFAULT_NAME: &str = "default";

/// The largest `burst × interval`, in microseconds, that the Lua script's double arithmetic
/// keeps exact next to today's clock (about 2^50.6 µs since the epoch): 2^52 µs, 142 years.
const MAX_SPAN_US: u64 = 1 << 52;

/// What a decision does when Redis cannot make it: unreachable, erroring, or slower than the
/// [timeout](Builder::timeout).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FailurePolicy {
    /// Admit the request: availability over the limit. While Redis is down the fleet is
    /// unlimited.
    FailOpen,
    /// Refuse the request with [`RateLimited`](palisade_ratelimit::RateLimited), its
    /// `retry_after` the time until Redis is tried again (the [probe
    /// interval](Builder::probe_interval) left, at least 1 ms). Wait-mode layers refuse too:
    /// they do not wait for Redis to come back.
    FailClosed,
    /// Decide with a local limiter holding `share` of the quota (`0 < share ≤ 1`): the same
    /// burst and rate multiplied by `share` (the burst rounded down, at least 1; the exact
    /// product is rounded, not its double: `100 × 0.57` is 57). With `N`
    /// processes, `share = 1/N` keeps the fleet near its quota while Redis is away. The local
    /// limiter is made once and kept: its state carries over from one outage to the next, and
    /// it knows nothing of what Redis admitted just before.
    Fallback {
        /// The part of the quota each process keeps for itself.
        share: f64,
    },
}

/// Why [`Builder::build`] refused a configuration.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BuildError {
    /// The Redis URL does not parse, or asks for something this build cannot do (TLS).
    InvalidUrl {
        /// The URL given, its password (user info, `password=` parameter) replaced by `***`.
        url: String,
        /// What redis-rs said about it (the password, should it appear, replaced by `***`).
        reason: String,
    },
    /// The name holds a `:`, the separator of the key's parts: limiter `api:global` would
    /// have the Redis key of key `global` of limiter `api`.
    InvalidName {
        /// The name given.
        name: String,
    },
    /// The timeout is zero: every decision would go to the failure policy.
    ZeroTimeout,
    /// The fallback share is not in `(0, 1]` (or is not a number).
    InvalidShare {
        /// The share given.
        share: f64,
    },
    /// The lease size is zero: a lease must hold at least one token.
    ZeroLease,
    /// The lease is larger than the burst: Redis can never grant more than the burst at once.
    LeaseExceedsBurst {
        /// The lease size given.
        lease: u32,
        /// The quota's burst.
        burst: u32,
    },
    /// The quota is finer than one request per microsecond, the resolution of Redis' clock.
    QuotaTooFine {
        /// The quota's emission interval.
        interval: Duration,
    },
    /// `burst × interval` is over 2^52 µs (142 years), past what the script keeps exact.
    QuotaTooLong,
    /// The fallback share of the quota is not a valid quota.
    FallbackQuota(QuotaError),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::InvalidUrl { url, reason } => {
                write!(f, "invalid Redis URL {url:?}: {reason}")
            }
            BuildError::InvalidName { name } => write!(
                f,
                "invalid Redis rate limit: the name {name:?} holds a ':' (the separator of the \
                 Redis key's parts; use another character such as '-' or '.')"
            ),
            BuildError::ZeroTimeout => f.write_str(
                "invalid Redis rate limit: the timeout must be longer than zero",
            ),
            BuildError::InvalidShare { share } => write!(
                f,
                "invalid Redis rate limit: the fallback share must be in (0, 1], got {share}"
            ),
            BuildError::ZeroLease => {
                f.write_str("invalid Redis rate limit: the lease size must be at least 1")
            }
            BuildError::LeaseExceedsBurst { lease, burst } => write!(
                f,
                "invalid Redis rate limit: a lease of {lease} exceeds the quota's burst of {burst} \
                 (Redis never grants more than the burst at once; raise the burst or lower the lease)"
            ),
            BuildError::QuotaTooFine { interval } => write!(
                f,
                "invalid Redis rate limit: one request every {interval:?} is finer than Redis' \
                 clock (1 µs)"
            ),
            BuildError::QuotaTooLong => f.write_str(
                "invalid Redis rate limit: burst × interval is over 2^52 µs (about 142 years)",
            ),
            BuildError::FallbackQuota(e) => write!(f, "invalid fallback share of the quota: {e}"),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BuildError::FallbackQuota(e) => Some(e),
            _ => None,
        }
    }
}

/// Configures a [`RedisRateLimiter`]; made by [`RedisRateLimiter::builder`].
///
/// Nothing is checked and nothing connects until [`build`](Builder::build); `build` checks
/// everything and still does not connect (the connection is made on the first decision).
#[derive(Debug, Clone)]
pub struct Builder {
    pub(crate) url: String,
    pub(crate) quota: Quota,
    pub(crate) prefix: String,
    pub(crate) name: String,
    pub(crate) timeout: Duration,
    pub(crate) probe_interval: Duration,
    pub(crate) policy: FailurePolicy,
    pub(crate) lease: Option<u32>,
}

impl Builder {
    pub(crate) fn new(url: String, quota: Quota) -> Builder {
        Builder {
            url,
            quota,
            prefix: DEFAULT_PREFIX.to_owned(),
            name: DEFAULT_NAME.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            probe_interval: DEFAULT_PROBE_INTERVAL,
            policy: FailurePolicy::FailClosed,
            lease: None,
        }
    }

    /// The name of the limit: every process that uses the same name (and prefix) on the same
    /// Redis shares one budget. Default `"default"`. The limit's key is `PREFIX:NAME`; keyed
    /// checks use `PREFIX:NAME:KIND=KEY` (the key escaped, see [`RedisKey`](crate::RedisKey)).
    /// The name must not hold a `:` ([`BuildError::InvalidName`]): `:` separates the key's
    /// parts, and limiter `api:global` would share its key with key `global` of limiter `api`.
    ///
    /// Every process sharing a name must be configured with the same quota: the key holds only
    /// the state, not the quota.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The prefix of every key this limiter writes. Default `"palisade:ratelimit"`. It may hold
    /// `:`; two limiters whose `PREFIX:NAME` are equal share one limit (prefix `a:b` with name
    /// `c` is prefix `a` with name `b:c` — which the name rule refuses).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The longest a decision waits for Redis (connecting included) before the failure policy
    /// decides instead. Default 100 ms. No request waits on Redis longer than this.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// After a Redis failure or timeout, how long the failure policy decides at once, without
    /// asking Redis (so that an outage does not cost every request a full timeout). Default
    /// 500 ms. The first decision after it asks Redis again — one probe: the others keep to
    /// the policy until it answers (for at most the longer of this and the timeout).
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// What to do when Redis cannot decide in time. Default [`FailurePolicy::FailClosed`].
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Lease mode: take up to `size` tokens from Redis in one round trip and spend them
    /// locally, going back to Redis only when they are used up. Cuts round trips by up to
    /// `size`, at the price of over-admission: over any interval, a fleet of `P` processes may
    /// admit up to `P × (size − 1)` more than the quota allows (see the crate docs). Applies to
    /// the limiter's own key ([`check`](RedisRateLimiter::check) and the unkeyed layer); keyed
    /// checks always ask Redis.
    pub fn lease(mut self, size: u32) -> Self {
        self.lease = Some(size);
        self
    }

    /// Checks the configuration and makes the limiter. Does not connect: the connection is
    /// made by the first decision (inside a tokio runtime) and kept by redis-rs'
    /// `ConnectionManager`, which reconnects after failures.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] saying what is wrong: a bad URL, a zero timeout, a share outside
    /// `(0, 1]`, a lease of zero or over the burst, a quota finer than 1 µs per request.
    pub fn build(self) -> Result<RedisRateLimiter, BuildError> {
        let client = redis::Client::open(self.url.as_str()).map_err(|e| {
            let (url, secrets) = redact_url(&self.url);
            let mut reason = e.to_string();
            for secret in secrets {
                reason = reason.replace(&secret, "***");
            }
            BuildError::InvalidUrl { url, reason }
        })?;
        if self.name.contains(':') {
            return Err(BuildError::InvalidName { name: self.name });
        }
        if self.timeout.is_zero() {
            return Err(BuildError::ZeroTimeout);
        }
        let interval = self.quota.interval();
        let interval_us = u64::try_from(interval.as_nanos().div_ceil(1_000)).unwrap_or(u64::MAX);
        if interval < Duration::from_micros(1) {
            return Err(BuildError::QuotaTooFine { interval });
        }
        let burst = self.quota.burst_size();
        match interval_us.checked_mul(u64::from(burst)) {
            Some(span) if span <= MAX_SPAN_US => {}
            _ => return Err(BuildError::QuotaTooLong),
        }
        let fallback = match self.policy {
            FailurePolicy::Fallback { share } => {
                if !(share > 0.0 && share <= 1.0) {
                    return Err(BuildError::InvalidShare { share });
                }
                Some(share_of(self.quota, share).map_err(BuildError::FallbackQuota)?)
            }
            FailurePolicy::FailOpen | FailurePolicy::FailClosed => None,
        };
        match self.lease {
            Some(0) => return Err(BuildError::ZeroLease),
            Some(lease) if lease > burst => {
                return Err(BuildError::LeaseExceedsBurst { lease, burst })
            }
            _ => {}
        }
        Ok(RedisRateLimiter::from_parts(crate::limiter::Parts {
            client,
            quota: self.quota,
            key: format!("{}:{}", self.prefix, self.name),
            interval_us,
            tolerance_us: interval_us * (u64::from(burst) - 1),
            timeout: self.timeout,
            probe_interval: self.probe_interval,
            policy: self.policy,
            fallback,
            lease: self.lease,
        }))
    }
}

/// `x` snapped to the nearest integer when within a relative 1e-9 of it: `100 × 0.57` is
/// `56.99999999999999` in doubles, and means 57.
fn snap(x: f64) -> f64 {
    let r = x.round();
    if (x - r).abs() <= 1e-9 * r.abs().max(1.0) {
        r
    } else {
        x
    }
}

/// `share` of `quota`: the same count over `period / share`, burst `⌊B × share⌋` (at least 1),
/// each computed in doubles and snapped to an integer it is within rounding error of first.
pub(crate) fn share_of(quota: Quota, share: f64) -> Result<Quota, QuotaError> {
    let period_ns = snap(quota.period().as_nanos() as f64 / share);
    // Above 2^62 ns Quota::new reports the overflow; the float→int cast saturates.
    let period = Duration::from_nanos(period_ns.ceil() as u64);
    let burst = (snap(f64::from(quota.burst_size()) * share).floor() as u32).max(1);
    Quota::new(quota.count(), period)?.burst(burst)
}

/// `url` with its password replaced by `***` — the user info (`user:password@`, or all of it
/// when it has no `:`) and the value of any `password=` query parameter — and the secrets
/// replaced, so that they can be taken out of redis-rs' message too.
pub(crate) fn redact_url(url: &str) -> (String, Vec<String>) {
    let mut secrets = Vec::new();
    let mut out = String::with_capacity(url.len());
    let rest = match url.find("://") {
        Some(i) => {
            out.push_str(&url[..i + 3]);
            &url[i + 3..]
        }
        None => url,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.split_once(':') {
                Some((user, password)) => {
                    out.push_str(user);
                    out.push_str(":***");
                    if !password.is_empty() {
                        secrets.push(password.to_owned());
                    }
                }
                None => {
                    // `redis://secret@host`: the lone user info is taken as the password.
                    out.push_str("***");
                    if !userinfo.is_empty() {
                        secrets.push(userinfo.to_owned());
                    }
                }
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    match tail.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            for (i, pair) in query.split('&').enumerate() {
                if i > 0 {
                    out.push('&');
                }
                match pair.split_once('=') {
                    Some((name, value)) if name.eq_ignore_ascii_case("password") => {
                        out.push_str(name);
                        out.push_str("=***");
                        if !value.is_empty() {
                            secrets.push(value.to_owned());
                        }
                    }
                    _ => out.push_str(pair),
                }
            }
            if let Some(fragment) = fragment {
                out.push('#');
                out.push_str(fragment);
            }
        }
        None => out.push_str(tail),
    }
    // Longest first, so that a secret inside another is not half replaced.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    (out, secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_scales_rate_and_burst() {
        let q = Quota::per_second(200).unwrap().burst(10).unwrap();
        let s = share_of(q, 0.25).unwrap();
        assert_eq!(s.interval(), Duration::from_millis(20));
        assert_eq!(s.burst_size(), 2);
        let s = share_of(q, 1.0).unwrap();
        assert_eq!((s.interval(), s.burst_size()), (q.interval(), 10));
        // The burst never goes below one.
        let s = share_of(Quota::per_second(1).unwrap(), 0.01).unwrap();
        assert_eq!(s.burst_size(), 1);
        assert_eq!(s.interval(), Duration::from_secs(100));
    }

    #[test]
    fn share_burst_is_not_one_short_of_an_exact_product() {
        // 100 × 0.57 is 56.99999999999999 in doubles.
        let q = Quota::per_hour(1).unwrap().burst(100).unwrap();
        assert_eq!(share_of(q, 0.57).unwrap().burst_size(), 57);
        assert_eq!(share_of(q, 0.575).unwrap().burst_size(), 57);
        for b in 1..=200u32 {
            for pct in 1..=100u32 {
                let q = Quota::per_hour(1).unwrap().burst(b).unwrap();
                let s = share_of(q, f64::from(pct) / 100.0).unwrap();
                assert_eq!(s.burst_size(), (b * pct / 100).max(1), "{b} × {pct}%");
            }
        }
    }

    #[test]
    fn urls_are_redacted() {
        let r = |u: &str| redact_url(u).0;
        assert_eq!(r("redis://app:s3cr3t@h:6379/0"), "redis://app:***@h:6379/0");
        assert_eq!(r("redis://s3cr3t@h"), "redis://***@h");
        assert_eq!(
            r("redis://h/0?db=1&password=s3cr3t#x"),
            "redis://h/0?db=1&password=***#x"
        );
        assert_eq!(r("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(
            r("redis+unix:///tmp/x?pass=1&password=p"),
            "redis+unix:///tmp/x?pass=1&password=***"
        );
        assert_eq!(redact_url("redis://a:b:c@h").1, vec!["b:c".to_owned()]);
    }
}
