//! Duration strings as operators write them in configuration.

use std::time::Duration;

/// Parses a duration: `500ms`, `10s`, `5m`, `24h`, `2d`, `1h30m`, or a bare number of
/// seconds. Never panics: overflow and malformed input are errors (config values come from
/// operators and must fail start-up cleanly).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or("missing unit (ms, s, m, h, d)")?;
        if digits == 0 {
            return Err("expected a number".into());
        }
        let value: f64 = rest[..digits].parse().map_err(|_| "bad number")?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            other => return Err(format!("unknown unit {other:?} (ms, s, m, h, d)")),
        };
        let part = Duration::try_from_secs_f64(value * unit).map_err(|e| e.to_string())?;
        total = total.checked_add(part).ok_or("duration overflows")?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172800)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
    }

    #[test]
    fn rejects_without_panicking() {
        for bad in [
            "",
            "s",
            "10x",
            "h1",
            "1.2.3s",
            "1y",
            "99999999999999999999999h",
            "1e400h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
