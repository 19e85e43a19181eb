//! Repository tasks for pm2rs, run as `cargo xtask <task>` (an alias defined in `.cargo/config.toml`).
//!
//! # Layout
//! - `bench`: `cargo xtask bench [--compare pm2] [--quick]` builds the release binary and measures it
//!   (CLI round trip, daemon memory and idle CPU, start, crash-replacement and restart latency,
//!   cluster throughput and failed requests during reload, take-over, memory-limit reaction)
//!   against the targets of "what fast means" in the design notes, and with `--compare pm2` side by
//!   side with PM2 (installed with npm under `target/bench/`). Prints a Markdown table and writes
//!   `target/bench/results.md` and `target/bench/results.json`.
//! - `ci`: `cargo xtask ci` is the whole check CI runs: formatting, clippy with warnings denied, and
//!   every test of the workspace (unit, integration, tidy), in that order, stopping at the first failure.
//! - `tidy` (tests only): repository rules checked by `cargo test -p xtask`, and so by
//!   `cargo test --workspace`: module docs, no debugging leftovers, workspace-managed dependencies,
//!   a clean repository root, and an architecture page that names only what exists in the code
//!   (`tidy/doc_names.rs`).

use std::process::ExitCode;

mod bench;
#[cfg(test)]
mod tidy;

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  bench [--compare pm2] [--quick] [--rounds N] [--suite NAME] [--bin PATH]
                    build the release binary and measure it against the performance targets;
                    --compare pm2 also measures PM2 (npm install into target/bench/pm2, reused),
                      alternating with pm2rs round by round;
                    --quick: fewer repetitions, 1 round, a 5 s idle-CPU window instead of 60 s;
                    --rounds N runs each suite N times per manager (default 3; 1 with --quick);
                    --suite runs one suite only (core, logs, cluster, takeover, limits);
                    --bin benches PATH instead of building the release pm2rs;
                    writes target/bench/results.md and target/bench/results.json
  ci                cargo fmt --check, clippy -D warnings, and cargo test --workspace (what CI runs)
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
        "ci" if rest.is_empty() => ci(),
        // The app of the log bench (hidden: the bench runs it, not people).
        "flood-writer" => match bench::flood_writer(rest) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("flood-writer: {e:#}");
                ExitCode::FAILURE
            }
        },
        // The app of the limits bench (hidden, like flood-writer).
        "memory-hog" => match bench::memory_hog(rest) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("memory-hog: {e:#}");
                ExitCode::FAILURE
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

/// The steps of `cargo xtask ci`, each a cargo invocation that must succeed.
const CI_STEPS: &[&[&str]] = &[
    &["fmt", "--all", "--", "--check"],
    &[
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ],
    &["test", "--workspace", "--locked"],
];

fn ci() -> ExitCode {
    use std::io::{BufRead, BufReader};
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let (mut passed, mut failed) = (0u64, 0u64);
    for step in CI_STEPS {
        eprintln!("==> cargo {}", step.join(" "));
        // stdout is passed through line by line so the totals of every test binary can be added up.
        let child = std::process::Command::new(&cargo)
            .args(*step)
            .stdout(std::process::Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: cannot run cargo: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(out) = child.stdout.take() {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("{line}");
                if let Some((p, f)) = parse_test_result(&line) {
                    passed += p;
                    failed += f;
                }
            }
        }
        match child.wait() {
            Ok(status) if status.success() => {}
            Ok(status) => {
                eprintln!("error: `cargo {}` failed ({status})", step.join(" "));
                println!("{passed} passed, {failed} failed");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("error: cannot wait for cargo: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if passed == 0 {
        eprintln!("error: no test ran");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `(passed, failed)` from a libtest summary line such as
/// `test result: ok. 22 passed; 0 failed; 0 ignored; ...`.
fn parse_test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |word: &str| {
        rest.split(';')
            .find_map(|part| {
                part.trim()
                    .trim_start_matches("ok. ")
                    .trim_start_matches("FAILED. ")
                    .strip_suffix(word)
            })
            .and_then(|n| n.trim().parse::<u64>().ok())
    };
    Some((count(" passed")?, count(" failed")?))
}

#[cfg(test)]
mod ci_tests {
    use super::parse_test_result;

    #[test]
    fn libtest_summaries_are_counted() {
        assert_eq!(
            parse_test_result(
                "test result: ok. 22 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.59s"
            ),
            Some((22, 0))
        );
        assert_eq!(
            parse_test_result(
                "test result: FAILED. 20 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out"
            ),
            Some((20, 2))
        );
        assert_eq!(parse_test_result("running 3 tests"), None);
    }
}
