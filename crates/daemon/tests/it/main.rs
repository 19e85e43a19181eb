//! Integration tests of the daemon crate: the real [`pm2rs_daemon::serve`] run in-process on a
//! temporary home and a bound socket, driven over HTTP like the CLI drives it. One test binary, as
//! in the CLI crate.
//!
//! # Layout
//! - `serve`: one app's life through `serve` (ping, start, list, kill), with a small hyper client
//!   and a guard that kills every process the test saw.
//! - `reaping`: the orphan sweep in a child subreaper (this test makes the whole binary one).
//!
//! The supervisor reaps each instance by its own pid (a pidfd), and the orphan sweep reaps only
//! zombies nobody watches outside the process's own group, so `serve`s and tests that wait on
//! children of their own (started the std way, in the test's group) can share this binary.

mod reaping;
mod serve;
