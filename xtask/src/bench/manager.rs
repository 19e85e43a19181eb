//! The process managers a bench can drive: pm2rs (the binary under test) and PM2 (installed with npm
//! for `--compare pm2`), behind one vocabulary so a scenario is written once.
//!
//! [`Manager`] knows, per manager, the CLI words for each [`Cli`] action, the environment variable of
//! its home, its pid file, how to turn its JSON listing into [`Instance`]s, and how to write an
//! ecosystem file for a list of [`App`]s. PM2 is installed once with `npm install` into
//! `target/bench/pm2/` (a cache: reused when present, never inside the sources, never global).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use pm2rs_proto::{HOME_ENV, PID_FILE, ProcessInfo, Status};
use serde::{Deserialize, Serialize};

/// Which manager a figure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Pm2rs,
    Pm2,
}

impl Kind {
    /// The name shown in tables.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Pm2rs => "pm2rs",
            Kind::Pm2 => "PM2",
        }
    }
}

/// A manager-neutral CLI action; [`Manager::args`] spells it for one manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cli<'a> {
    /// Check the daemon answers, starting it if needed.
    Ping,
    /// Start the apps of an ecosystem file.
    Start(&'a str),
    /// The human table (`pm2rs list`, `pm2 ls`).
    List,
    /// The machine listing (`pm2rs list --json`, `pm2 jlist`).
    ListJson,
    Restart(&'a str),
    Delete(&'a str),
    /// Stop every app and the daemon.
    Kill,
}

/// One managed instance, as either manager lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// pm2rs `id`, PM2 `pm_id`.
    pub id: u32,
    pub name: String,
    pub pid: Option<u32>,
    /// Status `online` with a pid.
    pub online: bool,
    /// Why the manager gave up on it, when it is errored.
    pub errored: Option<String>,
    pub restarts: u32,
    /// When the manager says the current process started, in Unix milliseconds (pm2rs: from
    /// `started_at_us`; PM2: `pm_uptime`, whole milliseconds).
    pub started_at_ms: Option<f64>,
}

/// An app of a bench ecosystem, run directly (no interpreter) in fork mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App<'a> {
    pub name: &'a str,
    /// A program found on `PATH` or a path.
    pub script: &'a str,
    pub args: &'a [&'a str],
    pub instances: usize,
    /// Restart it when it exits (both managers' default); `false` for an app that runs once.
    pub autorestart: bool,
    /// Let the manager rotate its log files. pm2rs rotates by default (`false` writes
    /// `log_max_size = 0`); PM2 rotates only with the pm2-logrotate module, which the bench never
    /// installs, so for PM2 this changes nothing.
    pub rotate_logs: bool,
    /// `max_memory_restart` (a size such as `"100M"`), written the same way for both managers.
    pub max_memory_restart: Option<&'a str>,
}

/// A manager the bench can drive.
#[derive(Debug, Clone)]
pub struct Manager {
    pub kind: Kind,
    /// The pm2rs binary, or PM2's `bin/pm2` script (a node script with a shebang).
    pub program: PathBuf,
    /// `pm2rs --version` or PM2's package version.
    pub version: Option<String>,
    /// For PM2: `node --version`.
    pub runtime: Option<String>,
}

impl Manager {
    pub fn pm2rs(bin: &Path) -> Manager {
        let version = Command::new(bin)
            .arg("--version")
            .env(HOME_ENV, "/nonexistent-pm2rs-bench-home")
            .stdin(Stdio::null())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .filter(|v| !v.is_empty());
        Manager {
            kind: Kind::Pm2rs,
            program: bin.to_path_buf(),
            version,
            runtime: None,
        }
    }

    /// PM2 from `cache` (`target/bench/pm2`), installed there with npm first if it isn't yet.
    pub fn pm2(cache: &Path) -> Result<Manager> {
        let program = cache.join("node_modules/pm2/bin/pm2");
        let package = cache.join("node_modules/pm2/package.json");
        if !program.is_file() || !package.is_file() {
            install_pm2(cache)?;
        } else {
            eprintln!("bench: reusing PM2 from {}", cache.display());
        }
        let version = fs::read_to_string(&package)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|v| v["version"].as_str().map(str::to_string));
        let runtime = Command::new("node")
            .arg("--version")
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| format!("node {}", String::from_utf8_lossy(&out.stdout).trim()));
        Ok(Manager {
            kind: Kind::Pm2,
            program,
            version,
            runtime,
        })
    }

    /// The environment variable naming the manager's home.
    pub fn home_env(&self) -> &'static str {
        match self.kind {
            Kind::Pm2rs => HOME_ENV,
            Kind::Pm2 => "PM2_HOME",
        }
    }

    /// The daemon's pid file, relative to the home.
    pub fn pid_file(&self) -> &'static str {
        match self.kind {
            Kind::Pm2rs => PID_FILE,
            Kind::Pm2 => "pm2.pid",
        }
    }

    /// The CLI arguments for `cli`.
    pub fn args(&self, cli: Cli<'_>) -> Vec<String> {
        let words: &[&str] = match (self.kind, cli) {
            (_, Cli::Ping) => &["ping"],
            (_, Cli::Start(file)) => return vec!["start".into(), file.into()],
            (Kind::Pm2rs, Cli::List) => &["list"],
            (Kind::Pm2, Cli::List) => &["ls"],
            (Kind::Pm2rs, Cli::ListJson) => &["list", "--json"],
            (Kind::Pm2, Cli::ListJson) => &["jlist"],
            (_, Cli::Restart(target)) => return vec!["restart".into(), target.into()],
            (_, Cli::Delete(target)) => return vec!["delete".into(), target.into()],
            (_, Cli::Kill) => &["kill"],
        };
        words.iter().map(|w| w.to_string()).collect()
    }

    /// Parses the stdout of [`Cli::ListJson`].
    pub fn parse_instances(&self, stdout: &str) -> Result<Vec<Instance>> {
        match self.kind {
            Kind::Pm2rs => {
                let list: Vec<ProcessInfo> = serde_json::from_str(stdout)
                    .context("`pm2rs list --json` did not print a JSON array of ProcessInfo")?;
                Ok(list.into_iter().map(from_pm2rs).collect())
            }
            Kind::Pm2 => parse_jlist(stdout),
        }
    }

    /// The file extension and text of an ecosystem file starting `apps`.
    pub fn ecosystem(&self, apps: &[App<'_>]) -> (&'static str, String) {
        match self.kind {
            Kind::Pm2rs => {
                let mut text = String::from("# Written by `cargo xtask bench`.\n");
                for app in apps {
                    let args: Vec<String> = app.args.iter().map(|a| format!("{a:?}")).collect();
                    text.push_str(&format!(
                        "\n[[apps]]\nname = {:?}\nscript = {:?}\nargs = [{}]\ninterpreter = \"none\"\ninstances = {}\n",
                        app.name,
                        app.script,
                        args.join(", "),
                        app.instances
                    ));
                    if !app.autorestart {
                        text.push_str("autorestart = false\n");
                    }
                    if !app.rotate_logs {
                        text.push_str("log_max_size = 0\n");
                    }
                    if let Some(limit) = app.max_memory_restart {
                        text.push_str(&format!("max_memory_restart = {limit:?}\n"));
                    }
                }
                ("toml", text)
            }
            Kind::Pm2 => {
                // `interpreter: "none"` runs the program itself (PM2 resolves it on PATH); fork mode
                // is explicit because `instances` alone would pick cluster mode for a node script.
                let apps: Vec<serde_json::Value> = apps
                    .iter()
                    .map(|app| {
                        let mut json = serde_json::json!({
                            "name": app.name,
                            "script": app.script,
                            "args": app.args,
                            "interpreter": "none",
                            "exec_mode": "fork",
                            "instances": app.instances,
                            "autorestart": app.autorestart,
                        });
                        if let Some(limit) = app.max_memory_restart {
                            json["max_memory_restart"] = limit.into();
                        }
                        json
                    })
                    .collect();
                let text = serde_json::json!({ "apps": apps }).to_string();
                ("json", text + "\n")
            }
        }
    }
}

fn from_pm2rs(p: ProcessInfo) -> Instance {
    Instance {
        id: p.id,
        online: p.status == Status::Online && p.pid.is_some(),
        errored: (p.status == Status::Errored).then(|| {
            p.reason
                .or(p.last_exit)
                .unwrap_or_else(|| "no reason given".to_string())
        }),
        name: p.name,
        pid: p.pid,
        restarts: p.restarts,
        started_at_ms: p.started_at_us.map(|us| us as f64 / 1000.0),
    }
}

/// The fields of one `pm2 jlist` entry the bench reads.
#[derive(Deserialize)]
struct Pm2Entry {
    pm_id: u32,
    name: String,
    #[serde(default)]
    pid: Option<u32>,
    pm2_env: Pm2Env,
}

#[derive(Deserialize)]
struct Pm2Env {
    status: String,
    #[serde(default)]
    restart_time: u32,
    #[serde(default)]
    pm_uptime: Option<f64>,
}

/// `pm2 jlist` output: a JSON array, possibly after warning lines PM2 prints on stdout.
fn parse_jlist(stdout: &str) -> Result<Vec<Instance>> {
    let start = stdout
        .find("\n[")
        .map(|i| i + 1)
        .or_else(|| stdout.starts_with('[').then_some(0))
        .context("`pm2 jlist` printed no JSON array")?;
    let entries: Vec<Pm2Entry> = serde_json::from_str(stdout[start..].trim_end())
        .context("`pm2 jlist` did not print the expected JSON array")?;
    Ok(entries
        .into_iter()
        .map(|e| {
            // PM2 reports pid 0 for a stopped process.
            let pid = e.pid.filter(|&pid| pid != 0);
            Instance {
                id: e.pm_id,
                name: e.name,
                online: e.pm2_env.status == "online" && pid.is_some(),
                errored: (e.pm2_env.status == "errored")
                    .then(|| "PM2 status `errored`".to_string()),
                pid,
                restarts: e.pm2_env.restart_time,
                started_at_ms: e.pm2_env.pm_uptime,
            }
        })
        .collect())
}

/// `npm install pm2` into a fresh directory next to `cache`, then renamed to `cache`, so an
/// interrupted install never leaves a half-filled cache behind.
fn install_pm2(cache: &Path) -> Result<()> {
    let parent = cache
        .parent()
        .context("PM2 cache has no parent directory")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix("pm2-install-")
        .tempdir_in(parent)
        .context("creating a staging dir for npm")?;
    eprintln!(
        "bench: npm install pm2 into {} (once; reused by later runs)",
        cache.display()
    );
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
        .arg("--prefix")
        .arg(staging.path())
        .arg("pm2")
        .current_dir(staging.path())
        .stdin(Stdio::null())
        .status()
        .context("running npm (is Node.js installed?)")?;
    if !status.success() {
        bail!("`npm install pm2` failed ({status})");
    }
    if cache.exists() {
        fs::remove_dir_all(cache).with_context(|| format!("removing {}", cache.display()))?;
    }
    let staged = staging.keep();
    fs::rename(&staged, cache)
        .with_context(|| format!("moving {} to {}", staged.display(), cache.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm2() -> Manager {
        Manager {
            kind: Kind::Pm2,
            program: PathBuf::from("pm2"),
            version: None,
            runtime: None,
        }
    }

    fn pm2rs() -> Manager {
        Manager {
            kind: Kind::Pm2rs,
            ..pm2()
        }
    }

    #[test]
    fn each_manager_spells_the_actions() {
        assert_eq!(pm2().args(Cli::List), ["ls"]);
        assert_eq!(pm2().args(Cli::ListJson), ["jlist"]);
        assert_eq!(pm2rs().args(Cli::ListJson), ["list", "--json"]);
        assert_eq!(pm2rs().args(Cli::Restart("solo")), ["restart", "solo"]);
        assert_eq!(pm2().home_env(), "PM2_HOME");
        assert_eq!(pm2rs().pid_file(), PID_FILE);
    }

    #[test]
    fn jlist_is_parsed_after_warning_lines() {
        let out = "[PM2][WARN] something\n[{\"pid\":42,\"name\":\"a\",\"pm_id\":3,\
                   \"pm2_env\":{\"status\":\"online\",\"restart_time\":2,\"pm_uptime\":17}},\
                   {\"pid\":0,\"name\":\"b\",\"pm_id\":4,\"pm2_env\":{\"status\":\"errored\"}}]\n";
        let list = parse_jlist(out).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(
            (list[0].id, list[0].pid, list[0].online),
            (3, Some(42), true)
        );
        assert_eq!((list[0].restarts, list[0].started_at_ms), (2, Some(17.0)));
        assert_eq!((list[1].pid, list[1].online), (None, false));
        assert!(list[1].errored.is_some());
        assert!(parse_jlist("").is_err());
        assert_eq!(parse_jlist("[]").unwrap(), Vec::new());
    }

    #[test]
    fn ecosystems_describe_the_same_apps() {
        let apps = [App {
            name: "sleeper",
            script: "sleep",
            args: &["100000"],
            instances: 7,
            autorestart: false,
            rotate_logs: false,
            max_memory_restart: Some("100M"),
        }];
        let (file, toml_text) = pm2rs().ecosystem(&apps);
        assert_eq!(file, "toml");
        let parsed: toml::Value = toml::from_str(&toml_text).unwrap();
        let app = &parsed["apps"][0];
        assert_eq!(app["script"].as_str(), Some("sleep"));
        assert_eq!(app["instances"].as_integer(), Some(7));
        assert_eq!(app["interpreter"].as_str(), Some("none"));
        assert_eq!(app["autorestart"].as_bool(), Some(false));
        assert_eq!(app["log_max_size"].as_integer(), Some(0));
        assert_eq!(app["max_memory_restart"].as_str(), Some("100M"));

        let (file, json_text) = pm2().ecosystem(&apps);
        assert_eq!(file, "json");
        let parsed: serde_json::Value = serde_json::from_str(&json_text).unwrap();
        let app = &parsed["apps"][0];
        assert_eq!(app["args"][0], "100000");
        assert_eq!(app["instances"], 7);
        assert_eq!(app["exec_mode"], "fork");
        assert_eq!(app["interpreter"], "none");
        assert_eq!(app["autorestart"], false);
        assert_eq!(app["max_memory_restart"], "100M");
    }
}
