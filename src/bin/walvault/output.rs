//! What commands print on stdout, human or JSON, without panicking when the reader goes
//! away.
//!
//! `println!` panics when stdout is a closed pipe (`walvault info ... | head -1`, a
//! supervisor that stopped reading). Rust ignores SIGPIPE, so a write to a closed pipe
//! returns `EPIPE` instead of killing the process; [`Output`] takes that as "the reader
//! went away": it prints nothing more and the command goes on (a one-shot command finishes
//! and exits as it would have; a daemon keeps replicating, which is why SIGPIPE is not
//! reset to its default for every command). Any other write error (a full disk under a
//! redirect) is reported once on stderr, then output stops likewise.
//!
//! Use it for every line a command prints on stdout:
//!
//! ```ignore
//! fn report(out: &Output, frame_no: u64) {
//!     // One call per event: a line for people, or one JSON object per line with --json.
//!     out.emit(
//!         || format!("at frame {frame_no}"),
//!         || json!({ "event": "position", "frame_no": frame_no }),
//!     );
//!     // Text that only people read (a table's header) is printed only without --json.
//!     out.line("FRAME  TIME");
//! }
//! ```
//!
//! `Output` is `Copy`; the process has one stdout, so the "reader went away" state is
//! process-wide. Progress, notes and warnings go to stderr (`eprintln!`), never here:
//! stdout with `--json` holds JSON only.

use std::fmt::Display;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a write to stdout failed: nothing more is written.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// Where a command's results go: stdout, as lines for people or as JSON (`--json`).
#[derive(Debug, Clone, Copy)]
pub struct Output {
    json: bool,
}

impl Output {
    /// Output in the form `--json` asks for.
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    /// Whether `--json` was given.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Prints one line for people; nothing with `--json` (use [`Output::json`] or
    /// [`Output::emit`] for what JSON readers need).
    pub fn line(&self, text: impl Display) {
        if !self.json {
            write_line(&text);
        }
    }

    /// Prints one JSON value on one line (compact), only with `--json`.
    pub fn json(&self, value: &serde_json::Value) {
        if self.json {
            write_line(value);
        }
    }

    /// Prints the JSON value with `--json`, else the human line; each is built only when
    /// it is printed.
    pub fn emit(&self, human: impl FnOnce() -> String, json: impl FnOnce() -> serde_json::Value) {
        if self.json {
            write_line(&json());
        } else {
            write_line(&human());
        }
    }
}

/// Writes `text` and a newline to stdout and flushes it (a line is seen at once, also
/// through a pipe); after the first failure it writes nothing.
fn write_line(text: &dyn Display) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let written = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
    if let Err(e) = written {
        if !STDOUT_GONE.swap(true, Ordering::Relaxed) && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            eprintln!("walvault: warning: writing to stdout failed ({e}); printing no more");
        }
    }
}
