//! `walvault status [--db PATH]... [--json]`: asks each database's running `replicate`
//! daemon (over its control socket) what it is doing. Without `--db`, every database of
//! the config file.
//!
//! Exit status: 0 when every database named has a daemon answering; 3 when one has
//! none (it says "no walvault replicate running for PATH" on stderr); 1 on any other
//! error; 2 on bad arguments.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;
use walvault::{Error, Result};

use crate::output::Output;

/// The exit status when a database has no daemon answering.
pub const NOT_RUNNING: u8 = 3;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The database whose daemon to ask (as given to `replicate --db`); repeat for more.
    /// Default: every database of the config file. With the global --json, each
    /// database's state is one JSON document a line, as the daemon sent it.
    #[arg(long = "db")]
    dbs: Vec<PathBuf>,
}

/// Runs the command: prints each database's state, or says none is running.
pub fn run(a: &Args, config: Option<&crate::config::Config>, out: Output) -> ExitCode {
    let dbs: Vec<PathBuf> = match (a.dbs.is_empty(), config) {
        (false, _) => a.dbs.clone(),
        (true, Some(config)) => config.dbs.iter().map(|db| db.path.clone()).collect(),
        (true, None) => {
            eprintln!(
                "walvault: error: say which database: --db app.db, or a config file listing \
                 them ({}, --config PATH or WALVAULT_CONFIG)",
                crate::config::DEFAULT_FILE
            );
            return ExitCode::FAILURE;
        }
    };
    let mut answered = Vec::new();
    let mut absent = Vec::new();
    let mut missing = false;
    for db in &dbs {
        match status_of(db) {
            Ok(Some(doc)) => answered.push(doc),
            Ok(None) => {
                eprintln!("no walvault replicate running for {}", db.display());
                missing = true;
                absent
                    .push(serde_json::json!({ "running": false, "db": db.display().to_string() }));
            }
            Err(e) => {
                eprintln!("walvault: error: {}", e.to_string().replace('\n', " "));
                return ExitCode::FAILURE;
            }
        }
    }
    if out.is_json() {
        for doc in answered.iter().chain(&absent) {
            out.json(doc);
        }
    } else if !answered.is_empty() {
        out.line(table(&answered).trim_end());
    }
    if missing {
        ExitCode::from(NOT_RUNNING)
    } else {
        ExitCode::SUCCESS
    }
}

/// What the daemon replicating `db` says about it: its status document, or None when no
/// daemon answers (no socket, or one left by a daemon that is gone).
pub fn status_of(db: &Path) -> Result<Option<Value>> {
    let path = super::log_dir(db).join(super::SOCKET_NAME);
    ask(&path)
}

#[cfg(unix)]
fn ask(path: &Path) -> Result<Option<Value>> {
    use std::io::ErrorKind;
    use std::os::unix::net::UnixStream;
    let asking = || format!("asking the daemon on {}", path.display());
    let mut stream = match UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Ok(None)
        }
        Err(e) => return Err(Error::io(asking(), e)),
    };
    let timeout = Some(std::time::Duration::from_secs(10));
    stream
        .set_read_timeout(timeout)
        .map_err(|e| Error::io(asking(), e))?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| Error::io(asking(), e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::io(asking(), std::io::Error::new(ErrorKind::InvalidData, e)))
}

#[cfg(not(unix))]
fn ask(_path: &Path) -> Result<Option<Value>> {
    Err(Error::Unsupported(
        "`walvault status` needs Unix sockets; use `replicate --metrics-addr` here".into(),
    ))
}

/// The human form: one row per database, then any last errors.
fn table(docs: &[Value]) -> String {
    let header = [
        "DB",
        "NAMESPACE",
        "STATE",
        "PID",
        "APPLIED",
        "WRITTEN",
        "DURABLE",
        "LAG",
        "SHIPPED",
        "ERRORS",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let mut notes = Vec::new();
    for doc in docs {
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Null => "-".to_string(),
            other => other.to_string(),
        };
        let at = |path: &str| text(doc.pointer(path).unwrap_or(&Value::Null));
        let number = |path: &str| doc.pointer(path).and_then(Value::as_u64).unwrap_or(0);
        let lag = doc.pointer("/lag_seconds").and_then(Value::as_f64);
        rows.push(vec![
            at("/db"),
            at("/namespace"),
            at("/state"),
            at("/pid"),
            at("/frames/applied"),
            at("/frames/written"),
            at("/frames/durable"),
            lag.map_or("-".into(), |s| format!("{s:.1}s")),
            bytesize::ByteSize::b(number("/counters/bytes_shipped")).to_string(),
            format!(
                "{} ({} retries)",
                number("/counters/upload_errors"),
                number("/counters/upload_retries")
            ),
        ]);
        if let Some(e) = doc.pointer("/last_error/error").and_then(Value::as_str) {
            notes.push(format!(
                "{}: last error at {}: {e}",
                at("/db"),
                at("/last_error/at")
            ));
        }
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for note in notes {
        out.push_str(&note);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_database_and_the_last_error() {
        let doc = serde_json::json!({
            "db": "app.db", "namespace": "app", "state": "replicating", "pid": 7,
            "frames": {"applied": 12, "written": 11, "durable": 10},
            "lag_seconds": 1.25,
            "counters": {"bytes_shipped": 2048, "upload_errors": 1, "upload_retries": 1},
            "last_error": {"at": "2026-01-01T00:00:00.000Z", "error": "store down"},
        });
        let text = table(&[doc]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("DB "), "{text}");
        for want in [
            "app.db",
            "replicating",
            "12",
            "11",
            "10",
            "1.2s",
            "1 (1 retries)",
        ] {
            assert!(lines[1].contains(want), "{want}: {text}");
        }
        assert!(lines[2].contains("store down"), "{text}");
    }

    #[test]
    fn a_database_without_a_daemon_has_no_status() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        assert_eq!(status_of(&db).unwrap(), None);
        // A socket file left by a daemon that is gone: nobody answers.
        #[cfg(unix)]
        {
            std::fs::create_dir_all(super::super::log_dir(&db)).unwrap();
            let path = super::super::log_dir(&db).join(super::super::SOCKET_NAME);
            drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
            assert!(path.exists());
            assert_eq!(status_of(&db).unwrap(), None);
        }
    }
}
