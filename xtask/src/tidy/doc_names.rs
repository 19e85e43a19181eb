//! What the docs-can't-drift rule needs: the backticked tokens of a Markdown page (with their line
//! and the code-map section they sit in), an index of the repository's sources (words of the code
//! with comments removed, raw text, module files, `fn` signatures), and the check of one token
//! against that index. The rules themselves are listed on the test,
//! `tidy::architecture_doc_names_only_what_exists`.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A backticked span of the page.
pub struct Token {
    /// 1-based line of its opening backtick.
    pub line: usize,
    pub text: String,
    /// The directory named by the `###` heading it sits under (`crates/daemon`), if any.
    pub section: Option<String>,
}

/// Every inline code span outside fenced blocks, in page order. A `###` heading whose first span
/// names a directory of the repository opens a section; any other heading closes it.
pub fn tokens(page: &str, root: &Path) -> Vec<Token> {
    let mut found = Vec::new();
    let mut section = None;
    let mut fenced = false;
    for (index, line) in page.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let spans = spans(line);
        if line.starts_with('#') {
            section = match (line.starts_with("### "), spans.first()) {
                (true, Some(first)) if root.join(first).is_dir() => Some(first.clone()),
                _ => None,
            };
        }
        found.extend(spans.into_iter().map(|text| Token {
            line: index + 1,
            text,
            section: section.clone(),
        }));
    }
    found
}

/// The inline code spans of one line (an unclosed backtick starts none).
fn spans(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('`') else { break };
        if end > 0 {
            out.push(after[..end].to_string());
        }
        rest = &after[end + 1..];
    }
    out
}

/// One `fn` definition: its parameters (`self` left out) and its return type.
struct FnSig {
    params: Vec<(String, String)>,
    ret: String,
}

/// What the sources contain.
pub struct Index {
    root: PathBuf,
    /// Every word (`[A-Za-z0-9_]+`) of the `.rs` files with comments removed (strings kept: env
    /// var names and file names live there), of the `.js` files and of the manifests.
    words: HashSet<String>,
    /// The same per `.rs` file, for the module and type rules.
    file_words: HashMap<PathBuf, HashSet<String>>,
    /// Comment-free lines per `.rs` file, for finding where a type is defined or implemented.
    file_code: HashMap<PathBuf, String>,
    /// Raw text of every source file and manifest, comments included.
    raw: Vec<String>,
    /// `fn` definitions by name.
    fns: HashMap<String, Vec<FnSig>>,
}

/// The source and manifest files of the repository: `.rs`, `.js` and `.toml` under `dirs`, plus
/// the root `Cargo.toml` and `.cargo/config.toml`.
pub fn index(root: &Path, files: Vec<PathBuf>) -> Index {
    let mut index = Index {
        root: root.to_path_buf(),
        words: HashSet::new(),
        file_words: HashMap::new(),
        file_code: HashMap::new(),
        raw: Vec::new(),
        fns: HashMap::new(),
    };
    for path in files {
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let code = if path.extension().is_some_and(|e| e == "rs") {
            let code = strip_rust(&text, Strings::Keep);
            // Definitions are read from code alone: a `fn` inside a string is no function.
            let bare = strip_rust(&text, Strings::Blank);
            index.file_words.insert(path.clone(), words(&code));
            for (name, sig) in fn_signatures(&bare) {
                index.fns.entry(name).or_default().push(sig);
            }
            index.file_code.insert(path.clone(), bare);
            code
        } else {
            text.clone()
        };
        index.words.extend(words(&code));
        index.raw.push(text);
    }
    index
}

fn words(text: &str) -> HashSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `reload-logs` → `ReloadLogs` (clap's name for the variant of a subcommand).
fn camel(kebab: &str) -> String {
    kebab
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Extensions that make a token a path of the repository.
const PATH_EXTENSIONS: &[&str] = &[".rs", ".toml", ".js", ".md", ".json", ".lock", ".sh"];

/// Commands whose first word after the prefix is a subcommand the code defines.
const COMMAND_PREFIXES: &[&str] = &["pm2rs ", "cargo xtask ", "xtask "];

impl Index {
    fn has_word(&self, word: &str) -> bool {
        self.words.contains(word)
    }

    fn in_raw(&self, text: &str) -> bool {
        self.raw.iter().any(|file| file.contains(text))
    }

    /// Why `token` is stale, or `None` when it names something that exists (or is of a kind the
    /// rules skip).
    pub fn check(&self, token: &Token) -> Option<String> {
        let t = token.text.trim();
        if is_placeholder(t) {
            return None;
        }
        if let Some(prefix) = COMMAND_PREFIXES.iter().find(|p| t.starts_with(**p)) {
            return self.check_command(&t[prefix.len()..]);
        }
        if let Some(flag) = t.strip_prefix("--") {
            return self.check_flag(flag.split_whitespace().next().unwrap_or(""));
        }
        if let Some((name, args, ret)) = signature(t) {
            return self.check_signature(&name, &args, ret);
        }
        if t.contains(char::is_whitespace) {
            return None;
        }
        if let Some(var) = t.strip_prefix('$') {
            return self.check_env_path(var);
        }
        if t.starts_with('/') && !t.starts_with("//") || t.starts_with("target/") {
            return None;
        }
        if t.contains('/') && !t.starts_with("//")
            || PATH_EXTENSIONS.iter().any(|ext| t.ends_with(ext))
        {
            return self.check_path(t, token.section.as_deref());
        }
        if let Some(path) = rust_path(t) {
            return self.check_rust_path(&path);
        }
        let kebab = t.contains('-') && t.split('-').all(is_ident);
        if self.in_raw(t) || kebab && self.has_word(&camel(t)) {
            return None;
        }
        Some("appears in no source file or manifest".into())
    }

    fn check_command(&self, rest: &str) -> Option<String> {
        let mut words = rest.split_whitespace();
        let sub = words.next().unwrap_or("");
        if !self.has_word(&camel(sub)) && !self.in_raw(&format!("\"{sub}\"")) {
            return Some(format!(
                "no subcommand `{sub}` (neither a `{}` variant nor a \"{sub}\" string)",
                camel(sub)
            ));
        }
        words
            .filter_map(|w| w.strip_prefix("--"))
            .find_map(|flag| self.check_flag(flag))
    }

    fn check_flag(&self, flag: &str) -> Option<String> {
        let name = flag.split('=').next().unwrap_or(flag);
        if self.in_raw(&format!("\"--{name}\"")) || self.has_word(&name.replace('-', "_")) {
            return None;
        }
        Some(format!(
            "no flag `--{name}` (neither a \"--{name}\" string nor a `{}` field)",
            name.replace('-', "_")
        ))
    }

    fn check_env_path(&self, var_path: &str) -> Option<String> {
        let (var, rest) = var_path.split_once('/').unwrap_or((var_path, ""));
        if !self.has_word(var) {
            return Some(format!("no environment variable `{var}` in the code"));
        }
        let file = rest.rsplit('/').next().unwrap_or("");
        if !file.is_empty() && !self.in_raw(file) {
            return Some(format!("no source file names `{file}`"));
        }
        None
    }

    fn check_path(&self, path: &str, section: Option<&str>) -> Option<String> {
        let path = path.trim_end_matches('/');
        if self.root.join(path).exists() {
            return None;
        }
        let bare = !path.contains('/');
        let under = |dir: &Path| {
            dir.join(path).exists()
                || dir.join("src").join(path).exists()
                || bare && contains_file_named(dir, path)
        };
        let found = match section {
            Some(section) => under(&self.root.join(section)),
            None => bare && super::SOURCE_DIRS.iter().any(|d| under(&self.root.join(d))),
        };
        if found {
            return None;
        }
        Some(match section {
            Some(section) => format!(
                "no such path at the repository root, in {section}/ or {section}/src/{}",
                if bare {
                    ", nor a file of that name in the crate"
                } else {
                    ""
                }
            ),
            None => "no such path at the repository root".into(),
        })
    }

    /// Each segment is a word of the code; after a module (a `<seg>.rs` or `<seg>/mod.rs`), the
    /// next segment is a word of that module; after a type, a word of a file that defines or
    /// implements it.
    fn check_rust_path(&self, segments: &[&str]) -> Option<String> {
        if let Some(missing) = segments.iter().find(|s| **s != "*" && !self.has_word(s)) {
            return Some(format!("`{missing}` is not in the code"));
        }
        for pair in segments.windows(2) {
            let (outer, inner) = (pair[0], pair[1]);
            if inner == "*" {
                continue;
            }
            let modules: Vec<&HashSet<String>> = self
                .file_words
                .iter()
                .filter(|(path, _)| is_module_file(path, outer))
                .map(|(_, words)| words)
                .collect();
            if !modules.is_empty() && !modules.iter().any(|w| w.contains(inner)) {
                return Some(format!("no module `{outer}` has `{inner}`"));
            }
            let typed = outer.starts_with(|c: char| c.is_ascii_uppercase());
            if typed && modules.is_empty() && !self.type_has(outer, inner) {
                return Some(format!(
                    "`{inner}` is in no file that defines or implements `{outer}`"
                ));
            }
        }
        None
    }

    /// Whether a file that defines or implements type `ty` has the word `member`. A type defined
    /// outside the repository (no such file) is not checked.
    fn type_has(&self, ty: &str, member: &str) -> bool {
        const DEFINING: &[&str] = &["struct", "enum", "trait", "impl", "type", "union"];
        let mut defining = self.file_code.iter().filter(|(_, code)| {
            code.lines().any(|line| {
                let line_words = words(line);
                line_words.contains(ty) && DEFINING.iter().any(|d| line_words.contains(*d))
            })
        });
        let mut any = false;
        let found = defining.any(|(path, _)| {
            any = true;
            self.file_words[path].contains(member)
        });
        found || !any
    }

    /// The name must be a `fn` of the code; one of its definitions must take as many parameters
    /// as the doc lists (`self` aside), each doc argument being that parameter's name or a type
    /// named in its type, and every identifier of the doc's `->` type must be in its return type.
    fn check_signature(&self, name: &[&str], args: &[&str], ret: Option<&str>) -> Option<String> {
        if let Some(stale) = self.check_rust_path(name) {
            return Some(stale);
        }
        let last = name.last().copied().unwrap_or("");
        let Some(defs) = self.fns.get(last) else {
            return Some(format!("there is no `fn {last}`"));
        };
        let matches = |sig: &FnSig| {
            sig.params.len() == args.len()
                && sig
                    .params
                    .iter()
                    .zip(args)
                    .all(|((param, ty), arg)| param == arg || words(ty).contains(*arg))
                && ret.is_none_or(|r| {
                    let have = words(&sig.ret);
                    words(r).iter().all(|w| have.contains(w))
                })
        };
        if defs.iter().any(matches) {
            return None;
        }
        let actual: Vec<String> = defs
            .iter()
            .map(|sig| {
                let params: Vec<&str> = sig.params.iter().map(|(p, _)| p.as_str()).collect();
                let ret = if sig.ret.is_empty() {
                    String::new()
                } else {
                    format!(" -> {}", sig.ret)
                };
                format!("{last}({}){ret}", params.join(", "))
            })
            .collect();
        Some(format!("the code has {}", actual.join(" and ")))
    }
}

/// A span with a `<lower-case>` placeholder in it (`ready <pid>`, `<file>.1`): a template, not a
/// name.
fn is_placeholder(t: &str) -> bool {
    t.split('<').skip(1).any(|after| {
        after.split_once('>').is_some_and(|(inside, _)| {
            !inside.is_empty()
                && inside
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-' || c == '_')
        })
    })
}

/// `a::b::C`, `foo()`, `process_group(0)`, `routes::*` → the path's segments.
fn rust_path(t: &str) -> Option<Vec<&str>> {
    let path = match t.split_once('(') {
        Some((path, args)) if args.ends_with(')') => path,
        Some(_) => return None,
        None => t,
    };
    let segments: Vec<&str> = path.split("::").collect();
    segments
        .iter()
        .all(|s| is_ident(s) || *s == "*")
        .then_some(segments)
}

/// `name(a, b, c) -> Ret` with identifiers for arguments: the name's segments, the arguments and
/// the return type. A call without arguments (`foo()`) or with a literal one (`waitpid(-1)`) is
/// not a signature.
fn signature(t: &str) -> Option<(Vec<&str>, Vec<&str>, Option<&str>)> {
    let (head, rest) = t.split_once('(')?;
    let (inside, after) = rest.split_once(')')?;
    let name: Vec<&str> = head.split("::").collect();
    if !name.iter().all(|s| is_ident(s)) {
        return None;
    }
    let args: Vec<&str> = inside.split(',').map(str::trim).collect();
    if !args.iter().all(|a| is_ident(a)) {
        return None;
    }
    let after = after.trim();
    let ret = match after.strip_prefix("->") {
        Some(ret) => Some(ret.trim()),
        None if after.is_empty() => None,
        None => return None,
    };
    Some((name, args, ret))
}

/// Whether `path` is the file of module `name`: `name.rs` or `name/mod.rs`.
fn is_module_file(path: &Path, name: &str) -> bool {
    let file = path.file_name().and_then(|f| f.to_str());
    let parent = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|f| f.to_str());
    file == Some(&format!("{name}.rs")) || file == Some("mod.rs") && parent == Some(name)
}

/// Whether a file called `name` exists anywhere under `dir` (build output and hidden directories
/// aside).
fn contains_file_named(dir: &Path, name: &str) -> bool {
    !super::files_under(dir, &|p| p.file_name().is_some_and(|f| f == name)).is_empty()
}

/// What [`strip_rust`] does with string literals.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Strings {
    Keep,
    /// Their contents become spaces (the quotes stay).
    Blank,
}

/// `code` with every comment (line, block, doc) replaced by spaces, and string contents too with
/// [`Strings::Blank`]; char literals and line breaks kept, so words and lines stay where they were.
fn strip_rust(code: &str, strings: Strings) -> String {
    let chars: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match (c, next) {
            ('/', Some('/')) => {
                while i < chars.len() && chars[i] != '\n' {
                    out.push(' ');
                    i += 1;
                }
            }
            ('/', Some('*')) => {
                let mut depth = 0;
                while i < chars.len() {
                    match (chars[i], chars.get(i + 1)) {
                        ('/', Some('*')) => {
                            depth += 1;
                            out.push_str("  ");
                            i += 2;
                        }
                        ('*', Some('/')) => {
                            depth -= 1;
                            out.push_str("  ");
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        (other, _) => {
                            out.push(blank(other));
                            i += 1;
                        }
                    }
                }
            }
            ('r', Some('"' | '#')) if raw_string_start(&chars, i).is_some() => {
                let (hashes, body) = raw_string_start(&chars, i).unwrap_or((0, i));
                let close: Vec<char> = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                let mut j = body;
                while j < chars.len() && !chars[j..].starts_with(&close) {
                    j += 1;
                }
                let end = (j + close.len()).min(chars.len());
                match strings {
                    Strings::Keep => out.extend(&chars[i..end]),
                    Strings::Blank => out.extend(chars[i..end].iter().map(|&c| blank(c))),
                }
                i = end;
            }
            ('"', _) => {
                out.push('"');
                i += 1;
                let mut copy = |c: char| match strings {
                    Strings::Keep => out.push(c),
                    Strings::Blank => out.push(blank(c)),
                };
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        copy(chars[i]);
                        i += 1;
                    }
                    copy(chars[i]);
                    i += 1;
                }
                if i < chars.len() {
                    out.push('"');
                    i += 1;
                }
            }
            ('\'', _) => {
                // A char literal (`'x'`, `'\n'`, `'\u{1F600}'`) is copied whole; a lifetime or
                // label (`'a`) is code like any other.
                let end = match (next, chars.get(i + 2)) {
                    (Some('\\'), _) => chars
                        .get(i + 3..)
                        .and_then(|rest| rest.iter().position(|&c| c == '\''))
                        .map(|p| i + 3 + p + 1),
                    (Some(_), Some('\'')) => Some(i + 3),
                    _ => None,
                };
                let end = end.unwrap_or(i + 1);
                out.extend(&chars[i..end]);
                i = end;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// At `chars[i] == 'r'`: a raw string's number of `#` and the index of its first character, when
/// one starts here (and `r` is not the end of an identifier such as `br` or `for`).
fn raw_string_start(chars: &[char], i: usize) -> Option<(usize, usize)> {
    let before = i.checked_sub(1).map(|b| chars[b]);
    if before.is_some_and(|b| (b.is_ascii_alphanumeric() || b == '_') && b != 'b') {
        return None;
    }
    let hashes = chars[i + 1..].iter().take_while(|&&c| c == '#').count();
    (chars.get(i + 1 + hashes) == Some(&'"')).then_some((hashes, i + 2 + hashes))
}

/// Every `fn name(params) -> ret` in comment-free code.
fn fn_signatures(code: &str) -> Vec<(String, FnSig)> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(at) = code[from..].find("fn ") {
        let start = from + at;
        from = start + 3;
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            continue;
        }
        let rest = &code[from..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue;
        }
        let rest = &rest[name.len()..];
        // Generic parameters, then the parameter list.
        let Some(open) = rest.find('(') else { continue };
        if !rest[..open].trim().is_empty() && !rest[..open].trim_start().starts_with('<') {
            continue;
        }
        let Some((params, after)) = balanced(&rest[open + 1..]) else {
            continue;
        };
        let params = split_top_level(params, ',')
            .into_iter()
            .filter_map(|param| {
                let (pattern, ty) = split_top_level(param, ':')
                    .split_first()
                    .map(|(p, rest)| (p.trim(), rest.join(":")))?;
                let pattern = pattern.trim_start_matches("mut ").trim();
                (!pattern.is_empty() && !pattern.ends_with("self"))
                    .then(|| (pattern.to_string(), ty.trim().to_string()))
            })
            .collect();
        let after = after.trim_start();
        let ret = after.strip_prefix("->").map_or(String::new(), |r| {
            let end = r
                .find(['{', ';'])
                .into_iter()
                .chain(r.find(" where "))
                .min()
                .unwrap_or(r.len());
            r[..end].trim().to_string()
        });
        found.push((name, FnSig { params, ret }));
    }
    found
}

/// The text up to the `)` that closes an already opened `(`, and what follows it.
fn balanced(text: &str) -> Option<(&str, &str)> {
    let mut depth = 1;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some((&text[..i], &text[i + 1..]));
                }
            }
            _ => {}
        }
    }
    None
}

/// `text` split at each `sep` outside brackets (`()`, `[]`, `{}`, `<>`; the `>` of `->` does not
/// close anything). Empty pieces are dropped.
fn split_top_level(text: &str, sep: char) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    let mut prev = ' ';
    for (i, c) in text.char_indices() {
        match c {
            '(' | '[' | '{' | '<' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            '>' if prev != '-' => depth -= 1,
            c if c == sep && depth == 0 => {
                // `::` in a path is not a parameter's colon.
                let path_colon = sep == ':' && (prev == ':' || text[i + 1..].starts_with(':'));
                if !path_colon {
                    pieces.push(&text[start..i]);
                    start = i + 1;
                }
            }
            _ => {}
        }
        prev = c;
    }
    pieces.push(&text[start..]);
    pieces.retain(|p| !p.trim().is_empty());
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_go_and_strings_stay() {
        let code =
            "let a = \"// kept\"; // gone\n/* gone /* nested */ gone */ b('x', '\\'', 'a: loop {})";
        let stripped = strip_rust(code, Strings::Keep);
        assert!(stripped.contains("// kept"), "{stripped}");
        assert!(!stripped.contains("gone"), "{stripped}");
        assert!(
            stripped.contains("b('x', '\\'', 'a: loop {})"),
            "{stripped}"
        );
        let quote = strip_rust("f('\\'', \"x\") // y", Strings::Blank);
        assert!(!quote.contains('x') && !quote.contains('y'), "{quote}");
        assert_eq!(stripped.lines().count(), code.lines().count());
        let raw = strip_rust("r#\"a \"// x\" b\"# // y", Strings::Keep);
        assert!(raw.contains("// x") && !raw.contains('y'), "{raw}");
        let blank = strip_rust("f(\"fn g() \\\" x\", r\"fn h()\") // z", Strings::Blank);
        assert!(
            blank.starts_with("f(\"") && !blank.contains("fn") && !blank.contains('z'),
            "{blank}"
        );
    }

    #[test]
    fn signatures_are_read_with_their_parameter_names_and_types() {
        let code = "pub async fn serve<T: Into<u8>>(listener: UnixListener, mut home: Home, \
                    f: impl Fn(u8) -> u8, m: HashMap<u32, Vec<u8>>) -> anyhow::Result<()> {}\n\
                    fn m(&mut self, x: a::B) {}";
        let sigs = fn_signatures(code);
        let (name, serve) = &sigs[0];
        assert_eq!(name, "serve");
        let names: Vec<&str> = serve.params.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["listener", "home", "f", "m"]);
        assert_eq!(serve.params[3].1, "HashMap<u32, Vec<u8>>");
        assert_eq!(serve.ret, "anyhow::Result<()>");
        assert_eq!(sigs[1].1.params, [("x".to_string(), "a::B".to_string())]);
    }

    #[test]
    fn tokens_are_classified() {
        assert!(is_placeholder("ready <pid>") && is_placeholder("<file>.1"));
        assert!(!is_placeholder("Option<Status>"));
        assert_eq!(rust_path("a::B::c()"), Some(vec!["a", "B", "c"]));
        assert_eq!(rust_path("routes::*"), Some(vec!["routes", "*"]));
        assert_eq!(rust_path("waitpid(-1)"), Some(vec!["waitpid"]));
        assert_eq!(rust_path("x-pm2rs-version"), None);
        let (name, args, ret) =
            signature("lifecycle::next(Status, Event) -> Option<Status>").expect("a signature");
        assert_eq!(
            (name, args, ret),
            (
                vec!["lifecycle", "next"],
                vec!["Status", "Event"],
                Some("Option<Status>")
            )
        );
        assert!(signature("waitpid(-1)").is_none() && signature("foo()").is_none());
        assert!(signature("serve(listener)").is_some());
        assert_eq!(camel("reload-logs"), "ReloadLogs");
    }
}
