//! [`Response`]: a streaming response with helpers to read its body.

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::Error;

/// A response whose body has not been read yet. The connection it came on goes back to the
/// pool once the body has been read to the end (or is closed if the body is dropped unread).
#[derive(Debug)]
pub struct Response {
    inner: http::Response<Incoming>,
}

impl Response {
    pub(crate) fn new(inner: http::Response<Incoming>) -> Self {
        Response { inner }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.inner.status()
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        self.inner.headers()
    }

    /// The HTTP version.
    pub fn version(&self) -> Version {
        self.inner.version()
    }

    /// The `http::Response`, to stream the body yourself.
    pub fn into_http(self) -> http::Response<Incoming> {
        self.inner
    }

    /// Reads the whole body.
    ///
    /// # Errors
    ///
    /// [`Error::is_body`] when the connection fails while the body is read.
    pub async fn bytes(self) -> Result<Bytes, Error> {
        let collected = self
            .inner
            .into_body()
            .collect()
            .await
            .map_err(Error::body)?;
        Ok(collected.to_bytes())
    }

    /// Reads the whole body as UTF-8 text (invalid sequences replaced).
    ///
    /// # Errors
    ///
    /// As [`bytes`](Self::bytes).
    pub async fn text(self) -> Result<String, Error> {
        let bytes = self.bytes().await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Reads the whole body and decodes it as JSON.
    ///
    /// # Errors
    ///
    /// As [`bytes`](Self::bytes), and a decode error when the body is not the expected JSON.
    #[cfg(feature = "json")]
    pub async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, Error> {
        let bytes = self.bytes().await?;
        serde_json::from_slice(&bytes).map_err(Error::decode)
    }
}
