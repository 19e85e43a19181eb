//! Validated small values that carry their own preconditions: app names and namespaces
//! ([`Ident`]) and kill signals ([`KillSignal`]). Once built, they are known to be valid.

use std::fmt;
use std::str::FromStr;

use nix::sys::signal::Signal;

/// Longest accepted app name or namespace (names become log file names).
pub const MAX_NAME_LEN: usize = 128;

/// A valid app name or namespace: non-empty, at most [`MAX_NAME_LEN`] characters, no `/`, not `.`
/// or `..`, no whitespace or control characters, not `all` and not all digits (those would be read
/// as "every app" and as an instance id by the CLI's targets).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Ident(String);

impl Ident {
    /// Checks `s`; `what` is `name` or `namespace`, for the message.
    pub(crate) fn parse(s: &str, what: &str) -> Result<Ident, String> {
        let problem = if s.is_empty() {
            Some("must not be empty".to_string())
        } else if s.chars().count() > MAX_NAME_LEN {
            Some(format!("must be at most {MAX_NAME_LEN} characters"))
        } else if s.contains('/') {
            Some("must not contain `/`".to_string())
        } else if s == "." || s == ".." {
            Some("must not be `.` or `..`".to_string())
        } else if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Some("must not contain whitespace or control characters".to_string())
        } else if s == "all" {
            Some("`all` is reserved (it targets every app)".to_string())
        } else if s.bytes().all(|b| b.is_ascii_digit()) {
            Some("must not be only digits (numbers target instance ids)".to_string())
        } else {
            None
        };
        match problem {
            Some(p) => Err(format!("invalid {what} `{}`: {p}", s.escape_debug())),
            None => Ok(Ident(s.to_string())),
        }
    }

    pub(crate) fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A real signal of this platform, normalised to `SIGXXX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KillSignal(Signal);

impl KillSignal {
    pub(crate) const DEFAULT: KillSignal = KillSignal(Signal::SIGINT);

    /// `"SIGINT"`, `"INT"`, `"sigint"` or `"2"`.
    pub(crate) fn parse(s: &str) -> Result<KillSignal, String> {
        let t = s.trim();
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            return t
                .parse::<i32>()
                .map_err(|_| ())
                .and_then(|n| Self::from_number(i64::from(n)).map_err(|_| ()))
                .map_err(|()| format!("`{s}` is not a signal number of this system"));
        }
        let upper = t.to_ascii_uppercase();
        let name = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        Signal::from_str(&name).map(KillSignal).map_err(|_| {
            format!(
                "`{s}` is not a signal name (expected e.g. \"SIGINT\", \"SIGTERM\" or \"SIGUSR2\")"
            )
        })
    }

    /// A signal number, e.g. 15.
    pub(crate) fn from_number(n: i64) -> Result<KillSignal, String> {
        i32::try_from(n)
            .ok()
            .and_then(|n| Signal::try_from(n).ok())
            .map(KillSignal)
            .ok_or_else(|| format!("{n} is not a signal number of this system"))
    }

    pub(crate) fn as_str(self) -> &'static str {
        self.0.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["api", "web-1", "my.app", "a_b", "élan", "1a"] {
            assert!(Ident::parse(good, "name").is_ok(), "{good} refused");
        }
        for (bad, why) in [
            ("", "empty"),
            ("a/b", "`/`"),
            (".", "`.` or `..`"),
            ("..", "`.` or `..`"),
            ("my app", "whitespace"),
            ("tab\there", "whitespace"),
            ("bell\u{7}", "control"),
            ("all", "reserved"),
            ("42", "digits"),
        ] {
            let err = Ident::parse(bad, "name").unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        assert!(Ident::parse(&"x".repeat(129), "name").is_err());
        assert!(Ident::parse(&"x".repeat(128), "name").is_ok());
    }

    #[test]
    fn signals_normalise() {
        for s in ["SIGINT", "INT", "sigint", "2", " int "] {
            assert_eq!(KillSignal::parse(s).unwrap().as_str(), "SIGINT", "{s}");
        }
        assert_eq!(KillSignal::parse("TERM").unwrap().as_str(), "SIGTERM");
        assert_eq!(KillSignal::from_number(9).unwrap().as_str(), "SIGKILL");
        for bad in ["SIGFOO", "", "0", "999", "-1", "SIG"] {
            assert!(KillSignal::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(KillSignal::from_number(-3).is_err());
    }
}
