//! The error of [`Builder::start`](crate::Builder::start).

use std::fmt;
use std::io;

/// Why an upstream could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The script is invalid (e.g. a zero quota, an empty outage range); the message says which
    /// part and why.
    Config(String),
    /// Binding or configuring the listener failed.
    Io(io::Error),
    /// Generating the certificate or setting up TLS failed (feature `tls`).
    Tls(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(msg) => write!(f, "invalid upstream script: {msg}"),
            Error::Io(e) => write!(f, "upstream I/O error: {e}"),
            Error::Tls(msg) => write!(f, "upstream TLS setup failed: {msg}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Config(_) | Error::Tls(_) => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}
