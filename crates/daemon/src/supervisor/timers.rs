//! The supervisor's timers: a queue of any number of timers, each named by a key (an instance and
//! what the timer is for), and what each kind does when it is due.
//!
//! The queue is a `BTreeMap<(Instant, seq), key>` ordered by due time, plus the reverse map from
//! key to its slot, so setting, replacing and cancelling a timer are O(log n) and the loop sleeps
//! until the first one only: nothing scans every instance to find the next deadline. Setting a key
//! that is already set moves it; a key is due at most once per setting.
//!
//! Invariant: an instance's timers are cancelled by the transition that makes them meaningless
//! (a stop cancels the restart delay, listen timeout and watchdog; an exit cancels the kill
//! timeout, listen timeout and watchdog; removing an instance cancels all of them), so a timer
//! that fires always belongs to the state that set it.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;
use tracing::{info, warn};

use super::Supervisor;

/// What an instance's timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerKind {
    /// The restart delay ends: spawn again.
    RestartDelay,
    /// `kill_timeout` after the stop signal: SIGKILL the group.
    KillTimeout,
    /// The leader exited during a stop but its group or pipes are still there: check again.
    DrainRecheck,
    /// `listen_timeout` after the spawn of an instance that is still launching.
    ListenTimeout,
    /// `watchdog_timeout` since the last `WATCHDOG=1` of an online instance.
    Watchdog,
    /// The grace of a run of an unknown app that a previous daemon left is over: SIGKILL its
    /// group. Its id is not an instance's (see [`super::adopt`]).
    Retire,
    /// An app's `cron_restart` is due. Its id is the app's cron key, not an instance's (see
    /// [`super::cron`]), so it is not in [`TimerKind::ALL`].
    Cron,
}

impl TimerKind {
    /// The kinds of an instance's timers (what removing or renaming an instance moves).
    pub const ALL: [TimerKind; 6] = [
        TimerKind::RestartDelay,
        TimerKind::KillTimeout,
        TimerKind::DrainRecheck,
        TimerKind::ListenTimeout,
        TimerKind::Watchdog,
        TimerKind::Retire,
    ];
}

/// A timer's name: whose it is and what for: an instance id and a [`TimerKind`], or for a
/// per-app timer ([`TimerKind::Cron`]) the app's cron key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerKey {
    pub id: u32,
    pub kind: TimerKind,
}

/// How often a draining group is checked when nothing else tells us first.
pub(super) const DRAIN_RECHECK: Duration = Duration::from_millis(20);

/// A queue of timers named by keys of type `K`.
#[derive(Debug)]
pub struct Timers<K> {
    queue: BTreeMap<(Instant, u64), K>,
    slots: HashMap<K, (Instant, u64)>,
    seq: u64,
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            queue: BTreeMap::new(),
            slots: HashMap::new(),
            seq: 0,
        }
    }
}

impl<K: Copy + Eq + Hash> Timers<K> {
    /// Sets `key` to fire at `at`, replacing any earlier setting of it.
    pub fn set(&mut self, key: K, at: Instant) {
        self.cancel(key);
        self.seq += 1;
        self.queue.insert((at, self.seq), key);
        self.slots.insert(key, (at, self.seq));
    }

    /// Cancels `key`; whether it was set.
    pub fn cancel(&mut self, key: K) -> bool {
        match self.slots.remove(&key) {
            Some(slot) => {
                self.queue.remove(&slot);
                true
            }
            None => false,
        }
    }

    /// When `key` fires, if it is set.
    pub fn due(&self, key: K) -> Option<Instant> {
        self.slots.get(&key).map(|(at, _)| *at)
    }

    /// When the first timer fires.
    pub fn next(&self) -> Option<Instant> {
        self.queue.keys().next().map(|(at, _)| *at)
    }

    /// Takes the first timer due at or before `now` (in due order; equal times in setting order).
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        let entry = self.queue.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        let key = entry.remove();
        self.slots.remove(&key);
        Some(key)
    }

    /// How many timers are set.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.len()
    }
}

impl Timers<TimerKey> {
    /// Sets the `kind` timer of instance `id` to fire `after` from now.
    pub fn set_in(&mut self, id: u32, kind: TimerKind, after: Duration) {
        self.set(TimerKey { id, kind }, Instant::now() + after);
    }

    /// Cancels the `kind` timers of instance `id`.
    pub fn cancel_kinds(&mut self, id: u32, kinds: &[TimerKind]) {
        for &kind in kinds {
            self.cancel(TimerKey { id, kind });
        }
    }

    /// Cancels every timer of instance `id`.
    pub fn cancel_all(&mut self, id: u32) {
        self.cancel_kinds(id, &TimerKind::ALL);
    }

    /// Moves every timer of instance `from` to instance `to` (a reload's replacement takes the
    /// old instance's id).
    pub fn rename(&mut self, from: u32, to: u32) {
        self.cancel_all(to);
        for kind in TimerKind::ALL {
            let key = TimerKey { id: from, kind };
            if let Some(at) = self.due(key) {
                self.cancel(key);
                self.set(TimerKey { id: to, kind }, at);
            }
        }
    }
}

/// Sleeps until `at`, or forever.
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Supervisor {
    /// A timer is due.
    pub(super) fn on_timer(&mut self, TimerKey { id, kind }: TimerKey) {
        match kind {
            TimerKind::Retire => return self.retire_now(id),
            TimerKind::Cron => return self.on_cron(id),
            _ => {}
        }
        let Some(p) = self.instances.get_mut(&id) else {
            return;
        };
        self.dirty = true;
        match kind {
            TimerKind::RestartDelay => self.restart_now(id),
            TimerKind::KillTimeout => {
                if let Some(run) = p.run {
                    warn!(id, app = %p.app, "kill_timeout elapsed; sending SIGKILL to the group");
                    let _ = self.os.signal_group(run.tracked, Signal::SIGKILL);
                }
            }
            TimerKind::DrainRecheck => {
                if let Some(draining) = p.draining {
                    self.os.kill_group(draining.pgid);
                    self.timers
                        .set_in(id, TimerKind::DrainRecheck, DRAIN_RECHECK);
                }
                self.check_draining();
            }
            TimerKind::ListenTimeout => {
                let Some(app) = self.apps.get(&p.app) else {
                    return;
                };
                if p.replaces.is_some() {
                    // A reload does not hand traffic to an instance that never said so.
                    p.not_ready = true;
                } else {
                    info!(id, app = %p.app, "not ready within listen_timeout; online anyway");
                    let watchdog = super::exits::became_ready(p, &app.spec);
                    self.arm_watchdog(id, watchdog);
                }
            }
            TimerKind::Watchdog => {
                if let Some(run) = p.run {
                    let reason = "watchdog: no WATCHDOG=1 within watchdog_timeout; restarted";
                    warn!(id, app = %p.app, "{reason}");
                    p.reason = Some(reason.into());
                    let _ = self.os.signal_group(run.tracked, Signal::SIGKILL);
                }
            }
            // Handled before the instance lookup: not an instance's.
            TimerKind::Retire | TimerKind::Cron => {}
        }
    }

    /// Arms (or re-arms) the watchdog of an online instance, if its app has one.
    pub(super) fn arm_watchdog(&mut self, id: u32, timeout: Option<Duration>) {
        if let Some(timeout) = timeout {
            self.timers.set_in(id, TimerKind::Watchdog, timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn timers_fire_in_due_order_and_a_key_is_set_once() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut timers: Timers<(u32, TimerKind)> = Timers::default();
        timers.set((1, TimerKind::Watchdog), t0 + ms(30));
        timers.set((1, TimerKind::KillTimeout), t0 + ms(10));
        timers.set((2, TimerKind::KillTimeout), t0 + ms(10));
        // Two timers of one instance live side by side; setting one again moves it.
        timers.set((1, TimerKind::Watchdog), t0 + ms(20));
        assert_eq!(timers.len(), 3);
        assert_eq!(timers.next(), Some(t0 + ms(10)));
        assert_eq!(timers.pop_due(t0 + ms(5)), None);
        assert_eq!(
            timers.pop_due(t0 + ms(25)),
            Some((1, TimerKind::KillTimeout))
        );
        assert_eq!(
            timers.pop_due(t0 + ms(25)),
            Some((2, TimerKind::KillTimeout))
        );
        assert!(timers.cancel((1, TimerKind::Watchdog)));
        assert!(!timers.cancel((1, TimerKind::Watchdog)));
        assert_eq!(timers.pop_due(t0 + ms(100)), None);
        assert_eq!(timers.len(), 0);
        assert_eq!(timers.next(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn renaming_moves_every_timer_of_an_instance() {
        let mut timers: Timers<TimerKey> = Timers::default();
        timers.set_in(7, TimerKind::Watchdog, Duration::from_secs(3));
        timers.set_in(7, TimerKind::ListenTimeout, Duration::from_secs(1));
        timers.set_in(2, TimerKind::KillTimeout, Duration::from_secs(9));
        timers.rename(7, 2);
        let key = |id, kind| TimerKey { id, kind };
        assert_eq!(timers.due(key(7, TimerKind::Watchdog)), None);
        assert!(timers.due(key(2, TimerKind::Watchdog)).is_some());
        assert!(timers.due(key(2, TimerKind::ListenTimeout)).is_some());
        // The old instance's own timers went with it.
        assert_eq!(timers.due(key(2, TimerKind::KillTimeout)), None);
        assert_eq!(timers.len(), 2);
    }
}
