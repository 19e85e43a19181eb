//! The boot-time service: `pm2rs startup` / `unstartup` writing and removing real files (in a temp
//! directory through the hidden `PM2RS_UNIT_DIR`), the systemd units checked by
//! `systemd-analyze verify`, and the daemon's own sd_notify (`READY=1` once its socket serves,
//! `STOPPING=1`, and its `NOTIFY_SOCKET` never reaching an app).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::harness::{DEADLINE, Pm2rs, Run, eventually, wait_with_timeout};

/// The user the tests run as (the owner of their temp home, so the one a system unit names).
fn me() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .expect("read the user database")
        .expect("the test's uid has a name")
        .name
}

/// `pm2rs startup …`/`unstartup …` with the service files going to `dir`.
fn in_unit_dir(h: &Pm2rs, dir: &Path, args: &[&str]) -> Run {
    let mut cmd = h.command(args);
    cmd.env("PM2RS_UNIT_DIR", dir);
    run(cmd)
}

/// Runs `cmd` to its end (within the deadline) and collects what it said.
fn run(mut cmd: Command) -> Run {
    let out = wait_with_timeout(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
        DEADLINE,
    )
    .expect("finished within the deadline");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

/// `systemd-analyze`, or a failure that says how to install it.
fn systemd_analyze() -> Command {
    let found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| d.join("systemd-analyze").is_file())
    });
    assert!(
        found,
        "systemd-analyze is missing: install it with `apt-get install -y systemd` (.ci/run does)"
    );
    Command::new("systemd-analyze")
}

/// Runs `systemd-analyze verify` on `unit`; a unit passes when it exits 0 and prints nothing (a
/// bad value is only a warning).
fn verify(unit: &Path, user: bool) {
    let runtime = tempfile::tempdir().expect("runtime dir");
    std::fs::set_permissions(runtime.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut cmd = systemd_analyze();
    if user {
        // A user manager needs a runtime directory even offline.
        cmd.arg("--user").env("XDG_RUNTIME_DIR", runtime.path());
    }
    cmd.arg("verify").arg(unit);
    let out = run(cmd);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        out.code == 0 && said.trim().is_empty(),
        "systemd-analyze verify {} (exit {}):\n{said}\n--- unit ---\n{}",
        unit.display(),
        out.code,
        std::fs::read_to_string(unit).unwrap_or_default()
    );
}

#[test]
fn generated_systemd_units_pass_systemd_analyze_verify() {
    let h = Pm2rs::new();
    let dir = tempfile::tempdir().unwrap();
    for (args, file, user) in [
        (
            &["startup", "systemd", "--install"][..],
            format!("pm2rs-{}.service", me()),
            false,
        ),
        (
            &["startup", "systemd", "--user", "--install"][..],
            "pm2rs.service".to_string(),
            true,
        ),
    ] {
        let r = in_unit_dir(&h, dir.path(), args);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        let unit = dir.path().join(file);
        // ExecStart names the real binary: verify checks that it exists.
        let text = std::fs::read_to_string(&unit).unwrap();
        let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_pm2rs")).unwrap();
        assert!(
            text.contains(&format!(
                "ExecStart=\"{}\" daemon --resurrect",
                exe.display()
            )),
            "{text}"
        );
        verify(&unit, user);
    }
}

#[test]
fn startup_install_writes_what_startup_prints_and_unstartup_removes_it() {
    let h = Pm2rs::new();
    let dir = tempfile::tempdir().unwrap();
    let user = me();
    let unit = dir.path().join(format!("pm2rs-{user}.service"));

    let printed = in_unit_dir(&h, dir.path(), &["startup", "systemd"]);
    assert_eq!(printed.code, 0, "{}", printed.stderr);
    assert!(!unit.exists(), "printing must not write");
    assert!(
        printed.stderr.contains(&unit.display().to_string())
            && printed.stderr.contains("startup systemd --install")
            && printed
                .stderr
                .contains(&format!("systemctl enable --now pm2rs-{user}.service")),
        "{}",
        printed.stderr
    );

    let installed = in_unit_dir(&h, dir.path(), &["startup", "systemd", "--install"]);
    assert_eq!(installed.code, 0, "{}", installed.stderr);
    assert_eq!(std::fs::read_to_string(&unit).unwrap(), printed.stdout);
    assert_eq!(mode(&unit), 0o644);
    assert!(
        printed.stdout.contains(&format!(
            "Environment=\"PM2RS_HOME={}\"",
            h.home().display()
        )),
        "{}",
        printed.stdout
    );
    assert!(
        installed.stderr.contains("systemctl daemon-reload")
            && installed
                .stderr
                .contains(&format!("systemctl enable --now pm2rs-{user}.service")),
        "{}",
        installed.stderr
    );
    // What `systemctl enable` would have made: unstartup removes it with the unit.
    let wants = dir.path().join("multi-user.target.wants");
    std::fs::create_dir(&wants).unwrap();
    std::os::unix::fs::symlink(&unit, wants.join(unit.file_name().unwrap())).unwrap();

    let removed = in_unit_dir(&h, dir.path(), &["unstartup", "systemd"]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    assert!(!unit.exists());
    assert!(std::fs::read_dir(&wants).unwrap().next().is_none());
    assert!(
        removed
            .stderr
            .contains(&format!("systemctl stop pm2rs-{user}.service")),
        "{}",
        removed.stderr
    );

    let again = in_unit_dir(&h, dir.path(), &["unstartup", "systemd"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stderr.contains("nothing to remove"),
        "{}",
        again.stderr
    );
}

#[test]
fn a_user_unit_goes_under_xdg_config_home_with_linger_for_boot() {
    let h = Pm2rs::new();
    let config = tempfile::tempdir().unwrap();
    let at_config = |args: &[&str]| {
        let mut cmd = h.command(args);
        cmd.env_remove("PM2RS_UNIT_DIR")
            .env("XDG_CONFIG_HOME", config.path());
        run(cmd)
    };
    let r = at_config(&["startup", "systemd", "--user", "--install"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let unit = config.path().join("systemd/user/pm2rs.service");
    let text = std::fs::read_to_string(&unit).expect("the user unit is written");
    assert!(text.contains("WantedBy=default.target") && !text.contains("User="));
    assert!(
        r.stderr
            .contains("systemctl --user enable --now pm2rs.service")
            && r.stderr
                .contains(&format!("loginctl enable-linger {}", me())),
        "{}",
        r.stderr
    );
    let r = at_config(&["unstartup", "systemd", "--user"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!unit.exists());
}

#[test]
fn the_openrc_script_and_the_launchd_plist_are_well_formed() {
    let h = Pm2rs::new();
    let dir = tempfile::tempdir().unwrap();
    let user = me();

    // Under a strict umask, the script is still executable by the init system.
    let mut strict = Command::new("sh");
    strict
        .args(["-c", "umask 077 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_pm2rs"))
        .args(["startup", "openrc", "--install"])
        .env("PM2RS_HOME", h.home())
        .env("PM2RS_UNIT_DIR", dir.path());
    let r = run(strict);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let script = dir.path().join(format!("pm2rs-{user}"));
    assert_eq!(mode(&script), 0o755);
    let check = Command::new("sh").arg("-n").arg(&script).output().unwrap();
    assert!(
        check.status.success(),
        "sh -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        r.stderr
            .contains(&format!("rc-update add pm2rs-{user} default"))
    );

    let r = in_unit_dir(&h, dir.path(), &["startup", "launchd", "--install"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let plist = dir.path().join(format!("pm2rs.{user}.plist"));
    assert_eq!(mode(&plist), 0o644);
    let text = std::fs::read_to_string(&plist).unwrap();
    check_xml(&text);
    assert!(text.contains("<key>PM2RS_HOME</key>"));
    assert!(
        r.stderr
            .contains(&format!("launchctl load -w {}", plist.display()))
    );

    let r = in_unit_dir(&h, dir.path(), &["unstartup", "launchd"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("launchctl remove pm2rs.{user}")));
    assert!(!plist.exists());
}

/// A small well-formedness check: every tag closed in order, attributes quoted, only the five
/// predefined entities, one root element.
fn check_xml(text: &str) {
    let mut open: Vec<String> = Vec::new();
    let mut roots = 0;
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        check_text(&rest[..start]);
        let end = rest[start..].find('>').expect("an unclosed tag") + start;
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            assert!(
                !tag.starts_with("!--") || !tag[3..tag.len() - 2].contains("--"),
                "-- in a comment"
            );
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(open.pop().as_deref(), Some(name), "mismatched </{name}>");
            continue;
        }
        if open.is_empty() {
            roots += 1;
        }
        let name = tag
            .trim_end_matches('/')
            .split_whitespace()
            .next()
            .expect("a tag name");
        assert_eq!(
            tag.matches('"').count() % 2,
            0,
            "unquoted attribute in <{tag}>"
        );
        if !tag.ends_with('/') {
            open.push(name.to_string());
        }
    }
    check_text(rest);
    assert!(open.is_empty(), "unclosed {open:?}");
    assert_eq!(roots, 1, "one root element");
}

fn check_text(text: &str) {
    let mut parts = text.split('&');
    parts.next();
    for part in parts {
        let entity = part.split(';').next().unwrap_or_default();
        assert!(
            ["amp", "lt", "gt", "quot", "apos"].contains(&entity),
            "bad entity &{entity};"
        );
    }
}

#[test]
fn an_unwritable_unit_dir_is_a_clear_error_and_writes_nothing() {
    let h = Pm2rs::new();
    let dir = tempfile::tempdir().unwrap();
    // Root writes anywhere a mode allows nothing, so it gets a path under a regular file.
    let target = if nix::unistd::geteuid().is_root() {
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        file.join("units")
    } else {
        let ro = dir.path().join("read-only");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
        ro
    };
    let before = listing(dir.path());
    let r = in_unit_dir(&h, &target, &["startup", "systemd", "--install"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("cannot write {}", target.display()))
            && r.stderr.contains("nothing was written"),
        "{}",
        r.stderr
    );
    assert_eq!(listing(dir.path()), before);
}

/// Every path under `dir`.
fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            }
            out.push(e.path());
        }
    }
    out.sort();
    out
}

#[test]
fn unstartup_leaves_a_file_pm2rs_did_not_write() {
    let h = Pm2rs::new();
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join(format!("pm2rs-{}.service", me()));
    std::fs::write(&unit, "[Service]\nExecStart=/bin/true\n").unwrap();
    let r = in_unit_dir(&h, dir.path(), &["unstartup", "systemd"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("was not written by `pm2rs startup`"),
        "{}",
        r.stderr
    );
    assert!(unit.exists());
}

/// A `pm2rs daemon` run in the foreground by the test, SIGKILLed and reaped on drop if the test
/// did not end it.
struct Foreground(Child);

impl Drop for Foreground {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A datagram socket standing for systemd's notify socket.
struct Manager {
    _dir: tempfile::TempDir,
    path: PathBuf,
    socket: UnixDatagram,
}

impl Manager {
    fn new() -> Manager {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(DEADLINE)).unwrap();
        Manager {
            _dir: dir,
            path,
            socket,
        }
    }

    /// The next notification's lines.
    fn next(&self) -> Vec<String> {
        let mut buf = [0u8; 4096];
        let n = self
            .socket
            .recv(&mut buf)
            .expect("a notification from the daemon within the deadline");
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Runs `pm2rs daemon` of `h` as systemd would (NOTIFY_SOCKET set).
    fn start_daemon(&self, h: &Pm2rs) -> Foreground {
        Foreground(
            h.command(&["daemon"])
                .env("NOTIFY_SOCKET", &self.path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn pm2rs daemon"),
        )
    }
}

/// Asks the control socket for a ping with one raw HTTP request; the status line of the answer.
fn ping_raw(home: &Path) -> String {
    get_raw(home, pm2rs_proto::routes::PING).0
}

/// One raw HTTP GET of `path` on the control socket (no CLI process in between, so it is sent
/// within a millisecond): the status line and the body.
fn get_raw(home: &Path, path: &str) -> (String, String) {
    let mut s = UnixStream::connect(home.join("pm2rs.sock")).expect("the control socket accepts");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: pm2rs\r\n{}: {}\r\nConnection: close\r\n\r\n",
        pm2rs_proto::VERSION_HEADER,
        pm2rs_proto::VERSION
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let status = answer.lines().next().unwrap_or_default().to_string();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Starts an app that writes the NOTIFY_SOCKET it sees into its log; returns that value.
fn notify_socket_seen_by_an_app(h: &Pm2rs) -> String {
    h.script(
        "env.sh",
        "echo \"NOTIFY=${NOTIFY_SOCKET-unset}\"; exec sleep 1000",
    );
    h.ok(&["start", "env.sh", "--name", "env"]);
    h.wait_online("env", 1);
    let log = h.home().join("logs/env-out.log");
    let mut seen = None;
    assert!(
        eventually(DEADLINE, || {
            seen = std::fs::read_to_string(&log).ok().and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("NOTIFY=").map(str::to_string))
            });
            seen.is_some()
        }),
        "the app never wrote its NOTIFY_SOCKET into {}",
        log.display()
    );
    seen.unwrap_or_default()
}

#[test]
fn the_daemon_notifies_ready_once_its_socket_serves_and_stopping_when_it_stops() {
    let h = Pm2rs::new();
    let manager = Manager::new();
    let mut daemon = manager.start_daemon(&h);

    let ready = manager.next();
    // At the moment READY=1 arrives, the control socket must already answer.
    assert_eq!(ping_raw(h.home()), "HTTP/1.1 200 OK");
    assert!(ready.iter().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready.contains(&format!("MAINPID={}", daemon.0.id())),
        "{ready:?} (daemon pid {})",
        daemon.0.id()
    );
    assert!(ready.iter().any(|l| l.starts_with("STATUS=")), "{ready:?}");

    // The app gets the daemon's own notify socket, never the service manager's.
    let seen = notify_socket_seen_by_an_app(&h);
    assert_ne!(seen, manager.path.display().to_string());
    assert_eq!(seen, h.home().join("notify.sock").display().to_string());

    h.ok(&["kill"]);
    let stopping = manager.next();
    assert!(stopping.iter().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert!(
        eventually(DEADLINE, || daemon.0.try_wait().ok().flatten().is_some()),
        "the daemon did not exit after kill"
    );
}

#[test]
fn ready_comes_once_the_dumps_apps_are_back() {
    let h = Pm2rs::new();
    h.script("idle.sh", "exec sleep 1000");
    for name in ["one", "two", "three"] {
        h.ok(&["start", "idle.sh", "--name", name, "-i", "2"]);
    }
    h.ok(&["stop", "three"]);
    h.wait_online("two", 2);
    // `kill` stops the apps and keeps them in the dump, as a shutdown before a reboot does.
    h.ok(&["kill"]);

    let manager = Manager::new();
    let mut daemon = Foreground(
        h.command(&["daemon", "--resurrect"])
            .env("NOTIFY_SOCKET", &manager.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pm2rs daemon --resurrect"),
    );
    assert!(manager.next().iter().any(|l| l == "READY=1"));
    // Asked the instant READY=1 arrives: every saved instance is there, the running ones spawned.
    let (status, body) = get_raw(h.home(), pm2rs_proto::routes::LIST);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let list: pm2rs_proto::ListResponse = serde_json::from_str(&body).expect(&body);
    let mut seen: Vec<(String, bool)> = list
        .processes
        .iter()
        .map(|p| (p.name.clone(), p.pid.is_some()))
        .collect();
    seen.sort();
    let expected: Vec<(String, bool)> = ["one", "one", "three", "three", "two", "two"]
        .iter()
        .map(|n| (n.to_string(), *n != "three"))
        .collect();
    assert_eq!(seen, expected, "at READY=1: {list:?}");
    h.ok(&["kill"]);
    assert!(
        eventually(DEADLINE, || daemon.0.try_wait().ok().flatten().is_some()),
        "the daemon did not exit after kill"
    );
}

#[test]
fn an_app_never_inherits_the_daemons_notify_socket() {
    let h = Pm2rs::new();
    // A directory where the daemon binds its apps' notify socket: it cannot, so it hands them none,
    // and what they see is what the daemon's own environment still has.
    std::fs::create_dir_all(h.home().join("notify.sock")).unwrap();
    let manager = Manager::new();
    let mut daemon = manager.start_daemon(&h);
    assert!(manager.next().iter().any(|l| l == "READY=1"));
    assert_eq!(notify_socket_seen_by_an_app(&h), "unset");
    h.ok(&["kill"]);
    assert!(
        eventually(DEADLINE, || daemon.0.try_wait().ok().flatten().is_some()),
        "the daemon did not exit after kill"
    );
}
