//! Scheduled restarts through the CLI: `cron_restart` restarts a real app on time (a new pid,
//! one more ↺, the daemon log says so), `describe` shows the next run, `stop` turns it off, and
//! `start <script> --cron-restart` sets it.

use std::time::Duration;

use pm2rs_proto::Status;

use crate::harness::{DEADLINE, Pm2rs, eventually};

#[test]
fn a_per_second_cron_restarts_the_app_and_describe_shows_the_next_run() {
    let t = Pm2rs::new();
    t.script("apps/tick.sh", "exec sleep 1000");
    t.write(
        "eco.toml",
        r#"
[[apps]]
name = "tick"
script = "apps/tick.sh"
cron_restart = "* * * * * *"
"#,
    );
    t.ok(&["start", "eco.toml"]);
    let first = t.wait_online("tick", 1)[0].clone();

    // The next run is announced, within the next second.
    let d = &t.describe("tick")[0];
    assert_eq!(d.spec.cron_restart.as_deref(), Some("* * * * * *"));
    let next = d.cron_next_us.expect("a next run while the app runs");
    let now = pm2rs_proto::unix_micros();
    assert!(
        next + 1_000_000 > now && next <= now + 1_000_000,
        "next {next}, now {now}"
    );
    let sheet = t.ok(&["describe", "tick"]);
    assert!(sheet.contains("* * * * * * (next"), "{sheet}");

    // Within a few seconds: a new process, counted as a restart, and the daemon log says why.
    let procs = t.wait_for("a cron restart", Duration::from_secs(5), |ps| {
        ps.iter().any(|p| {
            p.name == "tick"
                && p.status == Status::Online
                && p.pid.is_some()
                && p.pid != first.pid
                && p.restarts > first.restarts
        })
    });
    assert_eq!(procs[0].id, first.id, "the same instance, restarted");
    let log = t.home().join("pm2rs.log");
    assert!(
        eventually(DEADLINE, || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("cron_restart: restarting tick")),
        "daemon log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // It goes on: the next run is later than the first one announced.
    let later = t.describe("tick")[0].cron_next_us.expect("still on");
    assert!(later > next, "{later} after {next}");

    // Stop turns it off until the next start.
    t.ok(&["stop", "tick"]);
    let d = &t.describe("tick")[0];
    assert_eq!((d.process.status, d.cron_next_us), (Status::Stopped, None));
    let sheet = t.ok(&["describe", "tick"]);
    assert!(sheet.contains("(off until the app is started)"), "{sheet}");
    t.ok(&["start", "tick"]);
    t.wait_online("tick", 1);
    assert!(t.describe("tick")[0].cron_next_us.is_some(), "on again");

    // A script started from the command line takes PM2's `--cron-restart` (alias `--cron`).
    t.ok(&[
        "start",
        "apps/tick.sh",
        "--name",
        "flagged",
        "--cron",
        "0 3 * * *",
    ]);
    let d = &t.describe("flagged")[0];
    assert_eq!(d.spec.cron_restart.as_deref(), Some("0 3 * * *"));
    assert!(
        d.cron_next_us
            .is_some_and(|us| us > pm2rs_proto::unix_micros())
    );
}
