//! Error types.

use std::fmt;

/// The service is shutting down: the request was refused without reaching the inner service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShuttingDown {
    _p: (),
}

impl ShuttingDown {
    pub(crate) const fn new() -> ShuttingDown {
        ShuttingDown { _p: () }
    }
}

impl fmt::Display for ShuttingDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("shutting down: request refused")
    }
}

impl std::error::Error for ShuttingDown {}
