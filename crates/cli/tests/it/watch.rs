//! `watch` with real files and processes: a change under a watched path restarts the app once
//! its files are quiet for `watch_delay`; a burst restarts it once; ignored paths and stopped
//! apps restart nothing.

use std::time::{Duration, Instant};

use crate::harness::{DEADLINE, Pm2rs};

/// How long a test waits to see that nothing happens: several quiet times of 200 ms.
const NOTHING_FOR: Duration = Duration::from_millis(1500);

/// Starts `watched` (a sleeping script, cwd `site/`, watch_delay 200 ms, `*.log` ignored) and
/// returns its first pid.
fn start_watched(t: &Pm2rs) -> u32 {
    t.write("site/index.html", "v1");
    t.script("site/run.sh", "exec sleep 1000");
    t.write(
        "eco.toml",
        "[[apps]]\nname = \"watched\"\nscript = \"run.sh\"\ncwd = \"site\"\nwatch = true\nignore_watch = [\"*.log\"]\nwatch_delay = \"200ms\"\n",
    );
    t.ok(&["start", "eco.toml"]);
    t.wait_online("watched", 1)[0].pid.unwrap()
}

fn restarts(t: &Pm2rs) -> u32 {
    t.list()
        .iter()
        .find(|p| p.name == "watched")
        .map_or(0, |p| p.restarts)
}

/// Asserts the app's restart count stays `n` for [`NOTHING_FOR`].
fn stays(t: &Pm2rs, n: u32, what: &str) {
    let end = Instant::now() + NOTHING_FOR;
    while Instant::now() < end {
        assert_eq!(restarts(t), n, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_changed_file_restarts_the_app_once() {
    let t = Pm2rs::new();
    let first = start_watched(&t);
    // Inotify watches are in place once the daemon has published them: give it a change to see.
    t.write("site/index.html", "v2");
    let list = t.wait_for("a restart after the change", DEADLINE, |l| {
        l.iter()
            .any(|p| p.name == "watched" && p.restarts == 1 && p.pid != Some(first))
    });
    assert!(list.iter().any(|p| p.status == pm2rs_proto::Status::Online));
    stays(&t, 1, "one change, one restart");
    let log = std::fs::read_to_string(t.home().join("pm2rs.log")).unwrap();
    assert!(log.contains("watch: restarting watched"), "{log}");
}

#[test]
fn a_burst_of_changes_restarts_once_and_ignored_files_not_at_all() {
    let t = Pm2rs::new();
    start_watched(&t);
    for i in 0..100 {
        t.write(&format!("site/gen/file-{i}.js"), &format!("{i}"));
    }
    t.wait_for("a restart after the burst", DEADLINE, |l| {
        l.iter().any(|p| p.name == "watched" && p.restarts == 1)
    });
    stays(&t, 1, "100 writes, one restart");
    t.write("site/app.log", "ignored");
    t.write("site/node_modules/dep/index.js", "ignored");
    stays(&t, 1, "an ignored file restarts nothing");
}

#[test]
fn a_stopped_app_is_not_watched_until_it_starts_again() {
    let t = Pm2rs::new();
    start_watched(&t);
    t.ok(&["stop", "watched"]);
    t.write("site/index.html", "while stopped");
    std::thread::sleep(NOTHING_FOR);
    let p = t.list().into_iter().find(|p| p.name == "watched").unwrap();
    assert_eq!(
        p.status,
        pm2rs_proto::Status::Stopped,
        "a change does not start it"
    );
    t.ok(&["start", "watched"]);
    let again = t.wait_online("watched", 1)[0].clone();
    t.write("site/index.html", "after the start");
    t.wait_for("a restart once watched again", DEADLINE, |l| {
        l.iter()
            .any(|p| p.name == "watched" && p.restarts > again.restarts)
    });
}

#[test]
fn start_watch_watches_the_current_directory() {
    let t = Pm2rs::new();
    t.script("tool.sh", "exec sleep 1000");
    t.ok(&["start", "tool.sh", "--name", "tool", "--watch"]);
    let first = t.wait_online("tool", 1)[0].pid;
    t.write("notes.txt", "changed");
    t.wait_for("a restart of the --watch app", DEADLINE, |l| {
        l.iter()
            .any(|p| p.name == "tool" && p.restarts == 1 && p.pid != first)
    });
}
