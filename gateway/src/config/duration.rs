//! Durations as operators write them: "250ms", "5s", "1m", "1h", "1.5s".

use std::time::Duration;

/// Parses `<number><unit>` with unit one of ms, s, m, h.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("\"{s}\" has no unit; write e.g. \"500ms\", \"5s\", \"1m\""))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("\"{s}\" is not a duration; write e.g. \"500ms\", \"5s\", \"1m\""))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit \"{unit}\" in \"{s}\"; use ms, s, m or h"
            ))
        }
    };
    // A day is far beyond any sensible deadline; the bound also keeps
    // Duration::from_secs_f64 away from its panic on overflow.
    if !secs.is_finite() || secs > 86_400.0 {
        return Err(format!("\"{s}\" is longer than a day"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_unit() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    }

    #[test]
    fn rejects_missing_or_unknown_units_and_huge_values() {
        for bad in ["5", "5 s", "5d", "s", "", "1e999s", "100000h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
