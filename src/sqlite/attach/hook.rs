//! The commit hook on a raw SQLite handle, and how its state lives exactly as long as
//! the hook can be called.
//!
//! The state ([`Hook`]) is handed to SQLite twice under one strong reference: as the
//! WAL hook's argument, and as the application data of a marker SQL function,
//! `walvault_attached()`, whose destructor SQLite runs when the function is removed or
//! the connection closes. So a connection closed while attached (the loadable
//! extension cannot know when its host closes one) frees the state, and the hook, which
//! SQLite never calls on a closing connection, never sees it freed. Detaching removes
//! the hook first, then the function (which frees the state).
//!
//! The set of attached handles is kept so that a second attach of one connection is an
//! error rather than a leak.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rusqlite::ffi;

use super::{AttachedConnection, Vault};
use crate::durability::Durability;
use crate::error::{Error, InvalidInput, Result};

const MARKER: &CStr = c"walvault_attached";

/// One attached connection's hook state.
pub(super) struct Hook {
    vault: Vault,
    level: AtomicU8,
    /// True while the WAL hook is installed with this state.
    hooked: AtomicBool,
    last_error: Mutex<Option<Error>>,
    /// The auto-checkpoint setting the connection had before the hook replaced it.
    autocheckpoint: c_int,
    /// The connection's handle, as a key of the set of attached handles.
    handle: usize,
}

impl Hook {
    pub(super) fn durability(&self) -> Durability {
        match self.level.load(Ordering::Relaxed) {
            0 => Durability::Applied,
            1 => Durability::Written,
            _ => Durability::Durable,
        }
    }

    pub(super) fn set_durability(&self, level: Durability) {
        let code = match level {
            Durability::Applied => 0,
            Durability::Written => 1,
            Durability::Durable => 2,
        };
        self.level.store(code, Ordering::Relaxed);
    }

    pub(super) fn take_error(&self) -> Option<Error> {
        self.last_error.lock().ok()?.take()
    }

    /// Ships the connection's commit; on failure, keeps why and returns the code SQLite
    /// fails the statement with.
    fn commit(&self, frames: c_int) -> c_int {
        let frames = u32::try_from(frames).unwrap_or(0);
        match self.vault.commit_after(self.durability(), frames) {
            Ok(_) => ffi::SQLITE_OK,
            Err(e) => {
                tracing::warn!(db = %self.vault.db().display(), error = %e, "commit not shipped in time");
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(e);
                }
                ffi::SQLITE_IOERR
            }
        }
    }
}

/// The hooks of attached connections, by handle address.
type Attached = HashMap<usize, Weak<Hook>>;

fn attached() -> &'static Mutex<Attached> {
    static ATTACHED: OnceLock<Mutex<Attached>> = OnceLock::new();
    ATTACHED.get_or_init(Mutex::default)
}

fn with_attached<T>(f: impl FnOnce(&mut Attached) -> T) -> T {
    // A panic while holding this lock leaves the set itself consistent.
    let mut set = attached().lock().unwrap_or_else(|p| p.into_inner());
    f(&mut set)
}

impl Vault {
    /// Attaches `conn` to this vault (its database must be the vault's): its COMMITs
    /// return at `level` from now on. See [`super::attach`].
    pub fn attach(
        &self,
        conn: rusqlite::Connection,
        level: Durability,
    ) -> Result<AttachedConnection> {
        let same = conn
            .path()
            .and_then(|p| std::fs::canonicalize(p).ok())
            .is_some_and(|p| p == self.db());
        if !same {
            return Err(InvalidInput::Config(format!(
                "the connection is not to {}, the database of this vault",
                self.db().display()
            ))
            .into());
        }
        // SAFETY: `conn` is open; the hook is removed before it closes (by `detach` or
        // the drop of the result, which owns it).
        let hook = unsafe { install(conn.handle(), self, level) }?;
        Ok(AttachedConnection {
            conn: Some(conn),
            vault: self.clone(),
            hook,
        })
    }
}

/// Installs the commit hook on a raw connection, to `vault` at `level`, for the loadable
/// extension. The connection's database must be the vault's.
///
/// # Safety
///
/// `db` must be an open connection, used by no other thread during the call. The hook
/// stays until [`detach_handle`] or until the connection closes, whichever is first.
pub unsafe fn attach_handle(db: *mut ffi::sqlite3, vault: &Vault, level: Durability) -> Result<()> {
    install(db, vault, level).map(drop)
}

/// The vault a connection is attached to, if it is (the address is only compared).
pub fn attached_vault(db: *mut ffi::sqlite3) -> Option<Vault> {
    let hook = with_attached(|set| set.get(&(db as usize)).and_then(Weak::upgrade))?;
    Some(hook.vault.clone())
}

/// Why the last commit of an attached connection failed, taken (None when it did not,
/// or the connection is not attached).
pub fn take_last_error(db: *mut ffi::sqlite3) -> Option<Error> {
    let hook = with_attached(|set| set.get(&(db as usize)).and_then(Weak::upgrade))?;
    hook.take_error()
}

unsafe fn install(db: *mut ffi::sqlite3, vault: &Vault, level: Durability) -> Result<Arc<Hook>> {
    let key = db as usize;
    let existing = with_attached(|set| set.get(&key).and_then(Weak::upgrade));
    if let Some(hook) = existing {
        // Detached while a statement ran (from SQL), the marker could not be removed:
        // its state is hooked again, to the same vault only.
        if hook.hooked.load(Ordering::Acquire) {
            return Err(InvalidInput::Config(
                "this connection is attached already (detach it first)".into(),
            )
            .into());
        }
        if !hook.vault.same_as(vault) {
            return Err(InvalidInput::Config(format!(
                "this connection was attached to namespace {} before; close it to attach it to another",
                hook.vault.namespace()
            ))
            .into());
        }
        hook.set_durability(level);
        hook_up(db, &hook);
        return Ok(hook);
    }
    // `sqlite3_wal_autocheckpoint` installs SQLite's own hook, whose argument is the
    // setting; there is no getter, so read it with the pragma before replacing it.
    let autocheckpoint = read_autocheckpoint(db).unwrap_or(1000);
    let hook = Arc::new(Hook {
        vault: vault.clone(),
        level: AtomicU8::new(0),
        hooked: AtomicBool::new(false),
        last_error: Mutex::new(None),
        autocheckpoint,
        handle: key,
    });
    hook.set_durability(level);
    with_attached(|set| set.insert(key, Arc::downgrade(&hook)));
    let raw = Arc::into_raw(Arc::clone(&hook)) as *mut c_void;
    let rc = ffi::sqlite3_create_function_v2(
        db,
        MARKER.as_ptr(),
        0,
        ffi::SQLITE_UTF8,
        raw,
        Some(marker),
        None,
        None,
        Some(release),
    );
    if rc != ffi::SQLITE_OK {
        // SQLite calls the destructor when registering fails, which freed `raw`.
        with_attached(|set| set.remove(&key));
        return Err(Error::sqlite("attaching walvault", ffi::code_to_str(rc)));
    }
    hook_up(db, &hook);
    Ok(hook)
}

/// Installs the WAL hook with `hook` (owned by the marker) as its argument.
unsafe fn hook_up(db: *mut ffi::sqlite3, hook: &Arc<Hook>) {
    hook.hooked.store(true, Ordering::Release);
    ffi::sqlite3_wal_hook(db, Some(on_commit), Arc::as_ptr(hook) as *mut c_void);
}

/// Removes walvault's hook from a raw connection and restores its auto-checkpoint
/// setting; false when it was not attached. The state is freed with the marker
/// function, or, when a statement of the connection is running (a detach from SQL),
/// when the connection closes.
///
/// # Safety
///
/// `db` must be an open connection, used by no other thread during the call.
pub unsafe fn detach_handle(db: *mut ffi::sqlite3) -> Result<bool> {
    let key = db as usize;
    let Some(hook) = with_attached(|set| set.get(&key).and_then(Weak::upgrade)) else {
        return Ok(false);
    };
    if !hook.hooked.swap(false, Ordering::AcqRel) {
        return Ok(false);
    }
    ffi::sqlite3_wal_hook(db, None, std::ptr::null_mut());
    ffi::sqlite3_wal_autocheckpoint(db, hook.autocheckpoint);
    drop(hook);
    if !statement_running(db) {
        // Removing the marker runs its destructor, which frees the state.
        let rc = ffi::sqlite3_create_function_v2(
            db,
            MARKER.as_ptr(),
            0,
            ffi::SQLITE_UTF8,
            std::ptr::null_mut(),
            None,
            None,
            None,
            None,
        );
        if rc != ffi::SQLITE_OK {
            return Err(Error::sqlite("detaching walvault", ffi::code_to_str(rc)));
        }
    }
    Ok(true)
}

/// True when a statement of the connection is running (SQLite refuses to remove a
/// function then).
unsafe fn statement_running(db: *mut ffi::sqlite3) -> bool {
    let mut stmt = ffi::sqlite3_next_stmt(db, std::ptr::null_mut());
    while !stmt.is_null() {
        if ffi::sqlite3_stmt_busy(stmt) != 0 {
            return true;
        }
        stmt = ffi::sqlite3_next_stmt(db, stmt);
    }
    false
}

unsafe fn read_autocheckpoint(db: *mut ffi::sqlite3) -> Option<c_int> {
    let mut stmt = std::ptr::null_mut();
    let sql = c"PRAGMA wal_autocheckpoint";
    if ffi::sqlite3_prepare_v2(db, sql.as_ptr(), -1, &mut stmt, std::ptr::null_mut())
        != ffi::SQLITE_OK
    {
        return None;
    }
    let value =
        (ffi::sqlite3_step(stmt) == ffi::SQLITE_ROW).then(|| ffi::sqlite3_column_int(stmt, 0));
    ffi::sqlite3_finalize(stmt);
    value
}

/// SQLite's WAL hook: after each commit of the connection, on its thread.
unsafe extern "C" fn on_commit(
    arg: *mut c_void,
    _db: *mut ffi::sqlite3,
    schema: *const c_char,
    frames: c_int,
) -> c_int {
    if schema.is_null() || CStr::from_ptr(schema).to_bytes() != b"main" {
        return ffi::SQLITE_OK;
    }
    // SAFETY: `arg` is the marker's state, alive while the hook is installed.
    let Some(hook) = (arg as *const Hook).as_ref() else {
        return ffi::SQLITE_OK;
    };
    // A panic must not unwind into SQLite.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook.commit(frames)))
        .unwrap_or(ffi::SQLITE_IOERR)
}

/// `walvault_attached()`: the namespace and level the connection commits at, as text.
unsafe extern "C" fn marker(
    ctx: *mut ffi::sqlite3_context,
    _argc: c_int,
    _argv: *mut *mut ffi::sqlite3_value,
) {
    let hook = (ffi::sqlite3_user_data(ctx) as *const Hook).as_ref();
    let text = hook.map_or_else(String::new, |h| {
        format!("{} {}", h.vault.namespace(), h.durability())
    });
    let len = c_int::try_from(text.len()).unwrap_or(0);
    ffi::sqlite3_result_text(ctx, text.as_ptr().cast(), len, ffi::SQLITE_TRANSIENT());
}

/// The marker's destructor: the connection closed or walvault detached.
unsafe extern "C" fn release(raw: *mut c_void) {
    if raw.is_null() {
        return;
    }
    // SAFETY: `raw` came from `Arc::into_raw` in `install`, released once, here.
    let hook = Arc::from_raw(raw as *const Hook);
    with_attached(|set| set.remove(&hook.handle));
}
