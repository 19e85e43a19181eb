//! PM2-style YAML ecosystems (`apps:` as a list): parsing into the located tree
//! ([`crate::tree`]) with byte spans for every key and value, from saphyr-parser's events.
//!
//! Plain scalars are typed as YAML 1.2's core schema does (PM2's js-yaml does the same):
//! `null`/`~`/empty, `true`/`false`, integers (also `0x`, `0o`), floats (also `.inf`, `.nan`);
//! everything else, and every quoted scalar, is a string. Anchors and aliases work (an alias is a
//! copy of its anchor's value, bounded in total size), and so do merge keys (`<<: *defaults`, as
//! js-yaml reads them); duplicate keys are errors, as in JSON.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span, StrInput, Tag};

use crate::error::Loc;
use crate::tree::{Entry, Node, SyntaxError, Value};

/// Deepest nesting accepted (as serde_json's limit for JSON).
const MAX_DEPTH: usize = 128;
/// Most values a document may expand to through aliases.
const MAX_VALUES: usize = 100_000;

/// Parses a YAML document into a tree, or returns its syntax error (byte offset, message).
pub(crate) fn parse_yaml(text: &str) -> Result<Node, Vec<SyntaxError>> {
    let mut builder = Builder {
        parser: Parser::new_from_str(text),
        bytes: CharBytes::new(text),
        anchors: HashMap::new(),
        values: 0,
        end: 0,
    };
    builder.document().map_err(|e| vec![e])
}

/// Character index (what saphyr's markers count) → byte offset (what [`Loc`] holds).
struct CharBytes {
    /// Byte offset of every character; empty when the text is ASCII (index = offset).
    offsets: Vec<usize>,
    len: usize,
}

impl CharBytes {
    fn new(text: &str) -> Self {
        let offsets = if text.is_ascii() {
            Vec::new()
        } else {
            text.char_indices().map(|(i, _)| i).collect()
        };
        CharBytes {
            offsets,
            len: text.len(),
        }
    }

    fn at(&self, char_index: usize) -> usize {
        if self.offsets.is_empty() {
            char_index.min(self.len)
        } else {
            self.offsets.get(char_index).copied().unwrap_or(self.len)
        }
    }
}

struct Builder<'a> {
    parser: Parser<'a, StrInput<'a>>,
    bytes: CharBytes,
    /// Anchored values by anchor id, with their size in values.
    anchors: HashMap<usize, (Node, usize)>,
    /// Values built so far, aliases counted at their full size.
    values: usize,
    /// Byte offset where the last event ended (for errors at the end of the input).
    end: usize,
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), SyntaxError> {
        match self.parser.next_event() {
            Some(Ok((event, span))) => {
                self.end = self.bytes.at(span.end.index());
                Ok((event, span))
            }
            Some(Err(e)) => Err(self.scan_error(&e)),
            None => Err((self.end, "unexpected end of the YAML input".into())),
        }
    }

    fn scan_error(&self, e: &ScanError) -> SyntaxError {
        (self.bytes.at(e.marker().index()), e.info().to_string())
    }

    fn span(&self, start: &Span, end: &Span) -> Loc {
        Loc::Span(self.bytes.at(start.start.index())..self.bytes.at(end.end.index()))
    }

    /// The stream's one document (an empty stream is `null`).
    fn document(&mut self) -> Result<Node, SyntaxError> {
        let mut root = None;
        loop {
            let (event, span) = self.next()?;
            match event {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::StreamEnd => break,
                Event::DocumentStart(_) if root.is_some() => {
                    let at = self.bytes.at(span.start.index());
                    return Err((
                        at,
                        "a YAML ecosystem holds one document; remove the second `---`".into(),
                    ));
                }
                Event::DocumentStart(_) => {
                    let (event, span) = self.next()?;
                    root = Some(self.node(event, span, 0)?);
                }
                other => {
                    let at = self.bytes.at(span.start.index());
                    return Err((at, format!("unexpected YAML event {other:?}")));
                }
            }
        }
        Ok(root.unwrap_or_else(|| Node::new(Value::Null, Loc::Span(0..0))))
    }

    fn node(&mut self, event: Event<'a>, span: Span, depth: usize) -> Result<Node, SyntaxError> {
        let at = self.bytes.at(span.start.index());
        if depth > MAX_DEPTH {
            return Err((at, format!("values are nested more than {MAX_DEPTH} deep")));
        }
        let (node, anchor) = match event {
            Event::Scalar(text, style, anchor, tag) => {
                let value = scalar(&text, style, tag.as_deref());
                (Node::new(value, self.span(&span, &span)), anchor)
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                let end = loop {
                    let (event, item_span) = self.next()?;
                    if event == Event::SequenceEnd {
                        break item_span;
                    }
                    items.push(self.node(event, item_span, depth + 1)?);
                };
                (
                    Node::new(Value::Array(items), self.span(&span, &end)),
                    anchor,
                )
            }
            Event::MappingStart(anchor, _) => {
                let (entries, end) = self.mapping(depth)?;
                (
                    Node::new(Value::Table(entries), self.span(&span, &end)),
                    anchor,
                )
            }
            Event::Alias(id) => {
                let Some((node, size)) = self.anchors.get(&id) else {
                    return Err((at, "alias to an unknown anchor".into()));
                };
                let (node, size) = (node.clone(), *size);
                self.count(size, at)?;
                return Ok(node);
            }
            other => return Err((at, format!("unexpected YAML event {other:?}"))),
        };
        if anchor != 0 {
            let size = size_of(&node);
            self.anchors.insert(anchor, (node.clone(), size));
        }
        self.count(1, at)?;
        Ok(node)
    }

    /// The entries of a mapping whose start was just read, and the span of its end. A merge key
    /// (`<<: *defaults`, or a list of aliases) adds the keys of those mappings that the mapping
    /// does not set itself, the first merged mapping winning, as YAML's merge type says.
    fn mapping(&mut self, depth: usize) -> Result<(Vec<Entry>, Span), SyntaxError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut merged: Vec<Entry> = Vec::new();
        loop {
            let (event, key_span) = self.next()?;
            let key_loc = self.span(&key_span, &key_span);
            let at = self.bytes.at(key_span.start.index());
            let (key, merge) = match event {
                Event::MappingEnd => break Ok((with_merged(entries, merged), key_span)),
                Event::Scalar(text, style, ..) => {
                    let merge = text == "<<" && style == ScalarStyle::Plain;
                    (text.into_owned(), merge)
                }
                _ => {
                    return Err((
                        at,
                        "mapping keys must be plain names, not lists or mappings".into(),
                    ));
                }
            };
            let (event, span) = self.next()?;
            let node = self.node(event, span, depth + 1)?;
            if merge {
                merged.extend(merge_sources(node, at)?);
                continue;
            }
            if entries.iter().any(|e| e.key == key) {
                return Err((at, format!("duplicate key `{key}` in this mapping")));
            }
            entries.push(Entry { key, key_loc, node });
        }
    }

    fn count(&mut self, values: usize, at: usize) -> Result<(), SyntaxError> {
        self.values += values;
        if self.values > MAX_VALUES {
            return Err((
                at,
                format!("the document expands to more than {MAX_VALUES} values (through aliases?)"),
            ));
        }
        Ok(())
    }
}

/// The entries a merge key brings: of one mapping, or of each mapping of a list.
fn merge_sources(node: Node, at: usize) -> Result<Vec<Entry>, SyntaxError> {
    let not_mapping = || {
        (
            at,
            "`<<` (merge) takes a mapping or a list of mappings".to_string(),
        )
    };
    match node.value {
        Value::Table(entries) => Ok(entries),
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item.value {
                Value::Table(entries) => Ok(entries),
                _ => Err(not_mapping()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|tables| tables.into_iter().flatten().collect()),
        _ => Err(not_mapping()),
    }
}

/// `entries`, then each merged entry whose key neither they nor an earlier merged one have.
fn with_merged(mut entries: Vec<Entry>, merged: Vec<Entry>) -> Vec<Entry> {
    for entry in merged {
        if !entries.iter().any(|e| e.key == entry.key) {
            entries.push(entry);
        }
    }
    entries
}

/// Number of values in `node`, itself included.
fn size_of(node: &Node) -> usize {
    1 + match &node.value {
        Value::Array(items) => items.iter().map(size_of).sum(),
        Value::Table(entries) => entries.iter().map(|e| size_of(&e.node)).sum(),
        _ => 0,
    }
}

/// A scalar's value: quoted ones (and `!!str`) are strings; plain ones are typed by the core
/// schema.
fn scalar(text: &str, style: ScalarStyle, tag: Option<&Tag>) -> Value {
    let forced_string = tag.is_some_and(|t| t.is_yaml_core_schema() && t.suffix == "str");
    if style != ScalarStyle::Plain || forced_string {
        return Value::Str(text.to_string());
    }
    core_schema(text)
}

fn core_schema(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let radix = [("0x", 16), ("0o", 8)]
        .iter()
        .find_map(|(prefix, radix)| text.strip_prefix(prefix).map(|digits| (digits, *radix)));
    if let Some((digits, radix)) = radix {
        if !digits.is_empty() && digits.chars().all(|c| c.is_digit(radix)) {
            return match i64::from_str_radix(digits, radix) {
                Ok(n) => Value::Int(n),
                Err(_) => Value::Float(f64::MAX),
            };
        }
        return Value::Str(text.to_string());
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<i64>() {
            Ok(n) => Value::Int(n),
            // Out of i64 range: keep the magnitude so that range checks say "too large".
            Err(_) if text.starts_with('-') => Value::Float(f64::MIN),
            Err(_) => Value::Float(f64::MAX),
        };
    }
    if is_core_float(unsigned)
        && let Ok(f) = text.parse::<f64>()
    {
        return Value::Float(f);
    }
    Value::Str(text.to_string())
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, the core schema's float (sign removed).
fn is_core_float(text: &str) -> bool {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", frac)) => digits(frac),
        Some((int, frac)) => digits(int) && (frac.is_empty() || digits(frac)),
        None => digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::LineIndex;

    fn span(node: &Node) -> std::ops::Range<usize> {
        match &node.loc {
            Loc::Span(r) => r.clone(),
            other => panic!("no span: {other:?}"),
        }
    }

    fn entries(node: &Node) -> &[Entry] {
        match &node.value {
            Value::Table(entries) => entries,
            other => panic!("not a mapping: {other:?}"),
        }
    }

    #[test]
    fn values_are_typed_by_the_core_schema_and_located() {
        let text = "apps:\n  - name: 'é1'\n    n: -12\n    f: 1.5e3\n    b: true\n    z:\n    s: yes\n    q: \"10\"\n    h: 0x1F\n";
        let root = parse_yaml(text).unwrap();
        let apps = &entries(&root)[0];
        assert_eq!(apps.key, "apps");
        let Value::Array(items) = &apps.node.value else {
            panic!("apps is not a list")
        };
        let app = entries(&items[0]);
        let keys: Vec<&str> = app.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["name", "n", "f", "b", "z", "s", "q", "h"]);
        assert!(matches!(&app[0].node.value, Value::Str(s) if s == "é1"));
        assert!(matches!(app[1].node.value, Value::Int(-12)));
        assert!(matches!(app[2].node.value, Value::Float(f) if f == 1500.0));
        assert!(matches!(app[3].node.value, Value::Bool(true)));
        assert!(matches!(app[4].node.value, Value::Null));
        assert!(
            matches!(&app[5].node.value, Value::Str(s) if s == "yes"),
            "YAML 1.2: yes is a string"
        );
        assert!(matches!(&app[6].node.value, Value::Str(s) if s == "10"));
        assert!(matches!(app[7].node.value, Value::Int(31)));
        // Spans are byte offsets, after a two-byte character too.
        assert_eq!(&text[span(&app[1].node)], "-12");
        assert_eq!(&text[span(&app[2].node)], "1.5e3");
        let lines = LineIndex::new(text);
        assert_eq!(lines.position(span(&app[1].node).start), (3, 8));
        match &app[1].key_loc {
            Loc::Span(r) => assert_eq!(&text[r.clone()], "n"),
            other => panic!("no span: {other:?}"),
        }
    }

    #[test]
    fn aliases_copy_their_anchor_and_merge_keys_fill_in() {
        let text = "base: &b {A: 1}\nother: *b\n";
        let root = parse_yaml(text).unwrap();
        let e = entries(&root);
        assert_eq!(entries(&e[1].node)[0].key, "A");

        let text = "d: &d {x: 1, y: 1}\ne: &e {y: 2, z: 2}\napp:\n  <<: [*d, *e]\n  x: 0\n";
        let root = parse_yaml(text).unwrap();
        let app = entries(&entries(&root)[2].node);
        let got: Vec<(&str, i64)> = app
            .iter()
            .map(|e| match e.node.value {
                Value::Int(n) => (e.key.as_str(), n),
                ref other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, [("x", 0), ("y", 1), ("z", 2)]);
        let errors = parse_yaml("a:\n  <<: 3\n").unwrap_err();
        assert!(errors[0].1.contains("merge"), "{errors:?}");
    }

    #[test]
    fn syntax_errors_and_duplicates_have_positions() {
        let text = "apps:\n  - name: a\n   script: b\n";
        let errors = parse_yaml(text).unwrap_err();
        assert_eq!(errors.len(), 1);
        let (line, _) = LineIndex::new(text).position(errors[0].0);
        assert_eq!(line, 3, "{errors:?}");

        let text = "a: 1\na: 2\n";
        assert_eq!(
            parse_yaml(text).unwrap_err(),
            vec![(5, "duplicate key `a` in this mapping".to_string())]
        );
        let text = "a: 1\n---\nb: 2\n";
        assert!(parse_yaml(text).unwrap_err()[0].1.contains("one document"));
    }

    #[test]
    fn alias_bombs_are_bounded() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let errors = parse_yaml(&text).unwrap_err();
        assert!(errors[0].1.contains("more than"), "{errors:?}");
    }

    #[test]
    fn empty_input_is_null() {
        assert!(matches!(parse_yaml("").unwrap().value, Value::Null));
    }
}
