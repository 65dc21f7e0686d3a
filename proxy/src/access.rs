//! The access log (`[log] access = true`, off by default): one line per
//! request, written when its response is done (or the client left), under
//! the tracing target `switchyard::access`: client address, method, target,
//! status, the colour and upstream that answered, seconds from arrival to
//! the last byte, response body bytes, and whether the body was complete.
//! Nothing here runs, allocates or formats while the log is off.

use http::{Method, StatusCode};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::pool::Upstream;
use crate::Colour;

/// Who answered a request: put in the response's extensions by the router,
/// only while the access log is on, and taken out by [`AccessLine::served`].
#[derive(Clone)]
pub(crate) struct Served {
    pub colour: Colour,
    /// `None`: switchyard answered itself (a 502 when no upstream could be
    /// reached, a refusal).
    pub upstream: Option<Arc<Upstream>>,
}

/// One request's line, written when dropped (with the response body).
pub(crate) struct AccessLine {
    client: IpAddr,
    method: Method,
    target: String,
    started: Instant,
    status: StatusCode,
    served: Option<Served>,
    pub(crate) bytes: u64,
    pub(crate) complete: bool,
}

impl AccessLine {
    /// Starts the line of a request as it arrives.
    pub(crate) fn begin<B>(req: &http::Request<B>, client: IpAddr) -> AccessLine {
        AccessLine {
            client,
            method: req.method().clone(),
            target: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            started: Instant::now(),
            status: StatusCode::OK,
            served: None,
            bytes: 0,
            complete: false,
        }
    }

    /// The response's status and who served it.
    pub(crate) fn served(&mut self, status: StatusCode, served: Option<Served>) {
        self.status = status;
        self.served = served;
    }
}

impl Drop for AccessLine {
    fn drop(&mut self) {
        let colour = self
            .served
            .as_ref()
            .map(|s| s.colour.as_str())
            .unwrap_or("-");
        let upstream = self
            .served
            .as_ref()
            .and_then(|s| s.upstream.as_ref())
            .map(|u| u.name.as_str())
            .unwrap_or("-");
        tracing::info!(
            target: "switchyard::access",
            client = %self.client,
            method = self.method.as_str(),
            uri = self.target.as_str(),
            status = self.status.as_u16(),
            colour,
            upstream,
            seconds = self.started.elapsed().as_secs_f64(),
            bytes = self.bytes,
            complete = self.complete,
            "request"
        );
    }
}
