//! `log_date_format`: a strftime format (`%Y-%m-%d %H:%M:%S`), or PM2's moment.js style
//! (`YYYY-MM-DD HH:mm:ss Z`) translated to strftime, checked by formatting a sample time.

/// moment.js tokens and their strftime equivalents, longest first so `YYYY` wins over `YY`.
const MOMENT_TOKENS: &[(&str, &str)] = &[
    ("YYYY", "%Y"),
    ("YY", "%y"),
    ("MMMM", "%B"),
    ("MMM", "%b"),
    ("MM", "%m"),
    ("M", "%-m"),
    ("DDDD", "%j"),
    ("DD", "%d"),
    ("D", "%-d"),
    ("dddd", "%A"),
    ("ddd", "%a"),
    ("HH", "%H"),
    ("H", "%-H"),
    ("hh", "%I"),
    ("h", "%-I"),
    ("mm", "%M"),
    ("m", "%-M"),
    ("ss", "%S"),
    ("s", "%-S"),
    ("SSS", "%3f"),
    ("A", "%p"),
    ("a", "%P"),
    ("ZZ", "%z"),
    ("Z", "%:z"),
    ("X", "%s"),
];

/// The strftime format for `written`: as is when it contains `%`, else translated from moment.js
/// (text in `[brackets]` is literal). Errors name what is wrong.
pub(crate) fn date_format(written: &str) -> Result<String, String> {
    if written.trim().is_empty() {
        return Err("`log_date_format` must not be empty".into());
    }
    let format = if written.contains('%') {
        written.to_string()
    } else {
        from_moment(written)?
    };
    let sample = jiff::Timestamp::UNIX_EPOCH.to_zoned(jiff::tz::TimeZone::UTC);
    let mut out = String::new();
    jiff::fmt::strtime::BrokenDownTime::from(&sample)
        .format(&format, &mut out)
        .map_err(|e| {
            format!(
                "invalid log_date_format `{written}`: {e}; use strftime (e.g. \"%Y-%m-%d %H:%M:%S\") \
                 or PM2's moment style (e.g. \"YYYY-MM-DD HH:mm:ss\")"
            )
        })?;
    Ok(format)
}

fn from_moment(written: &str) -> Result<String, String> {
    let mut out = String::with_capacity(written.len() * 2);
    let mut rest = written;
    while let Some(c) = rest.chars().next() {
        if c == '[' {
            let Some(end) = rest.find(']') else {
                return Err(format!(
                    "invalid log_date_format `{written}`: `[` without a closing `]`"
                ));
            };
            out.push_str(&rest[1..end].replace('%', "%%"));
            rest = &rest[end + 1..];
            continue;
        }
        if let Some((token, strf)) = MOMENT_TOKENS.iter().find(|(t, _)| rest.starts_with(t)) {
            out.push_str(strf);
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_stays_and_moment_is_translated() {
        assert_eq!(date_format("%Y-%m-%d").unwrap(), "%Y-%m-%d");
        assert_eq!(
            date_format("YYYY-MM-DD HH:mm:ss.SSS Z").unwrap(),
            "%Y-%m-%d %H:%M:%S.%3f %:z"
        );
        assert_eq!(date_format("[at] HH:mm").unwrap(), "at %H:%M");
        assert!(date_format("").is_err());
        assert!(
            date_format("%Y %!")
                .unwrap_err()
                .contains("log_date_format")
        );
        assert!(date_format("[oops HH").is_err());
    }
}
