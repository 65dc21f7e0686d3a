//! Per-colour request statistics over a sliding window, cheap enough for the hot
//! path: recording a request is a handful of relaxed atomic increments, with no
//! lock, no allocation and no clock read beyond the latency measurement.
//!
//! The window is a ring of slots. A ticker (see [`Stats::rotate`]) advances the
//! current slot every `window / SLOTS`, zeroing the slot it moves into, so a
//! reader summing all slots sees the last `window` of traffic.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crate::Colour;

/// Number of slots a window is divided into.
pub const SLOTS: usize = 100;
/// Number of latency histogram bins (log-linear, 8 per power of two, in µs).
const BINS: usize = 256;

/// Outcome of one proxied request, as analysis sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with a status below 500.
    Ok,
    /// The upstream answered 5xx.
    ServerError,
    /// No usable answer: connect failure, reset, timeout, or a response
    /// that broke off mid-body.
    TransportFailure,
    /// The client got its request wrong or went away (bad body framing,
    /// aborted or slow upload, too large, disconnect). Counted on its own,
    /// never as a request of the colour: a client cannot sway analysis.
    ClientError,
}

struct Slot {
    requests: AtomicU64,
    server_errors: AtomicU64,
    transport_failures: AtomicU64,
    latency: Histogram,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            requests: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            transport_failures: AtomicU64::new(0),
            latency: Histogram::new(),
        }
    }

    fn clear(&self) {
        self.requests.store(0, Relaxed);
        self.server_errors.store(0, Relaxed);
        self.transport_failures.store(0, Relaxed);
        self.latency.clear();
    }
}

struct Histogram {
    bins: Box<[AtomicU32]>,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            bins: (0..BINS).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn clear(&self) {
        for b in self.bins.iter() {
            b.store(0, Relaxed);
        }
    }

    fn record(&self, micros: u64) {
        self.bins[bin_of(micros)].fetch_add(1, Relaxed);
    }
}

/// Log-linear bin of a latency in microseconds: exact below 16 µs, then 8
/// sub-bins per power of two (≤ 12.5% relative error).
fn bin_of(v: u64) -> usize {
    if v < 16 {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros() as usize; // ≥ 4
    let sub = ((v >> (exp - 3)) & 7) as usize;
    (16 + (exp - 4) * 8 + sub).min(BINS - 1)
}

/// Upper bound (µs) of a bin, used as the value a percentile reports.
fn bin_upper(bin: usize) -> u64 {
    if bin < 16 {
        return bin as u64;
    }
    let exp = (bin - 16) / 8 + 4;
    let sub = ((bin - 16) % 8) as u64;
    ((8 + sub + 1) << (exp - 3)) - 1
}

/// Counters and histograms for one colour.
pub struct ColourStats {
    slots: Box<[Slot]>,
    current: AtomicUsize,
    consecutive_failures: AtomicU64,
    total_requests: AtomicU64,
    total_server_errors: AtomicU64,
    total_transport_failures: AtomicU64,
    total_latency: Histogram,
    total_latency_sum_us: AtomicU64,
    total_client_errors: AtomicU64,
}

impl ColourStats {
    fn new() -> ColourStats {
        ColourStats {
            slots: (0..SLOTS).map(|_| Slot::new()).collect(),
            current: AtomicUsize::new(0),
            consecutive_failures: AtomicU64::new(0),
            total_requests: AtomicU64::new(0),
            total_server_errors: AtomicU64::new(0),
            total_transport_failures: AtomicU64::new(0),
            total_latency: Histogram::new(),
            total_latency_sum_us: AtomicU64::new(0),
            total_client_errors: AtomicU64::new(0),
        }
    }

    /// Records one request. Called once per proxied request, when its
    /// response is complete or when it fails; `latency` is the time to the
    /// response headers.
    pub fn record(&self, outcome: Outcome, latency: Duration) {
        if outcome == Outcome::ClientError {
            self.total_client_errors.fetch_add(1, Relaxed);
            return;
        }
        let micros = latency.as_micros().min(u64::MAX as u128) as u64;
        let slot = &self.slots[self.current.load(Relaxed)];
        slot.requests.fetch_add(1, Relaxed);
        slot.latency.record(micros);
        self.total_requests.fetch_add(1, Relaxed);
        self.total_latency.record(micros);
        self.total_latency_sum_us.fetch_add(micros, Relaxed);
        match outcome {
            Outcome::Ok => {
                if self.consecutive_failures.load(Relaxed) != 0 {
                    self.consecutive_failures.store(0, Relaxed);
                }
            }
            Outcome::ServerError => {
                slot.server_errors.fetch_add(1, Relaxed);
                self.total_server_errors.fetch_add(1, Relaxed);
                self.consecutive_failures.fetch_add(1, Relaxed);
            }
            Outcome::TransportFailure => {
                slot.transport_failures.fetch_add(1, Relaxed);
                self.total_transport_failures.fetch_add(1, Relaxed);
                self.consecutive_failures.fetch_add(1, Relaxed);
            }
            Outcome::ClientError => {}
        }
    }

    /// Sums the window.
    pub fn window(&self) -> WindowStats {
        let mut w = WindowStats {
            consecutive_failures: self.consecutive_failures.load(Relaxed),
            ..WindowStats::default()
        };
        let mut bins = [0u64; BINS];
        for slot in self.slots.iter() {
            w.requests += slot.requests.load(Relaxed);
            w.server_errors += slot.server_errors.load(Relaxed);
            w.transport_failures += slot.transport_failures.load(Relaxed);
            for (acc, b) in bins.iter_mut().zip(slot.latency.bins.iter()) {
                *acc += u64::from(b.load(Relaxed));
            }
        }
        let n: u64 = bins.iter().sum();
        w.p50 = percentile(&bins, n, 0.50);
        w.p99 = percentile(&bins, n, 0.99);
        w
    }

    /// Lifetime totals, for Prometheus.
    pub fn totals(&self) -> Totals {
        Totals {
            requests: self.total_requests.load(Relaxed),
            server_errors: self.total_server_errors.load(Relaxed),
            transport_failures: self.total_transport_failures.load(Relaxed),
            latency_sum: Duration::from_micros(self.total_latency_sum_us.load(Relaxed)),
            client_errors: self.total_client_errors.load(Relaxed),
        }
    }

    /// Lifetime count of requests with latency ≤ `le`, for Prometheus buckets.
    pub fn count_at_or_below(&self, le: Duration) -> u64 {
        let le = le.as_micros() as u64;
        self.total_latency
            .bins
            .iter()
            .enumerate()
            .take_while(|(i, _)| bin_upper(*i) <= le)
            .map(|(_, b)| u64::from(b.load(Relaxed)))
            .sum()
    }

    fn rotate(&self) {
        let next = (self.current.load(Relaxed) + 1) % SLOTS;
        self.slots[next].clear();
        self.current.store(next, Relaxed);
    }

    fn reset_window(&self) {
        for s in self.slots.iter() {
            s.clear();
        }
        self.consecutive_failures.store(0, Relaxed);
    }
}

fn percentile(bins: &[u64; BINS], n: u64, q: f64) -> Option<Duration> {
    if n == 0 {
        return None;
    }
    let rank = ((n as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in bins.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(Duration::from_micros(bin_upper(i)));
        }
    }
    None
}

/// What a colour did in the last window.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct WindowStats {
    pub requests: u64,
    pub server_errors: u64,
    pub transport_failures: u64,
    /// Failures in a row, across windows; reset by any success.
    pub consecutive_failures: u64,
    #[serde(serialize_with = "ser_opt_ms")]
    pub p50: Option<Duration>,
    #[serde(serialize_with = "ser_opt_ms")]
    pub p99: Option<Duration>,
}

fn ser_opt_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64() * 1000.0),
        None => s.serialize_none(),
    }
}

impl WindowStats {
    /// Failures (5xx + transport) per request; 0 with no requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            (self.server_errors + self.transport_failures) as f64 / self.requests as f64
        }
    }
}

/// Lifetime counters of a colour.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub requests: u64,
    pub server_errors: u64,
    pub transport_failures: u64,
    pub latency_sum: Duration,
    /// Requests the client broke off or got wrong; not in `requests`.
    pub client_errors: u64,
}

/// Statistics of both colours, and the slot length of their windows.
pub struct Stats {
    colours: [ColourStats; 2],
    slot: Duration,
}

impl Stats {
    /// Stats whose window covers `window`.
    pub fn new(window: Duration) -> Stats {
        Stats {
            colours: [ColourStats::new(), ColourStats::new()],
            slot: (window / SLOTS as u32).max(Duration::from_millis(1)),
        }
    }

    pub fn colour(&self, c: Colour) -> &ColourStats {
        &self.colours[c.index()]
    }

    /// How often [`Stats::rotate`] must be called.
    pub fn slot_length(&self) -> Duration {
        self.slot
    }

    /// Advances both windows by one slot. Called by the data plane's ticker.
    pub fn rotate(&self) {
        for c in &self.colours {
            c.rotate();
        }
    }

    /// Forgets a colour's window (after a rollback, so the next judgement
    /// starts from fresh traffic). Lifetime totals are kept.
    pub fn reset_window(&self, c: Colour) {
        self.colours[c.index()].reset_window();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_monotonic_and_bounded() {
        let mut last = 0;
        for v in [0u64, 1, 15, 16, 17, 100, 1000, 12_345, 1_000_000, u64::MAX] {
            let b = bin_of(v);
            assert!(b >= last && b < BINS);
            if v < (1 << 30) {
                assert!(
                    bin_upper(b) >= v,
                    "{v} in bin {b} with upper {}",
                    bin_upper(b)
                );
                assert!(bin_upper(b) as f64 <= v as f64 * 1.13 + 1.0);
            }
            last = b;
        }
    }

    #[test]
    fn window_counts_and_percentiles() {
        let s = Stats::new(Duration::from_secs(10));
        let g = s.colour(Colour::Green);
        for i in 0..99 {
            g.record(Outcome::Ok, Duration::from_millis(1 + i % 3));
        }
        g.record(Outcome::ServerError, Duration::from_millis(500));
        let w = g.window();
        assert_eq!(w.requests, 100);
        assert_eq!(w.server_errors, 1);
        assert_eq!(w.consecutive_failures, 1);
        assert!((w.error_rate() - 0.01).abs() < 1e-9);
        assert!(w.p50.unwrap() >= Duration::from_millis(2));
        assert!(w.p50.unwrap() < Duration::from_millis(3));
        assert!(w.p99.unwrap() < Duration::from_millis(4));
        g.record(Outcome::Ok, Duration::from_millis(1));
        assert_eq!(g.window().consecutive_failures, 0);
        // A client's error is counted apart and breaks no run of failures.
        g.record(Outcome::ClientError, Duration::ZERO);
        assert_eq!(g.window().requests, 101);
        assert_eq!(g.totals().client_errors, 1);
        // Rotating SLOTS times empties the window but keeps totals.
        for _ in 0..SLOTS {
            s.rotate();
        }
        assert_eq!(g.window().requests, 0);
        assert_eq!(g.totals().requests, 101);
        assert_eq!(g.totals().client_errors, 1);
        assert_eq!(s.colour(Colour::Blue).totals().requests, 0);
    }
}
