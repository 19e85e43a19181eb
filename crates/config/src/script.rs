//! `pm2rs start <script> [--name ..] [-i ..] [-- args]`: the command line's options are turned into
//! the same located tree an ecosystem file gives (each value tagged with its flag, which becomes the
//! error's key) and validated by the same code ([`crate::app::check_app`]).

use std::ffi::OsStr;
use std::path::PathBuf;

use pm2rs_proto::AppSpec;

use crate::app::{Ctx, check_app, default_interpreter};
use crate::error::{ConfigErrors, Diag, Loc};
use crate::resolve::normalize;
use crate::tree::{Entry, Format, Node, Value};
use crate::{ScriptOptions, effective_cpus};

/// [`crate::app_from_script`] with the `PATH` used for program lookups given explicitly.
pub(crate) fn app_from_script_with(
    script: &str,
    opts: &ScriptOptions,
    path_var: Option<&OsStr>,
) -> Result<AppSpec, ConfigErrors> {
    let base_dir = base_dir(opts);
    let mut entries = vec![flag_entry(
        "script",
        "script",
        Value::Str(script.to_string()),
    )];
    let optional = [
        ("name", "--name", &opts.name),
        ("instances", "--instances", &opts.instances),
        ("interpreter", "--interpreter", &opts.interpreter),
        ("namespace", "--namespace", &opts.namespace),
        ("port", "--port", &opts.port),
        ("cron_restart", "--cron-restart", &opts.cron_restart),
    ];
    for (key, flag, value) in optional {
        if let Some(value) = value {
            entries.push(flag_entry(key, flag, Value::Str(value.clone())));
        }
    }
    // A port to share only makes sense in cluster mode; and, as with PM2, `-i` starts a Node
    // script in cluster mode (its instances then share the port they listen on instead of
    // failing with EADDRINUSE).
    let node_script = opts.interpreter.is_none() && default_interpreter(script) == Some("node");
    let cluster_flag = if opts.port.is_some() {
        Some("--port")
    } else if opts.instances.is_some() && node_script {
        Some("--instances")
    } else {
        None
    };
    if let Some(flag) = cluster_flag {
        entries.push(flag_entry("exec_mode", flag, Value::Str("cluster".into())));
    }
    if opts.wait_ready {
        entries.push(flag_entry("wait_ready", "--wait-ready", Value::Bool(true)));
    }
    if opts.watch {
        entries.push(flag_entry("watch", "--watch", Value::Bool(true)));
    }
    if !opts.args.is_empty() {
        let args = opts
            .args
            .iter()
            .map(|a| Node::new(Value::Str(a.clone()), Loc::Flag("args")))
            .collect();
        entries.push(flag_entry("args", "args", Value::Array(args)));
    }
    let table = Node::new(Value::Table(entries), Loc::Nowhere);
    let ctx = Ctx {
        format: Format::Cli,
        base_dir: &base_dir,
        cpus: effective_cpus(opts.cpus),
        profile: None,
        source: None,
        path_var,
        check_files: true,
    };
    let mut diag = Diag::default();
    match check_app(&table, "", &ctx, &mut diag) {
        Some(app) if diag.is_empty() => Ok(app.spec),
        _ => Err(diag.finish(None, None)),
    }
}

/// The CLI's cwd, absolute and normalised (empty = the process's current directory).
fn base_dir(opts: &ScriptOptions) -> PathBuf {
    let cwd = if opts.cwd.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        opts.cwd.clone()
    };
    let abs = std::path::absolute(&cwd).unwrap_or(cwd);
    normalize(&abs)
}

fn flag_entry(key: &str, flag: &'static str, value: Value) -> Entry {
    Entry {
        key: key.to_string(),
        key_loc: Loc::Flag(flag),
        node: Node::new(value, Loc::Flag(flag)),
    }
}
