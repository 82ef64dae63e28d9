//! Human units in the YAML: durations such as `500ms`, `2s`, `1m`, `1h`.

use std::time::Duration;

/// Parses `250ms`, `2s`, `1.5s`, `1m`, `1h`. A bare number is rejected: the unit must be explicit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("\"{text}\" has no unit; write e.g. \"500ms\" or \"2s\""))?;
    let (num, unit) = t.split_at(split);
    let value: f64 =
        num.parse().map_err(|_| format!("\"{text}\" is not a duration; write e.g. \"500ms\" or \"2s\""))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!("unknown unit \"{other}\" in \"{text}\"; use ms, s, m or h"));
        }
    };
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("\"{text}\" is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `512KiB`, `5MiB`, `1GiB`, `5MB`, `100kB`, `1024B`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: u64 = num.parse().map_err(|_| format!("\"{text}\" is not a size; write e.g. \"5MiB\""))?;
    let mult: u64 = match unit.trim() {
        "B" => 1,
        "kB" | "KB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        "" => return Err(format!("\"{text}\" has no unit; write e.g. \"5MiB\"")),
        other => return Err(format!("unknown unit \"{other}\" in \"{text}\"; use B, kB, KiB, MB, MiB, GB or GiB")),
    };
    value.checked_mul(mult).and_then(|v| usize::try_from(v).ok()).ok_or_else(|| format!("\"{text}\" is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("5MiB"), Ok(5 << 20));
        assert_eq!(parse_size("100kB"), Ok(100_000));
        assert_eq!(parse_size("1024B"), Ok(1024));
        for bad in ["5", "5 mb", "MiB", "-1MiB", "99999999999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_the_documented_units() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("1.5s", Duration::from_millis(1500)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            (" 0ms ", Duration::ZERO),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_missing_or_unknown_units() {
        for bad in ["500", "2 sec", "ms", "", "1d", "-1s", "1e999s"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
    }
}
