//! Classification: which results count as failures, which as successes, which as neither.
//!
//! Modelled on tower-http's `classify`: the breaker asks a classifier about every completed
//! call. Three outcomes, not two: a result that says nothing about the upstream's health (a
//! request the caller cancelled, a `404` for a missing item) is [`Outcome::Ignore`], and
//! changes no count.

use std::time::Duration;

/// What one completed call says about the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream did its job.
    Success,
    /// The upstream failed. `retry_after` is its own hint (e.g. a `Retry-After` header): until
    /// it expires, any opening lasts at least until then (within the open cap) — the one this
    /// failure causes, or a later one — unless the breaker recovers (closes from half-open) or
    /// is reset first.
    Failure {
        /// How long the upstream asked callers to stay away, if it said.
        retry_after: Option<Duration>,
    },
    /// Says nothing about the upstream's health: counted neither way.
    Ignore,
}

impl Outcome {
    /// A failure without a hint.
    pub const FAILURE: Outcome = Outcome::Failure { retry_after: None };
}

/// Decides the [`Outcome`] of a call from its result.
///
/// A call whose future is dropped before it completes is never classified: it counts as
/// [`Outcome::Ignore`].
pub trait Classify<Res, Err> {
    /// The outcome of `result`.
    fn classify(&self, result: &Result<Res, Err>) -> Outcome;

    /// How long the call took, for a slow-call rule, when the result can tell better than
    /// the breaker's own clock. That clock runs from `call`, so it also counts any wait in the
    /// layers below the breaker (a rate-limit turn, a pooled connection); a client that stamps
    /// its responses with the exchange's own start can report the upstream's time alone.
    /// `None` (the default): the breaker's clock.
    fn elapsed(&self, result: &Result<Res, Err>) -> Option<std::time::Duration> {
        let _ = result;
        None
    }
}

/// The default: every `Err` is a failure, every `Ok` a success.
///
/// Note that hyper reports a `500` as `Ok(response)`: for HTTP use
/// [`HttpClassifier`](crate::http::HttpClassifier) (feature `http`), or your own.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsAsFailures;

impl<Res, Err> Classify<Res, Err> for ErrorsAsFailures {
    fn classify(&self, result: &Result<Res, Err>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::FAILURE,
        }
    }
}

/// A classifier made from a function; see [`classify_fn`].
#[derive(Clone, Copy)]
pub struct ClassifyFn<F> {
    f: F,
}

/// Uses `f` as a classifier.
///
/// ```
/// use palisade_breaker::classify::{classify_fn, Classify, Outcome};
/// let c = classify_fn(|r: &Result<u16, ()>| match r {
///     Ok(status) if *status >= 500 => Outcome::FAILURE,
///     Ok(_) => Outcome::Success,
///     Err(()) => Outcome::FAILURE,
/// });
/// assert_eq!(c.classify(&Ok(503)), Outcome::FAILURE);
/// assert_eq!(c.classify(&Ok(404)), Outcome::Success);
/// ```
pub fn classify_fn<F>(f: F) -> ClassifyFn<F> {
    ClassifyFn { f }
}

impl<F> std::fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClassifyFn")
    }
}

impl<F, Res, Err> Classify<Res, Err> for ClassifyFn<F>
where
    F: Fn(&Result<Res, Err>) -> Outcome,
{
    fn classify(&self, result: &Result<Res, Err>) -> Outcome {
        (self.f)(result)
    }
}
