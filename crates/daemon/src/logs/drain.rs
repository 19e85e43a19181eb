//! The task that drains one pipe (one instance's stdout or stderr) into its log file(s).
//!
//! One buffer per busy pipe, none per idle one: the task waits for the pipe to be readable without
//! holding memory, reads up to [`CHUNK`] bytes, cuts at the last newline, and hands the whole
//! lines to a blocking thread to write. It reads nothing more until that write is done, so a slow
//! disk fills the pipe and blocks the app (back-pressure) instead of growing the daemon. A
//! partial line waits at the front of the buffer for its end; a line longer than `max_line` is
//! written in pieces of that size, each ended by a newline. At end of file (every writer of the
//! pipe is gone, grandchildren included) a partial last line is written with a newline added.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pm2rs_proto::LogStream;
use tokio::net::unix::pipe;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use super::{Batch, LineFormat, Sink};

/// Bytes read from a pipe before they are written out.
pub const CHUNK: usize = 256 << 10;

/// A read smaller than this, right after a write, counts as a trickle: the next read waits
/// [`COALESCE`] first. A pipe that was idle is read at once.
const TRICKLE: usize = 16 << 10;
const COALESCE: Duration = Duration::from_millis(1);

/// Pipe capacity asked for once a pipe is seen full (the kernel's default is 64 KiB): the app
/// keeps writing into the pipe while the daemon writes the file, without the daemon holding more
/// memory. Refused (and then left alone) beyond the system's or the user's pipe limits.
const BUSY_PIPE_SIZE: i32 = 1 << 20;

/// The first and longest wait before a failed write is retried (a full disk, a missing mount).
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Everything a drain needs besides its pipe.
pub struct Drain {
    pub id: u32,
    pub pid: u32,
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub stream: LogStream,
    /// The file of this stream, then the combined file if any.
    pub sinks: Vec<Arc<Mutex<Sink>>>,
    pub format: Arc<LineFormat>,
    pub max_line: usize,
    /// To followers (`pm2rs logs`); a batch is only built when somebody listens.
    pub followers: broadcast::Sender<Arc<Batch>>,
    /// Cancelled when the daemon exits: a write that keeps failing is given up then.
    pub closing: CancellationToken,
    /// Bytes written so far by the drains of this run, watched by a stop that waits for them.
    pub written: Arc<AtomicU64>,
}

impl Drain {
    /// Reads `pipe` until end of file; every byte read ends up in the sinks.
    pub async fn run(self, pipe: pipe::Receiver) {
        let mut buf: Vec<u8> = Vec::new();
        let mut grown = false;
        let mut trickle = false;
        loop {
            if buf.is_empty() {
                // Idle: hold no buffer while waiting.
                buf = Vec::new();
            }
            if trickle {
                // The app writes small pieces as fast as they are read: let them gather a moment,
                // so one read and one file write carry many lines instead of a few.
                tokio::time::sleep(COALESCE).await;
            }
            if pipe.readable().await.is_err() {
                break;
            }
            let before = buf.len();
            let eof = match self.fill(&pipe, &mut buf) {
                Ok(eof) => eof,
                Err(e) => {
                    debug!(id = self.id, %e, "reading a log pipe failed");
                    true
                }
            };
            if !grown && buf.len() >= 64 << 10 {
                grown = true;
                let size = nix::fcntl::FcntlArg::F_SETPIPE_SZ(BUSY_PIPE_SIZE);
                if let Err(e) = nix::fcntl::fcntl(&pipe, size) {
                    debug!(id = self.id, %e, "pipe not enlarged");
                }
            }
            trickle = before == 0 && buf.len() < TRICKLE && !buf.is_empty();
            let cut = self.cut(&buf, eof);
            if cut > 0 {
                buf = self.emit(buf, cut).await;
            }
            if eof {
                break;
            }
        }
    }

    /// Reads what the pipe holds into `buf`, up to [`CHUNK`] bytes (more only to finish a line
    /// shorter than `max_line`). Returns whether end of file was reached.
    fn fill(&self, pipe: &pipe::Receiver, buf: &mut Vec<u8>) -> io::Result<bool> {
        let limit = CHUNK.max(self.max_line + 1);
        if buf.capacity() < CHUNK {
            buf.reserve_exact(CHUNK - buf.len());
        }
        loop {
            if buf.len() == buf.capacity() {
                if buf.len() >= CHUNK && memchr::memchr(b'\n', buf).is_some() || buf.len() >= limit
                {
                    return Ok(false);
                }
                buf.reserve_exact((buf.len()).min(limit - buf.len()));
            }
            match pipe.try_read_buf(buf) {
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// How many leading bytes of `buf` to write now: up to the last newline, a `max_line` piece
    /// of an over-long line, or everything at end of file.
    fn cut(&self, buf: &[u8], eof: bool) -> usize {
        if eof {
            return buf.len();
        }
        match memchr::memrchr(b'\n', buf) {
            Some(nl) => nl + 1,
            None if buf.len() > self.max_line => self.max_line,
            None => 0,
        }
    }

    /// Writes `buf[..cut]` (adding a newline where a line was cut or ended without one), sends it
    /// to followers, and returns the buffer with the rest moved to its front.
    async fn emit(&self, mut buf: Vec<u8>, cut: usize) -> Vec<u8> {
        let at_us = super::unix_micros();
        // Rare: a complete line longer than max_line arrived at once; split it into pieces.
        let split = split_long(&buf[..cut], self.max_line);
        let lines = split.as_deref().unwrap_or(&buf[..cut]);
        let needs_newline = !lines.ends_with(b"\n");
        if self.followers.receiver_count() > 0 {
            let _ = self.followers.send(Arc::new(Batch {
                id: self.id,
                name: self.name.clone(),
                namespace: self.namespace.clone(),
                stream: self.stream,
                at_us,
                lines: lines.to_vec(),
            }));
        }
        let out = self.format.apply(lines, self, needs_newline, at_us);
        let rest = buf.len() - cut;
        match out {
            Some(formatted) => {
                self.write(formatted).await;
            }
            None if needs_newline || split.is_some() => {
                let mut whole = lines.to_vec();
                if needs_newline {
                    whole.push(b'\n');
                }
                self.write(whole).await;
            }
            None => {
                // Raw lines: write the buffer itself; only the partial line after them is copied.
                let tail = buf[cut..].to_vec();
                buf.truncate(cut);
                let mut back = self.write(buf).await;
                back.clear();
                back.extend_from_slice(&tail);
                return back;
            }
        }
        buf.copy_within(cut.., 0);
        buf.truncate(rest);
        buf
    }

    /// Writes `data` to every sink on a blocking thread, retrying until it is all written.
    /// Returns the buffer so its allocation is reused.
    async fn write(&self, data: Vec<u8>) -> Vec<u8> {
        let mut data = data;
        for sink in &self.sinks {
            let mut from = 0;
            let mut delay = RETRY_FIRST;
            loop {
                let sink = sink.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let r = match sink.lock() {
                        Ok(mut s) => s.write(&data[from..]).map_err(|(n, _)| n),
                        Err(_) => Ok(()),
                    };
                    (data, r)
                })
                .await;
                let Ok((back, r)) = result else {
                    // The blocking pool is shutting down: nothing more can be written.
                    return Vec::new();
                };
                data = back;
                match r {
                    Ok(()) => {
                        self.written
                            .fetch_add((data.len() - from) as u64, Ordering::Relaxed);
                        break;
                    }
                    Err(n) => {
                        from += n;
                        if self.closing.is_cancelled() {
                            error!(
                                id = self.id,
                                bytes = data.len() - from,
                                "the daemon is exiting and a log file still cannot be written: \
                                 this output is lost"
                            );
                            break;
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(RETRY_MAX);
                    }
                }
            }
        }
        data
    }
}

/// `lines` with every line longer than `max` cut into pieces of `max` bytes (each ended by a
/// newline), or `None` when no line is that long.
fn split_long(lines: &[u8], max: usize) -> Option<Vec<u8>> {
    // No line can be longer than all of them together (the common case: no scan at all).
    if lines.len() <= max {
        return None;
    }
    let mut start = 0;
    let longest = memchr::memchr_iter(b'\n', lines)
        .chain(std::iter::once(lines.len()))
        .map(|nl| {
            let len = nl - start;
            start = nl + 1;
            len
        })
        .max()
        .unwrap_or(0);
    if longest <= max {
        return None;
    }
    let mut out = Vec::with_capacity(lines.len() + lines.len() / max + 1);
    let body = lines.strip_suffix(b"\n");
    for line in body.unwrap_or(lines).split(|&b| b == b'\n') {
        let mut pieces = line.chunks(max).peekable();
        if pieces.peek().is_none() {
            out.push(b'\n');
        }
        for piece in pieces {
            out.extend_from_slice(piece);
            out.push(b'\n');
        }
    }
    if body.is_none() {
        // The last piece had no newline of its own.
        out.pop();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_split_into_pieces() {
        assert_eq!(split_long(b"ab\ncd\n", 4), None);
        assert_eq!(
            split_long(b"abcdefghij\nxy\n", 4).unwrap(),
            b"abcd\nefgh\nij\nxy\n"
        );
        assert_eq!(split_long(b"\nabcdef", 4).unwrap(), b"\nabcd\nef");
    }
}
