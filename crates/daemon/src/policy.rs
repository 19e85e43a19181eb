//! Restart policy: a pure function from "how did this run end" to "what happens next".
//!
//! PM2 semantics: a run shorter than `min_uptime` is *unstable*; `max_restarts` unstable runs in a row
//! make the instance `errored`. A stable run resets that count (and the exponential backoff). Exit codes
//! in `stop_exit_codes` and `autorestart = false` end in `stopped`. The delay before a restart is either
//! the fixed `restart_delay` or, with `exp_backoff_restart_delay`, a delay that grows ×1.5 per
//! consecutive restart up to [`BACKOFF_CAP`].
//!
//! Nothing here reads a clock: the caller passes the run's uptime and schedules the returned delay.

use std::time::Duration;

use pm2rs_proto::AppSpec;

/// The longest delay exponential backoff grows to.
pub const BACKOFF_CAP: Duration = Duration::from_secs(15);
/// Growth factor of exponential backoff, as a fraction (3/2 = ×1.5).
const BACKOFF_NUM: u32 = 3;
const BACKOFF_DEN: u32 = 2;

/// The restart-related part of an [`AppSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    pub autorestart: bool,
    pub max_restarts: u32,
    pub min_uptime: Duration,
    pub restart_delay: Duration,
    pub exp_backoff: Option<Duration>,
    pub stop_exit_codes: Vec<i32>,
}

impl From<&AppSpec> for RestartPolicy {
    fn from(spec: &AppSpec) -> Self {
        RestartPolicy {
            autorestart: spec.autorestart,
            max_restarts: spec.max_restarts,
            min_uptime: Duration::from_millis(spec.min_uptime_ms),
            restart_delay: Duration::from_millis(spec.restart_delay_ms),
            exp_backoff: spec.exp_backoff_restart_delay_ms.map(Duration::from_millis),
            stop_exit_codes: spec.stop_exit_codes.clone(),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The process exited with this code.
    Code(i32),
    /// The process was killed by this signal number.
    Signal(i32),
    /// It ended, but its status is its parent's to know: a process the daemon took over without
    /// being its parent. Counts as a crash.
    Unknown,
}

/// What the policy remembers between runs of one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestartHistory {
    /// Unstable runs in a row.
    pub unstable_restarts: u32,
    /// The delay used for the previous backoff restart, if the last restart was a backoff one.
    pub last_backoff: Option<Duration>,
}

/// What to do after a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start the instance again after this delay (zero = now).
    Restart { delay: Duration },
    /// Leave it stopped; the reason is shown to the user.
    Stop { reason: String },
    /// Give up; the reason is shown to the user.
    Errored { reason: String },
}

/// Decides what follows a run that ended on its own (not by a stop request), and updates `history`.
pub fn decide(
    policy: &RestartPolicy,
    history: &mut RestartHistory,
    exit: ExitReason,
    uptime: Duration,
) -> Decision {
    let stable = uptime >= policy.min_uptime;
    if stable {
        history.unstable_restarts = 0;
        history.last_backoff = None;
    }
    if let ExitReason::Code(code) = exit
        && policy.stop_exit_codes.contains(&code)
    {
        return Decision::Stop {
            reason: format!("exited with code {code}, listed in stop_exit_codes"),
        };
    }
    if !policy.autorestart {
        return Decision::Stop {
            reason: "exited and autorestart is off".to_string(),
        };
    }
    if !stable {
        history.unstable_restarts = history.unstable_restarts.saturating_add(1);
        if history.unstable_restarts > policy.max_restarts {
            return Decision::Errored {
                reason: format!(
                    "{} unstable restarts in a row (each run shorter than min_uptime {} ms); \
                     max_restarts is {}",
                    history.unstable_restarts - 1,
                    policy.min_uptime.as_millis(),
                    policy.max_restarts
                ),
            };
        }
    }
    let delay = match policy.exp_backoff {
        None => policy.restart_delay,
        Some(initial) => {
            let next = match history.last_backoff {
                None => initial,
                Some(prev) => prev * BACKOFF_NUM / BACKOFF_DEN,
            };
            let next = next.min(BACKOFF_CAP).max(initial.min(BACKOFF_CAP));
            history.last_backoff = Some(next);
            next
        }
    };
    Decision::Restart { delay }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            autorestart: true,
            max_restarts: 3,
            min_uptime: Duration::from_millis(1000),
            restart_delay: Duration::ZERO,
            exp_backoff: None,
            stop_exit_codes: vec![],
        }
    }

    const SHORT: Duration = Duration::from_millis(10);
    const LONG: Duration = Duration::from_secs(5);

    #[test]
    fn crash_after_stable_run_restarts_immediately_and_resets_count() {
        let mut h = RestartHistory {
            unstable_restarts: 2,
            last_backoff: None,
        };
        let d = decide(&policy(), &mut h, ExitReason::Code(1), LONG);
        assert_eq!(
            d,
            Decision::Restart {
                delay: Duration::ZERO
            }
        );
        assert_eq!(h.unstable_restarts, 0);
    }

    #[test]
    fn max_restarts_unstable_runs_then_errored() {
        let p = policy();
        let mut h = RestartHistory::default();
        for i in 1..=3 {
            let d = decide(&p, &mut h, ExitReason::Code(1), SHORT);
            assert!(matches!(d, Decision::Restart { .. }), "run {i}: {d:?}");
            assert_eq!(h.unstable_restarts, i);
        }
        let d = decide(&p, &mut h, ExitReason::Code(1), SHORT);
        match d {
            Decision::Errored { reason } => {
                assert!(reason.contains("max_restarts is 3"), "{reason}")
            }
            other => panic!("expected errored, got {other:?}"),
        }
    }

    #[test]
    fn max_restarts_zero_errors_on_first_unstable_exit() {
        let p = RestartPolicy {
            max_restarts: 0,
            ..policy()
        };
        let d = decide(
            &p,
            &mut RestartHistory::default(),
            ExitReason::Signal(9),
            SHORT,
        );
        assert!(matches!(d, Decision::Errored { .. }), "{d:?}");
    }

    #[test]
    fn stop_exit_codes_and_autorestart_off_stop() {
        let p = RestartPolicy {
            stop_exit_codes: vec![0, 3],
            ..policy()
        };
        let d = decide(
            &p,
            &mut RestartHistory::default(),
            ExitReason::Code(3),
            LONG,
        );
        assert!(matches!(d, Decision::Stop { .. }), "{d:?}");
        let d = decide(
            &p,
            &mut RestartHistory::default(),
            ExitReason::Code(4),
            LONG,
        );
        assert!(matches!(d, Decision::Restart { .. }), "{d:?}");
        // A signal is never an exit code.
        let d = decide(
            &p,
            &mut RestartHistory::default(),
            ExitReason::Signal(3),
            LONG,
        );
        assert!(matches!(d, Decision::Restart { .. }), "{d:?}");

        let p = RestartPolicy {
            autorestart: false,
            ..policy()
        };
        let d = decide(
            &p,
            &mut RestartHistory::default(),
            ExitReason::Code(0),
            LONG,
        );
        assert!(matches!(d, Decision::Stop { .. }), "{d:?}");
    }

    #[test]
    fn fixed_restart_delay_is_used() {
        let p = RestartPolicy {
            restart_delay: Duration::from_millis(250),
            ..policy()
        };
        let d = decide(
            &p,
            &mut RestartHistory::default(),
            ExitReason::Code(1),
            LONG,
        );
        assert_eq!(
            d,
            Decision::Restart {
                delay: Duration::from_millis(250)
            }
        );
    }

    #[test]
    fn exponential_backoff_grows_by_half_caps_at_15s_and_resets_after_stable_run() {
        let p = RestartPolicy {
            exp_backoff: Some(Duration::from_millis(100)),
            max_restarts: 1000,
            ..policy()
        };
        let mut h = RestartHistory::default();
        let mut delays = vec![];
        for _ in 0..20 {
            match decide(&p, &mut h, ExitReason::Code(1), SHORT) {
                Decision::Restart { delay } => delays.push(delay.as_millis()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(&delays[..4], &[100, 150, 225, 337]);
        assert!(delays.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*delays.last().unwrap_or(&0), 15_000);
        // A stable run starts over from the initial delay.
        let d = decide(&p, &mut h, ExitReason::Code(1), LONG);
        assert_eq!(
            d,
            Decision::Restart {
                delay: Duration::from_millis(100)
            }
        );
    }
}
