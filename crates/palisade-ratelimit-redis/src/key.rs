//! [`RedisKey`]: how a key of a keyed limit becomes part of a Redis key.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A key of a keyed limit, written into the Redis key `PREFIX:NAME:KIND=KEY`.
///
/// Implemented for strings and bytes (as they are, kind `s`), integers (as text, kind `i`),
/// IP and socket addresses (as text, kind `a`), `()` (one key for everything:
/// palisade-ratelimit's `GlobalKey`, kind `g`), references, and with feature `http`,
/// `http::HeaderValue` (palisade-ratelimit's `HeaderKey`, kind `s`). Implement it for a key
/// type of your own; two keys that should be limited apart must write different bytes or have
/// different [kinds](RedisKey::kind).
///
/// The limiter escapes the bytes written (`%` as `%25`, `:` as `%3A`), so a key can never
/// reach outside its limiter's `PREFIX:NAME:` space (a key `"global"` of limiter `api` is
/// `PREFIX:api:s=global`, never limiter `api:global`'s key — and names with `:` are refused).
pub trait RedisKey {
    /// Appends this key's bytes to `out` (the limiter escapes them).
    fn write_key(&self, out: &mut Vec<u8>);

    /// The kind of key, one ASCII letter or digit written before the key (`PREFIX:NAME:KIND=`),
    /// so that keys of different types that write the same bytes (`5u32` and `"5"`, `()` and
    /// `""`) stay apart. Default `'s'`, as strings and bytes; anything but an ASCII letter or
    /// digit is written as `'u'`.
    fn kind(&self) -> char {
        's'
    }
}

impl<T: RedisKey + ?Sized> RedisKey for &T {
    fn write_key(&self, out: &mut Vec<u8>) {
        (**self).write_key(out);
    }

    fn kind(&self) -> char {
        (**self).kind()
    }
}

impl RedisKey for str {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl RedisKey for String {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl RedisKey for [u8] {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

impl RedisKey for Vec<u8> {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

impl RedisKey for () {
    fn write_key(&self, _: &mut Vec<u8>) {}

    fn kind(&self) -> char {
        'g'
    }
}

macro_rules! as_text {
    ($kind:literal: $($t:ty),*) => {$(
        impl RedisKey for $t {
            fn write_key(&self, out: &mut Vec<u8>) {
                // Writing to a Vec cannot fail.
                let _ = write!(out, "{self}");
            }

            fn kind(&self) -> char {
                $kind
            }
        }
    )*};
}

as_text!('i': u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);
as_text!('a': IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr);

/// Appends `PREFIX:NAME:KIND=` and the key, escaped (`%` → `%25`, `:` → `%3A`), to `out`
/// (which holds `PREFIX:NAME`): the key part never holds a `:`, so no key of one limiter is
/// another limiter's key, and no two (kind, bytes) pairs give the same Redis key.
pub(crate) fn append<K: RedisKey + ?Sized>(key: &K, out: &mut Vec<u8>) {
    let kind = key.kind();
    let kind = if kind.is_ascii_alphanumeric() {
        kind as u8
    } else {
        b'u'
    };
    out.extend_from_slice(&[b':', kind, b'=']);
    let mut raw = Vec::with_capacity(24);
    key.write_key(&mut raw);
    for &b in &raw {
        match b {
            b'%' => out.extend_from_slice(b"%25"),
            b':' => out.extend_from_slice(b"%3A"),
            _ => out.push(b),
        }
    }
}

#[cfg(feature = "http")]
impl RedisKey for http::HeaderValue {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k<K: RedisKey + ?Sized>(key: &K) -> Vec<u8> {
        let mut out = b"p:n".to_vec();
        append(key, &mut out);
        out
    }

    #[test]
    fn keys_are_escaped_and_typed() {
        assert_eq!(k("user-1"), b"p:n:s=user-1");
        assert_eq!(k("a:b%c"), b"p:n:s=a%3Ab%25c");
        assert_ne!(k(&()), k(""));
        assert_ne!(k(&5u32), k("5"));
        assert_ne!(k("%3A"), k(":"));
        assert_eq!(
            k(&"::1".parse::<IpAddr>().unwrap()),
            b"p:n:a=%3A%3A1".to_vec()
        );
    }
}
