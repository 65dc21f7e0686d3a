//! The upstream side of HTTP/1.1, owned: a request written and its response
//! parsed straight on the request's own task, with no connection task and
//! no channel between them (hyper's client dispatch costs two cross-task
//! wake-ups per request; see `bench/README.md`).
//!
//! Used for every `protocol = "http1"` pool, plain TCP or TLS, for every
//! request but protocol upgrades (WebSocket), which keep hyper's client for
//! its upgrade machinery. A request body is streamed as it arrives
//! (`Content-Length` when the client gave one, else chunked, with the
//! client's trailers), and the upstream is read while it is written: an
//! upstream may answer before it has read the whole body (a `413`, or an
//! echo that streams back), and the rest of the body is then sent while the
//! response is read. A connection is reused only if both messages ended
//! cleanly.
//!
//! Parsing is strict where the upstream's framing would otherwise be
//! ambiguous, because a proxy that reads a response differently from the
//! next hop is how response splitting works:
//!
//! * the head: `httparse` with obs-fold, a space before the colon and a
//!   malformed status line all refused, at most [`MAX_HEADERS`] fields and
//!   [`MAX_HEAD`] bytes;
//! * `Content-Length`: digits only, and every copy (repeated fields, comma
//!   lists) the same value;
//! * `Transfer-Encoding`: exactly `chunked` and never beside a
//!   `Content-Length`; any other coding (`gzip`, `chunked, gzip`) is refused
//!   rather than read as "until the close" (HAProxy 2.6 refuses it too;
//!   nginx 1.22 passes it on, and a response with both, and two differing
//!   lengths, tried on 2026-12-02);
//! * chunks: 1 to 16 hex digits, extensions of visible characters only,
//!   CRLF line ends, the CRLF after each chunk's data checked, trailers
//!   parsed as headers;
//! * bytes the upstream sends beyond its response, or while idle, mean the
//!   connection is never reused.
//!
//! A refused head is a [`Malformed`] error: a 502 for the client, counted
//! against the upstream. A body that breaks off is an error frame.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::body::{ClientBodyError, RequestBody};
use crate::pool::Upstream;

/// Most header fields a response head may have.
pub(crate) const MAX_HEADERS: usize = 100;
/// Largest response head (status line and fields), in bytes.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size line (with extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Request body frames up to this size are copied into the write buffer
/// (with the head, or with their chunk framing) so that they go out in one
/// system call; larger ones are written from their own buffer.
const COPY_MAX: usize = 16 * 1024;
/// Read size when the buffer needs room.
const READ_CHUNK: usize = 16 * 1024;
/// Largest read of a body whose length is known: fewer reads and fewer
/// frames for large responses.
const MAX_READ: usize = 256 * 1024;

/// A keep-alive HTTP/1.1 connection to one upstream.
pub(crate) struct H1Conn {
    io: Io,
    /// Bytes read and not yet consumed.
    read: BytesMut,
    /// Bytes to write: the request head, small body frames and chunk
    /// framing (its allocation is kept between requests).
    write: Vec<u8>,
    /// How much of `write` is written.
    written: usize,
    /// When it last went idle, in [`crate::pool::clock_ms`] milliseconds.
    pub(crate) idle_since_ms: u64,
}

/// The socket under an own-client connection.
pub(crate) enum Io {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl From<TcpStream> for Io {
    fn from(s: TcpStream) -> Io {
        Io::Tcp(s)
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// The response head arrived but frames its message ambiguously or
/// malformedly; the message says how.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Malformed(pub &'static str);

/// Why a request got no response head.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Writing a bodiless request failed: it never reached the upstream
    /// whole, so it may be sent again whatever its method.
    Write(std::io::Error),
    /// The connection closed (or reset) before any byte of a response: on
    /// a reused connection, the upstream's keep-alive close racing the
    /// request; idempotent bodiless requests may be sent again.
    ClosedBeforeResponse,
    /// The client's request body broke (or was too large, or too slow)
    /// before the response head: the client's fault, not the upstream's.
    Client(ClientBodyError),
    /// A read failed mid-head, or the head was refused.
    Response(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Write(e) => write!(f, "writing the request failed: {e}"),
            SendError::ClosedBeforeResponse => {
                f.write_str("the connection closed before a response")
            }
            SendError::Client(e) => write!(f, "{e}"),
            SendError::Response(e) => f.write_str(e),
        }
    }
}

impl H1Conn {
    pub(crate) fn new(io: impl Into<Io>) -> H1Conn {
        H1Conn {
            io: io.into(),
            read: BytesMut::new(),
            write: Vec::new(),
            written: 0,
            idle_since_ms: 0,
        }
    }

    /// Whether an idle connection may carry the next request: not if the
    /// upstream closed it or sent bytes unasked (a late `408`, say, which
    /// would otherwise be read as the answer to the next request). Costs no
    /// system call when the reactor saw nothing since the last read drained
    /// the socket (tokio clears readiness on a short read). Over TLS the
    /// stream is polled once: records that carry no data (a session
    /// ticket) are taken in and leave it usable; data or a close do not.
    pub(crate) fn usable(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        match &mut self.io {
            Io::Tcp(s) => {
                matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
            Io::Tls(s) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut buf = ReadBuf::new(&mut probe);
                Pin::new(&mut **s).poll_read(&mut cx, &mut buf).is_pending()
            }
        }
    }

    /// Writes `req` (taking its body, if it has one) and reads the response
    /// head, skipping interim (1xx) responses; the body is streamed while
    /// the upstream is read. The response body comes with the head as an
    /// [`H1Body`], which sends whatever is left of the request body, and
    /// gives the connection back to `up` once both messages have ended and
    /// the upstream allows reuse.
    pub(crate) async fn send(
        mut self: Box<Self>,
        req: &mut Request<RequestBody>,
        up: &Arc<Upstream>,
    ) -> Result<(http::response::Parts, H1Body), SendError> {
        let mut upload = Upload::for_request(req);
        encode_head(
            &mut self.write,
            req,
            upload.as_ref().is_some_and(|u| u.chunked),
        );
        self.written = 0;
        let head_only = req.method() == Method::HEAD;
        let mut got_any = false;
        let mut writing = true;
        let mut write_failed = false;
        let parsed = std::future::poll_fn(|cx| {
            let c = &mut *self;
            if writing {
                match c.poll_write_request(upload.as_deref_mut(), cx) {
                    Poll::Ready(Ok(())) => {
                        writing = false;
                        upload = None;
                    }
                    Poll::Ready(Err(UploadError::Client(e))) => {
                        return Poll::Ready(Err(SendError::Client(e)))
                    }
                    Poll::Ready(Err(UploadError::Write(e))) => {
                        if upload.is_none() {
                            return Poll::Ready(Err(SendError::Write(e)));
                        }
                        // The upstream may have answered (a 413) and
                        // stopped reading: read on for its response.
                        writing = false;
                        write_failed = true;
                        upload = None;
                    }
                    Poll::Pending => {}
                }
            }
            loop {
                match parse_head(&mut c.read, head_only) {
                    Ok(Some(Parsed::Interim)) => {
                        got_any = true;
                        continue;
                    }
                    Ok(Some(Parsed::Final(parts, framing, keep_alive))) => {
                        return Poll::Ready(Ok((parts, framing, keep_alive)))
                    }
                    Ok(None) => {}
                    Err(m) => return Poll::Ready(Err(SendError::Response(m.0.to_string()))),
                }
                if c.read.len() >= MAX_HEAD {
                    return Poll::Ready(Err(SendError::Response(format!(
                        "the response head is larger than {MAX_HEAD} bytes"
                    ))));
                }
                got_any |= !c.read.is_empty();
                c.read.reserve(READ_CHUNK);
                match tokio_util::io::poll_read_buf(Pin::new(&mut c.io), cx, &mut c.read) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) if !got_any => {
                        return Poll::Ready(Err(SendError::ClosedBeforeResponse))
                    }
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(SendError::Response(
                            "the connection closed in the middle of the response head".into(),
                        )))
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) if !got_any && is_reset(&e) => {
                        return Poll::Ready(Err(SendError::ClosedBeforeResponse))
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Err(SendError::Response(format!(
                            "reading the response: {e}"
                        ))))
                    }
                }
            }
        })
        .await;
        let (parts, framing, keep_alive) = parsed?;
        // An answer before the head was written whole (an upstream that
        // refused it early): the rest of the head must not go out in front
        // of the next request. (A body still being sent is `upload`'s.)
        let head_unsent = writing && upload.is_none();
        let keep_alive = keep_alive && !write_failed && !head_unsent;
        let body = H1Body::new(self, framing, keep_alive, upload, up.clone());
        Ok((parts, body))
    }

    /// Writes what is buffered and then the request body as it arrives:
    /// `Ready(Ok)` once the whole request is written, `Pending` while the
    /// socket is full or the client has sent nothing more yet.
    fn poll_write_request(
        &mut self,
        mut upload: Option<&mut Upload>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), UploadError>> {
        loop {
            // Small body frames join what is already buffered (the head, at
            // first), so that a small request goes out in one write.
            let mut body_pending = false;
            if let Some(u) = upload.as_deref_mut() {
                if u.big.is_none() && !u.ended {
                    match u.fill(&mut self.write, cx) {
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(UploadError::Client(e))),
                        Poll::Ready(Ok(())) => {}
                        Poll::Pending => body_pending = true,
                    }
                }
            }
            while self.written < self.write.len() {
                match Pin::new(&mut self.io).poll_write(cx, &self.write[self.written..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(UploadError::Write(
                            std::io::ErrorKind::WriteZero.into(),
                        )))
                    }
                    Poll::Ready(Ok(n)) => self.written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(UploadError::Write(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            self.write.clear();
            self.written = 0;
            let Some(u) = upload.as_deref_mut() else {
                return Poll::Ready(Ok(()));
            };
            if let Some(big) = u.big.as_mut() {
                while !big.is_empty() {
                    match Pin::new(&mut self.io).poll_write(cx, big) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(UploadError::Write(
                                std::io::ErrorKind::WriteZero.into(),
                            )))
                        }
                        Poll::Ready(Ok(n)) => big.advance(n),
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(UploadError::Write(e))),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                u.big = None;
                if u.chunked {
                    self.write.extend_from_slice(b"\r\n");
                }
                continue;
            }
            if u.ended {
                return Poll::Ready(Ok(()));
            }
            if body_pending {
                // Everything buffered is written; the client's body wakes
                // this task when it has more.
                return Poll::Pending;
            }
        }
    }
}

/// Why writing a request body stopped.
enum UploadError {
    Client(ClientBodyError),
    Write(std::io::Error),
}

/// A request body being sent: its framing and what is left of it.
pub(crate) struct Upload {
    body: RequestBody,
    /// Chunked (the client gave no `Content-Length`).
    chunked: bool,
    /// With `Content-Length`, how many bytes are still to come.
    left: u64,
    /// A large frame being written from its own buffer.
    big: Option<Bytes>,
    /// The body's last frame is buffered (for chunked, the last chunk and
    /// the trailers too).
    ended: bool,
}

impl Upload {
    /// The upload of `req`'s body, taken out of it; `None` for a bodiless
    /// request.
    fn for_request(req: &mut Request<RequestBody>) -> Option<Box<Upload>> {
        if req.body().is_end_stream() {
            return None;
        }
        let length = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = std::mem::replace(req.body_mut(), RequestBody::Empty);
        Some(Box::new(Upload {
            body,
            chunked: length.is_none(),
            left: length.unwrap_or(0),
            big: None,
            ended: false,
        }))
    }

    /// Moves the body's frames that are ready into `out` (framed), until a
    /// large one (kept in `big`), the end, or [`COPY_MAX`] bytes buffered.
    /// `Pending` only says that no more frames are ready now.
    fn fill(
        &mut self,
        out: &mut Vec<u8>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), ClientBodyError>> {
        while out.len() < COPY_MAX {
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => {
                    if self.chunked {
                        out.extend_from_slice(b"0\r\n\r\n");
                    } else if self.left != 0 {
                        return Poll::Ready(Err(ClientBodyError::malformed(
                            "the request body ended before its Content-Length",
                        )));
                    }
                    self.ended = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Some(Ok(f))) => f,
            };
            let data = match frame.into_data() {
                Ok(d) => d,
                Err(f) => {
                    // Trailers end the body; they go out only in chunked
                    // framing (there is nowhere to put them otherwise).
                    if let (Ok(t), true) = (f.into_trailers(), self.chunked) {
                        out.extend_from_slice(b"0\r\n");
                        encode_fields(out, &t);
                        out.extend_from_slice(b"\r\n");
                        self.ended = true;
                        return Poll::Ready(Ok(()));
                    }
                    continue;
                }
            };
            if data.is_empty() {
                continue;
            }
            if !self.chunked {
                if data.len() as u64 > self.left {
                    return Poll::Ready(Err(ClientBodyError::malformed(
                        "the request body is longer than its Content-Length",
                    )));
                }
                self.left -= data.len() as u64;
            } else {
                push_hex_line(out, data.len());
            }
            if data.len() > COPY_MAX {
                self.big = Some(data);
                return Poll::Ready(Ok(()));
            }
            out.extend_from_slice(&data);
            if self.chunked {
                out.extend_from_slice(b"\r\n");
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// A chunk-size line: `n` in hexadecimal and CRLF.
fn push_hex_line(out: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
    )
}

/// The request line and fields. The client's `Transfer-Encoding` never
/// goes out as it came: with `chunked` the body is sent chunked (and says
/// so, and any `Content-Length` is dropped: never both), otherwise it has a
/// `Content-Length` or no body.
fn encode_head<B>(out: &mut Vec<u8>, req: &Request<B>, chunked: bool) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if chunked {
        for (name, value) in req.headers() {
            if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
                push_field(out, name, value);
            }
        }
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else {
        encode_fields(out, req.headers());
    }
    out.extend_from_slice(b"\r\n");
}

/// Header fields as `name: value` lines, without `Transfer-Encoding`.
fn encode_fields(out: &mut Vec<u8>, fields: &HeaderMap) {
    for (name, value) in fields {
        if name != header::TRANSFER_ENCODING {
            push_field(out, name, value);
        }
    }
}

fn push_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body ends when the upstream closes.
    UntilClose,
}

enum Parsed {
    /// A 1xx other than 101, consumed.
    Interim,
    Final(http::response::Parts, Framing, bool),
}

/// Parses a response head from the front of `buf`, consuming it when
/// complete. `Ok(None)`: more bytes are needed.
fn parse_head(buf: &mut BytesMut, head_only: bool) -> Result<Option<Parsed>, Malformed> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match httparse::ParserConfig::default().parse_response(&mut resp, buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Malformed("the response has more than 100 header fields"))
        }
        Err(httparse::Error::Status) => {
            return Err(Malformed("the response's status line is malformed"))
        }
        Err(httparse::Error::Version) => {
            return Err(Malformed("the response is not HTTP/1.0 or HTTP/1.1"))
        }
        Err(_) => {
            return Err(Malformed(
                "a response header field is malformed (folded, or a space before its colon)",
            ))
        }
    };
    let code = resp.code.unwrap_or(0);
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Where each field is, so that the values can be slices of the head
    // (no copy) once it is split off the buffer.
    let base = buf.as_ptr() as usize;
    let mut spans = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
    let count = resp.headers.len();
    for (span, f) in spans.iter_mut().zip(resp.headers.iter()) {
        *span = (
            f.name.as_ptr() as usize - base,
            f.name.len(),
            f.value.as_ptr() as usize - base,
            f.value.len(),
        );
    }
    let head = buf.split_to(len).freeze();
    if (100..200).contains(&code) {
        if code == 101 {
            return Err(Malformed(
                "the upstream switched protocols for a request that asked for no upgrade",
            ));
        }
        return Ok(Some(Parsed::Interim));
    }
    let status = StatusCode::from_u16(code)
        .map_err(|_| Malformed("the response's status code is out of range"))?;
    let mut headers = HeaderMap::with_capacity(count);
    for &(no, nl, vo, vl) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[no..no + nl])
            .map_err(|_| Malformed("a response header field name is not a token"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vo..vo + vl))
            .map_err(|_| Malformed("a response header field value has a control character"))?;
        headers.append(name, value);
    }
    let framing = framing(&headers, status, head_only)?;
    let keep_alive = framing != Framing::UntilClose && keeps_alive(&headers, version);
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Parsed::Final(parts, framing, keep_alive)))
}

/// The body's framing, or why it is ambiguous (RFC 9112 §6.3).
fn framing(headers: &HeaderMap, status: StatusCode, head_only: bool) -> Result<Framing, Malformed> {
    let te = headers.get_all(header::TRANSFER_ENCODING);
    let has_te = te.iter().next().is_some();
    let length = content_length(headers)?;
    if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Empty);
    }
    if has_te {
        if length.is_some() {
            return Err(Malformed(
                "the response has both Transfer-Encoding and Content-Length",
            ));
        }
        let mut codings = te
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(|c| c.trim_ascii())
            .filter(|c| !c.is_empty());
        return match (codings.next(), codings.next()) {
            (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
            _ => Err(Malformed(
                "the response has a transfer coding other than chunked",
            )),
        };
    }
    Ok(match length {
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

/// The response's `Content-Length`: every copy, in repeated fields or comma
/// lists, must be the same string of digits.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Malformed> {
    let mut found: Option<u64> = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(Malformed("the response's Content-Length is not a number"));
            }
            let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if found.is_some_and(|f| f != n) {
                return Err(Malformed(
                    "the response has Content-Length values that differ",
                ));
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// Whether the upstream lets the connection carry another request.
fn keeps_alive(headers: &HeaderMap, version: Version) -> bool {
    let mut close = false;
    let mut keep = false;
    for v in headers.get_all(header::CONNECTION) {
        for token in v.as_bytes().split(|b| *b == b',') {
            let token = token.trim_ascii();
            close |= token.eq_ignore_ascii_case(b"close");
            keep |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    !close && (version == Version::HTTP_11 || keep)
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// A response body read from an [`H1Conn`] by whoever polls it.
pub(crate) struct H1Body {
    conn: Option<Box<H1Conn>>,
    /// What is left of the request body when the upstream answered before
    /// reading all of it: sent as the response is read.
    upload: Option<Box<Upload>>,
    state: State,
    keep_alive: bool,
    up: Arc<Upstream>,
    /// A body that was already whole in the buffer with its head.
    whole: Option<Bytes>,
}

impl H1Body {
    fn new(
        conn: Box<H1Conn>,
        framing: Framing,
        keep_alive: bool,
        upload: Option<Box<Upload>>,
        up: Arc<Upstream>,
    ) -> H1Body {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size),
            Framing::UntilClose => State::UntilClose,
        };
        let mut body = H1Body {
            conn: Some(conn),
            upload,
            state,
            keep_alive,
            up,
            whole: None,
        };
        // The common case: a small response that arrived with its head.
        // Taken now, and the connection goes back before the client has
        // even seen the head.
        if let (State::Length(n), Some(c)) = (body.state, body.conn.as_mut()) {
            if c.read.len() as u64 >= n {
                body.whole = Some(take(&mut c.read, n).0);
                body.state = State::Done;
            }
        }
        if body.state == State::Done {
            body.finish();
        }
        body
    }

    /// The body is complete: the connection goes back to the idle stack if
    /// the upstream allows it, sent nothing beyond the response, and the
    /// request body was sent whole (a connection with a request half sent
    /// is closed, and the rest of the client's body is dropped).
    fn finish(&mut self) {
        self.state = State::Done;
        let sent_whole = self.upload.take().is_none();
        if let Some(mut c) = self.conn.take() {
            if self.keep_alive && sent_whole && c.read.is_empty() {
                // An idle connection holds no read buffer (the response's
                // head and body may still share this one anyway).
                c.read = BytesMut::new();
                c.idle_since_ms = crate::pool::clock_ms();
                self.up.checkin_h1(c);
            }
        }
    }

    fn fail(&mut self, why: String) -> Poll<Option<Result<Frame<Bytes>, crate::body::BoxError>>> {
        self.state = State::Done;
        self.conn = None;
        self.upload = None;
        Poll::Ready(Some(Err(why.into())))
    }
}

/// Up to `left` bytes of a body from the front of `read`, and how many are
/// left after them.
fn take(read: &mut BytesMut, left: u64) -> (Bytes, u64) {
    let n = (read.len() as u64).min(left) as usize;
    (read.split_to(n).freeze(), left - n as u64)
}

/// Reads more bytes into the connection's buffer, with room for `want`
/// (within [`READ_CHUNK`] and [`MAX_READ`]): `Ok(0)` at the close.
fn poll_fill(c: &mut H1Conn, want: u64, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
    c.read
        .reserve(want.clamp(READ_CHUNK as u64, MAX_READ as u64) as usize);
    tokio_util::io::poll_read_buf(Pin::new(&mut c.io), cx, &mut c.read)
}

/// A chunk-size line at the front of `buf`: `(line length, size)`, `None`
/// if it is not all there yet.
fn chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, Malformed> {
    let Some(end) = buf
        .iter()
        .take(MAX_CHUNK_LINE + 1)
        .position(|b| *b == b'\n')
    else {
        if buf.len() > MAX_CHUNK_LINE {
            return Err(Malformed("a chunk-size line is too long"));
        }
        return Ok(None);
    };
    let Some(line) = buf[..end].strip_suffix(b"\r") else {
        return Err(Malformed("a chunk-size line does not end in CRLF"));
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Malformed("a chunk size is not hexadecimal"));
    }
    if digits > 16 {
        return Err(Malformed("a chunk size is larger than 64 bits"));
    }
    let size = line[..digits].iter().fold(0u64, |n, d| {
        n * 16 + u64::from((*d as char).to_digit(16).unwrap_or(0))
    });
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() {
        // Extensions: ignored, but only visible characters and whitespace.
        if rest[0] != b';'
            || !rest
                .iter()
                .all(|b| *b == b'\t' || (b' '..=b'~').contains(b))
        {
            return Err(Malformed(
                "a chunk size is followed by something other than an extension",
            ));
        }
    }
    Ok(Some((end + 1, size)))
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(b) = this.whole.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if let (Some(u), Some(c)) = (this.upload.as_deref_mut(), this.conn.as_deref_mut()) {
            match c.poll_write_request(Some(u), cx) {
                Poll::Ready(Ok(())) => this.upload = None,
                // The upstream stopped reading: read the rest of its
                // answer, and then close the connection.
                Poll::Ready(Err(UploadError::Write(_))) => {
                    this.upload = None;
                    this.keep_alive = false;
                }
                Poll::Ready(Err(UploadError::Client(e))) => return this.fail(e.to_string()),
                Poll::Pending => {}
            }
        }
        loop {
            let Some(c) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) => {
                    if !c.read.is_empty() {
                        let (data, left) = take(&mut c.read, left);
                        if left == 0 {
                            this.finish();
                        } else {
                            this.state = State::Length(left);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::UntilClose => {
                    if !c.read.is_empty() {
                        let data = c.read.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Chunked(Chunk::Size) => match chunk_size(&c.read) {
                    Err(m) => return this.fail(m.0.into()),
                    Ok(Some((line, 0))) => {
                        c.read.advance(line);
                        this.state = State::Chunked(Chunk::Trailers);
                        continue;
                    }
                    Ok(Some((line, size))) => {
                        c.read.advance(line);
                        this.state = State::Chunked(Chunk::Data(size));
                        continue;
                    }
                    Ok(None) => {}
                },
                State::Chunked(Chunk::Data(left)) => {
                    if !c.read.is_empty() {
                        let (data, left) = take(&mut c.read, left);
                        this.state = State::Chunked(if left == 0 {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(left)
                        });
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Chunked(Chunk::DataEnd) => {
                    if c.read.len() >= 2 {
                        if &c.read[..2] != b"\r\n" {
                            return this.fail("a chunk is longer than its size".into());
                        }
                        c.read.advance(2);
                        this.state = State::Chunked(Chunk::Size);
                        continue;
                    }
                }
                State::Chunked(Chunk::Trailers) => match trailers(&mut c.read) {
                    Err(m) => return this.fail(m.0.into()),
                    Ok(Some(t)) => {
                        this.finish();
                        return Poll::Ready(t.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(None) => {}
                },
            }
            // More bytes needed.
            let c = this.conn.as_mut().expect("checked above");
            if c.read.len() >= MAX_HEAD {
                return this.fail("the chunk trailers are too large".into());
            }
            let want = match this.state {
                State::Length(left) | State::Chunked(Chunk::Data(left)) => left,
                _ => 0,
            };
            match poll_fill(c, want, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    if this.state == State::UntilClose {
                        this.state = State::Done;
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                    return this.fail("the upstream closed the connection mid-body".into());
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(format!("reading the response body: {e}")),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.whole.is_none() && self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.whole, self.state) {
            (Some(b), _) => SizeHint::with_exact(b.len() as u64),
            (None, State::Length(n)) => SizeHint::with_exact(n),
            (None, State::Done) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// The trailer section after the last chunk, consumed when complete:
/// `Some(None)` when it is empty.
fn trailers(buf: &mut BytesMut) -> Result<Option<Option<HeaderMap>>, Malformed> {
    if buf.starts_with(b"\r\n") {
        buf.advance(2);
        return Ok(Some(None));
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (len, map) = match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete((len, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for f in fields {
                let name = HeaderName::from_bytes(f.name.as_bytes())
                    .map_err(|_| Malformed("a trailer field name is not a token"))?;
                let value = HeaderValue::from_bytes(f.value)
                    .map_err(|_| Malformed("a trailer field value has a control character"))?;
                map.append(name, value);
            }
            (len, map)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Malformed("the chunk trailers are malformed")),
    };
    buf.advance(len);
    Ok(Some(Some(map)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> Result<Option<(StatusCode, Framing, bool)>, &'static str> {
        let mut buf = BytesMut::from(bytes);
        match parse_head(&mut buf, false) {
            Ok(Some(Parsed::Final(p, f, k))) => Ok(Some((p.status, f, k))),
            Ok(Some(Parsed::Interim)) => Err("interim"),
            Ok(None) => Ok(None),
            Err(m) => Err(m.0),
        }
    }

    #[test]
    fn framing_is_read_exactly_or_refused() {
        let ok = |b: &[u8]| head(b).unwrap().unwrap();
        assert_eq!(
            ok(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            (StatusCode::OK, Framing::Length(5), true)
        );
        assert_eq!(
            ok(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n").1,
            Framing::Length(5)
        );
        assert_eq!(
            ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n").1,
            Framing::Chunked
        );
        assert_eq!(
            ok(b"HTTP/1.0 200 OK\r\n\r\n"),
            (StatusCode::OK, Framing::UntilClose, false)
        );
        assert!(!ok(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n").2);
        assert!(ok(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n").2);
        assert!(
            !ok(b"HTTP/1.1 200 OK\r\nconnection: upgrade, Close\r\ncontent-length: 1\r\n\r\n").2
        );
        assert_eq!(ok(b"HTTP/1.1 204 No Content\r\n\r\n").1, Framing::Empty);
        assert_eq!(head(b"HTTP/1.1 200 OK\r\ncontent-le"), Ok(None));
        for (bad, why) in [
            (&b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"[..], "differ"),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n", "differ"),
            (b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", "not a number"),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n", "not a number"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", "other than chunked"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n", "other than chunked"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n", "both"),
            (b"HTTP/1.1 200 OK\r\nx: a\r\n b\r\n\r\n", "folded"),
            (b"HTTP/1.1 200 OK\r\nx : a\r\n\r\n", "folded"),
            (b"HTTP/1.1 20 OK\r\n\r\n", "status line"),
            (b"HTTP/2.0 200 OK\r\n\r\n", "not HTTP/1"),
            (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "switched"),
        ] {
            let e = head(bad).unwrap_err();
            assert!(e.contains(why), "{}: {e}", String::from_utf8_lossy(bad));
        }
        assert_eq!(head(b"HTTP/1.1 100 Continue\r\n\r\n"), Err("interim"));
    }

    #[test]
    fn chunk_sizes_are_hex_with_clean_extensions() {
        assert_eq!(chunk_size(b"1f\r\n").unwrap(), Some((4, 31)));
        assert_eq!(chunk_size(b"5;a=b\r\n").unwrap(), Some((7, 5)));
        assert_eq!(chunk_size(b"5 ; a=\"b;c\"\r\n").unwrap(), Some((13, 5)));
        assert_eq!(
            chunk_size(b"ffffffffffffffff\r\n").unwrap(),
            Some((18, u64::MAX))
        );
        assert_eq!(chunk_size(b"5").unwrap(), None);
        for bad in [
            &b"fffffffffffffffff\r\n"[..],
            b"\r\n",
            b"zz\r\n",
            b"-5\r\n",
            b"5\n",
            b"5;a\x01\r\n",
            b"5 6\r\n",
            b"0x5\r\n",
        ] {
            assert!(
                chunk_size(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(chunk_size(&[b'a'; 5000]).is_err());
    }

    #[test]
    fn a_bodiless_request_head_is_written_as_is_without_transfer_encoding() {
        let req = Request::builder()
            .method("DELETE")
            .uri("/a?b=1")
            .header("host", "app")
            .header("x-two", "1")
            .header("x-two", "2")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        let mut out = Vec::new();
        encode_head(&mut out, &req, false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "DELETE /a?b=1 HTTP/1.1\r\nhost: app\r\nx-two: 1\r\nx-two: 2\r\n\r\n"
        );
    }

    #[test]
    fn a_chunked_request_head_says_so_once_and_carries_no_length() {
        let req = Request::builder()
            .method("POST")
            .uri("/up")
            .header("host", "app")
            .header("content-length", "5, 5")
            .header("transfer-encoding", "gzip")
            .body(())
            .unwrap();
        let mut out = Vec::new();
        encode_head(&mut out, &req, true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /up HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let mut line = Vec::new();
        for n in [0usize, 1, 15, 16, 255, 65536, usize::MAX] {
            line.clear();
            push_hex_line(&mut line, n);
            assert_eq!(line, format!("{n:x}\r\n").into_bytes());
        }
    }
}
