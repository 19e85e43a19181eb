//! The task that drains one pipe (one instance's stdout or stderr) into its log file(s).
//!
//! One buffer per busy pipe, none per idle one: the task waits for the pipe to be readable without
//! holding memory, reads up to [`CHUNK`] bytes, cuts at the last newline, and hands the whole
//! lines to a blocking thread to write. It reads nothing more until that write is done, so a slow
//! disk fills the pipe and blocks the app (back-pressure) instead of growing the daemon. A
//! partial line waits at the front of the buffer for its end, but no longer than [`QUIET`] without
//! a new byte on the pipe: then it is written as a line of its own (a newline added, its own
//! timestamp or JSON record), and what comes next starts a new line. A line longer than `max_line`
//! is written in pieces of that size, each ended by a newline. At end of file (every writer of the
//! pipe is gone, grandchildren included) a partial last line is written with a newline added.
//!
//! The files are created when the run starts (by the hub, on a blocking thread, one job for all
//! the runs of a step), so they exist from the start even for an app that writes nothing.
//!
//! # Watched and paced
//! An idle pipe is *watched*: registered with the runtime's epoll, so its next byte wakes the
//! drain at once. But Linux wakes a pipe's epoll waiters on *every* write into a pipe that was ever
//! polled (not only when it was empty, as for a plain blocking reader like `cat`), and it does so
//! with a "sync" wake-up that tends to run the woken daemon on the writing app's CPU. An app
//! writing one line per `write` would then wake the daemon once per line and lose its CPU to it
//! each time. So when reads come back small, the drain takes the pipe out of epoll and reads it
//! on a clock instead (*paced*, every [`PACE`]); the app writes into the pipe undisturbed. A paced
//! read that finds the pipe empty, or one that fills a whole [`CHUNK`] (a writer fast enough to
//! fill the pipe between two paced reads), puts the pipe back under watch.
//!
//! # Peek, write, consume
//! Bytes leave the pipe only once they are in the files, so a daemon killed at any instant loses
//! nothing: the next daemon drains the same pipe (its read end kept by the fd keeper) from where
//! the files end. The drain *peeks*: `tee` copies the pipe's head into a daemon-wide scratch pipe
//! (a [`Peeker`], three descriptors for the whole daemon), which a read empties at once into the
//! drain's buffer; the pipe still holds the bytes. Once the lines are written, exactly their
//! bytes are *consumed*: `splice` moves them from the pipe to `/dev/null`, in the kernel. Two
//! syscalls more per batch of lines, no copy more than a plain read. A peek counts as a full read
//! when it saw less than the pipe held: `tee` stops when the scratch pipe runs out of slots, and
//! a slot holds a page at most, often less (small writes), so the window is not the only limit.
//! Taken for "the pipe is empty", that cut the one-line-per-write flood to half speed (the
//! drain then slept a pace period with the pipe still full).
//!
//! Two cases take bytes out before they are written. A line with no newline that fills the peek
//! window or half the pipe cannot wait there for its end (the app would block on the full pipe,
//! or the end would never be seen), so its start is consumed into memory and is lost if the
//! daemon is killed before it is written; lines up to half the pipe (32 KiB by default, 512 KiB
//! once enlarged) are never at risk. And a kernel or descriptor without `tee`/`splice` falls back
//! to plain reads (said once in the daemon log).
//!
//! A consume that leaves bytes in the pipe makes the drain look again before it waits: a writer
//! blocked inside one large `write` on the full pipe, freed by the consume, refills it without
//! waking the reader (Linux wakes a pipe's readers from a blocked write only when it found the pipe
//! empty), so an edge-triggered wait would never end.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::{FcntlArg, fcntl};
use pm2rs_proto::{FileEnd, LogStream};
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::{Batch, LineFormat, Sink, lock, lock_sink};

/// Bytes read from a pipe before they are written out.
pub const CHUNK: usize = 256 << 10;

/// A read of a watched pipe smaller than this means the app writes small pieces about as fast as
/// they are read: the pipe is paced from then on.
const TRICKLE: usize = 16 << 10;
/// The period of the reads of a paced pipe.
const PACE: Duration = Duration::from_millis(1);

/// Pipe capacity asked for once a read finds [`BUSY_READ`] bytes in the pipe (the kernel's default
/// capacity is 64 KiB, 16 pages, which small writes fill to a little less): the app keeps writing
/// into the pipe while the daemon writes the file (or sleeps between paced reads), without the
/// daemon holding more memory. Refused (and then left alone) beyond the system's or the user's
/// pipe limits.
const BUSY_PIPE_SIZE: i32 = 1 << 20;
const BUSY_READ: usize = 32 << 10;

/// Pipes enlarged at once, daemon-wide: 16 MiB of pipe capacity, a quarter of Linux's default
/// `pipe-user-pages-soft` (64 MiB per user, counted by capacity, not content; beyond it every new
/// pipe of that user, in any program, gets 2 pages). Others stay at their first size meanwhile.
pub const BIG_PIPES_MAX: usize = 16;
/// An enlarged pipe left empty this long is shrunk back to its first size, and its share of
/// [`BIG_PIPES_MAX`] given back.
const SHRINK_AFTER: Duration = Duration::from_secs(1);

/// A partial line (no newline yet: a prompt, `Loading...`) is written, as a line of its own, once
/// its pipe has given no byte for this long; a line whose newline comes sooner is never split.
pub const QUIET: Duration = Duration::from_millis(100);

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
    /// Pipes enlarged now, daemon-wide (at most [`BIG_PIPES_MAX`]).
    pub big_pipes: Arc<AtomicUsize>,
    /// The daemon-wide scratch pipe for peeking; `None`: plain reads.
    pub peeker: Option<Arc<Peeker>>,
    /// Cancelled by a handover: the drain finishes its write under way, consumes what it wrote,
    /// and stops, leaving the rest in the pipe for the next daemon.
    pub handover: CancellationToken,
}

/// One enlarged pipe's share of [`BIG_PIPES_MAX`], given back when dropped.
struct BigPipe {
    budget: Arc<AtomicUsize>,
    /// The capacity to shrink back to.
    first_size: i32,
}

/// Why a pipe was not enlarged.
#[derive(Debug, PartialEq, Eq)]
enum NotEnlarged {
    /// [`BIG_PIPES_MAX`] pipes are enlarged already; another may be later.
    Budget,
    /// The kernel refused (the user's pipe limits): not asked again for this pipe.
    Refused,
}

impl BigPipe {
    /// Enlarges `fd` to [`BUSY_PIPE_SIZE`] if the daemon-wide budget allows.
    fn enlarge(budget: &Arc<AtomicUsize>, fd: BorrowedFd<'_>) -> Result<BigPipe, NotEnlarged> {
        budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < BIG_PIPES_MAX).then_some(n + 1)
            })
            .map_err(|_| NotEnlarged::Budget)?;
        // From here on, dropping `share` gives the budget back.
        let mut share = BigPipe {
            budget: budget.clone(),
            first_size: 0,
        };
        let enlarged = fcntl(fd, FcntlArg::F_GETPIPE_SZ).and_then(|first| {
            share.first_size = first;
            fcntl(fd, FcntlArg::F_SETPIPE_SZ(BUSY_PIPE_SIZE))
        });
        match enlarged {
            Ok(_) => Ok(share),
            Err(e) => {
                debug!(%e, "pipe not enlarged");
                Err(NotEnlarged::Refused)
            }
        }
    }

    /// Shrinks `fd` back to its first size; gives the pipe back when it holds more than that.
    fn shrink(self, fd: BorrowedFd<'_>) -> Result<(), BigPipe> {
        match fcntl(fd, FcntlArg::F_SETPIPE_SZ(self.first_size)) {
            Ok(_) => Ok(()),
            Err(_) => Err(self),
        }
    }
}

impl Drop for BigPipe {
    fn drop(&mut self) {
        self.budget.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How the drain waits for its pipe (see the module doc).
enum Pipe {
    /// Registered with the runtime: woken when the pipe becomes readable.
    Watched(AsyncFd<OwnedFd>),
    /// Out of epoll: read every [`PACE`].
    Paced(OwnedFd),
}

impl Pipe {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Pipe::Watched(fd) => fd.get_ref().as_fd(),
            Pipe::Paced(fd) => fd.as_fd(),
        }
    }

    fn watch(self) -> Pipe {
        match self {
            Pipe::Paced(fd) => {
                // SAFETY: an `OwnedFd` stays open, and is the same descriptor, for as long as the
                // `AsyncFd` owns it.
                let watched = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
                match watched {
                    Ok(watched) => Pipe::Watched(watched),
                    // Cannot register (the kernel is out of memory?): keep reading on the clock.
                    Err(e) => {
                        let (fd, e) = e.into_parts();
                        debug!(%e, "a log pipe stays paced");
                        Pipe::Paced(fd)
                    }
                }
            }
            watched => watched,
        }
    }

    fn pace(self) -> Pipe {
        match self {
            Pipe::Watched(fd) => Pipe::Paced(fd.into_inner()),
            paced => paced,
        }
    }
}

/// How a [`Drain::fill`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// The pipe is empty for now.
    Empty,
    /// The buffer is full; the pipe may hold more.
    Full,
    /// Every writer is gone and everything was read.
    Eof,
}

/// The daemon-wide means to look at a pipe without consuming it (see "Peek, write, consume" in
/// the module doc): a scratch pipe that `tee` copies a pipe's head into, emptied at once by a
/// read into the drain's buffer, and `/dev/null`, which `splice` consumes written bytes into.
/// Three descriptors for the whole daemon, whatever the number of instances.
pub struct Peeker {
    /// The scratch pipe (read end, write end), empty between two peeks. Locked only for one
    /// non-blocking `tee` and the reads that empty it again, never across an await.
    scratch: Mutex<(OwnedFd, OwnedFd)>,
    null: OwnedFd,
    /// The most bytes one peek can see: the scratch pipe's capacity.
    window: usize,
}

/// Whether a drain without tee/splice (a kernel without them, a read end that is not a pipe)
/// has said so already: once per daemon.
static READ_FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);

impl Peeker {
    /// The scratch pipe, enlarged to [`CHUNK`] (or as large as the kernel allows), and
    /// `/dev/null`.
    pub fn new() -> io::Result<Peeker> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        let window = rustix::pipe::fcntl_setpipe_size(&write, CHUNK)
            .or_else(|_| rustix::pipe::fcntl_getpipe_size(&write))?;
        let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
        Ok(Peeker {
            scratch: Mutex::new((read, write)),
            null: null.into(),
            window,
        })
    }

    /// Appends a copy of up to `want` bytes from the head of `pipe` to `buf`, leaving them in
    /// the pipe. `Ok(0)`: the pipe is empty and has no writer left (end of file); `AGAIN`: empty.
    fn peek(&self, pipe: BorrowedFd<'_>, buf: &mut Vec<u8>, want: usize) -> Result<usize, Errno> {
        let want = want.min(self.window);
        let scratch = lock(&self.scratch);
        let (scratch_read, scratch_write) = (&scratch.0, &scratch.1);
        let n = loop {
            match rustix::pipe::tee(pipe, scratch_write, want, SpliceFlags::NONBLOCK) {
                Err(Errno::INTR) => {}
                r => break r?,
            }
        };
        buf.reserve_exact(n);
        let end = buf.len() + n;
        while buf.len() < end {
            match rustix::io::read(scratch_read, rustix::buffer::spare_capacity(buf)) {
                // The scratch pipe gave less than `tee` put in: cannot happen.
                Ok(0) => return Err(Errno::IO),
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => {
                    // Never leave the scratch pipe holding bytes for the next peek.
                    while let Ok(1..) = rustix::pipe::splice(
                        scratch_read,
                        None,
                        &self.null,
                        None,
                        self.window,
                        SpliceFlags::NONBLOCK,
                    ) {}
                    return Err(e);
                }
            }
        }
        Ok(n)
    }

    /// Takes exactly `n` bytes (already written to the files) out of the head of `pipe`.
    fn consume(&self, pipe: BorrowedFd<'_>, n: usize) -> io::Result<()> {
        let mut left = n;
        while left > 0 {
            match rustix::pipe::splice(pipe, None, &self.null, None, left, SpliceFlags::NONBLOCK) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(k) => left -= k,
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Whether `pipe` has no writer left (`POLLHUP`), asked when a peek finds only bytes seen
/// before: a pipe still holding a partial line never reads as end of file.
fn hung_up(pipe: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&pipe, PollFlags::IN)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&zero))
        .is_ok_and(|_| fds[0].revents().contains(PollFlags::HUP))
}

/// How the drain takes bytes out of its pipe.
enum Take<'a> {
    /// Peek, write, consume what was written.
    Peek(&'a Peeker),
    /// Plain reads (no tee/splice here): bytes leave the pipe before they are written.
    Read,
}

impl Drain {
    /// Drains `pipe` (non-blocking) until end of file, or until a handover stops it; every byte
    /// taken out of the pipe has been written to the sinks first (see the module doc).
    pub async fn run(self, pipe: OwnedFd) {
        let mut pipe = Pipe::Paced(pipe).watch();
        let mut take = match self.peeker.as_deref() {
            Some(p) => Take::Peek(p),
            None => Take::Read,
        };
        let mut buf: Vec<u8> = Vec::new();
        // Leading bytes of `buf` that are out of the pipe already (all of them when reading;
        // when peeking, only the start of a line too long to wait in the pipe). The rest of
        // `buf` is a copy of the pipe's head.
        let mut held = 0;
        let mut big: Option<BigPipe> = None;
        let mut refused = false;
        let mut last = Fill::Empty;
        // When the pipe last gave bytes: a partial line is written once it has been quiet for
        // `QUIET`.
        let mut last_bytes = Instant::now();
        // Set when bytes were just consumed: the pipe is looked at again before waiting (see
        // "Peek, write, consume" in the module doc: a writer freed by a consume that left bytes
        // in the pipe does not wake the drain).
        let mut look_again = false;
        let handover = self.handover.clone();
        loop {
            if handover.is_cancelled() {
                // Bytes out of the pipe are written before stopping; the rest stays in the pipe.
                if held > 0 {
                    self.emit(buf, held).await;
                }
                break;
            }
            if buf.is_empty() && matches!(pipe, Pipe::Watched(_)) {
                // Idle: hold no buffer while waiting. A paced pipe keeps its buffer for the next
                // read, a millisecond away.
                buf = Vec::new();
            }
            let seen = buf.len();
            // Set when a partial line has waited `QUIET` for more bytes.
            let mut quiet = false;
            let fill = match &pipe {
                Pipe::Watched(_) if std::mem::take(&mut look_again) => {
                    self.fill(&mut take, pipe.fd(), &mut buf, held)
                }
                Pipe::Watched(fd) => {
                    // A pending partial line bounds the wait, and so does an enlarged pipe.
                    let partial_due = (!buf.is_empty()).then(|| last_bytes + QUIET);
                    let shrink_due = big.as_ref().map(|_| Instant::now() + SHRINK_AFTER);
                    let wait = async {
                        match partial_due.into_iter().chain(shrink_due).min() {
                            Some(due) => tokio::time::timeout_at(due, fd.readable()).await.ok(),
                            None => Some(fd.readable().await),
                        }
                    };
                    let waited = tokio::select! {
                        waited = wait => waited,
                        () = handover.cancelled() => continue,
                    };
                    match waited {
                        Some(Ok(mut ready)) => {
                            let fill = self.fill(&mut take, pipe.fd(), &mut buf, held);
                            if matches!(fill, Ok(Fill::Empty)) {
                                ready.clear_ready();
                            }
                            fill
                        }
                        Some(Err(_)) => break,
                        None if partial_due.is_some_and(|due| due <= Instant::now()) => {
                            // One last look, so bytes that came meanwhile (while the runtime
                            // was busy) do not count as quiet.
                            quiet = true;
                            self.fill(&mut take, pipe.fd(), &mut buf, held)
                        }
                        None => {
                            big = big.and_then(|b| b.shrink(fd.get_ref().as_fd()).err());
                            continue;
                        }
                    }
                }
                Pipe::Paced(fd) => {
                    if last != Fill::Full {
                        tokio::select! {
                            () = tokio::time::sleep(PACE) => {}
                            () = handover.cancelled() => continue,
                        }
                    }
                    self.fill(&mut take, fd.as_fd(), &mut buf, held)
                }
            };
            last = fill.unwrap_or_else(|e| {
                debug!(id = self.id, %e, "reading a log pipe failed");
                Fill::Eof
            });
            let got = buf.len().saturating_sub(seen);
            if got > 0 {
                last_bytes = Instant::now();
            } else if last == Fill::Empty && buf.len() > held && hung_up(pipe.fd()) {
                // Only a partial line seen before is left, and nobody can end it.
                last = Fill::Eof;
            }
            match take {
                Take::Read => held = buf.len(),
                Take::Peek(peeker)
                    if last != Fill::Eof && self.must_hold(peeker, &buf, held, pipe.fd()) =>
                {
                    // A line too long to wait in the pipe for its end: its start is taken into
                    // memory (and is lost if the daemon is killed before it is written).
                    if let Err(e) = peeker.consume(pipe.fd(), buf.len() - held) {
                        error!(id = self.id, %e, "a log pipe cannot be consumed; its drain stops");
                        break;
                    }
                    look_again = true;
                    held = buf.len();
                }
                Take::Peek(_) => {}
            }
            pipe = match (pipe, last) {
                (p @ Pipe::Watched(_), Fill::Empty) if got > 0 && got < TRICKLE => p.pace(),
                (p @ Pipe::Paced(_), Fill::Empty) if got == 0 => p.watch(),
                (p @ Pipe::Paced(_), Fill::Full) => p.watch(),
                (p, _) => p,
            };
            if big.is_none() && !refused && got >= BUSY_READ {
                match BigPipe::enlarge(&self.big_pipes, pipe.fd()) {
                    Ok(b) => big = Some(b),
                    Err(NotEnlarged::Budget) => {}
                    Err(NotEnlarged::Refused) => refused = true,
                }
            }
            let eof = last == Fill::Eof;
            // A partial line that got nothing more in `QUIET` is written as it is.
            let cut = self.cut(&buf, eof || quiet && got == 0);
            if cut > 0 {
                let Some(rest) = self.emit(buf, cut).await else {
                    // Given up (the daemon exits or hands over): what was not written stays in
                    // the pipe.
                    break;
                };
                buf = rest;
                if let Take::Peek(peeker) = take
                    && cut > held
                    && let Err(e) = peeker.consume(pipe.fd(), cut - held)
                {
                    error!(id = self.id, %e, "a log pipe cannot be consumed; its drain stops");
                    break;
                }
                look_again |= matches!(take, Take::Peek(_)) && cut > held;
                held = held.saturating_sub(cut);
            }
            if eof {
                break;
            }
        }
    }

    /// Whether the copy of the pipe's head in `buf[held..]` must be taken out of the pipe before
    /// it is written: it holds no newline and fills the peek window or half the pipe (a pipe
    /// holds at least half its capacity when full, however the app cut its writes), so the rest
    /// of the line could not come, or not be seen, while it stays there.
    fn must_hold(&self, peeker: &Peeker, buf: &[u8], held: usize, pipe: BorrowedFd<'_>) -> bool {
        let peeked = &buf[held..];
        if peeked.is_empty() || buf.len() > self.max_line || memchr::memchr(b'\n', peeked).is_some()
        {
            return false;
        }
        let half_pipe = rustix::pipe::fcntl_getpipe_size(pipe).map_or(0, |c| c / 2);
        peeked.len() >= peeker.window.min(half_pipe)
    }

    /// Takes what the pipe holds into `buf` (see [`Take`]); `held` leading bytes of `buf` are
    /// out of the pipe already, and the rest is taken again (a peek always starts at the head).
    fn fill(
        &self,
        take: &mut Take<'_>,
        pipe: BorrowedFd<'_>,
        buf: &mut Vec<u8>,
        held: usize,
    ) -> io::Result<Fill> {
        let Take::Peek(peeker) = *take else {
            return self.read(pipe, buf);
        };
        buf.truncate(held);
        let limit = CHUNK.max(self.max_line + 1);
        let want = peeker.window.min(limit - held.min(limit));
        if want == 0 {
            return Ok(Fill::Full);
        }
        let held_before = rustix::io::ioctl_fionread(pipe).map_or(0, |n| n as usize);
        match peeker.peek(pipe, buf, want) {
            Ok(0) => Ok(Fill::Eof),
            Ok(n) if n == want => Ok(Fill::Full),
            // `tee` also stops when the scratch pipe has no slot left, and a slot holds what the
            // app's writes put in it (a page at most): less than the pipe held means more is there.
            Ok(n) if n < held_before.min(want) => Ok(Fill::Full),
            Ok(_) | Err(Errno::AGAIN) => Ok(Fill::Empty),
            Err(e @ (Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP)) => {
                if !READ_FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
                    warn!(id = self.id, %e, "no tee/splice on a log pipe: its drain reads it \
                        (bytes read are lost if the daemon is killed before it writes them)");
                }
                *take = Take::Read;
                self.read(pipe, buf)
            }
            Err(e) => Err(io::Error::from(e)),
        }
    }

    /// Reads what the pipe holds into `buf`, up to [`CHUNK`] bytes (more only to finish a line
    /// shorter than `max_line`).
    fn read(&self, pipe: BorrowedFd<'_>, buf: &mut Vec<u8>) -> io::Result<Fill> {
        let limit = CHUNK.max(self.max_line + 1);
        if buf.capacity() < CHUNK {
            buf.reserve_exact(CHUNK - buf.len());
        }
        loop {
            if buf.len() == buf.capacity() {
                if buf.len() >= CHUNK && memchr::memchr(b'\n', buf).is_some() || buf.len() >= limit
                {
                    return Ok(Fill::Full);
                }
                buf.reserve_exact((buf.len()).min(limit - buf.len()));
            }
            match rustix::io::read(pipe, rustix::buffer::spare_capacity(buf)) {
                Ok(0) => return Ok(Fill::Eof),
                Ok(_) => {}
                Err(rustix::io::Errno::AGAIN) => return Ok(Fill::Empty),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// How many leading bytes of `buf` to write now: up to the last newline, a `max_line` piece
    /// of an over-long line, or everything when `all` (end of file, or a partial line that got
    /// nothing more for [`QUIET`]).
    fn cut(&self, buf: &[u8], all: bool) -> usize {
        if all {
            return buf.len();
        }
        match memchr::memrchr(b'\n', buf) {
            Some(nl) => nl + 1,
            None if buf.len() > self.max_line => self.max_line,
            None => 0,
        }
    }

    /// Writes `buf[..cut]` (adding a newline where a line was cut or ended without one), then
    /// sends it to followers, and returns the buffer with the rest moved to its front.
    ///
    /// Followers are looked for only once the lines are in the file, and get where the file then
    /// ends: `pm2rs logs` subscribes, then reads the files' tails, so a follower that subscribed
    /// while this write was under way (and may have read a tail without these lines) gets them,
    /// and one whose tail already held them can tell and skip them.
    ///
    /// `None` when the write was given up (the daemon exits or hands over, see [`Drain::write`]).
    async fn emit(&self, mut buf: Vec<u8>, cut: usize) -> Option<Vec<u8>> {
        let at_us = pm2rs_proto::unix_micros();
        // Rare: a complete line longer than max_line arrived at once; split it into pieces.
        let split = split_long(&buf[..cut], self.max_line);
        let lines = split.as_deref().unwrap_or(&buf[..cut]);
        let needs_newline = !lines.ends_with(b"\n");
        let out = self.format.apply(lines, self, needs_newline, at_us);
        // After the write, `buf[..cut]` still holds the lines; `tail` the rest if moved out.
        let (mut buf, file_end, tail) = match out {
            Some(formatted) => {
                let (_, file_end) = self.write(formatted).await?;
                (buf, file_end, None)
            }
            None if needs_newline || split.is_some() => {
                let mut whole = lines.to_vec();
                if needs_newline {
                    whole.push(b'\n');
                }
                let (_, file_end) = self.write(whole).await?;
                (buf, file_end, None)
            }
            None => {
                // Raw lines: write the buffer itself; only the partial line after them is copied.
                let tail = buf[cut..].to_vec();
                buf.truncate(cut);
                let (back, file_end) = self.write(buf).await?;
                (back, file_end, Some(tail))
            }
        };
        let lines = split.as_deref().or(buf.get(..cut));
        if let Some(lines) = lines.filter(|_| self.followers.receiver_count() > 0) {
            let _ = self.followers.send(Arc::new(Batch {
                id: self.id,
                name: self.name.clone(),
                namespace: self.namespace.clone(),
                stream: self.stream,
                at_us,
                lines: lines.to_vec(),
                file_end,
            }));
        }
        match tail {
            Some(tail) => {
                buf.clear();
                buf.extend_from_slice(&tail);
            }
            None => {
                buf.copy_within(cut.., 0);
                buf.truncate(buf.len() - cut);
            }
        }
        Some(buf)
    }

    /// Writes `data` to every sink on a blocking thread, retrying until it is all written.
    /// Returns the buffer so its allocation is reused, and where the first sink's file ended
    /// right after this write; `None` when a failing write is given up because the daemon
    /// exits or hands over (its bytes, still in the pipe when peeking, are then not consumed: a
    /// sink that got them before may get them again from the next drain).
    async fn write(&self, data: Vec<u8>) -> Option<(Vec<u8>, Option<FileEnd>)> {
        let mut data = data;
        let mut file_end = None;
        for (i, sink) in self.sinks.iter().enumerate() {
            let mut from = 0;
            let mut delay = RETRY_FIRST;
            loop {
                let sink = sink.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let mut s = lock_sink(&sink);
                    let r = s.write(&data[from..]).map(|()| s.end()).map_err(|(n, _)| n);
                    (data, r)
                })
                .await;
                let Ok((back, r)) = result else {
                    // The blocking pool is shutting down: nothing more can be written.
                    return None;
                };
                data = back;
                match r {
                    Ok(end) => {
                        if i == 0 {
                            file_end = end;
                        }
                        self.written
                            .fetch_add((data.len() - from) as u64, Ordering::Relaxed);
                        break;
                    }
                    Err(n) => {
                        from += n;
                        let give_up = async {
                            if !self.closing.is_cancelled() && !self.handover.is_cancelled() {
                                tokio::select! {
                                    () = tokio::time::sleep(delay) => return false,
                                    () = self.closing.cancelled() => {}
                                    () = self.handover.cancelled() => {}
                                }
                            }
                            true
                        };
                        if give_up.await {
                            error!(
                                id = self.id,
                                bytes = data.len() - from,
                                "the daemon is exiting and a log file still cannot be written: \
                                 the drain stops; what it did not write stays in the pipe"
                            );
                            return None;
                        }
                        delay = (delay * 2).min(RETRY_MAX);
                    }
                }
            }
        }
        Some((data, file_end))
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
    use crate::logs::{Capture, LogHub, Rotation};
    use pm2rs_proto::{AppSpec, LogDefaults};
    use std::io::Write as _;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;
    use std::path::PathBuf;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    /// Whether the pipe (fd number and inode) is in one of this process's epoll sets, as the
    /// kernel lists them in `/proc/self/fdinfo`.
    fn in_epoll(fd: i32, ino: u64) -> bool {
        let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
            return false;
        };
        let wanted = (fd.to_string(), format!("{ino:x}"));
        fds.flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|l| l.as_os_str() == "anon_inode:[eventpoll]")
            })
            .filter_map(|e| {
                std::fs::read_to_string(format!(
                    "/proc/self/fdinfo/{}",
                    e.file_name().to_string_lossy()
                ))
                .ok()
            })
            .any(|info| {
                info.lines().any(|line| {
                    // `tfd:        9 events:       19 data: ... pos:0 ino:3f6 sdev:d`
                    let mut words = line.split_whitespace();
                    let tfd = words.next() == Some("tfd:") && words.next() == Some(&wanted.0);
                    tfd && words.any(|w| w.strip_prefix("ino:") == Some(&wanted.1))
                })
            })
    }

    /// Tells the writer thread to stop when dropped, a failed assertion included.
    struct Pause(Arc<AtomicBool>);

    impl Drop for Pause {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    /// Polls `cond` every millisecond, letting the runtime run, until it holds or 20 s pass.
    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A log hub writing into a new temporary directory, without rotation.
    fn hub() -> (tempfile::TempDir, LogHub) {
        let dir = tempfile::tempdir().unwrap();
        let defaults = LogDefaults {
            max_size: 0,
            retain: 0,
            compress: false,
            max_line: 1 << 20,
        };
        let hub = LogHub::new(dir.path().to_path_buf(), defaults);
        (dir, hub)
    }

    /// The pipes of instance 0 of app `name`: the write ends (stdout, stderr) and the capture.
    fn capture(hub: &LogHub, name: &str) -> (OwnedFd, OwnedFd, crate::logs::Capture) {
        let spec = Arc::new(AppSpec::new(name, "/bin/true", "/"));
        hub.capture(spec, 0).unwrap()
    }

    #[tokio::test]
    async fn a_pipe_written_in_small_pieces_leaves_epoll_and_returns_when_idle() {
        let (dir, hub) = hub();
        let (out, err, capture) = capture(&hub, "small");
        let fd = capture.out_read.as_raw_fd();
        let ino = std::fs::File::from(capture.out_read.try_clone().unwrap())
            .metadata()
            .unwrap()
            .ino();
        let drained = hub.start(capture, std::process::id());
        until("the idle pipe is watched", || in_epoll(fd, ino)).await;

        // One line per write, thousands per second (each read finds a few: small reads, however
        // loaded the machine), until told to pause.
        let pause = Pause(Arc::new(AtomicBool::new(false)));
        let writer = std::thread::spawn({
            let pause = pause.0.clone();
            move || {
                let mut out = std::fs::File::from(out);
                let mut n = 0u64;
                while !pause.load(Ordering::Relaxed) {
                    n += 1;
                    writeln!(out, "line {n}").unwrap();
                    std::thread::sleep(Duration::from_micros(20));
                }
                (out, n)
            }
        });
        until("the busy pipe is paced", || !in_epoll(fd, ino)).await;
        drop(pause);
        // Joined once done: blocking here would stop the drain the writer may be waiting on.
        until("the writer stopped", || writer.is_finished()).await;
        let (out, mut n) = writer.join().unwrap();
        until("the pipe is watched again once idle", || in_epoll(fd, ino)).await;

        // Watched again, it still wakes the drain: one more line, then end of file.
        let mut out = out;
        n += 1;
        writeln!(out, "line {n}").unwrap();
        let file = dir.path().join("small-out.log");
        let last = format!("line {n}\n");
        until("the last line is in the file", || {
            std::fs::read_to_string(&file).is_ok_and(|t| t.ends_with(&last))
        })
        .await;
        drop((out, err));
        until("both pipes are drained", || drained.is_done()).await;
        let text = std::fs::read_to_string(&file).unwrap();
        let expected: String = (1..=n).map(|i| format!("line {i}\n")).collect();
        assert!(
            text == expected,
            "the file does not hold lines 1..={n} in order"
        );
    }

    fn pipe_size(fd: &OwnedFd) -> i32 {
        fcntl(fd, FcntlArg::F_GETPIPE_SZ).unwrap()
    }

    #[test]
    fn pipes_are_enlarged_within_the_daemon_wide_budget_and_shrunk_back() {
        let (read, write) = nix::unistd::pipe().unwrap();
        let first = pipe_size(&write);
        let budget = Arc::new(AtomicUsize::new(BIG_PIPES_MAX));
        assert_eq!(
            BigPipe::enlarge(&budget, read.as_fd()).err(),
            Some(NotEnlarged::Budget)
        );
        assert_eq!(pipe_size(&write), first);
        assert_eq!(budget.load(Ordering::Relaxed), BIG_PIPES_MAX);

        budget.store(BIG_PIPES_MAX - 1, Ordering::Relaxed);
        let big = BigPipe::enlarge(&budget, read.as_fd()).unwrap();
        assert_eq!(pipe_size(&write), BUSY_PIPE_SIZE);
        assert_eq!(budget.load(Ordering::Relaxed), BIG_PIPES_MAX);
        // Holding more than the first size, it stays big (and keeps its share).
        let mut w = std::fs::File::from(write);
        w.write_all(&vec![b'x'; first as usize + 1]).unwrap();
        let big = big.shrink(read.as_fd()).unwrap_err();
        assert_eq!(budget.load(Ordering::Relaxed), BIG_PIPES_MAX);
        let mut sink = vec![0; first as usize + 1];
        std::io::Read::read_exact(
            &mut std::fs::File::from(read.try_clone().unwrap()),
            &mut sink,
        )
        .unwrap();
        big.shrink(read.as_fd()).ok().unwrap();
        assert_eq!(fcntl(&w, FcntlArg::F_GETPIPE_SZ).unwrap(), first);
        assert_eq!(budget.load(Ordering::Relaxed), BIG_PIPES_MAX - 1);
    }

    #[tokio::test]
    async fn a_busy_pipe_is_enlarged_then_shrunk_back_once_idle() {
        let (_dir, hub) = hub();
        let (out, err, capture) = capture(&hub, "big");
        let first = pipe_size(&out);
        let out_probe = out.try_clone().unwrap();
        let drained = hub.start(capture, std::process::id());
        // 100 KiB per write until the test has seen the pipe enlarged.
        let pause = Pause(Arc::new(AtomicBool::new(false)));
        let writer = std::thread::spawn({
            let pause = pause.0.clone();
            move || {
                let mut out = std::fs::File::from(out);
                let chunk = "x".repeat(99) + "\n";
                let chunk = chunk.repeat(1000);
                while !pause.load(Ordering::Relaxed) {
                    out.write_all(chunk.as_bytes()).unwrap();
                }
                out
            }
        });
        until("the busy pipe is enlarged", || {
            pipe_size(&out_probe) == BUSY_PIPE_SIZE
        })
        .await;
        assert_eq!(hub.inner.big_pipes.load(Ordering::Relaxed), 1);
        drop(pause);
        until("the writer stopped", || writer.is_finished()).await;
        let out = writer.join().unwrap();
        until("the idle pipe is shrunk back", || {
            pipe_size(&out_probe) == first
        })
        .await;
        until("its share is given back", || {
            hub.inner.big_pipes.load(Ordering::Relaxed) == 0
        })
        .await;
        drop((out, out_probe, err));
        until("the pipes are drained", || drained.is_done()).await;
    }

    /// Poisons `sink`'s lock: a thread panics while holding it.
    fn poison(sink: &Arc<Mutex<Sink>>) {
        let held = sink.clone();
        let panicked = std::thread::spawn(move || {
            let _guard = held.lock();
            panic!("a writer panics holding the sink's lock (this panic is part of the test)");
        })
        .join();
        assert!(panicked.is_err() && sink.is_poisoned());
    }

    #[tokio::test]
    async fn a_poisoned_sink_lock_still_gets_the_bytes_and_flushes() {
        let (dir, hub) = hub();
        let spec = AppSpec::new("poisoned", "/bin/true", "/");
        let file = dir.path().join("poisoned-out.log");
        // The drain started below shares this sink: the hub hands out one per path.
        let sink = hub.sink(&file, hub.rotation(&spec));
        poison(&sink);
        let (out, err, capture) = capture(&hub, "poisoned");
        let drained = hub.start(capture, std::process::id());
        std::fs::File::from(out).write_all(b"one\ntwo\n").unwrap();
        drop(err);
        until("both pipes are drained", || drained.is_done()).await;
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "one\ntwo\n");
        assert_eq!(drained.written(), 8);
        assert!(!sink.is_poisoned(), "the poison is cleared once reported");

        // `flush` empties a file whose lock is poisoned too.
        poison(&sink);
        let errors = hub.flush_blocking(&[(file.clone(), 0)]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "");
    }

    /// Writes `bytes` into a pipe's write end (small writes: the pipe never fills).
    fn put(pipe: &OwnedFd, bytes: &[u8]) {
        std::fs::File::from(pipe.try_clone().unwrap())
            .write_all(bytes)
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_partial_line_is_written_as_a_line_and_followers_get_it() {
        let (dir, hub) = hub();
        let mut follower = hub.follow();
        let (out, err, capture) = capture(&hub, "prompt");
        let drained = hub.start(capture, std::process::id());
        let file = dir.path().join("prompt-out.log");
        let written = tokio::time::Instant::now();
        put(&out, b"Loading...");
        until("the partial line is in the file", || {
            std::fs::read_to_string(&file).is_ok_and(|t| t == "Loading...\n")
        })
        .await;
        assert!(
            written.elapsed() >= QUIET,
            "written before the pipe was quiet"
        );
        let batch = follower.recv().await.unwrap();
        assert_eq!(batch.lines, b"Loading...");
        // The rest of the line comes later: a line of its own.
        put(&out, b" done\n");
        until("the rest is in the file", || {
            std::fs::read_to_string(&file).is_ok_and(|t| t == "Loading...\n done\n")
        })
        .await;
        assert_eq!(follower.recv().await.unwrap().lines, b" done\n");
        drop((out, err));
        until("both pipes are drained", || drained.is_done()).await;
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "Loading...\n done\n"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_line_whose_pieces_come_within_the_quiet_time_stays_whole() {
        let (dir, hub) = hub();
        let (out, err, capture) = capture(&hub, "slow");
        let drained = hub.start(capture, std::process::id());
        let file = dir.path().join("slow-out.log");
        // Each piece comes just before the last one would be written alone: the quiet time counts
        // from the newest byte, not from the start of the line.
        let gap = QUIET - Duration::from_millis(10);
        for piece in [&b"one "[..], b"two ", b"three"] {
            put(&out, piece);
            tokio::time::sleep(gap).await;
        }
        put(&out, b"\nfour\n");
        until("the lines are in the file", || {
            std::fs::read_to_string(&file).is_ok_and(|t| t.ends_with("four\n"))
        })
        .await;
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "one two three\nfour\n"
        );
        drop((out, err));
        until("both pipes are drained", || drained.is_done()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_partial_line_is_its_own_json_record() {
        let (dir, hub) = hub();
        let mut spec = AppSpec::new("records", "/bin/true", "/");
        spec.logs.json = true;
        let (out, err, capture) = hub.capture(Arc::new(spec), 0).unwrap();
        let drained = hub.start(capture, std::process::id());
        put(&out, b"Loading...");
        let file = dir.path().join("records-out.log");
        until("the partial line is a record", || {
            std::fs::read_to_string(&file).is_ok_and(|t| t.ends_with('\n'))
        })
        .await;
        put(&out, b"done\n");
        drop((out, err));
        until("both pipes are drained", || drained.is_done()).await;
        let messages: Vec<String> = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .map(|l| {
                let record: serde_json::Value = serde_json::from_str(l).unwrap();
                record["message"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(messages, ["Loading...", "done"]);
    }

    #[tokio::test]
    async fn files_exist_before_anything_is_written_and_one_that_cannot_be_is_a_problem() {
        let (dir, hub) = hub();
        let mut spec = AppSpec::new("quiet", "/bin/true", "/");
        spec.logs.log_file = Some(dir.path().join("sub/quiet-all.log"));
        // A directory cannot be made under a device file.
        spec.logs.error_file = Some(PathBuf::from("/dev/null/quiet-error.log"));
        let files = crate::logs::paths(dir.path(), &spec, 0);
        let (out, err, capture) = hub.capture(Arc::new(spec), 0).unwrap();
        let drained = hub.start(capture, std::process::id());
        let combined = files.combined.clone().unwrap();
        until("the out and combined files exist", || {
            files.out.exists() && combined.exists()
        })
        .await;
        until("the error file's problem is reported", || {
            let problems = hub.problems(&[files.err.as_path()]);
            problems.len() == 1 && problems[0].contains("/dev/null/quiet-error.log")
        })
        .await;
        assert_eq!(std::fs::read_to_string(&files.out).unwrap(), "");
        // The app is not held by it: stdout still gets through.
        put(&out, b"still here\n");
        until("stdout is written", || {
            std::fs::read_to_string(&files.out).is_ok_and(|t| t == "still here\n")
        })
        .await;
        drop((out, err));
        until("both pipes are drained", || drained.is_done()).await;
    }

    /// Bytes in a pipe, not yet read, as the kernel counts them (FIONREAD).
    fn in_pipe(read: &OwnedFd) -> u64 {
        rustix::io::ioctl_fionread(read).unwrap()
    }

    /// A pipe whose read end is non-blocking, as a capture's: (read, write).
    fn app_pipe() -> (OwnedFd, OwnedFd) {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let flags = fcntl(&read, FcntlArg::F_GETFL).unwrap();
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        fcntl(&read, FcntlArg::F_SETFL(flags)).unwrap();
        (read, write)
    }

    /// `"{n:08} ...\n"`, 40 bytes.
    fn numbered(n: u64) -> String {
        format!("{n:08} the quick brown fox jumps over\n")
    }

    /// Writes lines 1..=`count` into `out`, each in two writes (so partial lines are often
    /// waiting in the pipe), pausing inside a line now and then; returns the write end when done.
    fn numbered_writer(out: OwnedFd, count: u64) -> std::thread::JoinHandle<OwnedFd> {
        std::thread::spawn(move || {
            let mut file = std::fs::File::from(out);
            for n in 1..=count {
                let line = numbered(n);
                let (head, tail) = line.split_at(8);
                file.write_all(head.as_bytes()).unwrap();
                if n % 16 == 0 {
                    // Now and then a partial line waits a little for its end.
                    std::thread::sleep(Duration::from_micros(200));
                }
                file.write_all(tail.as_bytes()).unwrap();
            }
            file.into()
        })
    }

    /// Checks that `text` holds every numbered line 1..=`count` in order: each line follows the
    /// one before it, or starts again at an earlier line (a chunk written a second time) without
    /// skipping any. Returns how many lines were written twice.
    fn check_numbered(text: &str, count: u64) -> u64 {
        let (mut last, mut max, mut twice) = (0u64, 0u64, 0u64);
        for (i, line) in text.lines().enumerate() {
            let n: u64 = line
                .get(..8)
                .and_then(|d| d.parse().ok())
                .unwrap_or_else(|| panic!("line {i} is not a numbered line: {line:?}"));
            assert_eq!(
                format!("{line}\n"),
                numbered(n),
                "line {i} is cut or joined"
            );
            assert!(
                n <= max + 1,
                "line {i}: {n} follows {last}; lines {} to {} are missing",
                max + 1,
                n - 1
            );
            assert!(
                n == last + 1 || n <= last,
                "line {i}: {n} follows {last}: out of order"
            );
            if n <= max {
                twice += 1;
            }
            max = max.max(n);
            last = n;
        }
        assert_eq!(max, count, "lines {} to {count} are missing", max + 1);
        twice
    }

    /// A small pseudo-random sequence (xorshift), seeded from the clock and printed, so a
    /// failing run can be told from the others.
    fn jitter() -> impl FnMut(u64) -> u64 {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64
            | 1;
        eprintln!("jitter seed {seed}");
        let mut x = seed;
        move |below| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % below
        }
    }

    #[tokio::test]
    async fn bytes_stay_in_the_pipe_until_they_are_written() {
        let (dir, hub) = hub();
        // The file's directory cannot be made while a plain file has its name.
        let blocker = dir.path().join("sub");
        std::fs::write(&blocker, "").unwrap();
        let mut spec = AppSpec::new("held", "/bin/true", "/");
        spec.logs.out_file = Some(blocker.join("held-out.log"));
        let file = blocker.join("held-out.log");
        let (out, err, capture) = hub.capture(Arc::new(spec), 0).unwrap();
        let probe = capture.out_read.try_clone().unwrap();
        let drained = hub.start(capture, std::process::id());
        put(&out, b"one\ntwo\npartial");
        until("the write's failure is reported", || {
            hub.problems(&[file.as_path()]).len() == 1
        })
        .await;
        // The drain has seen the lines and could not write them: they are still in the pipe.
        assert_eq!(
            in_pipe(&probe),
            15,
            "bytes left the pipe before they were written"
        );
        std::fs::remove_file(&blocker).unwrap();
        until(
            "the lines are written once the directory can be made",
            || std::fs::read_to_string(&file).is_ok_and(|t| t == "one\ntwo\n"),
        )
        .await;
        // Only what was written leaves the pipe (an instant after the file has it): the partial
        // line waits there for its end, or for the quiet time. The pipe is read before the file,
        // so a partial line consumed is in the file read after.
        until("the written lines leave the pipe", || {
            let left = in_pipe(&probe);
            let written = std::fs::read_to_string(&file).unwrap_or_default();
            let partial_written = written.ends_with("partial\n");
            assert!(
                left >= 7 || partial_written,
                "bytes left the pipe before they were written"
            );
            left == 7 || partial_written
        })
        .await;
        until("the quiet partial line is written", || {
            std::fs::read_to_string(&file).is_ok_and(|t| t == "one\ntwo\npartial\n")
        })
        .await;
        // It is consumed once its write is done, an instant after the file has it.
        until("the written partial line leaves the pipe", || {
            in_pipe(&probe) == 0
        })
        .await;
        drop((out, err));
        until("both pipes are drained", || drained.is_done()).await;
        assert_eq!(drained.written(), 16);
    }

    #[tokio::test]
    async fn a_stream_handed_over_from_daemon_to_daemon_is_complete_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let spec = Arc::new(AppSpec::new("relay", "/bin/true", "/"));
        let file = dir.path().join("relay-out.log");
        // Lines already in the file stay: a new drain appends.
        std::fs::write(&file, numbered(1)).unwrap();
        // The keeper's copies of the read ends; every daemon drains a duplicate of them.
        let (keep_out, out) = app_pipe();
        let (keep_err, err) = app_pipe();
        drop(err);
        const LINES: u64 = 20_000;
        let writer = numbered_writer(out, LINES);
        let mut next = jitter();
        let mut handovers = 0;
        let drained = loop {
            let defaults = LogDefaults {
                max_size: 0,
                retain: 0,
                compress: false,
                max_line: 1 << 20,
            };
            let hub = LogHub::new(dir.path().to_path_buf(), defaults);
            let capture = Capture::from_pipes(
                keep_out.try_clone().unwrap(),
                keep_err.try_clone().unwrap(),
                spec.clone(),
                0,
            )
            .unwrap();
            let drained = hub.start(capture, std::process::id());
            if writer.is_finished() {
                break drained;
            }
            tokio::time::sleep(Duration::from_micros(next(10_000))).await;
            assert!(
                hub.handover(Duration::from_secs(10)).await,
                "the drains did not stop"
            );
            handovers += 1;
        };
        drop(writer.join().unwrap());
        until("the last drain reaches end of file", || drained.is_done()).await;
        assert!(
            handovers > 3,
            "only {handovers} handovers: the test proves little"
        );
        let text = std::fs::read_to_string(&file).unwrap();
        // The first line was in the file before; the stream starts again at 1.
        let text = text.strip_prefix(&numbered(1)).unwrap();
        assert_eq!(
            check_numbered(text, LINES),
            0,
            "a handover wrote lines twice"
        );
    }

    /// A drain of `read` into a sink of its own on `path`, as a daemon of its own would run it.
    fn lone_drain(
        path: &Path,
        read: OwnedFd,
    ) -> (impl Future<Output = ()> + use<>, Arc<Mutex<Sink>>) {
        let rotation = Rotation {
            max_size: 0,
            retain: 0,
            compress: false,
        };
        let sink = Arc::new(Mutex::new(Sink::new(
            path.to_path_buf(),
            rotation,
            Arc::default(),
        )));
        (lone(sink.clone()).run(read), sink)
    }

    /// A drain into `sink` alone, peeking.
    fn lone(sink: Arc<Mutex<Sink>>) -> Drain {
        let spec = AppSpec::new("lone", "/bin/true", "/");
        Drain {
            id: 0,
            pid: 0,
            name: "lone".into(),
            namespace: "default".into(),
            stream: LogStream::Out,
            sinks: vec![sink],
            format: Arc::new(crate::logs::LineFormat::of(&spec)),
            max_line: 1 << 20,
            followers: broadcast::channel(1).0,
            closing: CancellationToken::new(),
            written: Arc::default(),
            big_pipes: Arc::default(),
            peeker: Some(Arc::new(Peeker::new().unwrap())),
            handover: CancellationToken::new(),
        }
    }

    #[test]
    fn a_peek_cut_short_by_the_scratch_pipes_slots_counts_as_full() {
        // 100-byte writes fill each page of a pipe to 4,000 bytes (a write that does not fit in
        // the last page starts the next), so the scratch pipe's slots run out before its
        // capacity in bytes: the peek sees less than the window while the pipe holds more.
        let (read, write) =
            rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).unwrap();
        rustix::pipe::fcntl_setpipe_size(&write, 1 << 20).unwrap();
        let mut line = vec![b'x'; 99];
        line.push(b'\n');
        for _ in 0..5_000 {
            assert_eq!(rustix::io::write(&write, &line).unwrap(), 100);
        }
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::new(
            dir.path().join("slots.log"),
            Rotation {
                max_size: 0,
                retain: 0,
                compress: false,
            },
            Arc::default(),
        );
        let drain = lone(Arc::new(Mutex::new(sink)));
        let peeker = drain.peeker.clone().unwrap();
        let mut take = Take::Peek(&peeker);
        let mut buf = Vec::new();
        let fill = drain.fill(&mut take, read.as_fd(), &mut buf, 0).unwrap();
        assert!(
            buf.len() < peeker.window,
            "the peek was not cut short ({} bytes): nothing to test",
            buf.len()
        );
        assert_eq!(fill, Fill::Full, "{} of 500000 bytes seen", buf.len());
    }

    #[tokio::test]
    async fn a_stream_across_drains_killed_at_random_instants_is_complete_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("killed-out.log");
        let (keep, out) = app_pipe();
        const LINES: u64 = 20_000;
        let writer = numbered_writer(out, LINES);
        let mut next = jitter();
        let mut kills = 0;
        while !writer.is_finished() {
            let (run, sink) = lone_drain(&file, keep.try_clone().unwrap());
            let task = tokio::spawn(run);
            tokio::time::sleep(Duration::from_micros(next(10_000))).await;
            // Killed wherever it is: a read, a wait, a write under way.
            task.abort();
            let _ = task.await;
            // Gone like a killed daemon: no write of it still under way on a blocking thread.
            until("the killed drain's writes are over", || {
                Arc::strong_count(&sink) == 1
            })
            .await;
            kills += 1;
        }
        drop(writer.join().unwrap());
        let (run, _sink) = lone_drain(&file, keep);
        tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("the last drain ends at end of file");
        assert!(kills > 3, "only {kills} kills: the test proves little");
        let twice = check_numbered(&std::fs::read_to_string(&file).unwrap(), LINES);
        eprintln!("{kills} kills, {twice} lines written twice");
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_line_waiting_for_its_end_survives_a_handover_whole() {
        let (dir, hub) = hub();
        let (out, err, capture) = capture(&hub, "prompt");
        let keep_out = capture.out_read.try_clone().unwrap();
        let keep_err = capture.err_read.try_clone().unwrap();
        let spec = capture.spec.clone();
        hub.start(capture, std::process::id());
        let file = dir.path().join("prompt-out.log");
        put(&out, b"Loading...");
        // Seen by the drain, and not yet quiet for long enough to be written alone.
        tokio::time::sleep(QUIET / 2).await;
        assert!(hub.handover(Duration::from_secs(5)).await);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "");
        assert_eq!(in_pipe(&keep_out), 10, "the partial line left the pipe");
        // The next daemon's drain gets it, and its end: one line.
        let next = LogHub::new(dir.path().to_path_buf(), hub.defaults());
        let capture = Capture::from_pipes(keep_out, keep_err, spec, 0).unwrap();
        let drained = next.start(capture, std::process::id());
        put(&out, b" done\n");
        drop((out, err));
        until("both pipes are drained", || drained.is_done()).await;
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "Loading... done\n");
    }

    #[tokio::test]
    async fn lines_longer_than_the_pipe_or_the_peek_stay_whole_up_to_max_line() {
        let (dir, hub) = hub();
        for (name, enlarged) in [("enlarged", true), ("small-pipe", false)] {
            // Without the budget, the pipe keeps its first 64 KiB.
            let budget = if enlarged { 0 } else { BIG_PIPES_MAX };
            hub.inner.big_pipes.store(budget, Ordering::Relaxed);
            let (out, err, capture) = capture(&hub, name);
            let drained = hub.start(capture, std::process::id());
            let mb = 1 << 20;
            let writer = std::thread::spawn(move || {
                let mut out = std::fs::File::from(out);
                // Longer than the pipe and the peek window, shorter than max_line (1 MiB).
                out.write_all(&vec![b'a'; 600 << 10]).unwrap();
                out.write_all(b"\n").unwrap();
                out.write_all(&vec![b'b'; 2 * mb + mb / 2]).unwrap();
                out.write_all(b"\nend\n").unwrap();
            });
            drop(err);
            until("the writer is done", || writer.is_finished()).await;
            writer.join().unwrap();
            until("both pipes are drained", || drained.is_done()).await;
            let text = std::fs::read(dir.path().join(format!("{name}-out.log"))).unwrap();
            let lengths: Vec<usize> = text.split(|&b| b == b'\n').map(<[u8]>::len).collect();
            assert_eq!(
                lengths,
                [600 << 10, mb, mb, mb / 2, 3, 0],
                "{name}: lines cut elsewhere than at max_line"
            );
        }
    }

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
