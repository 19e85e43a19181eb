//! Integration tests of the daemon crate: the real [`pm2rs_daemon::serve`] run in-process on a
//! temporary home and a bound socket, driven over HTTP like the CLI drives it. One test binary, as
//! in the CLI crate.
//!
//! # Layout
//! - `serve`: one app's life through `serve` (ping, start, list, kill), with a small hyper client
//!   and a guard that kills every process the test saw.
//!
//! The supervisor reaps each instance by its own pid (a pidfd), and sweeps orphans only in a
//! child subreaper, which a test binary is not: more `serve`s, or tests that wait on children of
//! their own, can share this binary without stealing each other's exit statuses.

mod serve;
