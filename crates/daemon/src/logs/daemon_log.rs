//! The daemon's own log, `$PM2RS_HOME/pm2rs.log`: a [`Sink`] (so it rotates with the daemon-wide
//! defaults and reopens on `reload-logs` / SIGUSR2) used as tracing's writer. Each event is one
//! write of whole lines, so rotation never splits one. The sink is quiet: it reports nothing
//! through tracing, which would call back into this very writer.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

use super::{Rotation, Sink};

/// The tracing writer of the daemon's log. Cheap to clone.
#[derive(Clone)]
pub struct DaemonLog {
    sink: Arc<Mutex<Sink>>,
}

impl DaemonLog {
    /// Opens `path` (checking now that it can be written) with this rotation.
    pub fn open(path: PathBuf, rotation: Rotation, generation: Arc<AtomicU64>) -> io::Result<Self> {
        let mut sink = Sink::new(path, rotation, generation);
        sink.set_quiet();
        sink.write(b"").map_err(|(_, e)| e)?;
        Ok(DaemonLog {
            sink: Arc::new(Mutex::new(sink)),
        })
    }
}

/// One event's writer.
pub struct EventWriter<'a>(&'a Mutex<Sink>);

impl io::Write for EventWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut sink = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A failed write of the daemon's log (full disk) is dropped: nowhere else to report it.
        let _ = sink.write(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for DaemonLog {
    type Writer = EventWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter(&self.sink)
    }
}
