//! Repository tasks for pm2rs, run as `cargo xtask <task>` (an alias defined in `.cargo/config.toml`).
//!
//! # Layout
//! - `bench`: `cargo xtask bench [--quick]` builds the release binary and measures it (CLI round trip,
//!   daemon memory, start and crash-replacement latency) against the targets of "what fast means" in
//!   the design notes. Prints a table and writes `target/bench/results.json`.
//! - `tidy` (tests only): repository rules checked by `cargo test -p xtask`, and so by
//!   `cargo test --workspace`: module docs, no debugging leftovers, workspace-managed dependencies,
//!   a clean repository root.

use std::process::ExitCode;

mod bench;
#[cfg(test)]
mod tidy;

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  bench [--quick] [--bin PATH]
                    build the release binary and measure it against the performance targets;
                    --quick repeats the timed scenarios fewer times;
                    --bin benches PATH instead of building target/release/pm2rs
  help              show this text

tidy rules are ordinary tests: cargo test -p xtask";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match task.as_str() {
        "bench" => match bench::Options::parse(rest) {
            Ok(options) => bench::main(&options),
            Err(message) => {
                eprintln!("error: {message}\n\n{USAGE}");
                ExitCode::from(2)
            }
        },
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("error: unknown task `{other}`\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
