//! The rolling reload as a state machine: replace instances `parallel` at a time; for each, start a
//! new instance in the same slot, wait until it is ready, then stop the old one gracefully. If a new
//! one fails (exits, or is not ready within `listen_timeout`), it is stopped and discarded, the old
//! one keeps serving, nothing more is replaced and the reload reports which instance failed.
//!
//! The job owns no instance: it asks its [`Host`] (the supervisor) to act and to say what the
//! instances are doing, so every status change still goes through the supervisor's lifecycle table.

use std::collections::VecDeque;

/// What the reload sees of a new instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewState {
    Ready,
    Waiting,
    Failed(String),
}

/// The supervisor, as a reload job uses it.
pub trait Host {
    /// Starts a replacement of running instance `old` in its slot; `None` if `old` is gone or not
    /// running (nothing to replace).
    fn start_replacement(&mut self, old: u32) -> Option<u32>;
    /// How the new instance `new` is doing.
    fn state(&self, new: u32) -> NewState;
    /// Asks instance `id` to stop gracefully.
    fn stop(&mut self, id: u32);
    /// Whether `id` has stopped (or is gone).
    fn settled(&self, id: u32) -> bool;
    /// Whether `id` is running (launching or online): not stopping, not settled.
    fn running(&self, id: u32) -> bool;
    /// `old` has stopped: forget it, `new` takes its place (and its id). False when `old` is
    /// gone (deleted meanwhile, say by a scale-down): then `new` has no place to take and the
    /// job stops and discards it.
    fn finish(&mut self, old: u32, new: u32) -> bool;
    /// `new` failed and has stopped: forget it.
    fn discard(&mut self, new: u32);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The new instance is starting; the old one serves.
    Starting,
    /// The new one is ready; the old one is stopping.
    Stopping,
    /// The new one failed and is being stopped.
    Aborting,
}

#[derive(Debug)]
struct Swap {
    old: u32,
    new: u32,
    phase: Phase,
}

/// One `reload` command in progress.
#[derive(Debug)]
pub struct Reload {
    queue: VecDeque<u32>,
    active: Vec<Swap>,
    parallel: usize,
    /// Ids replaced so far (each keeps its id).
    pub replaced: Vec<u32>,
    /// Why the reload stopped early, if it did.
    pub failure: Option<String>,
}

impl Reload {
    /// A reload of the instances `ids`, `parallel` at a time (at least 1).
    pub fn new(ids: Vec<u32>, parallel: u32) -> Reload {
        Reload {
            queue: ids.into(),
            active: Vec::new(),
            parallel: parallel.max(1) as usize,
            replaced: Vec::new(),
            failure: None,
        }
    }

    /// Whether instance `id` is waiting to be replaced, or is being replaced or replacing.
    pub fn involves(&self, id: u32) -> bool {
        self.queue.contains(&id) || self.active.iter().any(|s| s.old == id || s.new == id)
    }

    /// Moves the reload forward as far as the instances allow; true once it is over.
    pub fn advance(&mut self, host: &mut impl Host) -> bool {
        loop {
            let mut progressed = false;
            for swap in &mut self.active {
                match swap.phase {
                    Phase::Starting => match host.state(swap.new) {
                        NewState::Ready => {
                            host.stop(swap.old);
                            swap.phase = Phase::Stopping;
                            progressed = true;
                        }
                        NewState::Waiting => {}
                        NewState::Failed(why) => {
                            self.failure.get_or_insert(why);
                            host.stop(swap.new);
                            swap.phase = Phase::Aborting;
                            progressed = true;
                        }
                    },
                    // Asked to stop, but started again by another command meanwhile (a
                    // `restart` of the same app): ask again, or this reload would wait forever.
                    Phase::Stopping if host.running(swap.old) => host.stop(swap.old),
                    Phase::Aborting if host.running(swap.new) => host.stop(swap.new),
                    Phase::Stopping | Phase::Aborting => {}
                }
            }
            // A failure stops every new instance that is not ready yet.
            if self.failure.is_some() {
                for swap in &mut self.active {
                    if swap.phase == Phase::Starting {
                        host.stop(swap.new);
                        swap.phase = Phase::Aborting;
                    }
                }
                self.queue.clear();
            }
            let mut i = 0;
            while i < self.active.len() {
                let swap = &self.active[i];
                match swap.phase {
                    Phase::Stopping if host.settled(swap.old) => {
                        let (old, new) = (swap.old, swap.new);
                        if host.finish(old, new) {
                            self.replaced.push(old);
                            self.active.swap_remove(i);
                        } else {
                            host.stop(new);
                            self.active[i].phase = Phase::Aborting;
                            i += 1;
                        }
                        progressed = true;
                    }
                    Phase::Aborting if host.settled(swap.new) => {
                        host.discard(swap.new);
                        self.active.swap_remove(i);
                        progressed = true;
                    }
                    _ => i += 1,
                }
            }
            while self.active.len() < self.parallel
                && let Some(old) = self.queue.pop_front()
            {
                if let Some(new) = host.start_replacement(old) {
                    self.active.push(Swap {
                        old,
                        new,
                        phase: Phase::Starting,
                    });
                    progressed = true;
                }
            }
            if self.active.is_empty() && self.queue.is_empty() {
                return true;
            }
            if !progressed {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Instances as plain values: enough to check the order of steps the job asks for.
    #[derive(Default)]
    struct Fake {
        next: u32,
        /// id → (ready/failed/waiting, stopping, settled)
        states: BTreeMap<u32, (NewState, bool)>,
        /// Instances started again by someone else after the job asked them to stop.
        running: Vec<u32>,
        log: Vec<String>,
    }

    impl Host for Fake {
        fn start_replacement(&mut self, old: u32) -> Option<u32> {
            self.next += 1;
            let new = 100 + self.next;
            self.states.insert(new, (NewState::Waiting, false));
            self.log.push(format!("start {new} for {old}"));
            Some(new)
        }
        fn state(&self, new: u32) -> NewState {
            self.states[&new].0.clone()
        }
        fn stop(&mut self, id: u32) {
            self.log.push(format!("stop {id}"));
        }
        fn settled(&self, id: u32) -> bool {
            self.states.get(&id).is_none_or(|s| s.1)
        }
        fn running(&self, id: u32) -> bool {
            self.running.contains(&id)
        }
        fn finish(&mut self, old: u32, new: u32) -> bool {
            self.log.push(format!("finish {old}<-{new}"));
            true
        }
        fn discard(&mut self, new: u32) {
            self.log.push(format!("discard {new}"));
        }
    }

    #[test]
    fn one_at_a_time_new_ready_before_old_stops() {
        let mut host = Fake::default();
        for old in [1, 2] {
            host.states.insert(old, (NewState::Ready, false));
        }
        let mut job = Reload::new(vec![1, 2], 1);
        assert!(!job.advance(&mut host));
        assert_eq!(host.log, ["start 101 for 1"]);
        assert!(job.involves(1) && job.involves(101) && job.involves(2));
        assert!(!job.involves(3));
        host.states.insert(101, (NewState::Ready, false));
        assert!(!job.advance(&mut host));
        assert_eq!(host.log[1..], ["stop 1"]);
        host.states.insert(1, (NewState::Ready, true));
        assert!(!job.advance(&mut host));
        assert_eq!(host.log[2..], ["finish 1<-101", "start 102 for 2"]);
        host.states.insert(102, (NewState::Ready, false));
        host.states.insert(2, (NewState::Ready, true));
        assert!(job.advance(&mut host));
        assert_eq!(host.log[4..], ["stop 2", "finish 2<-102"]);
        assert_eq!(job.replaced, [1, 2]);
        assert!(job.failure.is_none());
    }

    #[test]
    fn a_new_instance_that_fails_is_discarded_and_nothing_more_is_replaced() {
        let mut host = Fake::default();
        let mut job = Reload::new(vec![1, 2, 3], 2);
        job.advance(&mut host);
        assert_eq!(host.log, ["start 101 for 1", "start 102 for 2"]);
        host.states
            .insert(101, (NewState::Failed("not ready".into()), false));
        assert!(!job.advance(&mut host));
        assert_eq!(host.log[2..], ["stop 101", "stop 102"]);
        host.states.insert(101, (NewState::Waiting, true));
        host.states.insert(102, (NewState::Waiting, true));
        assert!(job.advance(&mut host));
        assert!(
            host.log
                .iter()
                .all(|l| !l.starts_with("stop 1 ") && l != "stop 1")
        );
        assert_eq!(job.failure.as_deref(), Some("not ready"));
        assert!(job.replaced.is_empty());
    }

    #[test]
    fn an_old_instance_started_again_meanwhile_is_asked_to_stop_again() {
        let mut host = Fake::default();
        host.states.insert(1, (NewState::Ready, false));
        let mut job = Reload::new(vec![1], 1);
        job.advance(&mut host);
        host.states.insert(101, (NewState::Ready, false));
        job.advance(&mut host);
        assert_eq!(host.log, ["start 101 for 1", "stop 1"]);
        // A `restart` of the app started the old instance again before it had stopped.
        host.running.push(1);
        assert!(!job.advance(&mut host));
        assert_eq!(host.log[2..], ["stop 1"]);
        host.running.clear();
        host.states.insert(1, (NewState::Ready, true));
        assert!(job.advance(&mut host));
        assert_eq!(host.log[3..], ["finish 1<-101"]);
    }
}
