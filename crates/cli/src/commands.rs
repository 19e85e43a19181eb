//! One function per CLI command: turn the parsed arguments into a request, send it, print the reply
//! (a table for humans, JSON with `--json`).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use pm2rs_config::{LoadOptions, ScriptOptions};
use pm2rs_proto::{
    ActionResponse, DescribeResponse, ListResponse, PID_FILE, PingResponse, ReloadRequest,
    ResetRequest, ResurrectResponse, SaveResponse, ScaleRequest, ScaleTo, StartRequest,
    StartResponse, Status, TargetRequest, TargetsRequest, routes,
};
use serde::Serialize;

use crate::client::{self, Client};
use crate::render::{self, Style};
use crate::{Cmd, FileArgs, OutputArgs, StartArgs, TargetsArgs, UsageError};

/// How long `kill` waits for the daemon process to be gone.
const KILL_WAIT: Duration = Duration::from_secs(30);

pub async fn run(cmd: Cmd) -> anyhow::Result<ExitCode> {
    let home = client::home_dir()?;
    match cmd {
        Cmd::Start(args) => start(&home, args).await,
        Cmd::Stop(t) => on_targets(&home, Verb::Stop, t, false).await,
        Cmd::Restart {
            targets,
            update_env,
        } => on_targets(&home, Verb::Restart, targets, update_env).await,
        Cmd::Reload {
            target,
            file,
            update_env,
            parallel,
            out,
        } => {
            let targets = TargetsArgs {
                targets: vec![target],
                file,
                out,
            };
            on_targets(&home, Verb::Reload { parallel }, targets, update_env).await
        }
        Cmd::Delete(t) => on_targets(&home, Verb::Delete, t, false).await,
        Cmd::Reset(t) => {
            let mut c = Client::connect_or_start(&home).await?;
            let resp: ActionResponse = c
                .post(
                    routes::RESET,
                    &ResetRequest {
                        target: t.target.clone(),
                    },
                )
                .await?;
            report(
                &mut c,
                &resp,
                t.out,
                &format!("reset the counters of {}", t.target),
            )
            .await
        }
        Cmd::Scale { name, count, out } => {
            let to = parse_scale(&count)?;
            let mut c = Client::connect_or_start(&home).await?;
            let resp: ActionResponse = c
                .post(
                    routes::SCALE,
                    &ScaleRequest {
                        name: name.clone(),
                        to,
                    },
                )
                .await?;
            if out.json {
                return print_json(&resp);
            }
            say(&format!("scaled {name} ({count})"))?;
            print_list(&mut c).await
        }
        Cmd::List(out) => list(&home, out.json).await,
        Cmd::Jlist => list(&home, true).await,
        Cmd::Describe(t) => {
            let mut c = Client::connect_or_start(&home).await?;
            let resp: DescribeResponse = c
                .post(routes::DESCRIBE, &TargetRequest { target: t.target })
                .await?;
            if t.out.json {
                return print_json(&resp.processes);
            }
            let style = style();
            let now = pm2rs_proto::unix_micros();
            let mut text: Vec<String> = resp
                .processes
                .iter()
                .map(|d| render::describe(d, &style, now))
                .collect();
            text.extend(resp.warnings.iter().map(|w| format!("warning: {w}")));
            write_out(&text.join("\n"))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Convert { file } => {
            let toml = pm2rs_config::convert_ecosystem(&file, &LoadOptions::default())?;
            write_out(&toml)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ping => {
            let mut c = Client::connect_or_start(&home).await?;
            let p: PingResponse = c.get(routes::PING).await?;
            let keeper = match p.keeper_pid {
                Some(pid) => format!("fd keeper pid {pid} (apps outlive the daemon)"),
                None => "no fd keeper: the apps end with the daemon (see its log)".to_string(),
            };
            write_out(&format!(
                "pong: daemon pid {}, version {}, home {}\n{keeper}\n",
                p.pid,
                p.version,
                p.home.display()
            ))?;
            warn_all(&p.warnings)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Kill => kill(&home).await,
        Cmd::Save => {
            let mut c = Client::connect_or_start(&home).await?;
            let s: SaveResponse = c.post(routes::SAVE, &()).await?;
            say(&format!(
                "saved {} app(s) to {} (kept current on every change; `pm2rs resurrect` brings them back)",
                s.apps,
                s.path.display()
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Resurrect => {
            let mut c = Client::connect_or_start(&home).await?;
            let r: ResurrectResponse = c.post(routes::RESURRECT, &()).await?;
            warn_all(&r.warnings)?;
            let mut lines = vec![if r.path.as_os_str().is_empty() {
                "no dump to resurrect".to_string()
            } else {
                format!("resurrecting from {}", r.path.display())
            }];
            lines.extend(r.started.iter().map(|n| format!("started {n}")));
            lines.extend(r.stopped.iter().map(|n| format!("restored {n}, stopped")));
            lines.extend(
                r.known
                    .iter()
                    .map(|n| format!("already known, left alone: {n}")),
            );
            say(&lines.join("\n"))?;
            print_list(&mut c).await
        }
        Cmd::Logs(args) => crate::logs::logs(&home, args).await,
        Cmd::Flush { target } => crate::logs::flush(&home, target).await,
        Cmd::ReloadLogs => crate::logs::reload(&home).await,
        Cmd::Startup(args) => crate::startup::startup(&home, &args),
        Cmd::Unstartup(args) => crate::startup::unstartup(&args),
        Cmd::Update => update(&home).await,
        Cmd::Daemon { .. } | Cmd::Keeper => unreachable_daemon(),
    }
}

fn unreachable_daemon() -> anyhow::Result<ExitCode> {
    Err(UsageError("`pm2rs daemon` is handled before the client starts".into()).into())
}

async fn start(home: &std::path::Path, args: StartArgs) -> anyhow::Result<ExitCode> {
    if let Some(code) = start_known(home, &args).await? {
        return Ok(code);
    }
    let cpus = cpus();
    let path = std::path::Path::new(&args.what);
    let from_stdin = args.what == "-";
    let apps = if from_stdin || pm2rs_config::is_ecosystem_path(path) {
        if args.name.is_some()
            || args.instances.is_some()
            || args.interpreter.is_some()
            || args.port.is_some()
            || args.wait_ready
            || args.cron_restart.is_some()
            || args.watch
            || !args.args.is_empty()
        {
            return Err(UsageError(
                "--name, -i, --interpreter, --port, --wait-ready, --cron-restart, --watch and script arguments apply to a script, not an ecosystem file; \
                 set them in the file instead"
                    .into(),
            )
            .into());
        }
        let opts = LoadOptions {
            env_profile: args.env_profile,
            only: args.only,
            cpus,
            js_timeout: None,
        };
        if from_stdin {
            if std::io::stdin().is_terminal() {
                eprintln!("pm2rs: reading the ecosystem from standard input (end it with Ctrl-D)");
            }
            let mut input = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut input)
                .context("cannot read the ecosystem from standard input")?;
            let cwd = std::env::current_dir().context("cannot read the current directory")?;
            pm2rs_config::load_ecosystem_stdin(input, &cwd, &opts)?
        } else {
            pm2rs_config::load_ecosystem(path, &opts)?
        }
    } else {
        if !args.only.is_empty() || args.env_profile.is_some() {
            return Err(UsageError(
                "--only and --env apply to an ecosystem file, not a script".into(),
            )
            .into());
        }
        vec![pm2rs_config::app_from_script(
            &args.what,
            &ScriptOptions {
                name: args.name,
                instances: args.instances,
                args: args.args,
                interpreter: args.interpreter,
                namespace: args.namespace,
                port: args.port,
                wait_ready: args.wait_ready,
                cron_restart: args.cron_restart,
                watch: args.watch,
                cwd: std::env::current_dir().context("cannot read the current directory")?,
                cpus,
            },
        )?]
    };
    let mut c = Client::connect_or_start(home).await?;
    let resp: StartResponse = c.post(routes::START, &StartRequest { apps }).await?;
    report_start(&mut c, &resp, args.out).await
}

/// Prints a start reply (JSON, or a line per app and the table); failure when an instance ended
/// errored.
async fn report_start(
    c: &mut Client,
    resp: &StartResponse,
    out: OutputArgs,
) -> anyhow::Result<ExitCode> {
    if out.json {
        return print_json(resp);
    }
    say(&start_lines(resp, true).join("\n"))?;
    print_list(c).await?;
    Ok(if errored(resp) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Whether an instance of a start reply ended errored.
fn errored(resp: &StartResponse) -> bool {
    resp.processes.iter().any(|p| p.status == Status::Errored)
}

/// `start <word>` where the word is the name, id or namespace of an app the daemon has, or `all`:
/// those apps are started again as PM2 does it (its `restartProcessId`: a stopped app starts, a
/// running one restarts), never replaced by a file or program of that name. `None` when the
/// word names no app and is read as a file, then a program in PATH. A word with a `/` or an
/// extension is always a path, as in PM2.
async fn start_known(home: &std::path::Path, args: &StartArgs) -> anyhow::Result<Option<ExitCode>> {
    let word = args.what.as_str();
    if word == "-" || word.contains('/') || std::path::Path::new(word).extension().is_some() {
        return Ok(None);
    }
    // No daemon running: no app is known (except for `all`, which PM2 takes as "all apps").
    let client = if word == "all" {
        Some(Client::connect_or_start(home).await?)
    } else {
        Client::connect(home).await?
    };
    let Some(mut c) = client else {
        return Ok(None);
    };
    let list: ListResponse = c.get(routes::LIST).await?;
    let procs = list
        .processes
        .iter()
        .map(|p| (p.id, p.name.as_str(), p.namespace.as_str()));
    match pm2rs_daemon::supervisor::resolve_target(word, procs) {
        Ok(ids) if !ids.is_empty() || word == "all" => {}
        _ => return Ok(None),
    }
    if args.name.is_some()
        || args.instances.is_some()
        || args.interpreter.is_some()
        || args.namespace.is_some()
        || args.port.is_some()
        || args.wait_ready
        || args.cron_restart.is_some()
        || args.watch
        || !args.args.is_empty()
        || !args.only.is_empty()
        || args.env_profile.is_some()
    {
        return Err(UsageError(format!(
            "`{word}` names a known app (see `pm2rs list`): `pm2rs start {word}` starts it \
             again and takes no script options; to run a program of that name as a new app, \
             give its path (`./{word}` or a full path)"
        ))
        .into());
    }
    let request = TargetsRequest {
        targets: vec![word.to_string()],
    };
    let resp: ActionResponse = c.post(routes::RESTART, &request).await?;
    let mut restarted: Vec<String> = Vec::new();
    for p in &resp.processes {
        if !restarted.contains(&p.name) {
            restarted.push(p.name.clone());
        }
    }
    let resp = StartResponse {
        started: vec![],
        updated: vec![],
        restarted,
        unchanged: vec![],
        processes: resp.processes,
    };
    report_start(&mut c, &resp, args.out).await.map(Some)
}

/// What a command that takes targets does with them.
#[derive(Debug, Clone, Copy)]
enum Verb {
    Stop,
    Restart,
    Reload { parallel: u32 },
    Delete,
}

impl Verb {
    fn past(self) -> &'static str {
        match self {
            Verb::Stop => "stopped",
            Verb::Restart => "restarted",
            Verb::Reload { .. } => "reloaded",
            Verb::Delete => "deleted",
        }
    }
}

/// stop, restart, reload, delete: on names, ids, namespaces, `all`, or an ecosystem file's apps.
async fn on_targets(
    home: &std::path::Path,
    verb: Verb,
    args: TargetsArgs,
    update_env: bool,
) -> anyhow::Result<ExitCode> {
    let files: Vec<&String> = args
        .targets
        .iter()
        .filter(|t| pm2rs_config::is_ecosystem_path(std::path::Path::new(t)))
        .collect();
    if let [file] = files[..] {
        if args.targets.len() > 1 {
            return Err(UsageError(format!(
                "`{file}` is an ecosystem file: give it alone, without other targets"
            ))
            .into());
        }
        let file = std::path::PathBuf::from(file);
        return on_file(home, verb, &file, &args.file, args.out).await;
    }
    if files.len() > 1 {
        return Err(UsageError("give one ecosystem file at a time".into()).into());
    }
    if !args.file.only.is_empty() || args.file.env_profile.is_some() {
        return Err(UsageError(
            "--only and --env apply to an ecosystem file, not to app names".into(),
        )
        .into());
    }
    if update_env {
        return Err(UsageError(
            "--update-env with an app name is not supported yet (an app keeps the env it was \
             started with); give the ecosystem file instead, whose env is applied"
                .into(),
        )
        .into());
    }
    let mut c = Client::connect_or_start(home).await?;
    let resp = act(&mut c, verb, &args.targets).await?;
    let line = format!("{} {}", verb.past(), args.targets.join(" "));
    report(&mut c, &resp, args.out, &line).await
}

/// Sends one stop/restart/reload/delete request.
async fn act(c: &mut Client, verb: Verb, targets: &[String]) -> anyhow::Result<ActionResponse> {
    let route = match verb {
        Verb::Stop => routes::STOP,
        Verb::Restart => routes::RESTART,
        Verb::Delete => routes::DELETE,
        Verb::Reload { parallel } => {
            let [target] = targets else {
                return Err(UsageError("reload takes one target".into()).into());
            };
            let request = ReloadRequest {
                target: target.clone(),
                parallel,
            };
            return c.post(routes::RELOAD, &request).await;
        }
    };
    let request = TargetsRequest {
        targets: targets.to_vec(),
    };
    c.post(route, &request).await
}

/// stop/restart/reload/delete of an ecosystem file, as PM2 does it: the file's apps (narrowed by
/// `--only`) are the targets. stop and delete act on those the daemon knows and skip the others;
/// restart and reload also apply the file's settings (`--env` profile included), so a changed app
/// is restarted with them and an app not running is started, then the unchanged running ones are
/// restarted or reloaded.
async fn on_file(
    home: &std::path::Path,
    verb: Verb,
    file: &std::path::Path,
    opts: &FileArgs,
    out: OutputArgs,
) -> anyhow::Result<ExitCode> {
    let apps = pm2rs_config::load_ecosystem(file, &load_options(opts))?;
    let mut c = Client::connect_or_start(home).await?;
    let mut lines = Vec::new();
    let file_apps: Vec<String> = apps.iter().map(|a| a.name.clone()).collect();
    let mut names = file_apps.clone();
    let mut ids = Vec::new();
    let mut failed = false;
    match verb {
        Verb::Stop | Verb::Delete => {
            let list: ListResponse = c.get(routes::LIST).await?;
            let (known, unknown): (Vec<String>, Vec<String>) = names
                .into_iter()
                .partition(|n| list.processes.iter().any(|p| p.name == *n));
            for n in &unknown {
                lines.push(format!("{n}: no such app, skipped"));
            }
            names = known;
        }
        Verb::Restart | Verb::Reload { .. } => {
            let resp: StartResponse = c.post(routes::START, &StartRequest { apps }).await?;
            failed = errored(&resp);
            lines.extend(start_lines(&resp, false));
            ids.extend(
                resp.processes
                    .iter()
                    .filter(|p| !resp.unchanged.contains(&p.name))
                    .map(|p| p.id),
            );
            names = resp.unchanged;
        }
    }
    for chunk in chunks(verb, &names) {
        let resp = act(&mut c, verb, chunk).await?;
        lines.push(format!("{} {}", verb.past(), chunk.join(" ")));
        ids.extend(resp.ids);
    }
    if names.is_empty() && lines.is_empty() {
        lines.push(format!("no app of {} to act on", file.display()));
    }
    if out.json {
        // Every instance of the file's apps as they are now, and the ids acted on.
        let list: ListResponse = c.get(routes::LIST).await?;
        let processes = list
            .processes
            .into_iter()
            .filter(|p| file_apps.contains(&p.name))
            .collect();
        print_json(&ActionResponse { processes, ids })?;
        return Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    say(&lines.join("\n"))?;
    print_list(&mut c).await?;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The requests that act on `names`: one for all of them, but one per app for reload (which
/// takes one target).
fn chunks(verb: Verb, names: &[String]) -> Vec<&[String]> {
    if names.is_empty() {
        return vec![];
    }
    match verb {
        Verb::Reload { .. } => names.chunks(1).collect(),
        _ => vec![names],
    }
}

/// Prints an action's reply (JSON, or a status line and the table).
async fn report(
    c: &mut Client,
    resp: &ActionResponse,
    out: OutputArgs,
    line: &str,
) -> anyhow::Result<ExitCode> {
    if out.json {
        return print_json(resp);
    }
    let ids: Vec<String> = resp.ids.iter().map(u32::to_string).collect();
    say(&format!("{line} (id {})", ids.join(", ")))?;
    print_list(c).await
}

fn load_options(opts: &FileArgs) -> LoadOptions {
    LoadOptions {
        env_profile: opts.env_profile.clone(),
        only: opts.only.clone(),
        cpus: cpus(),
        js_timeout: None,
    }
}

fn cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// One line per app of a start reply, saying what was done with it.
/// `unchanged`: whether to include the apps left alone (a restart of a file acts on them next).
fn start_lines(resp: &StartResponse, unchanged: bool) -> Vec<String> {
    let mut lines = Vec::new();
    let mut groups = vec![
        (&resp.started, "started"),
        (&resp.updated, "applied changes to and restarted"),
        (&resp.restarted, "started again"),
    ];
    if unchanged {
        groups.push((&resp.unchanged, "already running, unchanged:"));
    }
    for (names, verb) in groups {
        for n in names {
            lines.push(format!("{verb} {n}"));
        }
    }
    lines
}

async fn list(home: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect_or_start(home).await?;
    if json {
        let resp: ListResponse = c.get(routes::LIST).await?;
        return print_json(&resp.processes);
    }
    print_list(&mut c).await
}

async fn print_list(c: &mut Client) -> anyhow::Result<ExitCode> {
    let resp: ListResponse = c.get(routes::LIST).await?;
    write_out(&render::process_table(
        &resp.processes,
        &style(),
        pm2rs_proto::unix_micros(),
    ))?;
    Ok(ExitCode::SUCCESS)
}

async fn kill(home: &std::path::Path) -> anyhow::Result<ExitCode> {
    let Some(mut c) = connect_or_take_over(home).await? else {
        say("no daemon is running")?;
        return Ok(ExitCode::SUCCESS);
    };
    let ping: PingResponse = c.get(routes::PING).await?;
    // Opened before the kill, while the daemon surely holds its lock: it removes the file as it ends.
    let pid_file = home.join(PID_FILE);
    let lock_file = std::fs::File::open(&pid_file)
        .with_context(|| format!("cannot open {}", pid_file.display()))?;
    let resp: ActionResponse = c.post(routes::KILL, &()).await?;
    let deadline = Instant::now() + KILL_WAIT;
    let pid = nix::unistd::Pid::from_raw(ping.pid as i32);
    let still_running = || {
        anyhow::anyhow!(
            "the daemon (pid {pid}) is still running after {}s",
            KILL_WAIT.as_secs()
        )
    };
    if !lock_released(lock_file, KILL_WAIT).await? {
        return Err(still_running());
    }
    // The kernel lets the lock go as the daemon's process ends; the process may take a few more
    // microseconds to be gone, so this loop almost never runs.
    while pm2rs_daemon::process::is_running(pid) {
        if Instant::now() > deadline {
            return Err(still_running());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    say(&format!(
        "stopped {} process(es) and the daemon; the dump keeps the apps: `pm2rs resurrect` brings them back",
        resp.ids.len()
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Connects to the daemon; when none runs but the fd keeper holds apps a dead daemon left, starts
/// one (it takes them over). `None`: no daemon, nothing left.
async fn connect_or_take_over(home: &std::path::Path) -> anyhow::Result<Option<Client>> {
    if let Some(c) = Client::connect(home).await? {
        return Ok(Some(c));
    }
    let home_owned = home.to_path_buf();
    let left = tokio::task::spawn_blocking(move || pm2rs_daemon::keeper::answers(&home_owned))
        .await
        .unwrap_or(false);
    if !left {
        return Ok(None);
    }
    say("apps of a daemon that ended are still running; starting a daemon to take them over")?;
    Ok(Some(Client::connect_or_start(home).await?))
}

/// `pm2rs update`: hands the running daemon's apps to a daemon of this binary.
async fn update(home: &std::path::Path) -> anyhow::Result<ExitCode> {
    let Some(mut c) = Client::connect(home).await? else {
        if connect_or_take_over(home).await?.is_some() {
            say("a daemon of this version took the running apps over")?;
        } else {
            say("no daemon is running; the next command starts this version")?;
        }
        return Ok(ExitCode::SUCCESS);
    };
    let old: PingResponse = c.get(routes::PING).await?;
    let pid_file = home.join(PID_FILE);
    let lock_file = std::fs::File::open(&pid_file)
        .with_context(|| format!("cannot open {}", pid_file.display()))?;
    let handed: pm2rs_proto::HandoverResponse = c.post(routes::HANDOVER, &()).await?;
    if !lock_released(lock_file, KILL_WAIT).await? {
        anyhow::bail!(
            "the old daemon (pid {}) is still running after {}s; see {}",
            old.pid,
            KILL_WAIT.as_secs(),
            home.join(pm2rs_proto::DAEMON_LOG_FILE).display()
        );
    }
    // Under a service manager the unit starts the successor (the old daemon exited with
    // EX_TEMPFAIL, which `Restart=on-failure` restarts), so it stays the unit's main process;
    // else this binary starts it.
    let mut c = match handed.service_manager {
        true => match wait_for_daemon(home, SERVICE_RESTART_WAIT).await? {
            Some(c) => c,
            None => {
                say(&format!(
                    "warning: the service manager did not start the daemon again within {}s;                      starting one outside it",
                    SERVICE_RESTART_WAIT.as_secs()
                ))?;
                Client::connect_or_start(home).await?
            }
        },
        false => Client::connect_or_start(home).await?,
    };
    let new: PingResponse = c.get(routes::PING).await?;
    let list: ListResponse = c.get(routes::LIST).await?;
    let online = list
        .processes
        .iter()
        .filter(|p| p.status == pm2rs_proto::Status::Online)
        .count();
    say(&format!(
        "daemon replaced: {} (pid {}) → {} (pid {}); {} instance(s) kept running, {online} online now",
        old.version, old.pid, new.version, new.pid, handed.running,
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// How long `update` waits for a service manager to start the successor (systemd restarts a
/// unit 100 ms after its exit by default).
const SERVICE_RESTART_WAIT: Duration = Duration::from_secs(10);

/// Connects to a daemon started by someone else (a service manager), polling for at most `wait`.
async fn wait_for_daemon(home: &std::path::Path, wait: Duration) -> anyhow::Result<Option<Client>> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(c) = Client::connect(home).await? {
            return Ok(Some(c));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits, at most `wait`, until nobody holds an exclusive `flock` on `file` (the daemon holds one on
/// its pid file until its process ends): takes a shared lock and lets it go at once. `Ok(false)`
/// when `wait` ran out. `flock` blocks, so it runs on a thread of its own, not one of the runtime's
/// blocking threads: on a timeout that thread is left blocked, and the runtime would wait for it
/// at exit.
async fn lock_released(file: std::fs::File, wait: Duration) -> anyhow::Result<bool> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("kill-wait".into())
        .spawn(move || {
            let mut file = file;
            let taken = loop {
                match Flock::lock(file, FlockArg::LockShared) {
                    // Released at once (dropped): only its taking mattered.
                    Ok(lock) => {
                        drop(lock);
                        break Ok(());
                    }
                    Err((back, Errno::EINTR)) => file = back,
                    Err((_, e)) => break Err(e),
                }
            };
            let _ = tx.send(taken);
        })
        .context("cannot start a thread to wait for the daemon")?;
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(Ok(()))) => Ok(true),
        Ok(Ok(Err(e))) => Err(e).context("cannot wait on the daemon's pid-file lock"),
        Ok(Err(_)) => anyhow::bail!("the thread waiting for the daemon ended without an answer"),
        Err(_) => Ok(false),
    }
}

fn parse_scale(count: &str) -> anyhow::Result<ScaleTo> {
    let bad = || {
        UsageError(format!(
            "invalid instance count `{count}`: use N, +N or -N (e.g. 4, +2, -1)"
        ))
    };
    let to = if let Some(n) = count.strip_prefix('+') {
        ScaleTo::Delta(n.parse::<i64>().map_err(|_| bad())?)
    } else if count.starts_with('-') {
        ScaleTo::Delta(count.parse::<i64>().map_err(|_| bad())?)
    } else {
        ScaleTo::Exactly(count.parse::<u32>().map_err(|_| bad())?)
    };
    Ok(to)
}

fn style() -> Style {
    let stdout = std::io::stdout();
    let tty = stdout.is_terminal();
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    Style {
        color: tty && !no_color,
        width: terminal_width(tty),
    }
}

/// `COLUMNS` when set (even when piped), else the terminal's width, else `None` (no limit).
fn terminal_width(tty: bool) -> Option<u16> {
    if let Some(cols) = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()) {
        return Some(cols);
    }
    if !tty {
        return None;
    }
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we pass; fd 1 is ours.
    let rc = unsafe { nix::libc::ioctl(1, nix::libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then_some(ws.ws_col)
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<ExitCode> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    write_out(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// The daemon's warnings, one `[pm2rs] warning:` line each.
fn warn_all(warnings: &[String]) -> Result<(), StdoutClosed> {
    let lines: Vec<String> = warnings.iter().map(|w| format!("warning: {w}")).collect();
    say(&lines.join("\n"))
}

/// A status line for humans, prefixed like PM2's `[PM2]`.
fn say(line: &str) -> Result<(), StdoutClosed> {
    if line.is_empty() {
        return Ok(());
    }
    let prefixed: Vec<String> = line.lines().map(|l| format!("[pm2rs] {l}\n")).collect();
    write_out(&prefixed.concat())
}

/// Writes to stdout. Any failure (in practice a closed pipe, as in `pm2rs list | head -1`) becomes
/// [`StdoutClosed`], which `main` treats as success: nobody is left to read.
pub(crate) fn write_out(text: &str) -> Result<(), StdoutClosed> {
    let mut out = std::io::stdout().lock();
    let mut write = || -> std::io::Result<()> {
        out.write_all(text.as_bytes())?;
        if !text.ends_with('\n') {
            out.write_all(b"\n")?;
        }
        out.flush()
    };
    write().map_err(StdoutClosed)
}

/// Stdout could not be written; distinct from a broken pipe to the daemon, which is a failure.
#[derive(Debug)]
pub struct StdoutClosed(pub std::io::Error);

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot write to stdout: {}", self.0)
    }
}

impl std::error::Error for StdoutClosed {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_counts_parse() {
        assert_eq!(parse_scale("4").unwrap(), ScaleTo::Exactly(4));
        assert_eq!(parse_scale("+2").unwrap(), ScaleTo::Delta(2));
        assert_eq!(parse_scale("-1").unwrap(), ScaleTo::Delta(-1));
        assert!(parse_scale("four").is_err());
        assert!(parse_scale("+").is_err());
    }
}
