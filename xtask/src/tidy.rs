//! Repository rules, checked as ordinary tests (`cargo test -p xtask`, part of `cargo test --workspace`).
//!
//! Each test walks the repository from the workspace root, collects every violation as
//! `<file>: <rule>`, and fails once with the whole list, so one run shows everything to fix.
//! Every rule says why it exists; a rule without a reason should be deleted, not obeyed.

mod doc_names;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (the parent of `xtask/`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// `path` relative to the root, with `/` separators, for messages.
fn display(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

/// Every file under `dir` (recursively) whose name satisfies `keep`, skipping `target` directories and
/// hidden directories. Sorted, so failure lists are stable.
fn files_under(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    pending.push(path);
                }
            } else if keep(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The directories whose sources the rules cover.
const SOURCE_DIRS: &[&str] = &["crates", "xtask"];

/// Every `.rs` file under [`SOURCE_DIRS`].
fn rust_files(root: &Path) -> Vec<PathBuf> {
    SOURCE_DIRS
        .iter()
        .flat_map(|dir| {
            files_under(&root.join(dir), &|path| {
                path.extension().is_some_and(|ext| ext == "rs")
            })
        })
        .collect()
}

/// Fails with one line per violation, if there are any.
fn report(rule: &str, violations: Vec<String>) {
    assert!(
        violations.is_empty(),
        "tidy rule violated: {rule}\n{}\n",
        violations
            .iter()
            .map(|v| format!("  {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Rule: every `.rs` file starts with a `//!` module doc (its first non-empty line).
///
/// Why: the module doc is the map. A reader opening any file learns what it owns before reading code,
/// and `cargo doc` shows every module with a summary.
#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let root = repo_root();
    let mut violations = Vec::new();
    for path in rust_files(&root) {
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                violations.push(format!("{}: cannot be read: {e}", display(&root, &path)));
                continue;
            }
        };
        let first = text.lines().map(str::trim).find(|line| !line.is_empty());
        if !first.is_some_and(|line| line.starts_with("//!")) {
            violations.push(format!(
                "{}: first non-empty line must be a `//!` module doc",
                display(&root, &path)
            ));
        }
    }
    report("every .rs file starts with a `//!` module doc", violations);
}

/// Rule: no debugging or unfinished-work markers in any `.rs` file, not even in comments or strings.
///
/// Why: `dbg` output pollutes the daemon's stdout, `todo`/`unimplemented` panic at run time, and an
/// ignored test is a test nobody runs. The compiler lints catch the macros in code; this catches the
/// rest (doc examples, commented-out code) and the ignore attribute, which no lint covers.
#[test]
fn no_debugging_leftovers() {
    // Built from pieces so that this file does not contain the strings it looks for.
    let needles = [
        concat!("db", "g!("),
        concat!("to", "do!("),
        concat!("unimpl", "emented!("),
        concat!("#[", "ignore"),
    ];
    let root = repo_root();
    let mut violations = Vec::new();
    for path in rust_files(&root) {
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        for (index, line) in text.lines().enumerate() {
            for needle in needles {
                if line.contains(needle) {
                    violations.push(format!(
                        "{}:{}: contains `{needle}`",
                        display(&root, &path),
                        index + 1
                    ));
                }
            }
        }
    }
    report(
        "no debugging or unfinished-work markers in .rs files",
        violations,
    );
}

/// The dependency tables of a manifest: `[dependencies]`, `[dev-dependencies]`,
/// `[build-dependencies]`, and the same under every `[target.<cfg>]`, with a label for messages.
fn dependency_tables(manifest: &toml::Table) -> Vec<(String, &toml::Table)> {
    const KINDS: &[&str] = &["dependencies", "dev-dependencies", "build-dependencies"];
    let mut tables = Vec::new();
    for kind in KINDS {
        if let Some(table) = manifest.get(*kind).and_then(toml::Value::as_table) {
            tables.push(((*kind).to_string(), table));
        }
    }
    if let Some(targets) = manifest.get("target").and_then(toml::Value::as_table) {
        for (cfg, target) in targets {
            for kind in KINDS {
                if let Some(table) = target.get(*kind).and_then(toml::Value::as_table) {
                    tables.push((format!("target.{cfg}.{kind}"), table));
                }
            }
        }
    }
    tables
}

/// Rule: every dependency of every crate is `<name>.workspace = true`, declared once in the root
/// `[workspace.dependencies]` (a crate may still add features or make it optional).
///
/// Why: one version of each dependency for the whole workspace, chosen in one place, so crates can't
/// drift apart and the lock file stays small.
#[test]
fn dependencies_come_from_the_workspace() {
    let root = repo_root();
    let manifests: Vec<PathBuf> = SOURCE_DIRS
        .iter()
        .flat_map(|dir| {
            files_under(&root.join(dir), &|path| {
                path.file_name().is_some_and(|name| name == "Cargo.toml")
            })
        })
        .collect();
    assert!(
        !manifests.is_empty(),
        "no Cargo.toml found under crates/ or xtask/"
    );
    let mut violations = Vec::new();
    for path in manifests {
        let shown = display(&root, &path);
        let manifest = match fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| text.parse::<toml::Table>().map_err(|e| e.to_string()))
        {
            Ok(manifest) => manifest,
            Err(e) => {
                violations.push(format!("{shown}: cannot be read as TOML: {e}"));
                continue;
            }
        };
        for (kind, table) in dependency_tables(&manifest) {
            for (name, spec) in table {
                let inherited = spec
                    .as_table()
                    .and_then(|spec| spec.get("workspace"))
                    .and_then(toml::Value::as_bool)
                    == Some(true);
                if !inherited {
                    violations.push(format!(
                        "{shown}: [{kind}] `{name}` must be `{name}.workspace = true` \
                         (declare it in the root [workspace.dependencies])"
                    ));
                }
            }
        }
    }
    report("every dependency uses `workspace = true`", violations);
}

/// What may sit at the repository root. Anything else belongs in a crate, `docs/` or `xtask/`.
const ROOT_ALLOWED: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "crates",
    "docs",
    "ecosystem.example.toml",
    "xtask",
    "README.md",
    ".gitignore",
    ".ci",
    ".cargo",
    ".git",
    "LICENSE",
    "target",
];

/// Names of the root's entries: from `git ls-files` (tracked plus untracked-but-not-ignored, so
/// ignored build output and logs don't count) when git works, else from the directory listing.
fn root_entries(root: &Path) -> Vec<String> {
    let listed = Command::new("git")
        .args([
            "ls-files",
            "--cached",
            "--others",
            "--exclude-standard",
            "-z",
        ])
        .current_dir(root)
        .output();
    let mut names: Vec<String> = match listed {
        Ok(output) if output.status.success() => output
            .stdout
            .split(|byte| *byte == 0)
            .filter(|path| !path.is_empty())
            .filter_map(|path| {
                let path = String::from_utf8_lossy(path);
                path.split('/').next().map(str::to_string)
            })
            .collect(),
        _ => fs::read_dir(root)
            .expect("the repository root can be listed")
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect(),
    };
    names.sort();
    names.dedup();
    names
}

/// Rule: nothing loose at the repository root beyond [`ROOT_ALLOWED`].
///
/// Why: the root is the first thing a newcomer sees; scratch files, stray notes and one-off scripts
/// there hide the few files that matter.
#[test]
fn nothing_loose_at_the_repository_root() {
    let root = repo_root();
    let violations: Vec<String> = root_entries(&root)
        .into_iter()
        .filter(|name| !ROOT_ALLOWED.contains(&name.as_str()))
        .map(|name| {
            format!(
                "{name}: not allowed at the repository root (move it into a crate, docs/ or xtask/)"
            )
        })
        .collect();
    report("nothing loose at the repository root", violations);
}

/// Rule: the architecture and configuration docs exist and are not empty.
///
/// Why: the design notes say the code's own docs describe how it is built and configured today;
/// losing or emptying them is a regression like any failing test.
#[test]
fn architecture_and_configuration_docs_exist() {
    let root = repo_root();
    let mut violations = Vec::new();
    for doc in ["docs/architecture.md", "docs/configuration.md"] {
        match fs::read_to_string(root.join(doc)) {
            Ok(text) if text.trim().is_empty() => violations.push(format!("{doc}: is empty")),
            Ok(_) => {}
            Err(e) => violations.push(format!("{doc}: missing or unreadable: {e}")),
        }
    }
    report(
        "docs/architecture.md and docs/configuration.md exist",
        violations,
    );
}

/// Rule: every backticked name in docs/architecture.md exists in the code. Each span outside
/// fenced blocks is checked by the first of these that fits:
/// - a template (`ready <pid>`, `<file>.1`: something in `<lower-case>` brackets): skipped;
/// - a command, `pm2rs X …`, `cargo xtask X …` or `xtask X …`: `X` is a subcommand (its
///   CamelCase is a word of the code, as clap derives it, or `"X"` is a string of the sources),
///   and each `--flag` in it is a flag (below);
/// - a flag, `--name …`: `"--name"` is a string of the sources, or `name` (snake_case) a word of
///   the code;
/// - a signature, `name(a, b) -> T` (identifiers for arguments): `name` is checked as a Rust
///   path (below), and some `fn name` of the code takes exactly that many parameters (`self`
///   aside), each argument being the parameter's name or a type named in its type, and returns a
///   type naming every identifier of `T`;
/// - any other span with a space (prose, snippets such as `opt-level = "s"`): skipped;
/// - `$VAR/…/file`: `VAR` is a word of the code and `file` appears in the sources;
/// - an absolute path (`/proc`, system files) or one under `target/` (build output): skipped;
/// - a path (it has a `/`, or ends in `.rs`, `.toml`, `.js`, `.md`, `.json`, `.lock`, `.sh`):
///   it exists relative to the repository root or, under a `###` heading of the code map whose
///   first span names a directory (`crates/x`), relative to `crates/x/` or `crates/x/src/`; a bare
///   file name (`lib.rs`) may be anywhere in that crate (anywhere under `crates/` or `xtask/`
///   outside such a section);
/// - a Rust path (`Foo`, `foo_bar`, `a::b::C`, `Foo::bar`, `foo()`, `waitpid(-1)`,
///   `routes::*`): every segment is a whole word of the code; after a module segment (some
///   `a.rs` or `a/mod.rs`), the next one is a word of that module's file; after a type segment
///   defined or implemented in the repository, the next one is a word of a file doing so;
/// - anything else (header names, file names, sysctls, `[[apps]]`): it appears verbatim in the
///   sources (a kebab-case word may instead have its CamelCase in the code: `reload-logs`).
///
/// "The code" is the `.rs` files under `crates/` and `xtask/` with their comments removed (a name
/// that survives only in a comment is stale), plus the `.js` files and the manifests (`Cargo.toml`
/// files, `.cargo/config.toml`); "the sources" are the same files with their comments.
///
/// Why: the architecture page is the map a newcomer trusts. Renaming, moving or deleting code
/// without updating the page makes it lie quietly; this makes it fail loudly, with every stale
/// name and its line.
#[test]
fn architecture_doc_names_only_what_exists() {
    let root = repo_root();
    let doc = "docs/architecture.md";
    let page = fs::read_to_string(root.join(doc)).expect("docs/architecture.md can be read");
    let mut files: Vec<PathBuf> = SOURCE_DIRS
        .iter()
        .flat_map(|dir| {
            files_under(&root.join(dir), &|path| {
                path.extension()
                    .is_some_and(|ext| ext == "rs" || ext == "js" || ext == "toml")
            })
        })
        .collect();
    files.push(root.join("Cargo.toml"));
    files.push(root.join(".cargo/config.toml"));
    let index = doc_names::index(&root, files);
    let tokens = doc_names::tokens(&page, &root);
    assert!(
        tokens.len() > 50,
        "only {} backticked spans found in {doc}: is the page or the parser broken?",
        tokens.len()
    );
    let violations = tokens
        .iter()
        .filter_map(|token| {
            let why = index.check(token)?;
            Some(format!("{doc}:{}: `{}`: {why}", token.line, token.text))
        })
        .collect();
    report(
        "every backticked path and name in docs/architecture.md exists in the code",
        violations,
    );
}
