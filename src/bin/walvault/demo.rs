//! `walvault demo`: the README's first command. Creates a SQLite database under
//! `./walvault-demo`, writes to it in phases (inserts, updates, deletes, a VACUUM that
//! shrinks the file), replicates after each phase into a local store there, then
//! restores the database as of each phase's time and checks it row for row.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use walvault::{
    integrity_check, Error, LocalStorage, NamespaceName, Replicator, ReplicatorConfig,
    RestoreOptions, Result, Storage,
};

const DIR: &str = "walvault-demo";

type Rows = Vec<(i64, String)>;

struct Phase {
    what: &'static str,
    at: DateTime<Utc>,
    rows: Rows,
}

pub async fn run() -> Result<()> {
    let dir = Path::new(DIR);
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let db = dir.join("app.db");
    let store = LocalStorage::open(dir.join("store"))?;
    let namespace = NamespaceName::new("app")?;
    let conn = Connection::open(&db).map_err(sql)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
    )
    .map_err(sql)?;
    println!(
        "writing {} in phases, replicating into {}",
        db.display(),
        dir.join("store").display()
    );

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

    println!();
    println!(
        "{:<5} {:<26} {:<30} {:>6} {:>7} {:>9}  result",
        "phase", "what", "time", "rows", "frame", "segments"
    );
    let mut failed = 0;
    for (i, phase) in phases.iter().enumerate() {
        let out = dir.join(format!("restored-{}.db", i + 1));
        let summary = store
            .restore_to_path(&namespace, RestoreOptions::Timestamp(phase.at), &out, None)
            .await?;
        integrity_check(&out)?;
        let restored = rows(&Connection::open(&out).map_err(sql)?)?;
        let ok = restored == phase.rows;
        failed += usize::from(!ok);
        println!(
            "{:<5} {:<26} {:<30} {:>6} {:>7} {:>9}  {}",
            i + 1,
            phase.what,
            phase.at.to_rfc3339(),
            restored.len(),
            summary.frame_no,
            summary.segments_read,
            if ok { "matches" } else { "DIFFERS" }
        );
    }
    if failed > 0 {
        return Err(Error::NotFound(format!(
            "{failed} restored phases differ from what was written"
        )));
    }
    println!("\nevery phase restored by time matches what was written (integrity_check ok)");
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
