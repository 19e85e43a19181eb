//! Units and counts written as text: durations (`"10s"`), sizes (`"200M"`), instance counts
//! (`"max"`, `"-1"`) and cron expressions (`"0 3 * * *"`), plus the limits that refuse absurd
//! values.

/// Most instances one app may have.
pub const MAX_INSTANCES: u32 = 1024;
/// Largest accepted `max_restarts`.
pub const MAX_MAX_RESTARTS: u64 = 1_000_000;
/// Largest `kill_timeout`, `min_uptime` and `restart_delay`: 24 hours.
pub const MAX_DURATION_MS: u64 = 24 * 3_600_000;
/// Smallest `log_max_size` other than 0 (no rotation): smaller files would rotate on every burst.
pub const MIN_LOG_MAX_SIZE: u64 = 1024;
/// Smallest `max_memory_restart`: 1 MiB.
pub const MIN_MEMORY_LIMIT: u64 = 1 << 20;
/// Most rotated files kept per log file.
pub const MAX_LOG_RETAIN: u64 = 1000;
/// Bounds of the daemon's `PM2RS_LOG_MAX_LINE`: the daemon holds one line this long in memory.
pub const LOG_LINE_RANGE: (u64, u64) = (1024, 64 << 20);
/// Largest `exp_backoff_restart_delay`: 15 minutes.
pub const MAX_BACKOFF_MS: u64 = 15 * 60_000;

/// Parses a duration into milliseconds: `"500ms"`, `"10s"`, `"2m"`, `"1h"`, or a plain integer
/// (milliseconds). Surrounding whitespace is ignored; fractions and negative values are refused.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    const UNITS: [(&str, u64); 4] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)];
    let t = s.trim();
    let (digits, factor) = UNITS
        .iter()
        .find_map(|(suffix, factor)| t.strip_suffix(suffix).map(|d| (d, *factor)))
        .unwrap_or((t, 1));
    let bad = || {
        format!(
            "invalid duration `{s}`: expected a whole number with an optional unit ms, s, m or h (e.g. \"10s\")"
        )
    };
    if digits.strip_prefix('-').and_then(parse_digits).is_some() {
        return Err(format!("invalid duration `{s}`: must not be negative"));
    }
    let n = parse_digits(digits).ok_or_else(bad)?;
    n.checked_mul(factor)
        .ok_or_else(|| format!("invalid duration `{s}`: too large"))
}

/// Parses a size into bytes: `"512K"`, `"200M"`, `"1G"` (powers of 1024; `k`/`m`/`g` too), or a
/// plain integer (bytes).
pub fn parse_size_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, factor) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n = parse_digits(digits).ok_or_else(|| {
        format!("invalid size `{s}`: expected a whole number of bytes with an optional unit K, M or G (e.g. \"200M\")")
    })?;
    n.checked_mul(factor)
        .ok_or_else(|| format!("invalid size `{s}`: too large"))
}

/// Parses an instance count: a number (1 to [`MAX_INSTANCES`]), `"max"` (one per CPU), or a
/// negative number `-n` (CPUs minus n, at least 1). `"0"` is refused.
pub fn parse_instances(s: &str, cpus: u32) -> Result<u32, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("max") {
        return Ok(cpus.clamp(1, MAX_INSTANCES));
    }
    match t.parse::<i64>() {
        Ok(n) => instances_from_int(n, cpus),
        Err(_) => Err(format!(
            "invalid instances `{s}`: expected a number, \"max\" (one per CPU) or a negative number (CPUs minus n)"
        )),
    }
}

/// The integer form of [`parse_instances`].
pub(crate) fn instances_from_int(n: i64, cpus: u32) -> Result<u32, String> {
    match n {
        0 => Err("instances must be at least 1 (got 0)".into()),
        n if n < 0 => {
            let fewer = i64::from(cpus) + n;
            Ok(u32::try_from(fewer.clamp(1, i64::from(MAX_INSTANCES))).unwrap_or(1))
        }
        n => match u32::try_from(n) {
            Ok(n) if n <= MAX_INSTANCES => Ok(n),
            _ => Err(format!(
                "instances must be at most {MAX_INSTANCES} (got {n}); that many processes is surely a mistake"
            )),
        },
    }
}

/// ASCII digits only (no sign, no `_`), as a `u64`.
/// Checks a cron expression as the daemon will read it: 5 fields (minute hour day-of-month month
/// day-of-week), 6 (seconds first) or a `@nickname` such as `@daily`, that matches some time
/// in the coming years.
pub fn parse_cron(s: &str) -> Result<(), String> {
    use croner::errors::CronError;
    use croner::parser::{CronParser, Seconds, Year};
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(s)
        .map_err(|e| match e {
            CronError::InvalidPattern(_) => {
                format!("it has {} fields", s.split_whitespace().count())
            }
            CronError::ComponentError(m) | CronError::IllegalCharacters(m) => format!(
                "{} (seconds and minutes are 0-59, hours 0-23, days 1-31, months 1-12, weekdays 0-7)",
                m.trim_end_matches('.').to_lowercase()
            ),
            other => other.to_string(),
        })?;
    cron.find_next_occurrence(&jiff::Zoned::now(), false)
        .map(|_| ())
        .map_err(|_| "it matches no date".to_string())
}

fn parse_digits(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("10s"), Ok(10_000));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("1600"), Ok(1600));
        assert_eq!(parse_duration_ms(" 0 "), Ok(0));
        for bad in ["", "ms", "1.5s", "10 s", "10x", "s10", "+5", "1_000"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration_ms("-5s").unwrap_err().contains("negative"));
        assert!(
            parse_duration_ms("99999999999999999h")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_bytes("512K"), Ok(512 * 1024));
        assert_eq!(parse_size_bytes("200M"), Ok(200 * 1024 * 1024));
        assert_eq!(parse_size_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_size_bytes("1g"), Ok(1 << 30));
        assert_eq!(parse_size_bytes("1234"), Ok(1234));
        for bad in ["", "M", "1.5G", "-1M", "12T", "1 G"] {
            assert!(parse_size_bytes(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            parse_size_bytes("99999999999999G")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn instances() {
        assert_eq!(parse_instances("4", 8), Ok(4));
        assert_eq!(parse_instances("max", 8), Ok(8));
        assert_eq!(parse_instances("MAX", 0), Ok(1));
        assert_eq!(parse_instances("-1", 8), Ok(7));
        assert_eq!(parse_instances("-1", 1), Ok(1));
        assert_eq!(parse_instances("-20", 4), Ok(1));
        assert_eq!(
            parse_instances("0", 8),
            Err("instances must be at least 1 (got 0)".into())
        );
        assert!(
            parse_instances("1025", 8)
                .unwrap_err()
                .contains("at most 1024")
        );
        assert_eq!(parse_instances("1024", 8), Ok(1024));
        assert!(parse_instances("lots", 8).is_err());
    }
}
