//! `walvault demo`: the README's first command. Creates a SQLite database under
//! `./walvault-demo`, writes to it in phases (inserts, updates, deletes, a VACUUM that
//! shrinks the file), replicates after each phase into a local store there (or into the
//! store `--store` names, as namespace `app`, which must not be there yet), then restores
//! the database as of each phase's time and checks it row for row.
//!
//! `demo --json` prints one object (stable: fields are only ever added): `{"db",
//! "store", "namespace", "ok", "phases": [{"phase", "what", "time", "rows", "frame_no",
//! "segments_read", "matches"}, ...]}`; times RFC 3339 in UTC with milliseconds.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use serde_json::json;
use walvault::{
    integrity_check, Error, InvalidInput, NamespaceName, Replicator, ReplicatorConfig,
    RestoreOptions, Result,
};

use crate::args::{self, Store};
use crate::output::Output;

const DIR: &str = "walvault-demo";

type Rows = Vec<(i64, String)>;

struct Phase {
    what: &'static str,
    at: DateTime<Utc>,
    rows: Rows,
}

/// Runs the demo under `./walvault-demo`, its store there or at `store` (`--store`).
pub async fn run(store: Option<&str>, out: Output) -> Result<()> {
    let dir = Path::new(DIR);
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let url = match store {
        Some(url) => url.to_string(),
        None => dir.join("store").display().to_string(),
    };
    match args::open_store(&url)? {
        args::Opened::Local(store) => phases(store, &url, out).await,
        args::Opened::Object(store) => phases(store, &url, out).await,
    }
}

/// Writes, replicates and restores the phases into `store` (at `url`).
async fn phases<S: Store>(store: S, url: &str, out: Output) -> Result<()> {
    let dir = Path::new(DIR);
    let db = dir.join("app.db");
    let namespace = NamespaceName::new("app")?;
    if store.namespaces().await?.contains(&namespace) {
        return Err(InvalidInput::Config(format!(
            "the store {url} has a namespace {namespace} already; the demo writes a new \
             one: pass another --store"
        ))
        .into());
    }
    let conn = Connection::open(&db).map_err(sql)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
    )
    .map_err(sql)?;
    out.line(format!(
        "writing {} in phases, replicating into {url} (namespace {namespace})",
        db.display()
    ));

    let mut replicator =
        Replicator::open(store.clone(), namespace.clone(), ReplicatorConfig::new(&db)).await?;
    let mut phases = Vec::new();
    let steps: [(&str, &str); 4] = [
        ("insert 2000 rows", "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<2000) INSERT INTO notes(body) SELECT printf('note %d %s', i, hex(randomblob(64))) FROM n;"),
        ("update every third row", "UPDATE notes SET body = body || ' (edited)' WHERE id % 3 = 0;"),
        ("delete 1500 rows, VACUUM", "DELETE FROM notes WHERE id > 500; VACUUM;"),
        ("insert 300 rows", "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<300) INSERT INTO notes(body) SELECT printf('late %d', i) FROM n;"),
    ];
    for (what, sql_text) in steps {
        conn.execute_batch(sql_text).map_err(sql)?;
        replicator.run_once().await?;
        phases.push(Phase {
            what,
            at: walvault::Clock::now(&walvault::SystemClock),
            rows: rows(&conn)?,
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    replicator.close().await?;
    drop(conn);

    out.line("");
    out.line(format!(
        "{:<5} {:<26} {:<24} {:>6} {:>7} {:>9}  result",
        "phase", "what", "time", "rows", "frame", "segments"
    ));
    let mut failed = 0;
    let mut results = Vec::new();
    for (i, phase) in phases.iter().enumerate() {
        let file = dir.join(format!("restored-{}.db", i + 1));
        let summary = store
            .restore_to_path(&namespace, RestoreOptions::Timestamp(phase.at), &file, None)
            .await?;
        integrity_check(&file)?;
        let restored = rows(&Connection::open(&file).map_err(sql)?)?;
        let ok = restored == phase.rows;
        failed += usize::from(!ok);
        out.line(format!(
            "{:<5} {:<26} {:<24} {:>6} {:>7} {:>9}  {}",
            i + 1,
            phase.what,
            args::rfc3339(phase.at),
            restored.len(),
            summary.frame_no,
            summary.segments_read,
            if ok { "matches" } else { "DIFFERS" }
        ));
        results.push(json!({
            "phase": i + 1,
            "what": phase.what,
            "time": args::rfc3339(phase.at),
            "rows": restored.len(),
            "frame_no": summary.frame_no,
            "segments_read": summary.segments_read,
            "matches": ok,
        }));
    }
    out.json(&json!({
        "db": db.display().to_string(),
        "store": url,
        "namespace": namespace.as_str(),
        "ok": failed == 0,
        "phases": results,
    }));
    if failed > 0 {
        return Err(Error::NotFound(format!(
            "{failed} restored phases differ from what was written"
        )));
    }
    out.line("");
    out.line("every phase restored by time matches what was written (integrity_check ok)");
    Ok(())
}

fn rows(conn: &Connection) -> Result<Rows> {
    let mut stmt = conn
        .prepare("SELECT id, body FROM notes ORDER BY id")
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|rows| rows.collect())
        .map_err(sql);
    rows
}

fn sql(e: rusqlite::Error) -> Error {
    Error::sqlite("running the demo", e)
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("preparing {}", path.display()), e)
}
