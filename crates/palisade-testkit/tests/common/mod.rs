//! A minimal hyper HTTP/1.1 client for the tests: one connection, one request at a time.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;

use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// One client connection.
pub struct Client {
    send: SendRequest<Full<Bytes>>,
    /// The connection task: ends when the connection closes.
    pub conn: JoinHandle<Result<(), hyper::Error>>,
    host: String,
}

/// A whole answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Client::over(tcp, addr.to_string()).await
    }

    pub async fn over<I>(io: I, host: String) -> Client
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = http1::handshake(TokioIo::new(io)).await.expect("handshake");
        let conn = tokio::spawn(conn);
        Client { send, conn, host }
    }

    pub async fn get(&mut self, path: &str) -> Result<Reply, hyper::Error> {
        self.request(http::Method::GET, path, None, Bytes::new())
            .await
    }

    pub async fn request(
        &mut self,
        method: http::Method,
        path: &str,
        request_id: Option<&str>,
        body: Bytes,
    ) -> Result<Reply, hyper::Error> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.host);
        if let Some(id) = request_id {
            req = req.header("x-request-id", id);
        }
        let req = req.body(Full::new(body)).expect("request");
        self.send.ready().await?;
        let res = self.send.send_request(req).await?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(body.to_vec()).expect("utf-8 body"),
        })
    }

    /// Sends a request and returns the response head only, the body left to the caller.
    pub async fn send_head(
        &mut self,
        path: &str,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        let req = Request::get(path)
            .header(http::header::HOST, &self.host)
            .body(Full::new(Bytes::new()))
            .expect("request");
        self.send.ready().await?;
        self.send.send_request(req).await
    }

    /// Whether the connection is closed (the server closed it, or it failed).
    pub fn is_closed(&self) -> bool {
        self.send.is_closed()
    }
}
