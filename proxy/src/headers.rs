//! Request and response header rewriting: hop-by-hop headers (RFC 9110 §7.6.1),
//! `X-Forwarded-For` / `X-Forwarded-Proto`, and `Host` for HTTP/2 clients.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that apply to one connection only and are never forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Whether the request asks for a protocol upgrade (WebSocket).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| contains_token(v.as_bytes(), b"upgrade"))
}

/// Whether the upgrade asked for is cleartext HTTP/2 (`Upgrade: h2c`). It
/// is never tunnelled: behind the tunnel a client could send requests the
/// proxy never sees. The request is forwarded as plain HTTP/1.1 instead
/// (`Upgrade` is hop-by-hop), which RFC 9110 §7.8 allows a server to do.
pub(crate) fn is_h2c_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| contains_token(v.as_bytes(), b"h2c"))
}

fn contains_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Index of `n` in the hop-by-hop list ([`HOP_BY_HOP`], then keep-alive and
/// proxy-connection), if it is one.
fn hop_by_hop_index(n: &HeaderName) -> Option<usize> {
    HOP_BY_HOP
        .iter()
        .position(|h| h == n)
        .or_else(|| (n == KEEP_ALIVE).then_some(HOP_BY_HOP.len()))
        .or_else(|| (n == PROXY_CONNECTION).then_some(HOP_BY_HOP.len() + 1))
}

fn hop_by_hop_name(i: usize) -> HeaderName {
    match i.checked_sub(HOP_BY_HOP.len()) {
        None => HOP_BY_HOP[i].clone(),
        Some(0) => KEEP_ALIVE.clone(),
        Some(_) => PROXY_CONNECTION.clone(),
    }
}

/// Removes hop-by-hop headers, including those named in `Connection`. With
/// `keep_upgrade`, `Upgrade` and `Connection: upgrade` survive (WebSocket).
///
/// Called twice per request (request and response), so it makes one pass
/// over the names, allocates nothing for the usual `Connection: keep-alive`,
/// and does nothing more when no header is hop-by-hop.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let mut present: u16 = 0;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // Headers named in `Connection` beyond the usual tokens (rare).
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"keep-alive")
                || token.eq_ignore_ascii_case(b"close")
                || token.eq_ignore_ascii_case(b"upgrade")
                || token.is_empty()
            {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(token) {
                named.push(n);
            }
        }
    }
    let upgrade = if keep_upgrade {
        headers.remove(header::UPGRADE)
    } else {
        None
    };
    for i in 0..HOP_BY_HOP.len() + 2 {
        if present & (1 << i) != 0 {
            headers.remove(hop_by_hop_name(i));
        }
    }
    for n in named {
        headers.remove(n);
    }
    if let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Appends the client address to `X-Forwarded-For` and sets
/// `X-Forwarded-Proto`. The values are prepared once per connection.
pub(crate) fn add_forwarded(headers: &mut HeaderMap, client: &HeaderValue, proto: &HeaderValue) {
    match headers.get_mut(&X_FORWARDED_FOR) {
        Some(existing) => {
            let mut v = Vec::with_capacity(existing.len() + 2 + client.len());
            v.extend_from_slice(existing.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(client.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                *existing = v;
            }
        }
        None => {
            headers.insert(X_FORWARDED_FOR.clone(), client.clone());
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), proto.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-app"));
    }

    #[test]
    fn upgrade_survives_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        let ip = HeaderValue::from_static("10.0.0.9");
        let proto = HeaderValue::from_static("https");
        add_forwarded(&mut h, &ip, &proto);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.9");
        add_forwarded(&mut h, &HeaderValue::from_static("127.0.0.1"), &proto);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.9, 127.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
    }
}
