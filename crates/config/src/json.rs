//! PM2-style JSON ecosystems: parsing into the located tree ([`crate::tree`]) with byte spans for
//! every key and value, which serde_json alone does not give.
//!
//! serde_json first checks the syntax (its messages and positions are good and it bounds nesting
//! depth); then a small scanner walks the now-known-valid text to record spans, delegating the
//! decoding of each string and number token back to serde_json / `str::parse`, so escapes are
//! handled by the real JSON implementation. Duplicate keys in one object are reported (serde_json
//! would silently keep the last).

use crate::error::{LineIndex, Loc};
use crate::tree::{Entry, Node, SyntaxError, Value};

/// Parses a JSON document into a tree, or returns its syntax errors (byte offset, message).
pub(crate) fn parse_json(text: &str) -> Result<Node, Vec<SyntaxError>> {
    if let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
        let offset = LineIndex::new(text).offset(e.line(), e.column());
        return Err(vec![(offset, strip_position(&e.to_string()))]);
    }
    let mut scanner = Scanner {
        text,
        bytes: text.as_bytes(),
        at: 0,
        duplicates: Vec::new(),
    };
    match scanner.value() {
        Some(node) if scanner.duplicates.is_empty() => Ok(node),
        Some(_) => Err(scanner.duplicates),
        None => Err(vec![(scanner.at, "could not read this JSON value".into())]),
    }
}

/// serde_json's messages end with " at line L column C"; positions are reported separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
    duplicates: Vec<SyntaxError>,
}

impl Scanner<'_> {
    fn skip_ws(&mut self) {
        while matches!(self.bytes.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.skip_ws();
        (self.bytes.get(self.at) == Some(&byte)).then(|| self.at += 1)
    }

    fn value(&mut self) -> Option<Node> {
        self.skip_ws();
        let start = self.at;
        let value = match self.bytes.get(self.at)? {
            b'{' => self.object()?,
            b'[' => self.array()?,
            b'"' => Value::Str(self.string()?),
            b't' => self.literal("true", Value::Bool(true))?,
            b'f' => self.literal("false", Value::Bool(false))?,
            b'n' => self.literal("null", Value::Null)?,
            b'-' | b'0'..=b'9' => self.number()?,
            _ => return None,
        };
        Some(Node::new(value, Loc::Span(start..self.at)))
    }

    fn literal(&mut self, word: &str, value: Value) -> Option<Value> {
        let end = self.at + word.len();
        (self.text.get(self.at..end)? == word).then(|| {
            self.at = end;
            value
        })
    }

    fn number(&mut self) -> Option<Value> {
        let start = self.at;
        while matches!(
            self.bytes.get(self.at),
            Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
        ) {
            self.at += 1;
        }
        let raw = self.text.get(start..self.at)?;
        let integer = if raw.contains(['.', 'e', 'E']) {
            None
        } else {
            raw.parse::<i64>().ok()
        };
        if let Some(n) = integer {
            return Some(Value::Int(n));
        }
        raw.parse::<f64>().ok().map(Value::Float)
    }

    /// A string token, decoded by serde_json.
    fn string(&mut self) -> Option<String> {
        let start = self.at;
        self.at += 1;
        loop {
            match self.bytes.get(self.at)? {
                b'\\' => self.at += 2,
                b'"' => {
                    self.at += 1;
                    break;
                }
                _ => self.at += 1,
            }
        }
        serde_json::from_str(self.text.get(start..self.at)?).ok()
    }

    fn array(&mut self) -> Option<Value> {
        self.at += 1;
        let mut items = Vec::new();
        if self.eat(b']').is_some() {
            return Some(Value::Array(items));
        }
        loop {
            items.push(self.value()?);
            if self.eat(b',').is_none() {
                self.eat(b']')?;
                return Some(Value::Array(items));
            }
        }
    }

    fn object(&mut self) -> Option<Value> {
        self.at += 1;
        let mut entries: Vec<Entry> = Vec::new();
        if self.eat(b'}').is_some() {
            return Some(Value::Table(entries));
        }
        loop {
            self.skip_ws();
            let key_start = self.at;
            let key = self.string()?;
            let key_loc = Loc::Span(key_start..self.at);
            self.eat(b':')?;
            let node = self.value()?;
            if entries.iter().any(|e| e.key == key) {
                self.duplicates
                    .push((key_start, format!("duplicate key `{key}` in this object")));
            }
            entries.push(Entry { key, key_loc, node });
            if self.eat(b',').is_none() {
                self.eat(b'}')?;
                return Some(Value::Table(entries));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(node: &Node) -> std::ops::Range<usize> {
        match &node.loc {
            Loc::Span(r) => r.clone(),
            other => panic!("no span: {other:?}"),
        }
    }

    #[test]
    fn records_spans_of_keys_and_values_and_decodes_escapes() {
        let text =
            r#"{ "apps": [ {"name": "a\"b\u00e9", "n": -12, "f": 1.5e1, "t": true, "z": null} ] }"#;
        let root = parse_json(text).unwrap();
        let Value::Table(top) = &root.value else {
            panic!("not a table")
        };
        assert_eq!(top[0].key, "apps");
        let Value::Array(apps) = &top[0].node.value else {
            panic!("not an array")
        };
        let Value::Table(app) = &apps[0].value else {
            panic!("not a table")
        };
        let name = &app[0];
        assert_eq!(&text[span(&name.node)], r#""a\"b\u00e9""#);
        assert!(matches!(&name.node.value, Value::Str(s) if s == "a\"bé"));
        assert!(matches!(app[1].node.value, Value::Int(-12)));
        assert_eq!(&text[span(&app[1].node)], "-12");
        assert!(matches!(app[2].node.value, Value::Float(f) if f == 15.0));
        assert!(matches!(app[3].node.value, Value::Bool(true)));
        assert!(matches!(app[4].node.value, Value::Null));
        match &app[4].key_loc {
            Loc::Span(r) => assert_eq!(&text[r.clone()], "\"z\""),
            other => panic!("no span: {other:?}"),
        }
    }

    #[test]
    fn syntax_error_has_offset_and_message_without_position() {
        let text = "{\n  \"apps\": [\n    {\"name\": \"a\"},\n  ]\n}";
        let errors = parse_json(text).unwrap_err();
        assert_eq!(errors.len(), 1);
        let (offset, message) = &errors[0];
        assert_eq!(LineIndex::new(text).position(*offset), (4, 3));
        assert_eq!(message, "trailing comma");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let text = "{\"a\": 1,\n \"a\": 2}";
        let errors = parse_json(text).unwrap_err();
        assert_eq!(
            errors,
            vec![(10, "duplicate key `a` in this object".to_string())]
        );
    }
}
