//! The take-over suite (pm2rs only): the daemon dies (kill -9) or is replaced (`pm2rs update`)
//! with 100 instances running, and the next daemon takes them over. Timed until a JSON listing
//! shows all 100 online with the same pids; the fd keeper's footprint with them.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::harness::{Stdout, poll_until, rss_bytes};
use super::manager::{App, Cli};
use super::report::{Measurement, Unit, mib, ms};
use super::{Harness, Options, Scenario, Suite, WAIT};

pub const SUITE: Suite = Suite {
    name: "takeover",
    compare: false,
    scenarios: &[
        Scenario {
            name: "keeper footprint",
            run: footprint,
        },
        Scenario {
            name: "kill -9 of the daemon → taken over",
            run: crash,
        },
        Scenario {
            name: "update → taken over",
            run: update,
        },
    ],
};

const APP: &str = "kept";
const INSTANCES: usize = 100;

/// Starts the 100 instances (once per harness) and returns their pids by id.
fn ensure_started(h: &mut Harness) -> Result<BTreeMap<u32, u32>> {
    let list = h.list_json()?;
    if list.iter().filter(|p| p.name == APP).count() < INSTANCES {
        let ecosystem = h.write_ecosystem(
            APP,
            &[App {
                name: APP,
                script: "sleep",
                args: &["100000"],
                instances: INSTANCES,
                autorestart: true,
                rotate_logs: true,
                max_memory_restart: None,
            }],
        )?;
        h.cli(Cli::Start(&ecosystem), Stdout::Capture)?;
    }
    poll_until(
        &format!("{INSTANCES} online instances of `{APP}`"),
        WAIT,
        std::time::Duration::from_millis(5),
        || pids_online(h),
    )
}

/// Every instance's pid by id once all are online.
fn pids_online(h: &mut Harness) -> Result<Option<BTreeMap<u32, u32>>> {
    let list = h.list_json()?;
    let up: BTreeMap<u32, u32> = list
        .iter()
        .filter(|p| p.name == APP && p.status == pm2rs_proto::Status::Online)
        .filter_map(|p| Some((p.id, p.pid?)))
        .collect();
    Ok((up.len() == INSTANCES).then_some(up))
}

fn keeper_pid(h: &Harness) -> Result<u32> {
    let path = h.home().join("keeper.pid");
    std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{} holds no pid", path.display()))
}

/// The process's anonymous resident memory (`RssAnon` of `/proc/<pid>/status`), in bytes: what it
/// costs beyond the executable's pages, which it shares with the daemon (same binary).
fn rss_anon_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .with_context(|| format!("no RssAnon in {path}"))?;
    Ok(kib * 1024)
}

fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing the fds of {pid}"))?
        .count())
}

fn footprint(h: &mut Harness, _options: &Options) -> Result<Vec<Measurement>> {
    ensure_started(h)?;
    let keeper = keeper_pid(h)?;
    Ok(vec![
        Measurement::single(
            format!("keeper RSS, {INSTANCES} instances"),
            Unit::Mib,
            mib(rss_bytes(keeper)?),
            None,
        )
        .with_note(
            "VmRSS of `pm2rs keeper` holding the pipes of 100 fork-mode instances; most of it \
             is pages of the executable, shared with the daemon",
        ),
        Measurement::single(
            format!("keeper private memory, {INSTANCES} instances"),
            Unit::Mib,
            mib(rss_anon_bytes(keeper)?),
            None,
        )
        .with_note("RssAnon of `pm2rs keeper`: its own heap and stacks"),
        Measurement::single(
            format!("keeper open fds, {INSTANCES} instances"),
            Unit::Fds,
            open_fds(keeper)? as f64,
            None,
        )
        .with_note("two pipe read ends per instance, plus its own socket, lock and stdio"),
    ])
}

/// Waits until the listing shows the same pids online as `before`, from `since`.
fn taken_over(h: &mut Harness, before: &BTreeMap<u32, u32>, since: Instant) -> Result<f64> {
    let after = poll_until(
        "every instance to be listed online again",
        WAIT,
        std::time::Duration::ZERO,
        || pids_online(h),
    )?;
    let elapsed = ms(since.elapsed());
    ensure!(
        &after == before,
        "the instances changed across the take-over: {} of {INSTANCES} kept their pid",
        after
            .iter()
            .filter(|(id, pid)| before.get(id) == Some(pid))
            .count()
    );
    Ok(elapsed)
}

fn crash(h: &mut Harness, options: &Options) -> Result<Vec<Measurement>> {
    let rounds = options.reps(5, 2);
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let before = ensure_started(h)?;
        let daemon = h.daemon()?;
        let killed = Instant::now();
        signal::kill(Pid::from_raw(i32::try_from(daemon.pid)?), Signal::SIGKILL)
            .context("kill -9 of the daemon")?;
        poll_until(
            "the killed daemon to be gone",
            WAIT,
            std::time::Duration::ZERO,
            || Ok((!daemon.is_running()).then_some(())),
        )?;
        // The next CLI call starts a daemon, which takes the instances over.
        samples.push(taken_over(h, &before, killed)?);
    }
    Ok(vec![
        Measurement::repeated(
            format!("kill -9 → new daemon serving, {INSTANCES} instances taken over"),
            Unit::Ms,
            samples,
            None,
        )
        .with_note(
            "from just before kill(2) of the daemon until a JSON listing (whose first call \
             starts the new daemon) shows all 100 instances online with their old pids",
        ),
    ])
}

fn update(h: &mut Harness, options: &Options) -> Result<Vec<Measurement>> {
    let rounds = options.reps(5, 2);
    let (mut samples, mut cli) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let before = ensure_started(h)?;
        let invoked = Instant::now();
        let ran = h.run(&["update"], Stdout::Capture)?;
        cli.push(ms(ran.elapsed));
        samples.push(taken_over(h, &before, invoked)?);
    }
    Ok(vec![
        Measurement::repeated(
            format!("`update` → all {INSTANCES} instances listed online again"),
            Unit::Ms,
            samples,
            None,
        )
        .with_note(
            "from invoking `pm2rs update` until a JSON listing shows all 100 with their old pids",
        ),
        Measurement::repeated("`update` CLI round trip", Unit::Ms, cli, None),
    ])
}
