//! What the proxy knows of gRPC: which responses are failures (the status
//! travels in `grpc-status`, in the trailers or in a trailers-only
//! response, while the HTTP status stays 200), the answer switchyard gives a
//! gRPC client when no upstream answered, and the `grpc.health.v1` check.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};

pub(crate) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// gRPC status codes switchyard itself answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    Cancelled = 1,
    DeadlineExceeded = 4,
    ResourceExhausted = 8,
    Internal = 13,
    Unavailable = 14,
}

/// Whether a request is a gRPC call (`content-type: application/grpc`,
/// with or without a `+proto`-style suffix).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Whether `headers` (trailers, or a trailers-only response) carry a
/// `grpc-status` that is the server's fault: the codes the gRPC HTTP mapping
/// puts beside 5xx — UNKNOWN (2), DEADLINE_EXCEEDED (4), UNIMPLEMENTED (12),
/// INTERNAL (13), UNAVAILABLE (14) and DATA_LOSS (15). Client mistakes
/// (INVALID_ARGUMENT, NOT_FOUND, ...) are not held against the upstream,
/// as a 4xx is not.
pub(crate) fn is_server_failure(headers: &HeaderMap) -> bool {
    let Some(v) = headers.get(&GRPC_STATUS) else {
        return false;
    };
    matches!(v.as_bytes(), b"2" | b"4" | b"12" | b"13" | b"14" | b"15")
}

/// Sets a trailers-only gRPC answer on `headers`: HTTP 200 is the caller's
/// part, `grpc-status` and `grpc-message` (percent-encoded as the gRPC
/// protocol asks) are set here.
pub(crate) fn set_status(headers: &mut HeaderMap, code: Code, message: &str) {
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(&GRPC_STATUS, HeaderValue::from(code as u16));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message.trim_end())) {
        headers.insert(&GRPC_MESSAGE, v);
    }
}

/// gRPC's `grpc-message` encoding: printable ASCII but `%` as is, every
/// other byte as `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `grpc.health.v1.Health/Check` request body for `service`: one
/// uncompressed length-prefixed message holding `HealthCheckRequest`
/// (field 1, the service name).
pub(crate) fn health_request(service: &str) -> Bytes {
    let mut msg = BytesMut::new();
    if !service.is_empty() {
        msg.put_u8(0x0a);
        put_varint(&mut msg, service.len() as u64);
        msg.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(5 + msg.len());
    framed.put_u8(0);
    framed.put_u32(msg.len() as u32);
    framed.put_slice(&msg);
    framed.freeze()
}

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// The serving status in a `HealthCheckResponse` body (one length-prefixed
/// message; field 1 is the status enum: 0 UNKNOWN, 1 SERVING, 2 NOT_SERVING,
/// 3 SERVICE_UNKNOWN). A message without the field is UNKNOWN (proto3
/// default).
pub(crate) fn health_status(body: &[u8]) -> Result<u64, String> {
    let [flags, a, b, c, d, msg @ ..] = body else {
        return Err(format!(
            "the health response is {} bytes, not a gRPC message",
            body.len()
        ));
    };
    if *flags != 0 {
        return Err("the health response is compressed; switchyard asks for none".into());
    }
    let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    let msg = msg
        .get(..len)
        .ok_or("the health response is shorter than its length prefix")?;
    let mut i = 0;
    let mut status = 0;
    while i < msg.len() {
        let (key, n) = varint(&msg[i..])?;
        i += n;
        match (key >> 3, key & 7) {
            (1, 0) => {
                let (v, n) = varint(&msg[i..])?;
                status = v;
                i += n;
            }
            (_, 0) => i += varint(&msg[i..])?.1,
            (_, 2) => {
                let (l, n) = varint(&msg[i..])?;
                i += n + l as usize;
            }
            (_, 1) => i += 8,
            (_, 5) => i += 4,
            (f, w) => {
                return Err(format!(
                    "field {f} has wire type {w}, which protobuf does not have"
                ))
            }
        }
    }
    Ok(status)
}

fn varint(b: &[u8]) -> Result<(u64, usize), String> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    Err("the health response holds a broken varint".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_messages_encode_and_decode() {
        assert_eq!(&health_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(&health_request("orders")[..], b"\0\0\0\0\x08\x0a\x06orders");
        assert_eq!(health_status(&[0, 0, 0, 0, 2, 0x08, 1]), Ok(1));
        assert_eq!(health_status(&[0, 0, 0, 0, 2, 0x08, 2]), Ok(2));
        // proto3: a missing field is its default, UNKNOWN.
        assert_eq!(health_status(&[0, 0, 0, 0, 0]), Ok(0));
        assert!(health_status(&[0, 0, 0]).is_err());
        assert!(health_status(&[0, 0, 0, 0, 9, 0x08]).is_err());
        assert!(health_status(&[1, 0, 0, 0, 2, 0x08, 1]).is_err());
    }

    #[test]
    fn only_the_server_side_codes_are_failures() {
        let with = |code: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(&GRPC_STATUS, HeaderValue::from_static(code));
            is_server_failure(&h)
        };
        for code in ["2", "4", "12", "13", "14", "15"] {
            assert!(with(code), "{code}");
        }
        for code in ["0", "1", "3", "5", "7", "16", "140", ""] {
            assert!(!with(code), "{code}");
        }
        assert!(!is_server_failure(&HeaderMap::new()));
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(
            percent_encode("no upstream: 100%\n"),
            "no upstream: 100%25%0A"
        );
        let mut h = HeaderMap::new();
        set_status(&mut h, Code::Unavailable, "switchyard: down\n");
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h["grpc-message"], "switchyard: down");
        assert_eq!(h["content-type"], "application/grpc");
    }
}
