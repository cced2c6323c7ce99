//! The VFS proper: SQLite's file operations on a view.
//!
//! The main database file is a view ([`View`]). Its page 1 is served with SQLite's
//! legacy (rollback) file format bytes, so SQLite reads it as an ordinary database
//! file and never looks for a WAL or shared memory; its change counter is the view's
//! generation, so a connection drops its cached pages whenever its view moves. Temporary
//! files (sorts, temp tables) live in memory. Everything else is refused: the VFS
//! writes nothing anywhere.

use std::borrow::Cow;
use std::ffi::{c_char, CStr};
use std::sync::Arc;

use sqlite_plugin::flags::{AccessFlags, LockLevel, OpenKind, OpenOpts};
use sqlite_plugin::vars;
use sqlite_plugin::vfs::{Pragma, PragmaErr, Vfs, VfsHandle, VfsResult};

use super::runs::Runs;
use super::view::{View, ViewAt};
use super::{Shared, Target};
use crate::error::{Error, ErrorKind};
use crate::storage::stamp;

/// The VFS registered with SQLite.
pub(crate) struct WalvaultVfs {
    pub(crate) shared: Arc<Shared>,
}

/// An open file: the database (a view), or a temporary file in memory.
pub(crate) enum Handle {
    Db(Box<DbFile>),
    Temp(Vec<u8>),
}

impl VfsHandle for Handle {
    fn readonly(&self) -> bool {
        matches!(self, Handle::Db(_))
    }

    fn in_memory(&self) -> bool {
        false
    }
}

/// The database file of one connection.
pub(crate) struct DbFile {
    target: Target,
    view: Arc<View>,
    /// A view a pragma chose while a transaction was open: taken at the next one.
    pending: Option<Arc<View>>,
    /// The durable frame number a following view last saw.
    seen: u64,
    lock: LockLevel,
    runs: Runs,
}

impl DbFile {
    fn page_size(&self) -> u64 {
        u64::from(self.view.page_size)
    }

    /// Copies `buf.len()` bytes at `offset` of the view's database file.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> crate::Result<usize> {
        let size = self.view.file_size();
        let page_size = self.page_size();
        let mut done = 0usize;
        let mut retried = false;
        while done < buf.len() {
            let at = offset + done as u64;
            if at >= size {
                break;
            }
            let page_no = u32::try_from(at / page_size + 1).unwrap_or(u32::MAX);
            let within = (at % page_size) as usize;
            let page = match self.view.page(page_no, &mut self.runs) {
                Err(e) if e.is_not_found() && !retried => {
                    // Compaction may have replaced (and collection deleted) a segment
                    // this view found: the same commit, found again, reads the same
                    // pages from the segments that hold them now.
                    retried = true;
                    self.view = Arc::new(self.view.found_again()?);
                    continue;
                }
                page => page?,
            };
            let n = (page.len() - within).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&page[within..within + n]);
            if page_no == 1 {
                patch_header(&self.view, within, &mut buf[done..done + n]);
            }
            done += n;
        }
        Ok(done)
    }

    /// At the start of a read transaction: the view a pragma chose, or in follow mode
    /// the latest commit.
    fn begin(&mut self) -> crate::Result<()> {
        if let Some(view) = self.pending.take() {
            self.view = view;
        }
        if self.view.at != ViewAt::Latest {
            return Ok(());
        }
        // The durable frame number can be above the latest commit (a fork that has not
        // written yet starts above its source's frames): the view moves only when the
        // store's answer changed, and only to another commit.
        let latest = self.target.ns.latest_frame()?;
        if latest == self.seen || latest == self.view.commit.frame_no {
            self.seen = latest;
            return Ok(());
        }
        let view = View::resolve(self.target.ns.clone(), ViewAt::Latest)?;
        if view.commit != self.view.commit {
            self.view = Arc::new(view);
        }
        self.seen = latest;
        Ok(())
    }

    /// A pragma moved the view: now when no transaction is open, else at the next one.
    fn move_to(&mut self, at: ViewAt) -> crate::Result<()> {
        let view = Arc::new(View::resolve(self.target.ns.clone(), at)?);
        if self.lock == LockLevel::Unlocked {
            self.view = view;
        } else {
            self.pending = Some(view);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let view = self.pending.as_ref().unwrap_or(&self.view);
        let mode = match view.at {
            ViewAt::Latest => "following the latest commit".to_string(),
            ViewAt::Frame(n) => format!("fixed at frame {n}"),
            ViewAt::Time(t) => format!("fixed at {}", stamp(t)),
        };
        format!(
            "namespace {} at frame {} ({}), {} pages; {mode}",
            self.target.ns.name,
            view.commit.frame_no,
            stamp(view.commit.timestamp()),
            view.commit.size_after
        )
    }
}

/// SQLite sees a rollback-journal database (file format 1), whose change counter and
/// in-header size are the view's, so it neither opens a WAL nor keeps stale pages.
fn patch_header(view: &View, within: usize, out: &mut [u8]) {
    let generation = view.generation.to_be_bytes();
    let pages = view.commit.size_after.to_be_bytes();
    let fields: [(usize, &[u8]); 5] = [
        (18, &[1]),
        (19, &[1]),
        (24, &generation),
        (28, &pages),
        (92, &generation),
    ];
    for (at, bytes) in fields {
        for (i, b) in bytes.iter().enumerate() {
            let pos = at + i;
            if pos >= within && pos - within < out.len() {
                out[pos - within] = *b;
            }
        }
    }
}

/// The SQLite result code for a walvault error; the error itself goes to the log.
fn code(e: &Error, doing: &str) -> i32 {
    let code = match e.kind() {
        ErrorKind::Corrupt | ErrorKind::NotFound => vars::SQLITE_CORRUPT,
        _ => vars::SQLITE_IOERR_READ,
    };
    tracing::error!("walvault VFS: {doing}: {e}");
    super::last_error::set(format!("{doing}: {e}"));
    code
}

impl Vfs for WalvaultVfs {
    type Handle = Handle;

    fn open(&self, path: Option<&str>, opts: OpenOpts) -> VfsResult<Handle> {
        match opts.kind() {
            OpenKind::MainDb => {}
            kind if kind.is_temp() || kind == OpenKind::SubJournal => {
                return Ok(Handle::Temp(Vec::new()))
            }
            _ => return Err(vars::SQLITE_CANTOPEN),
        }
        let Some(path) = path else {
            return Err(vars::SQLITE_CANTOPEN);
        };
        let params = Params::of(path);
        let target = self
            .shared
            .target(path, &params)
            .map_err(|e| code_open(&e, path))?;
        let view = View::resolve(target.ns.clone(), target.at).map_err(|e| code_open(&e, path))?;
        Ok(Handle::Db(Box::new(DbFile {
            target,
            view: Arc::new(view),
            pending: None,
            seen: 0,
            lock: LockLevel::Unlocked,
            runs: Runs::default(),
        })))
    }

    fn delete(&self, _path: &str) -> VfsResult<()> {
        Ok(())
    }

    fn access(&self, _path: &str, _flags: AccessFlags) -> VfsResult<bool> {
        // No journal, WAL or other side file ever exists.
        Ok(false)
    }

    fn file_size(&self, handle: &mut Handle) -> VfsResult<usize> {
        match handle {
            Handle::Db(db) => usize::try_from(db.view.file_size()).map_err(|_| vars::SQLITE_IOERR),
            Handle::Temp(bytes) => Ok(bytes.len()),
        }
    }

    fn truncate(&self, handle: &mut Handle, size: usize) -> VfsResult<()> {
        match handle {
            Handle::Db(_) => Err(vars::SQLITE_READONLY),
            Handle::Temp(bytes) => {
                bytes.truncate(size);
                Ok(())
            }
        }
    }

    fn write(&self, handle: &mut Handle, offset: usize, data: &[u8]) -> VfsResult<usize> {
        match handle {
            Handle::Db(_) => Err(vars::SQLITE_READONLY),
            Handle::Temp(bytes) => {
                let end = offset + data.len();
                if bytes.len() < end {
                    bytes.resize(end, 0);
                }
                bytes[offset..end].copy_from_slice(data);
                Ok(data.len())
            }
        }
    }

    fn read(&self, handle: &mut Handle, offset: usize, data: &mut [u8]) -> VfsResult<usize> {
        match handle {
            Handle::Db(db) => db
                .read(offset as u64, data)
                .map_err(|e| code(&e, &format!("reading {}", db.target.ns.name))),
            Handle::Temp(bytes) => {
                let start = offset.min(bytes.len());
                let n = (bytes.len() - start).min(data.len());
                data[..n].copy_from_slice(&bytes[start..start + n]);
                Ok(n)
            }
        }
    }

    fn lock(&self, handle: &mut Handle, level: LockLevel) -> VfsResult<()> {
        let Handle::Db(db) = handle else {
            return Ok(());
        };
        if level > LockLevel::Shared {
            return Err(vars::SQLITE_READONLY);
        }
        if db.lock == LockLevel::Unlocked && level == LockLevel::Shared {
            db.begin()
                .map_err(|e| code(&e, &format!("moving the view of {}", db.target.ns.name)))?;
        }
        db.lock = level;
        Ok(())
    }

    fn unlock(&self, handle: &mut Handle, level: LockLevel) -> VfsResult<()> {
        if let Handle::Db(db) = handle {
            db.lock = level;
        }
        Ok(())
    }

    fn check_reserved_lock(&self, _handle: &mut Handle) -> VfsResult<bool> {
        Ok(false)
    }

    fn close(&self, _handle: Handle) -> VfsResult<()> {
        Ok(())
    }

    fn pragma(&self, handle: &mut Handle, pragma: Pragma<'_>) -> Result<Option<String>, PragmaErr> {
        let Handle::Db(db) = handle else {
            return Err(PragmaErr::NotFound);
        };
        let at = match (pragma.name, pragma.arg) {
            ("walvault_view", None) | ("walvault_at", None) => {
                return Ok(Some(db.describe()));
            }
            ("walvault_frame", None) => {
                let view = db.pending.as_ref().unwrap_or(&db.view);
                return Ok(Some(view.commit.frame_no.to_string()));
            }
            ("walvault_at", Some(arg)) => parse_at(arg),
            ("walvault_frame", Some(arg)) => parse_frame(arg),
            _ => return Err(PragmaErr::NotFound),
        }
        .map_err(|e| PragmaErr::Fail(vars::SQLITE_ERROR, Some(e)))?;
        db.move_to(at)
            .map_err(|e| PragmaErr::Fail(vars::SQLITE_ERROR, Some(e.to_string())))?;
        Ok(Some(db.describe()))
    }
}

/// A view that cannot be opened: `SQLITE_CORRUPT` when a segment failed verification,
/// else `SQLITE_CANTOPEN` (a time before the history, a store or namespace missing).
fn code_open(e: &Error, path: &str) -> i32 {
    code(e, &format!("opening {path}"));
    match e.kind() {
        ErrorKind::Corrupt => vars::SQLITE_CORRUPT,
        _ => vars::SQLITE_CANTOPEN,
    }
}

/// `latest` (follow), or an RFC 3339 time.
pub(crate) fn parse_at(text: &str) -> Result<ViewAt, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("latest") {
        return Ok(ViewAt::Latest);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| ViewAt::Time(t.with_timezone(&chrono::Utc)))
        .map_err(|e| {
            format!(
                "walvault_at {text:?} is not 'latest' nor an RFC 3339 time like \
                 2026-12-01T10:00:00Z: {e}"
            )
        })
}

/// A frame number (`latest` follows).
pub(crate) fn parse_frame(text: &str) -> Result<ViewAt, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("latest") {
        return Ok(ViewAt::Latest);
    }
    text.parse::<u64>()
        .map(ViewAt::Frame)
        .map_err(|_| format!("walvault_frame {text:?} is not a frame number"))
}

/// The URI parameters of the database file name (`file:app?vfs=walvault&store=...`).
pub(crate) struct Params {
    pub(crate) store: Option<String>,
    pub(crate) at: Option<String>,
    pub(crate) frame: Option<String>,
    pub(crate) refresh: Option<String>,
}

impl Params {
    fn of(path: &str) -> Params {
        Params {
            store: uri_parameter(path, c"store"),
            at: uri_parameter(path, c"at"),
            frame: uri_parameter(path, c"frame"),
            refresh: uri_parameter(path, c"refresh"),
        }
    }
}

/// A URI parameter of the main database's file name, as SQLite parsed it.
///
/// SQLite passes `xOpen` a name followed in memory by its parameters, which
/// `sqlite3_uri_parameter` reads. sqlite-plugin hands the name on as a `&str` borrowed
/// from that very buffer whenever the name is valid UTF-8 (it converts with
/// `to_string_lossy`, which borrows unless it must replace bytes). A name holding a
/// replacement character may be a copy, whose neighbouring memory is not SQLite's, so
/// such a name has no parameters here.
fn uri_parameter(path: &str, key: &CStr) -> Option<String> {
    if path.contains(char::REPLACEMENT_CHARACTER) {
        return None;
    }
    // Safety: `path` points into the file name SQLite gave xOpen (see above), which is
    // valid for the duration of the call and laid out as sqlite3_uri_parameter expects.
    let value = unsafe {
        rusqlite::ffi::sqlite3_uri_parameter(path.as_ptr() as *const c_char, key.as_ptr())
    };
    if value.is_null() {
        return None;
    }
    // Safety: SQLite returns a NUL-terminated string inside the same buffer.
    let value = unsafe { CStr::from_ptr(value) };
    Some(match value.to_string_lossy() {
        Cow::Borrowed(s) => s.to_string(),
        Cow::Owned(s) => s,
    })
}
