//! Consul's duration syntax (Go's `time.ParseDuration`): a sequence of
//! decimal numbers with units, `"72h"`, `"1h30m"`, `"1.5s"`, `"60000ms"`,
//! `"10us"`. Used by the config (`reap_after`, bridge timings), by the
//! blocking-query `wait` parameter and by check definitions (where a JSON
//! number means nanoseconds, as Consul decodes it). A bare number in the
//! config means seconds. [`format`] writes Go's `Duration.String()`.

use std::time::Duration;

/// Parses a Consul duration; `None` when malformed or negative.
pub fn parse(text: &str) -> Option<Duration> {
    let s = text.trim();
    if s.is_empty() {
        return None;
    }
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    if !total.is_finite() || total > 1e12 {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

/// Serde: a Consul duration string or a number of seconds.
pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match <Raw as serde::Deserialize>::deserialize(d)? {
        Raw::Secs(n) => Ok(Duration::from_secs(n)),
        Raw::Text(t) => parse(&t).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration {t:?} (expected e.g. \"500ms\", \"10s\", \"5m\", \"72h\")"
            ))
        }),
    }
}

/// Go's `time.Duration.String()`: `"10s"`, `"1m30s"`, `"1h0m0s"`,
/// `"500ms"`, `"1.5s"`, `"0s"` (how Consul echoes check intervals).
pub fn format(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", trim_fraction(ns, 1_000));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", trim_fraction(ns, 1_000_000));
    }
    let secs_total = ns / 1_000_000_000;
    let frac = ns % 1_000_000_000;
    let h = secs_total / 3600;
    let m = (secs_total % 3600) / 60;
    let s = secs_total % 60;
    let secs = trim_fraction(u128::from(s as u64) * 1_000_000_000 + frac, 1_000_000_000);
    if h > 0 {
        format!("{h}h{m}m{secs}s")
    } else if m > 0 {
        format!("{m}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// `n / unit` with its fraction, trailing zeros removed (`1500/1000` → `1.5`).
fn trim_fraction(n: u128, unit: u128) -> String {
    let whole = n / unit;
    let frac = n % unit;
    if frac == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// A check definition's duration: a Go duration string, or a JSON number
/// of nanoseconds (Consul's decoder accepts both). `Err` carries the reason.
pub fn from_json(v: &serde_json::Value) -> Result<Duration, String> {
    match v {
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(ns), _, _) => Ok(Duration::from_nanos(ns)),
            (None, Some(_), _) => Err(format!("negative duration {n}")),
            (None, None, Some(f)) if (0.0..1e21).contains(&f) => Ok(Duration::from_nanos(f as u64)),
            _ => Err(format!("invalid duration {n}")),
        },
        serde_json::Value::String(t) => {
            parse(t).ok_or_else(|| format!("time: invalid duration \"{t}\""))
        }
        serde_json::Value::Null => Ok(Duration::ZERO),
        other => Err(format!("invalid duration {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("72h"), Some(Duration::from_secs(72 * 3600)));
        assert_eq!(parse("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("60000ms"), Some(Duration::from_secs(60)));
        assert_eq!(parse("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("10us"), Some(Duration::from_micros(10)));
        assert_eq!(parse("0"), Some(Duration::ZERO));
        for bad in ["", "10", "s", "10x", "-5s", "1..5s", "5 s"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_as_go_does() {
        let f = |ms: u64| format(Duration::from_millis(ms));
        assert_eq!(f(0), "0s");
        assert_eq!(f(10_000), "10s");
        assert_eq!(f(90_000), "1m30s");
        assert_eq!(f(3_600_000), "1h0m0s");
        assert_eq!(f(500), "500ms");
        assert_eq!(f(1_500), "1.5s");
        assert_eq!(format(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(format(Duration::from_nanos(7)), "7ns");
        for s in ["10s", "1m30s", "1h0m0s", "500ms", "1.5s", "2h3m4.5s"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }

    #[test]
    fn json_durations_are_strings_or_nanoseconds() {
        let j = |t: &str| from_json(&serde_json::from_str(t).unwrap());
        assert_eq!(j("\"10s\""), Ok(Duration::from_secs(10)));
        assert_eq!(j("10000000000"), Ok(Duration::from_secs(10)));
        assert_eq!(j("null"), Ok(Duration::ZERO));
        assert!(j("-1").is_err());
        assert!(j("\"ten\"").is_err());
        assert!(j("[]").is_err());
    }
}
