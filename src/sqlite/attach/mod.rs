//! In-process attachment: COMMIT on an attached connection returns only once the
//! transaction is at the durability the application chose.
//!
//! # How (and why the WAL hook)
//!
//! SQLite calls a connection's WAL hook (`sqlite3_wal_hook`) on the committing thread
//! after every commit that connection writes, before COMMIT (or the auto-committing
//! statement) returns. walvault's hook asks the database's [`Vault`] to ship what the WAL
//! now holds and waits until the log has it at the connection's [`Durability`]. The
//! other way in, a VFS that sees the WAL's writes, would let walvault see frames before
//! SQLite's own fsync, but it has to be chosen when the connection is opened, would
//! re-implement SQLite's locking and shared-memory paths, and cannot be added to a
//! connection the application already has. The hook can, from Rust and from a loadable
//! extension alike, and the [`Vault`] ships through the very [`Replicator`] the daemon
//! runs, so everything the daemon guarantees (continuity proofs, snapshots when the WAL
//! cannot prove it continues, positions saved only after the log has the frames) holds
//! here too.
//!
//! # Contract
//!
//! * **One vault per database per process.** [`Vault::open`] of a database that has a
//!   vault in this process returns that vault (same namespace) or an error (another
//!   namespace). Another process replicating the database (an attached application, or
//!   `walvault replicate`) holds the log directory's lock: opening fails with
//!   [`Error::Conflict`] naming it. Nothing is shipped twice or skipped.
//! * **Every commit ships.** Commits of attached connections ship before their COMMIT
//!   returns; commits of other connections and processes to the same database (not
//!   attached) are picked up by the vault's poll, every [`AttachOptions::poll_interval`],
//!   as the daemon would.
//! * **What COMMIT returning means**, at the connection's level:
//!   * `Applied`: the transaction is in walvault's log in memory (a crash of the
//!     process may lose it from the log, never from the database: the next start proves
//!     the WAL and ships what the log lacks);
//!   * `Written`: the transaction is fsynced on the local disk, in SQLite's WAL, and
//!     appended to walvault's log; it survives a crash of the process or the machine
//!     and ships from there (see "Written without a second fsync" below);
//!   * `Durable`: it is in the store (survives the loss of the machine).
//!
//!   Its commit time is the millisecond it completed in (rounded down; see
//!   `CommitHint`), so a restore to any time taken after COMMIT returned has it. Times
//!   are kept in whole milliseconds: such a restore may also have a commit that began
//!   within the same millisecond.
//! * **`synchronous=NORMAL` is enough.** At `Written` and `Durable` the committing
//!   thread fsyncs SQLite's WAL itself (while the vault appends the commit to its log),
//!   before COMMIT returns: once COMMIT has returned, the commit is as safe in the
//!   database as `synchronous=FULL` makes it. (Before it returns, the vault may have
//!   stored the commit while the fsync runs: a power loss then can leave the store with
//!   a commit the database lacks, which the next start's snapshot drops from the latest
//!   state, as with the daemon beside a `NORMAL` application. With `FULL`, SQLite's
//!   own fsync comes first and ours finds nothing to write.) At `Applied`, the
//!   connection's own setting is all the database gets.
//! * **A commit that cannot get there in time** (the store is away, under `Durable`)
//!   fails after [`AttachOptions::commit_timeout`] with SQLite's `SQLITE_IOERR`, and
//!   [`AttachedConnection::last_error`] (`walvault_last_error()` in SQL) says why
//!   ([`Error::CommitTimeout`]). The transaction **is committed** in the database and
//!   walvault keeps shipping it; the application must not run it again. Commits that
//!   follow wait again, each for its own deadline.
//! * **Checkpoints are walvault's.** The hook replaces SQLite's auto-checkpoint on the
//!   attached connection; the vault checkpoints once
//!   [`ReplicatorConfig::checkpoint_wal_bytes`] of WAL were shipped, copying only frames
//!   already at the connection's level (at least `Written`, so the WAL stays bounded
//!   while the store is away at `Written`). Detaching restores the connection's
//!   auto-checkpoint setting. The vault's readers keep the WAL when they close
//!   (`SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`): the next start proves it continues.
//! * **Closing.** [`Vault::close`] (or dropping the last handle, within the commit
//!   deadline) seals what is open and waits until it is `Durable`; what is not durable
//!   by then stays in the local log and ships at the next start.
//!
//! # Written without a second fsync
//!
//! A commit at `Written` must survive a power loss and then ship. Two copies of it are
//! on the local disk: SQLite's WAL and walvault's log. Fsyncing both before COMMIT
//! returns (as this module did at first) costs two flushes where plain SQLite with
//! `synchronous=FULL` pays one; one is enough, because until the log copy is fsynced
//! the commit stays on disk in the WAL or in the database file:
//!
//! * walvault's own checkpoints copy frames only once the log has them at the
//!   checkpoint's level, at least `Written` (`ReplicatorConfig::checkpoint_after`);
//! * another connection's checkpoint (of this process or another) may copy the commit
//!   into the database file before that, but SQLite fsyncs the database before it lets
//!   the WAL restart, and the vault's held reader keeps the WAL from restarting past
//!   frames the vault has not read (see [`Replicator`]); the commit then ships in a
//!   snapshot of the database;
//! * the replicator's saved WAL position only ever covers frames fsynced in the log, so
//!   after a power loss that cut the log's tail, the next start ships again every frame
//!   the log lost: from the WAL, or in a snapshot of the database, which holds them;
//! * a crash of the process loses the log's appends still in its memory, not the WAL
//!   (written before the hook runs): the next start ships them from there.
//!
//! This holds while every connection that checkpoints the database, in any process,
//! runs at `synchronous=NORMAL` or `FULL` (at `OFF` SQLite itself promises nothing). A
//! failed fsync of the WAL fails that commit and every later one at `Written` or
//! `Durable` until the vault is opened again (a later fsync could succeed over frames
//! the failure lost).
//!
//! So COMMIT at `Written` returns once SQLite's WAL is fsynced and the vault has the
//! commit in its log (the `Applied` watermark covers it); the log's `Written` watermark
//! follows on the log's own fsync (at least every second), which checkpoints, saved
//! positions and the `Durable` watermark wait for. What a power loss can cost is the
//! commit's exact time: a commit shipped again is stamped when it is shipped again, not
//! when it was made. [`Vault::commit`] at `Written` (and `walvault_sync('written')`)
//! means the same.
//!
//! Only the `main` schema is replicated; databases added with `ATTACH DATABASE` are not.

mod hook;
mod vault;

pub use hook::{attach_handle, attached_vault, detach_handle, take_last_error};
pub use vault::Vault;

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use crate::durability::Durability;
use crate::error::{Error, Result};
use crate::format::NamespaceName;
use crate::storage::Storage;

#[allow(unused_imports)] // for the docs
use super::{Replicator, ReplicatorConfig};

/// How an attached database is replicated and how its commits wait.
#[derive(Debug, Clone)]
pub struct AttachOptions {
    /// What COMMIT waits for on connections attached without a level of their own.
    /// Default `Durable`.
    pub durability: Durability,
    /// The longest a COMMIT waits for its durability before it fails (see the module
    /// docs for what the application may assume then). Default 10 s.
    pub commit_timeout: Duration,
    /// How often the vault looks for commits of connections that are not attached
    /// (other connections and processes). Default 100 ms.
    pub poll_interval: Duration,
    /// The longest a commit nobody waits for stays unsealed (see
    /// [`ReplicatorConfig::max_lag`]). Default 1 s.
    pub max_lag: Duration,
    /// Checkpoint once this many bytes of WAL were shipped since the last checkpoint.
    /// Default 4 MiB.
    pub checkpoint_wal_bytes: u64,
    /// The log's directory; default `<db>-walvault`.
    pub log_dir: Option<PathBuf>,
}

impl Default for AttachOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Durable,
            commit_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(100),
            max_lag: super::DEFAULT_MAX_LAG,
            checkpoint_wal_bytes: 4 << 20,
            log_dir: None,
        }
    }
}

/// Attaches walvault to `conn`: opens (or joins) the [`Vault`] of its database and
/// installs the commit hook at `options.durability`. The connection is owned by the
/// result while attached (it dereferences to it; [`AttachedConnection::detach`] gives it
/// back), so the hook can never outlive it.
///
/// ```no_run
/// # fn main() -> walvault::Result<()> {
/// use walvault::sqlite::{attach, AttachOptions};
/// use walvault::{Durability, LocalStorage, NamespaceName};
///
/// let conn = rusqlite::Connection::open("app.db").expect("open");
/// conn.pragma_update(None, "journal_mode", "wal").expect("wal");
/// let store = LocalStorage::open("walvault-store")?;
/// let options = AttachOptions { durability: Durability::Durable, ..Default::default() };
/// let db = attach(conn, store, NamespaceName::new("app")?, options)?;
/// db.execute("CREATE TABLE IF NOT EXISTS t(x)", []).expect("create");
/// // Returned: the table is in the store.
/// # Ok(())
/// # }
/// ```
pub fn attach<S: Storage + Clone + Send + Sync + 'static>(
    conn: Connection,
    storage: S,
    namespace: NamespaceName,
    options: AttachOptions,
) -> Result<AttachedConnection> {
    let db = conn
        .path()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| {
            Error::from(crate::error::InvalidInput::Config(
                "an in-memory or temporary database cannot be attached: walvault replicates a database file".into(),
            ))
        })?;
    let level = options.durability;
    let vault = Vault::open(&db, storage, namespace, options)?;
    vault.attach(conn, level)
}

/// A connection whose commits return at their durability. Dereferences to the
/// [`Connection`]; dropping it detaches the hook and closes the connection.
pub struct AttachedConnection {
    conn: Option<Connection>,
    vault: Vault,
    hook: Arc<hook::Hook>,
}

impl std::fmt::Debug for AttachedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachedConnection")
            .field("db", &self.vault.db())
            .field("durability", &self.durability())
            .finish()
    }
}

impl AttachedConnection {
    /// The vault this connection commits through (attach more connections with
    /// [`Vault::attach`]).
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// What this connection's COMMIT waits for.
    pub fn durability(&self) -> Durability {
        self.hook.durability()
    }

    /// Changes what this connection's next commits wait for.
    pub fn set_durability(&self, level: Durability) {
        self.hook.set_durability(level);
    }

    /// Why the last commit of this connection returned an error from walvault (None
    /// when it did not). Taking it clears it.
    pub fn last_error(&self) -> Option<Error> {
        self.hook.take_error()
    }

    /// Removes the hook (restoring the connection's auto-checkpoint) and gives the
    /// connection back. Commits made after it are shipped by the vault's poll, as long as
    /// the vault is open.
    pub fn detach(mut self) -> Result<Connection> {
        let conn = self.conn.take().ok_or(Error::Closed)?;
        // SAFETY: `conn` is open and owned here; the hook was installed on it.
        unsafe { detach_handle(conn.handle()) }?;
        Ok(conn)
    }
}

impl Deref for AttachedConnection {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        // Only `detach` and `drop` take it, both consuming self.
        self.conn
            .as_ref()
            .expect("an attached connection is present until detached")
    }
}

impl DerefMut for AttachedConnection {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn
            .as_mut()
            .expect("an attached connection is present until detached")
    }
}

impl Drop for AttachedConnection {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // SAFETY: as in `detach`. Failing to restore the auto-checkpoint of a
            // connection about to close loses nothing.
            let _ = unsafe { detach_handle(conn.handle()) };
        }
    }
}
