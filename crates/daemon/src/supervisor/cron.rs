//! Scheduled restarts (`cron_restart`): each app with a cron expression has one timer of kind
//! [`TimerKind::Cron`], named by the app's own cron key (not an instance id: an app's instances
//! come and go, are renamed by reloads, and may all be stopped), set for the expression's next
//! occurrence in the system's time zone.
//!
//! When it fires, the app's running instances are restarted gracefully, as the `restart` command
//! does (kill signal, kill timeout, start again, one more ↺), or for a cluster app or one with
//! `wait_ready`, replaced without downtime, as `reload` does; then the next occurrence is set.
//! The timer is on while the app is meant to run: `stop` of the whole app turns it off until the
//! next start, delete removes it, a changed spec sets it anew.
//!
//! Occurrences are computed from the wall clock ([`Os::wall_clock`](crate::os::Os::wall_clock)),
//! the timer set on tokio's monotonic clock for the time between, at most [`CRON_RECHECK`]: a
//! timer that fires before the wall clock has reached the occurrence (the clock was set back, or
//! the wait was cut to the recheck) is set again for what is left, so a suspend or a clock set
//! forward delays a restart by a minute at most. An occurrence fires once: the next one is looked
//! for after the later of now and the one that just fired.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use pm2rs_proto::{ExecMode, Status};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::timers::{TimerKey, TimerKind};
use super::{Pending, Supervisor, Then};
use crate::cluster::reload::Reload;

/// The longest a cron timer waits before the wall clock is read again.
pub(super) const CRON_RECHECK: Duration = Duration::from_secs(60);

/// The cron restart of one app.
#[derive(Debug)]
pub(super) struct CronRestart {
    schedule: Cron,
    /// Names the app's timer (`TimerKey::id` of kind [`TimerKind::Cron`]).
    key: u32,
    /// The occurrence the timer is set for; `None` while off.
    next: Option<SystemTime>,
    /// The last occurrence that fired.
    fired: Option<SystemTime>,
}

impl CronRestart {
    /// The schedule of `expression` (5 fields, 6 with seconds, or a `@nickname`), with timer key
    /// `key`; off until armed.
    pub(super) fn new(expression: &str, key: u32) -> Result<CronRestart, String> {
        let schedule = parse(expression)?;
        Ok(CronRestart {
            schedule,
            key,
            next: None,
            fired: None,
        })
    }

    /// The next run as Unix microseconds, while on.
    pub(super) fn next_us(&self) -> Option<u64> {
        self.next.map(unix_us)
    }
}

/// Parses a cron expression as the config crate validates it.
fn parse(expression: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expression)
        .map_err(|e| e.to_string())
}

/// The first occurrence of `schedule` strictly after `after`, in the system's time zone.
fn next_after(schedule: &Cron, after: SystemTime) -> Option<SystemTime> {
    let zoned = jiff::Timestamp::try_from(after)
        .ok()?
        .to_zoned(jiff::tz::TimeZone::system());
    let next = schedule.find_next_occurrence(&zoned, false).ok()?;
    Some(SystemTime::from(next.timestamp()))
}

fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Supervisor {
    /// Sets app `name`'s cron restart from its spec (replacing any earlier one), on unless the
    /// app is stopped.
    pub(super) fn set_cron(&mut self, name: &str) {
        self.disarm_cron(name);
        let key = self.next_cron_key;
        let Some(app) = self.apps.get_mut(name) else {
            return;
        };
        app.cron = match app.spec.cron_restart.as_deref() {
            None => None,
            Some(expression) => match CronRestart::new(expression, key) {
                Ok(cron) => {
                    self.next_cron_key = self.next_cron_key.wrapping_add(1);
                    Some(cron)
                }
                Err(e) => {
                    warn!(app = %name, %expression, %e, "cron_restart: invalid expression; no scheduled restarts");
                    None
                }
            },
        };
        if !app.stopped {
            self.arm_cron(name);
        }
    }

    /// Turns app `name`'s cron restart on, if it has one and it is off.
    pub(super) fn arm_cron(&mut self, name: &str) {
        let now = self.os.wall_clock();
        let Some(cron) = self.apps.get_mut(name).and_then(|a| a.cron.as_mut()) else {
            return;
        };
        if cron.next.is_some() {
            return;
        }
        let after = cron.fired.map_or(now, |fired| fired.max(now));
        let Some(next) = next_after(&cron.schedule, after) else {
            warn!(app = %name, "cron_restart: the expression matches no later date; no scheduled restarts");
            return;
        };
        cron.next = Some(next);
        let key = cron.key;
        self.set_cron_timer(key, next, now);
        self.dirty = true;
        debug!(app = %name, next_us = unix_us(next), "cron_restart scheduled");
    }

    /// Sets cron timer `key` for occurrence `next`, or for [`CRON_RECHECK`] if that is sooner.
    fn set_cron_timer(&mut self, key: u32, next: SystemTime, now: SystemTime) {
        let wait = next.duration_since(now).unwrap_or(Duration::ZERO);
        let key = TimerKey {
            id: key,
            kind: TimerKind::Cron,
        };
        self.timers
            .set(key, Instant::now() + wait.min(CRON_RECHECK));
    }

    /// Turns app `name`'s cron restart off (until [`Supervisor::arm_cron`]).
    pub(super) fn disarm_cron(&mut self, name: &str) {
        let Some(cron) = self.apps.get_mut(name).and_then(|a| a.cron.as_mut()) else {
            return;
        };
        if cron.next.take().is_some() {
            self.dirty = true;
        }
        self.timers.cancel(TimerKey {
            id: cron.key,
            kind: TimerKind::Cron,
        });
    }

    /// The cron timer `key` is due: once the wall clock has reached its occurrence, restart its
    /// app's running instances, then set the next one.
    pub(super) fn on_cron(&mut self, key: u32) {
        let now = self.os.wall_clock();
        let Some((name, app)) = self
            .apps
            .iter_mut()
            .find(|(_, a)| a.cron.as_ref().is_some_and(|c| c.key == key))
        else {
            return;
        };
        if let Some(next) = app.cron.as_ref().and_then(|c| c.next)
            && now < next
        {
            self.set_cron_timer(key, next, now);
            return;
        }
        let name = name.clone();
        if let Some(cron) = app.cron.as_mut() {
            cron.fired = cron.next.take().or(cron.fired);
        }
        self.dirty = true;
        self.restart_running(&name, "cron_restart");
        self.arm_cron(&name);
    }

    /// Restarts `name`'s running instances gracefully, for `cause` (`cron_restart`, `watch`), as
    /// the `restart` command does, or for a cluster app or one with `wait_ready`, by a reload
    /// without downtime; instances already in a reload are left to it.
    pub(super) fn restart_running(&mut self, name: &str, cause: &str) {
        let Some(app) = self.apps.get(name) else {
            return;
        };
        let graceful_reload = app.spec.exec_mode == ExecMode::Cluster || app.spec.wait_ready;
        let busy = |id: &u32| self.reloads.iter().any(|(job, _)| job.involves(*id));
        let running: Vec<u32> = self
            .counted_ids_of(name)
            .filter(|id| {
                self.instances
                    .get(id)
                    .is_some_and(|p| matches!(p.status, Status::Online | Status::Launching))
            })
            .filter(|id| !busy(id))
            .collect();
        if running.is_empty() {
            debug!(app = %name, "{cause}: nothing running to restart");
        } else if graceful_reload {
            info!(app = %name, instances = running.len(), "{cause}: restarting {name} (reload)");
            self.reloads.push((Reload::new(running, 1), None));
        } else {
            info!(app = %name, instances = running.len(), "{cause}: restarting {name}");
            self.stop_ids(&running);
            self.pending.push(Pending::new(running, Then::Start(None)));
        }
    }

    /// The next cron restart of every app whose cron is on, as Unix microseconds.
    pub(super) fn cron_next_us(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.apps.iter().filter_map(|(name, app)| {
            let next = app.cron.as_ref()?.next_us()?;
            Some((name.clone(), next))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_fields_parse_and_the_next_occurrence_is_strictly_later() {
        let every_second = parse("* * * * * *").expect("6 fields");
        let t = UNIX_EPOCH + Duration::from_millis(1_800_000_000_250);
        assert_eq!(
            next_after(&every_second, t),
            Some(UNIX_EPOCH + Duration::from_secs(1_800_000_001))
        );
        let on_the_second = UNIX_EPOCH + Duration::from_secs(1_800_000_001);
        assert_eq!(
            next_after(&every_second, on_the_second),
            Some(on_the_second + Duration::from_secs(1))
        );
        let every_minute = parse("* * * * *").expect("5 fields");
        let next = next_after(&every_minute, t).expect("a next minute");
        assert_eq!(unix_us(next) % 60_000_000, 0, "on a whole minute");
        assert!(next > t && next <= t + Duration::from_secs(60));
        assert!(parse("* * * *").is_err());
        assert!(parse("0 0 0 1 1 * 2030").is_err(), "no year field");
    }
}
