//! [`RedisKey`]: how a key of a keyed limit becomes part of a Redis key.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A key of a keyed limit, written into the Redis key `PREFIX:NAME:KEY`.
///
/// Implemented for strings and bytes (as they are), integers, IP and socket addresses (as
/// text), `()` (one key for everything: palisade-ratelimit's `GlobalKey`), references, and with
/// feature `http`, `http::HeaderValue` (palisade-ratelimit's `HeaderKey`). Implement it for a
/// key type of your own; two keys that should be limited apart must write different bytes.
pub trait RedisKey {
    /// Appends this key's bytes to `out`.
    fn write_key(&self, out: &mut Vec<u8>);
}

impl<T: RedisKey + ?Sized> RedisKey for &T {
    fn write_key(&self, out: &mut Vec<u8>) {
        (**self).write_key(out);
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
}

macro_rules! as_text {
    ($($t:ty),*) => {$(
        impl RedisKey for $t {
            fn write_key(&self, out: &mut Vec<u8>) {
                // Writing to a Vec cannot fail.
                let _ = write!(out, "{self}");
            }
        }
    )*};
}

as_text!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, IpAddr, Ipv4Addr, Ipv6Addr,
    SocketAddr
);

#[cfg(feature = "http")]
impl RedisKey for http::HeaderValue {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}
