//! Loading an ecosystem file: reading it, choosing the syntax by extension, parsing it into the
//! located tree, finding the apps, validating each one ([`crate::app`]), and the checks that span
//! the whole file: duplicate names, `--env <profile>` and `--only`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use pm2rs_proto::AppSpec;

use crate::app::{Ctx, check_app, join};
use crate::error::{ConfigError, ConfigErrors, Diag, LineIndex, Loc};
use crate::keys::{self, ENV_PROFILE_PREFIX, Field, Kind};
use crate::resolve::normalize;
use crate::tree::{Format, Node, Value, parse_toml};
use crate::{LoadOptions, effective_cpus, json};

/// The syntax of an ecosystem file, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Toml,
    Json,
    /// PM2's `ecosystem.config.js`: recognised, not supported.
    JavaScript,
}

impl FileKind {
    /// `.json` → JSON, `*.config.js` (`.cjs`, `.mjs`) → JavaScript, `.toml` → TOML; `None`
    /// otherwise.
    pub(crate) fn of(path: &Path) -> Option<FileKind> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        if name.ends_with(".toml") {
            Some(FileKind::Toml)
        } else if name.ends_with(".json") {
            Some(FileKind::Json)
        } else if [".config.js", ".config.cjs", ".config.mjs"]
            .iter()
            .any(|suffix| name.ends_with(suffix))
        {
            Some(FileKind::JavaScript)
        } else {
            None
        }
    }
}

/// [`crate::load_ecosystem`] with the `PATH` used for program lookups given explicitly.
pub(crate) fn load_with(
    path: &Path,
    opts: &LoadOptions,
    path_var: Option<&OsStr>,
) -> Result<Vec<AppSpec>, ConfigErrors> {
    let file_error = |message: String| {
        ConfigErrors::from(ConfigError {
            file: Some(path.to_path_buf()),
            line: None,
            column: None,
            key: None,
            message,
        })
    };
    let kind = FileKind::of(path).unwrap_or(FileKind::Toml);
    if kind == FileKind::JavaScript {
        return Err(file_error(
            "JavaScript ecosystem files are not supported by pm2rs; write the same apps as \
             ecosystem.json (PM2's JSON format) or ecosystem.toml"
                .into(),
        ));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| file_error(format!("cannot read the ecosystem file: {e}")))?;
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let prefix = String::from_utf8_lossy(&e.as_bytes()[..valid]).into_owned();
            let (line, column) = LineIndex::new(&prefix).position(valid);
            return Err(ConfigErrors::from(ConfigError {
                file: Some(path.to_path_buf()),
                line: Some(line),
                column: Some(column),
                key: None,
                message: "the file is not valid UTF-8 text".into(),
            }));
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let lines = LineIndex::new(text);
    let mut diag = Diag::default();

    let parsed = match kind {
        FileKind::Json => json::parse_json(text),
        FileKind::Toml | FileKind::JavaScript => parse_toml(text),
    };
    let root = match parsed {
        Ok(root) => root,
        Err(errors) => {
            for (offset, message) in errors {
                diag.error(&Loc::Span(offset..offset), "", message);
            }
            return Err(diag.finish(Some(path), Some(&lines)));
        }
    };
    let format = if kind == FileKind::Json {
        Format::Json
    } else {
        Format::Toml
    };

    let source = std::path::absolute(path)
        .map(|p| normalize(&p))
        .map_err(|e| file_error(format!("cannot make the path absolute: {e}")))?;
    let base_dir = source
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);

    let apps = find_apps(&root, format, &mut diag);
    let (prefix, apps): (&str, &[Node]) = apps.unwrap_or(("apps", &[]));

    let cpus = effective_cpus(opts.cpus);
    let mut checked = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        let selected =
            opts.only.is_empty() || raw_name(app).is_some_and(|name| opts.only.contains(&name));
        let ctx = Ctx {
            format,
            base_dir: &base_dir,
            cpus,
            profile: opts.env_profile.as_deref(),
            source: Some(&source),
            path_var,
            check_files: selected,
        };
        let app_path = format!("{prefix}[{i}]");
        if let Some(app) = check_app(app, &app_path, &ctx, &mut diag) {
            checked.push((app_path, app, selected));
        }
    }

    // Duplicate names: reported on the second occurrence.
    let mut first_seen: HashMap<&str, &Loc> = HashMap::new();
    for (app_path, app, _) in &checked {
        match first_seen.get(app.spec.name.as_str()) {
            Some(first) => {
                let where_first = match first {
                    Loc::Span(span) => format!("line {}", lines.line(span.start)),
                    Loc::Flag(_) | Loc::Nowhere => "earlier".to_string(),
                };
                diag.error(
                    &app.name_loc,
                    &join(app_path, "name"),
                    format!(
                        "duplicate app name `{}` (first defined at {where_first})",
                        app.spec.name
                    ),
                );
            }
            None => {
                first_seen.insert(&app.spec.name, &app.name_loc);
            }
        }
    }

    if let Some(profile) = &opts.env_profile {
        let key = format!("{ENV_PROFILE_PREFIX}{profile}");
        if !apps.iter().any(|app| table_has(app, &key)) {
            diag.error(
                &Loc::Flag("--env"),
                "",
                format!("no app in this file defines `{key}` (requested with --env {profile})"),
            );
        }
    }

    for wanted in &opts.only {
        if !apps
            .iter()
            .any(|app| raw_name(app).as_deref() == Some(wanted))
        {
            let known: Vec<String> = apps.iter().filter_map(raw_name).collect();
            diag.error(
                &Loc::Flag("--only"),
                "",
                format!(
                    "no app named `{wanted}` in this file (its apps: {})",
                    known.join(", ")
                ),
            );
        }
    }

    if !diag.is_empty() {
        return Err(diag.finish(Some(path), Some(&lines)));
    }
    Ok(checked
        .into_iter()
        .filter(|(_, _, selected)| *selected)
        .map(|(_, app, _)| app.spec)
        .collect())
}

/// The apps array and the key path prefix of its elements. TOML: the `apps` key (`[[apps]]`),
/// the only top-level key. JSON: `{"apps": [...]}` or a bare array of apps.
fn find_apps<'n>(
    root: &'n Node,
    format: Format,
    diag: &mut Diag,
) -> Option<(&'static str, &'n [Node])> {
    let entries = match &root.value {
        Value::Array(apps) if format == Format::Json => {
            return non_empty_apps(root, apps, "", diag).map(|apps| ("", apps));
        }
        Value::Table(entries) => entries,
        other => {
            diag.error(
                &root.loc,
                "",
                format!(
                    "expected an object with an `apps` array, got {}",
                    other.type_name(format)
                ),
            );
            return None;
        }
    };
    let mut apps = None;
    for entry in entries {
        let key = entry.key.as_str();
        if key == "apps" {
            apps = Some(entry);
        } else if key == "deploy" && format == Format::Json {
            diag.error(
                &entry.key_loc,
                key,
                "`deploy` (PM2 deployments) is not supported yet by pm2rs; remove it",
            );
        } else if keys::lookup(key).is_some() || key.starts_with(ENV_PROFILE_PREFIX) {
            let hint = match format {
                Format::Json => "app settings go inside an object of the `apps` array",
                Format::Toml | Format::Cli => "app settings go inside an `[[apps]]` table",
            };
            diag.error(
                &entry.key_loc,
                key,
                format!("unknown top-level key `{key}`: {hint}"),
            );
        } else {
            let suggestion = keys::suggest(key, ["apps"])
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            diag.error(
                &entry.key_loc,
                key,
                format!("unknown top-level key `{key}` (only `apps` is allowed){suggestion}"),
            );
        }
    }
    let Some(apps) = apps else {
        let message = match format {
            Format::Json => "no `apps` array: add `\"apps\": [{\"script\": \"...\"}]`",
            Format::Toml | Format::Cli => "no apps: add an `[[apps]]` table with a `script`",
        };
        diag.error(&Loc::Nowhere, "", message);
        return None;
    };
    match &apps.node.value {
        Value::Array(items) => non_empty_apps(&apps.node, items, "apps", diag).map(|a| ("apps", a)),
        other => {
            let expected = match format {
                Format::Json => "an array of apps",
                Format::Toml | Format::Cli => "an array of apps (`[[apps]]` tables)",
            };
            diag.error(
                &apps.node.loc,
                "apps",
                format!("expected {expected}, got {}", other.type_name(format)),
            );
            None
        }
    }
}

fn non_empty_apps<'n>(
    node: &Node,
    apps: &'n [Node],
    path: &str,
    diag: &mut Diag,
) -> Option<&'n [Node]> {
    if apps.is_empty() {
        diag.error(&node.loc, path, "no apps defined");
        return None;
    }
    Some(apps)
}

/// Whether the app table has a non-null `key`.
fn table_has(app: &Node, key: &str) -> bool {
    matches!(&app.value, Value::Table(entries)
        if entries.iter().any(|e| e.key == key && !matches!(e.node.value, Value::Null)))
}

/// The name an app table asks for before validation (its `name`, else its script's file stem),
/// to match `--only` against apps whatever their other problems.
fn raw_name(app: &Node) -> Option<String> {
    let Value::Table(entries) = &app.value else {
        return None;
    };
    let string_of = |field: Field| {
        entries
            .iter()
            .find_map(|e| match (&e.node.value, keys::lookup(&e.key)) {
                (Value::Str(s), Some(Kind::Field(f))) if f == field => Some(s.as_str()),
                _ => None,
            })
    };
    if let Some(name) = string_of(Field::Name) {
        return Some(name.to_string());
    }
    let script = string_of(Field::Script)?;
    Path::new(script)
        .file_stem()
        .and_then(OsStr::to_str)
        .map(str::to_string)
}
