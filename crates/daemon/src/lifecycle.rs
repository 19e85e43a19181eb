//! The lifecycle table: which status an instance moves to on which event, and nothing else.
//!
//! Every status change in the supervisor goes through [`next`], so the allowed transitions can be read
//! in one place (and tested as a table). An event that is not allowed from the current status returns
//! `None`; the supervisor logs it and leaves the status unchanged.

use pm2rs_proto::Status;

/// Something that happened to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A process was spawned for it.
    Spawned,
    /// The process became ready.
    Ready,
    /// The process could not be spawned.
    SpawnFailed,
    /// The user asked it to stop.
    StopRequested,
    /// Its process exited while it was being stopped.
    StoppedExit,
    /// Its process exited on its own and the policy says: restart after a delay.
    ExitedRestart,
    /// Its process exited on its own and the policy says: stay stopped.
    ExitedStop,
    /// Its process exited on its own and the policy says: give up.
    ExitedErrored,
    /// The restart delay ran out (it is about to be spawned again).
    DelayElapsed,
    /// The user asked it to start (from stopped or errored).
    StartRequested,
    /// The daemon is ending with the instance still running: its group was SIGKILLed.
    KilledAtExit,
    /// A new daemon took over its running process from one that died or was replaced.
    TakenOver,
}

/// The status after `event` in `from`, or `None` when the event is not allowed there.
pub fn next(from: Status, event: Event) -> Option<Status> {
    use Event as E;
    use Status as S;
    Some(match (from, event) {
        (S::Launching | S::WaitingRestart | S::Stopped | S::Errored, E::Spawned) => S::Launching,
        (S::Launching, E::Ready) => S::Online,
        (S::Launching, E::SpawnFailed) => S::Errored,
        (S::Launching | S::Online, E::StopRequested) => S::Stopping,
        (S::Stopping, E::StopRequested) => S::Stopping,
        (S::WaitingRestart | S::Stopped | S::Errored, E::StopRequested) => S::Stopped,
        (S::Stopping, E::StoppedExit) => S::Stopped,
        (S::Launching | S::Online, E::ExitedRestart) => S::WaitingRestart,
        (S::Launching | S::Online, E::ExitedStop) => S::Stopped,
        (S::Launching | S::Online, E::ExitedErrored) => S::Errored,
        (S::WaitingRestart, E::DelayElapsed) => S::Launching,
        (S::Stopped | S::Errored, E::StartRequested) => S::Launching,
        (S::Launching | S::Online | S::Stopping, E::KilledAtExit) => S::Stopped,
        (S::Stopped, E::TakenOver) => S::Online,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Event as E;
    use Status as S;

    const ALL: [S; 6] = [
        S::Launching,
        S::Online,
        S::Stopping,
        S::Stopped,
        S::WaitingRestart,
        S::Errored,
    ];

    #[test]
    fn happy_path_and_crash_loop() {
        assert_eq!(next(S::Stopped, E::StartRequested), Some(S::Launching));
        assert_eq!(next(S::Launching, E::Ready), Some(S::Online));
        assert_eq!(next(S::Online, E::ExitedRestart), Some(S::WaitingRestart));
        assert_eq!(next(S::WaitingRestart, E::DelayElapsed), Some(S::Launching));
        assert_eq!(next(S::Online, E::ExitedErrored), Some(S::Errored));
        assert_eq!(next(S::Online, E::StopRequested), Some(S::Stopping));
        assert_eq!(next(S::Stopping, E::StoppedExit), Some(S::Stopped));
    }

    #[test]
    fn a_process_that_is_not_running_cannot_exit_or_become_ready() {
        for from in [S::Stopped, S::Errored, S::WaitingRestart] {
            for ev in [
                E::Ready,
                E::ExitedRestart,
                E::ExitedStop,
                E::ExitedErrored,
                E::StoppedExit,
            ] {
                assert_eq!(next(from, ev), None, "{from:?} + {ev:?}");
            }
        }
    }

    #[test]
    fn stop_is_accepted_from_every_status_and_never_leads_to_running() {
        for from in ALL {
            let to = next(from, E::StopRequested);
            assert!(
                matches!(to, Some(S::Stopping | S::Stopped)),
                "{from:?} -> {to:?}"
            );
        }
    }

    #[test]
    fn online_is_reached_only_through_ready() {
        for from in ALL {
            for ev in [
                E::Spawned,
                E::SpawnFailed,
                E::StopRequested,
                E::StoppedExit,
                E::ExitedRestart,
                E::ExitedStop,
                E::ExitedErrored,
                E::DelayElapsed,
                E::StartRequested,
                E::KilledAtExit,
            ] {
                assert_ne!(next(from, ev), Some(S::Online), "{from:?} + {ev:?}");
            }
        }
    }
}
