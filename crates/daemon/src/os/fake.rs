//! A fake [`Os`] for the supervisor's paused-time tests: a table of pretend processes with pids
//! from 1,000,000 up, each behaving as its app was told to (exit on the stop signal or ignore
//! it, leave a group member behind, let an escaped process hold the log pipes). Everything asked
//! of it is recorded with the (paused) time it was asked at. It holds the real pipe ends the
//! supervisor hands a spawn, so the log drains see end of file when a pretend process "exits".
//!
//! [`FakeOs`] goes into the supervisor; [`FakeHandle`], a clone of the same table, stays with the
//! test to make processes exit and to read what happened.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Exit, Os};
use crate::policy::ExitReason;
use crate::process::{SpawnInput, Tracked};

/// How the processes of one app behave.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// Only SIGKILL ends it (it ignores the stop signal).
    pub ignores_stop: bool,
    /// A member of its group outlives the leader until SIGKILLed.
    pub leaves_member: bool,
    /// A process outside the group (setsid) keeps the log pipes open after the leader is gone.
    pub pipes_escape: bool,
    /// The member left behind closed its stdout and stderr (its pipes close with the leader).
    pub member_closed_stdio: bool,
    /// The member left behind survives SIGKILL until the test ends it (a process stuck in the
    /// kernel, say on a dead NFS mount).
    pub member_survives_kill: bool,
    /// The spawn fails (as a missing executable would).
    pub spawn_fails: bool,
}

/// Something the supervisor asked of the fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    Spawn { app: String, slot: u32, pid: Pid },
    Signal { pid: Pid, signal: Signal },
}

/// One pretend process group.
#[derive(Debug)]
pub struct FakeProcess {
    pub app: String,
    pub slot: u32,
    pub leader_alive: bool,
    pub member_alive: bool,
    behaviour: Behaviour,
    /// The write ends of its stdout and stderr, held while someone could still write.
    pipes: Option<(OwnedFd, OwnedFd)>,
}

#[derive(Debug, Default)]
struct Table {
    next_pid: i32,
    processes: BTreeMap<Pid, FakeProcess>,
    behaviours: HashMap<String, Behaviour>,
    asked: Vec<(Instant, Asked)>,
    /// How far the wall clock was set forward (a suspend, a clock change).
    wall_shift: std::time::Duration,
}

/// The fake, as the supervisor holds it.
pub struct FakeOs {
    table: Arc<Mutex<Table>>,
    exits: mpsc::Sender<Exit>,
    /// When it was made, on the paused clock: its wall clock reads [`FAKE_WALL_START`] then.
    made: Instant,
}

/// The fake's wall clock when it is made: 2027-01-15 08:00:00.25 UTC, a quarter second past a
/// whole second, so that the cron occurrences of a test are known exactly.
pub const FAKE_WALL_START_MS: u64 = 1_800_000_000_250;

/// [`FAKE_WALL_START_MS`] as a time.
pub fn fake_wall_start() -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_millis(FAKE_WALL_START_MS)
}

/// The fake, as the test holds it.
#[derive(Clone)]
pub struct FakeHandle {
    table: Arc<Mutex<Table>>,
    exits: mpsc::Sender<Exit>,
}

/// A fake and the test's handle on it; exits go to `exits`.
pub fn new(exits: mpsc::Sender<Exit>) -> (FakeOs, FakeHandle) {
    let table = Arc::new(Mutex::new(Table {
        next_pid: 1_000_000,
        ..Table::default()
    }));
    (
        FakeOs {
            table: table.clone(),
            exits: exits.clone(),
            made: Instant::now(),
        },
        FakeHandle { table, exits },
    )
}

fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    table
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FakeProcess {
    /// SIGKILL reaches the member of the group (which may survive it, if told to).
    fn kill_member(&mut self) {
        if !self.behaviour.member_survives_kill {
            self.member_alive = false;
            self.close_pipes_if_gone();
        }
    }

    /// Nobody is left to write: the pipes close (unless an escaped process holds them).
    fn close_pipes_if_gone(&mut self) {
        let member_writes = self.member_alive && !self.behaviour.member_closed_stdio;
        if !self.leader_alive && !member_writes && !self.behaviour.pipes_escape {
            self.pipes = None;
        }
    }
}

impl Table {
    /// The leader of `pid` ends with `reason`; its exit is reported.
    fn leader_exits(&mut self, pid: Pid, reason: ExitReason, exits: &mpsc::Sender<Exit>) {
        let Some(p) = self.processes.get_mut(&pid) else {
            return;
        };
        if !p.leader_alive {
            return;
        }
        p.leader_alive = false;
        p.close_pipes_if_gone();
        exits
            .try_send(Exit { pid, reason })
            .expect("the exit channel has room in tests");
    }
}

impl FakeHandle {
    /// From now on, processes of `app` behave so.
    pub fn behave(&self, app: &str, behaviour: Behaviour) {
        lock(&self.table)
            .behaviours
            .insert(app.to_string(), behaviour);
    }

    /// A process a previous daemon left running (not spawned by this fake): its pid and the
    /// read ends of its stdout and stderr pipes, as the fd keeper would hand them back.
    pub fn left_running(&self, app: &str, slot: u32) -> (Pid, OwnedFd, OwnedFd) {
        let mut table = lock(&self.table);
        let behaviour = table.behaviours.get(app).copied().unwrap_or_default();
        let pid = Pid::from_raw(table.next_pid);
        table.next_pid += 1;
        let (out_read, out_write) = nix::unistd::pipe().expect("a pipe");
        let (err_read, err_write) = nix::unistd::pipe().expect("a pipe");
        table.processes.insert(
            pid,
            FakeProcess {
                app: app.to_string(),
                slot,
                leader_alive: true,
                member_alive: behaviour.leaves_member,
                behaviour,
                pipes: Some((out_write, err_write)),
            },
        );
        (pid, out_read, err_read)
    }

    /// The leader of `pid` exits on its own.
    pub fn exit(&self, pid: Pid, reason: ExitReason) {
        lock(&self.table).leader_exits(pid, reason, &self.exits);
    }

    /// An exit of `pid` is reported, whatever the table says (a stale or foreign process).
    pub fn report_exit(&self, pid: Pid, reason: ExitReason) {
        self.exits
            .try_send(Exit { pid, reason })
            .expect("the exit channel has room in tests");
    }

    /// The member left behind in the group of `pid` finally dies.
    pub fn end_member(&self, pid: Pid) {
        if let Some(p) = lock(&self.table).processes.get_mut(&pid) {
            p.member_alive = false;
            p.close_pipes_if_gone();
        }
    }

    /// The escaped process of `pid` closes the log pipes (it ends).
    pub fn close_pipes(&self, pid: Pid) {
        if let Some(p) = lock(&self.table).processes.get_mut(&pid) {
            p.pipes = None;
        }
    }

    /// Writes `bytes` to the stdout pipe of `pid` (false if its pipes are closed).
    pub fn write_stdout(&self, pid: Pid, bytes: &[u8]) -> bool {
        let table = lock(&self.table);
        let Some((out, _)) = table.processes.get(&pid).and_then(|p| p.pipes.as_ref()) else {
            return false;
        };
        nix::unistd::write(out, bytes).is_ok()
    }

    /// Sets the wall clock forward by `by`, as a suspend or a clock change would (the paused
    /// clock does not move).
    pub fn shift_wall_clock(&self, by: std::time::Duration) {
        lock(&self.table).wall_shift += by;
    }

    /// Pids of the live leaders of `app`, oldest first.
    pub fn running(&self, app: &str) -> Vec<Pid> {
        lock(&self.table)
            .processes
            .iter()
            .filter(|(_, p)| p.app == app && p.leader_alive)
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// Whether anything of the group `pid` is alive.
    pub fn group_alive(&self, pid: Pid) -> bool {
        lock(&self.table)
            .processes
            .get(&pid)
            .is_some_and(|p| p.leader_alive || p.member_alive)
    }

    /// Everything asked so far, with when.
    pub fn asked(&self) -> Vec<(Instant, Asked)> {
        lock(&self.table).asked.clone()
    }

    /// When each spawn of `app` happened.
    pub fn spawn_times(&self, app: &str) -> Vec<Instant> {
        self.asked()
            .into_iter()
            .filter_map(|(at, a)| match a {
                Asked::Spawn { app: a, .. } if a == app => Some(at),
                _ => None,
            })
            .collect()
    }

    /// The signals sent to the group `pid`, with when.
    pub fn signals(&self, pid: Pid) -> Vec<(Instant, Signal)> {
        self.asked()
            .into_iter()
            .filter_map(|(at, a)| match a {
                Asked::Signal { pid: p, signal } if p == pid => Some((at, signal)),
                _ => None,
            })
            .collect()
    }
}

impl Os for FakeOs {
    fn spawn(&mut self, input: SpawnInput<'_>) -> io::Result<Tracked> {
        let mut table = lock(&self.table);
        let app = input.spec.name.clone();
        let behaviour = table.behaviours.get(&app).copied().unwrap_or_default();
        if behaviour.spawn_fails {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let pid = Pid::from_raw(table.next_pid);
        table.next_pid += 1;
        table.asked.push((
            Instant::now(),
            Asked::Spawn {
                app: app.clone(),
                slot: input.instance,
                pid,
            },
        ));
        table.processes.insert(
            pid,
            FakeProcess {
                app,
                slot: input.instance,
                leader_alive: true,
                member_alive: behaviour.leaves_member,
                behaviour,
                pipes: Some((input.stdout, input.stderr)),
            },
        );
        Ok(Tracked {
            pid,
            start_ticks: 0,
        })
    }

    fn watch(&mut self, tracked: Tracked) -> io::Result<()> {
        if lock(&self.table)
            .processes
            .get(&tracked.pid)
            .is_some_and(|p| p.leader_alive)
        {
            Ok(())
        } else {
            Err(io::Error::from(io::ErrorKind::NotFound))
        }
    }

    fn signal_group(&mut self, tracked: Tracked, signal: Signal) -> nix::Result<()> {
        let mut table = lock(&self.table);
        let pid = tracked.pid;
        table
            .asked
            .push((Instant::now(), Asked::Signal { pid, signal }));
        let Some(p) = table.processes.get_mut(&pid) else {
            return Err(Errno::ESRCH);
        };
        let kill = signal == Signal::SIGKILL;
        if kill {
            p.kill_member();
        }
        if kill || !p.behaviour.ignores_stop {
            let exits = self.exits.clone();
            table.leader_exits(pid, ExitReason::Signal(signal as i32), &exits);
        }
        Ok(())
    }

    fn kill_group(&mut self, pgid: Pid) {
        let mut table = lock(&self.table);
        table.asked.push((
            Instant::now(),
            Asked::Signal {
                pid: pgid,
                signal: Signal::SIGKILL,
            },
        ));
        if let Some(p) = table.processes.get_mut(&pgid) {
            p.kill_member();
        }
    }

    fn group_alive(&self, pgid: Pid) -> bool {
        lock(&self.table)
            .processes
            .get(&pgid)
            .is_some_and(|p| p.leader_alive || p.member_alive)
    }

    fn group_of(&self, pid: Pid) -> Option<Pid> {
        lock(&self.table)
            .processes
            .contains_key(&pid)
            .then_some(pid)
    }

    /// Moves with the paused clock, from [`fake_wall_start`], plus what the test set it forward.
    fn wall_clock(&self) -> SystemTime {
        fake_wall_start() + (Instant::now() - self.made) + lock(&self.table).wall_shift
    }
}
