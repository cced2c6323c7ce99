//! `walvault query`: SQL on a namespace as of any commit, read straight from the store
//! through the read-only VFS (`walvault::vfs`), with no restore and no local copy.
//!
//! Rows print as the `sqlite3` shell prints them (columns joined by `|`, blobs as
//! `X'..'` hex, NULL as empty), or with `--json` one object per statement:
//! `{"namespace", "frame_no", "time", "statement", "columns": [..], "rows": [[..], ..]}`
//! (blobs as hex strings).

use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::types::ValueRef;
use rusqlite::{Batch, Connection, OpenFlags};
use serde_json::json;
use walvault::vfs::{self, VfsOptions, ViewAt, ViewInfo};
use walvault::{Error, Result};

use crate::args;
use crate::output::Output;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The namespace to query.
    #[arg(long)]
    pub(crate) namespace: String,
    /// Query the last commit at or before this time (RFC 3339).
    #[arg(long, value_parser = args::time, conflicts_with = "frame")]
    at: Option<chrono::DateTime<chrono::Utc>>,
    /// Query the last commit at or before this frame number.
    #[arg(long)]
    frame: Option<u64>,
    /// Memory for pages and page indexes read from the store (default 64MiB).
    #[arg(long, value_parser = args::byte_size, value_name = "SIZE")]
    cache: Option<usize>,
    /// The SQL: one or more statements, separated by `;`. Writes are refused.
    sql: String,
}

/// Resolves the view (for a clear error and the note naming the commit), then runs
/// each statement through the VFS, pinned to that commit.
pub fn run(url: &str, a: Args, out: Output) -> Result<()> {
    let at = match (a.at, a.frame) {
        (Some(t), _) => ViewAt::Time(t),
        (None, Some(n)) => ViewAt::Frame(n),
        (None, None) => ViewAt::Latest,
    };
    let mut options = VfsOptions {
        default_store: Some(url.to_string()),
        ..VfsOptions::default()
    };
    if let Some(bytes) = a.cache {
        options.cache_bytes = bytes as u64;
    }
    vfs::register(options)?;
    let info = vfs::describe(Some(url), &a.namespace, at)?;
    if !out.is_json() {
        eprintln!(
            "-- namespace {} at frame {} ({})",
            a.namespace,
            info.frame_no,
            args::rfc3339(info.timestamp)
        );
    }
    let uri = format!(
        "file:{}?vfs={}&frame={}",
        a.namespace,
        vfs::VFS_NAME,
        info.frame_no
    );
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(&uri, flags).map_err(|e| sql_error(&uri, e))?;
    let mut batch = Batch::new(&conn, &a.sql);
    loop {
        let next = batch.next().map_err(|e| sql_error(&a.sql, e))?;
        let Some(mut stmt) = next else {
            break;
        };
        let text = stmt.expanded_sql().unwrap_or_default();
        let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
        let mut rows = stmt.raw_query();
        let mut all = Vec::new();
        while let Some(row) = rows.next().map_err(|e| sql_error(&text, e))? {
            let values: Vec<ValueRef<'_>> = (0..columns.len())
                .map(|i| row.get_ref(i))
                .collect::<rusqlite::Result<_>>()
                .map_err(|e| sql_error(&text, e))?;
            if out.is_json() {
                all.push(values.iter().map(to_json).collect::<Vec<_>>());
            } else {
                out.line(values.iter().map(to_text).collect::<Vec<_>>().join("|"));
            }
        }
        if out.is_json() {
            out.json(&statement_json(&a.namespace, &info, &text, &columns, all));
        }
    }
    Ok(())
}

fn statement_json(
    namespace: &str,
    info: &ViewInfo,
    statement: &str,
    columns: &[String],
    rows: Vec<Vec<serde_json::Value>>,
) -> serde_json::Value {
    json!({
        "namespace": namespace,
        "frame_no": info.frame_no,
        "time": args::rfc3339(info.timestamp),
        "statement": statement,
        "columns": columns,
        "rows": rows,
    })
}

/// A SQLite error, with the VFS's own message when it has one (SQLite reports a VFS
/// error by its code only).
fn sql_error(what: &str, e: rusqlite::Error) -> Error {
    let detail = vfs::last_error()
        .map(|m| format!(" ({m})"))
        .unwrap_or_default();
    Error::Sqlite {
        context: format!("querying {what}"),
        message: format!("{e}{detail}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn to_text(v: &ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => String::new(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(r) => r.to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Blob(b) => format!("X'{}'", hex(b)),
    }
}

fn to_json(v: &ValueRef<'_>) -> serde_json::Value {
    match v {
        ValueRef::Null => serde_json::Value::Null,
        ValueRef::Integer(i) => json!(i),
        ValueRef::Real(r) => json!(r),
        ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => json!(hex(b)),
    }
}
