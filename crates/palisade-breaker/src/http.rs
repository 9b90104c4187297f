//! HTTP: a classifier for `http::Response` and a per-authority key.

use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{Request, Response, StatusCode};

use crate::classify::{Classify, Outcome};
use crate::keyed::Keyer;

/// Classifies HTTP results: `Err` (connect errors, timeouts, resets) and 5xx are failures,
/// everything else — 4xx included — is a success, since a client's bad request says nothing about
/// the upstream's health. `429` is a success unless [`count_429`](Self::count_429).
///
/// A failing response's `Retry-After` keeps the breaker open at least that long: delay-seconds,
/// or an HTTP-date, turned into a delay with the system clock (so paused tokio time does not
/// move it).
///
/// ```
/// use palisade_breaker::classify::{Classify, Outcome};
/// use palisade_breaker::http::HttpClassifier;
/// use http::{Response, StatusCode};
///
/// let c = HttpClassifier::server_errors();
/// let res = |s: u16| Ok::<_, ()>(Response::builder().status(s).body(()).unwrap());
/// assert_eq!(c.classify(&res(503)), Outcome::FAILURE);
/// assert_eq!(c.classify(&res(404)), Outcome::Success);
/// assert_eq!(HttpClassifier::statuses(&[502, 503, 504]).classify(&res(500)), Outcome::Success);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct HttpClassifier {
    /// Bit `s − 500` set when status `s` is a failure.
    failing_5xx: u128,
    count_429: bool,
}

impl HttpClassifier {
    /// Every 5xx is a failure.
    pub fn server_errors() -> Self {
        HttpClassifier {
            failing_5xx: (1u128 << 100) - 1,
            count_429: false,
        }
    }

    /// Only these statuses (500–599; others are ignored) are failures, e.g. the gateway errors
    /// `[502, 503, 504]`.
    pub fn statuses(failing: &[u16]) -> Self {
        let failing_5xx = failing
            .iter()
            .filter(|s| (500..600).contains(*s))
            .fold(0u128, |bits, s| bits | 1 << (s - 500));
        HttpClassifier {
            failing_5xx,
            count_429: false,
        }
    }

    /// Also count `429 Too Many Requests` as a failure (off by default: the upstream is up, and
    /// a rate limiter is the better answer to it).
    pub fn count_429(mut self, on: bool) -> Self {
        self.count_429 = on;
        self
    }

    fn is_failure(&self, status: StatusCode) -> bool {
        let s = status.as_u16();
        (500..600).contains(&s) && self.failing_5xx & (1 << (s - 500)) != 0
            || (self.count_429 && status == StatusCode::TOO_MANY_REQUESTS)
    }
}

impl Default for HttpClassifier {
    fn default() -> Self {
        HttpClassifier::server_errors()
    }
}

/// The delay of a `Retry-After` header: delay-seconds, or an HTTP-date (zero once it has
/// passed). `None` when absent or unreadable.
pub fn retry_after<B>(res: &Response<B>) -> Option<Duration> {
    parse_retry_after(res.headers().get(RETRY_AFTER)?.to_str().ok()?)
}

/// The delay of a `Retry-After` value: delay-seconds, or an HTTP-date (zero once it has
/// passed). `None` when unreadable.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    // delay-seconds = 1*DIGIT; a value too large for u64 is "very long" (held to the cap).
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    // An HTTP-date is wall-clock time by definition: only the system clock can turn it into a
    // delay (paused tokio time cannot move it).
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now();
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

impl<B, E> Classify<Response<B>, E> for HttpClassifier {
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Err(_) => Outcome::FAILURE,
            Ok(res) if self.is_failure(res.status()) => Outcome::Failure {
                retry_after: retry_after(res),
            },
            Ok(_) => Outcome::Success,
        }
    }
}

/// An upstream origin: scheme, host (lower-cased) and port (the scheme's default when the URI
/// has none), so `http://A.example`, `http://a.example:80` and `http://a.example/x` are one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    scheme: Option<http::uri::Scheme>,
    host: String,
    port: Option<u16>,
}

impl Origin {
    /// The origin of `uri`, or `None` for a relative URI.
    pub fn of(uri: &http::Uri) -> Option<Origin> {
        let authority = uri.authority()?;
        let scheme = uri.scheme().cloned();
        let default_port = match scheme.as_ref().map(|s| s.as_str()) {
            Some("http") => Some(80),
            Some("https") => Some(443),
            _ => None,
        };
        Some(Origin {
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16().or(default_port),
            scheme,
        })
    }
}

/// Keys a request by its URI's [`Origin`] (scheme, host, port): one breaker per upstream. A
/// request with a relative URI gets the key `None`, shared by all such.
#[derive(Debug, Clone, Copy, Default)]
pub struct Authority;

impl<B> Keyer<Request<B>> for Authority {
    type Key = Option<Origin>;

    fn key(&self, req: &Request<B>) -> Self::Key {
        Origin::of(req.uri())
    }
}
