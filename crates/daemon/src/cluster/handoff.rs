//! Handing sockets to a child with the systemd protocol: the listening sockets become fds 3, 4, …
//! in the child, with `LISTEN_FDS` (their count), `LISTEN_FDNAMES` (`port-<n>` each, `:`-separated)
//! and `LISTEN_PID` equal to the child's own pid; a Node app's IPC channel comes right after them
//! (`NODE_CHANNEL_FD`).
//!
//! `LISTEN_PID` can only be known after fork, and the environment std passes to `execve` is built
//! before it (changing it in the child would allocate, which is not allowed between fork and exec).
//! So the child first runs `/bin/sh -c 'LISTEN_PID=$$ … exec "$0" "$@"'`: `$$` is the shell's pid,
//! which `exec` keeps for the real program. The fds are moved into place in a `pre_exec` hook that
//! only calls `fcntl` and `dup2` (async-signal-safe, no allocation).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use pm2rs_proto::AppSpec;

/// The first fd of the systemd protocol.
pub const FIRST_FD: RawFd = 3;

/// Sets `LISTEN_PID` to the shell's pid, then becomes the program (`$0`) with its arguments.
const EXEC_WITH_LISTEN_PID: &str = "LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\"";

/// What one spawn hands to the child besides its app's own environment.
#[derive(Debug, Default)]
pub struct Handoff {
    /// Listening sockets (owned by the daemon; they outlive the spawn), handed as fds 3, 4, ….
    pub listen: Vec<RawFd>,
    /// The child's end of the Node IPC channel, handed right after the listening sockets.
    pub ipc: Option<OwnedFd>,
    /// Variables set over the app's environment.
    pub env: BTreeMap<String, String>,
}

impl Handoff {
    /// The fd number the IPC channel gets in the child.
    pub fn ipc_fd(&self) -> RawFd {
        FIRST_FD + self.listen.len() as RawFd
    }

    /// The fds to place at 3, 4, … in the child, in order.
    fn fds(&self) -> Vec<RawFd> {
        let mut fds = self.listen.clone();
        fds.extend(self.ipc.as_ref().map(AsRawFd::as_raw_fd));
        fds
    }
}

/// The command that runs `spec`'s program (without its own arguments yet), set up to receive
/// `handoff`'s fds.
pub fn command(spec: &AppSpec, handoff: Option<&Handoff>) -> Command {
    let (program, mut argv): (&std::ffi::OsStr, Vec<&std::ffi::OsStr>) = match &spec.interpreter {
        Some(interp) => {
            let mut argv: Vec<&std::ffi::OsStr> =
                spec.interpreter_args.iter().map(|a| a.as_ref()).collect();
            argv.push(spec.script.as_os_str());
            (interp.as_ref(), argv)
        }
        None => (spec.script.as_os_str(), vec![]),
    };
    let Some(handoff) = handoff else {
        let mut cmd = Command::new(program);
        cmd.args(argv);
        return cmd;
    };
    let mut cmd = if handoff.listen.is_empty() {
        Command::new(program)
    } else {
        argv.insert(0, program);
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(EXEC_WITH_LISTEN_PID);
        c
    };
    cmd.args(argv);
    let fds = handoff.fds();
    if !fds.is_empty() {
        let mut moved = vec![0 as RawFd; fds.len()];
        // SAFETY: the hook runs between fork and exec; it only calls fcntl and dup2 on fds that
        // stay open in the daemon for the whole spawn, and writes into a buffer allocated before
        // the fork.
        unsafe {
            cmd.pre_exec(move || place_fds(&fds, &mut moved));
        }
    }
    cmd
}

/// Variables to set after the app's own, so they win (`PORT` is the exception: an app's env may
/// set its own).
pub fn env(handoff: Option<&Handoff>) -> impl Iterator<Item = (&String, &String)> {
    handoff.into_iter().flat_map(|h| h.env.iter())
}

/// Moves `fds` to 3, 4, … First every fd is copied above the target range (so a source that sits
/// on a target is not overwritten before it is copied), then the copies are `dup2`ed into place,
/// which also clears close-on-exec on the targets. The copies are close-on-exec.
fn place_fds(fds: &[RawFd], moved: &mut [RawFd]) -> io::Result<()> {
    let above = FIRST_FD + fds.len() as RawFd;
    for (fd, slot) in fds.iter().zip(moved.iter_mut()) {
        // SAFETY: plain fcntl on an open fd.
        let copy = unsafe { nix::libc::fcntl(*fd, nix::libc::F_DUPFD_CLOEXEC, above) };
        if copy < 0 {
            return Err(io::Error::last_os_error());
        }
        *slot = copy;
    }
    for (i, copy) in moved.iter().enumerate() {
        // SAFETY: plain dup2 of an fd we just created onto a small target number.
        if unsafe { nix::libc::dup2(*copy, FIRST_FD + i as RawFd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn spec(script: &str) -> AppSpec {
        AppSpec {
            interpreter: Some("/bin/sh".into()),
            exec_mode: pm2rs_proto::ExecMode::Cluster,
            ..AppSpec::new("t", script, "/")
        }
    }

    #[test]
    fn the_child_gets_its_own_pid_in_listen_pid_and_the_sockets_from_fd_3() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("probe.sh");
        // Prints LISTEN_PID, its own pid, and what fds 3 and 4 are.
        std::fs::write(
            &script,
            "echo \"$LISTEN_PID $$ $LISTEN_FDS\"; readlink /proc/$$/fd/3; readlink /proc/$$/fd/4\n",
        )
        .unwrap();
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let handoff = Handoff {
            // Reversed on purpose: b's fd is the larger one and must still land on 3.
            listen: vec![b.as_raw_fd(), a.as_raw_fd()],
            ipc: None,
            env: BTreeMap::from([("LISTEN_FDS".to_string(), "2".to_string())]),
        };
        let mut cmd = command(&spec(script.to_str().unwrap()), Some(&handoff));
        cmd.envs(env(Some(&handoff)));
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        let ids: Vec<&str> = lines[0].split(' ').collect();
        assert_eq!(ids[0], ids[1], "LISTEN_PID is the child's pid: {text}");
        assert_eq!(ids[2], "2");
        let inode = |l: &TcpListener| {
            std::fs::read_link(format!("/proc/self/fd/{}", l.as_raw_fd()))
                .unwrap()
                .to_string_lossy()
                .into_owned()
        };
        assert_eq!(lines[1], inode(&b), "{text}");
        assert_eq!(lines[2], inode(&a), "{text}");
    }
}
