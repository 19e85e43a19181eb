//! JavaScript ecosystems (`ecosystem.config.js`, `*.config.cjs`, `*.config.mjs`): the file is
//! evaluated by the machine's `node` in a child process, which prints the exported configuration
//! as JSON (`js_eval.mjs`); the caller then reads that JSON like a PM2 JSON file.
//!
//! The child runs in its own process group with a deadline: at the deadline, or as soon as `node`
//! has exited, the whole group is SIGKILLed, so a configuration that never ends, or that starts
//! processes, leaves nothing behind. `node`'s exit is awaited with `waitid(WNOWAIT)` on a thread,
//! so its pid (and so the group's id) stays reserved until the group has been killed.
//!
//! Errors about the JSON have no meaningful line; [`locate_keys`] finds the key in the
//! JavaScript text when it is written there exactly once.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

use crate::error::{ConfigErrors, LineIndex};
use crate::resolve::find_in_path;

/// How long `node` may take to evaluate a file when [`crate::LoadOptions::js_timeout`] is unset.
pub const DEFAULT_JS_TIMEOUT: Duration = Duration::from_secs(10);

/// The evaluation script, passed to `node -e`.
const EVAL_SCRIPT: &str = include_str!("js_eval.mjs");
/// Exit code of [`EVAL_SCRIPT`] when values cannot be carried by JSON.
const EXIT_VALUES: i32 = 3;
/// Most output kept from each of node's streams; the rest is read and dropped.
const MAX_OUTPUT: usize = 16 << 20;
/// Most of node's stderr shown in an error.
const MAX_SHOWN: usize = 4000;
/// How long the pipes may stay open after `node` has exited and its group was killed.
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// Why a JavaScript file gave no configuration.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum JsError {
    /// Values JSON cannot carry (functions, `undefined`, ...): key path and problem.
    Values(Vec<(String, String)>),
    /// Anything else, as a message about the file.
    Failed(String),
}

/// Evaluates `file` (absolute) with the `node` found in `path_var`; returns the configuration as
/// JSON text.
pub(crate) fn evaluate(
    file: &Path,
    path_var: Option<&OsStr>,
    timeout: Duration,
) -> Result<String, JsError> {
    let Some(node) = find_in_path("node", path_var) else {
        return Err(JsError::Failed(
            "JavaScript ecosystem files are evaluated with Node.js, and `node` was not found in \
             PATH; install Node.js (e.g. `apt-get install nodejs`) or put it in PATH, or write \
             the configuration as ecosystem.toml (`pm2rs convert` makes one where node is \
             installed)"
                .into(),
        ));
    };
    let mut child = Command::new(&node)
        .arg("--input-type=module")
        .arg("-e")
        .arg(EVAL_SCRIPT)
        .arg("--")
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| JsError::Failed(format!("cannot run `{}`: {e}", node.display())))?;
    let pid = Pid::from_raw(child.id() as i32);

    let (tx, rx) = mpsc::channel();
    let mut open_pipes = 0;
    if let Some(pipe) = child.stdout.take() {
        spawn_reader(Stream::Out, pipe, &tx);
        open_pipes += 1;
    }
    if let Some(pipe) = child.stderr.take() {
        spawn_reader(Stream::Err, pipe, &tx);
        open_pipes += 1;
    }
    let waiter = tx.clone();
    std::thread::spawn(move || {
        // WNOWAIT: the zombie keeps the pid until `child.wait()` below reaps it.
        let _ = waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT);
        let _ = waiter.send(Msg::Exited);
    });
    drop(tx);

    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut exited = false;
    let mut timed_out = false;
    let mut deadline = Instant::now() + timeout;
    while !exited || open_pipes > 0 {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            if exited {
                break; // A process that left the group holds the pipes: take what came.
            }
            timed_out = true;
            let _ = killpg(pid, Signal::SIGKILL);
            deadline = Instant::now() + PIPE_GRACE;
            continue;
        };
        match rx.recv_timeout(left) {
            Ok(Msg::Data(Stream::Out, bytes)) => keep(&mut out, &bytes),
            Ok(Msg::Data(Stream::Err, bytes)) => keep(&mut err, &bytes),
            Ok(Msg::Eof) => open_pipes -= 1,
            Ok(Msg::Exited) => {
                exited = true;
                // Whatever the configuration started dies with it.
                let _ = killpg(pid, Signal::SIGKILL);
                deadline = Instant::now() + PIPE_GRACE;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child
        .wait()
        .map_err(|e| JsError::Failed(format!("cannot wait for node: {e}")))?;

    if timed_out {
        return Err(JsError::Failed(format!(
            "node did not finish evaluating the file within {} s (does it wait for something, or \
             loop?); it was stopped",
            timeout.as_secs_f64()
        )));
    }
    let stdout = String::from_utf8_lossy(&out);
    match status.code() {
        Some(0) if !stdout.trim().is_empty() => Ok(stdout.into_owned()),
        Some(0) => Err(JsError::Failed(
            "node printed no configuration (does the file call process.exit()?)".into(),
        )),
        Some(EXIT_VALUES) => match serde_json::from_str::<Vec<(String, String)>>(&stdout) {
            Ok(problems) if !problems.is_empty() => Err(JsError::Values(problems)),
            _ => Err(JsError::Failed(node_failure(&status.to_string(), &err))),
        },
        _ => Err(JsError::Failed(node_failure(&status.to_string(), &err))),
    }
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Out,
    Err,
}

/// What the two pipe readers and the exit waiter send to [`evaluate`], which holds the only
/// receiver; once it has returned, a reader's send fails and the reader stops.
enum Msg {
    Data(Stream, Vec<u8>),
    Eof,
    Exited,
}

/// Sends what `pipe` yields, then [`Msg::Eof`], from a thread of its own.
fn spawn_reader(stream: Stream, mut pipe: impl Read + Send + 'static, tx: &mpsc::Sender<Msg>) {
    let tx = tx.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0; 64 << 10];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Msg::Data(stream, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Msg::Eof);
    });
}

fn keep(into: &mut Vec<u8>, bytes: &[u8]) {
    let room = MAX_OUTPUT.saturating_sub(into.len());
    into.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// Node's own report of an error (location, message, the file's stack frames), without the
/// frames of node's internals and of pm2rs's evaluation script.
fn node_failure(status: &str, stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let shown: Vec<&str> = text
        .lines()
        .filter(|line| {
            let frame = line.trim_start();
            !(frame.starts_with("at ")
                && (frame.contains("node:internal") || frame.contains("[eval")))
                && !frame.starts_with("Node.js v")
        })
        .collect();
    let mut report = shown.join("\n").trim().to_string();
    if report.len() > MAX_SHOWN {
        let cut = (0..=MAX_SHOWN)
            .rev()
            .find(|&i| report.is_char_boundary(i))
            .unwrap_or(0);
        report.truncate(cut);
        report.push_str("\n...");
    }
    if report.is_empty() {
        format!("node could not evaluate the file ({status})")
    } else {
        format!("node could not evaluate the file:\n{report}")
    }
}

/// Gives errors about a JavaScript file (which carry a key path but no line) the line and
/// column of their key in the JavaScript source, when the key's name is written there as a
/// property exactly once (`name:`, `'name':` or `"name":`); with several, or none (a computed
/// key), the error keeps the key path alone.
pub(crate) fn locate_keys(js: &str, errors: &mut ConfigErrors) {
    let lines = LineIndex::new(js);
    for error in &mut errors.errors {
        if error.line.is_some() {
            continue;
        }
        let Some(name) = error.key.as_deref().and_then(last_key) else {
            continue;
        };
        if let [offset] = property_offsets(js, name)[..] {
            let (line, column) = lines.position(offset);
            error.line = Some(line);
            error.column = Some(column);
        }
    }
}

/// The last key of a path, without array indices: `apps[0].args[1]` → `args`.
fn last_key(path: &str) -> Option<&str> {
    let last = path.rsplit('.').next()?;
    let name = last.split('[').next()?;
    (!name.is_empty()).then_some(name)
}

/// Where `name` is written as a property: not inside a longer identifier, quoted or not,
/// followed by `:`.
fn property_offsets(js: &str, name: &str) -> Vec<usize> {
    let ident = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    js.match_indices(name)
        .filter_map(|(at, _)| {
            let before = js[..at].chars().next_back();
            let mut rest = js[at + name.len()..].chars().peekable();
            let start = match before {
                Some(quote @ ('\'' | '"' | '`')) => {
                    if rest.next() != Some(quote) {
                        return None;
                    }
                    at - 1
                }
                Some(c) if ident(c) => return None,
                _ => {
                    if rest.peek().is_some_and(|c| ident(*c)) {
                        return None;
                    }
                    at
                }
            };
            let colon = rest.find(|c| !c.is_whitespace()) == Some(':');
            colon.then_some(start)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_when_written_once() {
        let js = "module.exports = {\n  apps: [{ name: 'a', 'max_restarts' : -1, env: { NAME: 1 } }],\n  // name: x\n};\n";
        assert_eq!(property_offsets(js, "max_restarts"), [41]);
        assert_eq!(
            property_offsets(js, "name").len(),
            2,
            "a comment counts: no line then"
        );
        assert_eq!(property_offsets(js, "NAME").len(), 1);
        assert_eq!(property_offsets(js, "apps").len(), 1);
        assert_eq!(property_offsets(js, "exports"), Vec::<usize>::new());
        assert_eq!(last_key("apps[0].args[1]"), Some("args"));
        assert_eq!(last_key("apps[0]"), Some("apps"));
        assert_eq!(last_key("[1]"), None);
    }
}
