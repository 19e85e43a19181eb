//! The orphan sweep of `os::RealOs` in a child subreaper, as the daemon is: orphans reparented
//! to it are reaped, and a helper process the daemon runs itself (in its own process group, the
//! std way) keeps its exit status for whoever waits on it, even while sweeps run. A test binary
//! of its own: it makes its process a subreaper, and no other sweeper may share it.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use pm2rs_daemon::os::RealOs;
use tokio::sync::mpsc;

/// The state letter of `pid` (`Z` for a zombie), or None once it is gone (reaped).
fn state(pid: Pid) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn orphans_are_swept_and_a_helper_keeps_its_exit_status() {
    nix::sys::prctl::set_child_subreaper(true).expect("become a subreaper");
    let (tx, _exits) = mpsc::channel(16);
    let os = RealOs::start(tx).expect("start the OS seam");

    // A helper in our own process group, exited and not waited for yet.
    let mut helper = Command::new("sh")
        .args(["-c", "exit 5"])
        .spawn()
        .expect("helper");
    let helper_pid = Pid::from_raw(helper.id() as i32);
    until("the helper is a zombie", || state(helper_pid) == Some('Z')).await;

    // A process in a group of its own whose background child outlives it: both end up ours to
    // reap (the child reparented to us, the subreaper), and nobody else waits for them.
    let out = Command::new("sh")
        .args(["-c", "sleep 0.3 >/dev/null 2>&1 & echo $!"])
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("orphaner");
    let parent = Pid::from_raw(out.id() as i32);
    let output = out.wait_with_output_nowait();
    let orphan = Pid::from_raw(output.trim().parse().expect("the orphan's pid"));
    until("the orphan has ended", || state(orphan) != Some('S')).await;
    let sweeps = os.sweeps();
    until("a sweep after the orphan ended", || os.sweeps() > sweeps).await;

    // Sweeps have run: the helper's status is still there for its waiter.
    assert_eq!(
        state(helper_pid),
        Some('Z'),
        "the helper's zombie was taken"
    );
    let status = helper.wait().expect("the helper's status");
    assert_eq!(status.code(), Some(5));

    // With the helper out of the way, the sweep reaps the orphan and its parent.
    until("the orphan is reaped", || state(orphan).is_none()).await;
    until("its parent is reaped", || state(parent).is_none()).await;
    assert!(os.orphans_reaped() >= 2, "{} reaped", os.orphans_reaped());
}

/// Reads a child's stdout to its end without waiting for the child (the sweep reaps it).
trait ReadNoWait {
    fn wait_with_output_nowait(self) -> String;
}

impl ReadNoWait for std::process::Child {
    fn wait_with_output_nowait(mut self) -> String {
        use std::io::Read;
        let mut text = String::new();
        if let Some(mut stdout) = self.stdout.take() {
            let _ = stdout.read_to_string(&mut text);
        }
        // Dropping a std Child neither kills nor waits for it.
        text
    }
}
