//! Log capture through the real daemon: floods arrive whole and in order (also across a restart),
//! rotation, `logs` (tail, follow, Ctrl-C, a closed pipe), line formats, merged and combined
//! files, a full device, a deleted log directory, reload-logs, flush, and bad option values.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::{DEADLINE, Pm2rs, eventually, wait_with_timeout};
use pm2rs_proto::Status;

/// Longer deadline for the floods (a debug-build daemon on a loaded 2-core machine).
const FLOOD_DEADLINE: Duration = Duration::from_secs(60);
const FLOOD: u32 = 1_000_000;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn logs_dir(t: &Pm2rs) -> PathBuf {
    t.home().join("logs")
}

/// Checks that `text` is `1..=count` exactly once each, in order.
fn assert_numbered(text: &str, count: u32) {
    let mut expected = 1;
    for line in text.lines() {
        assert_eq!(line, expected.to_string(), "line {expected} is wrong");
        expected += 1;
    }
    assert_eq!(expected - 1, count, "wrong number of lines");
}

#[test]
fn a_flood_of_a_million_lines_arrives_whole_and_in_order() {
    let t = Pm2rs::new();
    t.script(
        "flood.sh",
        &format!("seq 1 {FLOOD}\nprintf 'no newline at exit'"),
    );
    let eco = t.write(
        "eco.toml",
        "[[apps]]\nname = \"flood\"\nscript = \"flood.sh\"\nautorestart = false\nlog_max_size = 0\n",
    );
    t.ok(&["start", eco.to_str().unwrap()]);
    let out = logs_dir(&t).join("flood-out.log");
    assert!(
        eventually(FLOOD_DEADLINE, || read(&out)
            .ends_with("no newline at exit\n")),
        "the flood did not complete; file has {} bytes",
        read(&out).len()
    );
    let text = read(&out);
    let body = text.strip_suffix("no newline at exit\n").unwrap();
    assert_numbered(body, FLOOD);
}

#[test]
fn when_stop_returns_everything_the_app_wrote_is_in_the_file() {
    let t = Pm2rs::new();
    // On SIGINT it writes 200,000 lines and exits: the pipe is still full when the process is
    // gone, and JSON lines make the daemon's share of the work large enough to lose a race
    // against a `stop` that returned early.
    t.script(
        "farewell.sh",
        "trap 'seq 1 200000; exit 0' INT; echo started; while :; do sleep 0.05; done",
    );
    t.write(
        "eco.toml",
        r#"
[[apps]]
name = "farewell"
script = "farewell.sh"
log_type = "json"
log_max_size = 0
"#,
    );
    t.ok(&["start", "eco.toml"]);
    let out = logs_dir(&t).join("farewell-out.log");
    t.wait_online("farewell", 1);
    assert!(eventually(DEADLINE, || read(&out).contains("started")));
    t.ok(&["stop", "farewell"]);
    // No polling: the file is complete when `stop` returns.
    let messages: Vec<String> = read(&out)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            v["message"].as_str().unwrap_or_default().to_string()
        })
        .skip(1)
        .collect();
    assert_numbered(&messages.join("\n"), 200_000);
}

#[test]
fn a_process_that_left_the_group_does_not_hold_stop_by_its_log_pipes() {
    let t = Pm2rs::new();
    // A new session of its own: the group kill cannot reach it, and it keeps stdout open.
    let _guard = t.start_escaping("escape");
    let out = logs_dir(&t).join("escape-out.log");
    assert!(eventually(DEADLINE, || read(&out).contains("up")));
    // `stop` returns (within the harness's CLI timeout) although the pipes never close.
    t.ok(&["stop", "escape"]);
    assert_eq!(t.list()[0].status, Status::Stopped);
}

#[test]
fn a_restart_in_the_middle_of_a_flood_loses_and_garbles_nothing() {
    let t = Pm2rs::new();
    // 100 bursts of 10,000 lines with a pause between them: the flood lasts a second or more.
    t.script(
        "flood.sh",
        "b=0\nwhile [ $b -lt 100 ]; do seq $((b*10000+1)) $((b*10000+10000)); sleep 0.01; b=$((b+1)); done\nexec sleep 1000",
    );
    // No rotation: on a loaded machine the first run may get far before the restart, and both
    // runs together can pass the default 10M.
    let eco = t.write(
        "eco.toml",
        "[[apps]]\nname = \"flood\"\nscript = \"flood.sh\"\nlog_max_size = 0\n",
    );
    t.ok(&["start", eco.to_str().unwrap()]);
    let out = logs_dir(&t).join("flood-out.log");
    assert!(eventually(FLOOD_DEADLINE, || read(&out).len() > 700_000));
    t.ok(&["restart", "flood"]);
    // The second run writes all 1,000,000 lines. It starts at the last line "1": the first run's
    // cut last line may be a "1" too (the start of "1xxxxx"), but it comes before.
    let last = format!("\n{FLOOD}\n");
    let second_run = |text: &str| text.rfind("\n1\n").map(|i| i + 1);
    let complete = |text: &str| second_run(text).is_some_and(|i| text[i..].ends_with(&last));
    if !eventually(FLOOD_DEADLINE, || complete(&read(&out))) {
        let text = read(&out);
        let tail = &text[text.len().saturating_sub(40)..];
        panic!(
            "the second run did not complete: {} bytes, second run from byte {:?}, ends {tail:?}",
            text.len(),
            second_run(&text)
        );
    }
    let text = read(&out);
    let second = second_run(&text).unwrap();
    let (first, rest) = text.split_at(second);
    assert_numbered(rest, FLOOD);
    // The first run stopped somewhere after 100,000 lines; every line until then is there, in
    // order. Its very last line may be cut where the process was killed mid-write.
    let lines: Vec<&str> = first.lines().collect();
    assert!(lines.len() > 100_000, "first run: {} lines", lines.len());
    for (i, line) in lines.iter().enumerate() {
        let want = (i + 1).to_string();
        if i + 1 == lines.len() {
            assert!(
                want.starts_with(line),
                "last line {line:?} is not a prefix of {want}"
            );
        } else {
            assert_eq!(*line, want);
        }
    }
}

#[test]
fn rotation_keeps_exactly_log_retain_files_with_the_newest_lines() {
    let t = Pm2rs::new();
    t.script("count.sh", "seq 1 20000");
    let eco = t.write(
        "eco.toml",
        "[[apps]]\nname = \"rot\"\nscript = \"count.sh\"\nautorestart = false\n\
         log_max_size = \"10K\"\nlog_retain = 3\n",
    );
    t.ok(&["start", eco.to_str().unwrap()]);
    let out = logs_dir(&t).join("rot-out.log");
    assert!(eventually(DEADLINE, || read(&out).ends_with("\n20000\n")));
    let rotated = |k: u32| PathBuf::from(format!("{}.{k}", out.display()));
    assert!(!rotated(4).exists(), "more than log_retain files kept");
    let mut kept = String::new();
    for k in (1..=3).rev() {
        let text = read(&rotated(k));
        assert!(
            !text.is_empty() && text.len() <= 10 * 1024,
            "{k}: {} bytes",
            text.len()
        );
        kept.push_str(&text);
    }
    assert!(read(&out).len() <= 10 * 1024);
    kept.push_str(&read(&out));
    let numbers: Vec<u32> = kept.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(*numbers.last().unwrap(), 20000);
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "kept lines are not contiguous"
    );
    assert!(numbers.len() > 4000, "only {} lines kept", numbers.len());
}

#[test]
fn logs_nostream_prints_exactly_the_last_lines() {
    let t = Pm2rs::new();
    t.script("count.sh", "seq 1 100; seq 1 3 >&2; exec sleep 1000");
    t.ok(&["start", "count.sh", "--name", "counter"]);
    let out = logs_dir(&t).join("counter-out.log");
    let err = logs_dir(&t).join("counter-error.log");
    assert!(eventually(DEADLINE, || read(&out).ends_with("\n100\n")
        && read(&err).ends_with("3\n")));
    let raw = t.ok(&[
        "logs",
        "counter",
        "--lines",
        "5",
        "--nostream",
        "--raw",
        "--out",
    ]);
    assert_eq!(raw, "96\n97\n98\n99\n100\n");
    let text = t.ok(&["logs", "counter", "--lines", "2", "--nostream"]);
    assert_eq!(
        text,
        format!(
            "{} last 2 lines:\n0|counter| 99\n0|counter| 100\n{} last 2 lines:\n0|counter| 2\n0|counter| 3\n",
            out.display(),
            err.display()
        )
    );
    let json = t.ok(&["logs", "0", "--lines", "1", "--nostream", "--json", "--err"]);
    let event: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(event["line"], "3");
    assert_eq!(event["stream"], "err");
    assert_eq!(event["name"], "counter");
}

#[test]
fn the_tail_and_the_stream_join_without_a_line_shown_twice_or_missed() {
    let t = Pm2rs::new();
    // Bursts of 100 numbered lines, one `write` each, every few milliseconds: some burst is
    // likely written while a follower is between subscribing and reading the tail.
    t.script(
        "bursts.sh",
        "i=1; while :; do seq $i $((i+99)); i=$((i+100)); sleep 0.002; done",
    );
    t.ok(&["start", "bursts.sh", "--name", "bursts"]);
    let out = logs_dir(&t).join("bursts-out.log");
    assert!(eventually(DEADLINE, || read(&out).lines().count() >= 1000));
    let followers: Vec<Follower> = (0..12)
        .map(|_| Follower::start(&t, &["logs", "bursts", "--raw", "--out", "--lines", "20"]))
        .collect();
    for (k, f) in followers.into_iter().enumerate() {
        let mut numbers = Vec::new();
        let end = Instant::now() + DEADLINE;
        while numbers.len() < 1000 {
            let left = end.saturating_duration_since(Instant::now());
            let line = f
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("follower {k}: {} lines, then {e}", numbers.len()));
            numbers.push(line.parse::<u64>().expect("a numbered line"));
        }
        let skipped = f.stderr().contains("not shown");
        for pair in numbers.windows(2) {
            assert!(
                pair[1] == pair[0] + 1 || (skipped && pair[1] > pair[0]),
                "follower {k} printed {} right after {}",
                pair[1],
                pair[0]
            );
        }
        kill(Pid::from_raw(f.child.id() as i32), Signal::SIGINT).unwrap();
        assert_eq!(f.exit_code(), 0);
    }
}

/// A running `pm2rs logs` whose stdout lines arrive on a channel; its stderr goes to a file.
struct Follower {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<PathBuf>,
}

impl Follower {
    fn start(t: &Pm2rs, args: &[&str]) -> Follower {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let stderr = t.home().join(format!("follower-{n}.stderr"));
        let mut child = t
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("create the stderr file"))
            .spawn()
            .expect("spawn pm2rs logs");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // The test stopped listening: close the pipe, like `| head` does.
                    break;
                }
            }
        });
        Follower {
            child,
            lines,
            stderr: Some(stderr),
        }
    }

    /// What the follower wrote to stderr so far.
    fn stderr(&self) -> String {
        self.stderr.as_deref().map(read).unwrap_or_default()
    }

    /// Waits for a line equal to `want`.
    fn expect(&self, want: &str) {
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == want => return,
                Ok(_) => {}
                Err(e) => panic!("no line {want:?} from `pm2rs logs`: {e}"),
            }
        }
    }

    /// Waits for the follower to exit; returns its exit code.
    fn exit_code(self) -> i32 {
        let out = wait_with_timeout(self.child, DEADLINE).expect("`pm2rs logs` did not end");
        out.status.code().unwrap_or(-1)
    }
}

#[test]
fn a_follower_sees_apps_started_later_and_ends_cleanly_on_ctrl_c_and_a_closed_pipe() {
    let t = Pm2rs::new();
    t.script("once.sh", "echo first-app-line; exec sleep 1000");
    t.ok(&["start", "once.sh", "--name", "early"]);
    let early = logs_dir(&t).join("early-out.log");
    assert!(eventually(DEADLINE, || read(&early).contains("first-app-line")));

    let follower = Follower::start(&t, &["logs", "--lines", "1"]);
    follower.expect("0|early| first-app-line");
    let piped = Follower::start(&t, &["logs", "later", "--raw", "--lines", "0"]);
    // Ticks keep coming, so lines flow even if the followers subscribe late.
    t.script(
        "tick.sh",
        "i=0; while :; do echo \"tick $i\"; i=$((i+1)); sleep 0.05; done",
    );
    t.ok(&["start", "tick.sh", "--name", "later"]);
    follower.expect("1|later| tick 3");
    piped.expect("tick 5");

    // Ctrl-C ends the follower with success.
    kill(Pid::from_raw(follower.child.id() as i32), Signal::SIGINT).unwrap();
    assert_eq!(follower.exit_code(), 0);
    // Closing its stdout (as `| head` does) ends the other one with success at its next line.
    let Follower { child, lines, .. } = piped;
    drop(lines);
    let code = Follower {
        child,
        lines: mpsc::channel().1,
        stderr: None,
    }
    .exit_code();
    assert_eq!(code, 0);
}

#[test]
fn line_formats_invalid_utf8_and_over_long_lines() {
    let t = Pm2rs::new();
    t.script("stamp.sh", "echo hello; exec sleep 1000");
    t.script(
        "bytes.sh",
        "printf 'bad \\377\\376 bytes\\n'; head -c 10000 /dev/zero | tr '\\0' x; echo; exec sleep 1000",
    );
    let eco = t.write(
        "eco.toml",
        r#"
[[apps]]
name = "stamped"
script = "stamp.sh"
log_date_format = "YYYY-MM-DD"

[[apps]]
name = "json"
script = "stamp.sh"
log_type = "json"

[[apps]]
name = "bytes"
script = "bytes.sh"
"#,
    );
    // The daemon starts with this run, so it takes its longest line from it.
    let r = t
        .command(&["start", eco.to_str().unwrap()])
        .env("PM2RS_LOG_MAX_LINE", "4K")
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));

    let stamped = logs_dir(&t).join("stamped-out.log");
    assert!(eventually(DEADLINE, || read(&stamped).ends_with("hello\n")));
    let line = read(&stamped);
    let (date, rest) = line.split_once(": ").unwrap();
    assert_eq!(rest, "hello\n");
    assert!(date.len() == 10 && date.as_bytes()[4] == b'-', "{line:?}");

    let json = logs_dir(&t).join("json-out.log");
    assert!(eventually(DEADLINE, || read(&json).ends_with("}\n")));
    let v: serde_json::Value = serde_json::from_str(read(&json).trim()).unwrap();
    assert_eq!(v["message"], "hello");
    assert_eq!(v["app_name"], "json");
    assert_eq!(v["type"], "out");
    assert!(v["pid"].as_u64().unwrap() > 0 && v["timestamp"].is_string());

    let bytes = logs_dir(&t).join("bytes-out.log");
    // 13 bytes, then 10,000 x's as three pieces, each ended by a newline.
    assert!(eventually(DEADLINE, || std::fs::read(&bytes)
        .is_ok_and(|b| b.len() >= 13 + 10_000 + 3)));
    let raw = std::fs::read(&bytes).unwrap();
    assert!(
        raw.starts_with(b"bad \xff\xfe bytes\n"),
        "invalid UTF-8 was changed"
    );
    let long: Vec<&[u8]> = raw[b"bad \xff\xfe bytes\n".len()..]
        .strip_suffix(b"\n")
        .unwrap()
        .split(|&b| b == b'\n')
        .collect();
    let lens: Vec<usize> = long.iter().map(|l| l.len()).collect();
    assert_eq!(
        lens,
        vec![4096, 4096, 10000 - 2 * 4096],
        "the long line was not split"
    );
}

#[test]
fn merged_instances_and_a_combined_file() {
    let t = Pm2rs::new();
    t.script(
        "both.sh",
        "echo \"out $NODE_APP_INSTANCE\"; echo \"err $NODE_APP_INSTANCE\" >&2; exec sleep 1000",
    );
    let eco = t.write(
        "eco.toml",
        r#"
[[apps]]
name = "merged"
script = "both.sh"
instances = 2
merge_logs = true
log_file = "all.log"

[[apps]]
name = "split"
script = "both.sh"
instances = 2
out_file = "split/out.log"
"#,
    );
    t.ok(&["start", eco.to_str().unwrap()]);
    let merged = logs_dir(&t).join("merged-out.log");
    assert!(eventually(DEADLINE, || read(&merged).lines().count() == 2));
    let mut lines: Vec<String> = read(&merged).lines().map(str::to_owned).collect();
    lines.sort();
    assert_eq!(lines, ["out 0", "out 1"]);
    let all = t.work().join("all.log");
    assert!(eventually(DEADLINE, || read(&all).lines().count() == 4));
    // Per instance, with the id before the extension.
    let ids: Vec<u32> = t.wait_online("split", 2).iter().map(|p| p.id).collect();
    for id in ids {
        let f = t.work().join(format!("split/out-{id}.log"));
        assert!(
            eventually(DEADLINE, || read(&f).starts_with("out ")),
            "{}",
            f.display()
        );
    }
    let desc = t.ok(&["describe", "merged"]);
    assert!(desc.contains("all.log"), "{desc}");
}

#[test]
fn a_full_device_is_reported_and_the_daemon_keeps_running() {
    let t = Pm2rs::new();
    t.script(
        "talk.sh",
        "echo to-dev-full; echo to-stderr >&2; exec sleep 1000",
    );
    let eco = t.write(
        "eco.toml",
        "[[apps]]\nname = \"full\"\nscript = \"talk.sh\"\nout_file = \"/dev/full\"\n",
    );
    t.ok(&["start", eco.to_str().unwrap()]);
    let err = logs_dir(&t).join("full-error.log");
    assert!(eventually(DEADLINE, || read(&err).contains("to-stderr")));
    let mut problems = String::new();
    assert!(
        eventually(DEADLINE, || {
            problems = t.ok(&["describe", "full", "--json"]);
            problems.contains("No space left on device")
        }),
        "{problems}"
    );
    assert!(read(&t.home().join("pm2rs.log")).contains("No space left on device"));
    // The daemon still works: stop and start again.
    t.ok(&["stop", "full"]);
    t.ok(&["start", eco.to_str().unwrap()]);
    t.wait_online("full", 1);
}

#[test]
fn a_deleted_log_directory_is_recreated_and_reload_and_flush_work() {
    let t = Pm2rs::new();
    t.script(
        "tick.sh",
        "i=0; while :; do echo \"tick $i\"; i=$((i+1)); sleep 0.05; done",
    );
    t.ok(&["start", "tick.sh", "--name", "ticker"]);
    let out = logs_dir(&t).join("ticker-out.log");
    assert!(eventually(DEADLINE, || read(&out).contains("tick 2\n")));

    std::fs::remove_dir_all(logs_dir(&t)).unwrap();
    assert!(
        eventually(DEADLINE, || read(&out).contains("tick")),
        "the log file was not recreated"
    );
    assert!(read(&t.home().join("pm2rs.log")).contains("removed or replaced"));

    // External logrotate: move the file away, then reload-logs.
    let moved = t.work().join("moved.log");
    std::fs::rename(&out, &moved).unwrap();
    t.ok(&["reload-logs"]);
    assert!(eventually(DEADLINE, || read(&out).contains("tick")));

    // Flush empties it: the tick seen before is gone.
    let before = read(&out).lines().next().unwrap().to_string();
    let flushed = t.ok(&["flush", "ticker"]);
    assert!(flushed.contains("ticker-out.log"), "{flushed}");
    assert!(!read(&out).contains(&format!("{before}\n")));

    // SIGUSR2 reopens too.
    std::fs::rename(&out, &moved).unwrap();
    kill(t.daemon_pid().unwrap(), Signal::SIGUSR2).unwrap();
    assert!(eventually(DEADLINE, || read(&out).contains("tick")));
}

#[test]
fn bad_log_options_are_refused_with_file_line_and_key() {
    let t = Pm2rs::new();
    t.script("s.sh", "exec sleep 1000");
    let eco = t.write(
        "eco.toml",
        "[[apps]]\nname = \"bad\"\nscript = \"s.sh\"\nlog_type = \"xml\"\nlog_max_size = \"1\"\nlog_retain = \"many\"\n",
    );
    let r = t.run(&["start", eco.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    for want in [
        "eco.toml:4:12: apps[0].log_type: invalid log_type `xml`",
        "eco.toml:5:16: apps[0].log_max_size: `log_max_size` must be 0 (never rotate) or at least 1K",
        "eco.toml:6:14: apps[0].log_retain: expected a whole number",
    ] {
        assert!(
            r.stderr.contains(want),
            "missing {want:?} in:\n{}",
            r.stderr
        );
    }
    assert!(t.list().is_empty());
    // A bad daemon-wide setting stops the daemon from starting, with the variable named.
    let r = t
        .command(&["daemon"])
        .env("PM2RS_LOG_RETAIN", "-1")
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("PM2RS_LOG_RETAIN=\"-1\""));
}

#[test]
fn log_files_exist_right_after_start_for_an_app_that_writes_nothing() {
    let t = Pm2rs::new();
    t.script("silent.sh", "exec sleep 1000");
    t.write(
        "eco.toml",
        r#"
[[apps]]
name = "silent"
script = "silent.sh"
instances = 2
log_file = "all.log"

[[apps]]
name = "nowhere"
script = "silent.sh"
error_file = "/dev/null/nowhere-error.log"
"#,
    );
    t.ok(&["start", "eco.toml"]);
    // The files are created by the drains, on a blocking thread, while `start` replies: they are
    // there at once or within a few milliseconds of it (see docs/configuration.md, Logs).
    let ids: Vec<u32> = t
        .list()
        .iter()
        .filter(|p| p.name == "silent")
        .map(|p| p.id)
        .collect();
    assert_eq!(ids.len(), 2);
    let mut files = vec![];
    for id in ids {
        files.push(logs_dir(&t).join(format!("silent-out-{id}.log")));
        files.push(logs_dir(&t).join(format!("silent-error-{id}.log")));
        files.push(t.work().join(format!("all-{id}.log")));
    }
    files.push(logs_dir(&t).join("nowhere-out.log"));
    let missing = || files.iter().filter(|f| !f.exists()).collect::<Vec<_>>();
    assert!(
        eventually(Duration::from_secs(2), || missing().is_empty()),
        "missing after start: {:?}",
        missing()
    );
    assert!(files.iter().all(|f| read(f).is_empty()));
    // A file that cannot be created is a log problem, and the app runs anyway.
    let mut desc = String::new();
    assert!(
        eventually(DEADLINE, || {
            desc = t.ok(&["describe", "nowhere"]);
            desc.contains("/dev/null/nowhere-error.log: ")
        }),
        "{desc}"
    );
    t.wait_online("nowhere", 1);
}

#[test]
fn a_partial_line_is_written_after_a_short_quiet_time() {
    let t = Pm2rs::new();
    // The daemon first: two CLIs that both start it on a fresh home can trip over each other.
    t.ok(&["ping"]);
    let follower = Follower::start(&t, &["logs", "prompt", "--raw", "--lines", "1"]);
    t.script("prompt.sh", "printf 'Loading...'; exec sleep 1000");
    t.ok(&["start", "prompt.sh", "--name", "prompt"]);
    let out = logs_dir(&t).join("prompt-out.log");
    assert!(
        eventually(DEADLINE, || read(&out) == "Loading...\n"),
        "the partial line is not in the file: {:?}",
        read(&out)
    );
    // Written while the app still runs (the newline never comes), not at its exit.
    assert_eq!(t.wait_online("prompt", 1)[0].restarts, 0);
    follower.expect("Loading...");
    kill(Pid::from_raw(follower.child.id() as i32), Signal::SIGINT).unwrap();
    assert_eq!(follower.exit_code(), 0);
}

#[test]
fn describe_shows_the_effective_log_rotation_and_where_it_comes_from() {
    let t = Pm2rs::new();
    t.script("idle.sh", "exec sleep 1000");
    t.write(
        "eco.toml",
        r#"
[[apps]]
name = "plain"
script = "idle.sh"

[[apps]]
name = "own"
script = "idle.sh"
log_max_size = "1M"
log_compress = true
"#,
    );
    // The CLI that starts the daemon passes its environment: the daemon's defaults.
    let start = t
        .command(&["start", "eco.toml"])
        .env("PM2RS_LOG_RETAIN", "3")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_with_timeout(start, DEADLINE).expect("`pm2rs start` did not finish");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotation = |name: &str| -> String {
        let page = t.ok(&["describe", name]);
        page.lines()
            .find_map(|l| {
                let cells: Vec<&str> = l.split('│').map(str::trim).collect();
                (cells.len() == 4 && cells[1] == "log rotation").then(|| cells[2].to_string())
            })
            .unwrap_or_else(|| panic!("no rotation row:\n{page}"))
    };
    assert_eq!(
        rotation("plain"),
        "10M, keep 3 files, no gzip (daemon defaults)"
    );
    assert_eq!(
        rotation("own"),
        "1M (app config), keep 3 files (daemon default), gzip (app config)"
    );
    let json = t.ok(&["describe", "own", "--json"]);
    let described: Vec<pm2rs_proto::Described> = serde_json::from_str(&json).unwrap();
    assert_eq!(
        described[0].log_rotation,
        Some(pm2rs_proto::LogRotation {
            max_size: 1 << 20,
            retain: 3,
            compress: true,
        })
    );
}
