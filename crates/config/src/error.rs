//! Errors: what the user sees ([`ConfigError`], [`ConfigErrors`]) and the collector ([`Diag`]) that
//! every validation step reports into, so that all problems of a file come out at once.
//!
//! Validation code never knows line numbers: it reports a [`Loc`] (a byte span in the source, or the
//! CLI flag a value came from) plus a key path such as `apps[1].instances`. [`Diag::finish`] turns
//! spans into 1-based line:column with the file's [`LineIndex`] and sorts the errors by position.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in an ecosystem file or in the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as the caller named it (`None` for command-line apps).
    pub file: Option<PathBuf>,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// 1-based column (in characters), when the problem has a place in the file.
    pub column: Option<usize>,
    /// Key path such as `apps[1].instances` or `apps[0].env.PORT`, or the CLI flag (`--instances`).
    pub key: Option<String>,
    /// What is wrong, for humans.
    pub message: String,
}

impl fmt::Display for ConfigError {
    /// `ecosystem.toml:7:13: apps[1].instances: instances must be at least 1 (got 0)`; parts that are
    /// unknown are left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
                if let Some(column) = self.column {
                    write!(f, ":{column}")?;
                }
            }
            f.write_str(": ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found, in file order (errors without a position last). Never empty when returned
/// as an `Err`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigErrors {
    /// The problems, one per offending key or value.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    /// One error per line, no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors {
            errors: vec![error],
        }
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Loc {
    /// Byte range in the source file.
    Span(Range<usize>),
    /// A command-line flag; it is used as the error's key.
    Flag(&'static str),
    /// Nowhere in particular (synthetic values).
    Nowhere,
}

/// An error before positions are known.
#[derive(Debug, Clone)]
struct Pending {
    key: Option<String>,
    offset: Option<usize>,
    message: String,
}

/// Collects errors while validation goes on.
#[derive(Debug, Default)]
pub(crate) struct Diag {
    pending: Vec<Pending>,
}

impl Diag {
    /// Reports `message` about the value at `loc`, whose key path is `path` (may be empty). A value
    /// that came from a CLI flag is keyed by the flag instead of the path.
    pub(crate) fn error(&mut self, loc: &Loc, path: &str, message: impl Into<String>) {
        let (key, offset) = match loc {
            Loc::Span(range) => (non_empty(path), Some(range.start)),
            Loc::Flag(flag) => (Some((*flag).to_string()), None),
            Loc::Nowhere => (non_empty(path), None),
        };
        self.pending.push(Pending {
            key,
            offset,
            message: message.into(),
        });
    }

    /// Number of errors so far (to tell whether a step added any).
    pub(crate) fn count(&self) -> usize {
        self.pending.len()
    }

    /// True when nothing was reported.
    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Turns the collected errors into [`ConfigError`]s, with positions from `lines`, sorted by
    /// position (errors without one keep their order, after the others).
    pub(crate) fn finish(self, file: Option<&Path>, lines: Option<&LineIndex<'_>>) -> ConfigErrors {
        let mut errors: Vec<(Option<usize>, ConfigError)> = self
            .pending
            .into_iter()
            .map(|p| {
                let position = match (p.offset, lines) {
                    (Some(offset), Some(lines)) => Some(lines.position(offset)),
                    _ => None,
                };
                let error = ConfigError {
                    file: file.map(Path::to_path_buf),
                    line: position.map(|(line, _)| line),
                    column: position.map(|(_, column)| column),
                    key: p.key,
                    message: p.message,
                };
                (p.offset, error)
            })
            .collect();
        errors.sort_by_key(|(offset, _)| offset.unwrap_or(usize::MAX));
        ConfigErrors {
            errors: errors.into_iter().map(|(_, e)| e).collect(),
        }
    }
}

fn non_empty(path: &str) -> Option<String> {
    (!path.is_empty()).then(|| path.to_string())
}

/// Maps byte offsets of a source text to 1-based line and column (columns count characters).
#[derive(Debug)]
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    /// Line and column of byte `offset` (clamped to the text).
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1) - 1;
        let start = self.starts.get(line).copied().unwrap_or(0);
        let column = match self.text.get(start..offset) {
            Some(prefix) => prefix.chars().count(),
            None => offset - start,
        };
        (line + 1, column + 1)
    }

    /// Line of byte `offset`.
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.position(offset).0
    }

    /// Byte offset of a 1-based line and 1-based *byte* column (as serde_json reports them).
    pub(crate) fn offset(&self, line: usize, byte_column: usize) -> usize {
        let start = self
            .starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(self.text.len());
        (start + byte_column.saturating_sub(1)).min(self.text.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_file_line_column_key_and_message() {
        let e = ConfigError {
            file: Some("ecosystem.toml".into()),
            line: Some(7),
            column: Some(13),
            key: Some("apps[1].instances".into()),
            message: "instances must be at least 1 (got 0)".into(),
        };
        assert_eq!(
            e.to_string(),
            "ecosystem.toml:7:13: apps[1].instances: instances must be at least 1 (got 0)"
        );
        let cli = ConfigError {
            file: None,
            line: None,
            column: None,
            key: Some("--instances".into()),
            message: "bad".into(),
        };
        assert_eq!(cli.to_string(), "--instances: bad");
        let both = ConfigErrors {
            errors: vec![e, cli],
        };
        assert_eq!(both.to_string().lines().count(), 2);
    }

    #[test]
    fn line_index_counts_characters_from_one() {
        let text = "ab\né = 1\n\nx";
        let lines = LineIndex::new(text);
        assert_eq!(lines.position(0), (1, 1));
        assert_eq!(lines.position(1), (1, 2));
        assert_eq!(lines.position(3), (2, 1));
        // `=` is after a two-byte character and a space: byte 6, character column 3.
        assert_eq!(lines.position(6), (2, 3));
        assert_eq!(lines.position(text.len()), (4, 2));
        assert_eq!(lines.offset(2, 4), 6);
    }

    #[test]
    fn finish_sorts_by_position_and_flags_become_keys() {
        let text = "a\nb\nc\n";
        let mut diag = Diag::default();
        diag.error(&Loc::Span(4..5), "k3", "third");
        diag.error(&Loc::Flag("--name"), "ignored", "flag");
        diag.error(&Loc::Span(0..1), "k1", "first");
        let errors = diag.finish(Some(Path::new("f.toml")), Some(&LineIndex::new(text)));
        let shown: Vec<String> = errors.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            shown,
            [
                "f.toml:1:1: k1: first",
                "f.toml:3:1: k3: third",
                "f.toml: --name: flag"
            ]
        );
    }
}
