//! [`Origin`]: scheme and authority, the key of every per-host part of the stack.

use std::fmt;

use http::uri::{Authority, Scheme};
use http::Uri;

/// An upstream: scheme and authority (`https://api.example.com:8443`). Each origin has its
/// own circuit breaker, rate limiter and connections.
///
/// Cheap to clone (both parts share their bytes with the URI they came from), so it serves as
/// the pool's key without allocating per request.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    scheme: Scheme,
    authority: Authority,
}

impl Origin {
    /// The origin of an absolute `http` or `https` URI.
    pub fn of(uri: &Uri) -> Option<Origin> {
        let scheme = uri.scheme()?.clone();
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return None;
        }
        Some(Origin {
            scheme,
            authority: uri.authority()?.clone(),
        })
    }

    /// `true` for `https`.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// The scheme.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// The host, without port or brackets.
    pub fn host(&self) -> &str {
        let host = self.authority.host();
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }

    /// The port, or the scheme's default.
    pub fn port(&self) -> u16 {
        self.authority
            .port_u16()
            .unwrap_or(if self.is_https() { 443 } else { 80 })
    }

    /// The authority, as the `Host` header carries it.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts() {
        let o = Origin::of(&"https://Api.Example:8443/x?y".parse().unwrap()).unwrap();
        assert!(o.is_https());
        assert_eq!((o.host(), o.port()), ("Api.Example", 8443));
        assert_eq!(o.to_string(), "https://Api.Example:8443");
        let v6 = Origin::of(&"http://[::1]/".parse().unwrap()).unwrap();
        assert_eq!((v6.host(), v6.port()), ("::1", 80));
        assert!(Origin::of(&"/relative".parse().unwrap()).is_none());
        assert!(Origin::of(&"ftp://a/".parse().unwrap()).is_none());
        // Authority compares without regard to case.
        let a = Origin::of(&"http://A.example/".parse().unwrap()).unwrap();
        let b = Origin::of(&"http://a.EXAMPLE/".parse().unwrap()).unwrap();
        assert_eq!(a, b);
    }
}
