//! `replicate --exec CMD`: the application runs as the daemon's child, so that its
//! supervisor (systemd, a container runtime) stops both together and the daemon gets
//! the chance to make the last commits durable after the application has made them.
//!
//! The command is split into words as a shell would (quotes and backslashes, through
//! `shell-words`) and run directly, without a shell, so the daemon's child is the
//! application itself: its exit status is the application's, and a signal reaches it
//! rather than a shell that would die of it while the application goes on. Write
//! `sh -c '...'` for pipes, `&&` or variables. The child gets the daemon's standard
//! input, output and error and a process group of its own: SIGINT and SIGTERM are passed
//! on to that group, not acted on, and the daemon stops only once the application has
//! exited and every process of its group is gone (they may still commit while they shut
//! down).

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

/// The words of `command`, as a shell splits them (checked before anything starts).
pub fn words(command: &str) -> Result<Vec<String>> {
    let words = shell_words::split(command).map_err(|e| {
        Error::from(walvault::InvalidInput::Config(format!(
            "--exec {command:?} is not a command line: {e}"
        )))
    })?;
    if words.is_empty() {
        return Err(walvault::InvalidInput::Config("--exec names no command".into()).into());
    }
    Ok(words)
}

/// The application.
pub struct Child {
    process: tokio::process::Child,
    /// The process group (the child's pid), while known.
    #[cfg(unix)]
    group: Option<i32>,
    command: String,
    out: Output,
}

impl Child {
    /// Starts `command` (split into words; see the module docs).
    pub fn spawn(command: &str, out: Output) -> Result<Self> {
        let words = words(command)?;
        let Some((program, arguments)) = words.split_first() else {
            return Err(walvault::InvalidInput::Config("--exec names no command".into()).into());
        };
        let mut child = tokio::process::Command::new(program);
        child.args(arguments);
        // A process group of its own, so a signal reaches every process the application
        // started, and a Ctrl-C at the terminal reaches it only through the daemon, once.
        // Not at a terminal, though: a background group that reads the terminal is
        // stopped by the kernel (SIGTTIN). There the application stays in the terminal's
        // group, which Ctrl-C reaches directly.
        #[cfg(unix)]
        let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
        #[cfg(unix)]
        if !interactive {
            child.process_group(0);
        }
        let process = child
            .spawn()
            .map_err(|e| Error::io(format!("starting the application `{command}`"), e))?;
        let pid = process.id().unwrap_or_default();
        out.emit(
            || format!("started the application (pid {pid}): {command}"),
            || json!({ "event": "application_started", "pid": pid, "command": command }),
        );
        Ok(Self {
            #[cfg(unix)]
            group: process
                .id()
                .and_then(|p| i32::try_from(p).ok())
                .filter(|_| !interactive),
            process,
            command: command.to_string(),
            out,
        })
    }

    /// Passes signal `signal` on to the application's process group (at a terminal: a
    /// SIGTERM to the application; a Ctrl-C reached it from the terminal already).
    fn forward(&mut self, signal: SignalNo) {
        self.out.emit(
            || format!("passing signal {signal} on to the application; stopping once it exits"),
            || json!({ "event": "signal_forwarded", "signal": signal }),
        );
        #[cfg(unix)]
        if let Some(pid) = self.process.id().and_then(|p| i32::try_from(p).ok()) {
            let target = match self.group {
                Some(group) => -group,
                None if signal == SIGINT => return,
                None => pid,
            };
            // SAFETY: kill only sends a signal. The target is our child or its own group
            // (its pid is the group id), and the child is not reaped yet (`id` is None
            // once it is), so the id cannot have been reused.
            unsafe {
                libc::kill(target, signal);
            }
        }
        #[cfg(not(unix))]
        let _ = self.process.start_kill();
    }
}

impl Child {
    /// Waits (at most [`GROUP_WAIT`]) until no process of the application's group is
    /// left: one the application started may still be committing.
    async fn wait_for_group(&self) {
        #[cfg(unix)]
        {
            let Some(group) = self.group else { return };
            let deadline = tokio::time::Instant::now() + GROUP_WAIT;
            // SAFETY: signal 0 only checks that some process of the group exists. The
            // group's id is not given to a new process while the group has members.
            while unsafe { libc::kill(-group, 0) } == 0 {
                if tokio::time::Instant::now() >= deadline {
                    eprintln!(
                        "walvault: warning: processes the application started are still \
                         running after {GROUP_WAIT:?}; not waiting for them"
                    );
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

/// How long to wait for what is left of the application's process group.
#[cfg(unix)]
const GROUP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

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
                child.wait_for_group().await;
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
