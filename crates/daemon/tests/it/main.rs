//! Integration tests of the daemon crate: the real [`pm2rs_daemon::serve`] run in-process on a
//! temporary home and a bound socket, driven over HTTP like the CLI drives it. One test binary, as
//! in the CLI crate.
//!
//! # Layout
//! - `serve`: one app's life through `serve` (ping, start, list, kill), with a small hyper client
//!   and a guard that kills every process the test saw.
//!
//! The supervisor reaps with `waitpid(-1)`: a second `serve` in this process, or a test here that
//! waits on children of its own, would have exit statuses stolen. Keep one such test per binary.

mod serve;
