//! `pm2rs convert FILE`: any ecosystem pm2rs reads (PM2 JavaScript, JSON, YAML, or TOML) written
//! out as pm2rs TOML. Keys pm2rs does not support yet are left out, each with a `#` comment saying
//! whether PM2 would have used it; settings whose meaning differs from PM2's get a comment too.
//! The rest is validated as `start` would (files on disk excepted), so the output loads as the
//! same apps.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::Path;

use crate::LoadOptions;
use crate::app::default_interpreter;
use crate::ecosystem::{self, FileKind, Source};
use crate::error::ConfigErrors;
use crate::keys::{self, Field, Kind};
use crate::tree::{Entry, Node, Value};

/// [`crate::convert_ecosystem`] with the `PATH` for `node` given explicitly.
pub(crate) fn convert_file(
    path: &Path,
    opts: &LoadOptions,
    path_var: Option<&OsStr>,
) -> Result<String, ConfigErrors> {
    let source = ecosystem::read_file(path, opts, path_var)?;
    let root = ecosystem::parse(&source)?;
    let plan = Plan::of(&root);
    let opts = LoadOptions {
        env_profile: None,
        only: Vec::new(),
        ..opts.clone()
    };
    ecosystem::validate(&source, &plan.kept, &opts, path_var, false)?;
    Ok(plan.render(&source))
}

/// One line of an app table in the output.
enum Line {
    Key(Entry),
    Note(String),
}

/// What the output holds: the tree without the keys left out (validated like a file), and the
/// lines of each app table with their comments.
struct Plan {
    kept: Node,
    apps: Vec<Vec<Line>>,
    notes: Vec<String>,
}

impl Plan {
    fn of(root: &Node) -> Plan {
        let mut notes = Vec::new();
        let mut apps_out = Vec::new();
        let mut filter_apps = |items: &[Node]| -> Vec<Node> {
            items
                .iter()
                .map(|app| {
                    let (kept, lines) = app_lines(app);
                    apps_out.push(lines);
                    kept
                })
                .collect()
        };
        let kept_value = match &root.value {
            Value::Array(items) => Value::Array(filter_apps(items)),
            Value::Table(entries) => {
                let mut kept = Vec::new();
                for entry in entries {
                    match (&entry.key[..], &entry.node.value) {
                        ("deploy", _) => notes.push(
                            "`deploy` left out: PM2 deployments are not supported by pm2rs.".into(),
                        ),
                        ("apps", Value::Array(items)) => kept.push(Entry {
                            node: Node::new(
                                Value::Array(filter_apps(items)),
                                entry.node.loc.clone(),
                            ),
                            ..entry.clone()
                        }),
                        _ => kept.push(entry.clone()),
                    }
                }
                Value::Table(kept)
            }
            other => other.clone(),
        };
        Plan {
            kept: Node::new(kept_value, root.loc.clone()),
            apps: apps_out,
            notes,
        }
    }

    fn render(&self, source: &Source) -> String {
        let name = source.name.display();
        let mut out = format!("# pm2rs ecosystem, converted by `pm2rs convert` from {name}.\n");
        if source.kind == FileKind::JavaScript {
            out.push_str(
                "# The JavaScript was evaluated with node: values it computed (from process.env,\n\
                 # for example) are written as they were at the conversion.\n",
            );
        }
        out.push_str(
            "# Relative paths resolve against this file's directory: save it next to the original.\n",
        );
        for note in &self.notes {
            let _ = writeln!(out, "# {note}");
        }
        for lines in &self.apps {
            out.push_str("\n[[apps]]\n");
            for line in lines {
                match line {
                    Line::Key(entry) => {
                        let _ = writeln!(out, "{} = {}", key(&entry.key), toml(&entry.node.value));
                    }
                    Line::Note(note) => {
                        for line in note.lines() {
                            let _ = writeln!(out, "# {line}");
                        }
                    }
                }
            }
        }
        out
    }
}

/// An app without the keys pm2rs does not support, and its output lines.
fn app_lines(app: &Node) -> (Node, Vec<Line>) {
    let Value::Table(entries) = &app.value else {
        return (app.clone(), Vec::new());
    };
    let mut kept = Vec::new();
    let mut lines = Vec::new();
    for entry in entries {
        if matches!(entry.node.value, Value::Null) {
            continue;
        }
        let written = format!("{} = {}", key(&entry.key), toml(&entry.node.value));
        match keys::lookup(&entry.key) {
            Some(Kind::NotYet(noop)) if noop.accepts(&entry.node.value) => {
                lines.push(Line::Note(format!(
                    "left out, not supported yet by pm2rs (this value changes nothing): {written}"
                )))
            }
            Some(Kind::NotYet(_)) => lines.push(Line::Note(format!(
                "NOT SUPPORTED YET by pm2rs, left out (PM2 would use it): {written}"
            ))),
            Some(Kind::Field(field)) => {
                kept.push(entry.clone());
                lines.push(Line::Key(Entry {
                    key: keys::canonical(field).to_string(),
                    ..entry.clone()
                }));
            }
            None => {
                kept.push(entry.clone());
                lines.push(Line::Key(entry.clone()));
            }
        }
    }
    lines.extend(meaning_notes(&kept).into_iter().map(Line::Note));
    (Node::new(Value::Table(kept), app.loc.clone()), lines)
}

/// Settings that pm2rs reads differently from PM2.
fn meaning_notes(entries: &[Entry]) -> Vec<String> {
    let string_of = |field: Field| keys::string_field(entries, field);
    let has = |field: Field| {
        entries
            .iter()
            .any(|e| keys::lookup(&e.key) == Some(Kind::Field(field)))
    };
    let script = string_of(Field::Script).unwrap_or_default();
    let interpreter = string_of(Field::Interpreter);
    let by_node = match interpreter {
        Some(program) => Path::new(program).file_name() == Some(OsStr::new("node")),
        None => default_interpreter(script) == Some("node"),
    };
    let mut notes = Vec::new();
    if by_node && has(Field::Instances) && !has(Field::ExecMode) {
        notes.push(
            "PM2 runs a Node app that sets `instances` but no `exec_mode` in cluster mode;\n\
             pm2rs runs it in fork mode: add exec_mode = \"cluster\" for PM2's behaviour."
                .into(),
        );
    }
    if interpreter.is_none() && !script.is_empty() && default_interpreter(script).is_none() {
        notes.push(
            "PM2 runs a script whose extension it does not know with node, unless it is a binary;\n\
             pm2rs runs it directly (it must be executable): add interpreter = \"node\" if it is\n\
             a Node script."
                .into(),
        );
    }
    notes
}

/// A key, bare when TOML allows it.
fn key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare { name.to_string() } else { string(name) }
}

/// A TOML basic string.
fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A value in TOML syntax (tables inline). `null` entries of tables are left out (they mean
/// "not set"); elsewhere `null` and date-times never pass validation, and are only shown in
/// comments.
fn toml(value: &Value) -> String {
    match value {
        Value::Str(s) => string(s),
        Value::Int(n) => n.to_string(),
        Value::Float(f) if f.is_nan() => "nan".into(),
        Value::Float(f) if f.is_infinite() => if *f > 0.0 { "inf" } else { "-inf" }.into(),
        Value::Float(f) => format!("{f:?}"),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Datetime => "<date-time>".into(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(|n| toml(&n.value)).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Table(entries) => {
            let items: Vec<String> = entries
                .iter()
                .filter(|e| !matches!(e.node.value, Value::Null))
                .map(|e| format!("{} = {}", key(&e.key), toml(&e.node.value)))
                .collect();
            if items.is_empty() {
                "{}".into()
            } else {
                format!("{{ {} }}", items.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Loc;

    fn node(value: Value) -> Node {
        Node::new(value, Loc::Nowhere)
    }

    #[test]
    fn values_are_written_as_toml() {
        let env = Value::Table(vec![
            Entry {
                key: "A.B".into(),
                key_loc: Loc::Nowhere,
                node: node(Value::Str("x\"y\\\n\u{1}".into())),
            },
            Entry {
                key: "GONE".into(),
                key_loc: Loc::Nowhere,
                node: node(Value::Null),
            },
        ]);
        assert_eq!(toml(&env), r#"{ "A.B" = "x\"y\\\n\u0001" }"#);
        let array = Value::Array(vec![
            node(Value::Int(-3)),
            node(Value::Float(1600.0)),
            node(Value::Bool(true)),
        ]);
        assert_eq!(toml(&array), "[-3, 1600.0, true]");
        assert_eq!(toml(&Value::Float(f64::NEG_INFINITY)), "-inf");
        assert_eq!(key("max_restarts"), "max_restarts");
        assert_eq!(key(""), "\"\"");
    }
}
