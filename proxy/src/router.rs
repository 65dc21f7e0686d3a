//! Picks the colour of each request: the override header, then stickiness
//! (`hash`, `cookie` or `none`), then the weight.
//!
//! Every request maps to a bucket in 0..10000 and goes green iff
//! `bucket < green_weight_bp`. A key's bucket never changes, so raising the
//! green weight only moves users from blue to green, and every switchyard
//! instance agrees without shared state.

use http::header::{HeaderName, COOKIE};
use http::HeaderMap;
use std::net::IpAddr;
use switchyard_config::{ProxyConfig, StickyKey, StickyMode};

use crate::Colour;

/// Number of buckets; weights are in basis points of this range.
pub const BUCKETS: u32 = 10_000;

/// Routing rules that come from the configuration (not the weights).
#[derive(Debug, Clone)]
pub struct RouterConfig {
    sticky: StickyMode,
    key: Key,
    cookie_name: String,
    override_header: Option<HeaderName>,
}

#[derive(Debug, Clone)]
enum Key {
    Cookie(String),
    Header(HeaderName),
    ClientIp,
}

/// The colour picked for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub colour: Colour,
    /// In cookie mode, a new bucket to hand to the client in `Set-Cookie`.
    pub set_cookie: Option<u32>,
    /// Pinned by the override header: kept out of the colour's statistics,
    /// so testers' traffic never sways analysis.
    pub pinned: bool,
}

impl RouterConfig {
    /// Builds routing rules from `[proxy]`. Header names were validated by the
    /// config crate; an invalid one is reported here with its field.
    pub fn from_config(p: &ProxyConfig) -> Result<RouterConfig, String> {
        let header = |field: &str, name: &str| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("proxy.{field}: {name:?} is not a valid HTTP header name"))
        };
        let key = match &p.sticky_key {
            StickyKey::Cookie(n) => Key::Cookie(n.clone()),
            StickyKey::Header(n) => Key::Header(header("sticky_key", n)?),
            StickyKey::ClientIp => Key::ClientIp,
        };
        let override_header = if p.override_header.is_empty() {
            None
        } else {
            Some(header("override_header", &p.override_header)?)
        };
        Ok(RouterConfig {
            sticky: p.sticky,
            key,
            cookie_name: p.cookie_name.clone(),
            override_header,
        })
    }

    /// The name of the stickiness cookie (cookie mode).
    pub fn cookie_name(&self) -> &str {
        &self.cookie_name
    }

    /// Chooses the colour of a request with these headers from this client,
    /// given the green weight in basis points.
    pub fn choose(&self, headers: &HeaderMap, client: IpAddr, green_bp: u32) -> Choice {
        if let Some(h) = &self.override_header {
            if let Some(c) = headers.get(h).and_then(|v| Colour::parse(v.as_bytes())) {
                return Choice {
                    colour: c,
                    set_cookie: None,
                    pinned: true,
                };
            }
        }
        // Fast paths: all traffic on one colour needs no key.
        if self.sticky != StickyMode::Cookie && (green_bp == 0 || green_bp >= BUCKETS) {
            return Choice {
                colour: if green_bp == 0 {
                    Colour::Blue
                } else {
                    Colour::Green
                },
                set_cookie: None,
                pinned: false,
            };
        }
        let (bucket, set_cookie) = match self.sticky {
            StickyMode::None => (random_bucket(), None),
            StickyMode::Hash => (self.hashed_bucket(headers, client), None),
            StickyMode::Cookie => match cookie(headers, &self.cookie_name).and_then(parse_bucket) {
                Some(b) => (b, None),
                None => {
                    let b = random_bucket();
                    (b, Some(b))
                }
            },
        };
        Choice {
            colour: if bucket < green_bp {
                Colour::Green
            } else {
                Colour::Blue
            },
            set_cookie,
            pinned: false,
        }
    }

    /// A 64-bit hash identifying the client for read-your-writes: its sticky
    /// key (cookie, header, or in cookie mode the bucket cookie), else its IP.
    pub fn client_key(&self, headers: &HeaderMap, client: IpAddr) -> u64 {
        let key = match (&self.sticky, &self.key) {
            (StickyMode::Cookie, _) => cookie(headers, &self.cookie_name),
            (_, Key::Cookie(name)) => cookie(headers, name),
            (_, Key::Header(name)) => headers.get(name).map(|v| v.as_bytes()),
            (_, Key::ClientIp) => None,
        };
        match key {
            Some(k) => hash64(k),
            None => match client {
                IpAddr::V4(v4) => hash64(&v4.octets()),
                IpAddr::V6(v6) => hash64(&v6.octets()),
            },
        }
    }

    fn hashed_bucket(&self, headers: &HeaderMap, client: IpAddr) -> u32 {
        match &self.key {
            Key::Cookie(name) => cookie(headers, name)
                .map(bucket_of)
                .unwrap_or_else(random_bucket),
            Key::Header(name) => headers
                .get(name)
                .map(|v| bucket_of(v.as_bytes()))
                .unwrap_or_else(random_bucket),
            Key::ClientIp => match client {
                IpAddr::V4(v4) => bucket_of(&v4.octets()),
                IpAddr::V6(v6) => bucket_of(&v6.octets()),
            },
        }
    }
}

/// The bucket of a sticky key: FNV-1a 64 finished with a murmur3 mix, so that
/// similar keys ("user1", "user2") spread evenly. Stable across versions and
/// instances: changing it would move users between colours.
pub fn bucket_of(key: &[u8]) -> u32 {
    (hash64(key) % u64::from(BUCKETS)) as u32
}

fn hash64(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

fn random_bucket() -> u32 {
    rand::random::<u32>() % BUCKETS
}

fn parse_bucket(v: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(v).ok()?;
    let b: u32 = s.parse().ok()?;
    (b < BUCKETS).then_some(b)
}

/// Finds cookie `name` in the request's `Cookie` headers, without allocating.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    for value in headers.get_all(COOKIE) {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let pair = trim(pair);
            if let Some(eq) = pair.iter().position(|&b| b == b'=') {
                if &pair[..eq] == name.as_bytes() {
                    let v = &pair[eq + 1..];
                    let v = v
                        .strip_prefix(b"\"")
                        .and_then(|v| v.strip_suffix(b"\""))
                        .unwrap_or(v);
                    return Some(v);
                }
            }
        }
    }
    None
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn router(sticky: StickyMode, key: StickyKey) -> RouterConfig {
        let p = ProxyConfig {
            sticky,
            sticky_key: key,
            override_header: "x-switchyard-colour".into(),
            ..ProxyConfig::default()
        };
        RouterConfig::from_config(&p).unwrap()
    }

    #[test]
    fn cookie_parsing() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; session=abc ;b=2"));
        h.append(COOKIE, HeaderValue::from_static("c=\"q\""));
        assert_eq!(cookie(&h, "session"), Some(&b"abc"[..]));
        assert_eq!(cookie(&h, "c"), Some(&b"q"[..]));
        assert_eq!(cookie(&h, "sess"), None);
    }

    #[test]
    fn buckets_spread_evenly() {
        let mut counts = [0u32; 10];
        for i in 0..100_000 {
            counts[(bucket_of(format!("user{i}").as_bytes()) / 1000) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn hash_stickiness_is_monotonic() {
        let r = router(StickyMode::Hash, StickyKey::Header("x-user".into()));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut green_before = std::collections::HashSet::new();
        for bp in (0..=BUCKETS).step_by(250) {
            let mut green_now = std::collections::HashSet::new();
            for i in 0..2000 {
                let mut h = HeaderMap::new();
                h.insert("x-user", HeaderValue::from_str(&format!("u{i}")).unwrap());
                if r.choose(&h, ip, bp).colour == Colour::Green {
                    green_now.insert(i);
                }
            }
            assert!(green_before.is_subset(&green_now));
            green_before = green_now;
        }
        assert_eq!(green_before.len(), 2000);
    }

    #[test]
    fn override_header_wins_and_cookie_mode_hands_out_a_bucket() {
        let r = router(StickyMode::Cookie, StickyKey::ClientIp);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-switchyard-colour", HeaderValue::from_static("green"));
        let pinned = r.choose(&h, ip, 0);
        assert_eq!(pinned.colour, Colour::Green);
        assert!(pinned.pinned);
        let c = r.choose(&HeaderMap::new(), ip, 5000);
        let b = c.set_cookie.expect("new client gets a bucket");
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_str(&format!("switchyard={b}")).unwrap(),
        );
        for _ in 0..10 {
            let again = r.choose(&h, ip, 5000);
            assert_eq!(again.colour, c.colour);
            assert_eq!(again.set_cookie, None);
        }
    }
}
