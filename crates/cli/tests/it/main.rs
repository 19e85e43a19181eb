//! Integration tests: the real `pm2rs` binary against a real daemon in a temp `PM2RS_HOME`, with real
//! child processes and signals. Every test owns a [`harness::Pm2rs`] whose drop kills the daemon and
//! everything it started, even when the test fails.
//!
//! # Layout
//! - `harness`: the per-test environment, CLI runner, polling with deadlines, cleanup guard.
//! - `daemon`: the daemon and its socket (start on first use, ping, kill, permissions, one per home).
//! - `apps`: app lifecycle through the CLI (start, list, crash, restart policy, stop, delete, scale).
//! - `logs`: log capture, rotation, `logs`/`flush`/`reload-logs`, formats, disk problems.
//! - `config`: ecosystem files through the CLI (errors change nothing, profiles, JSON).
//! - `cron`: `cron_restart` restarts a real app on time; describe shows the next run.
//! - `targets`: what commands act on: a known app's name before PATH, several targets, an
//!   ecosystem file as the target of stop/restart/reload/delete, `reset`.
//! - `cluster`: cluster mode, readiness and reload with real servers (Node, Python) on real sockets.
//! - `takeover`: apps outlive the daemon: kill -9 of the daemon and `pm2rs update` take the
//!   running instances over (same pids, no line lost, no refused connection).
//! - `http`: the load client those tests use.
//! - `watch`: `watch` with real files: a change restarts once, a burst once, ignored files and
//!   stopped apps never.
//! - `limits`: `max_memory_restart` against real memory hogs (the leader, or a child in its group).
//! - `boot`: `startup`/`unstartup` and their files (systemd units verified), the daemon's own
//!   sd_notify (`READY=1`, `STOPPING=1`, its `NOTIFY_SOCKET` kept from the apps).
//! - `state`: the dump: durable before the reply, kept by `kill`, `daemon --resurrect`, a
//!   reboot, corrupt and torn files, `save` and `resurrect`.

mod apps;
mod boot;
mod cluster;
mod config;
mod cron;
mod daemon;
mod harness;
mod http;
mod limits;
mod logs;
mod state;
mod takeover;
mod targets;
mod watch;
