//! The core suite: daemon footprint, starting 100 instances, the `list` round trip, kill -9 →
//! replacement, restart latency and idle CPU, written once for pm2rs and PM2 alike.
//!
//! Every app is `sleep 100000` run directly (pm2rs `interpreter = "none"`, PM2 `interpreter:
//! "none"` in fork mode), so neither manager pays for a language runtime in its apps. "Running" means
//! a child of the daemon that has `exec`ed `sleep`, seen by scanning `/proc` (manager-neutral);
//! "online" means what the manager's own JSON listing says, observed by polling it, so those
//! figures include the listing's round trip and are upper bounds.

use std::collections::HashSet;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::harness::{
    self, Children, Stdout, clock_ticks_per_second, cpu_ticks, poll_until, rss_bytes, unix_micros,
};
use super::manager::{App, Cli, Instance, Kind};
use super::report::{Measurement, Unit, mib, ms};
use super::{Harness, Options, Scenario, Suite, WAIT};

pub const SUITE: Suite = Suite {
    name: "core",
    compare: true,
    scenarios: &[
        Scenario {
            name: "idle daemon",
            run: idle_daemon,
        },
        Scenario {
            name: "start 100 instances",
            run: start_instances,
        },
        Scenario {
            name: "RSS with 100 instances",
            run: loaded_daemon,
        },
        Scenario {
            name: "list round trip",
            run: list_round_trip,
        },
        Scenario {
            name: "kill -9 → replacement",
            run: crash_replacement,
        },
        Scenario {
            name: "restart latency",
            run: restart_latency,
        },
        Scenario {
            name: "idle CPU, 50 instances",
            run: idle_cpu,
        },
    ],
};

/// The program every app runs, and its command name in `/proc`.
const PROGRAM: &str = "sleep";
const PROGRAM_ARGS: &[&str] = &["100000"];

const APP: &str = "sleeper";
const INSTANCES: usize = 100;
const SOLO: &str = "solo";
const IDLER: &str = "idler";
const IDLE_INSTANCES: usize = 50;

/// Targets, from the design notes (pm2rs's own; PM2 gets no verdict).
const TARGET_LIST_MS: f64 = 2.0;
const TARGET_IDLE_RSS_MIB: f64 = 4.0;
const TARGET_LOADED_RSS_MIB: f64 = 8.0;
const TARGET_START_100_MS: f64 = 200.0;
const TARGET_CRASH_MS: f64 = 3.0;

fn app(name: &str, instances: usize) -> App<'_> {
    App {
        name,
        script: PROGRAM,
        args: PROGRAM_ARGS,
        instances,
        autorestart: true,
        rotate_logs: true,
        max_memory_restart: None,
    }
}

/// The instances of app `name` in a listing, failing on an errored one instead of waiting out the
/// deadline for it.
fn instances_of<'a>(list: &'a [Instance], name: &str) -> Result<Vec<&'a Instance>> {
    let mine: Vec<&Instance> = list.iter().filter(|p| p.name == name).collect();
    if let Some(p) = mine.iter().find(|p| p.errored.is_some()) {
        bail!(
            "instance {} ({}) is errored: {}",
            p.id,
            p.name,
            p.errored.as_deref().unwrap_or_default()
        );
    }
    Ok(mine)
}

/// Polls the listing until `count` instances of `name` are online; returns the listing.
pub(super) fn wait_online(h: &mut Harness, name: &str, count: usize) -> Result<Vec<Instance>> {
    poll_until(
        &format!("{count} instances of `{name}` to be online"),
        WAIT,
        Duration::ZERO,
        || {
            let list = h.instances()?;
            let up = instances_of(&list, name)?
                .iter()
                .filter(|p| p.online)
                .count();
            Ok((up >= count).then_some(list))
        },
    )
}

/// Polls `/proc` until exactly `count` app processes run under the daemon.
pub(super) fn wait_running(h: &mut Harness, children: &mut Children, count: usize) -> Result<()> {
    poll_until(
        &format!("{count} `{PROGRAM}` processes under the daemon"),
        WAIT,
        Duration::ZERO,
        || Ok((h.scan(children)?.len() == count).then_some(())),
    )
}

/// The app processes now running under the daemon.
fn pid_set(h: &mut Harness, children: &mut Children) -> Result<HashSet<u32>> {
    Ok(h.scan(children)?.into_iter().map(|p| p.pid).collect())
}

/// Polls `/proc` until an app process not in `before` runs under the daemon; returns its pid.
fn wait_new_process(
    h: &mut Harness,
    children: &mut Children,
    before: &HashSet<u32>,
    what: &str,
) -> Result<u32> {
    poll_until(what, WAIT, Duration::ZERO, || {
        Ok(h.scan_except(children, before)?.first().map(|p| p.pid))
    })
}

/// Starts the daemon with `ping` and reads its RSS right away.
fn idle_daemon(h: &mut Harness, _options: &Options) -> Result<Vec<Measurement>> {
    let ping = h.cli(Cli::Ping, Stdout::Capture)?;
    let daemon = h.daemon()?;
    let rss = rss_bytes(daemon.pid)?;
    Ok(vec![
        Measurement::single(
            "first `ping` (starts the daemon)",
            Unit::Ms,
            ms(ping.elapsed),
            None,
        ),
        Measurement::single(
            "daemon RSS, idle",
            Unit::Mib,
            mib(rss),
            Some(TARGET_IDLE_RSS_MIB),
        )
        .with_note("VmRSS of the daemon (pid from its pid file) read right after the first `ping`"),
    ])
}

/// `start` of an ecosystem with 100 `sleep` instances: timed until 100 processes run (and the CLI
/// returned), and until the listing shows all of them online.
fn start_instances(h: &mut Harness, _options: &Options) -> Result<Vec<Measurement>> {
    let ecosystem = h.write_ecosystem("ecosystem", &[app(APP, INSTANCES)])?;
    let daemon = h.daemon()?;
    let mut children = Children::new(daemon, PROGRAM);
    ensure!(
        h.scan(&mut children)?.is_empty(),
        "app processes run before `start`"
    );

    let invoked = Instant::now();
    let start = h.cli(Cli::Start(&ecosystem), Stdout::Capture)?;
    wait_running(h, &mut children, INSTANCES)?;
    let running = invoked.elapsed();
    wait_online(h, APP, INSTANCES)?;
    let online = invoked.elapsed();

    Ok(vec![
        Measurement::single(
            format!("start {INSTANCES} instances → all running"),
            Unit::Ms,
            ms(running),
            None,
        )
        .with_note(format!(
            "from invoking `start` until the CLI has returned and {INSTANCES} `{PROGRAM}` \
             children of the daemon are seen in /proc"
        )),
        Measurement::single(
            format!("start {INSTANCES} instances → all online"),
            Unit::Ms,
            ms(online),
            Some(TARGET_START_100_MS),
        )
        .with_note(
            "from invoking `start` until the JSON listing shows every instance online, polled \
             after the CLI returned (includes the listing's round trips: an upper bound)",
        ),
        Measurement::single(
            format!("`start` CLI round trip, {INSTANCES} instances"),
            Unit::Ms,
            ms(start.elapsed),
            None,
        ),
    ])
}

/// Daemon RSS with the 100 instances running.
fn loaded_daemon(h: &mut Harness, _options: &Options) -> Result<Vec<Measurement>> {
    let before = h.daemon()?;
    let list = h.instances()?;
    let up = instances_of(&list, APP)?
        .iter()
        .filter(|p| p.online)
        .count();
    ensure!(
        up == INSTANCES,
        "expected {INSTANCES} online instances, found {up}"
    );
    let daemon = h.daemon()?;
    ensure!(
        daemon == before,
        "the daemon changed (pid {} → {}) while measuring",
        before.pid,
        daemon.pid
    );
    Ok(vec![
        Measurement::single(
            format!("daemon RSS, {INSTANCES} instances"),
            Unit::Mib,
            mib(rss_bytes(daemon.pid)?),
            Some(TARGET_LOADED_RSS_MIB),
        )
        .with_note("VmRSS of the daemon right after a JSON listing of the 100 online instances"),
    ])
}

/// The human `list` (and the JSON listing) with the 100 instances loaded, hyperfine-style: warm-up
/// runs not counted, then many runs, median and min–max.
fn list_round_trip(h: &mut Harness, options: &Options) -> Result<Vec<Measurement>> {
    const WARMUP: usize = 3;
    let runs = options.reps(50, 10);
    let mut figures = Vec::new();
    for (action, name, target) in [
        (
            Cli::List,
            format!("`list` round trip (table), {INSTANCES} instances"),
            Some(TARGET_LIST_MS),
        ),
        (
            Cli::ListJson,
            format!("`list` round trip (JSON), {INSTANCES} instances"),
            None,
        ),
    ] {
        for _ in 0..WARMUP {
            h.cli(action, Stdout::Discard)?;
        }
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            harness::interrupted()?;
            samples.push(ms(h.cli(action, Stdout::Discard)?.elapsed));
        }
        let words = match (h.kind(), action) {
            (Kind::Pm2rs, Cli::List) => "`pm2rs list`",
            (Kind::Pm2rs, _) => "`pm2rs list --json`",
            (Kind::Pm2, Cli::List) => "`pm2 ls` (PM2's table)",
            (Kind::Pm2, _) => "`pm2 jlist` (PM2's JSON)",
        };
        figures.push(
            Measurement::repeated(name, Unit::Ms, samples, target).with_note(format!(
                "{words}: spawn of the CLI until the kernel reports its exit, stdout to \
                 /dev/null, {WARMUP} warm-up runs not counted, {runs} runs per round"
            )),
        );
    }
    Ok(figures)
}

/// kill -9 of an online instance → its replacement, measured three ways: the start time the
/// manager reports, the new process seen running in `/proc`, and the listing showing it online.
fn crash_replacement(h: &mut Harness, options: &Options) -> Result<Vec<Measurement>> {
    let runs = options.reps(20, 5);
    let daemon = h.daemon()?;
    let mut children = Children::new(daemon, PROGRAM);
    let (mut reported, mut running, mut online) = (Vec::new(), Vec::new(), Vec::new());
    let mut restart_counter_mismatches = 0;
    for round in 0..runs {
        let list = h.instances()?;
        let up: Vec<&Instance> = instances_of(&list, APP)?
            .into_iter()
            .filter(|p| p.online)
            .collect();
        ensure!(!up.is_empty(), "no online instance of `{APP}` to kill");
        // A different instance each round, so no restart policy sees a crash loop.
        let victim = up[round % up.len()];
        let (id, old_pid, old_restarts) =
            (victim.id, victim.pid.unwrap_or_default(), victim.restarts);
        let before = pid_set(h, &mut children)?;
        ensure!(
            before.contains(&old_pid),
            "pid {old_pid} of instance {id} is not a running child of the daemon"
        );

        let killed = Instant::now();
        let killed_us = unix_micros();
        signal::kill(Pid::from_raw(i32::try_from(old_pid)?), Signal::SIGKILL)
            .with_context(|| format!("kill -9 {old_pid}"))?;
        let new_pid = wait_new_process(
            h,
            &mut children,
            &before,
            &format!("a replacement for pid {old_pid} (instance {id})"),
        )?;
        running.push(ms(killed.elapsed()));

        let replacement = poll_until(
            &format!("instance {id} to be online again after kill -9 of pid {old_pid}"),
            WAIT,
            Duration::ZERO,
            || {
                let list = h.instances()?;
                let p = list
                    .into_iter()
                    .find(|p| p.id == id)
                    .with_context(|| format!("instance {id} vanished from the listing"))?;
                if let Some(reason) = &p.errored {
                    bail!("instance {id} is errored: {reason}");
                }
                Ok((p.online && p.pid != Some(old_pid)).then_some(p))
            },
        )?;
        online.push(ms(killed.elapsed()));
        ensure!(
            replacement.pid == Some(new_pid),
            "the listing says instance {id} runs as pid {:?}, but the new child of the daemon is {new_pid}",
            replacement.pid
        );
        let started = replacement
            .started_at_ms
            .with_context(|| format!("instance {id} is online without a start time"))?;
        reported.push(started - killed_us as f64 / 1000.0);
        if replacement.restarts != old_restarts + 1 {
            restart_counter_mismatches += 1;
        }
    }

    let mut note = String::from(
        "the replacement's start time as the manager reports it (pm2rs started_at_us; PM2 \
         pm_uptime, whole ms) minus the wall clock just before kill(2); each round kills a \
         different instance",
    );
    if restart_counter_mismatches > 0 {
        note.push_str(&format!(
            "; in {restart_counter_mismatches} of {runs} rounds the restart counter did not grow by exactly 1"
        ));
    }
    Ok(vec![
        Measurement::repeated(
            "kill -9 → replacement started (manager's clock)",
            Unit::Ms,
            reported,
            Some(TARGET_CRASH_MS),
        )
        .with_note(note),
        Measurement::repeated("kill -9 → replacement running", Unit::Ms, running, None).with_note(
            "from just before kill(2) until a new `sleep` child of the daemon is seen in /proc \
             (busy polling that reads only the stat of pids it has not seen before)",
        ),
        Measurement::repeated("kill -9 → replacement online", Unit::Ms, online, None).with_note(
            "from just before kill(2) until the JSON listing shows the instance online with a \
             new pid (includes the listing's round trips: an upper bound)",
        ),
    ])
}

/// `restart <app>` of a one-instance app: from invoking the CLI until it returned and the new
/// process runs; the listing then has to show it online with that pid.
fn restart_latency(h: &mut Harness, options: &Options) -> Result<Vec<Measurement>> {
    let runs = options.reps(10, 3);
    let ecosystem = h.write_ecosystem(SOLO, &[app(SOLO, 1)])?;
    let daemon = h.daemon()?;
    let mut children = Children::new(daemon, PROGRAM);
    h.cli(Cli::Start(&ecosystem), Stdout::Capture)?;
    wait_online(h, SOLO, 1)?;
    wait_running(h, &mut children, INSTANCES + 1)?;

    let (mut latencies, mut cli) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        let before = pid_set(h, &mut children)?;
        let invoked = Instant::now();
        let ran = h.cli(Cli::Restart(SOLO), Stdout::Capture)?;
        let new_pid = wait_new_process(h, &mut children, &before, "the restarted `solo`")?;
        latencies.push(ms(invoked.elapsed()));
        cli.push(ms(ran.elapsed));
        let list = wait_online(h, SOLO, 1)?;
        let solo = instances_of(&list, SOLO)?;
        ensure!(
            solo.len() == 1 && solo[0].pid == Some(new_pid),
            "after `restart {SOLO}` the listing shows {:?}, but the new child of the daemon is {new_pid}",
            solo.iter().map(|p| p.pid).collect::<Vec<_>>()
        );
    }
    h.cli(Cli::Delete(SOLO), Stdout::Capture)?;
    wait_running(h, &mut children, INSTANCES)?;
    Ok(vec![
        Measurement::repeated(
            "`restart` of one instance → new process running",
            Unit::Ms,
            latencies,
            None,
        )
        .with_note(
            "from invoking `restart solo` until the CLI has returned and the new `sleep` runs \
             under the daemon (/proc); the listing is then checked to show it online",
        ),
        Measurement::repeated("`restart` CLI round trip", Unit::Ms, cli, None),
    ])
}

/// Daemon CPU time over a window with 50 idle instances and no CLI traffic.
fn idle_cpu(h: &mut Harness, options: &Options) -> Result<Vec<Measurement>> {
    let daemon = h.daemon()?;
    let mut children = Children::new(daemon, PROGRAM);
    h.cli(Cli::Delete(APP), Stdout::Capture)?;
    wait_running(h, &mut children, 0)?;
    let ecosystem = h.write_ecosystem(IDLER, &[app(IDLER, IDLE_INSTANCES)])?;
    h.cli(Cli::Start(&ecosystem), Stdout::Capture)?;
    wait_running(h, &mut children, IDLE_INSTANCES)?;
    wait_online(h, IDLER, IDLE_INSTANCES)?;
    idle_window(
        h,
        &mut children,
        IDLE_INSTANCES,
        &format!("{IDLE_INSTANCES} idle instances"),
        options,
    )
}

/// The idle-CPU measurement once `instances` app processes (children of the daemon `children`
/// looks under) are running and online: a 2 s settle, then the daemon's CPU time over a 60 s
/// window (5 s with `--quick`) with no CLI traffic, and its RSS after it. `what` ends the figure
/// names ("daemon CPU, <what>").
pub(super) fn idle_window(
    h: &mut Harness,
    children: &mut Children,
    instances: usize,
    what: &str,
    options: &Options,
) -> Result<Vec<Measurement>> {
    let window = if options.quick {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(60)
    };
    let settle = Duration::from_secs(2);
    let daemon = h.daemon()?;
    // Let the start (and the listing before) finish echoing through the daemon before the window.
    sleep_checked(settle)?;
    ensure!(
        h.daemon()? == daemon,
        "the daemon changed during the scenario"
    );
    let ticks_before = cpu_ticks(daemon.pid)?;
    let opened = Instant::now();
    sleep_checked(window)?;
    let ticks_after = cpu_ticks(daemon.pid)?;
    let elapsed = opened.elapsed();
    let rss = rss_bytes(daemon.pid)?;
    ensure!(
        h.scan(children)?.len() == instances,
        "instances died during the idle window"
    );

    let hz = clock_ticks_per_second()?;
    let cpu_seconds = ticks_after.saturating_sub(ticks_before) as f64 / hz as f64;
    let percent = cpu_seconds / elapsed.as_secs_f64() * 100.0;
    Ok(vec![
        Measurement::single(format!("daemon CPU, {what}"), Unit::Percent, percent, None).with_note(
            format!(
                "utime+stime of the daemon (/proc/<pid>/stat, 1/{hz} s ticks) over a {} s window{} \
             with no CLI traffic, {} s after the instances were online",
                window.as_secs(),
                if options.quick {
                    " (--quick: shortened from 60 s, so coarse)"
                } else {
                    ""
                },
                settle.as_secs()
            ),
        ),
        Measurement::single(
            format!("daemon RSS after the idle window, {instances} instances"),
            Unit::Mib,
            mib(rss),
            None,
        ),
    ])
}

/// Sleeps `duration` in short steps, failing early on Ctrl-C. Only paces the scenario: the figures
/// come from the clocks read around it.
pub(super) fn sleep_checked(duration: Duration) -> Result<()> {
    let end = Instant::now() + duration;
    loop {
        harness::interrupted()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(Duration::from_millis(100)));
    }
}
