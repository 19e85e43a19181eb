//! The located value tree that every file format (and the command line) is turned into before
//! validation, so that one validator serves TOML, PM2 JSON / YAML / JavaScript and
//! `pm2rs start <script>` alike. Owns the TOML → tree conversion; JSON and YAML have their own
//! modules ([`crate::json`], [`crate::yaml`]); JavaScript becomes JSON ([`crate::js`]).

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::Loc;

/// Which syntax a tree came from (only used to name types in messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Toml,
    /// PM2 JSON, and JavaScript ecosystems (evaluated to JSON).
    Json,
    Yaml,
    Cli,
}

/// A value and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) value: Value,
    pub(crate) loc: Loc,
}

/// A format-neutral value.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// JSON `null`: treated as "not set".
    Null,
    /// TOML date/time (never valid in an ecosystem).
    Datetime,
    Array(Vec<Node>),
    /// Entries in source order.
    Table(Vec<Entry>),
}

/// One `key = value` of a table.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) key_loc: Loc,
    pub(crate) node: Node,
}

impl Value {
    /// "a string", "an integer", ... as used in "expected X, got Y".
    pub(crate) fn type_name(&self, format: Format) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Bool(_) => "a boolean",
            Value::Null => "null",
            Value::Datetime => "a date-time",
            Value::Array(_) => match format {
                Format::Yaml => "a list",
                Format::Toml | Format::Json | Format::Cli => "an array",
            },
            Value::Table(_) => match format {
                Format::Json => "an object",
                Format::Yaml => "a mapping",
                Format::Toml | Format::Cli => "a table",
            },
        }
    }

    /// An integer, or a float without fractional part that fits an `i64` (JSON writers emit
    /// `1600.0` sometimes).
    pub(crate) fn as_whole_int(&self) -> Option<i64> {
        match *self {
            Value::Int(i) => Some(i),
            Value::Float(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => {
                Some(f as i64)
            }
            _ => None,
        }
    }
}

impl Node {
    pub(crate) fn new(value: Value, loc: Loc) -> Self {
        Node { value, loc }
    }
}

/// A syntax error: byte offset in the source and message.
pub(crate) type SyntaxError = (usize, String);

/// Parses a TOML document into a tree; every syntax error is returned (the parser recovers).
pub(crate) fn parse_toml(text: &str) -> Result<Node, Vec<SyntaxError>> {
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        return Err(errors
            .iter()
            .map(|e| {
                let offset = e.span().map_or(0, |s| s.start);
                (offset, e.message().trim().to_string())
            })
            .collect());
    }
    let span = doc.span();
    Ok(Node::new(toml_table(doc.get_ref()), Loc::Span(span)))
}

fn toml_table(table: &DeTable<'_>) -> Value {
    let mut entries: Vec<Entry> = table
        .iter()
        .map(|(key, value)| Entry {
            key: key.get_ref().to_string(),
            key_loc: Loc::Span(key.span()),
            node: toml_node(value),
        })
        .collect();
    // The parser's map is ordered by key; errors and app order follow the file.
    entries.sort_by_key(|e| span_start(&e.key_loc));
    Value::Table(entries)
}

fn span_start(loc: &Loc) -> usize {
    match loc {
        Loc::Span(Range { start, .. }) => *start,
        Loc::Flag(_) | Loc::Nowhere => 0,
    }
}

fn toml_node(value: &Spanned<DeValue<'_>>) -> Node {
    let converted = match value.get_ref() {
        DeValue::String(s) => Value::Str(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Value::Int(n),
            // Out of i64 range: keep the magnitude so that range checks say "too large".
            Err(_) if i.as_str().starts_with('-') => Value::Float(f64::MIN),
            Err(_) => Value::Float(f64::MAX),
        },
        DeValue::Float(f) => Value::Float(f.as_str().parse().unwrap_or(f64::NAN)),
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(_) => Value::Datetime,
        DeValue::Array(items) => Value::Array(items.iter().map(toml_node).collect()),
        DeValue::Table(table) => toml_table(table),
    };
    Node::new(converted, Loc::Span(value.span()))
}
