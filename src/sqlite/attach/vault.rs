//! The vault: one database's [`Replicator`] on a thread of its own, taking commit
//! requests from the hooks of attached connections.
//!
//! Commits are shipped in groups: every request waiting when the vault looks is covered
//! by one read of the WAL (one append, one seal when any waits for `Durable`), so
//! several writer threads share the cost. The wait for each request's level runs on its
//! own task, so the vault keeps shipping while earlier commits wait for the store.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use super::AttachOptions;
use crate::clock::Clock;
use crate::durability::Durability;
use crate::error::{Error, InvalidInput, Result};
use crate::format::NamespaceName;
use crate::sqlite::replicate::CommitHint;
use crate::sqlite::{Replicator, ReplicatorConfig};
use crate::storage::Storage;

/// A database's replication inside the application's process: what attached
/// connections commit through. Cloning gives another handle on the same vault; the last
/// handle dropped closes it (see [`close`](Self::close)).
#[derive(Clone)]
pub struct Vault {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("db", &self.shared.db)
            .field("namespace", &self.shared.namespace)
            .finish()
    }
}

struct Shared {
    db: PathBuf,
    namespace: NamespaceName,
    /// SQLite's WAL, which a commit at `Written` or `Durable` fsyncs on its own thread.
    wal: WalFile,
    requests: mpsc::UnboundedSender<Request>,
    commit_timeout: Duration,
    tracker: crate::durability::DurabilityTracker,
    clock: Arc<dyn Clock>,
}

enum Request {
    /// Ship what the WAL holds and answer once it is at `level`.
    Commit {
        level: Durability,
        hint: Option<CommitHint>,
        reply: std_mpsc::SyncSender<Result<Answer>>,
    },
    /// Ship what is left, make it durable, stop.
    Close {
        reply: std_mpsc::SyncSender<Result<()>>,
    },
}

/// A commit request's answer: the frame number reached, and the time stamped on the
/// last transaction shipped for it.
type Answer = (u64, Option<chrono::DateTime<chrono::Utc>>);

/// The vaults of this process, by canonical database path.
fn vaults() -> &'static Mutex<HashMap<PathBuf, Weak<Shared>>> {
    static VAULTS: OnceLock<Mutex<HashMap<PathBuf, Weak<Shared>>>> = OnceLock::new();
    VAULTS.get_or_init(Mutex::default)
}

impl Vault {
    /// Opens the vault of the SQLite database `db` (in WAL mode), shipping into
    /// `namespace` of `storage`, or returns the one this process has open for it. Its
    /// first step ships the database as it is (a snapshot on a first run).
    pub fn open<S: Storage + Clone + Send + Sync + 'static>(
        db: &Path,
        storage: S,
        namespace: NamespaceName,
        options: AttachOptions,
    ) -> Result<Vault> {
        let db = std::fs::canonicalize(db)
            .map_err(|e| Error::io(format!("finding database {}", db.display()), e))?;
        let mut open = vaults().lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, v| v.strong_count() > 0);
        if let Some(shared) = open.get(&db).and_then(Weak::upgrade) {
            if shared.namespace != namespace {
                return Err(InvalidInput::Config(format!(
                    "{} is replicated into namespace {} by this process already, not {namespace}",
                    db.display(),
                    shared.namespace
                ))
                .into());
            }
            return Ok(Vault { shared });
        }
        let shared = Arc::new(start(db.clone(), storage, namespace, options)?);
        open.insert(db, Arc::downgrade(&shared));
        Ok(Vault { shared })
    }

    /// Opens the vault with the store a URL names: a directory path or `file://` URL
    /// (a local store, created if missing), or an object-store URL (`s3://`, `gs://`,
    /// `az://`, with the backends compiled in).
    pub fn open_url(
        db: &Path,
        url: &str,
        namespace: NamespaceName,
        options: AttachOptions,
    ) -> Result<Vault> {
        match crate::storage::local_store_dir(url) {
            Some(dir) => Self::open(db, crate::LocalStorage::open(dir)?, namespace, options),
            None => {
                let store = crate::ObjectStorage::from_url(url)?;
                Self::open(db, store, namespace, options)
            }
        }
    }

    /// True when both handles are on the same vault.
    pub fn same_as(&self, other: &Vault) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// The database (canonical path).
    pub fn db(&self) -> &Path {
        &self.shared.db
    }

    /// The namespace it ships into.
    pub fn namespace(&self) -> &NamespaceName {
        &self.shared.namespace
    }

    /// The log's watermarks (applied, written, durable frame numbers).
    pub fn tracker(&self) -> &crate::durability::DurabilityTracker {
        &self.shared.tracker
    }

    /// Ships every commit the WAL holds now (of any connection) and waits until it is at
    /// `level` (`Written` as an attached COMMIT means it: fsynced in SQLite's WAL and in
    /// the log's memory, see [`super`]), at most the commit deadline; the frame number
    /// reached. What an attached connection's COMMIT calls; useful after commits of
    /// connections not attached.
    pub fn commit(&self, level: Durability) -> Result<u64> {
        self.commit_hinted(level, None)
    }

    /// [`commit`](Self::commit) for a commit hook that saw the WAL hold `frames` frames
    /// right after its commit (see [`CommitHint`]).
    pub(crate) fn commit_after(&self, level: Durability, frames: u32) -> Result<u64> {
        let at = self.shared.clock.now();
        self.commit_hinted(level, Some(CommitHint { frames, at }))
    }

    /// Asks the vault to ship (at `Applied` for a commit at `Written`: see
    /// [`super`]'s "Written without a second fsync"), fsyncs SQLite's WAL meanwhile on
    /// this thread, then waits for the vault's answer.
    fn commit_hinted(&self, level: Durability, hint: Option<CommitHint>) -> Result<u64> {
        let asked = match level {
            Durability::Written => Durability::Applied,
            level => level,
        };
        let answer = self.request(asked, hint)?;
        if level >= Durability::Written {
            self.shared.wal.sync()?;
        }
        self.answer(level, answer)
    }

    /// Sends a commit request; the receiver of its answer.
    fn request(
        &self,
        level: Durability,
        hint: Option<CommitHint>,
    ) -> Result<std_mpsc::Receiver<Result<Answer>>> {
        let (reply, answer) = std_mpsc::sync_channel(1);
        let request = Request::Commit { level, hint, reply };
        self.shared
            .requests
            .send(request)
            .map_err(|_| Error::Closed)?;
        Ok(answer)
    }

    /// Waits for a commit request's answer, then for the clock to pass its stamp.
    fn answer(&self, level: Durability, answer: std_mpsc::Receiver<Result<Answer>>) -> Result<u64> {
        // The vault answers by the deadline itself; this bound only guards against a
        // vault stuck elsewhere (a checkpoint waiting for SQLite's write lock).
        let deadline = self.shared.commit_timeout + Duration::from_secs(1);
        let (frame_no, stamp) = match answer.recv_timeout(deadline) {
            Ok(answer) => answer?,
            Err(std_mpsc::RecvTimeoutError::Timeout) => return Err(self.timeout(level)),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return Err(Error::Closed),
        };
        self.wait_past(stamp);
        Ok(frame_no)
    }

    /// Returns once the clock has passed `stamp`, so a restore to any time taken
    /// afterwards finds what was stamped with it. (With a commit hook's hint the stamp
    /// is behind the clock already; without one, a stamp rounded up to the millisecond
    /// is up to one ahead.)
    fn wait_past(&self, stamp: Option<chrono::DateTime<chrono::Utc>>) {
        let Some(stamp) = stamp else { return };
        let limit = std::time::Instant::now() + Duration::from_millis(50);
        while let Ok(ahead) = (stamp - self.shared.clock.now()).to_std() {
            if ahead.is_zero() || std::time::Instant::now() > limit {
                break;
            }
            std::thread::sleep(ahead.min(Duration::from_millis(1)));
        }
    }

    fn timeout(&self, level: Durability) -> Error {
        Error::CommitTimeout {
            db: self.shared.db.display().to_string(),
            level: level.to_string(),
            waited: self.shared.commit_timeout,
        }
    }

    /// Ships what is left, seals it and waits until it is `Durable` (at most the commit
    /// deadline), then stops the vault: attached connections' commits fail with
    /// [`Error::Closed`] from then on. What is not durable in time stays in the local log
    /// and ships at the next start.
    pub fn close(&self) -> Result<()> {
        let (reply, answer) = std_mpsc::sync_channel(1);
        if self.shared.requests.send(Request::Close { reply }).is_err() {
            return Ok(()); // closed already
        }
        match answer.recv_timeout(self.shared.commit_timeout) {
            Ok(answer) => answer,
            Err(std_mpsc::RecvTimeoutError::Timeout) => Err(self.timeout(Durability::Durable)),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => Ok(()),
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let (reply, answer) = std_mpsc::sync_channel(1);
        if self.requests.send(Request::Close { reply }).is_ok() {
            if let Ok(Err(e)) = answer.recv_timeout(self.commit_timeout) {
                tracing::warn!(db = %self.db.display(), error = %e, "closing walvault");
            }
        }
    }
}

/// Opens the replicator on a thread of its own and returns once it is open.
fn start<S: Storage + Clone + Send + Sync + 'static>(
    db: PathBuf,
    storage: S,
    namespace: NamespaceName,
    options: AttachOptions,
) -> Result<Shared> {
    let mut config = ReplicatorConfig::new(&db);
    if let Some(dir) = &options.log_dir {
        config.log.dir = dir.clone();
    }
    config.max_lag = options.max_lag;
    config.log.seal_age = options.max_lag;
    config.checkpoint_wal_bytes = options.checkpoint_wal_bytes;
    config.checkpoint_after = options.durability;
    // A checkpoint holds SQLite's write lock while it waits: never longer than a commit.
    config.checkpoint_timeout = config.checkpoint_timeout.min(options.commit_timeout);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("walvault-vault")
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting walvault's runtime", e))?;
    let (requests, incoming) = mpsc::unbounded_channel();
    let (opened, open_result) = std_mpsc::sync_channel(1);
    let name = namespace.clone();
    let thread_db = db.clone();
    let commit_timeout = options.commit_timeout;
    std::thread::Builder::new()
        .name("walvault-vault".into())
        .spawn(move || {
            runtime.block_on(async move {
                let replicator = match Replicator::open(storage, name, config).await {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = opened.send(Err(e));
                        return;
                    }
                };
                let tracker = replicator.log().tracker().clone();
                let wal = replicator.wal_path().to_path_buf();
                let _ = opened.send(Ok((tracker, replicator.clock(), wal)));
                run(replicator, incoming, options, thread_db).await;
            });
        })
        .map_err(|e| Error::io("starting walvault's thread", e))?;
    let (tracker, clock, wal) = open_result.recv().map_err(|_| Error::Closed)??;
    Ok(Shared {
        db,
        wal: WalFile::new(wal),
        namespace,
        requests,
        commit_timeout,
        tracker,
        clock,
    })
}

/// The vault's loop: ship on each request (all that wait, in one go) and at each poll
/// interval, answer each request once its level is reached, checkpoint when due.
async fn run<S: Storage + Clone + Send + Sync + 'static>(
    mut replicator: Replicator<S>,
    mut incoming: mpsc::UnboundedReceiver<Request>,
    options: AttachOptions,
    db: PathBuf,
) {
    let mut close = None;
    let mut failing = false;
    while close.is_none() {
        // After a failure, no sooner than the poll interval: a seal that keeps failing
        // stays due, and the loop must not spin on it.
        let wait = match replicator.seal_due_in() {
            Some(due) if !failing => due.min(options.poll_interval),
            _ => options.poll_interval,
        };
        let mut batch = Vec::new();
        tokio::select! {
            first = incoming.recv() => match first {
                Some(request) => batch.push(request),
                None => break, // every handle is gone
            },
            () = tokio::time::sleep(wait) => {}
        }
        while let Ok(request) = incoming.try_recv() {
            batch.push(request);
        }
        let mut commits = Vec::new();
        for request in batch {
            match request {
                Request::Commit { level, hint, reply } => {
                    replicator.hint_commits(hint);
                    commits.push((level, reply));
                }
                Request::Close { reply } => close = Some(reply),
            }
        }
        if !commits.is_empty() || close.is_some() {
            checkpoint_if_quiet(&mut replicator).await;
        }
        failing = !ship(&mut replicator, commits, &options).await;
        if close.is_none() {
            checkpoint_if_quiet(&mut replicator).await;
        }
    }
    let closed = replicator.close().await;
    if let Err(e) = &closed {
        tracing::warn!(db = %db.display(), error = %e, "closing walvault's log");
    }
    if let Some(reply) = close {
        let _ = reply.send(closed);
    }
}

/// True when everything shipped is at the checkpoint's level already, so a checkpoint
/// would hold SQLite's write lock for what arrives meanwhile only.
fn quiet<S: Storage + Clone>(replicator: &Replicator<S>) -> bool {
    let tracker = replicator.log().tracker();
    let level = replicator.checkpoint_level();
    tracker.watermark(level) >= tracker.watermark(Durability::Applied)
}

async fn checkpoint_if_quiet<S: Storage + Clone>(replicator: &mut Replicator<S>) {
    if replicator.checkpoint_due() && quiet(replicator) {
        checkpoint(replicator).await;
    }
}

async fn checkpoint<S: Storage + Clone>(replicator: &mut Replicator<S>) {
    if let Err(e) = replicator.checkpoint().await {
        tracing::warn!(db = %replicator.db().display(), error = %e, "checkpoint failed; trying again later");
    }
}

/// SQLite's WAL, kept open for the fsyncs of commits at `Written` and `Durable` (an open
/// per commit costs a path lookup and a close).
struct WalFile {
    path: PathBuf,
    state: Mutex<WalState>,
}

#[derive(Default)]
struct WalState {
    open: Option<Arc<std::fs::File>>,
    /// The first fsync that failed. Latched: Linux reports a failed writeback once per
    /// open file, so a later fsync could succeed while the frames that failed are gone
    /// from the page cache, and SQLite's recovery stops at the gap they leave.
    failed: Option<Error>,
}

impl WalFile {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            state: Mutex::default(),
        }
    }

    /// Makes SQLite's WAL durable on disk, so that a commit at `Written` or `Durable` is
    /// in the database after a power loss even when the application runs
    /// `synchronous=NORMAL` (see [`super`]). SQLite locks the `-shm` file and the
    /// database, never the WAL, so holding it open here takes no lock of theirs. After
    /// a failed fsync every later one fails with the same error, until the vault is
    /// opened again.
    fn sync(&self) -> Result<()> {
        let io_err = |e| Error::io(format!("syncing SQLite WAL {}", self.path.display()), e);
        let Some(file) = self.file()? else {
            return Ok(()); // no WAL: nothing to sync
        };
        file.sync_data().map_err(|e| {
            let e = io_err(e);
            self.lock().failed.get_or_insert(e).clone()
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WalState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The WAL, opened again when the path names another file than the one held
    /// (SQLite deletes the WAL when its last connection closes and the next one creates
    /// another; the vault's readers make that rare, not impossible). A WAL opened anew
    /// has its directory fsynced once, so its name survives a power loss as its frames
    /// do (SQLite, at `synchronous=NORMAL`, may never sync it).
    fn file(&self) -> Result<Option<Arc<std::fs::File>>> {
        let io_err = |e| Error::io(format!("opening SQLite WAL {}", self.path.display()), e);
        let mut state = self.lock();
        if let Some(e) = &state.failed {
            return Err(e.clone());
        }
        let named = state.open.as_ref().filter(|f| names(&self.path, f));
        if let Some(file) = named {
            return Ok(Some(file.clone()));
        }
        // Read and write: some systems refuse to flush a file opened to read only.
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
        {
            Ok(file) => Arc::new(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        if let Some(dir) = self.path.parent() {
            crate::storage::fsutil::fsync_dir(dir).map_err(io_err)?;
        }
        state.open = Some(file.clone());
        Ok(Some(file))
    }
}

/// True while `path` names `file` (same device and inode; a deleted WAL can keep a name
/// elsewhere: a hard link, NFS's `.nfs` rename).
#[cfg(unix)]
fn names(path: &Path, file: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(named), Ok(held)) => named.dev() == held.dev() && named.ino() == held.ino(),
        _ => false,
    }
}

/// Elsewhere, opened again every time.
#[cfg(not(unix))]
fn names(_: &Path, _: &std::fs::File) -> bool {
    false
}

/// Ships what the WAL holds and answers each commit request once its level is reached;
/// false when shipping failed (each request was answered with the error).
/// A commit request waiting in a batch: its level, and where to answer.
type Pending = (Durability, std_mpsc::SyncSender<Result<Answer>>);

fn fail_all(commits: Vec<Pending>, e: &Error) {
    for (_, reply) in commits {
        let _ = reply.send(Err(e.clone()));
    }
}

async fn ship<S: Storage + Clone>(
    replicator: &mut Replicator<S>,
    commits: Vec<Pending>,
    options: &AttachOptions,
) -> bool {
    let shipped = replicator.poll_ship().await;
    let shipped = match shipped {
        Ok(report) => report,
        Err(e) => {
            tracing::warn!(db = %replicator.db().display(), error = %e, "shipping the WAL failed; trying again");
            fail_all(commits, &e);
            return false;
        }
    };
    if commits
        .iter()
        .any(|(level, ..)| *level == Durability::Durable)
    {
        if let Err(e) = replicator.seal_now().await {
            fail_all(commits, &e);
            return false;
        }
    }
    let target = replicator.log().tracker().watermark(Durability::Applied);
    let stamp = shipped.last.as_ref().map(|a| a.timestamp);
    let waits: Vec<_> = commits
        .into_iter()
        .filter_map(|(level, reply)| {
            // `Written` asks for `Applied` (the committing thread fsyncs SQLite's WAL;
            // the log's fsync is not waited for): both answer now.
            if level <= Durability::Written {
                let _ = reply.send(Ok((target, stamp)));
                return None;
            }
            Some((level, reply, replicator.log().wait(target, level)))
        })
        .collect();
    // `Durable`: on a task each, so the vault goes on shipping meanwhile.
    for (level, reply, waited) in waits {
        let (timeout, db) = (options.commit_timeout, replicator.db().to_path_buf());
        tokio::spawn(async move {
            let answer = match tokio::time::timeout(timeout, waited).await {
                Ok(Ok(_)) => Ok((target, stamp)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(Error::CommitTimeout {
                    db: db.display().to_string(),
                    level: level.to_string(),
                    waited: timeout,
                }),
            };
            let _ = reply.send(answer);
        });
    }
    true
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn inode(file: &std::fs::File) -> u64 {
        file.metadata().unwrap().ino()
    }

    #[test]
    fn the_wal_held_open_follows_the_path_to_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db-wal");
        let wal = WalFile::new(path.clone());
        assert!(wal.file().unwrap().is_none(), "no WAL yet: nothing to sync");
        wal.sync().unwrap();
        std::fs::write(&path, b"first").unwrap();
        let first = wal.file().unwrap().unwrap();
        assert_eq!(inode(&first), std::fs::metadata(&path).unwrap().ino());
        assert!(
            Arc::ptr_eq(&first, &wal.file().unwrap().unwrap()),
            "kept open"
        );
        // SQLite deletes the WAL and creates another, while a hard link keeps the old
        // file's name elsewhere: the new one is synced, not the old.
        std::fs::hard_link(&path, dir.path().join("elsewhere")).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"second").unwrap();
        let second = wal.file().unwrap().unwrap();
        assert_ne!(inode(&second), inode(&first));
        assert_eq!(inode(&second), std::fs::metadata(&path).unwrap().ino());
        wal.sync().unwrap();
    }

    #[test]
    fn a_failed_wal_sync_is_latched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db-wal");
        std::fs::write(&path, b"frames").unwrap();
        let wal = WalFile::new(path);
        wal.sync().unwrap();
        wal.lock().failed = Some(Error::io("syncing", std::io::Error::other("EIO")));
        assert!(wal.sync().is_err());
        assert!(wal.sync().is_err(), "still failing: the frames may be gone");
    }
}
