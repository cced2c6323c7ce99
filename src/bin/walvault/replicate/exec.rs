//! `replicate --exec CMD`: the application runs as the daemon's child, so that its
//! supervisor (systemd, a container runtime) stops both together and the daemon gets
//! the chance to make the last commits durable after the application has made them.
//!
//! The command runs through `sh -c`, as the user would type it, with the daemon's
//! standard input, output and error, in a process group of its own. SIGINT and SIGTERM are passed on to it, not acted on:
//! the daemon stops only once the application has exited (it may still commit while it
//! shuts down).

use std::process::ExitStatus;

use serde_json::json;
use walvault::{Error, Result};

use crate::output::Output;

use super::database::Running;

/// SIGINT and SIGTERM, listened for from creation on (a signal that arrives while the
/// daemon is busy is kept, not lost).
pub struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

/// A received signal's number (SIGINT on systems without signal numbers).
pub type SignalNo = i32;

const SIGINT: SignalNo = 2;
#[cfg(unix)]
const SIGTERM: SignalNo = 15;

impl Signals {
    /// Starts listening. Must be called inside the tokio runtime.
    pub fn listen() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listen = |kind| signal(kind).map_err(|e| Error::io("listening for signals", e));
            Ok(Self {
                int: listen(SignalKind::interrupt())?,
                term: listen(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next signal.
    pub async fn received(&mut self) -> SignalNo {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => SIGINT,
                _ = self.term.recv() => SIGTERM,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            SIGINT
        }
    }
}

/// The application.
pub struct Child {
    process: tokio::process::Child,
    command: String,
    out: Output,
}

impl Child {
    /// Starts `command` with `sh -c`.
    pub fn spawn(command: &str, out: Output) -> Result<Self> {
        let mut shell = tokio::process::Command::new("sh");
        shell.arg("-c").arg(command);
        // A process group of its own, so a signal reaches every process of the command
        // (the shell may fork it rather than exec it), and a Ctrl-C at the terminal
        // reaches the application only through the daemon, once.
        #[cfg(unix)]
        shell.process_group(0);
        let process = shell
            .spawn()
            .map_err(|e| Error::io(format!("starting the application `{command}`"), e))?;
        let pid = process.id().unwrap_or_default();
        out.emit(
            || format!("started the application (pid {pid}): {command}"),
            || json!({ "event": "application_started", "pid": pid, "command": command }),
        );
        Ok(Self {
            process,
            command: command.to_string(),
            out,
        })
    }

    /// Passes signal `signal` on to the application's process group.
    fn forward(&mut self, signal: SignalNo) {
        self.out.emit(
            || format!("passing signal {signal} on to the application; stopping once it exits"),
            || json!({ "event": "signal_forwarded", "signal": signal }),
        );
        #[cfg(unix)]
        if let Some(pid) = self.process.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill only sends a signal. The group is our child's own (its pid is
            // the group id) and the child is not reaped yet (`id` is None once it is),
            // so the id cannot have been reused.
            unsafe {
                libc::kill(-pid, signal);
            }
        }
        #[cfg(not(unix))]
        let _ = self.process.start_kill();
    }
}

/// Runs until the daemon should stop: with an application, until it exits (its status
/// is returned); without one, until a signal, or until every database has failed.
pub async fn supervise(
    child: Option<Child>,
    signals: &mut Signals,
    running: &mut Running,
    out: Output,
) -> Result<Option<u8>> {
    let Some(mut child) = child else {
        tokio::select! {
            _ = signals.received() => {}
            () = running.ended() => {}
        }
        return Ok(None);
    };
    loop {
        tokio::select! {
            signal = signals.received() => child.forward(signal),
            status = child.process.wait() => {
                let status = status.map_err(|e| {
                    Error::io(format!("waiting for the application `{}`", child.command), e)
                })?;
                let code = exit_code(status);
                out.emit(
                    || format!("the application exited with status {code}; making everything durable"),
                    || json!({ "event": "application_exited", "status": code }),
                );
                return Ok(Some(code));
            }
        }
    }
}

/// The status a shell would report: the exit code, or 128 + the signal that ended it.
fn exit_code(status: ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        return (code & 0xff) as u8;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return (128 + signal).clamp(0, 255) as u8;
        }
    }
    1
}
