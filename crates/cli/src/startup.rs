//! `pm2rs startup` and `pm2rs unstartup`: the boot-time service that runs
//! `pm2rs daemon --resurrect` for one home, for systemd (system or `--user` unit), launchd (a
//! daemon or an agent) or OpenRC. The texts (unit, plist, init script) are pure functions of a
//! [`Service`]; around them: detecting this machine's init, where each file goes, writing it
//! atomically or removing it, and the commands printed for the user to enable or disable it
//! (pm2rs never runs `systemctl` and friends itself).
//!
//! Hidden for tests: `PM2RS_UNIT_DIR` replaces the directory the file is written to and removed
//! from (`/etc/systemd/system`, `~/.config/systemd/user`, …); the file's name stays the same.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::{Args, ValueEnum};
use pm2rs_proto::defaults;

use crate::UsageError;

/// Overrides the directory of the service file (tests only).
const UNIT_DIR_ENV: &str = "PM2RS_UNIT_DIR";
/// In every file we write; `unstartup` removes only a file that has it.
const MARKER: &str = "written by `pm2rs startup`";
/// How long the init system waits for a stopping daemon before it kills it (systemd
/// TimeoutStopSec=, launchd ExitTimeOut, OpenRC's retry). The daemon stops every app at once, so
/// this must cover the longest kill_timeout plus the drain of the apps' last output (the daemon
/// waits up to 5 s for their pipes) with margin: 30 s covers kill_timeout up to about 20 s.
const STOP_TIMEOUT_SECS: u64 = 30;
const _: () = assert!(STOP_TIMEOUT_SECS * 1000 >= 2 * (defaults::KILL_TIMEOUT_MS + 5000));
/// The daemon holds every app's pipes and listening sockets; the usual 1024 is reached by a few
/// hundred instances.
const NOFILE_LIMIT: u64 = 65536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Init {
    Systemd,
    Launchd,
    Openrc,
}

#[derive(Debug, Args)]
pub struct StartupArgs {
    /// The init system (default: this machine's).
    pub init: Option<Init>,
    /// A per-user service (systemd --user unit, launchd agent) instead of a system one.
    #[arg(long)]
    pub user: bool,
    /// Write the file (and print the command that enables it) instead of printing it.
    #[arg(long)]
    pub install: bool,
}

#[derive(Debug, Args)]
pub struct UnstartupArgs {
    /// The init system (default: this machine's).
    pub init: Option<Init>,
    /// The per-user service (as `startup --user` wrote it).
    #[arg(long)]
    pub user: bool,
}

/// What the boot service runs, for whom.
#[derive(Debug, Clone)]
pub struct Service {
    /// This `pm2rs` binary, absolute.
    pub exe: PathBuf,
    /// The daemon's `PM2RS_HOME`, absolute.
    pub home: PathBuf,
    /// Who the daemon runs as (a system service sets it; a per-user one is that user's anyway).
    pub user: String,
    pub group: String,
    /// A per-user service (systemd --user, launchd agent).
    pub per_user: bool,
}

/// `pm2rs startup`.
pub fn startup(home: &Path, args: &StartupArgs) -> anyhow::Result<ExitCode> {
    let init = init_or_detect(args.init)?;
    let service = this_service(home, args.user)?;
    check_per_user(init, args.user)?;
    let text = render(init, &service)?;
    let place = placement(init, &service, &Dirs::from_env())?;
    let enable = enable_commands(init, &service, &place.path, is_root());
    if !args.install {
        crate::commands::write_out(&text)?;
        let mut msg = format!(
            "pm2rs: this {} runs the daemon of PM2RS_HOME={} as {}; it belongs in {}.\n\
             Install and enable it:\n  {}\n",
            kind(init, args.user),
            service.home.display(),
            service.user,
            place.path.display(),
            install_command(init, &service, is_root()),
        );
        for c in &enable {
            let _ = writeln!(msg, "  {c}");
        }
        eprint!("{msg}");
        return Ok(ExitCode::SUCCESS);
    }
    if let Err(e) = write_file(&place, &text) {
        return Err(anyhow!(write_error(
            init,
            &service,
            &place.path,
            &e,
            is_root()
        )));
    }
    let mut msg = format!(
        "pm2rs: wrote {}\nEnable it (start now and at every boot):\n",
        place.path.display()
    );
    for c in &enable {
        let _ = writeln!(msg, "  {c}");
    }
    eprint!("{msg}");
    Ok(ExitCode::SUCCESS)
}

/// Why the file could not be written, and what to do next.
fn write_error(init: Init, s: &Service, path: &Path, e: &std::io::Error, root: bool) -> String {
    let mut msg = format!("cannot write {}: {e}; nothing was written", path.display());
    if !s.per_user && !root {
        let _ = write!(
            msg,
            ". A system service needs root: {} (or add --user for a service of your own)",
            install_command(init, s, false)
        );
    } else {
        let dir = path.parent().unwrap_or(Path::new("/"));
        let _ = write!(msg, ". {} must be a directory you can write", dir.display());
    }
    msg
}

/// `pm2rs unstartup`.
pub fn unstartup(args: &UnstartupArgs) -> anyhow::Result<ExitCode> {
    let init = init_or_detect(args.init)?;
    check_per_user(init, args.user)?;
    let home = crate::client::home_dir()?;
    let service = this_service(&home, args.user)?;
    let place = placement(init, &service, &Dirs::from_env())?;
    let text = match std::fs::read_to_string(&place.path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "pm2rs: there is no {} at {}: nothing to remove{}",
                kind(init, args.user),
                place.path.display(),
                match (init, args.user) {
                    (Init::Openrc, _) => "",
                    (_, false) => " (was it installed with --user?)",
                    (_, true) => " (was it installed without --user?)",
                }
            );
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(anyhow!("cannot read {}: {e}", place.path.display())),
    };
    if !text.contains(MARKER) {
        return Err(anyhow!(
            "{} was not written by `pm2rs startup`; it was left alone",
            place.path.display()
        ));
    }
    std::fs::remove_file(&place.path)
        .with_context(|| format!("cannot remove {}", place.path.display()))?;
    let mut msg = format!("pm2rs: removed {}\n", place.path.display());
    if let Some(link) = &place.enabled_link
        && link.symlink_metadata().is_ok()
    {
        std::fs::remove_file(link).with_context(|| format!("cannot remove {}", link.display()))?;
        let _ = writeln!(msg, "pm2rs: removed {} (what enabled it)", link.display());
    }
    msg.push_str("Stop the running service and forget it:\n");
    for c in disable_commands(init, &service, is_root()) {
        let _ = writeln!(msg, "  {c}");
    }
    eprint!("{msg}");
    Ok(ExitCode::SUCCESS)
}

fn init_or_detect(named: Option<Init>) -> anyhow::Result<Init> {
    if let Some(init) = named {
        return Ok(init);
    }
    detect(cfg!(target_os = "macos"), |p| Path::new(p).exists()).ok_or_else(|| {
        UsageError(
            "cannot tell this machine's init system (no /run/systemd/system, /sbin/openrc-run or \
             /run/openrc); name it: pm2rs startup systemd|launchd|openrc"
                .into(),
        )
        .into()
    })
}

/// This machine's init: launchd on macOS, systemd when it runs (`/run/systemd/system`), OpenRC
/// when it is installed or runs.
fn detect(macos: bool, exists: impl Fn(&str) -> bool) -> Option<Init> {
    if macos {
        Some(Init::Launchd)
    } else if exists("/run/systemd/system") {
        Some(Init::Systemd)
    } else if exists("/sbin/openrc-run") || exists("/run/openrc") {
        Some(Init::Openrc)
    } else {
        None
    }
}

fn check_per_user(init: Init, per_user: bool) -> anyhow::Result<()> {
    if per_user && init == Init::Openrc {
        return Err(UsageError(
            "OpenRC services are system services: drop --user (the script runs the daemon as \
             the home's owner)"
                .into(),
        )
        .into());
    }
    Ok(())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The service for `home`, run by this binary as the home's owner (so `sudo env PM2RS_HOME=…
/// pm2rs startup --install` makes a unit for the user whose home it is), or as the current user
/// when the home does not exist yet.
fn this_service(home: &Path, per_user: bool) -> anyhow::Result<Service> {
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .context("cannot find the path of this pm2rs binary")?;
    let uid = match std::fs::metadata(home) {
        Ok(m) if !per_user => nix::unistd::Uid::from_raw(m.uid()),
        _ => nix::unistd::getuid(),
    };
    // A user the static binary cannot name (its NSS sees only local files) is given by number,
    // which User=, command_user and UserName accept too.
    let (user, gid) = match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => (u.name, u.gid),
        _ => (uid.to_string(), nix::unistd::getgid()),
    };
    let group = nix::unistd::Group::from_gid(gid)
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |g| g.name);
    Ok(Service {
        exe,
        home: home.to_path_buf(),
        user,
        group,
        per_user,
    })
}

fn kind(init: Init, per_user: bool) -> &'static str {
    match (init, per_user) {
        (Init::Systemd, false) => "systemd unit",
        (Init::Systemd, true) => "systemd user unit",
        (Init::Launchd, false) => "launchd daemon",
        (Init::Launchd, true) => "launchd agent",
        (Init::Openrc, _) => "OpenRC service",
    }
}

/// The file's text for `init`. Paths the format cannot carry (not UTF-8, or with a control
/// character) are refused.
pub fn render(init: Init, s: &Service) -> anyhow::Result<String> {
    for (what, path) in [("this binary's path", &s.exe), ("PM2RS_HOME", &s.home)] {
        match path.to_str() {
            Some(p) if !p.chars().any(char::is_control) => {}
            _ => {
                return Err(UsageError(format!(
                    "{what} ({}) is not UTF-8 or has a control character: a service file cannot name it",
                    path.display()
                ))
                .into());
            }
        }
    }
    Ok(match init {
        Init::Systemd => systemd_unit(s),
        Init::Launchd => launchd_plist(s),
        Init::Openrc => openrc_script(s),
    })
}

/// The systemd unit. Why each setting is in docs/architecture.md ("Boot-time service").
pub fn systemd_unit(s: &Service) -> String {
    let home = s.home.display().to_string();
    let mut u = String::new();
    let _ = writeln!(
        u,
        "# pm2rs boot service, {MARKER}: the daemon of PM2RS_HOME={home}\n\
         # started at boot with the apps it saved (`pm2rs daemon --resurrect`).\n\
         [Unit]\n\
         Description=pm2rs process manager ({})",
        systemd_escape(&home)
    );
    if !s.per_user {
        u.push_str("After=network.target\n");
    }
    u.push_str(
        "\n[Service]\n\
         # The daemon says READY=1 once its socket serves and its apps are restored; only it may.\n\
         Type=notify\n\
         NotifyAccess=main\n",
    );
    if !s.per_user {
        let _ = writeln!(u, "User={}\nGroup={}", s.user, s.group);
    }
    let _ = writeln!(
        u,
        "Environment=\"PM2RS_HOME={}\"\n\
         ExecStart=\"{}\" daemon --resurrect\n\
         Restart=on-failure\n\
         # The apps (and what keeps their pipes and sockets open) live in this unit's cgroup and\n\
         # must outlive a daemon crash, so that the restarted daemon takes them over: only the\n\
         # daemon is signalled. Stopping the unit sends it SIGTERM; it then stops every app itself,\n\
         # each with its kill_timeout, and exits.\n\
         KillMode=process\n\
         # All apps stop at once: the longest kill_timeout (default {} ms) plus up to 5 s for their\n\
         # last output to reach the files. {STOP_TIMEOUT_SECS} s covers a kill_timeout up to about 20 s; raise it\n\
         # (systemctl edit) for apps that need longer.\n\
         TimeoutStopSec={STOP_TIMEOUT_SECS}\n\
         # Every app's pipes and listening sockets are the daemon's file descriptors.\n\
         LimitNOFILE={NOFILE_LIMIT}\n\
         \n\
         [Install]\n\
         WantedBy={}",
        systemd_escape(&home),
        systemd_escape(&s.exe.display().to_string()).replace('$', "$$"),
        defaults::KILL_TIMEOUT_MS,
        wanted_by(s),
    );
    u
}

fn wanted_by(s: &Service) -> &'static str {
    if s.per_user {
        "default.target"
    } else {
        "multi-user.target"
    }
}

/// Escapes a value for a double-quoted systemd setting: backslash and quote, and `%` (specifiers).
fn systemd_escape(value: &str) -> String {
    escape(value, &[('\\', "\\\\"), ('"', "\\\""), ('%', "%%")])
}

/// `value` with each character of `table` replaced by its text.
fn escape(value: &str, table: &[(char, &str)]) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match table.iter().find(|(from, _)| *from == c) {
            Some((_, to)) => out.push_str(to),
            None => out.push(c),
        }
    }
    out
}

fn launchd_label(s: &Service) -> String {
    format!("pm2rs.{}", s.user)
}

/// The launchd plist: a daemon (with UserName) or, per user, an agent.
pub fn launchd_plist(s: &Service) -> String {
    let home = s.home.display().to_string();
    let mut p = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
         <!-- pm2rs boot service, {MARKER}: the daemon of the PM2RS_HOME below. -->\n\
         <plist version=\"1.0\">\n<dict>\n\
         \x20 <key>Label</key>\n  <string>{}</string>\n",
        xml_escape(&launchd_label(s)),
    );
    if !s.per_user {
        let _ = write!(
            p,
            "  <key>UserName</key>\n  <string>{}</string>\n  <key>GroupName</key>\n  <string>{}</string>\n",
            xml_escape(&s.user),
            xml_escape(&s.group)
        );
    }
    let log = s.home.join("launchd.log").display().to_string();
    let _ = write!(
        p,
        "  <key>ProgramArguments</key>\n  <array>\n    <string>{}</string>\n    <string>daemon</string>\n    <string>--resurrect</string>\n  </array>\n\
         \x20 <key>EnvironmentVariables</key>\n  <dict>\n    <key>PM2RS_HOME</key>\n    <string>{}</string>\n  </dict>\n\
         \x20 <key>RunAtLoad</key>\n  <true/>\n\
         \x20 <key>KeepAlive</key>\n  <dict>\n    <key>SuccessfulExit</key>\n    <false/>\n  </dict>\n\
         \x20 <key>ExitTimeOut</key>\n  <integer>{STOP_TIMEOUT_SECS}</integer>\n\
         \x20 <key>StandardOutPath</key>\n  <string>{}</string>\n\
         \x20 <key>StandardErrorPath</key>\n  <string>{}</string>\n\
         </dict>\n</plist>\n",
        xml_escape(&s.exe.display().to_string()),
        xml_escape(&home),
        xml_escape(&log),
        xml_escape(&log),
    );
    p
}

fn xml_escape(value: &str) -> String {
    escape(
        value,
        &[
            ('&', "&amp;"),
            ('<', "&lt;"),
            ('>', "&gt;"),
            ('"', "&quot;"),
            ('\'', "&apos;"),
        ],
    )
}

fn openrc_name(s: &Service) -> String {
    format!("pm2rs-{}", s.user)
}

/// The OpenRC init script: start-stop-daemon runs the daemon in the background as the home's
/// owner; stopping sends SIGTERM and waits as long as the systemd unit does.
pub fn openrc_script(s: &Service) -> String {
    let home = s.home.display().to_string();
    format!(
        "#!/sbin/openrc-run\n\
         # pm2rs boot service, {MARKER}: the daemon of PM2RS_HOME={home}\n\
         # started at boot with the apps it saved (`pm2rs daemon --resurrect`).\n\
         description=\"pm2rs process manager\"\n\
         command={}\n\
         command_args=\"daemon --resurrect\"\n\
         command_user={}\n\
         command_background=true\n\
         pidfile=\"/run/${{RC_SVCNAME}}.pid\"\n\
         # SIGTERM makes the daemon stop every app with its kill_timeout; then it is killed.\n\
         retry=\"TERM/{STOP_TIMEOUT_SECS}/KILL/5\"\n\
         export PM2RS_HOME={}\n\
         \n\
         depend() {{\n\
         \tafter net\n\
         }}\n",
        sh_quote(&s.exe.display().to_string()),
        sh_quote(&format!("{}:{}", s.user, s.group)),
        sh_quote(&home),
    )
}

/// A word for a POSIX shell: as is when it is plain, else single-quoted.
fn sh_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:@%,".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Where the directories come from: the environment, or a test's values.
struct Dirs {
    /// `PM2RS_UNIT_DIR`.
    unit_dir: Option<PathBuf>,
    /// The user's configuration directory (`XDG_CONFIG_HOME`, else ~/.config).
    config: Option<PathBuf>,
    /// The user's home directory.
    user_home: Option<PathBuf>,
}

impl Dirs {
    fn from_env() -> Dirs {
        let base = directories::BaseDirs::new();
        Dirs {
            unit_dir: std::env::var_os(UNIT_DIR_ENV)
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
            config: base.as_ref().map(|b| b.config_dir().to_path_buf()),
            user_home: base.as_ref().map(|b| b.home_dir().to_path_buf()),
        }
    }
}

/// Where a service file goes.
#[derive(Debug, PartialEq, Eq)]
struct Placement {
    path: PathBuf,
    mode: u32,
    /// Its directory is the user's own (created when missing).
    user_dir: bool,
    /// What `systemctl enable` creates (systemd), removed with the unit.
    enabled_link: Option<PathBuf>,
}

fn placement(init: Init, s: &Service, dirs: &Dirs) -> anyhow::Result<Placement> {
    let no_home = || anyhow!("cannot find your home directory (HOME)");
    let (dir, name, mode) = match (init, s.per_user) {
        (Init::Systemd, false) => (
            PathBuf::from("/etc/systemd/system"),
            format!("pm2rs-{}.service", s.user),
            0o644,
        ),
        (Init::Systemd, true) => (
            dirs.config
                .clone()
                .ok_or_else(no_home)?
                .join("systemd/user"),
            "pm2rs.service".to_string(),
            0o644,
        ),
        (Init::Launchd, false) => (
            PathBuf::from("/Library/LaunchDaemons"),
            format!("{}.plist", launchd_label(s)),
            0o644,
        ),
        (Init::Launchd, true) => (
            dirs.user_home
                .clone()
                .ok_or_else(no_home)?
                .join("Library/LaunchAgents"),
            format!("{}.plist", launchd_label(s)),
            0o644,
        ),
        (Init::Openrc, _) => (PathBuf::from("/etc/init.d"), openrc_name(s), 0o755),
    };
    let dir = dirs.unit_dir.clone().unwrap_or(dir);
    let enabled_link =
        (init == Init::Systemd).then(|| dir.join(format!("{}.wants", wanted_by(s))).join(&name));
    Ok(Placement {
        path: dir.join(name),
        mode,
        user_dir: s.per_user,
        enabled_link,
    })
}

/// Writes the file atomically (a temporary file in the same directory, renamed over it), with
/// its mode whatever the umask. On failure nothing is left behind.
fn write_file(place: &Placement, text: &str) -> std::io::Result<()> {
    let dir = place.path.parent().unwrap_or(Path::new("/"));
    if place.user_dir {
        std::fs::create_dir_all(dir)?;
    }
    let name = place
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(place.mode)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.set_permissions(std::fs::Permissions::from_mode(place.mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &place.path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `sudo ` when a system service is handled by someone other than root.
fn sudo(s: &Service, root: bool) -> &'static str {
    if s.per_user || root { "" } else { "sudo " }
}

/// The command that installs the file (this binary, this home).
fn install_command(init: Init, s: &Service, root: bool) -> String {
    let init_word = match init {
        Init::Systemd => "systemd",
        Init::Launchd => "launchd",
        Init::Openrc => "openrc",
    };
    let user = if s.per_user { " --user" } else { "" };
    let exe = sh_quote(&s.exe.display().to_string());
    if s.per_user || root {
        format!("{exe} startup {init_word}{user} --install")
    } else {
        // sudo resets the environment: the home is passed on explicitly.
        format!(
            "sudo env PM2RS_HOME={} {exe} startup {init_word} --install",
            sh_quote(&s.home.display().to_string())
        )
    }
}

/// What enables an installed service (start now and at boot).
fn enable_commands(init: Init, s: &Service, path: &Path, root: bool) -> Vec<String> {
    let sudo = sudo(s, root);
    match init {
        Init::Systemd if s.per_user => vec![
            "systemctl --user daemon-reload".into(),
            "systemctl --user enable --now pm2rs.service".into(),
            format!(
                "loginctl enable-linger {}   # start at boot, not only at login",
                s.user
            ),
        ],
        Init::Systemd => vec![
            format!("{sudo}systemctl daemon-reload"),
            format!("{sudo}systemctl enable --now pm2rs-{}.service", s.user),
        ],
        Init::Launchd => vec![format!(
            "{sudo}launchctl load -w {}",
            sh_quote(&path.display().to_string())
        )],
        Init::Openrc => vec![
            format!("{sudo}rc-update add {} default", openrc_name(s)),
            format!("{sudo}rc-service {} start", openrc_name(s)),
        ],
    }
}

/// What stops and forgets a service whose file `unstartup` removed (each works without the file).
fn disable_commands(init: Init, s: &Service, root: bool) -> Vec<String> {
    let sudo = sudo(s, root);
    match init {
        Init::Systemd if s.per_user => vec![
            "systemctl --user stop pm2rs.service".into(),
            "systemctl --user daemon-reload".into(),
        ],
        Init::Systemd => vec![
            format!("{sudo}systemctl stop pm2rs-{}.service", s.user),
            format!("{sudo}systemctl daemon-reload"),
        ],
        Init::Launchd => vec![format!("{sudo}launchctl remove {}", launchd_label(s))],
        // What the script's stop does, without the script.
        Init::Openrc => vec![
            format!("{sudo}rc-update del {} default", openrc_name(s)),
            format!(
                "{sudo}start-stop-daemon --stop --pidfile /run/{}.pid --retry TERM/{STOP_TIMEOUT_SECS}/KILL/5",
                openrc_name(s)
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(per_user: bool) -> Service {
        Service {
            exe: "/opt/pm2rs/bin/pm2rs".into(),
            home: "/home/ann/my 100% \"home\"".into(),
            user: "ann".into(),
            group: "staff".into(),
            per_user,
        }
    }

    #[test]
    fn the_systemd_unit_runs_the_daemon_as_a_notify_service() {
        let u = systemd_unit(&service(false));
        for line in [
            "Type=notify",
            "NotifyAccess=main",
            "User=ann",
            "Group=staff",
            r#"Environment="PM2RS_HOME=/home/ann/my 100%% \"home\"""#,
            r#"ExecStart="/opt/pm2rs/bin/pm2rs" daemon --resurrect"#,
            "Restart=on-failure",
            "KillMode=process",
            "TimeoutStopSec=30",
            "LimitNOFILE=65536",
            "WantedBy=multi-user.target",
            "After=network.target",
        ] {
            assert!(u.lines().any(|l| l == line), "no {line:?} in\n{u}");
        }
        let user = systemd_unit(&service(true));
        assert!(user.lines().any(|l| l == "WantedBy=default.target"));
        assert!(!user.contains("User=") && !user.contains("Group="));
        assert!(!user.contains("After=network.target"));
    }

    #[test]
    fn dollar_signs_in_the_binary_path_are_not_expanded() {
        let mut s = service(false);
        s.exe = "/opt/$HOME/pm2rs".into();
        assert!(systemd_unit(&s).contains(r#"ExecStart="/opt/$$HOME/pm2rs" daemon"#));
    }

    #[test]
    fn a_path_with_a_newline_is_refused() {
        let mut s = service(false);
        s.home = "/home/a\nExecStartPre=/bin/evil".into();
        let e = render(Init::Systemd, &s).unwrap_err().to_string();
        assert!(e.contains("PM2RS_HOME"), "{e}");
    }

    #[test]
    fn the_plist_keeps_the_daemon_alive_and_escapes_xml() {
        let mut s = service(false);
        s.home = "/Users/a&b<c>".into();
        let p = launchd_plist(&s);
        assert!(
            p.contains("<string>/Users/a&amp;b&lt;c&gt;</string>"),
            "{p}"
        );
        assert!(p.contains("<key>RunAtLoad</key>\n  <true/>"));
        assert!(p.contains("<key>UserName</key>\n  <string>ann</string>"));
        assert!(p.contains("<string>/Users/a&amp;b&lt;c&gt;/launchd.log</string>"));
        assert!(!launchd_plist(&service(true)).contains("UserName"));
    }

    #[test]
    fn the_openrc_script_quotes_for_the_shell() {
        let s = openrc_script(&service(false));
        assert!(s.starts_with("#!/sbin/openrc-run\n"));
        assert!(s.contains("command=/opt/pm2rs/bin/pm2rs\n"));
        assert!(s.contains("command_args=\"daemon --resurrect\"\n"));
        assert!(s.contains("command_user=ann:staff\n"));
        assert!(s.contains("export PM2RS_HOME='/home/ann/my 100% \"home\"'\n"));
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn detection_prefers_launchd_on_macos_then_a_running_systemd_then_openrc() {
        assert_eq!(detect(true, |_| true), Some(Init::Launchd));
        assert_eq!(detect(false, |_| true), Some(Init::Systemd));
        assert_eq!(detect(false, |p| p == "/run/openrc"), Some(Init::Openrc));
        assert_eq!(
            detect(false, |p| p == "/sbin/openrc-run"),
            Some(Init::Openrc)
        );
        assert_eq!(detect(false, |_| false), None);
    }

    #[test]
    fn files_go_where_each_init_reads_them() {
        let dirs = Dirs {
            unit_dir: None,
            config: Some("/home/ann/.cfg".into()),
            user_home: Some("/home/ann".into()),
        };
        let at = |init, per_user| placement(init, &service(per_user), &dirs).unwrap();
        let system = at(Init::Systemd, false);
        assert_eq!(
            system.path,
            Path::new("/etc/systemd/system/pm2rs-ann.service")
        );
        assert_eq!(
            system.enabled_link.as_deref(),
            Some(Path::new(
                "/etc/systemd/system/multi-user.target.wants/pm2rs-ann.service"
            ))
        );
        assert_eq!(
            at(Init::Systemd, true).path,
            Path::new("/home/ann/.cfg/systemd/user/pm2rs.service")
        );
        assert_eq!(
            at(Init::Launchd, true).path,
            Path::new("/home/ann/Library/LaunchAgents/pm2rs.ann.plist")
        );
        assert_eq!(
            at(Init::Launchd, false).path,
            Path::new("/Library/LaunchDaemons/pm2rs.ann.plist")
        );
        let openrc = at(Init::Openrc, false);
        assert_eq!(openrc.path, Path::new("/etc/init.d/pm2rs-ann"));
        assert_eq!(openrc.mode, 0o755);
        let moved = Dirs {
            unit_dir: Some("/tmp/units".into()),
            ..dirs
        };
        assert_eq!(
            placement(Init::Systemd, &service(false), &moved)
                .unwrap()
                .path,
            Path::new("/tmp/units/pm2rs-ann.service")
        );
    }

    #[test]
    fn a_system_service_handled_by_a_user_gets_sudo_with_the_home_kept() {
        let s = service(false);
        assert_eq!(
            install_command(Init::Systemd, &s, false),
            "sudo env PM2RS_HOME='/home/ann/my 100% \"home\"' /opt/pm2rs/bin/pm2rs startup systemd --install"
        );
        assert_eq!(
            enable_commands(Init::Systemd, &s, Path::new("/x"), true),
            [
                "systemctl daemon-reload",
                "systemctl enable --now pm2rs-ann.service"
            ]
        );
        assert_eq!(
            enable_commands(Init::Systemd, &s, Path::new("/x"), false)[1],
            "sudo systemctl enable --now pm2rs-ann.service"
        );
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let e = write_error(
            Init::Systemd,
            &s,
            Path::new("/etc/systemd/system/x"),
            &denied,
            false,
        );
        assert!(e.contains("nothing was written"), "{e}");
        assert!(e.contains("needs root: sudo env PM2RS_HOME="), "{e}");
        let e = write_error(
            Init::Systemd,
            &s,
            Path::new("/etc/systemd/system/x"),
            &denied,
            true,
        );
        assert!(
            e.contains("/etc/systemd/system must be a directory you can write"),
            "{e}"
        );
    }
}
