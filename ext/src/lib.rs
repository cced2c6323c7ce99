//! walvault as a loadable SQLite extension: any language that can load an extension
//! gets commit-synchronous replication.
//!
//! ```sql
//! .load ./libwalvault_ext
//! SELECT walvault_attach('walvault-store', 'app', 'durable');
//! INSERT INTO t VALUES (1);   -- returns once the row is in the store
//! ```
//!
//! # Contract
//!
//! The extension is thin: it parses SQL arguments and calls the library's
//! [`walvault::sqlite`] attachment, whose contract (what COMMIT returning means at each
//! durability, what a failed commit means, checkpoints, other connections) holds as is.
//! It uses the SQLite of the process that loaded it, through the extension API table,
//! never a copy of its own: two copies of SQLite in one process break each other's POSIX
//! locks.
//!
//! SQL functions (all `DIRECTONLY`: not callable from triggers or views):
//!
//! * `walvault_attach(store, namespace [, durability [, commit_timeout]])`: attaches the
//!   calling connection. `store` is a directory or a `file://`, `s3://`, `gs://` or
//!   `az://` URL; `durability` is `applied`, `written` or `durable` (the default);
//!   `commit_timeout` is a duration such as `10s` (the default) or `500ms`. Returns a
//!   line saying what was attached.
//! * `walvault_detach()`: removes the hook (1), or does nothing (0). The vault stays
//!   open, shipping what other connections commit, until the connection closes.
//! * `walvault_sync([durability])`: ships everything the WAL holds (any connection's
//!   commits) and waits for it; the frame number reached.
//! * `walvault_last_error()`: why the connection's last commit failed, or NULL; reading
//!   it clears it.
//! * `walvault_attached()`: the namespace and durability, once attached.
//! * `walvault_vfs_error()`: the last error of the `walvault` VFS in this process (SQLite
//!   reports a VFS error by its code only, such as `unable to open database file`), or
//!   NULL. Like every function here, it exists on the connections that loaded the
//!   extension.
//!
//! Loading the extension also registers the read-only `walvault` VFS
//! ([`walvault::vfs`]): `file:app?vfs=walvault&store=...` opens a namespace of a store as
//! of any commit. `WALVAULT_VFS_CACHE` (a size such as `256MiB`) sets its cache.
//!
//! Closing the connection detaches it; the vault closes with the last connection
//! attached to it, making what it shipped durable first (within the commit deadline).

use std::ffi::{c_char, c_int};
use std::path::PathBuf;
use std::time::Duration;

use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::ValueRef;
use rusqlite::{ffi, Connection};
use walvault::sqlite::{attach_handle, attached_vault, detach_handle, take_last_error};
use walvault::sqlite::{AttachOptions, Vault};
use walvault::{Durability, NamespaceName};

/// Entry point SQLite looks for when it loads the library (`.load`,
/// `load_extension`).
///
/// # Safety
///
/// Called by SQLite with a valid connection and API table.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
#[no_mangle]
pub unsafe extern "C" fn sqlite3_extension_init(
    db: *mut ffi::sqlite3,
    pz_err_msg: *mut *mut c_char,
    p_api: *mut ffi::sqlite3_api_routines,
) -> c_int {
    API.store(p_api, std::sync::atomic::Ordering::Release);
    Connection::extension_init2(db, pz_err_msg, p_api, register)
}

/// The API table SQLite passed the entry point, for registering the VFS.
static API: std::sync::atomic::AtomicPtr<ffi::sqlite3_api_routines> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// The SQL functions on this connection, and the `walvault` VFS for the process. The
/// library stays loaded once the connection closes (a registered VFS must not be
/// unloaded under the connections that use it).
fn register(db: Connection) -> rusqlite::Result<bool> {
    let p_api = API.load(std::sync::atomic::Ordering::Acquire);
    let options = vfs_options().map_err(usage)?;
    // SAFETY: `p_api` is the API table SQLite passed the entry point, valid for the life
    // of the process.
    unsafe { walvault::vfs::register_in_extension(p_api.cast(), options) }.map_err(sql_error)?;
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DIRECTONLY;
    db.create_scalar_function(c"walvault_attach", -1, flags, attach)?;
    db.create_scalar_function(c"walvault_detach", 0, flags, detach)?;
    db.create_scalar_function(c"walvault_sync", -1, flags, sync)?;
    db.create_scalar_function(c"walvault_last_error", 0, flags, last_error)?;
    db.create_scalar_function(c"walvault_vfs_error", 0, flags, |_| {
        Ok(walvault::vfs::last_error())
    })?;
    Ok(true)
}

/// The VFS's options from the environment: `WALVAULT_VFS_CACHE` (a size such as
/// `256MiB`; default 64 MiB). The store comes from each file name's `store` parameter,
/// else `WALVAULT_STORE`, else `./walvault-store`.
fn vfs_options() -> Result<walvault::vfs::VfsOptions, String> {
    let mut options = walvault::vfs::VfsOptions::default();
    if let Ok(text) = std::env::var("WALVAULT_VFS_CACHE") {
        let size: bytesize::ByteSize = text
            .trim()
            .parse()
            .map_err(|e| format!("WALVAULT_VFS_CACHE={text:?} is not a size like 256MiB: {e}"))?;
        options.cache_bytes = size.as_u64().max(1 << 20);
    }
    Ok(options)
}

/// A walvault error as the SQL function's error (SQLite shows its message).
fn sql_error(e: walvault::Error) -> rusqlite::Error {
    rusqlite::Error::UserFunctionError(Box::new(e))
}

fn usage(message: String) -> rusqlite::Error {
    rusqlite::Error::UserFunctionError(message.into())
}

/// The text of argument `i`, or an error naming the function and the argument.
fn text_arg(ctx: &Context<'_>, i: usize, function: &str, what: &str) -> rusqlite::Result<String> {
    match ctx.get_raw(i) {
        ValueRef::Text(t) => Ok(String::from_utf8_lossy(t).into_owned()),
        other => Err(usage(format!(
            "{function}: argument {} ({what}) must be text, not {}",
            i + 1,
            other.data_type()
        ))),
    }
}

fn durability_arg(ctx: &Context<'_>, i: usize, function: &str) -> rusqlite::Result<Durability> {
    if ctx.len() <= i {
        return Ok(Durability::Durable);
    }
    text_arg(ctx, i, function, "durability")?
        .parse()
        .map_err(sql_error)
}

/// The connection the function runs on, and its main database file.
fn connection(ctx: &Context<'_>) -> rusqlite::Result<(*mut ffi::sqlite3, PathBuf)> {
    // SAFETY: the handle is only used during this call, on SQLite's thread.
    let conn = unsafe { ctx.get_connection() }?;
    let path = conn
        .path()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| {
            usage("walvault_attach: an in-memory or temporary database cannot be attached; open a database file".into())
        })?;
    // SAFETY: as above.
    Ok((unsafe { conn.handle() }, path))
}

fn attach(ctx: &Context<'_>) -> rusqlite::Result<String> {
    const NAME: &str = "walvault_attach";
    if !(2..=4).contains(&ctx.len()) {
        return Err(usage(format!(
            "{NAME}(store, namespace [, durability [, commit_timeout]]): {} arguments given",
            ctx.len()
        )));
    }
    let store = text_arg(ctx, 0, NAME, "store")?;
    let namespace = NamespaceName::new(&text_arg(ctx, 1, NAME, "namespace")?).map_err(sql_error)?;
    let durability = durability_arg(ctx, 2, NAME)?;
    let mut options = AttachOptions {
        durability,
        ..AttachOptions::default()
    };
    if ctx.len() > 3 {
        let text = text_arg(ctx, 3, NAME, "commit_timeout")?;
        options.commit_timeout = humantime::parse_duration(text.trim())
            .ok()
            .filter(|d| *d >= Duration::from_millis(1))
            .ok_or_else(|| {
                usage(format!(
                    "{NAME}: commit_timeout {text:?}: write a duration such as 500ms or 10s"
                ))
            })?;
    }
    let (db, path) = connection(ctx)?;
    let vault = Vault::open_url(&path, &store, namespace.clone(), options).map_err(sql_error)?;
    // SAFETY: `db` is the calling connection, open, on this thread.
    unsafe { attach_handle(db, &vault, durability) }.map_err(sql_error)?;
    Ok(format!(
        "{} attached to namespace {namespace} of {store}: COMMIT returns when {durability}",
        path.display()
    ))
}

fn detach(ctx: &Context<'_>) -> rusqlite::Result<bool> {
    // SAFETY: the handle is the calling connection, on this thread.
    let conn = unsafe { ctx.get_connection() }?;
    unsafe { detach_handle(conn.handle()) }.map_err(sql_error)
}

fn sync(ctx: &Context<'_>) -> rusqlite::Result<i64> {
    const NAME: &str = "walvault_sync";
    if ctx.len() > 1 {
        return Err(usage(format!(
            "{NAME}([durability]): {} arguments given",
            ctx.len()
        )));
    }
    let level = durability_arg(ctx, 0, NAME)?;
    // SAFETY: the handle is only compared.
    let db = unsafe { ctx.get_connection()?.handle() };
    let vault = attached_vault(db).ok_or_else(|| {
        usage(format!(
            "{NAME}: this connection is not attached (walvault_attach first)"
        ))
    })?;
    let frame_no = vault.commit(level).map_err(sql_error)?;
    i64::try_from(frame_no)
        .map_err(|_| usage(format!("{NAME}: frame number {frame_no} out of range")))
}

fn last_error(ctx: &Context<'_>) -> rusqlite::Result<Option<String>> {
    // SAFETY: the handle is only compared.
    let db = unsafe { ctx.get_connection()?.handle() };
    Ok(take_last_error(db).map(|e| e.to_string()))
}
