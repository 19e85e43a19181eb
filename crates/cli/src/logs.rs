//! `pm2rs logs`: the last lines of each matching log file (read from the end, never whole), then
//! the daemon's live stream (`GET /v1/logs/stream`, newline-delimited JSON), which also carries
//! apps started after the command began. Also `flush` and `reload-logs`.
//!
//! Each line is printed as `id|name| line`, the prefix coloured when stdout is a terminal and
//! `NO_COLOR` is unset; `--raw` prints the bare line, `--json` one JSON object per line.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::ExitCode;

use http_body_util::BodyExt;
use pm2rs_proto::{
    DescribeResponse, ErrorKind, FileEnd, FlushResponse, LogEvent, LogStream, TargetRequest, routes,
};
use tokio::signal::unix::{SignalKind, signal};

use crate::LogsArgs;
use crate::client::{Client, DaemonError};
use crate::commands::StdoutClosed;

/// Bytes read per step when searching a file backwards for its last lines.
const TAIL_BLOCK: u64 = 64 << 10;

pub async fn logs(home: &Path, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect_or_start(home).await?;
    let described = match c
        .post::<_, DescribeResponse>(
            routes::DESCRIBE,
            &TargetRequest {
                target: args.target.clone(),
            },
        )
        .await
    {
        Ok(d) => d.processes,
        // Nothing matches yet: a follower waits for it to start.
        Err(e)
            if !args.nostream
                && e.downcast_ref::<DaemonError>()
                    .is_some_and(|d| d.0.kind == ErrorKind::NotFound) =>
        {
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let (want_out, want_err) = match (args.out, args.err) {
        (false, false) => (true, true),
        flags => flags,
    };
    // One SIGINT listener for the whole run: a Ctrl-C that arrives while a frame is being printed
    // must still end the loop (a `ctrl_c()` future made anew per iteration misses it, and by then
    // the default action of SIGINT is gone).
    let mut interrupt = if args.nostream {
        None
    } else {
        Some(signal(SignalKind::interrupt())?)
    };
    // Subscribe before reading the tails, so no line falls between the two; the lines in both
    // are told apart by where they end in their file (`in_printed_tail`).
    let body = if args.nostream {
        None
    } else {
        let query = format!(
            "{}?target={}&out={want_out}&err={want_err}",
            routes::LOG_STREAM,
            encode(&args.target)
        );
        let mut follower = Client::connect_or_start(home).await?;
        Some(follower.stream(&query).await?)
    };

    let mut printer = Printer::new(&args);
    let mut seen = Vec::new();
    let mut printed = Vec::new();
    for d in &described {
        for (path, stream, wanted) in [
            (&d.out_log, LogStream::Out, want_out),
            (&d.err_log, LogStream::Err, want_err),
        ] {
            if !wanted || seen.contains(path) || path.starts_with("/dev") {
                continue;
            }
            seen.push(path.clone());
            let lines = match last_lines(path, args.lines) {
                Ok(tail) => {
                    printed.push(Printed {
                        end: tail.end,
                        at_us: pm2rs_proto::unix_micros(),
                    });
                    tail.lines
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) => {
                    eprintln!("pm2rs: cannot read {}: {e}", path.display());
                    continue;
                }
            };
            printer.header(path, args.lines)?;
            for line in &lines {
                printer.line(d.process.id, &d.process.name, stream, line, None)?;
            }
            printer.flush()?;
        }
    }

    let (Some(mut body), Some(interrupt)) = (body, interrupt.as_mut()) else {
        return Ok(ExitCode::SUCCESS);
    };
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let frame = tokio::select! {
            _ = interrupt.recv() => return Ok(ExitCode::SUCCESS),
            frame = body.frame() => frame,
        };
        let Some(frame) = frame else {
            eprintln!("[pm2rs] the daemon ended the log stream");
            return Ok(ExitCode::SUCCESS);
        };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        let Some(end) = pending.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        for raw in pending[..end].split(|&b| b == b'\n') {
            match serde_json::from_slice::<LogEvent>(raw) {
                Ok(LogEvent::Line {
                    at_us, file_end, ..
                }) if in_printed_tail(&printed, at_us, file_end) => {}
                Ok(LogEvent::Line {
                    id,
                    name,
                    stream,
                    line,
                    at_us,
                    ..
                }) => printer.line(id, &name, stream, line.as_bytes(), Some(at_us))?,
                Ok(LogEvent::Skipped { lines }) => eprintln!(
                    "[pm2rs] {lines} line(s) not shown: this terminal fell behind (the files have them)"
                ),
                Err(_) => {}
            }
        }
        pending.drain(..=end);
        printer.flush()?;
    }
}

/// `pm2rs flush [target]`.
pub async fn flush(home: &Path, target: String) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect_or_start(home).await?;
    let resp: FlushResponse = c.post(routes::LOG_FLUSH, &TargetRequest { target }).await?;
    let mut text = String::new();
    for f in &resp.files {
        text.push_str(&format!("[pm2rs] emptied {}\n", f.display()));
    }
    if resp.files.is_empty() {
        text.push_str("[pm2rs] no log files to empty\n");
    }
    print(&text)
}

/// `pm2rs reload-logs`.
pub async fn reload(home: &Path) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect_or_start(home).await?;
    let resp: FlushResponse = c.post(routes::LOG_RELOAD, &()).await?;
    print(&format!(
        "[pm2rs] log files reopen at their next write ({} open)\n",
        resp.files.len()
    ))
}

fn print(text: &str) -> anyhow::Result<ExitCode> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(StdoutClosed)?;
    Ok(ExitCode::SUCCESS)
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The last lines of a file, and where the file ended when they were read.
pub struct Tail {
    pub lines: Vec<Vec<u8>>,
    pub end: FileEnd,
}

/// The last `n` lines of `path` (without their newlines), reading backwards from the end in
/// blocks, so a huge file costs no more than its tail.
pub fn last_lines(path: &Path, n: usize) -> io::Result<Tail> {
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
    let len = meta.len();
    let end = FileEnd {
        dev: meta.dev(),
        ino: meta.ino(),
        offset: len,
    };
    if n == 0 || len == 0 {
        return Ok(Tail {
            lines: Vec::new(),
            end,
        });
    }
    let mut tail: Vec<u8> = Vec::new();
    let mut pos = len;
    loop {
        let newlines = tail.iter().filter(|&&b| b == b'\n').count();
        // A final newline ends the last line; one more is needed before the first wanted line.
        let needed = n + usize::from(tail.ends_with(b"\n") || pos == len);
        if pos == 0 || newlines > needed {
            break;
        }
        let step = TAIL_BLOCK.min(pos);
        pos -= step;
        file.seek(SeekFrom::Start(pos))?;
        let mut block = vec![0; step as usize];
        file.read_exact(&mut block)?;
        block.extend_from_slice(&tail);
        tail = block;
    }
    let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
    let mut lines: Vec<Vec<u8>> = body.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    // Unless the file was read from its start, the first piece may be a partial line.
    if pos > 0 {
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n);
    Ok(Tail {
        lines: lines.split_off(skip),
        end,
    })
}

/// A file whose tail was printed: where it ended, and when (Unix time, microseconds) the tail had
/// been read.
struct Printed {
    end: FileEnd,
    at_us: u64,
}

/// Whether a streamed line was already printed with a file's tail: the daemon read it before that
/// tail was read, and its batch ends within the part of the same file the tail covered. (The
/// stream is subscribed to before the tails are read, so no line falls between them; this keeps
/// the lines in both from showing twice.)
fn in_printed_tail(printed: &[Printed], at_us: u64, file_end: Option<FileEnd>) -> bool {
    let Some(e) = file_end else {
        return false;
    };
    printed.iter().any(|p| {
        at_us <= p.at_us && (p.end.dev, p.end.ino) == (e.dev, e.ino) && e.offset <= p.end.offset
    })
}

/// How lines are printed.
struct Printer {
    out: io::BufWriter<io::Stdout>,
    color: bool,
    raw: bool,
    json: bool,
    timestamp: bool,
}

/// Prefix colours, picked by instance id.
const PALETTE: [&str; 5] = ["\x1b[36m", "\x1b[32m", "\x1b[33m", "\x1b[34m", "\x1b[35m"];
const RED: &str = "\x1b[31m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

impl Printer {
    fn new(args: &LogsArgs) -> Printer {
        let stdout = io::stdout();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Printer {
            color: stdout.is_terminal() && !no_color && !args.raw && !args.json,
            out: io::BufWriter::new(stdout),
            raw: args.raw,
            json: args.json,
            timestamp: args.timestamp,
        }
    }

    fn header(&mut self, path: &Path, n: usize) -> Result<(), StdoutClosed> {
        if self.raw || self.json {
            return Ok(());
        }
        let (dim, reset) = if self.color { (DIM, RESET) } else { ("", "") };
        writeln!(self.out, "{dim}{} last {n} lines:{reset}", path.display()).map_err(StdoutClosed)
    }

    fn line(
        &mut self,
        id: u32,
        name: &str,
        stream: LogStream,
        line: &[u8],
        at_us: Option<u64>,
    ) -> Result<(), StdoutClosed> {
        let result = if self.json {
            let event = LogEvent::Line {
                id,
                name: name.to_string(),
                stream,
                line: String::from_utf8_lossy(line).into_owned(),
                at_us: at_us.unwrap_or(0),
                file_end: None,
            };
            serde_json::to_writer(&mut self.out, &event)
                .map_err(io::Error::other)
                .and_then(|()| self.out.write_all(b"\n"))
        } else {
            self.text_line(id, name, stream, line)
        };
        result.map_err(StdoutClosed)
    }

    fn text_line(&mut self, id: u32, name: &str, stream: LogStream, line: &[u8]) -> io::Result<()> {
        if self.timestamp {
            let now = jiff::Zoned::now();
            write!(self.out, "{} ", now.strftime("%Y-%m-%dT%H:%M:%S%:z"))?;
        }
        if !self.raw {
            let colour = match stream {
                LogStream::Err => RED,
                LogStream::Out => PALETTE[id as usize % PALETTE.len()],
            };
            let (start, end) = if self.color {
                (colour, RESET)
            } else {
                ("", "")
            };
            write!(self.out, "{start}{id}|{name}|{end} ")?;
        }
        self.out.write_all(line)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> Result<(), StdoutClosed> {
        self.out.flush().map_err(StdoutClosed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_reads_only_the_tail_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.log");
        let text: String = (0..50_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let got = last_lines(&path, 3).unwrap().lines;
        assert_eq!(
            got,
            vec![
                b"line 49997".to_vec(),
                b"line 49998".to_vec(),
                b"line 49999".to_vec()
            ]
        );
        // More lines than fit in one block, and a last line without its newline.
        std::fs::write(&path, format!("{text}partial")).unwrap();
        let got = last_lines(&path, 20_000).unwrap().lines;
        assert_eq!(got.len(), 20_000);
        assert_eq!(got[0], b"line 30001".to_vec());
        assert_eq!(got.last().unwrap(), b"partial");
        // Fewer lines than asked for; empty file.
        std::fs::write(&path, "a\nb\n").unwrap();
        assert_eq!(
            last_lines(&path, 5).unwrap().lines,
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        std::fs::write(&path, "").unwrap();
        assert!(last_lines(&path, 5).unwrap().lines.is_empty());
    }

    #[test]
    fn a_streamed_line_is_skipped_only_when_the_printed_tail_held_it() {
        let end = |ino, offset| FileEnd {
            dev: 1,
            ino,
            offset,
        };
        let printed = [Printed {
            end: end(7, 1000),
            at_us: 50,
        }];
        // Read before the tail and ending inside it: printed already.
        assert!(in_printed_tail(&printed, 40, Some(end(7, 1000))));
        assert!(in_printed_tail(&printed, 50, Some(end(7, 10))));
        // Ending beyond it, read after it (the file flushed meanwhile), another file (rotated),
        // or no position (`/dev/null`): new.
        assert!(!in_printed_tail(&printed, 40, Some(end(7, 1001))));
        assert!(!in_printed_tail(&printed, 51, Some(end(7, 10))));
        assert!(!in_printed_tail(&printed, 40, Some(end(8, 10))));
        assert!(!in_printed_tail(&printed, 40, None));
        assert!(!in_printed_tail(&[], 40, Some(end(7, 10))));
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("api"), "api");
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }
}
