//! The supervisor's timing, on tokio's paused clock against the fake OS (`os::fake`): the real
//! supervisor loop, real log pipes and files, pretend processes. Time moves only when every task
//! is idle, straight to the next timer, so each test runs in microseconds of real time and says
//! exactly when things happen. What a user sees is proven again against real processes by the
//! CLI's integration tests.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use pm2rs_proto::{
    ActionResponse, ApiError, AppSpec, LogDefaults, ProcessInfo, ReloadRequest, StartResponse,
    Status,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use std::os::fd::OwnedFd;

use super::*;
use crate::cluster::{self, Cluster, Notice, notify};
use crate::keeper::Kept;
use crate::logs::LogHub;
use crate::os as os_seam;
use crate::os::fake::{self, Behaviour, FakeHandle};
use crate::policy::ExitReason;
use crate::state::DumpedApp;

/// Longer than anything a test waits for, on the paused clock (so it costs no real time).
const NEVER: Duration = Duration::from_secs(3600);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Only SIGKILL ends it.
const STUBBORN: Behaviour = Behaviour {
    ignores_stop: true,
    ..ORDINARY
};

/// A process outside the group keeps the log pipes open.
const ESCAPES: Behaviour = Behaviour {
    pipes_escape: true,
    ..ORDINARY
};

const ORDINARY: Behaviour = Behaviour {
    pipes_escape: false,
    ignores_stop: false,
    leaves_member: false,
    member_closed_stdio: false,
    member_survives_kill: false,
    spawn_fails: false,
};

/// A supervisor running on the fake OS, and the test's ends of its channels.
struct Rig {
    commands: mpsc::Sender<Command>,
    /// Stands for the sampler.
    samples: watch::Sender<crate::metrics::Samples>,
    notices: mpsc::Sender<Notice>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    os: FakeHandle,
    dir: tempfile::TempDir,
}

impl Rig {
    /// A rig with its supervisor running.
    fn new() -> Rig {
        let (rig, supervisor, inputs) = Rig::build();
        tokio::spawn(supervisor.run(inputs));
        rig
    }

    /// A rig and the supervisor it talks to, not yet running.
    fn build() -> (Rig, Supervisor, Inputs) {
        Rig::build_with(|_, _| (Vec::new(), Vec::new()))
    }

    /// [`Rig::build`] with a dump to restore and what a previous daemon left with the fd keeper
    /// (made with the fake; given the rig's directory for the apps' specs).
    fn build_with(
        left: impl FnOnce(&FakeHandle, &std::path::Path) -> (Vec<DumpedApp>, Vec<Kept>),
    ) -> (Rig, Supervisor, Inputs) {
        let dir = tempfile::tempdir().expect("temp dir");
        let logs_dir = dir.path().join("logs");
        std::fs::create_dir(&logs_dir).expect("logs dir");
        let logs = LogHub::new(
            logs_dir,
            LogDefaults {
                max_size: 0,
                retain: 0,
                compress: false,
                max_line: 1 << 20,
            },
        );
        let (exit_tx, exit_rx) = mpsc::channel(os_seam::EXIT_QUEUE);
        let (fake, handle) = fake::new(exit_tx);
        let (apps, kept) = left(&handle, dir.path());
        let restore = crate::state::Loaded {
            source: (!apps.is_empty()).then(|| dir.path().join("dump.json")),
            apps,
            warnings: Vec::new(),
        };
        let (notice_tx, notice_rx) = mpsc::channel(cluster::NOTICE_QUEUE);
        let (snapshot_tx, snapshot) = watch::channel(Arc::default());
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (samples, samples_rx) = watch::channel(Arc::default());
        let supervisor = Supervisor::new(Parts {
            logs,
            cluster: Cluster::start(dir.path(), notice_tx.clone()),
            os: Box::new(fake),
            snapshot: snapshot_tx,
            shutdown: CancellationToken::new(),
            restore,
            dump: None,
            keeper: crate::keeper::Keeper::none(),
            kept,
            restored: None,
            watched: None,
        });
        let inputs = Inputs {
            commands: command_rx,
            exits: exit_rx,
            notices: notice_rx,
            samples: Some(samples_rx),
            changes: None,
        };
        let rig = Rig {
            commands,
            samples,
            notices: notice_tx,
            snapshot,
            os: handle,
            dir,
        };
        (rig, supervisor, inputs)
    }

    /// An app running `/bin/true` (the fake runs nothing) in the test's directory.
    fn spec(&self, name: &str) -> AppSpec {
        AppSpec::new(name, "/bin/true", self.dir.path())
    }

    /// App `flaky`: a run shorter than 1 s is unstable, `max_restarts` of them in a row allowed.
    fn flaky(&self, max_restarts: u32) -> AppSpec {
        let mut spec = self.spec("flaky");
        spec.max_restarts = max_restarts;
        spec.min_uptime_ms = 1000;
        spec
    }

    /// Sends a command and waits for its reply, at most an hour of (paused) time: a reply that
    /// never comes fails the test instead of hanging it.
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.expect("supervisor runs");
        tokio::time::timeout(NEVER, rx)
            .await
            .expect("a reply within an hour")
            .expect("a reply")
    }

    async fn start(&self, spec: AppSpec) -> StartResponse {
        self.ask(|reply| Command::Start {
            apps: vec![spec],
            reply,
        })
        .await
        .expect("start")
    }

    /// Starts `spec`, whose processes behave so; the pid of its first instance.
    async fn start_behaving(&self, spec: AppSpec, behaviour: Behaviour) -> Pid {
        self.os.behave(&spec.name, behaviour);
        self.start(spec).await;
        self.pid(0)
    }

    /// Stops `target`; the reply, and how long (paused time) it took.
    async fn timed_stop(&self, target: &str) -> (ActionResponse, Duration) {
        let t0 = Instant::now();
        let reply = self.stop(target).await;
        (reply, Instant::now() - t0)
    }

    async fn stop(&self, target: &str) -> ActionResponse {
        self.ask(|reply| Command::Stop {
            targets: vec![target.into()],
            reply,
        })
        .await
        .expect("stop")
    }

    /// Instance `id` as last published.
    fn info(&self, id: u32) -> ProcessInfo {
        self.snapshot
            .borrow()
            .processes
            .iter()
            .find(|p| p.id == id)
            .cloned()
            .unwrap_or_else(|| panic!("no instance {id}"))
    }

    fn status(&self, id: u32) -> Status {
        self.info(id).status
    }

    fn pid(&self, id: u32) -> Pid {
        Pid::from_raw(self.info(id).pid.expect("a running instance") as i32)
    }

    /// Waits (on the paused clock, so without real time passing) until `cond` holds.
    async fn until(&mut self, what: &str, cond: impl FnMut(&Arc<Snapshot>) -> bool) {
        tokio::time::timeout(NEVER, self.snapshot.wait_for(cond))
            .await
            .unwrap_or_else(|_| panic!("never: {what}"))
            .expect("supervisor runs");
    }

    async fn until_status(&mut self, id: u32, status: Status) {
        self.until(&format!("instance {id} {status:?}"), |s| {
            s.processes.iter().any(|p| p.id == id && p.status == status)
        })
        .await;
    }

    /// Instance `id` says something over sd_notify.
    async fn notify(&self, id: u32, text: &str) {
        let notice = Notice::Notify {
            pid: self.pid(id),
            message: notify::Message::parse(text),
        };
        self.notices.send(notice).await.expect("supervisor runs");
    }

    /// `runs` runs of instance `id`, each crashing after `uptime`; returns once the last crash
    /// has been restarted.
    async fn crash_runs(&mut self, id: u32, runs: usize, uptime: Duration) {
        for _ in 0..runs {
            tokio::time::sleep(uptime).await;
            self.crash(id, 1).await;
            self.until_status(id, Status::Online).await;
        }
    }

    /// Waits for a reload's replacement of `old` (the last of `count` instances), checks that
    /// `old` serves on unsignalled for `serving`, then makes the replacement ready; its pid.
    async fn ready_replacement(&mut self, old: Pid, count: usize, serving: Duration) -> u32 {
        self.until("a replacement is spawned", |s| s.processes.len() == count)
            .await;
        tokio::time::sleep(serving).await;
        assert!(
            self.os.signals(old).is_empty(),
            "stopped before its successor was ready"
        );
        let new = self.snapshot.borrow().processes[count - 1]
            .pid
            .expect("running");
        self.notices
            .send(Notice::Notify {
                pid: Pid::from_raw(new as i32),
                message: notify::Message::parse("READY=1"),
            })
            .await
            .expect("supervisor runs");
        new
    }

    /// The current leader of `id` crashes; returns when the supervisor has seen it.
    async fn crash(&mut self, id: u32, code: i32) {
        let pid = self.pid(id);
        self.os.exit(pid, ExitReason::Code(code));
        self.until("the crash is seen", |s| {
            s.processes
                .iter()
                .any(|p| p.id == id && p.pid != Some(pid.as_raw() as u32))
        })
        .await;
    }
}

/// Runs `f` after `delay` of (paused) time, beside the test.
fn later(delay: Duration, f: impl FnOnce() + Send + 'static) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        f();
    });
}

/// Lets every ready task run without moving the clock.
async fn quiesce() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_stop_sends_the_kill_signal_then_sigkill_after_kill_timeout() {
    let rig = Rig::new();
    let mut spec = rig.spec("stubborn");
    spec.kill_signal = "SIGTERM".into();
    spec.kill_timeout_ms = 2500;
    let pid = rig.start_behaving(spec, STUBBORN).await;
    let t0 = Instant::now();
    let reply = rig.stop("stubborn").await;
    assert_eq!(reply.processes[0].status, Status::Stopped);
    let signals = rig.os.signals(pid);
    assert_eq!(
        signals,
        vec![(t0, Signal::SIGTERM), (t0 + ms(2500), Signal::SIGKILL)],
        "the kill signal at once, SIGKILL exactly kill_timeout later"
    );
    assert!(Instant::now() - t0 >= ms(2500));
}

#[tokio::test(start_paused = true)]
async fn a_process_that_obeys_the_stop_signal_gets_no_sigkill() {
    let rig = Rig::new();
    let mut spec = rig.spec("polite");
    spec.kill_timeout_ms = 2500;
    rig.start(spec).await;
    let pid = rig.pid(0);
    let t0 = Instant::now();
    rig.stop("polite").await;
    assert!(Instant::now() - t0 < ms(100), "stop waited for nothing");
    tokio::time::sleep(ms(10_000)).await;
    assert_eq!(rig.os.signals(pid), vec![(t0, Signal::SIGINT)]);
    assert_eq!(rig.status(0), Status::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_crash_restarts_after_restart_delay_and_not_before() {
    let mut rig = Rig::new();
    let mut spec = rig.spec("crashy");
    spec.restart_delay_ms = 3000;
    rig.start(spec).await;
    rig.crash(0, 1).await;
    let t0 = Instant::now();
    assert_eq!(rig.status(0), Status::WaitingRestart);
    tokio::time::sleep_until(t0 + ms(2999)).await;
    assert_eq!(rig.status(0), Status::WaitingRestart);
    assert_eq!(rig.os.spawn_times("crashy").len(), 1);
    // Counted when the new process starts, as PM2 counts, not while it waits.
    assert_eq!(rig.info(0).restarts, 0);
    rig.until_status(0, Status::Online).await;
    let spawns = rig.os.spawn_times("crashy");
    assert_eq!(spawns.len(), 2);
    assert_eq!(spawns[1] - t0, ms(3000));
    assert_eq!(rig.info(0).restarts, 1);
}

#[tokio::test(start_paused = true)]
async fn ids_start_from_zero_again_once_no_app_is_left() {
    let mut rig = Rig::new();
    let mut spec = rig.spec("first");
    spec.instances = 3;
    rig.start(spec).await;
    rig.ask(|reply| Command::Delete {
        targets: vec!["first".into()],
        reply,
    })
    .await
    .expect("delete");
    let reply = rig.start(rig.spec("second")).await;
    assert_eq!(reply.processes[0].id, 0, "{reply:?}");
    // While an app is left, ids go on from where they were.
    let reply = rig.start(rig.spec("third")).await;
    assert_eq!(reply.processes[0].id, 1, "{reply:?}");
    rig.until_status(1, Status::Online).await;
}

#[tokio::test(start_paused = true)]
async fn exponential_backoff_grows_by_half_and_starts_over_after_a_stable_run() {
    let mut rig = Rig::new();
    let mut spec = rig.spec("backoff");
    spec.exp_backoff_restart_delay_ms = Some(100);
    spec.max_restarts = 100;
    rig.start(spec).await;
    let mut gaps = Vec::new();
    for _ in 0..4 {
        rig.crash(0, 1).await;
        let crashed = Instant::now();
        rig.until_status(0, Status::Online).await;
        gaps.push(*rig.os.spawn_times("backoff").last().expect("spawned") - crashed);
    }
    // ×1.5 each time; tokio's timers have a resolution of 1 ms (337.5 ms fires at 338 ms).
    assert_eq!(gaps, vec![ms(100), ms(150), ms(225), ms(338)]);
    // A run longer than min_uptime resets the backoff.
    tokio::time::sleep(ms(1500)).await;
    rig.crash(0, 1).await;
    let crashed = Instant::now();
    rig.until_status(0, Status::Online).await;
    assert_eq!(
        *rig.os.spawn_times("backoff").last().expect("spawned") - crashed,
        ms(100)
    );
}

#[tokio::test(start_paused = true)]
async fn unstable_runs_beyond_max_restarts_end_errored_with_the_reason() {
    let mut rig = Rig::new();
    rig.start(rig.flaky(2)).await;
    rig.crash_runs(0, 2, ms(200)).await;
    tokio::time::sleep(ms(200)).await;
    let pid = rig.pid(0);
    rig.os.exit(pid, ExitReason::Code(3));
    rig.until_status(0, Status::Errored).await;
    let info = rig.info(0);
    assert!(
        info.reason
            .as_deref()
            .is_some_and(|r| r.contains("max_restarts is 2")),
        "{info:?}"
    );
    assert_eq!(rig.os.spawn_times("flaky").len(), 3, "1 start + 2 restarts");
    assert_eq!(info.restarts, 2);
}

#[tokio::test(start_paused = true)]
async fn reset_zeroes_the_counters_and_they_count_from_zero_again() {
    let mut rig = Rig::new();
    rig.start(rig.flaky(3)).await;
    rig.crash_runs(0, 3, ms(200)).await;
    let before = rig.info(0);
    assert_eq!((before.restarts, before.unstable_restarts), (3, 3));
    let reply = rig
        .ask(|reply| Command::Reset {
            target: "flaky".into(),
            reply,
        })
        .await
        .expect("reset");
    assert_eq!(reply.ids, vec![0]);
    let p = &reply.processes[0];
    assert_eq!((p.restarts, p.unstable_restarts), (0, 0), "{p:?}");
    // Nothing else moved: the same process runs on.
    assert_eq!((p.status, p.pid), (Status::Online, before.pid));
    // The unstable count starting over means 3 more unstable runs are allowed, not 0.
    rig.crash_runs(0, 3, ms(200)).await;
    let after = rig.info(0);
    assert_eq!(
        (after.status, after.restarts, after.unstable_restarts),
        (Status::Online, 3, 3)
    );
    let unknown = rig
        .ask(|reply| Command::Reset {
            target: "nope".into(),
            reply,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.kind, pm2rs_proto::ErrorKind::NotFound);
}

#[tokio::test(start_paused = true)]
async fn runs_longer_than_min_uptime_never_end_errored() {
    let mut rig = Rig::new();
    let mut spec = rig.spec("steady");
    spec.max_restarts = 1;
    spec.min_uptime_ms = 1000;
    rig.start(spec).await;
    rig.crash_runs(0, 5, ms(1000)).await;
    assert_eq!(rig.info(0).unstable_restarts, 0);
    assert_eq!(rig.os.spawn_times("steady").len(), 6);
}

#[tokio::test(start_paused = true)]
async fn listen_timeout_makes_a_silent_instance_online_and_not_before() {
    let mut rig = Rig::new();
    let mut spec = rig.spec("quiet");
    spec.wait_ready = true;
    spec.listen_timeout_ms = 3000;
    rig.start(spec).await;
    let t0 = Instant::now();
    assert_eq!(rig.status(0), Status::Launching);
    tokio::time::sleep_until(t0 + ms(2999)).await;
    assert_eq!(rig.status(0), Status::Launching);
    rig.until_status(0, Status::Online).await;
    assert_eq!(Instant::now() - t0, ms(3000));
}

#[tokio::test(start_paused = true)]
async fn a_ready_notice_makes_an_instance_online_at_once() {
    let mut rig = Rig::new();
    let mut spec = rig.spec("talker");
    spec.wait_ready = true;
    spec.listen_timeout_ms = 3000;
    rig.start(spec).await;
    tokio::time::sleep(ms(400)).await;
    let t0 = Instant::now();
    rig.notify(0, "READY=1\nSTATUS=serving").await;
    rig.until_status(0, Status::Online).await;
    assert_eq!(Instant::now(), t0);
    assert_eq!(rig.info(0).notify_status.as_deref(), Some("serving"));
}

#[tokio::test(start_paused = true)]
async fn a_missed_watchdog_ping_kills_and_restarts_the_instance() {
    let mut rig = Rig::new();
    let mut spec = rig.spec("dog");
    spec.watchdog_timeout_ms = Some(1000);
    rig.start(spec).await;
    let pid = rig.pid(0);
    // Pings in time keep it alive.
    for _ in 0..3 {
        tokio::time::sleep(ms(800)).await;
        rig.notify(0, "WATCHDOG=1").await;
    }
    quiesce().await;
    let last_ping = Instant::now();
    assert!(rig.os.signals(pid).is_empty());
    rig.until("the instance is replaced", |s| {
        s.processes[0].pid.is_some_and(|p| p != pid.as_raw() as u32)
    })
    .await;
    assert_eq!(
        rig.os.signals(pid),
        vec![(last_ping + ms(1000), Signal::SIGKILL)]
    );
    let info = rig.info(0);
    assert!(
        info.reason
            .as_deref()
            .is_some_and(|r| r.contains("watchdog")),
        "{info:?}"
    );
    assert_eq!(info.restarts, 1);
}

#[tokio::test(start_paused = true)]
async fn the_watchdog_does_not_fire_while_an_instance_is_stopping() {
    let rig = Rig::new();
    let mut spec = rig.spec("dog");
    spec.watchdog_timeout_ms = Some(1000);
    spec.kill_timeout_ms = 5000;
    let pid = rig.start_behaving(spec, STUBBORN).await;
    tokio::time::sleep(ms(100)).await;
    let t0 = Instant::now();
    rig.stop("dog").await;
    assert_eq!(
        rig.os.signals(pid),
        vec![(t0, Signal::SIGINT), (t0 + ms(5000), Signal::SIGKILL)]
    );
    assert!(rig.info(0).reason.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_stop_during_the_restart_delay_cancels_the_restart() {
    let mut rig = Rig::new();
    let mut spec = rig.spec("later");
    spec.restart_delay_ms = 5000;
    rig.start(spec).await;
    rig.crash(0, 1).await;
    tokio::time::sleep(ms(1000)).await;
    let t0 = Instant::now();
    let reply = rig.stop("later").await;
    assert_eq!(Instant::now(), t0, "nothing to wait for");
    assert_eq!(reply.processes[0].status, Status::Stopped);
    tokio::time::sleep(ms(60_000)).await;
    assert_eq!(rig.os.spawn_times("later").len(), 1);
    assert_eq!(rig.status(0), Status::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_stop_waits_until_the_group_is_empty() {
    let rig = Rig::new();
    let pid = rig
        .start_behaving(
            rig.spec("family"),
            Behaviour {
                leaves_member: true,
                ..Behaviour::default()
            },
        )
        .await;
    let t0 = Instant::now();
    let reply = rig.stop("family").await;
    assert_eq!(reply.processes[0].status, Status::Stopped);
    // The leader obeyed SIGINT; the member left behind was SIGKILLed as soon as it was seen.
    assert_eq!(
        rig.os.signals(pid),
        vec![(t0, Signal::SIGINT), (t0, Signal::SIGKILL)]
    );
    assert!(!rig.os.group_alive(pid));
}

#[tokio::test(start_paused = true)]
async fn a_stop_waits_for_a_member_that_survives_sigkill_and_kills_it_again() {
    let rig = Rig::new();
    let pid = rig
        .start_behaving(
            rig.spec("stuck"),
            Behaviour {
                leaves_member: true,
                member_survives_kill: true,
                // So only the group, not the pipes, holds the stop.
                member_closed_stdio: true,
                ..Behaviour::default()
            },
        )
        .await;
    let os = rig.os.clone();
    later(ms(300), move || os.end_member(pid));
    let (reply, held) = rig.timed_stop("stuck").await;
    assert_eq!(reply.processes[0].status, Status::Stopped);
    assert!(
        held >= ms(300) && held <= ms(300) + timers::DRAIN_RECHECK,
        "stop took {held:?}"
    );
    // SIGKILLed at the leader's exit, then again at every recheck until the group was empty.
    let kills = rig
        .os
        .signals(pid)
        .iter()
        .filter(|(_, s)| *s == Signal::SIGKILL)
        .count();
    assert!(kills >= 300 / 20, "{kills} SIGKILLs");
}

#[tokio::test(start_paused = true)]
async fn an_escaped_process_holding_the_pipes_holds_stop_for_the_pipe_grace_only() {
    let rig = Rig::new();
    rig.start_behaving(rig.spec("escapee"), ESCAPES).await;
    let (_, held) = rig.timed_stop("escapee").await;
    assert!(
        held >= exits::PIPE_GRACE && held <= exits::PIPE_GRACE + timers::DRAIN_RECHECK,
        "stop took {held:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn output_from_an_escaped_process_extends_the_pipe_grace() {
    let rig = Rig::new();
    let pid = rig.start_behaving(rig.spec("escapee"), ESCAPES).await;
    let os = rig.os.clone();
    // Still writing 600 ms into the stop: the grace counts from the last byte written.
    later(ms(600), move || {
        assert!(os.write_stdout(pid, b"still here\n"))
    });
    let (_, held) = rig.timed_stop("escapee").await;
    assert!(
        held >= ms(600) + exits::PIPE_GRACE
            && held <= ms(600) + exits::PIPE_GRACE + timers::DRAIN_RECHECK * 2,
        "stop took {held:?}"
    );
    let log =
        std::fs::read_to_string(rig.dir.path().join("logs/escapee-out.log")).expect("the out log");
    assert_eq!(log, "still here\n");
}

#[tokio::test(start_paused = true)]
async fn a_stop_ends_as_soon_as_the_escaped_pipes_close() {
    let rig = Rig::new();
    let pid = rig.start_behaving(rig.spec("escapee"), ESCAPES).await;
    let os = rig.os.clone();
    later(ms(300), move || os.close_pipes(pid));
    let (_, held) = rig.timed_stop("escapee").await;
    assert!(
        held >= ms(300) && held <= ms(300) + timers::DRAIN_RECHECK,
        "stop took {held:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_whose_replacement_never_gets_ready_fails_and_keeps_the_old_instance() {
    let mut rig = Rig::new();
    let mut spec = rig.spec("api");
    spec.wait_ready = true;
    spec.listen_timeout_ms = 2000;
    rig.start(spec).await;
    rig.notify(0, "READY=1").await;
    rig.until_status(0, Status::Online).await;
    let old = rig.pid(0);
    let t0 = Instant::now();
    let result = rig
        .ask(|reply| Command::Reload {
            request: ReloadRequest {
                target: "api".into(),
                parallel: 1,
            },
            reply,
        })
        .await;
    let err = result.expect_err("the reload fails");
    assert!(
        err.message.contains("not ready within listen_timeout"),
        "{err:?}"
    );
    assert!(Instant::now() - t0 >= ms(2000));
    // The old instance serves on, never signalled; the replacement was stopped.
    assert!(rig.os.signals(old).is_empty());
    assert_eq!(rig.pid(0), old);
    assert_eq!(rig.status(0), Status::Online);
    let running = rig.os.running("api");
    assert_eq!(running, vec![old]);
    assert_eq!(rig.snapshot.borrow().processes.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_reload_stops_each_old_instance_once_its_replacement_is_ready() {
    let mut rig = Rig::new();
    let mut spec = rig.spec("api");
    spec.wait_ready = true;
    spec.instances = 2;
    rig.start(spec).await;
    for id in [0, 1] {
        rig.notify(id, "READY=1").await;
        rig.until_status(id, Status::Online).await;
    }
    let olds = [rig.pid(0), rig.pid(1)];
    let commands = rig.commands.clone();
    let (tx, rx) = oneshot::channel();
    commands
        .send(Command::Reload {
            request: ReloadRequest {
                target: "api".into(),
                parallel: 1,
            },
            reply: tx,
        })
        .await
        .expect("supervisor runs");
    for (n, old) in olds.into_iter().enumerate() {
        let new = rig.ready_replacement(old, 3, ms(500)).await;
        let id = n as u32;
        // The replacement takes the old one's id (the next replacement may start at once).
        rig.until("the old instance is replaced", |s| {
            s.processes.iter().any(|p| p.id == id && p.pid == Some(new))
        })
        .await;
        assert_eq!(rig.os.signals(old).len(), 1, "SIGINT once");
    }
    let reply = tokio::time::timeout(NEVER, rx)
        .await
        .expect("a reply within an hour")
        .expect("a reply")
        .expect("the reload succeeds");
    assert_eq!(reply.ids, vec![0, 1]);
    assert!(
        reply.processes.iter().all(|p| p.status == Status::Online),
        "{reply:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_spawn_that_fails_ends_errored_with_the_reason() {
    let rig = Rig::new();
    rig.os.behave(
        "missing",
        Behaviour {
            spawn_fails: true,
            ..Behaviour::default()
        },
    );
    let reply = rig.start(rig.spec("missing")).await;
    let p = &reply.processes[0];
    assert_eq!(p.status, Status::Errored);
    assert!(
        p.reason
            .as_deref()
            .is_some_and(|r| r.contains("could not start")),
        "{p:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_exit_of_an_unknown_process_changes_nothing() {
    let rig = Rig::new();
    rig.start(rig.spec("calm")).await;
    let before = rig.info(0);
    rig.os.report_exit(Pid::from_raw(42), ExitReason::Code(1));
    quiesce().await;
    tokio::time::sleep(ms(5000)).await;
    let after = rig.info(0);
    assert_eq!(
        (after.pid, after.status, after.restarts),
        (before.pid, before.status, 0)
    );
}

/// Replies leave only once the snapshot they describe is published (read-your-writes on any
/// runtime flavour): driven step by step, without the loop.
#[tokio::test(start_paused = true)]
async fn a_reply_is_sent_only_after_its_snapshot_is_published() {
    let (rig, mut sup, _inputs) = Rig::build();
    let (tx, mut rx) = oneshot::channel();
    sup.handle(Input::Command(Command::Start {
        apps: vec![rig.spec("a")],
        reply: tx,
    }));
    assert!(rx.try_recv().is_err(), "replied before publishing");
    assert_eq!(sup.outbox.len(), 1);
    assert!(rig.snapshot.borrow().processes.is_empty());
    sup.settle();
    let reply = rx.try_recv().expect("replied").expect("started");
    assert_eq!(reply.started, vec!["a".to_string()]);
    assert_eq!(rig.snapshot.borrow().processes.len(), 1);
}

/// A small deterministic generator (xorshift64*), so a failing sequence can be replayed by seed.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What must hold whenever the supervisor has caught up with its inputs.
fn check_invariants(rig: &Rig, apps: &[&str], seed: u64, step: usize) {
    let snapshot = rig.snapshot.borrow().clone();
    let ctx = format!("seed {seed}, step {step}: {:#?}", snapshot.processes);
    let mut pids = std::collections::BTreeSet::new();
    for p in &snapshot.processes {
        match p.status {
            // A stop whose leader has exited waits, still `stopping`, for the group and pipes.
            Status::Stopping if p.pid.is_none() => {}
            Status::Launching | Status::Online | Status::Stopping => {
                let pid = p
                    .pid
                    .unwrap_or_else(|| panic!("{:?} without a process; {ctx}", p.status));
                assert!(
                    rig.os.group_alive(Pid::from_raw(pid as i32)),
                    "instance {} shows a dead process {pid}; {ctx}",
                    p.id
                );
                assert!(pids.insert(pid), "pid {pid} in two instances; {ctx}");
            }
            Status::Stopped | Status::Errored | Status::WaitingRestart => {
                assert_eq!(p.pid, None, "a settled instance with a process; {ctx}");
            }
        }
    }
    // No process runs that the supervisor does not show (nothing leaked, nothing orphaned).
    for app in apps {
        for pid in rig.os.running(app) {
            assert!(
                pids.contains(&(pid.as_raw() as u32)),
                "process {pid} of {app} runs but no instance shows it; {ctx}"
            );
        }
    }
}

/// Random sequences of commands, crashes and time against the fake OS; the invariants are
/// checked after every step, and at the end every command has had its reply and every app has
/// exactly the instances its spec says. 25 seeds here (about half a second); 600 pass too
/// (change the range to run more). It found three bugs the written tests had not: two
/// continuations on one instance starving each other, a reload's replacement that was being
/// stopped losing its stop when it took the old id, and replacements counted as instances.
#[tokio::test(start_paused = true)]
async fn random_commands_and_exits_keep_the_invariants() {
    const APPS: [&str; 3] = ["a", "b", "c"];
    for seed in 1..=25u64 {
        let rig = Rig::new();
        let mut dice = Dice(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        for app in APPS {
            rig.os.behave(
                app,
                Behaviour {
                    ignores_stop: dice.chance(30),
                    leaves_member: dice.chance(30),
                    pipes_escape: dice.chance(10),
                    ..Behaviour::default()
                },
            );
        }
        let mut replies: Vec<(String, oneshot::Receiver<Result<ActionResponse, ApiError>>)> =
            Vec::new();
        let mut starts: Vec<oneshot::Receiver<Result<StartResponse, ApiError>>> = Vec::new();
        let mut history: Vec<String> = Vec::new();
        for step in 0..60 {
            let app = APPS[dice.below(3) as usize];
            let target = if dice.chance(10) { "all" } else { app };
            // Stop, restart and delete take several targets, sometimes overlapping.
            let mut targets = vec![target.to_string()];
            if dice.chance(20) {
                targets.push(APPS[dice.below(3) as usize].to_string());
            }
            match dice.below(10) {
                0 | 1 => {
                    let mut spec = rig.spec(app);
                    spec.instances = 1 + dice.below(3) as u32;
                    spec.restart_delay_ms = dice.below(3) * 200;
                    spec.wait_ready = dice.chance(30);
                    spec.kill_timeout_ms = 100 + dice.below(500);
                    let (tx, rx) = oneshot::channel();
                    history.push(format!(
                        "step {step}: start {app} x{} wait_ready {}",
                        spec.instances, spec.wait_ready
                    ));
                    let cmd = Command::Start {
                        apps: vec![spec],
                        reply: tx,
                    };
                    rig.commands.send(cmd).await.expect("supervisor runs");
                    starts.push(rx);
                }
                2 | 3 => {
                    // A crash of a random running process of the app.
                    let running = rig.os.running(app);
                    if !running.is_empty() {
                        let pid = running[dice.below(running.len() as u64) as usize];
                        history.push(format!("step {step}: crash {pid} of {app}"));
                        rig.os.exit(pid, ExitReason::Code(1));
                    }
                }
                kind => {
                    let (tx, rx) = oneshot::channel();
                    let cmd = match kind {
                        4 => Command::Stop {
                            targets: targets.clone(),
                            reply: tx,
                        },
                        5 => Command::Restart {
                            targets: targets.clone(),
                            reply: tx,
                        },
                        6 => Command::Delete {
                            targets: targets.clone(),
                            reply: tx,
                        },
                        7 => Command::Scale {
                            request: pm2rs_proto::ScaleRequest {
                                name: app.into(),
                                to: pm2rs_proto::ScaleTo::Exactly(1 + dice.below(3) as u32),
                            },
                            reply: tx,
                        },
                        9 => Command::Reset {
                            target: target.into(),
                            reply: tx,
                        },
                        _ => Command::Reload {
                            request: ReloadRequest {
                                target: target.into(),
                                parallel: 1,
                            },
                            reply: tx,
                        },
                    };
                    let what = format!("step {step}: {cmd:?}");
                    history.push(what.split(", reply").next().unwrap_or("").to_string());
                    rig.commands.send(cmd).await.expect("supervisor runs");
                    replies.push((what, rx));
                }
            }
            if dice.chance(50) {
                // Ready notices for whatever is launching.
                let launching: Vec<u32> = rig
                    .snapshot
                    .borrow()
                    .processes
                    .iter()
                    .filter(|p| p.status == Status::Launching)
                    .filter_map(|p| p.pid)
                    .collect();
                for pid in launching {
                    let notice = Notice::Notify {
                        pid: Pid::from_raw(pid as i32),
                        message: notify::Message::parse("READY=1"),
                    };
                    rig.notices.send(notice).await.expect("supervisor runs");
                }
            }
            tokio::time::sleep(ms(dice.below(700))).await;
            quiesce().await;
            check_invariants(&rig, &APPS, seed, step);
        }
        // Everything settles: every command gets its reply (an error is a reply too).
        tokio::time::sleep(ms(60_000)).await;
        quiesce().await;
        for (what, rx) in replies {
            tokio::time::timeout(NEVER, rx)
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "seed {seed}: {what} never got its reply; now {:#?}",
                        rig.snapshot.borrow().processes
                    )
                })
                .expect("a reply")
                .ok();
        }
        for rx in starts {
            tokio::time::timeout(NEVER, rx)
                .await
                .unwrap_or_else(|_| panic!("seed {seed}: a start never got its reply"))
                .expect("a reply")
                .ok();
        }
        check_invariants(&rig, &APPS, seed, 60);
        let snapshot = rig.snapshot.borrow().clone();
        for (name, spec) in &snapshot.specs {
            let count = snapshot
                .processes
                .iter()
                .filter(|p| p.name == *name)
                .count();
            assert_eq!(
                count, spec.instances as usize,
                "seed {seed}: {name} has {count} instances, its spec says {}; after {history:#?}",
                spec.instances
            );
        }
    }
}

/// What the fd keeper would hand back for `pid`, a run of `app` a previous daemon left.
fn kept_run(app: &str, id: u32, slot: u32, pid: Pid, out: OwnedFd, err: OwnedFd) -> Kept {
    let run = adopt::KeptRun {
        id,
        app: app.into(),
        slot,
        pid: pid.as_raw(),
        start_ticks: 0,
        started_at_us: pm2rs_proto::unix_micros(),
        restarts: 0,
        replaces: None,
        ipc: false,
    };
    Kept {
        key: adopt::run_key(pid),
        meta: serde_json::to_value(run).unwrap(),
        fds: vec![out, err],
    }
}

#[tokio::test(start_paused = true)]
async fn a_run_of_an_app_nobody_knows_is_stopped_with_sigterm_then_sigkill() {
    let ghost = std::cell::Cell::new(None);
    let (rig, supervisor, inputs) = Rig::build_with(|os, _| {
        os.behave("ghost", STUBBORN);
        let (pid, out, err) = os.left_running("ghost", 0);
        ghost.set(Some(pid));
        (vec![], vec![kept_run("ghost", 3, 0, pid, out, err)])
    });
    let pid = ghost.get().unwrap();
    let t0 = Instant::now();
    tokio::spawn(supervisor.run(inputs));
    tokio::time::sleep(ms(1601)).await;
    let signals = rig.os.signals(pid);
    assert_eq!(
        signals,
        vec![(t0, Signal::SIGTERM), (t0 + ms(1600), Signal::SIGKILL)],
        "SIGTERM at once, SIGKILL after the default kill timeout"
    );
    assert!(!rig.os.group_alive(pid));
}

/// The dump's app `web` (`instances` of them), as a restore gets it.
fn dumped(dir: &std::path::Path, instances: u32, stopped: bool) -> DumpedApp {
    let mut spec = AppSpec::new("web", "/bin/true", dir);
    spec.instances = instances;
    DumpedApp { spec, stopped }
}

#[tokio::test(start_paused = true)]
async fn a_run_left_running_is_taken_over_and_its_end_restarts_it() {
    let left = std::cell::Cell::new(None);
    let (mut rig, supervisor, inputs) = Rig::build_with(|os, dir| {
        let (pid, out, err) = os.left_running("web", 0);
        left.set(Some(pid));
        (
            vec![dumped(dir, 2, false)],
            vec![kept_run("web", 7, 0, pid, out, err)],
        )
    });
    let pid = left.get().unwrap();
    tokio::spawn(supervisor.run(inputs));
    rig.until("two instances online", |s| {
        s.processes
            .iter()
            .filter(|p| p.status == Status::Online)
            .count()
            == 2
    })
    .await;
    let taken = rig.info(7);
    assert_eq!(taken.pid, Some(pid.as_raw() as u32), "same id, same pid");
    assert_eq!(taken.instance, 0);
    let spawned: Vec<_> = rig.os.spawn_times("web");
    assert_eq!(
        spawned.len(),
        1,
        "only the slot without a kept run was spawned"
    );
    assert_eq!(
        rig.info(8).instance,
        1,
        "the new instance gets the next id and slot 1"
    );
    // Its end is noticed and the restart policy applies.
    rig.os.exit(pid, ExitReason::Code(1));
    rig.until("the taken-over instance restarted", |s| {
        s.processes
            .iter()
            .any(|p| p.id == 7 && p.restarts == 1 && p.status == Status::Online)
    })
    .await;
    assert_ne!(rig.info(7).pid, Some(pid.as_raw() as u32));
}

#[tokio::test(start_paused = true)]
async fn runs_the_desired_state_has_no_place_for_are_stopped_gracefully_and_forgotten() {
    let left = std::cell::RefCell::new(Vec::new());
    let (mut rig, supervisor, inputs) = Rig::build_with(|os, dir| {
        let mut kept = Vec::new();
        // Slot 0 twice (the older id wins), and slot 1 of an app that has one instance now.
        for (id, slot) in [(0, 0), (4, 0), (1, 1)] {
            let (pid, out, err) = os.left_running("web", slot);
            left.borrow_mut().push(pid);
            kept.push(kept_run("web", id, slot, pid, out, err));
        }
        (vec![dumped(dir, 1, false)], kept)
    });
    let pids = left.into_inner();
    tokio::spawn(supervisor.run(inputs));
    rig.until("only the kept instance is left", |s| {
        s.processes.len() == 1 && s.processes[0].status == Status::Online
    })
    .await;
    assert_eq!(rig.info(0).pid, Some(pids[0].as_raw() as u32));
    assert!(rig.os.spawn_times("web").is_empty(), "nothing spawned");
    for extra in &pids[1..] {
        let signals: Vec<Signal> = rig.os.signals(*extra).into_iter().map(|(_, s)| s).collect();
        assert_eq!(
            signals,
            vec![Signal::SIGINT],
            "stopped with the app's kill_signal"
        );
    }
    assert!(
        rig.os.signals(pids[0]).is_empty(),
        "the kept one is left alone"
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_of_an_app_the_user_stopped_is_stopped() {
    let left = std::cell::Cell::new(None);
    let (mut rig, supervisor, inputs) = Rig::build_with(|os, dir| {
        let (pid, out, err) = os.left_running("web", 0);
        left.set(Some(pid));
        (
            vec![dumped(dir, 1, true)],
            vec![kept_run("web", 0, 0, pid, out, err)],
        )
    });
    let pid = left.get().unwrap();
    tokio::spawn(supervisor.run(inputs));
    rig.until("web listed stopped, alone", |s| {
        s.processes.len() == 1 && s.processes[0].status == Status::Stopped
    })
    .await;
    assert_eq!(
        rig.os
            .signals(pid)
            .into_iter()
            .map(|(_, s)| s)
            .collect::<Vec<_>>(),
        vec![Signal::SIGINT]
    );
    assert!(!rig.os.group_alive(pid));
}

/// The next cron restart of `app` as published, in whole seconds of the fake's wall clock.
fn cron_next_s(rig: &Rig, app: &str) -> Option<u64> {
    let next = rig.snapshot.borrow().cron_next_us.get(app).copied();
    next.map(|us| {
        assert_eq!(us % 1_000_000, 0, "on a whole second");
        us / 1_000_000
    })
}

#[tokio::test(start_paused = true)]
async fn a_cron_restart_fires_on_time_restarts_reschedules_and_stop_turns_it_off() {
    let mut rig = Rig::new();
    // The fake's wall clock starts a quarter second past a whole second.
    let t0 = Instant::now();
    let start_s = fake::FAKE_WALL_START_MS / 1000;
    let mut spec = rig.spec("nightly");
    spec.cron_restart = Some("* * * * * *".into());
    let first = rig.start_behaving(spec.clone(), ORDINARY).await;
    assert_eq!(cron_next_s(&rig, "nightly"), Some(start_s + 1));

    // At the next whole second: the kill signal, then a new process, counted as a restart.
    rig.until("the first cron restart", |s| s.processes[0].restarts == 1)
        .await;
    assert_eq!(rig.os.signals(first), vec![(t0 + ms(750), Signal::SIGINT)]);
    assert_eq!(rig.os.spawn_times("nightly"), vec![t0, t0 + ms(750)]);
    assert_eq!(rig.status(0), Status::Online);
    assert_eq!(
        cron_next_s(&rig, "nightly"),
        Some(start_s + 2),
        "rescheduled"
    );
    let second = rig.pid(0);
    rig.until("the second cron restart", |s| s.processes[0].restarts == 2)
        .await;
    assert_eq!(
        rig.os.signals(second),
        vec![(t0 + ms(1750), Signal::SIGINT)]
    );
    assert_eq!(cron_next_s(&rig, "nightly"), Some(start_s + 3));

    // Stop turns it off: nothing is started again, however long it waits.
    rig.stop("nightly").await;
    assert_eq!(cron_next_s(&rig, "nightly"), None);
    tokio::time::sleep(ms(10_000)).await;
    assert_eq!(rig.status(0), Status::Stopped);
    assert_eq!(rig.os.spawn_times("nightly").len(), 3);

    // The next start turns it on again, from now.
    rig.start(spec).await;
    let wall_ms = fake::FAKE_WALL_START_MS + (Instant::now() - t0).as_millis() as u64;
    assert_eq!(cron_next_s(&rig, "nightly"), Some(wall_ms / 1000 + 1));
    let restarts = rig.info(0).restarts;
    rig.until("a cron restart after the start", |s| {
        s.processes[0].restarts == restarts + 1
    })
    .await;
    assert_eq!(rig.os.spawn_times("nightly").len(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_cron_restart_of_an_app_with_wait_ready_is_a_reload() {
    let mut rig = Rig::new();
    let mut spec = rig.spec("api");
    spec.wait_ready = true;
    spec.cron_restart = Some("* * * * * *".into());
    rig.start(spec).await;
    rig.notify(0, "READY=1").await;
    rig.until_status(0, Status::Online).await;
    let old = rig.pid(0);
    // A replacement starts beside the old instance, which serves on until it is ready.
    let new = rig.ready_replacement(old, 2, ms(100)).await;
    rig.until("the old instance is replaced", |s| {
        s.processes.len() == 1 && s.processes[0].pid == Some(new)
    })
    .await;
    let p = rig.info(0);
    assert_eq!((p.status, p.restarts), (Status::Online, 1), "{p:?}");
    assert_eq!(
        rig.os.signals(old).len(),
        1,
        "the old one got its kill signal once"
    );
}

#[tokio::test(start_paused = true)]
async fn deleting_or_changing_an_app_removes_or_replaces_its_cron() {
    let mut rig = Rig::new();
    let mut spec = rig.spec("job");
    spec.cron_restart = Some("0 0 * * *".into());
    rig.start(spec.clone()).await;
    let midnight = cron_next_s(&rig, "job").expect("on");
    assert!(midnight > fake::FAKE_WALL_START_MS / 1000);
    // A changed spec sets it anew.
    spec.cron_restart = Some("* * * * * *".into());
    rig.start(spec.clone()).await;
    rig.until_status(0, Status::Online).await;
    let restarts = rig.info(0).restarts;
    rig.until("a per-second cron restart", |s| {
        s.processes[0].restarts == restarts + 1
    })
    .await;
    // Without one, it is gone.
    spec.cron_restart = None;
    rig.start(spec.clone()).await;
    assert_eq!(cron_next_s(&rig, "job"), None);
    let spawns = rig.os.spawn_times("job").len();
    tokio::time::sleep(ms(5000)).await;
    assert_eq!(rig.os.spawn_times("job").len(), spawns);
    // Delete removes it with the app.
    spec.cron_restart = Some("* * * * * *".into());
    rig.start(spec).await;
    rig.ask(|reply| Command::Delete {
        targets: vec!["job".into()],
        reply,
    })
    .await
    .expect("delete");
    assert!(rig.snapshot.borrow().cron_next_us.is_empty());
    tokio::time::sleep(ms(5000)).await;
    assert!(rig.snapshot.borrow().processes.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_hourly_cron_fires_on_the_hour_and_a_clock_set_forward_is_caught_within_a_minute() {
    let mut rig = Rig::new();
    let t0 = Instant::now();
    let start_ms = fake::FAKE_WALL_START_MS;
    let mut spec = rig.spec("hourly");
    spec.cron_restart = Some("0 * * * *".into());
    rig.start(spec).await;
    let next_s = cron_next_s(&rig, "hourly").expect("on");
    let first_wait = ms(next_s * 1000 - start_ms);
    assert!(first_wait <= Duration::from_secs(3600), "{first_wait:?}");
    // The timer wakes every minute to read the wall clock, and restarts nothing before the hour.
    tokio::time::sleep_until(t0 + first_wait - ms(1)).await;
    assert_eq!(rig.os.spawn_times("hourly"), vec![t0]);
    assert_eq!(cron_next_s(&rig, "hourly"), Some(next_s));
    rig.until("the restart on the hour", |s| s.processes[0].restarts == 1)
        .await;
    assert_eq!(rig.os.spawn_times("hourly")[1], t0 + first_wait);
    let after_s = cron_next_s(&rig, "hourly").expect("rescheduled");
    assert_eq!(after_s, next_s + 3600);

    // The machine sleeps through the next hour (the paused clock, like tokio's, does not count
    // it): the restart comes at the next minute's check, not an hour late.
    let woke = Instant::now();
    rig.os.shift_wall_clock(Duration::from_secs(3600));
    rig.until("the restart after the sleep", |s| {
        s.processes[0].restarts == 2
    })
    .await;
    let late = rig.os.spawn_times("hourly")[2] - woke;
    assert!(late <= super::cron::CRON_RECHECK, "{late:?}");
    assert_eq!(cron_next_s(&rig, "hourly"), Some(after_s + 3600));
}

impl Rig {
    /// The sampler reports `memory` bytes for the group of `pid`.
    fn sample(&self, pid: Pid, memory: u64) {
        let sample = crate::metrics::Sample {
            cpu_percent: 0.0,
            memory_bytes: memory,
            leader_cpu_percent: 0.0,
            leader_memory_bytes: memory / 2,
            processes: 2,
        };
        let samples = std::collections::HashMap::from([(pid.as_raw() as u32, sample)]);
        self.samples.send_replace(Arc::new(samples));
    }
}

#[tokio::test(start_paused = true)]
async fn an_instance_over_its_memory_limit_is_restarted_counted_and_not_unstable() {
    let mut rig = Rig::new();
    let mut spec = rig.spec("hog");
    spec.max_memory_restart = Some(50 << 20);
    spec.kill_timeout_ms = 2500;
    rig.start(spec).await;
    let pid = rig.pid(0);
    rig.sample(pid, 40 << 20);
    tokio::time::sleep(ms(100)).await;
    assert!(
        rig.os.signals(pid).is_empty(),
        "under the limit: left alone"
    );
    let t0 = Instant::now();
    rig.sample(pid, 60 << 20);
    rig.until("the hog restarted", |s| {
        s.processes[0].restarts == 1 && s.processes[0].status == Status::Online
    })
    .await;
    assert_eq!(
        rig.os.signals(pid),
        vec![(t0, Signal::SIGINT)],
        "the kill signal at once"
    );
    let info = rig.info(0);
    assert_ne!(info.pid, Some(pid.as_raw() as u32));
    assert_eq!(info.unstable_restarts, 0);
    assert_eq!(
        info.restart_reason.as_deref(),
        Some("memory 60M over limit 50M")
    );
    // The new run is watched too; a stale sample of the old pid changes nothing.
    tokio::time::sleep(ms(100)).await;
    assert_eq!(rig.info(0).restarts, 1);
    let new = Pid::from_raw(info.pid.unwrap() as i32);
    rig.sample(new, 51 << 20);
    rig.until("the new run restarted", |s| s.processes[0].restarts == 2)
        .await;
    rig.until_status(0, Status::Online).await;
    assert!(rig.info(0).restart_reason.is_some());
    // A crash restart afterwards is not a limit restart: the reason goes.
    rig.crash(0, 1).await;
    rig.until("restarted after the crash", |s| {
        s.processes[0].restarts == 3
    })
    .await;
    assert_eq!(rig.info(0).restart_reason, None);
}

#[tokio::test(start_paused = true)]
async fn an_app_without_a_limit_is_never_restarted_for_memory() {
    let rig = Rig::new();
    rig.start(rig.spec("big")).await;
    let pid = rig.pid(0);
    rig.sample(pid, 10 << 30);
    tokio::time::sleep(ms(1000)).await;
    assert!(rig.os.signals(pid).is_empty());
    assert_eq!(rig.info(0).restarts, 0);
}
