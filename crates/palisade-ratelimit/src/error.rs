//! Error types.

use std::fmt;
use std::time::Duration;

use crate::quota::Quota;

/// The request was not admitted: it does not conform to the quota now.
///
/// Returned at once in *reject* mode, and in *wait* mode when the wait would exceed
/// `max_wait`. [`retry_after`](RateLimited::retry_after) is when a request would next conform
/// if nothing else were admitted first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    retry_after: Duration,
    quota: Quota,
}

impl RateLimited {
    /// A refusal by `quota`, conforming again after `retry_after`: for limiters kept elsewhere
    /// (palisade-ratelimit-redis) that answer with the same error as this crate's.
    pub const fn new(retry_after: Duration, quota: Quota) -> RateLimited {
        RateLimited { retry_after, quota }
    }

    /// How long until a request would conform.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The quota that refused the request.
    pub fn quota(&self) -> Quota {
        self.quota
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate limited: retry after {:?}", self.retry_after)
    }
}

impl std::error::Error for RateLimited {}

/// Why [`RateLimiter::check_n`](crate::RateLimiter::check_n) refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckNError {
    /// Not now; the cells would conform after [`RateLimited::retry_after`].
    RateLimited(RateLimited),
    /// More cells than the burst: they can never pass at once.
    InsufficientCapacity {
        /// The burst of the quota.
        burst: u32,
    },
}

impl fmt::Display for CheckNError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckNError::RateLimited(e) => e.fmt(f),
            CheckNError::InsufficientCapacity { burst } => {
                write!(
                    f,
                    "more cells asked for than the burst of {burst} allows at once"
                )
            }
        }
    }
}

impl std::error::Error for CheckNError {}

/// The key function could not find a key in the request (e.g. no peer address on it), so the
/// keyed limiter refused it rather than let it bypass the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyUnavailable {
    _p: (),
}

impl KeyUnavailable {
    pub(crate) const fn new() -> KeyUnavailable {
        KeyUnavailable { _p: () }
    }
}

impl fmt::Display for KeyUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rate limit key unavailable for this request")
    }
}

impl std::error::Error for KeyUnavailable {}
