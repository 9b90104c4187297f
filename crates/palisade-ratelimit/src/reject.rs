//! [`Rejection`]: what a refused request turns into.

use std::fmt;

use crate::error::{KeyUnavailable, RateLimited};

/// The error type of layers that report refusals as errors, as tower's own layers do.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Turns a refusal into the service's output.
///
/// The default, [`AsError`], returns [`RateLimited`] (or [`KeyUnavailable`]) boxed in a
/// [`BoxError`], the way tower's layers report their failures; callers `downcast_ref` it. The
/// HTTP adapter (feature `http`) answers `429 Too Many Requests` instead, so the service keeps
/// its inner error type — `Infallible` under axum — and needs no `HandleErrorLayer`.
pub trait Rejection<Res, E> {
    /// The service's error type: inner errors convert into it.
    type Error: From<E>;

    /// The output for a request the quota refused.
    fn rate_limited(&self, why: RateLimited) -> Result<Res, Self::Error>;

    /// The output for a request the key function found no key in.
    fn key_unavailable(&self) -> Result<Res, Self::Error>;
}

/// Report refusals as a boxed [`RateLimited`] or [`KeyUnavailable`] error.
#[derive(Clone, Copy, Default)]
pub struct AsError {
    _p: (),
}

impl fmt::Debug for AsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AsError")
    }
}

impl<Res, E> Rejection<Res, E> for AsError
where
    BoxError: From<E>,
{
    type Error = BoxError;

    fn rate_limited(&self, why: RateLimited) -> Result<Res, BoxError> {
        Err(Box::new(why))
    }

    fn key_unavailable(&self) -> Result<Res, BoxError> {
        Err(Box::new(KeyUnavailable::new()))
    }
}
