//! Integration tests of the daemon crate: the real [`pm2rs_daemon::serve`] run in-process on a
//! temporary home and a bound socket, driven over HTTP like the CLI drives it. One test binary, as
//! in the CLI crate; the orphan sweep has a binary of its own (`tests/reaping.rs`): it makes its
//! process a child subreaper, and a daemon served in the same process would sweep too and take
//! some of the orphans it counts.
//!
//! # Layout
//! - `serve`: one app's life through `serve` (ping, start, list, kill), with a small hyper client
//!   and a guard that kills every process the test saw.
//!
//! The supervisor reaps each instance by its own pid (a pidfd), and the orphan sweep reaps only
//! zombies nobody watches outside the process's own group, so `serve`s and tests that wait on
//! children of their own (started the std way, in the test's group) can share this binary.

mod serve;
