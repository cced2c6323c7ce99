//! A read-only SQLite VFS over a store: query any moment of a namespace's history
//! without restoring it.
//!
//! ```text
//! file:app?vfs=walvault&store=s3://bucket/prefix              the latest durable commit, followed
//! file:app?vfs=walvault&store=./walvault-store&at=2026-12-01T10:00:00Z
//! file:app?vfs=walvault&frame=4242                           (store from WALVAULT_STORE)
//! PRAGMA walvault_at = '2026-12-01T10:00:00Z';   PRAGMA walvault_frame = 4242;
//! PRAGMA walvault_at = 'latest';                  PRAGMA walvault_view;
//! ```
//!
//! # Contract
//!
//! * **A view is one commit.** Opening the file resolves its view: the last commit at
//!   or before the time or frame asked for, or the latest durable commit. The file name
//!   is the namespace. The store is the URI's `store` parameter, else the one given at
//!   registration ([`VfsOptions::default_store`]), else `$WALVAULT_STORE`, else
//!   `./walvault-store` (relative paths from the process's working directory). A
//!   local store that does not exist is an error, never created.
//! * **Following.** A view without a fixed moment follows: each read transaction
//!   starts at the latest durable commit, after one refresh of the catalog (an object
//!   store: one HEAD when nothing is new, never a LIST). With the URI parameter
//!   `refresh=1s` (any duration) a connection refreshes at most that often, and read
//!   transactions in between start at the newest commit it knows of: cheaper reads, a
//!   view up to that much older. A fixed view never moves.
//!   `PRAGMA walvault_at` / `walvault_frame` move a connection's view; inside an open
//!   transaction the move takes effect at the next one, so a transaction always reads
//!   one commit.
//! * **Reads.** A page is read through the page indexes of the view's segments, newest
//!   first, found once per view and remembered; its frame's checksum is verified. Pages
//!   and indexes go through one cache per process, bounded by bytes
//!   ([`VfsOptions::cache_bytes`], default 64 MiB), keyed by where they are stored
//!   (segments never change), so views share what they read. Sequential reads read
//!   ahead in growing runs of the same segment.
//! * **Errors.** Every write is refused (`SQLITE_READONLY`; no journal, WAL or file of
//!   any kind is created). A time or frame before the history fails to open or to move
//!   the view, naming the history's span. A segment that fails verification, or that the
//!   catalog names but the store lacks, is `SQLITE_CORRUPT`; a store that cannot be read
//!   is `SQLITE_IOERR_READ` (also a read with no answer within two minutes). At open, a
//!   view that cannot be resolved is `SQLITE_CANTOPEN` (`SQLITE_CORRUPT` when a segment
//!   failed verification). The error, naming the segment, goes to the `tracing` log and
//!   to [`last_error`]. No wrong page is ever served.
//! * **Compaction under a view.** A view found its segments as they were; when
//!   compaction merged them since (and collection deleted the inputs, or a merge spans
//!   where the view's walk stands), the view resolves the same commit again from the
//!   catalog as it is now, once per read, and reads the same bytes from the merged
//!   segments. A commit that no longer exists (retention, or a compaction that kept only
//!   some commits) is `SQLITE_CORRUPT` with a message saying so.
//! * **SQLite.** Page 1 is served with the legacy file format bytes (18 and 19 set to 1),
//!   so SQLite reads the file as a rollback-journal database and never looks for a WAL or
//!   shared memory; its change counter (bytes 24 and 92) is the view's generation and its
//!   size field the view's, so SQLite drops cached pages exactly when the view moved.
//!   Temporary files (sorts, temporary tables) are kept in memory.

mod cache;
mod file;
mod run;
mod runs;
mod source;
mod view;

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

pub use cache::{CacheStats, DEFAULT_CACHE_BYTES};
pub use view::{ViewAt, ViewInfo};

use self::cache::Cache;
use self::source::{Source, Store};
use self::view::{Namespace, View};
use crate::error::{Error, InvalidInput, Result};
use crate::format::NamespaceName;
use crate::storage::Storage;

/// The name the VFS is registered under (`?vfs=walvault`).
pub const VFS_NAME: &str = "walvault";

/// The store used when neither the file name nor the registration names one.
const FALLBACK_STORE: &str = "./walvault-store";

/// How the VFS is set up, once per process.
#[derive(Debug, Clone)]
pub struct VfsOptions {
    /// Bytes of pages and page indexes kept in memory (default 64 MiB).
    pub cache_bytes: u64,
    /// The store of file names without a `store` parameter (else `$WALVAULT_STORE`,
    /// else `./walvault-store`).
    pub default_store: Option<String>,
}

impl Default for VfsOptions {
    fn default() -> Self {
        Self {
            cache_bytes: DEFAULT_CACHE_BYTES,
            default_store: None,
        }
    }
}

/// A store opened by URL (or added by name): its number in cache keys, and its reads.
type OpenStore = (u64, Arc<dyn Source>);

/// What every connection of the VFS shares: the cache and the stores opened.
pub(crate) struct Shared {
    cache: Arc<Cache>,
    default_store: Option<String>,
    stores: Mutex<HashMap<String, OpenStore>>,
}

/// What one database file reads: a namespace of a store, at a moment.
pub(crate) struct Target {
    pub(crate) ns: Arc<Namespace>,
    pub(crate) at: ViewAt,
}

impl Shared {
    fn new(options: &VfsOptions) -> Self {
        Self {
            cache: Arc::new(Cache::new(options.cache_bytes)),
            default_store: options.default_store.clone(),
            stores: Mutex::new(HashMap::new()),
        }
    }

    fn store_url(&self, given: Option<&str>) -> String {
        if let Some(url) = given.filter(|u| !u.is_empty()) {
            return url.to_string();
        }
        if let Some(url) = &self.default_store {
            return url.clone();
        }
        match std::env::var("WALVAULT_STORE") {
            Ok(url) if !url.is_empty() => url,
            _ => FALLBACK_STORE.to_string(),
        }
    }

    /// The store a URL names, opened once per process.
    fn store(&self, url: &str) -> Result<OpenStore> {
        let mut stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((id, source)) = stores.get(url) {
            return Ok((*id, source.clone()));
        }
        let source: Arc<dyn Source> = match crate::storage::local_store_dir(url) {
            Some(dir) => {
                if !dir.is_dir() {
                    return Err(Error::NotFound(format!(
                        "store directory {} does not exist",
                        dir.display()
                    )));
                }
                Arc::new(Store(Arc::new(crate::LocalStorage::open(dir)?)))
            }
            None => Arc::new(Store(Arc::new(crate::ObjectStorage::from_url(url)?))),
        };
        let id = next_store_id();
        stores.insert(url.to_string(), (id, source.clone()));
        Ok((id, source))
    }

    fn add_store(&self, name: &str, source: Arc<dyn Source>) {
        let mut stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        stores.insert(name.to_string(), (next_store_id(), source));
    }

    fn namespace(
        &self,
        store: Option<&str>,
        name: &str,
        refresh_every: Duration,
    ) -> Result<Arc<Namespace>> {
        let name = NamespaceName::new(name)?;
        let (store, source) = self.store(&self.store_url(store))?;
        Ok(Arc::new(Namespace {
            name,
            store,
            source,
            cache: self.cache.clone(),
            refresh_every,
            refreshed: Mutex::new(None),
        }))
    }

    /// The namespace and moment a database file name asks for.
    fn target(&self, path: &str, params: &file::Params) -> Result<Target> {
        let at = match (&params.at, &params.frame) {
            (Some(_), Some(_)) => {
                return Err(config("give the URI parameter at or frame, not both"));
            }
            (Some(at), None) => file::parse_at(at).map_err(config)?,
            (None, Some(frame)) => file::parse_frame(frame).map_err(config)?,
            (None, None) => ViewAt::Latest,
        };
        let refresh_every = match &params.refresh {
            Some(text) => humantime::parse_duration(text.trim()).map_err(|e| {
                config(format!(
                    "URI parameter refresh={text:?} is not a duration like 0s, 250ms or 1s: {e}"
                ))
            })?,
            None => Duration::ZERO,
        };
        let ns = self.namespace(params.store.as_deref(), path, refresh_every)?;
        Ok(Target { ns, at })
    }
}

/// A number no other store of this process has (cache keys carry it).
fn next_store_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn config(message: impl Into<String>) -> Error {
    InvalidInput::Config(message.into()).into()
}

fn shared_slot() -> &'static OnceLock<Arc<Shared>> {
    static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();
    &SHARED
}

/// The process's VFS state, made with `options` by the first call.
fn shared(options: &VfsOptions) -> Arc<Shared> {
    shared_slot()
        .get_or_init(|| Arc::new(Shared::new(options)))
        .clone()
}

/// Registers the `walvault` VFS with the SQLite linked into this program (rusqlite's
/// bundled SQLite). Safe to call more than once: later calls do nothing (the first
/// call's options stay). It is not made the default VFS: open files with
/// `?vfs=walvault` (or [`rusqlite::Connection::open_with_flags_and_vfs`]).
#[cfg(feature = "bundled-sqlite")]
pub fn register(options: VfsOptions) -> Result<()> {
    register_with(options, |name, vfs, opts| {
        sqlite_plugin::vfs::register_static(name, vfs, opts).map(|_| ())
    })
}

/// Registers the VFS through a loadable extension's API table (what `ext/` calls from
/// its entry point). Later calls do nothing, as with [`register`].
///
/// # Safety
///
/// `api` must be the `sqlite3_api_routines` pointer SQLite passed the extension's entry
/// point, valid for the life of the process.
pub unsafe fn register_in_extension(api: *mut std::ffi::c_void, options: VfsOptions) -> Result<()> {
    register_with(options, |name, vfs, opts| {
        // Safety: the caller passes SQLite's API table (see above).
        unsafe { sqlite_plugin::vfs::register_dynamic(api.cast(), name, vfs, opts) }.map(|_| ())
    })
}

/// Registers the VFS once per process, by whichever route comes first.
fn register_with(
    options: VfsOptions,
    register: impl FnOnce(
        CString,
        file::WalvaultVfs,
        sqlite_plugin::vfs::RegisterOpts,
    ) -> std::result::Result<(), i32>,
) -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), i32>> = OnceLock::new();
    let done = DONE.get_or_init(|| {
        let vfs = file::WalvaultVfs {
            shared: shared(&options),
        };
        let opts = sqlite_plugin::vfs::RegisterOpts {
            make_default: false,
        };
        register(name(), vfs, opts)
    });
    done.map_err(registration_failed)
}

fn name() -> CString {
    CString::new(VFS_NAME).unwrap_or_default()
}

fn registration_failed(code: i32) -> Error {
    Error::Sqlite {
        context: "registering the walvault VFS".into(),
        message: format!("SQLite refused it (result code {code})"),
    }
}

/// Makes `storage` the store that file names with `store=NAME` read. Call
/// [`register`] first: the first call of any function here sets the VFS up, with the
/// default options unless it is `register`. (tests, benches,
/// or a store built in code: a [`crate::MemoryStorage`], an object store with options).
pub fn add_store<S: Storage>(name: &str, storage: Arc<S>) {
    shared(&VfsOptions::default()).add_store(name, Arc::new(Store(storage)));
}

/// Resolves a view without SQLite: the commit a database file with these parameters
/// would show, or the error opening it would give (with its full message, which
/// SQLite's `unable to open database file` does not carry). `walvault query` checks
/// its view this way first.
pub fn describe(store: Option<&str>, namespace: &str, at: ViewAt) -> Result<ViewInfo> {
    let ns = shared(&VfsOptions::default()).namespace(store, namespace, Duration::ZERO)?;
    Ok(View::resolve(ns, at)?.info())
}

/// The cache's size and use so far.
pub fn cache_stats() -> CacheStats {
    shared(&VfsOptions::default()).cache.stats()
}

/// The last error the VFS met (in any connection of this process), with what it was
/// doing, or `None`. SQLite reports VFS errors by code only (`database disk image is
/// malformed`, `unable to open database file`); this is the message behind the code.
pub fn last_error() -> Option<String> {
    last_error::get()
}

pub(crate) mod last_error {
    use std::sync::{Mutex, PoisonError};

    static LAST: Mutex<Option<String>> = Mutex::new(None);

    pub(crate) fn set(message: String) {
        *LAST.lock().unwrap_or_else(PoisonError::into_inner) = Some(message);
    }

    pub(crate) fn get() -> Option<String> {
        LAST.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}
