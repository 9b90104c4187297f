//! [`ClientBuilder`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Uri};
use palisade_breaker::Transition;
use palisade_ratelimit::Quota;

use crate::client::{Client, Settings};
use crate::error::Error;
use crate::origin::Origin;
use crate::retry::Retries;

/// The longest `max_retry_after` accepted: a hold beyond it is no longer a pause.
const MAX_RETRY_AFTER_CAP: Duration = Duration::from_secs(365 * 86_400);

/// A rate: a [`Quota`], or text such as `"100/min"` parsed when the client is built.
#[derive(Debug, Clone)]
pub enum Rate {
    /// A quota.
    Quota(Quota),
    /// Text to parse with `Quota::from_str`.
    Text(String),
}

impl From<Quota> for Rate {
    fn from(q: Quota) -> Rate {
        Rate::Quota(q)
    }
}

impl From<&str> for Rate {
    fn from(s: &str) -> Rate {
        Rate::Text(s.to_owned())
    }
}

impl From<String> for Rate {
    fn from(s: String) -> Rate {
        Rate::Text(s)
    }
}

/// Called on every breaker transition, with the origin whose breaker moved.
pub type TransitionListener = Arc<dyn Fn(&Origin, &Transition) + Send + Sync>;

/// Configures a [`Client`]; from [`Client::builder`]. Nothing is checked until
/// [`build`](Self::build), which reports the first problem as a readable error.
#[must_use]
pub struct ClientBuilder {
    pub(crate) base_url: String,
    pub(crate) rate: Option<Rate>,
    pub(crate) burst: Option<u32>,
    pub(crate) max_rate_wait: Option<Duration>,
    pub(crate) retries: Option<Retries>,
    pub(crate) max_per_host: usize,
    pub(crate) max_total: usize,
    pub(crate) max_waiters: usize,
    pub(crate) breaker: Option<palisade_breaker::Config>,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) pool_idle_timeout: Duration,
    pub(crate) retry_after_cap: Duration,
    pub(crate) max_origins: usize,
    pub(crate) user_agent: String,
    pub(crate) on_transition: Option<TransitionListener>,
    #[cfg(feature = "tls")]
    pub(crate) tls: TlsSettings,
}

#[cfg(feature = "tls")]
#[derive(Default)]
pub(crate) struct TlsSettings {
    pub(crate) system_roots: bool,
    pub(crate) extra_roots: Vec<Vec<u8>>,
    pub(crate) config: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base_url", &self.base_url)
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .field("max_per_host", &self.max_per_host)
            .field("max_total", &self.max_total)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    pub(crate) fn new(base_url: &str) -> Self {
        ClientBuilder {
            base_url: base_url.to_owned(),
            rate: None,
            burst: None,
            max_rate_wait: None,
            retries: None,
            max_per_host: 10,
            max_total: 100,
            max_waiters: 100_000,
            breaker: None,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(30),
            retry_after_cap: Duration::from_secs(300),
            max_origins: 1000,
            user_agent: concat!("palisade/", env!("CARGO_PKG_VERSION")).to_owned(),
            on_transition: None,
            #[cfg(feature = "tls")]
            tls: TlsSettings {
                system_roots: true,
                ..TlsSettings::default()
            },
        }
    }

    /// The rate per origin: a [`Quota`] or text such as `"100/min"`, `"10/s"`, `"3/250ms"`.
    /// Requests wait for their turn (first come, first served). Default: no limit.
    pub fn rate(mut self, rate: impl Into<Rate>) -> Self {
        self.rate = Some(rate.into());
        self
    }

    /// How many requests may go at once after a quiet spell (default 1; with a `Quota`, its own
    /// burst unless this is set).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Fail a request at once with a rate-limit error when its turn is further away than this,
    /// instead of waiting (default: wait as long as it takes). An upstream's hold
    /// (`Retry-After`, or an exhausted `RateLimit` policy) ending further away is refused the
    /// same way.
    pub fn max_rate_wait(mut self, wait: Duration) -> Self {
        self.max_rate_wait = Some(wait);
        self
    }

    /// Retry what is safe to retry, as far as a budget allows (default: no retries). See
    /// [`Retries`] for what is retried; refusals by the breaker, the rate limiter or the
    /// shutdown never are.
    pub fn retries(mut self, retries: Retries) -> Self {
        self.retries = Some(retries);
        self
    }

    /// Maximum connections per origin (default 10), held for each connection's whole life.
    pub fn max_connections_per_host(mut self, n: usize) -> Self {
        self.max_per_host = n;
        self
    }

    /// Maximum connections over all origins (default 100).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_total = n;
        self
    }

    /// Maximum requests waiting for a connection (default 100,000); beyond, a request fails at
    /// once.
    pub fn max_waiting_for_connection(mut self, n: usize) -> Self {
        self.max_waiters = n;
        self
    }

    /// The circuit breaker of each origin (default: `palisade_breaker::Config::default()`).
    /// Failures are 5xx responses, timeouts and connection errors; 4xx and 429 are not.
    pub fn breaker(mut self, config: palisade_breaker::Config) -> Self {
        self.breaker = Some(config);
        self
    }

    /// Called on every breaker transition of every origin (keep it short: it runs on the
    /// thread that made the transition).
    pub fn on_breaker_transition(
        mut self,
        listener: impl Fn(&Origin, &Transition) + Send + Sync + 'static,
    ) -> Self {
        self.on_transition = Some(Arc::new(listener));
        self
    }

    /// The time from sending a request (after its rate-limit turn, any `Retry-After` hold and
    /// its connection) to the end of its response body (default 30 s). Before the head, the
    /// request fails with [`Error::is_timeout`] and counts as a failure for the breaker; after
    /// it, the connection is closed and the body read fails ([`Error::is_body`]), so a
    /// response kept unread past the timeout loses its body. Either way the connection it
    /// happened on is closed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The time one connect (TCP and TLS) may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long an idle connection is kept (default 30 s, below common servers' keep-alive).
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// The longest `Retry-After` honoured from one response (default 5 min, at most a year).
    pub fn max_retry_after(mut self, cap: Duration) -> Self {
        self.retry_after_cap = cap;
        self
    }

    /// How many origins besides the base URL's the client keeps state for before it forgets the
    /// quiet ones (default 1,000).
    ///
    /// Each origin a request goes to gets its own breaker, rate limiter, hold and connections.
    /// When a new origin would make more than `max` of them, the client forgets every origin
    /// that is quiet: nothing in flight, no connection open, its breaker closed with no
    /// failure counting towards a trip, no hold ahead, its full burst available, the
    /// configured quota (not one set through its `Host`), no retry drawn from its budget within
    /// the budget's window (and a tenth more), and no [`Host`](crate::Host) handle to it held. Forgetting one loses nothing that would count
    /// against a request (its successes in the breaker's window, at most). Origins that are not quiet are kept even
    /// beyond `max`: the bound is on remembered idle state, never a refusal.
    pub fn max_origins(mut self, max: usize) -> Self {
        self.max_origins = max;
        self
    }

    /// The `User-Agent` header (default `palisade/<version>`).
    pub fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.user_agent = agent.into();
        self
    }

    /// Trust this DER-encoded certificate authority as well as the system's.
    #[cfg(feature = "tls")]
    pub fn add_root_certificate(mut self, der: impl Into<Vec<u8>>) -> Self {
        self.tls.extra_roots.push(der.into());
        self
    }

    /// Do not load the system's trust store (only certificates added by
    /// [`add_root_certificate`](Self::add_root_certificate) are trusted).
    #[cfg(feature = "tls")]
    pub fn no_system_roots(mut self) -> Self {
        self.tls.system_roots = false;
        self
    }

    /// Use this rustls configuration as it is (its ALPN is set to `http/1.1`).
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: tokio_rustls::rustls::ClientConfig) -> Self {
        self.tls.config = Some(Arc::new(config));
        self
    }

    /// Checks everything and builds the client. Must be called inside a tokio runtime only
    /// when requests are sent; building needs none.
    ///
    /// # Errors
    ///
    /// A builder error ([`Error::is_builder`]) naming the setting: a base URL that is not an
    /// absolute `http`/`https` URL, a rate that does not parse or is zero, a zero limit or
    /// timeout, a user agent that is not a valid header value, an unreadable certificate.
    pub fn build(self) -> Result<Client, Error> {
        let base: Uri = self.base_url.parse().map_err(|e| {
            Error::builder_source(format!("base URL {:?} does not parse", self.base_url), e)
        })?;
        let origin = Origin::of(&base).ok_or_else(|| {
            Error::builder(format!(
                "base URL {:?} must be absolute, with an http or https scheme and a host",
                self.base_url
            ))
        })?;
        let quota = match &self.rate {
            None => Quota::per_second(1_000_000_000)
                .and_then(|q| q.burst(1_000_000))
                .map_err(|e| Error::builder_source("the unlimited default rate", e))?,
            Some(Rate::Quota(q)) => *q,
            Some(Rate::Text(t)) => t
                .parse::<Quota>()
                .map_err(|e| Error::builder_source(format!("rate {t:?}"), e))?,
        };
        let quota = match self.burst {
            Some(b) => quota
                .burst(b)
                .map_err(|e| Error::builder_source(format!("burst {b}"), e))?,
            None => quota,
        };
        if self.timeout.is_zero() {
            return Err(Error::builder("timeout must be longer than zero"));
        }
        // Checked here, under this builder's names (the pool's own errors name its settings).
        if self.max_per_host == 0 {
            return Err(Error::builder(
                "max_connections_per_host must be at least 1",
            ));
        }
        if self.max_total == 0 {
            return Err(Error::builder("max_connections must be at least 1"));
        }
        if self.max_per_host > self.max_total {
            return Err(Error::builder(format!(
                "max_connections_per_host ({}) exceeds max_connections ({})",
                self.max_per_host, self.max_total
            )));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::builder("connect_timeout must be longer than zero"));
        }
        if self.pool_idle_timeout.is_zero() {
            return Err(Error::builder("pool_idle_timeout must be longer than zero"));
        }
        if self.retry_after_cap > MAX_RETRY_AFTER_CAP {
            return Err(Error::builder(format!(
                "max_retry_after ({:?}) is longer than a year",
                self.retry_after_cap
            )));
        }
        #[cfg(not(feature = "tls"))]
        if origin.is_https() {
            return Err(Error::builder(format!(
                "base URL {:?} is https, which needs palisade-client's `tls` feature",
                self.base_url
            )));
        }
        let pool = palisade_pool::Config::builder()
            .max_connections_per_key(self.max_per_host)
            .max_connections(self.max_total)
            .max_waiters(self.max_waiters)
            .no_checkout_timeout()
            .connect_timeout(self.connect_timeout)
            .idle_timeout(self.pool_idle_timeout)
            .build()
            .map_err(|e| Error::builder_source("connection limits", e))?;
        let user_agent = HeaderValue::from_str(&self.user_agent)
            .map_err(|e| Error::builder_source(format!("user agent {:?}", self.user_agent), e))?;
        #[cfg(feature = "tls")]
        let tls = Some(crate::tls::config(self.tls)?);
        if let Some(r) = &self.retries {
            r.check()?;
        }
        Ok(Client::from_settings(Settings {
            base,
            origin,
            quota,
            max_rate_wait: self.max_rate_wait,
            retries: self.retries,
            pool,
            breaker: self.breaker.unwrap_or_default(),
            on_transition: self.on_transition,
            timeout: self.timeout,
            retry_after_cap: self.retry_after_cap,
            max_origins: self.max_origins,
            user_agent,
            #[cfg(feature = "tls")]
            tls,
        }))
    }
}
