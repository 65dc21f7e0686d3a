//! The response body the proxy hands to clients: an upstream's body streamed
//! through (returning the connection to its pool at the end), or a short
//! body of switchyard's own (errors).

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::pool::Upstream;

/// A request body sent upstream: the client's, streamed, or none (a replayed
/// bodiless request).
pub(crate) enum RequestBody {
    Client(Incoming),
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Client(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(b) => b.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(b) => b.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A response body from the proxy.
pub struct ProxyBody {
    kind: Kind,
}

enum Kind {
    Upstream {
        body: Incoming,
        /// The connection the body arrives on, returned to the pool once the
        /// body has been read to its end.
        conn: Option<(SendRequest<RequestBody>, Arc<Upstream>)>,
    },
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub(crate) fn upstream(
        body: Incoming,
        conn: Option<(SendRequest<RequestBody>, Arc<Upstream>)>,
    ) -> ProxyBody {
        let mut kind = Kind::Upstream { body, conn };
        if let Kind::Upstream { body, conn } = &mut kind {
            if body.is_end_stream() {
                // Never polled by the server: return the connection now.
                if let Some((tx, up)) = conn.take() {
                    up.checkin(tx);
                }
            }
        }
        ProxyBody { kind }
    }

    /// A complete body of switchyard's own.
    pub fn full(b: impl Into<Bytes>) -> ProxyBody {
        ProxyBody {
            kind: Kind::Full(Some(b.into())),
        }
    }

    /// An empty body.
    pub fn empty() -> ProxyBody {
        ProxyBody {
            kind: Kind::Full(None),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream { body, conn } => {
                let r = Pin::new(&mut *body).poll_frame(cx);
                // Servers stop polling once a Content-Length body is complete,
                // so look for the end after every frame, not only at `None`.
                let done = match &r {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    Poll::Ready(Some(Err(_))) => {
                        conn.take();
                        false
                    }
                    Poll::Pending => false,
                };
                if done {
                    if let Some((tx, up)) = conn.take() {
                        up.checkin(tx);
                    }
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream { body, .. } => body.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // A body dropped after its last byte still leaves a reusable connection.
        if let Kind::Upstream { body, conn } = &mut self.kind {
            if body.is_end_stream() {
                if let Some((tx, up)) = conn.take() {
                    up.checkin(tx);
                }
            }
        }
    }
}
