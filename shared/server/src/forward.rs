//! Forwarding a request to an upstream (a worker, or a coordinator) over HTTP/1.1 with the body streamed both
//! ways.
//!
//! The connection is opened first ([`connect`]) so that a caller can try another upstream when it cannot be
//! reached, before any of the request body is read; [`send`] then forwards method, headers (hop-by-hop removed,
//! `X-Forwarded-For` added) and the body.
//!
//! A connection whose answer ended cleanly is kept a few seconds in a [`Pool`] ([`send_kept`]): the next request to
//! the same upstream (the edge's to a coordinator, a coordinator's to a worker's endpoint) then skips the TCP
//! handshake.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::ApiError;

/// Where one request goes: `host:port`, whether over TLS, and the path with its query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port`.
    pub authority: String,
    /// `/path?query`.
    pub path_and_query: String,
    /// Over TLS (an `https://` base: a tunnel's endpoint, a coordinator serving HTTPS).
    pub tls: bool,
}

impl Target {
    /// `{base}{path}` with `query`, where `base` is an `http://` or `https://` URL (any path on it is kept as a
    /// prefix). `None` for anything else.
    pub fn from_base(base: &str, path: &str, query: Option<&str>) -> Option<Self> {
        let uri: Uri = base.parse().ok()?;
        let tls = match uri.scheme_str()? {
            "http" => false,
            "https" => true,
            _ => return None,
        };
        let authority = authority(&uri)?;
        let mut p = uri.path().trim_end_matches('/').to_owned();
        p.push_str(path);
        if let Some(q) = query {
            p.push('?');
            p.push_str(q);
        }
        Some(Self {
            authority,
            path_and_query: p,
            tls,
        })
    }

    /// The host its certificate must name: the authority without its port (an IPv6 address without brackets).
    pub fn host(&self) -> &str {
        let host = self
            .authority
            .rsplit_once(':')
            .map_or(self.authority.as_str(), |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// Its `Host` header: the authority, without the scheme's default port (a tunnel's front routes by name).
    pub fn host_header(&self) -> &str {
        let default = if self.tls { ":443" } else { ":80" };
        self.authority
            .strip_suffix(default)
            .unwrap_or(&self.authority)
    }

    /// What its kept connections are filed under: the authority, with the scheme when it is TLS (a plain and a
    /// TLS connection to one `host:port` are not interchangeable).
    fn key(&self) -> std::borrow::Cow<'_, str> {
        if self.tls {
            format!("https://{}", self.authority).into()
        } else {
            self.authority.as_str().into()
        }
    }
}

/// A connection to an upstream: plain TCP, or TLS over it.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

/// The `host:port` an http(s) URI reaches (port 80 or 443 when it names none).
pub fn authority(uri: &Uri) -> Option<String> {
    let default = match uri.scheme_str()? {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let auth = uri.authority()?;
    Some(format!(
        "{}:{}",
        auth.host(),
        auth.port_u16().unwrap_or(default)
    ))
}

/// Opens the TCP connection to `addr` (a `host:port`, or addresses tried in turn), within `timeout`.
pub async fn connect(
    addr: impl tokio::net::ToSocketAddrs,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::TRANSFER_ENCODING,
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    for name in &HOP_BY_HOP {
        h.remove(name);
    }
}

/// Sends one HTTP/1.1 request over `io` (a TCP or unix stream) and returns the answer, its body still streaming;
/// the connection is driven by a task of its own until the answer's body is done.
pub async fn request<S, B>(
    io: S,
    req: axum::http::Request<B>,
) -> Result<axum::http::Response<hyper::body::Incoming>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    handshake(io).await?.send_request(req).await
}

/// The HTTP/1.1 client handshake over `io`; the connection is then driven by a task of its own.
async fn handshake<S, B>(io: S) -> Result<hyper::client::conn::http1::SendRequest<B>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection closed");
        }
    });
    Ok(sender)
}

/// Whether `GET path` over `io` (a TCP or unix stream) answers 2xx: a service's health check. The caller bounds the
/// wait.
pub async fn answers<S>(io: S, path: &str) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(req) = axum::http::Request::get(path)
        .header(header::HOST, "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
    else {
        return false;
    };
    request(io, req)
        .await
        .is_ok_and(|answer| answer.status().is_success())
}

/// `req` as it goes upstream to `target`: hop-by-hop headers removed, `Host` set, `X-Forwarded-For` extended with
/// `client`, and the path replaced.
fn upstream_request(req: Request, target: &Target, client: IpAddr) -> Result<Request, ApiError> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(
        header::HOST,
        HeaderValue::from_str(target.host_header())
            .map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    let forwarded = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) => format!("{prev}, {client}"),
        None => client.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        parts.headers.insert("x-forwarded-for", v);
    }
    parts.uri = target
        .path_and_query
        .parse()
        .map_err(|_| ApiError::BadRequest("the request path cannot be forwarded".into()))?;
    parts.version = axum::http::Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

/// The upstream's answer (or failure, or silence past `timeout`) as the client's answer, its body streaming.
async fn answer(
    sent: impl std::future::Future<
        Output = Result<axum::http::Response<hyper::body::Incoming>, hyper::Error>,
    >,
    timeout: Duration,
) -> Result<Response, ApiError> {
    match tokio::time::timeout(timeout, sent).await {
        Ok(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            parts.version = axum::http::Version::HTTP_11;
            let events = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with("text/event-stream"));
            let body = if events {
                Body::new(EventStream {
                    inner: body,
                    ended: false,
                })
            } else {
                Body::new(body)
            };
            Ok(Response::from_parts(parts, body))
        }
        Ok(Err(e)) => Err(ApiError::BadGateway(format!(
            "the upstream failed to answer: {e}"
        ))),
        Err(_) => Err(ApiError::GatewayTimeout(format!(
            "no answer within {} s",
            timeout.as_secs()
        ))),
    }
}

/// Sends `req` to `target` over `stream` (TCP, or a unix socket) and returns the answer with its body streaming.
/// `timeout` bounds the wait for the answer's headers.
pub async fn send<S>(
    stream: S,
    target: &Target,
    req: Request,
    client: IpAddr,
    timeout: Duration,
) -> Result<Response, ApiError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let upstream = upstream_request(req, target, client)?;
    answer(request(stream, upstream), timeout).await
}

/// How long a connection is kept idle for reuse: well under the idle time our servers allow a kept-alive
/// connection (their `header_read_timeout_secs`, 10 s by default), so the other end does not close it as it is
/// taken.
const KEPT_FOR: Duration = Duration::from_secs(4);
/// Idle connections kept per upstream, and in all.
const KEPT_PER_UPSTREAM: usize = 16;
const KEPT_IN_ALL: usize = 256;

type Sender = hyper::client::conn::http1::SendRequest<Body>;

/// Idle HTTP/1.1 connections to upstreams.
#[derive(Debug, Default)]
pub struct Pool {
    idle: parking_lot::Mutex<Idle>,
}

/// The kept connections by `host:port` (the most recent last; no upstream with none), and how many in all.
#[derive(Debug, Default)]
struct Idle {
    by_upstream: HashMap<String, Vec<(Sender, Instant)>>,
    count: usize,
}

/// An open connection to an upstream: one kept from an earlier request, or a new one (TCP, or TLS over it).
pub enum Conn {
    /// Kept alive, ready for a request.
    Kept(Sender),
    /// Just connected.
    New(Box<dyn Io>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Kept(_) => "Conn::Kept",
            Self::New(_) => "Conn::New",
        })
    }
}

impl Pool {
    /// An idle connection to `target`'s upstream that is still open, if one was kept.
    pub fn take(&self, target: &Target) -> Option<Sender> {
        let key = target.key();
        let mut idle = self.idle.lock();
        let Idle { by_upstream, count } = &mut *idle;
        let list = by_upstream.get_mut(&*key)?;
        let mut found = None;
        // Too old or closed meanwhile: dropped (and so closed) on the way.
        while let Some((sender, since)) = list.pop() {
            *count -= 1;
            if since.elapsed() < KEPT_FOR && sender.is_ready() {
                found = Some(sender);
                break;
            }
        }
        if list.is_empty() {
            by_upstream.remove(&*key);
        }
        found
    }

    /// Keeps `sender` once its answer has ended cleanly (not when its body was dropped halfway, nor when either side
    /// closes the connection).
    fn keep_when_done(self: &Arc<Self>, key: String, mut sender: Sender) {
        let pool = self.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            let mut idle = pool.idle.lock();
            let Idle { by_upstream, count } = &mut *idle;
            // Full: first drop what has expired or closed.
            if *count >= KEPT_IN_ALL {
                by_upstream.retain(|_, list| {
                    list.retain(|(s, since)| since.elapsed() < KEPT_FOR && !s.is_closed());
                    !list.is_empty()
                });
                *count = by_upstream.values().map(Vec::len).sum();
            }
            if *count >= KEPT_IN_ALL {
                return;
            }
            let list = by_upstream.entry(key).or_default();
            if list.len() < KEPT_PER_UPSTREAM {
                list.push((sender, Instant::now()));
                *count += 1;
            }
        });
    }

    /// Idle connections kept now.
    pub fn idle(&self) -> usize {
        self.idle.lock().count
    }
}

/// Sends `req` to `target` over `conn` (a kept connection, or a new one from [`connect`]) and returns the answer
/// with its body streaming; the connection goes back to `pool` once the answer has ended cleanly. `timeout` bounds
/// the wait for the answer's headers.
pub async fn send_kept(
    pool: &Arc<Pool>,
    conn: Conn,
    target: &Target,
    req: Request,
    client: IpAddr,
    timeout: Duration,
) -> Result<Response, ApiError> {
    let upstream = upstream_request(req, target, client)?;
    let key = target.key().into_owned();
    let pool = pool.clone();
    answer(
        async move {
            let mut sender = match conn {
                Conn::Kept(s) => s,
                Conn::New(stream) => handshake(stream).await?,
            };
            let sent = sender.send_request(upstream);
            pool.keep_when_done(key, sender);
            sent.await
        },
        timeout,
    )
    .await
}

/// Sends `req` to `target` over a worker's channel (the reverse path, HTTP/2: see [`crate::channel`]) and returns
/// the answer with its body streaming. Dropping the answer's body resets the stream, which cancels the request at
/// the worker.
pub async fn send_on(
    channel: &crate::channel::Sender,
    target: &Target,
    req: Request,
    client: IpAddr,
    timeout: Duration,
) -> Result<Response, ApiError> {
    let mut upstream = upstream_request(req, target, client)?;
    // HTTP/2 names the authority in the URI, not in a Host header.
    upstream.headers_mut().remove(header::HOST);
    *upstream.version_mut() = axum::http::Version::HTTP_2;
    *upstream.uri_mut() = format!("http://{}{}", target.authority, target.path_and_query)
        .parse()
        .map_err(|_| ApiError::BadRequest("the request path cannot be forwarded".into()))?;
    let mut sender = channel.clone();
    answer(
        async move {
            sender.ready().await?;
            sender.send_request(upstream).await
        },
        timeout,
    )
    .await
}

/// What looks at a body as it is sent: each chunk, then how it ended. [`watch`] and [`watch_request`] put one on a
/// body; a watch also lives as long as the body, so it can hold what must last as long as the answer (a queue's
/// slot, a worker's count in flight), not only until its headers.
pub trait Watch: Send + Unpin + 'static {
    /// A chunk of the body went by.
    fn data(&mut self, _chunk: &bytes::Bytes) {}
    /// The body ended: `complete` when all of it went by, not when it failed or its reader went away first. Called
    /// once.
    fn end(&mut self, _complete: bool) {}
}

/// `resp` with `watch` on its body.
pub fn watch<W: Watch>(resp: Response, watch: W) -> Response {
    resp.map(|inner| Body::new(Watched::new(inner, watch)))
}

/// `req` with `watch` on its body (what a client uploads).
pub fn watch_request<W: Watch>(req: Request, watch: W) -> Request {
    req.map(|inner| Body::new(Watched::new(inner, watch)))
}

struct Watched<W: Watch> {
    inner: Body,
    watch: Option<W>,
}

impl<W: Watch> Watched<W> {
    fn new(inner: Body, watch: W) -> Self {
        Self {
            inner,
            watch: Some(watch),
        }
    }

    fn end(&mut self, complete: bool) {
        if let Some(mut w) = self.watch.take() {
            w.end(complete);
        }
    }
}

impl<W: Watch> Drop for Watched<W> {
    fn drop(&mut self) {
        // The reader stopped: complete only when nothing was left to read.
        let complete = hyper::body::Body::is_end_stream(&self.inner);
        self.end(complete);
    }
}

impl<W: Watch> hyper::body::Body for Watched<W> {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        let frame = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(chunk), Some(w)) = (f.data_ref(), this.watch.as_mut()) {
                    w.data(chunk);
                }
            }
            Poll::Ready(None) => this.end(true),
            Poll::Ready(Some(Err(_))) => this.end(false),
            Poll::Pending => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// An event stream's body from upstream that, when the upstream fails in the middle (the worker went away), ends
/// with an `error` event instead of a cut connection: a streaming client learns why its stream ended, and the
/// connection stays usable.
struct EventStream {
    inner: hyper::body::Incoming,
    ended: bool,
}

/// How the event that ends a stream whose upstream failed begins.
const ERROR_EVENT: &str = "event: error\n";

/// Whether `chunk` is the event that ends a stream whose upstream failed: the answer did not complete.
pub fn is_error_event(chunk: &[u8]) -> bool {
    chunk.starts_with(ERROR_EVENT.as_bytes())
}

/// The event that ends a stream whose upstream failed.
fn error_event(message: &str) -> bytes::Bytes {
    let body = commons_shared::ErrorBody::new("upstream_failed", message);
    let json = serde_json::to_string(&body).unwrap_or_default();
    bytes::Bytes::from(format!("{ERROR_EVENT}data: {json}\n\n"))
}

impl hyper::body::Body for EventStream {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                this.ended = true;
                tracing::warn!(error = %e, "the upstream failed in the middle of an event stream");
                Poll::Ready(Some(Ok(hyper::body::Frame::data(error_event(&format!(
                    "the worker stopped in the middle of the answer ({e}); try again"
                ))))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_from_bases() {
        let t = Target::from_base(
            "http://127.0.0.1:9000/base/",
            "/api/service/ocr/v1",
            Some("x=1"),
        )
        .unwrap();
        assert_eq!(t.authority, "127.0.0.1:9000");
        assert_eq!(t.path_and_query, "/base/api/service/ocr/v1?x=1");
        let t = Target::from_base("http://w.example", "/api/x", None).unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path_and_query.as_str()),
            ("w.example:80", "/api/x")
        );
        assert!(!t.tls);
        let t = Target::from_base("https://x.trycloudflare.com", "/", None).unwrap();
        assert_eq!(
            (t.authority.as_str(), t.host()),
            ("x.trycloudflare.com:443", "x.trycloudflare.com")
        );
        assert!(t.tls);
        assert_eq!(t.key(), "https://x.trycloudflare.com:443");
        assert_eq!(t.host_header(), "x.trycloudflare.com");
        let t = Target::from_base("https://[::1]:8443", "/", None).unwrap();
        assert_eq!(t.host(), "::1");
        assert!(Target::from_base("ftp://x.example", "/", None).is_none());
        assert!(Target::from_base("not a url", "/", None).is_none());
    }
}
