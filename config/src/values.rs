//! Value types shared by the schema: durations, percentages, addresses, and the
//! serde helpers that parse them (after `${ENV}` interpolation) so that errors
//! carry the value's location.

use serde::de::{Deserializer, Error};
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// Parses `"250ms"`, `"30s"`, `"1.5s"`, `"2m"`, `"1h"`, `"1m30s"`, `"0"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let hint = "expected a duration such as \"250ms\", \"30s\", \"1m30s\" or \"1h\"";
    if s.is_empty() {
        return Err(format!("empty duration: {hint}"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s:?} has no unit: {hint}"))?;
        if num_len == 0 {
            return Err(format!("{s:?} is not a duration: {hint}"));
        }
        let n: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("{s:?} is not a duration: {hint}"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "us" | "µs" => 0.000_001,
            other => return Err(format!("unknown unit {other:?} in {s:?}: {hint}")),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    // Found by the config property test: "99999999999999999999s" panicked.
    Duration::try_from_secs_f64(total)
        .map_err(|_| format!("{s:?} is longer than any duration switchyard can wait: {hint}"))
}

/// Formats a duration the way the config accepts it back ("1.5s", "250ms", "2m").
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 && !d.is_zero() {
        format!("{}us", d.as_micros())
    } else if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// Parses a size in bytes: `"65536"`, `"64KiB"`, `"1MiB"`, `"10MB"`, `"512k"`.
/// `KiB`/`MiB`/`GiB` and nginx's `k`/`m`/`g` are powers of 1024; `KB`/`MB`/`GB`
/// powers of 1000.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let hint = "expected a size such as \"64KiB\", \"1MiB\", \"10MB\" or a number of bytes";
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return Err(format!("{s:?} is not a size: {hint}"));
    }
    let n: u64 = s[..digits]
        .parse()
        .map_err(|_| format!("{s:?} is too large: {hint}"))?;
    let scale: u64 = match s[digits..].trim() {
        "" | "B" | "b" => 1,
        "KiB" | "k" | "K" => 1 << 10,
        "MiB" | "m" | "M" => 1 << 20,
        "GiB" | "g" | "G" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("unknown unit {other:?} in {s:?}: {hint}")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large: {hint}"))
}

/// A size as a TOML string (`"64KiB"`) or integer (bytes).
fn size_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Str(String),
    }
    match Raw::deserialize(d)
        .map_err(|_| D::Error::custom("expected a size such as \"64KiB\" or a number of bytes"))?
    {
        Raw::Int(n) => u64::try_from(n)
            .map(Some)
            .map_err(|_| D::Error::custom(format!("{n} is negative: expected a size in bytes"))),
        Raw::Str(s) => {
            let s = crate::interpolate::interpolate(&s).map_err(D::Error::custom)?;
            if s.trim().is_empty() {
                return Ok(None);
            }
            parse_size(&s).map(Some).map_err(D::Error::custom)
        }
    }
}

/// `max_header_size`: from 8 KiB (hyper's smallest read buffer) to 64 MiB.
pub(crate) fn header_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match size_value(d)? {
        Some(n) if (8192..=64 << 20).contains(&n) => Ok(n as usize),
        Some(n) => Err(D::Error::custom(format!(
            "{n} bytes is out of range: expected from \"8KiB\" to \"64MiB\" (the default is \"64KiB\")"
        ))),
        None => Err(D::Error::custom(
            "must not be empty: set a size such as \"64KiB\"",
        )),
    }
}

/// An optional size: `""` means unlimited.
pub(crate) fn opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match size_value(d)? {
        Some(0) => Err(D::Error::custom(
            "must be greater than zero: write \"\" for unlimited, or a size such as \"10MiB\"",
        )),
        v => Ok(v),
    }
}

/// A whole number of at least 1.
pub(crate) fn positive_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    u32::try_from(v).ok().filter(|v| *v > 0).ok_or_else(|| {
        D::Error::custom(format!(
            "{v} is out of range: expected a whole number from 1 to {}",
            u32::MAX
        ))
    })
}

/// A string value after `${ENV}` interpolation.
pub(crate) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let raw = String::deserialize(d)?;
    crate::interpolate::interpolate(&raw).map_err(D::Error::custom)
}

pub(crate) fn non_empty_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = string(d)?;
    if s.trim().is_empty() {
        return Err(D::Error::custom(
            "must not be empty: set a value (an environment variable such as \"${SWITCHYARD_TOKEN}\" works)",
        ));
    }
    Ok(s)
}

pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_duration(&string(d)?).map_err(D::Error::custom)
}

pub(crate) fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = duration(d)?;
    if v.is_zero() {
        return Err(D::Error::custom("must be greater than zero, e.g. \"1s\""));
    }
    Ok(v)
}

pub(crate) fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

pub(crate) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = string(d)?;
    s.parse().map_err(|_| {
        D::Error::custom(format!(
            "{s:?} is not a listen address: expected IP:PORT such as \"127.0.0.1:8080\" or \"[::1]:8080\""
        ))
    })
}

pub(crate) fn ratio<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if !(0.0..=1.0).contains(&v) {
        return Err(D::Error::custom(format!(
            "{v} is out of range: expected a fraction from 0.0 to 1.0 (0.05 means 5%)"
        )));
    }
    Ok(v)
}

pub(crate) fn opt_ratio<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    ratio(d).map(Some)
}

pub(crate) fn opt_factor<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let v = f64::deserialize(d)?;
    if !(v >= 1.0 && v.is_finite()) {
        return Err(D::Error::custom(format!(
            "{v} is out of range: expected a factor of at least 1.0 (1.5 means 50% slower)"
        )));
    }
    Ok(Some(v))
}

/// A green percentage 0..=100 (fractions allowed down to 0.01) as basis points.
pub fn percent_to_basis_points(v: f64) -> Result<u32, String> {
    if !(0.0..=100.0).contains(&v) || !v.is_finite() {
        return Err(format!(
            "{v} is out of range: expected a percentage from 0 to 100"
        ));
    }
    Ok((v * 100.0).round() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("99999999999999999999s")
            .unwrap_err()
            .contains("longer than any duration"));
        assert!(parse_duration(&format!("{}h", "9".repeat(400))).is_err());
        assert_eq!(
            format_duration(Duration::from_secs(90)),
            "1.5m".replace("1.5m", "90s")
        );
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("512k").unwrap(), 512 * 1024);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_size("5 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_size("99999999999999999999").is_err());
    }

    #[test]
    fn percentages_become_basis_points() {
        assert_eq!(percent_to_basis_points(25.0).unwrap(), 2500);
        assert_eq!(percent_to_basis_points(0.5).unwrap(), 50);
        assert!(percent_to_basis_points(150.0).is_err());
        assert!(percent_to_basis_points(-1.0).is_err());
    }
}
