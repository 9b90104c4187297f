//! [`Origin`]: scheme and authority, the key of every per-host part of the stack.

use std::fmt;
use std::hash::{Hash, Hasher};

use http::uri::{Authority, Scheme};
use http::Uri;

/// An upstream: scheme and authority (`https://api.example.com:8443`). Each origin has its
/// own circuit breaker, rate limiter and connections.
///
/// Cheap to clone (both parts share their bytes with the URI they came from), so it serves as
/// the pool's key without allocating per request.
///
/// The authority is kept in one spelling: the host in lower case, without credentials, and
/// without the scheme's default port. So `http://api.example` and `http://user@API.example:80`
/// are one upstream, with one breaker, one rate limit and one set of connections, and two
/// origins compare (and hash) as plain bytes. Only a URI spelled otherwise costs an
/// allocation, once, to respell it.
#[derive(Clone)]
pub struct Origin {
    scheme: Scheme,
    authority: Authority,
}

impl Origin {
    /// The origin of an absolute `http` or `https` URI.
    pub fn of(uri: &Uri) -> Option<Origin> {
        let scheme = uri.scheme()?;
        let default_port = default_port(scheme)?;
        let authority = uri.authority()?;
        if is_plain(authority.as_str(), default_port) {
            // The common case, checked in one pass: already the one spelling.
            return Some(Origin {
                scheme: scheme.clone(),
                authority: authority.clone(),
            });
        }
        Origin::respelled(scheme, authority, default_port)
    }

    /// Any authority: credentials dropped, the host in lower case, the default port left out,
    /// the port in plain decimal; `None` for an empty host or a port that is not a `u16`.
    fn respelled(scheme: &Scheme, authority: &Authority, default_port: u16) -> Option<Origin> {
        let text = authority.as_str();
        let rest = text.rsplit_once('@').map_or(text, |(_, rest)| rest);
        let host = authority.host();
        if host.is_empty() {
            return None;
        }
        let port = authority.port_u16();
        // The port as written: nothing, or `:` and its digits. One spelling per port: none for
        // the default (or an empty `h:`), else the plain decimal (not `08080`).
        let digits = rest.get(host.len()..).and_then(|p| p.strip_prefix(':'));
        // A port written but not a number that fits (`:99999`, `:abc`): no origin, rather
        // than the default port's.
        if port.is_none() && digits.is_some_and(|d| !d.is_empty()) {
            return None;
        }
        let port_plain = match (port, digits) {
            (None, None) => true,
            (Some(p), Some(d)) => {
                p != default_port
                    && d.bytes().all(|b| b.is_ascii_digit())
                    && (d == "0" || !d.starts_with('0'))
            }
            _ => false,
        };
        // Credentials in the URL are not part of the origin: they would end up in the `Host`
        // header of every request on its connections, and in logs.
        let plain = port_plain && !text.bytes().any(|b| b == b'@' || b.is_ascii_uppercase());
        let authority = if plain {
            authority.clone()
        } else {
            let mut respelled = host.to_ascii_lowercase();
            if let Some(p) = port.filter(|&p| p != default_port) {
                respelled.push(':');
                respelled.push_str(&p.to_string());
            }
            respelled.parse().ok()?
        };
        Some(Origin {
            scheme: scheme.clone(),
            authority,
        })
    }

    /// Whether `uri` names this origin in its one spelling (as [`Origin::of`] keeps it): a
    /// comparison of bytes, no parsing.
    pub(crate) fn spelled_in(&self, uri: &Uri) -> bool {
        uri.scheme() == Some(&self.scheme)
            && uri
                .authority()
                .is_some_and(|a| a.as_str() == self.authority.as_str())
    }

    /// The origin of a URI the router has already put in the one spelling
    /// ([`Origin::respell`]): its parts taken as they are, no parsing.
    pub(crate) fn of_spelled(uri: &Uri) -> Option<Origin> {
        Some(Origin {
            scheme: uri.scheme()?.clone(),
            authority: uri.authority()?.clone(),
        })
    }

    /// `uri` with this origin's spelling of its authority, when spelled otherwise (credentials,
    /// upper case, the default port written): what the stack below the router sees.
    pub(crate) fn respell(&self, uri: &mut Uri) {
        if self.spelled_in(uri) {
            return;
        }
        // Rare (a URI spelled otherwise): a clone keeps `uri` whole should the parts not fit.
        let mut parts = uri.clone().into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        match Uri::from_parts(parts) {
            Ok(respelled) => *uri = respelled,
            // Not reached: an absolute URI has a path, and the new parts are valid. Left as
            // it was, its connections would be keyed apart from the origin's.
            Err(e) => debug_assert!(false, "{uri} respelled as {self}: {e}"),
        }
    }

    /// The general path alone, for the tests that compare it with [`Origin::of`].
    #[cfg(test)]
    fn of_general(uri: &Uri) -> Option<Origin> {
        let scheme = uri.scheme()?;
        let default_port = default_port(scheme)?;
        Origin::respelled(scheme, uri.authority()?, default_port)
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

/// The scheme's default port: `None` for a scheme other than `http` and `https`.
fn default_port(scheme: &Scheme) -> Option<u16> {
    if *scheme == Scheme::HTTPS {
        Some(443)
    } else if *scheme == Scheme::HTTP {
        Some(80)
    } else {
        None
    }
}

/// Whether an authority is already in the one spelling, by a single pass over its bytes (the
/// router runs it for every request not spelled as the base URL's origin): a non-empty host of
/// lower-case letters, digits, `.` and `-`, then nothing, or `:` and a port in plain decimal
/// (no leading zero) that fits a `u16` and is not the scheme's default. Anything else
/// (credentials, IPv6 brackets, upper case, other characters) takes the general path, which
/// gives the same answer for these.
fn is_plain(text: &str, default_port: u16) -> bool {
    let bytes = text.as_bytes();
    let host = bytes
        .iter()
        .take_while(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-'))
        .count();
    if host == 0 {
        return false;
    }
    let Some((&colon, digits)) = bytes[host..].split_first() else {
        return true;
    };
    if colon != b':' || digits.is_empty() || digits.len() > 5 || digits[0] == b'0' {
        return false;
    }
    let mut port = 0u32;
    for &d in digits {
        if !d.is_ascii_digit() {
            return false;
        }
        port = port * 10 + u32::from(d - b'0');
    }
    port <= u32::from(u16::MAX) && port != u32::from(default_port)
}

// By the one spelling's bytes: `Authority`'s own comparison and hash fold case byte by byte.
impl PartialEq for Origin {
    fn eq(&self, other: &Origin) -> bool {
        self.scheme == other.scheme && self.authority.as_str() == other.authority.as_str()
    }
}

impl Eq for Origin {}

impl Hash for Origin {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.is_https().hash(state);
        self.authority.as_str().hash(state);
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

    /// The one-pass check gives what the general path gives, for every authority of up to five
    /// characters over an alphabet with both default ports' digits, upper case, credentials
    /// and brackets, of up to four over every digit and more punctuation, and for some longer
    /// ones, under both schemes.
    #[test]
    fn the_fast_path_agrees_with_the_general_one() {
        let spelled = |o: Option<Origin>| o.map(|o| o.to_string());
        let mut checked = 0;
        let mut fast = 0;
        let mut check = |authority: &str| {
            for scheme in ["http", "https"] {
                let Ok(uri) = format!("{scheme}://{authority}/p").parse::<Uri>() else {
                    continue;
                };
                assert_eq!(
                    spelled(Origin::of(&uri)),
                    spelled(Origin::of_general(&uri)),
                    "{uri}"
                );
                checked += 1;
                let default = default_port(uri.scheme().unwrap()).unwrap();
                fast += usize::from(is_plain(authority, default));
            }
        };
        for (alphabet, longest) in [(&b"aB0348:@[]."[..], 5), (b"aZ0123456789:@[].-_%~", 4)] {
            for len in 0..=longest {
                for mut n in 0..alphabet.len().pow(len) {
                    let mut word = String::new();
                    for _ in 0..len {
                        word.push(char::from(alphabet[n % alphabet.len()]));
                        n /= alphabet.len();
                    }
                    check(&word);
                }
            }
        }
        for longer in [
            "api.example.com:8080",
            "127.0.0.1:443",
            "localhost:80",
            "h-1.example:1",
            "x:65535",
            "x:65536",
            "x:00080",
            "x:8080:1",
            "user:pw@api.example:8443",
            "api_x.example",
            "[::1]:8443",
        ] {
            check(longer);
        }
        // Both paths were exercised.
        assert!(
            checked > 100_000 && fast > 1_000,
            "{checked} checked, {fast} fast"
        );
    }

    #[test]
    fn parts() {
        let o = Origin::of(&"https://Api.Example:8443/x?y".parse().unwrap()).unwrap();
        assert!(o.is_https());
        // One spelling: the host in lower case.
        assert_eq!((o.host(), o.port()), ("api.example", 8443));
        assert_eq!(o.to_string(), "https://api.example:8443");
        let v6 = Origin::of(&"http://[::1]/".parse().unwrap()).unwrap();
        assert_eq!((v6.host(), v6.port()), ("::1", 80));
        assert!(Origin::of(&"/relative".parse().unwrap()).is_none());
        assert!(Origin::of(&"ftp://a/".parse().unwrap()).is_none());
        // Authority compares without regard to case.
        let a = Origin::of(&"http://A.example/".parse().unwrap()).unwrap();
        let b = Origin::of(&"http://a.EXAMPLE/".parse().unwrap()).unwrap();
        assert_eq!(a, b);
        // The scheme's default port, written or not, is one origin; another port is another.
        let implicit = Origin::of(&"http://api.example/a".parse().unwrap()).unwrap();
        let explicit = Origin::of(&"http://API.example:80/b".parse().unwrap()).unwrap();
        assert_eq!(implicit, explicit);
        assert_eq!(explicit.authority().as_str(), "api.example");
        assert_eq!(explicit.port(), 80);
        let hasher = std::collections::hash_map::RandomState::new();
        assert_eq!(
            std::hash::BuildHasher::hash_one(&hasher, &implicit),
            std::hash::BuildHasher::hash_one(&hasher, &explicit)
        );
        // Credentials are not part of the origin, nor of what it prints.
        let with_user = Origin::of(&"http://user:secret@api.example/".parse().unwrap()).unwrap();
        assert_eq!(with_user, implicit);
        assert_eq!(with_user.authority().as_str(), "api.example");
        assert_eq!(with_user.to_string(), "http://api.example");
        let v6_user = Origin::of(&"https://u@[::1]:443/".parse().unwrap()).unwrap();
        assert_eq!(v6_user.authority().as_str(), "[::1]");
        assert_eq!((v6_user.host(), v6_user.port()), ("::1", 443));
        let other_port = Origin::of(&"http://api.example:8080/".parse().unwrap()).unwrap();
        assert_ne!(implicit, other_port);
        let https = Origin::of(&"https://api.example:80/".parse().unwrap()).unwrap();
        assert_ne!(explicit, https, "same port, another scheme");
        let https_default = Origin::of(&"https://api.example:443/".parse().unwrap()).unwrap();
        assert_eq!(
            https_default,
            Origin::of(&"https://api.example/".parse().unwrap()).unwrap()
        );
    }
}
