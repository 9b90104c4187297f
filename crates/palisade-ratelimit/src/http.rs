//! HTTP: key extractors over [`http::Request`], and refusals answered with
//! `429 Too Many Requests`.
//!
//! [`TooManyRequests`] turns a refusal into a response, so the rate-limited service keeps its
//! inner error type (`Infallible` under axum) and drops into `Router::layer` or `route_layer`
//! as it is — no `HandleErrorLayer`, no `Buffer`.
//!
//! # Example
//!
//! ```
//! use axum::{body::Body, routing::get, Router};
//! use http::{Request, StatusCode};
//! use palisade_ratelimit::{Quota, RateLimitLayer};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // One budget for both routes: axum calls `layer()` once per route, and they share it.
//! let app = Router::new()
//!     .route("/a", get(|| async { "a" }))
//!     .route("/b", get(|| async { "b" }))
//!     .layer(RateLimitLayer::new(Quota::per_second(1)?).too_many_requests());
//!
//! let get_ = |path: &str| Request::get(path).body(Body::empty()).unwrap();
//! assert_eq!(app.clone().oneshot(get_("/a")).await?.status(), StatusCode::OK);
//! let refused = app.clone().oneshot(get_("/b")).await?;
//! assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(refused.headers()["retry-after"], "1");
//! # Ok(()) }
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use ipnet::IpNet;

use crate::error::RateLimited;
use crate::keyed::{ExtractKey, KeyExtractor, KeyedRateLimitLayer};
use crate::layer::RateLimitLayer;
use crate::reject::Rejection;

/// The `RateLimit` response header of the IETF draft (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// The `RateLimit-Policy` response header of the IETF draft.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// Whole seconds, rounded **up** and at least 1: a client told `0` would retry at once.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait
        .as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0));
    secs.max(1)
}

// ===== Refusal as a response =====

/// Answers a refused request with `429 Too Many Requests` and `Retry-After` (whole seconds,
/// rounded up, at least 1); optionally the IETF `RateLimit` and `RateLimit-Policy` headers.
///
/// A request the key extractor found no key in gets `500 Internal Server Error`: the server is
/// set up to key on something its requests do not carry (e.g. a peer address nobody inserted).
#[derive(Debug, Clone, Copy, Default)]
pub struct TooManyRequests {
    ietf_headers: bool,
}

impl TooManyRequests {
    /// `429` with `Retry-After` only.
    pub fn new() -> Self {
        TooManyRequests::default()
    }

    /// Also send `RateLimit-Policy: "default";q=COUNT;w=SECONDS` and
    /// `RateLimit: "default";r=0;t=SECONDS`.
    pub fn ietf_headers(mut self, on: bool) -> Self {
        self.ietf_headers = on;
        self
    }

    fn response<B: Default>(&self, why: &RateLimited) -> Response<B> {
        let secs = retry_after_secs(why.retry_after());
        let mut res = Response::new(B::default());
        *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let headers = res.headers_mut();
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        if self.ietf_headers {
            let quota = why.quota();
            // The draft counts windows in whole seconds: express a sub-second period per second.
            let period = quota.period();
            let (q, w) = if period < Duration::from_secs(1) {
                let per_sec = u128::from(quota.count()) * 1_000_000_000 / period.as_nanos();
                (u64::try_from(per_sec).unwrap_or(u64::MAX), 1)
            } else {
                (quota.count(), retry_after_secs(period))
            };
            let policy = format!("\"default\";q={q};w={w}");
            let state = format!("\"default\";r=0;t={secs}");
            if let (Ok(p), Ok(s)) = (HeaderValue::try_from(policy), HeaderValue::try_from(state)) {
                headers.insert(RATELIMIT_POLICY.clone(), p);
                headers.insert(RATELIMIT.clone(), s);
            }
        }
        res
    }
}

impl<B: Default, E> Rejection<Response<B>, E> for TooManyRequests {
    type Error = E;

    fn rate_limited(&self, why: RateLimited) -> Result<Response<B>, E> {
        Ok(self.response(&why))
    }

    fn key_unavailable(&self) -> Result<Response<B>, E> {
        let mut res = Response::new(B::default());
        *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        Ok(res)
    }
}

impl<R> RateLimitLayer<R> {
    /// Reject mode, answering refusals with `429 Too Many Requests` ([`TooManyRequests`]).
    pub fn too_many_requests(self) -> RateLimitLayer<TooManyRequests> {
        self.reject().with_rejection(TooManyRequests::new())
    }
}

impl<X: KeyExtractor, R> KeyedRateLimitLayer<X, R> {
    /// Answer refusals with `429 Too Many Requests` ([`TooManyRequests`]).
    pub fn too_many_requests(self) -> KeyedRateLimitLayer<X, TooManyRequests> {
        self.with_rejection(TooManyRequests::new())
    }
}

// ===== Key extractors =====

/// The address of the peer a request came from, as a request extension.
///
/// Insert it in your accept loop (`req.extensions_mut().insert(PeerAddr(addr))`), or let axum's
/// `ConnectInfo<SocketAddr>` serve (feature `axum`): [`PeerIp`] reads either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// The peer's IP, with IPv4-mapped IPv6 (`::ffff:10.0.0.1`, as a dual-stack socket reports an
/// IPv4 peer) turned back into IPv4, so that one client has one key and IPv4 networks match it.
fn peer_ip<B>(req: &Request<B>) -> Option<IpAddr> {
    if let Some(PeerAddr(addr)) = req.extensions().get::<PeerAddr>() {
        return Some(addr.ip().to_canonical());
    }
    #[cfg(feature = "axum")]
    if let Some(info) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(info.0.ip().to_canonical());
    }
    None
}

/// Keys requests by the IP address of the connected peer ([`PeerAddr`], or axum's
/// `ConnectInfo<SocketAddr>` with feature `axum`). A request without either is refused with
/// [`KeyUnavailable`](crate::KeyUnavailable).
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerIp;

impl KeyExtractor for PeerIp {
    type Key = IpAddr;
}

impl<B> ExtractKey<Request<B>> for PeerIp {
    fn extract(&self, req: &Request<B>) -> Option<IpAddr> {
        peer_ip(req)
    }
}

/// Keys requests by the client address in `X-Forwarded-For`, trusting it only as far as the
/// configured proxies.
///
/// If the peer is not a trusted proxy, the header is ignored and the peer is the client. Else
/// the header is read from the right, skipping trusted proxies; the first address that is not
/// one is the client (the right-most untrusted hop). Hops a client wrote itself sit to the left
/// of that and are never used. If every hop is trusted, the left-most is the client; if a hop is
/// not an address, the trusted hop to its right is used.
#[derive(Clone)]
pub struct ForwardedFor {
    trusted: Arc<[IpNet]>,
}

impl ForwardedFor {
    /// Trust the proxies in `trusted` (networks such as `10.0.0.0/8` or single addresses as
    /// `192.0.2.7/32`).
    pub fn new(trusted: impl IntoIterator<Item = IpNet>) -> Self {
        ForwardedFor {
            trusted: trusted.into_iter().collect(),
        }
    }

    /// Parses the trusted networks, e.g. `["10.0.0.0/8", "127.0.0.1"]` (a bare address is
    /// one host).
    ///
    /// # Errors
    ///
    /// A message naming the entry that is neither an address nor a network.
    pub fn parse<'a>(trusted: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let nets = trusted
            .into_iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("invalid trusted proxy {s:?}: expected an IP address or a network such as 10.0.0.0/8"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ForwardedFor::new(nets))
    }

    fn is_trusted(&self, ip: &IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(ip))
    }
}

impl fmt::Debug for ForwardedFor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardedFor")
            .field("trusted", &self.trusted)
            .finish()
    }
}

impl KeyExtractor for ForwardedFor {
    type Key = IpAddr;
}

impl<B> ExtractKey<Request<B>> for ForwardedFor {
    fn extract(&self, req: &Request<B>) -> Option<IpAddr> {
        let mut client = peer_ip(req)?;
        if !self.is_trusted(&client) {
            return Some(client);
        }
        // Several X-Forwarded-For fields form one list, in order.
        for value in req.headers().get_all("x-forwarded-for").iter().rev() {
            let Ok(text) = value.to_str() else {
                return Some(client);
            };
            for hop in text.rsplit(',') {
                match hop.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()) {
                    Ok(ip) if self.is_trusted(&ip) => client = ip,
                    Ok(ip) => return Some(ip),
                    Err(_) => return Some(client),
                }
            }
        }
        Some(client)
    }
}

/// Keys requests by the value of a header, e.g. an API key. A request without the header is
/// refused with [`KeyUnavailable`](crate::KeyUnavailable).
#[derive(Debug, Clone)]
pub struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    /// Key by header `name`.
    pub fn new(name: HeaderName) -> Self {
        HeaderKey { name }
    }
}

impl KeyExtractor for HeaderKey {
    type Key = HeaderValue;
}

impl<B> ExtractKey<Request<B>> for HeaderKey {
    fn extract(&self, req: &Request<B>) -> Option<HeaderValue> {
        req.headers().get(&self.name).cloned()
    }
}
