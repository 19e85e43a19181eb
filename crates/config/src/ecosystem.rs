//! Loading an ecosystem: reading the file (or standard input), choosing the syntax by name,
//! parsing it into the located tree (JavaScript is first evaluated to JSON by [`crate::js`]),
//! finding the apps, validating each one ([`crate::app`]), and the checks that span the whole
//! file: duplicate names, `--env <profile>` and `--only`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use pm2rs_proto::AppSpec;

use crate::app::{Ctx, check_app, join};
use crate::error::{ConfigError, ConfigErrors, Diag, LineIndex, Loc};
use crate::js::{self, DEFAULT_JS_TIMEOUT, JsError};
use crate::keys::{self, ENV_PROFILE_PREFIX, Field};
use crate::resolve::normalize;
use crate::tree::{Format, Node, Value, parse_toml};
use crate::{LoadOptions, effective_cpus, json, yaml};

/// The syntax of an ecosystem file, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Toml,
    Json,
    Yaml,
    /// PM2's `ecosystem.config.js` (also `.cjs`, `.mjs`): evaluated with node.
    JavaScript,
}

impl FileKind {
    /// By the end of the file name, case-insensitively: `.toml`, `.json`, `.yml`/`.yaml`, and
    /// `.config.js`/`.config.cjs`/`.config.mjs` (so `server.js` stays a script); `None`
    /// otherwise.
    pub(crate) fn of(path: &Path) -> Option<FileKind> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        let ends = |suffixes: &[&str]| suffixes.iter().any(|s| name.ends_with(s));
        if ends(&[".toml"]) {
            Some(FileKind::Toml)
        } else if ends(&[".json"]) {
            Some(FileKind::Json)
        } else if ends(&[".yml", ".yaml"]) {
            Some(FileKind::Yaml)
        } else if ends(&[".config.js", ".config.cjs", ".config.mjs"]) {
            Some(FileKind::JavaScript)
        } else {
            None
        }
    }
}

/// An ecosystem's text, ready to be parsed, and where it came from.
#[derive(Debug)]
pub(crate) struct Source {
    /// How errors name the input: the path as given, or `<stdin>`.
    pub(crate) name: PathBuf,
    pub(crate) kind: FileKind,
    /// The text to parse: the file's, or for JavaScript the JSON that node printed.
    pub(crate) text: String,
    /// Absolute path of the file (`None` for standard input).
    pub(crate) file: Option<PathBuf>,
    /// The absolute directory relative paths refer to.
    pub(crate) base_dir: PathBuf,
    /// A JavaScript file's own text, where errors look for their key's line.
    pub(crate) js_text: Option<String>,
}

impl Source {
    pub(crate) fn format(&self) -> Format {
        match self.kind {
            FileKind::Toml => Format::Toml,
            FileKind::Json | FileKind::JavaScript => Format::Json,
            FileKind::Yaml => Format::Yaml,
        }
    }

    /// Positions in the text, when they are positions in what the user wrote (not for the JSON
    /// of a JavaScript file: errors there carry the key path alone).
    pub(crate) fn lines(&self) -> Option<LineIndex<'_>> {
        (self.kind != FileKind::JavaScript).then(|| LineIndex::new(&self.text))
    }
}

fn file_error(name: &Path, message: String) -> ConfigErrors {
    ConfigErrors::from(ConfigError {
        file: Some(name.to_path_buf()),
        line: None,
        column: None,
        key: None,
        message,
    })
}

/// Name of standard input in errors.
pub(crate) const STDIN_NAME: &str = "<stdin>";

/// Reads the file at `path` (TOML unless its name says otherwise; JavaScript is evaluated).
pub(crate) fn read_file(
    path: &Path,
    opts: &LoadOptions,
    path_var: Option<&OsStr>,
) -> Result<Source, ConfigErrors> {
    let kind = FileKind::of(path).unwrap_or(FileKind::Toml);
    let file = std::path::absolute(path)
        .map(|p| normalize(&p))
        .map_err(|e| file_error(path, format!("cannot make the path absolute: {e}")))?;
    let base_dir = file
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let bytes = std::fs::read(path)
        .map_err(|e| file_error(path, format!("cannot read the ecosystem file: {e}")))?;
    let (text, js_text) = if kind == FileKind::JavaScript {
        let js_text = String::from_utf8_lossy(&bytes).into_owned();
        let timeout = opts.js_timeout.unwrap_or(DEFAULT_JS_TIMEOUT);
        let json =
            js::evaluate(&file, path_var, timeout).map_err(|e| js_errors(path, e, &js_text))?;
        (json, Some(js_text))
    } else {
        (decode(path, bytes)?, None)
    };
    Ok(Source {
        name: path.to_path_buf(),
        kind,
        text,
        file: Some(file),
        base_dir,
        js_text,
    })
}

/// An ecosystem read from standard input: JSON when it starts with `{`, else TOML. Relative
/// paths refer to `cwd`.
pub(crate) fn read_stdin(bytes: Vec<u8>, cwd: &Path) -> Result<Source, ConfigErrors> {
    let name = PathBuf::from(STDIN_NAME);
    let text = decode(&name, bytes)?;
    let kind = if text.trim_start().starts_with('{') {
        FileKind::Json
    } else {
        FileKind::Toml
    };
    let base_dir = std::path::absolute(cwd)
        .map(|p| normalize(&p))
        .map_err(|e| file_error(&name, format!("cannot make the directory absolute: {e}")))?;
    Ok(Source {
        name,
        kind,
        text,
        file: None,
        base_dir,
        js_text: None,
    })
}

fn js_errors(name: &Path, error: JsError, js_text: &str) -> ConfigErrors {
    match error {
        JsError::Failed(message) => file_error(name, message),
        JsError::Values(problems) => {
            let mut errors = ConfigErrors {
                errors: problems
                    .into_iter()
                    .map(|(key, message)| ConfigError {
                        file: Some(name.to_path_buf()),
                        line: None,
                        column: None,
                        key: (!key.is_empty()).then_some(key),
                        message,
                    })
                    .collect(),
            };
            js::locate_keys(js_text, &mut errors);
            errors
        }
    }
}

/// UTF-8 text without a byte-order mark, or an error at the first invalid byte.
fn decode(name: &Path, bytes: Vec<u8>) -> Result<String, ConfigErrors> {
    match String::from_utf8(bytes) {
        Ok(text) => Ok(match text.strip_prefix('\u{feff}') {
            Some(rest) => rest.to_string(),
            None => text,
        }),
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let prefix = String::from_utf8_lossy(&e.as_bytes()[..valid]).into_owned();
            let (line, column) = LineIndex::new(&prefix).position(valid);
            Err(ConfigErrors::from(ConfigError {
                file: Some(name.to_path_buf()),
                line: Some(line),
                column: Some(column),
                key: None,
                message: "the file is not valid UTF-8 text".into(),
            }))
        }
    }
}

/// The located tree of `source`, or its syntax errors.
pub(crate) fn parse(source: &Source) -> Result<Node, ConfigErrors> {
    let parsed = match source.kind {
        FileKind::Json | FileKind::JavaScript => json::parse_json(&source.text),
        FileKind::Yaml => yaml::parse_yaml(&source.text),
        FileKind::Toml => parse_toml(&source.text),
    };
    parsed.map_err(|errors| {
        if source.kind == FileKind::JavaScript {
            // The evaluation script prints valid JSON: something else wrote to stdout too.
            let message = "node printed something else than the configuration on stdout (does \
                           the file write to file descriptor 1 itself?)";
            return file_error(&source.name, message.into());
        }
        let mut diag = Diag::default();
        for (offset, message) in errors {
            diag.error(&Loc::Span(offset..offset), "", message);
        }
        diag.finish(Some(&source.name), source.lines().as_ref())
    })
}

/// [`crate::load_ecosystem`] with the `PATH` used for program lookups given explicitly.
pub(crate) fn load_with(
    path: &Path,
    opts: &LoadOptions,
    path_var: Option<&OsStr>,
) -> Result<Vec<AppSpec>, ConfigErrors> {
    let source = read_file(path, opts, path_var)?;
    let root = parse(&source)?;
    validate(&source, &root, opts, path_var, true)
}

/// Validates every app of the tree `root` of `source`. `check_files = false` checks no file
/// on disk for any app (as `--only` does for the apps it leaves out).
pub(crate) fn validate(
    source: &Source,
    root: &Node,
    opts: &LoadOptions,
    path_var: Option<&OsStr>,
    check_files: bool,
) -> Result<Vec<AppSpec>, ConfigErrors> {
    let format = source.format();
    let lines = source.lines();
    let mut diag = Diag::default();

    let apps = find_apps(root, format, &mut diag);
    let (prefix, apps): (&str, &[Node]) = apps.unwrap_or(("apps", &[]));

    let cpus = effective_cpus(opts.cpus);
    let mut checked = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        let selected =
            opts.only.is_empty() || raw_name(app).is_some_and(|name| opts.only.contains(&name));
        let ctx = Ctx {
            format,
            base_dir: &source.base_dir,
            cpus,
            profile: opts.env_profile.as_deref(),
            source: source.file.as_deref(),
            path_var,
            check_files: check_files && selected,
        };
        let app_path = format!("{prefix}[{i}]");
        if let Some(app) = check_app(app, &app_path, &ctx, &mut diag) {
            checked.push((app_path, app, selected));
        }
    }

    // Duplicate names: reported on the second occurrence.
    let mut first_seen: HashMap<&str, (&Loc, &str)> = HashMap::new();
    for (app_path, app, _) in &checked {
        match first_seen.get(app.spec.name.as_str()) {
            Some((first, first_path)) => {
                let where_first = match (first, &lines) {
                    (Loc::Span(span), Some(lines)) => format!("line {}", lines.line(span.start)),
                    _ => (*first_path).to_string(),
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
                first_seen.insert(&app.spec.name, (&app.name_loc, app_path));
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
        let mut errors = diag.finish(Some(&source.name), lines.as_ref());
        if let Some(js) = &source.js_text {
            js::locate_keys(js, &mut errors);
        }
        return Err(errors);
    }
    Ok(checked
        .into_iter()
        .filter(|(_, _, selected)| *selected)
        .map(|(_, app, _)| app.spec)
        .collect())
}

/// The apps array and the key path prefix of its elements. TOML: the `apps` key (`[[apps]]`),
/// the only top-level key. JSON (and JavaScript) and YAML: `{"apps": [...]}` or a bare array of apps.
fn find_apps<'n>(
    root: &'n Node,
    format: Format,
    diag: &mut Diag,
) -> Option<(&'static str, &'n [Node])> {
    let entries = match &root.value {
        Value::Array(apps) if matches!(format, Format::Json | Format::Yaml) => {
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
        } else if key == "deploy" && matches!(format, Format::Json | Format::Yaml) {
            diag.error(
                &entry.key_loc,
                key,
                "`deploy` (PM2 deployments) is not supported yet by pm2rs; remove it",
            );
        } else if keys::lookup(key).is_some() || key.starts_with(ENV_PROFILE_PREFIX) {
            let hint = match format {
                Format::Json => "app settings go inside an object of the `apps` array",
                Format::Yaml => "app settings go inside an entry of the `apps` list",
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
            Format::Yaml => "no `apps` list: add `apps:` with an entry `- script: ...`",
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
                Format::Yaml => "a list of apps",
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
    let string_of = |field: Field| keys::string_field(entries, field);
    if let Some(name) = string_of(Field::Name) {
        return Some(name.to_string());
    }
    let script = string_of(Field::Script)?;
    Path::new(script)
        .file_stem()
        .and_then(OsStr::to_str)
        .map(str::to_string)
}
